"""A request groups its `n` choices; each choice pairs a Sequence with its output state.

`ChoiceState` is the one owner of a choice's output: the incremental detokenizer (stop strings held
back), the logprobs so far, and what was produced since the last RequestOutput (streaming deltas).
Per-choice state that later features need (a grammar matcher, a tool-call parser) hangs here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..detokenizer import IncrementalDetokenizer
from ..outputs import CompletionOutput, RequestMetrics, RequestOutput, TokenLogprobs
from ..sampling_params import SamplingParams
from .sequence import Sequence


@dataclass(eq=False)
class ChoiceState:
    seq: Sequence
    detokenizer: IncrementalDetokenizer
    logprobs: list[TokenLogprobs] | None = None  # None unless the request asked for logprobs
    # Produced since the last RequestOutput (for streaming deltas).
    new_text: str = ""
    new_token_ids: list[int] = field(default_factory=list)
    new_logprobs: list[TokenLogprobs] = field(default_factory=list)

    def snapshot(self) -> CompletionOutput:
        """The choice so far; hands over (and clears) what was produced since the last snapshot."""
        seq = self.seq
        out = CompletionOutput(
            index=seq.index,
            text=self.detokenizer.output_text,
            token_ids=seq.output_token_ids,
            finish_reason=seq.finish_reason,
            stop_reason=seq.stop_reason,
            logprobs=list(self.logprobs) if self.logprobs is not None else None,
            new_text=self.new_text,
            new_token_ids=self.new_token_ids,
            new_logprobs=self.new_logprobs if self.logprobs is not None else None,
        )
        self.new_text, self.new_token_ids, self.new_logprobs = "", [], []
        return out


@dataclass(eq=False)
class Request:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    choices: list[ChoiceState]
    arrival_time: float = field(default_factory=time.monotonic)

    @property
    def seqs(self) -> list[Sequence]:
        return [c.seq for c in self.choices]

    @property
    def finished(self) -> bool:
        return all(c.seq.is_finished for c in self.choices)

    def make_output(self) -> RequestOutput:
        """Snapshot every choice and hand over what was produced since the last snapshot."""
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.prompt_token_ids,
            outputs=[c.snapshot() for c in self.choices],
            finished=self.finished,
            num_cached_tokens=self.choices[0].seq.num_cached_tokens,
            metrics=self._metrics(),
        )

    def _metrics(self) -> RequestMetrics:
        seqs = self.seqs
        if len(seqs) == 1:
            return RequestMetrics(self.arrival_time, seqs[0].first_scheduled_time, seqs[0].first_token_time)
        return RequestMetrics(
            self.arrival_time,
            _earliest([s.first_scheduled_time for s in seqs]),
            _earliest([s.first_token_time for s in seqs]),
        )


def _earliest(times: list[float | None]) -> float | None:
    known = [t for t in times if t is not None]
    return min(known) if known else None
