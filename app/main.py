"""`kvserve serve`: the FastAPI app (create_app) and the command line (cli).

The model loads in a worker thread after the server starts listening, so /health answers 503
until it is ready. SIGTERM drains: /health turns 503, uvicorn stops accepting connections and lets
running requests finish (up to 30 s), then the engine thread stops.
"""
from __future__ import annotations

import asyncio
import logging
import sys
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, AsyncIterator

from .settings import Settings, build_parser, parse_settings

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("kvserve")

GRACEFUL_SHUTDOWN_S = 30


def create_app(settings: Settings | None = None, engine=None) -> "FastAPI":
    """The app for `settings`. Without `engine` it loads one in the background at start-up."""
    # Imported here so that `kvserve --help` and flag errors answer at once (torch takes seconds to import).
    from fastapi import FastAPI

    from . import __version__
    from .auth import APIKeyMiddleware
    from .errors import install_error_handlers
    from .limits import BodySizeLimitMiddleware
    from .routes import router
    from .serving.chat import ChatServing
    from .serving.completions import CompletionServing
    from .serving.tokenize import TokenizeServing
    from .state import ServerState

    settings = settings or Settings()
    state = ServerState(settings, engine)

    @asynccontextmanager
    async def lifespan(_app: "FastAPI") -> AsyncIterator[None]:
        loader = asyncio.create_task(state.load()) if state.engine is None else None
        try:
            yield
        finally:
            state.draining = True
            if loader is not None and not loader.done():
                loader.cancel()
            await asyncio.to_thread(state.shutdown)

    app = FastAPI(title="kvserve", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible completions and chat on kvserve's engine.")
    app.state.kv = state
    app.state.completions = CompletionServing(state)
    app.state.chat = ChatServing(state)
    app.state.tokenizing = TokenizeServing(state)
    install_error_handlers(app)
    app.include_router(router)
    # Added last = outermost: CORS, then API keys, then the body size limit.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.api_keys:
        app.add_middleware(APIKeyMiddleware, api_keys=settings.api_keys)
    if settings.allowed_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.allowed_origins, allow_methods=["*"],
                           allow_headers=["*"], allow_credentials="*" not in settings.allowed_origins)
    return app


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr, force=True)


def serve(settings: Settings) -> int:
    import uvicorn

    app = create_app(settings)
    state = app.state.kv

    class _Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:  # SIGINT / SIGTERM: start draining
            state.draining = True
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                            log_level=settings.log_level, access_log=settings.log_level == "debug",
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, lifespan="on")
    server = _Server(config)
    state.on_fatal = lambda: setattr(server, "should_exit", True)
    state.is_started = lambda: server.started
    server.run()
    return 2 if state.load_error is not None else 0


def cli(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "serve":
        parser = build_parser()
        parser.parse_args(argv)  # --help, or an unknown command: exits
        parser.print_help(sys.stderr)
        return 2
    settings = parse_settings(argv[1:])
    _configure_logging(settings.log_level)
    return serve(settings)


if __name__ == "__main__":
    sys.exit(cli())
