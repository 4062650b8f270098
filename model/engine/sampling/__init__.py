"""Batched sampling: logits [B, V] -> one token id per row, plus logprobs when asked.

Order of processing (HF / vLLM semantics):
  1. logit_bias, then min_tokens masks (EOS / stop_token_ids -> -inf);
  2. repetition penalty over prompt + output tokens (HF: divide positive logits, multiply negative);
     presence / frequency penalties over output tokens (OpenAI: frequency * count + presence);
     last, the optional per-row allowed-token mask (e.g. from a grammar matcher) -> -inf elsewhere;
  3. greedy rows take the argmax;
  4. sampled rows: temperature, then top-k, top-p and min-p, each a "keep weights >= threshold" cut
     on the unnormalized probabilities w = exp((logit - max) / temperature), then inverse-CDF
     sampling with one uniform number per row.

Sampled rows come in two groups. Rows without top-k / top-p sample from the whole vocabulary. Rows
with top-k or top-p only need their largest logits: they sample among candidates found by
`top_values`, which on CPU is much cheaper than masking and summing the whole vocabulary.

The uniform is a pure function of (row seed, index of the token being sampled), computed on the
host while the batch is built, so a seeded request gets the same tokens whatever else is in the
batch and at whatever row it sits. Logprobs are those of the raw logits (log_softmax before any
processing), as in OpenAI's API and vLLM's default. All work on the logits happens on tensors;
the engine reads the result with one `.tolist()` per step.

Modules (imports flow one way, top to bottom):
  seeding     seeded randomness (`seeded_uniform`);
  batch       host-side batch preparation (`SamplingRow` -> `SamplingBatch`);
  processors  logits processors (`apply_logit_edits`: steps 1 and 2);
  ops         sampling ops on tensors (`top_values`, the cuts, `sample_inverse_cdf`, `Workspace`);
  logprobs    raw logprobs of the sampled token and the top alternatives;
  sampler     `Sampler`, which runs the steps above;
  reference   a plain, slow per-row reference of the filters, used by the tests as the oracle.
"""

from __future__ import annotations

from .batch import CutParams, SampleGroup, SamplingBatch, SamplingRow
from .logprobs import Logprobs, compute_logprobs
from .ops import Workspace, sample_inverse_cdf, top_values
from .processors import apply_logit_edits
from .sampler import Sampler, SamplerOutput
from .seeding import seeded_uniform

__all__ = [
    "CutParams",
    "Logprobs",
    "SampleGroup",
    "Sampler",
    "SamplerOutput",
    "SamplingBatch",
    "SamplingRow",
    "Workspace",
    "apply_logit_edits",
    "compute_logprobs",
    "sample_inverse_cdf",
    "seeded_uniform",
    "top_values",
]
