"""AsyncEngine: the LLMEngine on one background thread, driven from an asyncio event loop.

It is the only door from a server into the engine: runtime facts, the served name, chat rendering,
tokenization, request submission, abort, and an immutable stats snapshot that the engine thread
publishes after each step. The loop side puts add/abort commands into a thread-safe inbox; the engine
thread drains it before each step and hands each step's outputs back with one `call_soon_threadsafe`.
A forward pass that raises fails only its step's requests (StepFailedError, blocks freed); any other
failure kills the engine thread: every waiter gets EngineDeadError, new requests are refused, and
`on_dead` is called (a server exits then, for its orchestrator to restart it).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import uuid
from typing import Any, AsyncIterator, Callable

from ..config import EngineConfig
from ..errors import EngineDeadError, InvalidParamError, RequestAbortedError, RequestTimeoutError, StepFailedError
from ..outputs import RequestOutput
from ..sampling_params import SamplingParams
from ..structured.compiler import CompiledGrammar
from .llm_engine import LLMEngine
from .runtime import RuntimeInfo
from .stats import EngineStats

log = logging.getLogger("kvserve.engine")

COMPILE_TIMEOUT_S = 2.0  # longest a structured-output constraint may take to compile


class RequestStream:
    """The outputs of one submitted request, as an async iterator. Closing it before the request has
    finished (`aclose()`, or leaving an `async for` over `AsyncEngine.generate`) aborts the request."""

    def __init__(self, engine: AsyncEngine, request_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.engine = engine
        self.request_id = request_id
        self.loop = loop
        self.queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self.finished = False
        self.closed = False
        self.timer: asyncio.TimerHandle | None = None  # the time limit, if the request has one

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished or self.closed:
            raise StopAsyncIteration
        try:
            item = await self.queue.get()
        except BaseException:
            await self.aclose()
            raise
        if isinstance(item, BaseException):
            await self.aclose()
            raise item
        if item.finished:
            self.finished = True
            self.engine._forget(self.request_id)
        return item

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        self.engine._forget(self.request_id)
        if not self.finished:
            self.engine.abort(self.request_id)


class AsyncEngine:
    def __init__(self, config: EngineConfig | None = None, engine: LLMEngine | None = None) -> None:
        self._engine = engine or LLMEngine(config or EngineConfig())
        self._inbox: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._streams: dict[str, RequestStream] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stats: EngineStats = self._engine.stats()
        self.dead_error: BaseException | None = None
        self.on_dead: Callable[[], None] | None = None  # called on the engine thread once it has died

    # ---- what a server may read -----------------------------------------------------------------

    @property
    def runtime(self) -> RuntimeInfo:
        return self._engine.runtime

    @property
    def served_name(self) -> str:
        return self._engine.served_name

    @property
    def model_path(self) -> str:
        return self._engine.model_path

    @property
    def tokenizer(self) -> Any:
        return self._engine.tokenizer

    def stats(self) -> EngineStats:
        """The snapshot the engine thread published after its last step (immutable)."""
        return self._stats

    def render_chat(
        self,
        messages: list[dict],
        add_generation_prompt: bool = True,
        tools: list[dict] | None = None,
        tool_choice: str | dict | None = "auto",
    ) -> str:
        """The chat template applied to `messages` (ValueError on a template error), `tools` if given."""
        return self._engine.render_chat(
            messages, add_generation_prompt=add_generation_prompt, tools=tools, tool_choice=tool_choice
        )

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`. Thread-safe (call it off the event loop for long texts)."""
        return self._engine.tokenizer.encode(text, add_special_tokens=add_special_tokens)

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

    # ---- requests -------------------------------------------------------------------------------

    async def submit(
        self,
        prompt: str | list[int],
        params: SamplingParams,
        request_id: str | None = None,
        param: str = "prompt",
        reserve_max_tokens: bool = False,
        pooling: str | None = None,
        timeout: float | None = None,
    ) -> RequestStream:
        """Check a request and queue it; returns its output stream. InvalidParamError (naming `param` for
        prompt errors) is raised here, before anything runs; EngineDeadError once the engine has died.
        With `reserve_max_tokens`, prompt + max_tokens must fit the context (ContextLengthError). With
        `pooling` ("last" | "mean") it is an embedding request: one final output carrying `embedding`. With
        `timeout` (seconds), a request still running after it ends with RequestTimeoutError (aborted)."""
        if self.dead_error is not None:
            raise EngineDeadError("the engine is dead") from self.dead_error
        request_id = request_id or uuid.uuid4().hex
        if isinstance(prompt, str):  # tokenize off the event loop
            text, ids = await asyncio.to_thread(self._engine.encode_prompt, prompt)
        else:
            text, ids = self._engine.encode_prompt(prompt, param=param)
        self._engine.check_request(ids, params, param, reserve_max_tokens)
        grammar = await self._compile(params)
        stream = RequestStream(self, request_id, asyncio.get_running_loop())
        with self._lock:
            if request_id in self._streams:
                raise InvalidParamError(f"request id {request_id!r} is already in use", "request_id")
            self._streams[request_id] = stream
        if timeout:
            late = RequestTimeoutError(f"the request took longer than {timeout:g} s")
            stream.timer = stream.loop.call_later(timeout, self._deliver_one, request_id, late)
        self._inbox.put(("add", request_id, ids, params, text, grammar, pooling))
        self._wakeup.set()
        return stream

    async def _compile(self, params: SamplingParams) -> CompiledGrammar | None:
        """The constraint compiled in a worker thread (never the engine thread or the loop); refused past
        COMPILE_TIMEOUT_S (llguidance's limits bound the work left behind)."""
        spec = params.structured_outputs
        if spec is None:
            return None
        try:
            return await asyncio.wait_for(asyncio.to_thread(self._engine.compile_constraint, params), COMPILE_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise InvalidParamError(
                f"{spec.param}: the constraint took longer than {COMPILE_TIMEOUT_S:g} s to compile", spec.param
            ) from None

    async def generate(
        self, prompt: str | list[int], params: SamplingParams, request_id: str | None = None
    ) -> AsyncIterator[RequestOutput]:
        """Yield the request's outputs as they are produced; leaving early aborts it."""
        stream = await self.submit(prompt, params, request_id)
        try:
            async for out in stream:
                yield out
        finally:
            await stream.aclose()

    def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))
        self._wakeup.set()

    def abort_all(self, reason: str = "the server aborted the request") -> int:
        """End every request in flight (each stream raises RequestAbortedError, its cleanup frees the blocks);
        returns how many. Thread-safe."""
        with self._lock:
            ids = list(self._streams)
        for request_id in ids:
            self._deliver_one(request_id, RequestAbortedError(reason))
        return len(ids)

    def _forget(self, request_id: str) -> None:
        with self._lock:
            self._streams.pop(request_id, None)

    # ---- engine thread --------------------------------------------------------------------------

    def _drain_inbox(self) -> None:
        while True:
            try:
                cmd = self._inbox.get_nowait()
            except queue.Empty:
                return
            if cmd[0] == "add":
                _, request_id, ids, params, text, grammar, pooling = cmd
                with self._lock:
                    alive = request_id in self._streams
                if not alive:
                    continue  # the client left before the request reached the engine
                try:
                    self._engine.add_checked_request(request_id, ids, params, text, grammar, pooling)
                except ValueError as exc:
                    self._deliver_one(request_id, exc)
            else:
                self._engine.abort_request(cmd[1])

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._drain_inbox()
                if not self._engine.has_unfinished_requests():
                    self._stats = self._engine.stats()
                    self._wakeup.wait(0.5)
                    self._wakeup.clear()
                    continue
                try:
                    outputs = self._engine.step()
                except StepFailedError as exc:  # only that step's requests failed: answer them, go on
                    for request_id in exc.request_ids:
                        self._deliver_one(request_id, exc)
                    outputs = []
                self._stats = self._engine.stats()  # one reference swap: readers see a whole snapshot
                if outputs:
                    self._deliver(outputs)
        except BaseException as exc:  # noqa: BLE001 - any failure kills the engine, loudly
            log.exception("engine step failed; the engine is dead")
            self.dead_error = exc
            with self._lock:
                streams = list(self._streams)
            for request_id in streams:
                self._deliver_one(request_id, EngineDeadError(f"the engine died: {type(exc).__name__}"))
            if self.on_dead is not None:
                self.on_dead()

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[RequestStream, RequestOutput]]] = {}
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


def _put_all(items: list[tuple[RequestStream, RequestOutput]]) -> None:
    for stream, out in items:
        stream.queue.put_nowait(out)
