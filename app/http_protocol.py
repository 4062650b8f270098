"""uvicorn's h11 HTTP/1.1 protocol, with protocol errors answered in the OpenAI envelope.

kvserve pins this class as uvicorn's `http` implementation, so the parser does not change with what
happens to be installed (httptools). h11 rejects what is not HTTP/1.x (`GARBAGE`, `GET / HTTP/9.9x`,
bad header syntax, a bad Content-Length) and a head that grows past `h11_max_incomplete_event_size`
before it is complete; uvicorn then answers a text/plain 400. Here that answer is a JSON error (431
for the oversized head, else 400) with `Connection: close`, written straight to the socket; no
traceback or file path reaches the client or the log.
"""

from __future__ import annotations

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import INVALID_REQUEST, error_bytes
from .limits import HEADERS_TOO_LARGE, MAX_HEADER_BYTES

_REASONS = {400: b"Bad Request", 431: b"Request Header Fields Too Large"}


def error_response(status: int, message: str, code: str) -> bytes:
    """A complete HTTP/1.1 error response that closes the connection."""
    body = error_bytes(status, message, INVALID_REQUEST, None, code)
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % (
        status,
        _REASONS[status],
        len(body),
    )
    return head + body


class EnvelopeH11Protocol(H11Protocol):
    """H11Protocol whose answer to a request it cannot parse is an OpenAI error envelope."""

    def send_400_response(self, msg: str) -> None:  # uvicorn calls it on h11.RemoteProtocolError
        limit = self.config.h11_max_incomplete_event_size or MAX_HEADER_BYTES
        if len(self.conn.trailing_data[0]) > limit:
            data = error_response(
                431, f"the request line and headers are larger than the limit of {limit} bytes", HEADERS_TOO_LARGE
            )
        else:
            data = error_response(400, "the request is not valid HTTP/1.1", "invalid_http_request")
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # A request of this connection is still in the app (its body was malformed): drop its answer.
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started or self.conn.our_state is not h11.SEND_RESPONSE:
                self.transport.close()  # half a response is out: closing is the only answer left
                return
        if not self.transport.is_closing():
            self.transport.write(data)
        self.transport.close()
