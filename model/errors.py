"""The engine's error types, in one module that imports nothing else of the package.

- `InvalidParamError`: a client value is wrong; `.param` names the field (e.g. "temperature",
  "prompt", "stop_token_ids"), so a server can answer with a 400 naming it without parsing text.
- `ContextLengthError(InvalidParamError)`: prompt + max_tokens does not fit the context window.
- `ModelLoadError`: a model file is missing, truncated, malformed or unsupported (the message names it).
- `EngineDeadError`: the engine thread stopped after an internal error.
- `StepFailedError`: one engine step raised; only the requests in that step were aborted (`.request_ids`),
  the engine goes on serving the others.
- `RequestAbortedError`: the server ended the request (e.g. at the end of a shutdown drain).
- `RequestTimeoutError(RequestAbortedError)`: the request ran past its time limit and was aborted.
"""

from __future__ import annotations


class InvalidParamError(ValueError):
    """A bad request value; `param` is the name of the field it came from (None: the request as a whole)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ContextLengthError(InvalidParamError):
    """The prompt plus the tokens asked for (at least one) does not fit the context window."""

    def __init__(
        self, num_prompt_tokens: int, max_tokens: int | None, max_model_len: int, param: str = "prompt"
    ) -> None:
        if max_tokens:
            message = (
                f"the {param} has {num_prompt_tokens} tokens and max_tokens asks for {max_tokens} more, "
                f"but the context limit is {max_model_len} tokens"
            )
        else:
            message = (
                f"the {param} has {num_prompt_tokens} tokens, but the context limit is {max_model_len} "
                "tokens (prompt plus at least one generated token)"
            )
        super().__init__(message, param)
        self.num_prompt_tokens = num_prompt_tokens
        self.max_tokens = max_tokens
        self.max_model_len = max_model_len


class ModelLoadError(ValueError):
    """A model file is missing, truncated, malformed or unsupported. The message names the file."""


class EngineDeadError(RuntimeError):
    """The engine thread stopped after an internal error; the server must be restarted."""


class StepFailedError(RuntimeError):
    """The forward pass of one step raised: its requests were aborted (blocks freed), the engine lives on."""

    def __init__(self, request_ids: list[str], cause: BaseException) -> None:
        super().__init__(f"an engine step failed ({type(cause).__name__}); its requests were aborted")
        self.request_ids = request_ids


class RequestAbortedError(RuntimeError):
    """The request was aborted by the server (`AsyncEngine.abort_all`, e.g. at the end of a shutdown drain)."""


class RequestTimeoutError(RequestAbortedError):
    """The request ran longer than its time limit (`AsyncEngine.submit(timeout=...)`) and was aborted."""


__all__ = [
    "InvalidParamError",
    "ContextLengthError",
    "ModelLoadError",
    "EngineDeadError",
    "RequestAbortedError",
    "StepFailedError",
    "RequestTimeoutError",
]
