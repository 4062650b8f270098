"""What the server knows at run time: settings, the engine (None while loading), admission, names, and the
life-cycle phase (app/phase.py) that the shutdown drain moves forward."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Callable, TypeVar

from model import AsyncEngine, EngineStats

from .errors import INVALID_REQUEST, UNAVAILABLE, APIError
from .limits import Admission
from .metrics import Metrics
from .phase import Phase
from .response_store import ResponseStore
from .settings import Settings

log = logging.getLogger("kvserve")
T = TypeVar("T")
_NAME_ECHO_CHARS = 200  # at most this much of an unknown model name is echoed in the 404


def _echo(text: str) -> str:
    """Client text made safe to put into an error message: UTF-8-encodable (a lone surrogate from the
    request's JSON becomes an escape) and bounded."""
    if len(text) > _NAME_ECHO_CHARS:
        text = text[:_NAME_ECHO_CHARS] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


async def _in_daemon_thread(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a daemon thread (unlike asyncio.to_thread, a shutdown during a long model load
    does not wait for the load to finish)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, exc: BaseException | None) -> None:
        if future.cancelled():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)

    def run() -> None:
        try:
            result, exc = fn(*args), None
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine
            result, exc = None, e
        try:
            loop.call_soon_threadsafe(settle, result, exc)
        except RuntimeError:  # the event loop is closed: the server has gone
            pass

    threading.Thread(target=run, name="kvserve-load", daemon=True).start()
    return await future


class ServerState:
    def __init__(self, settings: Settings, engine: AsyncEngine | None = None) -> None:
        self.settings = settings
        self.engine: AsyncEngine | None = None  # the first model's (its names come first in served_names)
        self.engines: dict[str, AsyncEngine] = {}  # every served name -> its engine (several models: one each)
        self.phase = Phase.LOADING
        self.load_error: str | None = None  # why the model did not load (Phase.FAILED), for the log
        self.admission = Admission(settings.max_queue)
        self.served_names: list[str] = []
        self.created = int(time.time())
        self.metrics = Metrics(self.engine_stats, lambda: self.admission.in_flight, lambda: self.phase)
        self.responses: ResponseStore | None = (
            ResponseStore(settings.responses_store_size, settings.responses_store_ttl)
            if settings.responses_store
            else None
        )
        self.on_fatal: Callable[[], None] | None = None  # set by the CLI: stop the server
        self.engine_died = False  # an engine thread died: the server exits (status 1) for a restart
        self.is_started: Callable[[], bool] | None = None  # set by the CLI: uvicorn is listening
        if engine is not None:
            self._set_engine(engine)

    @property
    def model_name(self) -> str | None:
        return self.served_names[0] if self.served_names else None

    def engine_stats(self) -> EngineStats | None:
        """The first engine's latest stats snapshot; None while loading."""
        return self.engine.stats() if self.engine is not None else None

    @property
    def all_engines(self) -> list[AsyncEngine]:
        return list({id(e): e for e in self.engines.values()}.values())

    def _set_engine(self, engine: AsyncEngine, extra: list[AsyncEngine] | None = None) -> None:
        """The engines in model order; one name per model when there are several (else the names are aliases)."""
        engines = [engine, *(extra or [])]
        names = list(self.settings.served_model_names)
        if len(engines) == 1:
            named = [(n, engine) for n in names or [engine.served_name]]
        else:
            named = list(zip(names or [e.served_name for e in engines], engines))
        if len({n for n, _ in named}) != len(named):
            raise ValueError(f"two models are served under one name ({', '.join(n for n, _ in named)}); "
                             "give each model its own --served-model-name")  # fmt: skip
        self.served_names = [n for n, _ in named]
        self.engines = dict(named)
        self.metrics.bind_model(self.served_names[0])
        self.engine = engine
        self._advance(Phase.SERVING)

    def _advance(self, phase: Phase) -> None:
        self.phase = self.phase.advance(phase)

    def begin_drain(self) -> None:
        """SIGTERM: new requests get 503 from now on (signal-handler safe: one assignment)."""
        self._advance(Phase.DRAINING)

    def hurry(self) -> None:
        """A second signal: stop waiting for the requests in flight and abort them."""
        if self.phase is Phase.DRAINING:
            self.phase = Phase.ABORTING

    # ---- lifecycle -------------------------------------------------------------------------------

    async def load(self) -> None:
        """Build and start the engine in a worker thread; the event loop keeps answering meanwhile."""
        s = self.settings
        what = s.model or "the embedded SmolLM2-135M-Instruct"
        log.info("loading %s (dtype %s, device %s) ...", what, s.dtype, s.device)
        t0 = time.monotonic()
        loaded: list[AsyncEngine] = []
        try:
            loop = asyncio.get_running_loop()
            for path in [s.model, *s.extra_models]:  # one engine per model, loaded one after the other
                loaded.append(await _in_daemon_thread(AsyncEngine, s.engine_config(path)))
                loaded[-1].on_dead = lambda: loop.call_soon_threadsafe(self._engine_dead)
                loaded[-1].start()
            self._set_engine(loaded[0], loaded[1:])
        except Exception as exc:  # noqa: BLE001 - any load failure ends the server with one clear line
            for engine in loaded:
                engine.shutdown()
            self.load_error = str(exc) or type(exc).__name__
            self._advance(Phase.FAILED)
            log.error("cannot load the model: %s", self.load_error)
            if self.on_fatal is not None:
                self.on_fatal()
            return
        rt = loaded[0].runtime
        log.info(
            "model ready in %.1fs: %s, max_model_len %d, %d KV blocks of %d tokens",
            time.monotonic() - t0,
            self.model_name,
            rt.max_model_len,
            rt.num_blocks,
            rt.block_size,
        )
        while self.is_started is not None and not self.is_started():
            await asyncio.sleep(0.05)
        auth = " (API key required)" if s.api_keys else ""
        log.info("serving %s at http://%s:%d/v1%s", ", ".join(self.served_names), s.host, s.port, auth)

    def _engine_dead(self) -> None:
        """An engine died (its waiters already have their answer): /health is 503; the server exits."""
        self.engine_died = True
        log.error("the engine died; the server exits so that it can be restarted")
        if self.on_fatal is not None:
            self.on_fatal()

    async def drain(self, timeout: float) -> None:
        """After SIGTERM: let generation requests in flight finish for up to `timeout` seconds (or until a
        second signal moves the phase to ABORTING), then abort the rest; their streams end with an error
        event and [DONE], non-streaming ones get a 503. Returns when no generation request is in flight."""
        self.begin_drain()
        admission = self.admission
        loop = asyncio.get_running_loop()
        if admission.in_flight:
            log.info(
                "shutting down: waiting up to %gs for %d request(s) in flight; new requests get 503",
                timeout,
                admission.in_flight,
            )
        else:
            log.info("shutting down: no request in flight")
            return
        deadline = loop.time() + timeout
        while admission.in_flight and self.phase is Phase.DRAINING and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if admission.in_flight:
            hurried = self.phase is Phase.ABORTING  # only a second signal moves it there during the wait
            self._advance(Phase.ABORTING)
            aborted = sum(e.abort_all("the server is shutting down") for e in self.all_engines)
            log.warning(
                "shutdown: %s; aborted %d engine request(s) of %d HTTP request(s) still running",
                "second signal" if hurried else f"timeout of {timeout:g}s reached",
                aborted,
                admission.in_flight,
            )
            deadline = loop.time() + 2.0
            while admission.in_flight and loop.time() < deadline:
                await asyncio.sleep(0.02)
        else:
            log.info("shutdown: every request finished")

    def shutdown(self) -> None:
        """Stop the engine thread (blocks up to its join timeout: call it off the event loop)."""
        self._advance(Phase.STOPPED)
        for engine in self.all_engines:
            engine.shutdown()

    # ---- per request -----------------------------------------------------------------------------

    def health_error(self) -> APIError | None:
        if self.phase is Phase.FAILED:  # the reason (which may name files) goes to the log only
            return APIError(503, "the model failed to load; see the server log", UNAVAILABLE, None, "load_failed")
        if self.engine is None:
            return APIError(503, "the model is still loading", UNAVAILABLE, None, "model_loading", {"Retry-After": "2"})
        if any(e.is_dead for e in self.all_engines):
            return APIError(
                503, "the engine stopped after an internal error; restart the server", UNAVAILABLE, None, "engine_dead"
            )
        if self.phase.shutting_down:
            return APIError(503, "the server is shutting down", UNAVAILABLE, None, "draining")
        return None

    def ready_engine(self, model: str | None = None) -> AsyncEngine:
        """The engine serving `model` (a request's `model` field; empty: the first), or a 503 while loading,
        draining or after engine death, or a 404 for a name this server does not serve."""
        err = self.health_error()
        if err is not None:
            raise err
        assert self.engine is not None
        return self.engines[self.resolve_model(model)] if model else self.engine

    def resolve_model(self, name: str | None) -> str:
        """The name to echo in responses; 404 model_not_found for a name this server does not serve."""
        if not name:
            return self.served_names[0]
        if name in self.served_names:
            return name
        raise APIError(
            404,
            f"The model '{_echo(name)}' does not exist; this server serves {', '.join(self.served_names)}",
            INVALID_REQUEST,
            "model",
            "model_not_found",
        )
