"""The per-request context that the request log creates and the serving layer fills in.

`RequestLogMiddleware` puts a RequestInfo into the ASGI scope of every HTTP request; the serving
classes add what they learn (completion id, token counts, finish reasons) and the log line and the
metrics read it when the response is over.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.requests import Request

SCOPE_KEY = "kvserve.request"


@dataclass
class RequestInfo:
    """What the serving layer tells the request log about one HTTP request (kept in the ASGI scope)."""

    request_id: str
    start: float = field(default_factory=time.monotonic)  # time.monotonic() when the request arrived
    completion_id: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reasons: list[str] = field(default_factory=list)
    stream: bool | None = None
    prompt: Any = None  # set only with --log-prompts


def request_info(request: "Request") -> RequestInfo | None:
    return request.scope.get(SCOPE_KEY)
