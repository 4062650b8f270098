"""A Sequence is one generated continuation (one of a request's `n` choices): its token ids and KV state.

What the scheduler and the runner need lives here; the choice's output state (detokenizer, stop strings,
logprobs, deltas for streaming) belongs to the output processor (`request.ChoiceState`).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from ..sampling_params import SamplingParams
from ..structured.compiler import ChoiceGrammar


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    seq_id: int
    request_id: str
    index: int  # choice index within the request
    prompt_token_ids: list[int]
    params: SamplingParams
    seed: int
    eos_token_ids: list[int]
    arrival_time: float = field(default_factory=time.monotonic)
    token_ids: list[int] = field(init=False)  # prompt + output
    num_computed_tokens: int = 0  # tokens whose K/V are in the cache
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache at first admission
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)  # hashes of the leading full blocks
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    num_preemptions: int = 0
    first_token_time: float | None = None
    first_scheduled_time: float | None = None  # when its first prefill chunk was scheduled
    grammar: ChoiceGrammar | None = None  # the choice's structured-output matcher, if constrained
    pooling: str | None = None  # an embedding request ("last" | "mean"): prompt only, pooled (engine/pooling.py)

    def __post_init__(self) -> None:
        self.token_ids = list(self.prompt_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_token_ids) :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - len(self.prompt_token_ids)

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
