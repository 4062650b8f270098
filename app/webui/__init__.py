"""The built-in chat page: GET / serves a static HTML page, /webui/chat.js and /webui/chat.css its assets.

The files lie beside this module (package data: no build step, nothing from a CDN, works offline); the
page talks to the server's own /v1 API from the browser. `--no-webui` leaves the routes out, so / is a
404 like any unknown path. With --api-key the page and its assets stay public (app/auth.py); every API
call the page makes needs the key, which the page asks for on a 401.
"""

from __future__ import annotations

from pathlib import Path
from typing import Awaitable, Callable

from fastapi import FastAPI
from starlette.responses import Response

STATIC_DIR = Path(__file__).resolve().parent

# URL path -> (file in STATIC_DIR, media type).
ASSETS: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/webui/chat.js": ("chat.js", "text/javascript; charset=utf-8"),
    "/webui/chat.css": ("chat.css", "text/css; charset=utf-8"),
}
PAGE_PATHS = frozenset(ASSETS)  # public even with --api-key

HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    # Only the page's own files and the same-origin API; no inline script, no framing.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
}


def _endpoint(body: bytes, media_type: str) -> Callable[[], Awaitable[Response]]:
    async def serve_asset() -> Response:
        return Response(body, media_type=media_type, headers=HEADERS)

    return serve_asset


def install_webui(app: FastAPI) -> None:
    """Add the chat page's routes to `app` (the files are read once, here)."""
    for path, (name, media_type) in ASSETS.items():
        body = (STATIC_DIR / name).read_bytes()
        app.add_api_route(path, _endpoint(body, media_type), methods=["GET", "HEAD"], include_in_schema=False)
