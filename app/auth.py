"""Bearer API keys: deny by default, constant-time comparison.

With at least one key configured, every HTTP route except the public ones (/health, /version and the
chat page's files, app/webui: /, /webui/chat.js, /webui/chat.css) needs `Authorization: Bearer <key>`;
a missing or wrong key is a 401 in the OpenAI envelope. Pure ASGI (no BaseHTTPMiddleware), so
streaming responses and disconnect detection are untouched.
"""

from __future__ import annotations

import hmac
from typing import Any, Iterable

from .errors import INVALID_REQUEST, send_error
from .webui import PAGE_PATHS

PUBLIC_PATHS = frozenset({"/health", "/version"}) | PAGE_PATHS  # the page loads without a key, its API calls don't


def key_matches(provided: str, keys: Iterable[bytes]) -> bool:
    """True if `provided` equals one of `keys`; compares against every key, each in constant time."""
    given = provided.encode("utf-8", "surrogateescape")
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given, key)
    return ok


class APIKeyMiddleware:
    def __init__(self, app: Any, api_keys: Iterable[str], public_paths: Iterable[str] = PUBLIC_PATHS) -> None:
        self.app = app
        self.keys = [k.encode("utf-8") for k in api_keys]
        self.public = frozenset(public_paths)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in self.public:
            await self.app(scope, receive, send)
            return
        header = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value
                break
        scheme, _, token = header.decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and token.strip() and key_matches(token.strip(), self.keys):
            await self.app(scope, receive, send)
            return
        message = "missing API key: send 'Authorization: Bearer <key>'" if not header else "incorrect API key provided"
        await send_error(send, 401, message, INVALID_REQUEST, "invalid_api_key", {"WWW-Authenticate": "Bearer"})
