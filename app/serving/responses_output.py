"""The Responses API's output: the response object, its output items, and the stream's events.

A finished choice becomes output items: a `message` with one `output_text` part (when there is text) and
one `function_call` item per parsed tool call. Status: `completed`, or `incomplete` with
`incomplete_details.reason = "max_output_tokens"` when the length limit ended it. `EventWriter` turns the
same choice, delta by delta, into OpenAI's event sequence, each event with its `type` and a strictly
increasing `sequence_number`: response.created, response.in_progress, then per item
output_item.added -> (content_part.added -> output_text.delta... -> output_text.done -> content_part.done |
function_call_arguments.delta... -> function_call_arguments.done) -> output_item.done, and one terminal
event: response.completed, response.incomplete or response.failed.
"""

from __future__ import annotations

import json
from typing import Any

from ..responses import now
from .responses_input import new_id


def message_item(text: str, item_id: str | None = None, status: str = "completed") -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {
        "id": item_id or new_id("msg"),
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [part] if status == "completed" else [],
    }


def call_item(call_id: str, name: str, arguments: str, item_id: str | None = None, status: str = "completed") -> dict:
    return {
        "id": item_id or new_id("fc"),
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def status_of(finish_reason: str | None) -> tuple[str, dict[str, str] | None]:
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    return "completed", None


def usage(input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached_tokens, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def response_object(echo: dict[str, Any], status: str, output: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """The response: `echo` carries the request's settings (id, model, instructions, tools, ...)."""
    text = "".join(p["text"] for item in output if item["type"] == "message" for p in item["content"])
    return {
        "object": "response",
        "created_at": echo.get("created_at", now()),
        "status": status,
        "error": None,
        "incomplete_details": None,
        "output": output,
        "output_text": text,
        "usage": None,
        **echo,
        **extra,
    }


class EventWriter:
    """The stream's events as (type, payload) pairs, numbered in order."""

    def __init__(self, echo: dict[str, Any]) -> None:
        self.echo = echo
        self.seq = -1
        self.output: list[dict[str, Any]] = []  # finished items
        self._text: tuple[str, list[str]] | None = None  # the open message: item id, text pieces
        self._call: dict[str, Any] | None = None  # the open function call item

    def _event(self, kind: str, **payload: Any) -> tuple[str, dict[str, Any]]:
        self.seq += 1
        return kind, {"type": kind, "sequence_number": self.seq, **payload}

    def start(self) -> list[tuple[str, dict[str, Any]]]:
        shell = response_object(self.echo, "in_progress", [])
        return [self._event("response.created", response=shell), self._event("response.in_progress", response=shell)]

    def text(self, delta: str) -> list[tuple[str, dict[str, Any]]]:
        events = self._close_call()
        if self._text is None:
            item_id = new_id("msg")
            self._text = (item_id, [])
            index = len(self.output)
            empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            events.append(self._event("response.output_item.added", output_index=index,
                                      item=message_item("", item_id, "in_progress")))  # fmt: skip
            events.append(self._event("response.content_part.added", item_id=item_id, output_index=index,
                                      content_index=0, part=empty))  # fmt: skip
        item_id, pieces = self._text
        pieces.append(delta)
        events.append(self._event("response.output_text.delta", item_id=item_id, output_index=len(self.output),
                                  content_index=0, delta=delta, logprobs=[]))  # fmt: skip
        return events

    def call_start(self, call_id: str, name: str) -> list[tuple[str, dict[str, Any]]]:
        events = self._close_text() + self._close_call()
        self._call = call_item(call_id, name, "", status="in_progress")
        events.append(self._event("response.output_item.added", output_index=len(self.output), item=dict(self._call)))
        return events

    def call_arguments(self, delta: str) -> list[tuple[str, dict[str, Any]]]:
        if self._call is None or not delta:
            return []
        self._call["arguments"] += delta
        return [self._event("response.function_call_arguments.delta", item_id=self._call["id"],
                            output_index=len(self.output), delta=delta)]  # fmt: skip

    def finish(self, finish_reason: str | None, usage_: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        events = self._close_text() + self._close_call()
        status, details = status_of(finish_reason)
        final = response_object(self.echo, status, self.output, incomplete_details=details, usage=usage_)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        events.append(self._event(kind, response=final))
        self.final = final
        return events

    def fail(self, code: str, message: str) -> list[tuple[str, dict[str, Any]]]:
        failed = response_object(self.echo, "failed", self.output, error={"code": code, "message": message})
        return [self._event("response.failed", response=failed)]

    def _close_text(self) -> list[tuple[str, dict[str, Any]]]:
        if self._text is None:
            return []
        (item_id, pieces), index = self._text, len(self.output)
        self._text = None
        item = message_item("".join(pieces), item_id)
        part = item["content"][0]
        self.output.append(item)
        return [
            self._event("response.output_text.done", item_id=item_id, output_index=index, content_index=0,
                        text=part["text"], logprobs=[]),
            self._event("response.content_part.done", item_id=item_id, output_index=index, content_index=0, part=part),
            self._event("response.output_item.done", output_index=index, item=item),
        ]  # fmt: skip

    def _close_call(self) -> list[tuple[str, dict[str, Any]]]:
        if self._call is None:
            return []
        item, index = self._call, len(self.output)
        self._call = None
        item["status"] = "completed"
        self.output.append(item)
        return [
            self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                        name=item["name"], arguments=item["arguments"]),
            self._event("response.output_item.done", output_index=index, item=item),
        ]  # fmt: skip


def event_frame(kind: str, payload: dict[str, Any]) -> bytes:
    """One SSE event with its name, as OpenAI sends them (no [DONE] at the end of a Responses stream)."""
    return f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()
