"""What completions and chat share: validation helpers, logprob formats, disconnect handling, SSE.

Flow of a generation request (see DESIGN.md section 3):
    validate fields -> SamplingParams (400 on a bad value) -> admission slot (429 when full)
    -> tokenize / render off the event loop -> context check (400 before any SSE byte)
    -> engine.generate per prompt -> one JSON response, or SSE frames built from dicts.
Leaving an engine iterator early aborts the engine request, so a client that goes away (streaming:
sse-starlette cancels the body iterator; non-streaming: `until_disconnect`) frees its KV blocks
within one engine step.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import lru_cache
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence, TypeVar

from sse_starlette import EventSourceResponse
from starlette.requests import Request

from model import EngineDeadError, RequestAbortedError, RequestOutput, SamplingParams, TokenLogprobs

from ..errors import INVALID_REQUEST, SERVER_ERROR, UNAVAILABLE, APIError, bad_request, context_length_exceeded
from ..logs import RequestInfo, request_info
from ..protocol import SamplingRequest, clean_logprob, sse_frame
from ..state import ServerState

log = logging.getLogger("kvserve.app")
T = TypeVar("T")

_SAMPLING_FIELDS = ("n", "max_tokens", "temperature", "top_p", "top_k", "min_p", "presence_penalty",
                    "frequency_penalty", "repetition_penalty", "seed", "min_tokens", "logprobs", "logit_bias",
                    "stop_token_ids")


class ClientGone(Exception):
    """The client disconnected before the response was ready."""


# ------------------------------------------------------------------------------------------ validation


def check_text(value: str, param: str) -> None:
    """400 for text that cannot be encoded as UTF-8 (lone surrogates from JSON escapes)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(f"'{param}' contains text that is not valid Unicode (a lone surrogate such as \\ud800)",
                          param) from None


def _param_of(message: str) -> str | None:
    first = message.split(" ", 1)[0]
    if first in _SAMPLING_FIELDS:
        return first
    if "stop string" in message:
        return "stop"
    if "stop_token_ids" in message:
        return "stop_token_ids"
    if "logit_bias" in message:
        return "logit_bias"
    return None


def check_common(req: SamplingRequest) -> None:
    """Checks shared by completions and chat that SamplingParams does not make."""
    if req.stream_options is not None and not req.stream:
        raise bad_request("'stream_options' is only allowed when 'stream' is true", "stream_options")
    if req.response_format is not None:
        kind = req.response_format.type
        if kind in ("json_object", "json_schema"):
            raise bad_request(f"response_format type '{kind}' is not supported yet (structured output comes in a "
                              "later version); use {\"type\": \"text\"}", "response_format")
        if kind != "text":
            raise bad_request(f"unknown response_format type '{kind}'; use 'text'", "response_format")
    stops = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
    for s in stops:
        check_text(s, "stop")


def build_sampling_params(req: SamplingRequest, max_tokens: int | None, logprobs: int | None,
                          vocab_size: int) -> SamplingParams:
    try:
        params = req.to_sampling_params(max_tokens, logprobs)
    except ValueError as exc:
        message = str(exc)
        param = _param_of(message)
        if param == "max_tokens" and req.max_completion_tokens is not None:
            param = "max_completion_tokens"
            message = message.replace("max_tokens", "max_completion_tokens", 1)
        raise bad_request(message, param) from None
    for param, ids in (("stop_token_ids", params.stop_token_ids or ()), ("logit_bias", params.logit_bias or ())):
        for tok in ids:
            if not 0 <= tok < vocab_size:
                raise bad_request(f"{param}: token id {tok} is outside the vocabulary (0..{vocab_size - 1})", param)
    return params


def check_context(num_prompt_tokens: int, max_tokens: int | None, max_model_len: int, param: str) -> None:
    """400 context_length_exceeded if the prompt plus max_tokens (at least 1) does not fit."""
    if num_prompt_tokens == 0:
        raise bad_request(f"the {param} is empty (no tokens)", param)
    if num_prompt_tokens + (max_tokens or 1) > max_model_len:
        raise context_length_exceeded(max_model_len, num_prompt_tokens, max_tokens, param)


def encode_checked(tokenizer: Any, text: str, add_special_tokens: bool, param: str) -> list[int]:
    try:
        return tokenizer.encode(text, add_special_tokens=add_special_tokens)
    except Exception as exc:  # noqa: BLE001 - the tokenizer's errors are about the input
        raise bad_request(f"cannot tokenize the {param}: {exc}", param) from None


def generation_error(exc: BaseException) -> APIError:
    """An engine-side failure as an APIError (engine death 503, a refused request 400, else 500)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, RequestAbortedError):
        return APIError(503, "the server shut down before the request finished; retry it", UNAVAILABLE, None,
                        "shutdown_timeout")
    if isinstance(exc, EngineDeadError):
        return APIError(503, "the engine stopped after an internal error; restart the server",
                        UNAVAILABLE, None, "engine_dead")
    if isinstance(exc, ValueError):
        return APIError(400, str(exc), INVALID_REQUEST)
    log.error("generation failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
    return APIError(500, "internal server error", SERVER_ERROR, None, "internal_error")


def error_frame(exc: BaseException) -> bytes:
    err = generation_error(exc)
    return sse_frame(err.body())


# ------------------------------------------------------------------------------------------ logprobs


class LogprobFormatter:
    """Turns the engine's TokenLogprobs into the legacy (completions) and chat shapes."""

    def __init__(self, tokenizer: Any, as_token_ids: bool) -> None:
        self.as_ids = as_token_ids
        self._bytes = lru_cache(maxsize=1 << 16)(lambda tid: list(tokenizer.token_bytes(tid)))

    def _name(self, token_id: int, decoded: str) -> str:
        return f"token_id:{token_id}" if self.as_ids else decoded

    def legacy(self, entries: Sequence[TokenLogprobs], offset: int) -> tuple[dict[str, Any], int]:
        """{tokens, token_logprobs, top_logprobs, text_offset}; returns the next text offset."""
        tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
        for e in entries:
            name = self._name(e.sampled.token_id, e.sampled.decoded)
            lp = clean_logprob(e.sampled.logprob)
            tokens.append(name)
            token_logprobs.append(lp)
            top: dict[str, float] = {}
            for alt in e.top:
                top.setdefault(self._name(alt.token_id, alt.decoded), clean_logprob(alt.logprob))
            top.setdefault(name, lp)
            top_logprobs.append(top)
            offsets.append(offset)
            offset += len(e.sampled.decoded)
        return ({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
                 "text_offset": offsets}, offset)

    def chat(self, entries: Sequence[TokenLogprobs]) -> list[dict[str, Any]]:
        """logprobs.content[]: {token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}."""
        content = []
        for e in entries:
            s = e.sampled
            content.append({
                "token": self._name(s.token_id, s.decoded),
                "logprob": clean_logprob(s.logprob),
                "bytes": self._bytes(s.token_id),
                "top_logprobs": [
                    {"token": self._name(a.token_id, a.decoded), "logprob": clean_logprob(a.logprob),
                     "bytes": self._bytes(a.token_id)}
                    for a in e.top
                ],
            })
        return content


def finish_reason(reason: str | None) -> str | None:
    """The engine's reason as OpenAI spells it ("abort" is internal and never reaches a client)."""
    if reason is None or reason in ("stop", "length"):
        return reason
    return "stop"


# ------------------------------------------------------------------------------------------ engine I/O


async def merge_streams(streams: Sequence[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Items of several async iterators as they arrive, tagged with the iterator's position.

    Closing or cancelling the merged iterator closes every source (so engine requests are aborted).
    """
    if len(streams) == 1:
        source = streams[0]
        try:
            async for item in source:
                yield 0, item
        finally:
            await source.aclose()  # type: ignore[attr-defined]
        return
    queue: asyncio.Queue[tuple[int, Any, BaseException | None]] = asyncio.Queue()
    finished = object()

    async def pump(i: int, source: AsyncIterator[T]) -> None:
        try:
            async for item in source:
                queue.put_nowait((i, item, None))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer
            queue.put_nowait((i, None, exc))
        else:
            queue.put_nowait((i, finished, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            i, item, exc = await queue.get()
            if exc is not None:
                raise exc
            if item is finished:
                remaining -= 1
                continue
            yield i, item
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, return_exceptions=True)


async def last_item(stream: AsyncIterator[T]) -> T:
    last = None
    async for item in stream:
        last = item
    assert last is not None, "the engine stream ended without output"
    return last


async def _wait_disconnect(receive: Callable[[], Awaitable[dict]]) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run `work`; if the client disconnects first, cancel it (aborting its engine requests)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request.receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientGone()
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


class SSEResponse(EventSourceResponse):
    """sse-starlette's response with `\\n` framing and a callback when the response is over."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(content, sep="\n", ping=15)
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


class Serving:
    """Base for the serving classes: the state and shortcuts to the engine."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self._formatters: dict[bool, LogprobFormatter] = {}

    def request_info(self, raw: Request, completion_id: str, stream: bool, prompt: Any) -> RequestInfo | None:
        """The request log's record of this request, filled in with what the serving class knows."""
        info = request_info(raw)
        if info is not None:
            info.completion_id = completion_id
            info.stream = stream
            if self.state.settings.log_prompts:
                info.prompt = prompt
        return info

    def generate(self, ids: list[int], params: SamplingParams, engine_request_id: str,
                 info: RequestInfo | None) -> AsyncIterator[RequestOutput]:
        """The engine's output stream for one prompt, with its timings and outcome recorded in the metrics."""
        assert self.state.engine is not None
        stream = self.state.engine.generate(ids, params, engine_request_id)
        return self.state.metrics.track(stream, params.n, len(ids), info)

    def formatter(self, as_token_ids: bool) -> LogprobFormatter:
        fmt = self._formatters.get(as_token_ids)
        if fmt is None:
            assert self.state.engine is not None
            fmt = self._formatters[as_token_ids] = LogprobFormatter(self.state.engine.tokenizer, as_token_ids)
        return fmt
