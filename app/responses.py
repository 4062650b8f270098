"""Builders of response and chunk dicts, and the SSE framing.

Responses are plain dicts serialized once with `json.dumps` (building pydantic models per SSE chunk
costs more than the rest of the chunk path). These builders are the one place that fixes their
shape: see DESIGN.md section 4.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from typing import Any

LOGPROB_FLOOR = -9999.0  # JSON has no -Infinity


def completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


def chat_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def clean_logprob(value: float) -> float:
    return value if math.isfinite(value) and value > LOGPROB_FLOOR else LOGPROB_FLOOR


def sse_frame(obj: dict[str, Any]) -> bytes:
    """One SSE event: `data: <json>\\n\\n`."""
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def model_card(name: str, created: int, root: str, max_model_len: int) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "kvserve",
        "root": root,
        "parent": None,
        "max_model_len": max_model_len,
    }
