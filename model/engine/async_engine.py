"""AsyncEngine: the LLMEngine on one background thread, driven from an asyncio event loop.

The loop side puts add/abort commands into a thread-safe inbox; the engine thread drains it
before each step and hands each step's outputs back with one `call_soon_threadsafe`. If a step
raises, the engine is dead: every waiting request gets EngineDeadError and new ones are refused.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import uuid
from typing import AsyncIterator

from ..config import EngineConfig
from ..outputs import RequestOutput
from ..sampling_params import SamplingParams
from .llm_engine import LLMEngine

log = logging.getLogger("kvserve.engine")


class EngineDeadError(RuntimeError):
    """The engine thread stopped after an internal error; the server must be restarted."""


class RequestAbortedError(RuntimeError):
    """The request was aborted by the server (`AsyncEngine.abort_all`, e.g. at the end of a shutdown drain)."""


class _Stream:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()


class AsyncEngine:
    def __init__(self, config: EngineConfig | None = None, engine: LLMEngine | None = None) -> None:
        self.engine = engine or LLMEngine(config or EngineConfig())
        self._inbox: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dead_error: BaseException | None = None

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kvserve-engine", daemon=True)
            self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def is_dead(self) -> bool:
        return self.dead_error is not None

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    # ---- requests -------------------------------------------------------------------------------

    async def generate(
        self, prompt: str | list[int], params: SamplingParams, request_id: str | None = None
    ) -> AsyncIterator[RequestOutput]:
        """Yield the request's outputs as they are produced; leaving early aborts it."""
        if self.dead_error is not None:
            raise EngineDeadError("the engine is dead") from self.dead_error
        request_id = request_id or uuid.uuid4().hex
        if isinstance(prompt, str):  # tokenize off the event loop
            text, ids = await asyncio.to_thread(self.engine.encode_prompt, prompt)
        else:
            text, ids = self.engine.encode_prompt(prompt)
        params.check_token_ids(self.engine.runtime.vocab_size)
        stream = _Stream(asyncio.get_running_loop())
        with self._lock:
            if request_id in self._streams:
                raise ValueError(f"request id {request_id!r} is already in use")
            self._streams[request_id] = stream
        self._inbox.put(("add", request_id, ids, params, text))
        self._wakeup.set()
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
                if finished:
                    break
        finally:
            with self._lock:
                self._streams.pop(request_id, None)
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))
        self._wakeup.set()

    def abort_all(self, reason: str = "the server aborted the request") -> int:
        """End every request in flight: each `generate` iterator raises RequestAbortedError(reason)
        (its cleanup aborts the engine request and frees its blocks). Returns how many were ended.
        Thread-safe."""
        with self._lock:
            ids = list(self._streams)
        for request_id in ids:
            self._deliver_one(request_id, RequestAbortedError(reason))
        return len(ids)

    # ---- engine thread --------------------------------------------------------------------------

    def _drain_inbox(self) -> None:
        while True:
            try:
                cmd = self._inbox.get_nowait()
            except queue.Empty:
                return
            if cmd[0] == "add":
                _, request_id, ids, params, text = cmd
                with self._lock:
                    alive = request_id in self._streams
                if not alive:
                    continue  # the client left before the request reached the engine
                try:
                    self.engine.add_request(request_id, ids, params, prompt_text=text)
                except ValueError as exc:
                    self._deliver_one(request_id, exc)
            else:
                self.engine.abort_request(cmd[1])

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._drain_inbox()
                if not self.engine.has_unfinished_requests():
                    self._wakeup.wait(0.5)
                    self._wakeup.clear()
                    continue
                outputs = self.engine.step()
                if outputs:
                    self._deliver(outputs)
        except BaseException as exc:  # noqa: BLE001 - any failure kills the engine, loudly
            log.exception("engine step failed; the engine is dead")
            self.dead_error = exc
            with self._lock:
                streams = list(self._streams.items())
            for request_id, _stream in streams:
                self._deliver_one(request_id, EngineDeadError(f"the engine died: {type(exc).__name__}"))

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Stream, RequestOutput]]] = {}
        with self._lock:
            for out in outputs:
                stream = self._streams.get(out.request_id)
                if stream is not None:
                    by_loop.setdefault(stream.loop, []).append((stream, out))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # the loop is closed
                pass

    def _deliver_one(self, request_id: str, item: RequestOutput | BaseException) -> None:
        with self._lock:
            stream = self._streams.get(request_id)
        if stream is not None:
            try:
                stream.loop.call_soon_threadsafe(stream.queue.put_nowait, item)
            except RuntimeError:
                pass


def _put_all(items: list[tuple[_Stream, RequestOutput]]) -> None:
    for stream, out in items:
        stream.queue.put_nowait(out)
