"""The serving classes' base: submitting to the engine, tracking in the metrics, closing at the end.

Flow of a generation request (see DESIGN.md section 3):
    request checks (serving/validation.py) -> SamplingParams (InvalidParamError -> 400)
    -> admission slot (429 when full) -> tokenize / render off the event loop (serving/prompts.py)
    -> `Serving.submit`: AsyncEngine.submit per prompt, which checks token ids, emptiness and the
       context window (400 / context_length_exceeded, before any SSE byte)
    -> `Serving.generation` -> one JSON response, or SSE frames built from dicts.
Every path ends with `Generation.aclose()`: it closes the engine streams (aborting unfinished
requests, so a client that goes away frees its KV blocks within one engine step) and gives the
admission slot back.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Callable, Sequence

from starlette.requests import Request

from model import AsyncEngine, RequestOutput, RequestStream, SamplingParams

from ..context import RequestInfo, request_info
from ..errors import api_error_of
from ..state import ServerState
from .logprobs import LogprobFormatter
from .streams import ClientGone, last_items, until_disconnect


class Generation:
    """The engine requests of one HTTP request after they were accepted.

    `outputs[i]` is prompt i's output stream as the metrics observe it. `aclose()` (idempotent) closes
    every engine stream, aborting what has not finished, and releases the admission slot.
    """

    def __init__(
        self, streams: list[RequestStream], outputs: list[AsyncIterator[RequestOutput]], release: Callable[[], None]
    ) -> None:
        self.streams = streams
        self.outputs = outputs
        self._release: Callable[[], None] | None = release

    async def aclose(self) -> None:
        release, self._release = self._release, None
        if release is None:
            return
        try:
            for stream in self.streams:
                await stream.aclose()
        finally:
            release()


class Serving:
    """Base for the serving classes: the state and the way into the engine."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self._formatters: dict[tuple[int, bool], LogprobFormatter] = {}

    def request_info(self, raw: Request, completion_id: str, stream: bool, prompt: Any) -> RequestInfo | None:
        """The request log's record of this request, filled in with what the serving class knows."""
        info = request_info(raw)
        if info is not None:
            info.completion_id = completion_id
            info.stream = stream
            if self.state.settings.log_prompts:
                info.prompt = prompt
        return info

    async def submit(
        self, engine: AsyncEngine, requests: Sequence[tuple[str, list[int]]], params: SamplingParams, param: str
    ) -> list[RequestStream]:
        """Submit each (engine request id, prompt ids). The engine checks every request (InvalidParamError
        naming `param` for prompt errors, ContextLengthError with max_tokens reserved) before anything runs;
        if one is refused, the ones already submitted are closed and the error propagates."""
        streams: list[RequestStream] = []
        timeout = self.state.settings.request_timeout or None
        try:
            for request_id, ids in requests:
                streams.append(
                    await engine.submit(ids, params, request_id, param=param, reserve_max_tokens=True, timeout=timeout)
                )
        except BaseException:
            for stream in streams:
                await stream.aclose()
            raise
        return streams

    def generation(
        self,
        streams: list[RequestStream],
        prompt_lengths: Sequence[int],
        params: SamplingParams,
        info: RequestInfo | None,
    ) -> Generation:
        """The accepted streams with their timings and outcome recorded in the metrics; the Generation owns
        the admission slot taken for them from here on."""
        tracked = [
            self.state.metrics.track(stream, params.n, length, info) for stream, length in zip(streams, prompt_lengths)
        ]
        return Generation(streams, tracked, self.state.admission.release)

    @staticmethod
    async def final_outputs(raw: Request, gen: Generation) -> list[RequestOutput] | None:
        """Each prompt's final output for a non-streaming response (None: the client left first, and its
        engine requests were aborted). Engine errors become APIErrors; the Generation is closed."""
        try:
            return await until_disconnect(raw, last_items(gen.outputs))
        except ClientGone:
            return None
        except Exception as exc:  # noqa: BLE001 - every failure is answered in the envelope
            raise api_error_of(exc) from None
        finally:
            await gen.aclose()

    def formatter(self, as_token_ids: bool, model_name: str | None = None) -> LogprobFormatter:
        """The logprob formatter of the engine serving `model_name` (default: the first)."""
        engine = self.state.engines.get(model_name or "") or self.state.engine
        assert engine is not None
        key = (id(engine), as_token_ids)
        fmt = self._formatters.get(key)
        if fmt is None:
            fmt = self._formatters[key] = LogprobFormatter(engine.tokenizer, as_token_ids)
        return fmt
