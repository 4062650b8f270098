"""Repeated slashes in a request path collapse to one, so `//v1/models` and `/v1//chat/completions` route
as `/v1/models` and `/v1/chat/completions` (clients that join a base URL ending in `/` with a path
starting with `/` send such paths; vLLM and llama.cpp answer them).

A pure ASGI middleware: it rewrites `scope["path"]` and `scope["raw_path"]` (the query string is not
part of either) before anything routes, logs or counts the request.
"""

from __future__ import annotations

import re
from typing import Any, Awaitable, Callable

_REPEATED = re.compile(r"/{2,}")
_REPEATED_BYTES = re.compile(rb"/{2,}")

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class CollapseSlashesMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket"):
            path = scope.get("path", "")
            raw = scope.get("raw_path")
            if "//" in path or (raw is not None and b"//" in raw):
                scope = dict(scope)
                scope["path"] = _REPEATED.sub("/", path)
                if raw is not None:
                    scope["raw_path"] = _REPEATED_BYTES.sub(b"/", raw)
        await self.app(scope, receive, send)
