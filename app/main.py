"""`kvserve serve`: the FastAPI app (create_app) and the command line (cli).

The model loads in a worker thread after the server starts listening, so /health answers 503
until it is ready.

SIGTERM (or SIGINT) drains: the socket stays open and new requests get 503 (`draining`), requests in
flight may finish for up to --shutdown-timeout seconds, then the rest are aborted (streams end with
an error event and [DONE]); then uvicorn closes the connections, the engine thread stops and the
process exits with 0. A second signal skips the wait, a third stops at once. The steps are the phases
of app/phase.py.

HTTP/1.1 is uvicorn's h11 implementation, pinned (app/http_protocol.py): a request that is not valid
HTTP gets a 400 in the OpenAI envelope, one whose request line and headers outgrow the limit a 431.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, AsyncIterator

from .cli_args import build_parser, parse_settings

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .settings import Settings

log = logging.getLogger("kvserve")

# After the drain every generation request has ended; this only bounds other requests still open.
CONNECTION_CLOSE_TIMEOUT_S = 3


def create_app(settings: "Settings | None" = None, engine=None) -> "FastAPI":
    """The app for `settings`. Without `engine` it loads one in the background at start-up."""
    # Imported here so that flag errors answer at once (the engine package imports torch: seconds).
    from fastapi import FastAPI

    from . import __version__
    from .auth import APIKeyMiddleware
    from .errors import install_error_handlers
    from .limits import BodySizeLimitMiddleware, HeaderLimitMiddleware
    from .logs import RequestLogMiddleware, log_engine_stats
    from .openapi import install_openapi
    from .paths import CollapseSlashesMiddleware
    from .routes import router
    from .serving.chat import ChatServing
    from .serving.completions import CompletionServing
    from .serving.embeddings import EmbeddingServing
    from .serving.responses import ResponsesServing
    from .serving.tokenize import TokenizeServing
    from .settings import Settings
    from .state import ServerState

    settings = settings or Settings()
    state = ServerState(settings, engine)

    @asynccontextmanager
    async def lifespan(_app: "FastAPI") -> AsyncIterator[None]:
        loader = asyncio.create_task(state.load()) if state.engine is None else None
        stats = (
            asyncio.create_task(
                log_engine_stats(state.engine_stats, lambda: state.admission.in_flight, settings.log_stats_interval)
            )
            if settings.log_stats_interval > 0
            else None
        )
        try:
            yield
        finally:
            state.begin_drain()
            for task in (loader, stats):
                if task is not None and not task.done():
                    task.cancel()
            await asyncio.to_thread(state.shutdown)

    app = FastAPI(
        title="kvserve",
        version=__version__,
        lifespan=lifespan,
        description="OpenAI-compatible completions and chat on kvserve's engine.",
    )
    app.state.kv = state
    app.state.completions = CompletionServing(state)
    app.state.chat = ChatServing(state)
    app.state.embeddings = EmbeddingServing(state)
    app.state.responses = ResponsesServing(state)
    app.state.tokenizing = TokenizeServing(state)
    install_error_handlers(app)
    app.include_router(router)
    install_openapi(app)
    if settings.webui:
        from .webui import install_webui

        install_webui(app)
    # Added last = outermost: the request log (ids, status counts), the header limits, CORS, API keys, the
    # body size limit.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.api_keys:
        app.add_middleware(APIKeyMiddleware, api_keys=settings.api_keys)
    if settings.allowed_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            allow_credentials="*" not in settings.allowed_origins,
            expose_headers=["X-Request-Id"],
        )
    app.add_middleware(HeaderLimitMiddleware)
    app.add_middleware(
        RequestLogMiddleware,
        count_http=state.metrics.count_http,
        known_paths=[r.path for r in app.routes if "{" not in getattr(r, "path", "{")],
    )
    app.add_middleware(CollapseSlashesMiddleware)  # outermost: `//v1//models` routes (and logs) as /v1/models
    return app


def serve(settings: "Settings") -> int:
    import uvicorn

    from .http_protocol import EnvelopeH11Protocol
    from .limits import MAX_HEADER_BYTES
    from .phase import Phase

    app = create_app(settings)
    state = app.state.kv

    class _Server(uvicorn.Server):
        """uvicorn with a drain: on a signal it keeps listening (new requests get 503) until the requests
        in flight are done or aborted, and it does not re-raise the signal afterwards (exit code 0)."""

        signals = 0
        drain_task: "asyncio.Task[None] | None" = None

        def handle_exit(self, sig, frame) -> None:  # runs in the signal handler: only set flags
            self.signals += 1
            state.begin_drain()
            if self.signals == 2:
                state.hurry()
            elif self.signals > 2:
                self.force_exit = self.should_exit = True

        async def on_tick(self, counter: int) -> bool:
            if self.signals and self.drain_task is None:
                self.drain_task = asyncio.ensure_future(state.drain(settings.shutdown_timeout))
                self.drain_task.add_done_callback(lambda _t: setattr(self, "should_exit", True))
            return await super().on_tick(counter)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=CONNECTION_CLOSE_TIMEOUT_S,
        lifespan="on",
        http=EnvelopeH11Protocol,
        ws="none",
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
    )
    server = _Server(config)
    state.on_fatal = lambda: setattr(server, "should_exit", True)
    state.is_started = lambda: server.started
    server.run()
    if state.engine_died:
        return 1
    return 2 if state.phase is Phase.FAILED else 0


def cli(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "serve":
        parser = build_parser()
        parser.parse_args(argv)  # --help, or an unknown command: exits
        parser.print_help(sys.stderr)
        return 2
    settings = parse_settings(argv[1:])
    from .logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    if settings.ray:
        from .ray_serve import run

        code = run(settings, create_app)
    else:
        code = serve(settings)
    # The server is done and every log line is written: skip the interpreter's teardown, which takes
    # a second or two with torch loaded and would count against a container's stop timeout.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(cli())
