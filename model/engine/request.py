"""A request groups its `n` sequences and turns their progress into RequestOutputs."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..outputs import CompletionOutput, RequestMetrics, RequestOutput
from ..sampling_params import SamplingParams
from .sequence import Sequence


@dataclass(eq=False)
class Request:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    seqs: list[Sequence]
    arrival_time: float = field(default_factory=time.monotonic)

    @property
    def finished(self) -> bool:
        return all(s.is_finished for s in self.seqs)

    def make_output(self) -> RequestOutput:
        """Snapshot every choice and hand over what was produced since the last snapshot."""
        outputs = []
        for seq in self.seqs:
            outputs.append(
                CompletionOutput(
                    index=seq.index,
                    text=seq.detokenizer.output_text,
                    token_ids=seq.output_token_ids,
                    finish_reason=seq.finish_reason,
                    stop_reason=seq.stop_reason,
                    logprobs=list(seq.logprobs) if seq.logprobs is not None else None,
                    new_text=seq.pending_text,
                    new_token_ids=seq.pending_token_ids,
                    new_logprobs=seq.pending_logprobs if seq.logprobs is not None else None,
                )
            )
            seq.pending_text, seq.pending_token_ids, seq.pending_logprobs = "", [], []
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.prompt_token_ids,
            outputs=outputs,
            finished=self.finished,
            num_cached_tokens=self.seqs[0].num_cached_tokens,
            metrics=self._metrics(),
        )

    def _metrics(self) -> RequestMetrics:
        seqs = self.seqs
        if len(seqs) == 1:
            return RequestMetrics(self.arrival_time, seqs[0].first_scheduled_time, seqs[0].first_token_time)
        return RequestMetrics(self.arrival_time, _earliest([s.first_scheduled_time for s in seqs]),
                              _earliest([s.first_token_time for s in seqs]))


def _earliest(times: list[float | None]) -> float | None:
    known = [t for t in times if t is not None]
    return min(known) if known else None
