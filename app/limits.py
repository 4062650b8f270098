"""Request limits: header count and size (431), the body size cap (413), the admission queue (429).

The header limits hold for the request line plus the header lines: at most MAX_HEADERS fields and
MAX_HEADER_BYTES bytes. uvicorn's h11 refuses an incomplete head beyond MAX_HEADER_BYTES while it
arrives (app/http_protocol.py answers that with the same 431); `HeaderLimitMiddleware` checks a head
that arrived whole, and the count.
"""

from __future__ import annotations

from typing import Any

from .errors import INVALID_REQUEST, RATE_LIMIT, APIError, send_error

MAX_HEADERS = 100
MAX_HEADER_BYTES = 16 * 1024
HEADERS_TOO_LARGE = "request_header_fields_too_large"


def head_size(scope: dict) -> int:
    """Bytes of the request line and header lines as sent (CRLFs included, give or take the version)."""
    line = len(scope.get("method", "")) + len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
    return line + 12 + sum(len(name) + len(value) + 4 for name, value in scope.get("headers", ()))


class HeaderLimitMiddleware:
    """431 in the envelope for more than `max_headers` header fields or a head over `max_bytes`."""

    def __init__(self, app: Any, max_headers: int = MAX_HEADERS, max_bytes: int = MAX_HEADER_BYTES) -> None:
        self.app = app
        self.max_headers = max_headers
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            count = len(scope.get("headers", ()))
            if count > self.max_headers:
                message = f"the request has {count} header fields; the limit is {self.max_headers}"
            elif head_size(scope) > self.max_bytes:
                message = f"the request line and headers are larger than the limit of {self.max_bytes} bytes"
            else:
                message = ""
            if message:
                await send_error(send, 431, message, INVALID_REQUEST, HEADERS_TOO_LARGE, {"Connection": "close"})
                return
        await self.app(scope, receive, send)


class BodySizeLimitMiddleware:
    """Reads a request body up to `max_bytes` and replays it to the app; beyond it: 413.

    Checks Content-Length first (no read at all), then counts what arrives (chunked uploads).
    After the replay, `receive` is the server's again, so the app still sees `http.disconnect`.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await self._too_large(send)
                    return
                break
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._too_large(send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Any) -> None:
        await send_error(
            send,
            413,
            f"the request body is larger than the limit of {self.max_bytes} bytes",
            INVALID_REQUEST,
            "request_too_large",
            {"Connection": "close"},
        )


class Admission:
    """Counts generation requests in flight (waiting or running); refuses beyond `max_in_flight`.

    Single event loop: no lock needed. Every successful `acquire` must be paired with one `release`.
    """

    def __init__(self, max_in_flight: int) -> None:
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    def acquire(self) -> None:
        if self.in_flight >= self.max_in_flight:
            raise APIError(
                429,
                f"the server is at capacity ({self.max_in_flight} requests in flight); retry shortly",
                RATE_LIMIT,
                None,
                "rate_limit_exceeded",
                {"Retry-After": "1"},
            )
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        assert self.in_flight >= 0, "admission release without acquire"
