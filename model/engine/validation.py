"""Request checks that need the loaded model (vocabulary, context window); raised as InvalidParamError.

SamplingParams checks its own ranges when it is built; what depends on the model is checked here, once,
when a request enters the engine (`LLMEngine.check_request`, called by `LLM` and `AsyncEngine`).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ContextLengthError, InvalidParamError
from ..sampling_params import SamplingParams
from .runtime import RuntimeInfo


def check_token_ids(ids: Sequence[object], vocab_size: int, param: str = "prompt") -> list[int]:
    """The ids as a list of ints; InvalidParamError naming `param` for a non-int or out-of-vocabulary id."""
    for tok in ids:
        if isinstance(tok, bool) or not isinstance(tok, int) or not 0 <= tok < vocab_size:
            raise InvalidParamError(f"{param} token id {tok!r} is outside the vocabulary (0..{vocab_size - 1})", param)
    return list(ids)  # type: ignore[arg-type]


def check_request(
    ids: list[int],
    params: SamplingParams,
    runtime: RuntimeInfo,
    param: str = "prompt",
    reserve_max_tokens: bool = False,
) -> None:
    """Empty prompt, token ids in the params, the prompt against the context window.

    The prompt must leave room for one generated token (generation ends with "length" at the context
    limit); with `reserve_max_tokens` (OpenAI's rule for an HTTP request) room for all of max_tokens."""
    if not ids:
        raise InvalidParamError(f"the {param} is empty (no tokens)", param)
    params.check_token_ids(runtime.vocab_size)
    max_tokens = params.max_tokens if reserve_max_tokens else None
    if len(ids) + (max_tokens or 1) > runtime.max_model_len:
        raise ContextLengthError(len(ids), max_tokens, runtime.max_model_len, param)
