"""SamplingParams: what a request asks of the sampler and of the stop logic.

Field names follow vLLM's. Every value is checked in `__post_init__`; a bad value raises
InvalidParamError (a ValueError whose `.param` names the field) with a message a user can act on.
Token ids are checked against the vocabulary later by `check_token_ids`, because only the engine
knows the vocabulary size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import InvalidParamError
from .structured.spec import StructuredOutputs

MAX_N = 16
MAX_LOGPROBS = 20
MAX_STOP_STRINGS = 16
MAX_STOP_STRING_LEN = 256
MAX_LOGIT_BIAS = 1024
MAX_STOP_TOKEN_IDS = 256


@dataclass
class SamplingParams:
    n: int = 1
    max_tokens: int | None = 16  # None: up to the context limit
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: disabled
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] | None = None
    seed: int | None = None
    stop: list[str] | str | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    logprobs: int | None = None  # None: none; k >= 0: the sampled token's logprob plus k alternatives
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    # A constraint on the output (JSON schema, regex, choice, grammar), enforced by a grammar matcher.
    structured_outputs: StructuredOutputs | None = None
    stop_list: list[str] = field(init=False, repr=False, default_factory=list)

    def __post_init__(self) -> None:
        def bad(msg: str, param: str) -> None:
            raise InvalidParamError(msg, param)

        if not isinstance(self.n, int) or not 1 <= self.n <= MAX_N:
            bad(f"n must be an integer between 1 and {MAX_N}, got {self.n!r}", "n")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            bad(f"max_tokens must be at least 1, got {self.max_tokens!r}", "max_tokens")
        if not 0.0 <= self.temperature <= 2.0:
            bad(f"temperature must be between 0 and 2, got {self.temperature}", "temperature")
        if not 0.0 < self.top_p <= 1.0:
            bad(f"top_p must be in (0, 1], got {self.top_p}", "top_p")
        if self.top_k == -1:
            self.top_k = 0
        if not isinstance(self.top_k, int) or self.top_k < 0:
            bad(f"top_k must be -1, 0 (disabled) or a positive integer, got {self.top_k!r}", "top_k")
        if not 0.0 <= self.min_p <= 1.0:
            bad(f"min_p must be between 0 and 1, got {self.min_p}", "min_p")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                bad(f"{name} must be between -2 and 2, got {getattr(self, name)}", name)
        if not 0.0 < self.repetition_penalty <= 10.0:
            bad(f"repetition_penalty must be in (0, 10], got {self.repetition_penalty}", "repetition_penalty")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            bad(f"seed must be an integer, got {self.seed!r}", "seed")
        if not isinstance(self.min_tokens, int) or self.min_tokens < 0:
            bad(f"min_tokens must be >= 0, got {self.min_tokens!r}", "min_tokens")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            bad(f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})", "min_tokens")
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or not 0 <= self.logprobs <= MAX_LOGPROBS):
            bad(f"logprobs must be between 0 and {MAX_LOGPROBS}, got {self.logprobs!r}", "logprobs")
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP_STRINGS:
            bad(f"at most {MAX_STOP_STRINGS} stop strings are allowed, got {len(stops)}", "stop")
        for s in stops:
            if not isinstance(s, str) or not s:
                bad("stop strings must be non-empty strings", "stop")
            if len(s) > MAX_STOP_STRING_LEN:
                bad(f"a stop string may have at most {MAX_STOP_STRING_LEN} characters", "stop")
        self.stop_list = stops
        if self.stop_token_ids is not None and len(self.stop_token_ids) > MAX_STOP_TOKEN_IDS:
            bad(f"at most {MAX_STOP_TOKEN_IDS} stop_token_ids are allowed", "stop_token_ids")
        if self.logit_bias:
            if len(self.logit_bias) > MAX_LOGIT_BIAS:
                bad(f"logit_bias may have at most {MAX_LOGIT_BIAS} entries", "logit_bias")
            for tok, bias in self.logit_bias.items():
                if not -100.0 <= float(bias) <= 100.0:
                    bad(f"logit_bias values must be between -100 and 100, got {bias} for token {tok}", "logit_bias")
        if self.structured_outputs is not None and not isinstance(self.structured_outputs, StructuredOutputs):
            bad("structured_outputs must be a model.StructuredOutputs", "structured_outputs")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def check_token_ids(self, vocab_size: int) -> None:
        """Raise InvalidParamError if a token id named by these params is outside the vocabulary."""
        named = (("stop_token_ids", self.stop_token_ids or ()), ("logit_bias", self.logit_bias or {}))
        for param, ids in named:
            for tok in ids:
                if not 0 <= int(tok) < vocab_size:
                    raise InvalidParamError(
                        f"{param}: token id {tok} is outside the vocabulary (0..{vocab_size - 1})", param
                    )
