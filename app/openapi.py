"""The OpenAPI document (/openapi.json), made to say what the server really answers.

FastAPI documents a 422 for every body it validates; this server answers validation errors with a 400 in
OpenAI's envelope instead. So: every operation documents the error statuses the middleware and the
handlers can produce (400, 401, 404, 413, 429, 431, 500, 503) with the envelope's schema and no 422; the
streaming routes document `text/event-stream` beside JSON; /metrics is Prometheus text. A fuzzer or a
client generator reads this document (tests/test_fuzz.py runs schemathesis against it).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERRORS = {
    "400": "invalid request: a bad field (named in `param`), invalid JSON, context length exceeded",
    "401": "missing or wrong API key (with --api-key)",
    "404": "unknown model, route or stored response",
    "413": "request body over --max-body-bytes",
    "429": "too many requests in flight (--max-queue); see Retry-After",
    "431": "too many or too large header fields",
    "500": "an engine step failed or an internal error",
    "503": "the model is loading, the server is draining, or the engine died",
}
STREAMING = ("/v1/completions", "/v1/chat/completions", "/v1/responses")
ENVELOPE = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def _document(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    components["ErrorResponse"] = ENVELOPE
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status, text in ERRORS.items():
                responses.setdefault(status, {"description": text, "content": error})
            ok = responses.setdefault("200", {"description": "OK"})
            if path in STREAMING and method == "post":
                ok.setdefault("content", {})["text/event-stream"] = {"schema": {}}  # events: JSON chunks
            if path == "/metrics":
                ok["content"] = {"text/plain": {"schema": {"type": "string"}}}
    return schema


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _document(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
