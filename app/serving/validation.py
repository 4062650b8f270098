"""The request checks that stay in the app: what is about the HTTP request itself.

Everything else is checked once, where the knowledge lives, and named by the exception:
pydantic checks JSON types; SamplingParams checks ranges (InvalidParamError, renamed to the
request's field by `SamplingRequest.to_sampling_params`); `AsyncEngine.submit` checks prompt
token ids, stop_token_ids / logit_bias against the vocabulary, empty prompts and the context window,
and compiles a structured-output constraint (app/structured_request.py maps the request's fields to it).
app.errors maps those exceptions to 400s.
"""

from __future__ import annotations

from typing import Sequence

from ..errors import bad_request
from ..protocol import SamplingRequest


def check_text(value: str, param: str) -> None:
    """400 for text that cannot be encoded as UTF-8 (lone surrogates from JSON escapes)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(
            f"'{param}' contains text that is not valid Unicode (a lone surrogate such as \\ud800)", param
        ) from None


def check_common(req: SamplingRequest) -> None:
    """Checks shared by completions and chat that SamplingParams does not make."""
    if req.stream_options is not None and not req.stream:
        raise bad_request("'stream_options' is only allowed when 'stream' is true", "stream_options")
    stops = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
    for s in stops:
        check_text(s, "stop")


def check_token_ids(ids: Sequence[int], vocab_size: int, param: str) -> None:
    """400 naming `param` for an id outside the vocabulary, for endpoints that do not submit to the
    engine (/detokenize); generation requests get this check from `AsyncEngine.submit`."""
    for tok in ids:
        if not 0 <= tok < vocab_size:
            raise bad_request(f"token id {tok} is outside the vocabulary (0..{vocab_size - 1})", param)
