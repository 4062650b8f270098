"""What the engine hands back for each request."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Logprob:
    """One token's log-probability, with its decoded text."""

    token_id: int
    logprob: float
    decoded: str = ""


@dataclass
class TokenLogprobs:
    """The sampled token's logprob and the top alternatives at one position."""

    sampled: Logprob
    top: list[Logprob] = field(default_factory=list)


@dataclass
class CompletionOutput:
    index: int
    text: str  # all text so far (stop strings excluded unless asked)
    token_ids: list[int]  # all generated token ids so far
    finish_reason: str | None = None  # None while running; "stop" | "length" | "abort"
    stop_reason: str | int | None = None  # the stop string or stop token id that ended it
    logprobs: list[TokenLogprobs] | None = None  # one entry per generated token, if asked
    # The part produced by the latest step (for streaming).
    new_text: str = ""
    new_token_ids: list[int] = field(default_factory=list)
    new_logprobs: list[TokenLogprobs] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    """When the engine saw the request (time.monotonic() seconds, the engine's clock).

    first_scheduled_time: when its first prefill chunk was scheduled (None while it waits), so
    queue time = first_scheduled_time - arrival_time. first_token_time: its first sampled token.
    """

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    metrics: RequestMetrics | None = None  # engine-side timestamps (for queue-time metrics)
    embedding: list[float] | None = None  # an embedding request's L2-normalized vector (engine/pooling.py)

    # Convenience for the common n=1 case: `out.text`, `out.token_ids`, `out.finish_reason`.
    @property
    def text(self) -> str:
        return self.outputs[0].text

    @property
    def token_ids(self) -> list[int]:
        return self.outputs[0].token_ids

    @property
    def finish_reason(self) -> str | None:
        return self.outputs[0].finish_reason
