"""Logging: text or JSON lines, one line per HTTP request, engine stats while busy.

- `configure_logging(level, fmt)`: the root logger writes to stderr, as readable text or as one JSON
  object per line (`ts`, `level`, `logger`, `msg`, plus the record's structured fields).
- `RequestLogMiddleware` (pure ASGI, outermost): takes the client's `X-Request-Id` (or makes one),
  echoes it on the response, counts `kvserve:http_requests_total{method,route,status}` and logs one
  line when the response is over: id, method, path, status, prompt/completion tokens, latency. The
  prompt is logged only with `--log-prompts`. /health and /metrics log at debug (probes and scrapes).
- `log_engine_stats`: every few seconds while requests run, one line with running / waiting
  sequences, KV-cache usage and prompt / generation tokens per second.

Nothing here knows the server state: the middleware gets a `count_http` callable and the stats loop
callables for the engine's stats snapshot and the admission count. Text a client sent (a path, a
prompt with a lone surrogate) is escaped on the way out, so no line fails to encode.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .context import SCOPE_KEY, RequestInfo

if TYPE_CHECKING:
    from model import EngineStats

access_log = logging.getLogger("kvserve.access")
stats_log = logging.getLogger("kvserve.stats")

REQUEST_ID_HEADER = b"x-request-id"
_VALID_ID = re.compile(r"[!-~]{1,128}")  # printable ASCII, no spaces: safe to echo and to log
QUIET_PATHS = frozenset({"/health", "/metrics"})
_PROMPT_LOG_CHARS = 4096
_PATH_LOG_CHARS = 512


def _encodable(text: str) -> str:
    """`text` with what UTF-8 cannot encode (lone surrogates from a client's JSON) written as escapes."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


# ------------------------------------------------------------------------------------------ formatting


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ms), level, logger, msg, the record's `fields`, exc."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, tz=timezone.utc)
        out: dict[str, Any] = {
            "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                out.setdefault(key, value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return _encodable(json.dumps(out, ensure_ascii=False, default=str))


class TextFormatter(logging.Formatter):
    """The readable format, with unencodable characters escaped."""

    def format(self, record: logging.LogRecord) -> str:
        return _encodable(super().format(record))


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.captureWarnings(True)  # warnings go through the same format (json stays one object per line)


def _text(fields: dict[str, Any]) -> str:
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, str) and (not value or any(c in value for c in ' "=\n')):
            value = json.dumps(value, ensure_ascii=False)
        elif isinstance(value, (list, dict)):
            value = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        parts.append(f"{key}={value}")
    return " ".join(parts)


# ------------------------------------------------------------------------------------------ per request


def _client_request_id(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            text = value.decode("latin-1").strip()
            return text if _VALID_ID.fullmatch(text) else None
    return None


class RequestLogMiddleware:
    """`count_http(method, route, status)` is called once per response (the HTTP request counter)."""

    def __init__(self, app: Any, count_http: Callable[[str, str, int], None], known_paths: Iterable[str] = ()) -> None:
        self.app = app
        self.count_http = count_http
        self.known_paths = frozenset(known_paths)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        info = RequestInfo(_client_request_id(scope.get("headers", ())) or uuid.uuid4().hex)
        scope[SCOPE_KEY] = info
        status: int | None = None
        header = (REQUEST_ID_HEADER, info.request_id.encode("latin-1"))

        async def send_with_id(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", ()) if h[0].lower() != REQUEST_ID_HEADER]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            status = 500 if status is None else status
            raise
        finally:
            self._done(scope, info, status if status is not None else 499)

    def _route(self, scope: dict) -> str:
        route = scope.get("route")
        path = getattr(route, "path", None)
        if isinstance(path, str):
            return path
        return scope["path"] if scope["path"] in self.known_paths else "other"

    def _done(self, scope: dict, info: RequestInfo, status: int) -> None:
        method, path = scope["method"], scope["path"]
        self.count_http(method, self._route(scope), status)
        level = logging.DEBUG if path in QUIET_PATHS else logging.INFO
        if not access_log.isEnabledFor(level):
            return
        if len(path) > _PATH_LOG_CHARS:
            path = path[:_PATH_LOG_CHARS] + "..."
        fields: dict[str, Any] = {
            "request_id": info.request_id,
            "method": method,
            "path": path,
            "status": status,
            "latency_ms": round((time.monotonic() - info.start) * 1000, 1),
        }
        if info.completion_id is not None:
            fields.update(
                id=info.completion_id,
                stream=bool(info.stream),
                prompt_tokens=info.prompt_tokens,
                completion_tokens=info.completion_tokens,
                finish_reason=",".join(dict.fromkeys(info.finish_reasons)) or None,
            )
            if len(info.finish_reasons) > 1:
                fields["choices"] = len(info.finish_reasons)
        if info.prompt is not None:
            prompt = info.prompt
            if isinstance(prompt, str) and len(prompt) > _PROMPT_LOG_CHARS:
                prompt = prompt[:_PROMPT_LOG_CHARS] + "..."
            fields["prompt"] = prompt
        access_log.log(level, "%s", _text(fields), extra={"fields": fields})


# ------------------------------------------------------------------------------------------ engine stats


async def log_engine_stats(
    stats: Callable[[], "EngineStats | None"], in_flight: Callable[[], int], interval: float
) -> None:
    """Every `interval` seconds while the engine has work (or did some since the last line), log its stats.

    `stats()` is the engine's latest snapshot (None while loading); `in_flight()` the admitted requests."""
    prev: tuple[float, int, int, int, int] | None = None
    while True:
        await asyncio.sleep(interval)
        st = stats()
        if st is None:
            continue
        now = time.monotonic()
        cur = (now, st.prompt_tokens_total, st.generation_tokens_total, st.prefix_queries, st.prefix_hits)
        if prev is None:  # the first line comes one interval after the engine is up
            prev = cur
            continue
        dt = max(cur[0] - prev[0], 1e-9)
        d_prompt, d_gen = cur[1] - prev[1], cur[2] - prev[2]
        d_queries, d_hits = cur[3] - prev[3], cur[4] - prev[4]
        prev = cur
        if not (st.num_running or st.num_waiting or d_prompt or d_gen):
            continue  # idle: stay quiet
        fields = {
            "running": st.num_running,
            "waiting": st.num_waiting,
            "kv_usage_pct": round(100 * st.kv_usage, 1),
            "prompt_tokens_per_s": round(d_prompt / dt, 1),
            "generation_tokens_per_s": round(d_gen / dt, 1),
            "prefix_hit_pct": round(100 * d_hits / d_queries, 1) if d_queries else None,
            "requests_in_flight": in_flight(),
            "preemptions": st.num_preemptions,
        }
        stats_log.info("engine %s", _text(fields), extra={"fields": fields})
