"""The serving layer: request -> validated SamplingParams + token ids -> engine -> response or SSE."""
