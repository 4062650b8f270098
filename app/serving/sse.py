"""Server-sent events: the streaming response and the error event of a stream already under way."""

from __future__ import annotations

from typing import Any, AsyncIterator, Awaitable, Callable

from sse_starlette import EventSourceResponse

from ..errors import api_error_of
from ..responses import sse_frame


def error_frame(exc: BaseException) -> bytes:
    """The `data: {"error": ...}` event for a failure after the status line was sent."""
    return sse_frame(api_error_of(exc).body())


class SSEResponse(EventSourceResponse):
    """sse-starlette's response with `\\n` framing and a callback when the response is over (also when
    the client left before the body was read: the callback closes what the body would have closed)."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], Awaitable[None]]) -> None:
        super().__init__(content, sep="\n", ping=15)
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._on_close()
