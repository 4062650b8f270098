"""Server-sent events: the streaming response and the error event of a stream already under way."""

from __future__ import annotations

import logging
from typing import Any, AsyncIterator, Awaitable, Callable

from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError

from ..errors import api_error_of
from ..responses import sse_frame


def error_frame(exc: BaseException) -> bytes:
    """The `data: {"error": ...}` event for a failure after the status line was sent."""
    return sse_frame(api_error_of(exc).body())


log = logging.getLogger("kvserve")


class SSEResponse(EventSourceResponse):
    """sse-starlette's response with `\\n` framing and a callback when the response is over (also when
    the client left before the body was read: the callback closes what the body would have closed).

    A client that stops reading: once one event cannot be handed to the socket within `send_timeout`
    seconds (`--stream-send-timeout`), the stream is dropped, its engine request aborted and its
    admission slot given back, so a stalled reader holds nothing for long."""

    def __init__(
        self, content: AsyncIterator[bytes], on_close: Callable[[], Awaitable[None]], send_timeout: float | None = None
    ) -> None:
        super().__init__(content, sep="\n", ping=15, send_timeout=send_timeout or None)
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            log.warning("a stream's client stopped reading for %gs: the stream was dropped", self.send_timeout)
        finally:
            await self._on_close()
