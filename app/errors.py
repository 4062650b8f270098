"""The OpenAI error envelope and the handlers that put every error into it.

Every error a client sees is `{"error": {"message", "type", "param", "code"}}`:
validation errors are 400 (not FastAPI's 422), unknown routes 404, unexpected exceptions 500
without internals (the traceback goes to the log only). The engine's errors map in one place,
`api_error_of`: InvalidParamError -> 400 naming its `.param`, ContextLengthError -> 400
context_length_exceeded, a shutdown abort or a dead engine -> 503.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from model.errors import (
    ContextLengthError,
    EngineDeadError,
    InvalidParamError,
    RequestAbortedError,
    RequestTimeoutError,
    StepFailedError,
)

log = logging.getLogger("kvserve.app")

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
RATE_LIMIT = "rate_limit_error"
SERVER_ERROR = "server_error"
UNAVAILABLE = "service_unavailable_error"


class APIError(Exception):
    """An error answered to the client in the OpenAI envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, INVALID_REQUEST, param, code)


def context_length_exceeded(max_model_len: int, prompt_tokens: int, max_tokens: int | None, param: str) -> APIError:
    asked = prompt_tokens + (max_tokens or 1)
    what = "messages" if param == "messages" else "prompt"
    tail = f", {max_tokens} in the completion" if max_tokens else ", at least 1 to generate"
    return APIError(
        400,
        f"This model's maximum context length is {max_model_len} tokens. However, you requested {asked} tokens "
        f"({prompt_tokens} in the {what}{tail}). Please reduce the length of the {what} or completion.",
        INVALID_REQUEST,
        param,
        "context_length_exceeded",
    )


def api_error_of(exc: BaseException) -> APIError:
    """Any exception as the error the client sees (used by the handlers below and by SSE error events)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ContextLengthError):
        return context_length_exceeded(exc.max_model_len, exc.num_prompt_tokens, exc.max_tokens, exc.param or "prompt")
    if isinstance(exc, InvalidParamError):
        return bad_request(str(exc), exc.param)
    if isinstance(exc, RequestTimeoutError):
        return APIError(408, f"{exc}; it was aborted (--request-timeout)", INVALID_REQUEST, None, "request_timeout")
    if isinstance(exc, RequestAbortedError):
        return APIError(
            503, "the server shut down before the request finished; retry it", UNAVAILABLE, None, "shutdown_timeout"
        )
    if isinstance(exc, StepFailedError):
        return APIError(
            500, "the engine step running this request failed; the request was aborted, retry it", SERVER_ERROR,
            None, "engine_step_failed",
        )  # fmt: skip
    if isinstance(exc, EngineDeadError):
        return APIError(
            503, "the engine stopped after an internal error; restart the server", UNAVAILABLE, None, "engine_dead"
        )
    log.error("request failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
    return APIError(500, "internal server error", SERVER_ERROR, None, "internal_error")


def error_body(
    message: str, type: str = INVALID_REQUEST, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_bytes(status: int, message: str, type: str, param: str | None = None, code: str | None = None) -> bytes:
    return json.dumps(error_body(message, type, param, code), ensure_ascii=False).encode("utf-8")


class ErrorResponse(Response):
    media_type = "application/json"

    def __init__(
        self,
        status: int,
        message: str,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(error_bytes(status, message, type, param, code), status, headers)


def api_error_response(exc: APIError) -> ErrorResponse:
    return ErrorResponse(exc.status, exc.message, exc.type, exc.param, exc.code, exc.headers)


async def send_error(
    send: Any, status: int, message: str, type: str, code: str | None = None, headers: dict[str, str] | None = None
) -> None:
    """Answer an error straight from ASGI middleware (no app involved)."""
    body = error_bytes(status, message, type, None, code)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _describe_validation(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    parts = []
    param = None
    for err in errors[:3]:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        where = ".".join(loc)
        if param is None and loc:
            param = loc[0]
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx") or {}
            return f"the request body is not valid JSON: {ctx.get('error', err.get('msg'))}", None
        if err.get("type") == "missing":
            parts.append(f"'{where}' is required" if where else "a JSON object body is required")
        elif not loc:
            parts.append(f"the request body is invalid: {err.get('msg')}")
        else:
            parts.append(f"'{where}': {err.get('msg')}")
    if len(errors) > 3:
        parts.append(f"and {len(errors) - 3} more problem(s)")
    return "; ".join(parts) or "invalid request", param


_HTTP_CODES = {404: ("not_found", INVALID_REQUEST), 405: ("method_not_allowed", INVALID_REQUEST)}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> Response:
        return api_error_response(exc)

    async def _engine_error(_request: Request, exc: Exception) -> Response:
        return api_error_response(api_error_of(exc))

    for kind in (
        InvalidParamError,
        EngineDeadError,
        RequestAbortedError,
        StepFailedError,
    ):  # ContextLengthError: a subclass
        app.add_exception_handler(kind, _engine_error)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> Response:
        message, param = _describe_validation(list(exc.errors()))
        return ErrorResponse(400, message, INVALID_REQUEST, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        default = (None, INVALID_REQUEST if exc.status_code < 500 else SERVER_ERROR)
        code, type = _HTTP_CODES.get(exc.status_code, default)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return ErrorResponse(exc.status_code, message, type, None, code, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> Response:
        log.error("unhandled error: %s: %s", type(exc).__name__, exc, exc_info=exc)
        return ErrorResponse(500, "internal server error", SERVER_ERROR, None, "internal_error")
