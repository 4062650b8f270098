"""Tool calls out of generated text: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks.

`ToolCallParser` is fed text deltas and returns events as soon as they are known: content (`str`; text
outside the calls, a partial `<tool_call` prefix held back), then for each call a `ToolCallDelta` with
a new index, id and name once the name is read, then `ToolCallDelta`s with argument fragments (the
arguments' JSON text exactly as the model wrote it). `parse_tool_calls(text)` runs the same machine over
a whole text, so a stream's fragments concatenate to exactly the non-streaming `arguments`.

Rules (the same for both): whitespace between content and a call, between calls and, when there are
calls, at the end, is dropped; a block that is not a JSON object with a string "name" (before the name
is known) stays content, as written; "arguments" must be an object ("parameters" is taken for it, and
a missing one is `{}`); the closing tag may be missing at the end. A call that breaks after its name was
streamed cannot be taken back: `parse_tool_calls` then returns the whole text as content and no calls.

A library user: `content, calls = parse_tool_calls(llm.chat(msgs, params, tools=tools)[0].outputs[0].text)`.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

from .grammar import CLOSE_TAG, OPEN_TAG
from .scanner import CallScanner


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex}"


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text of an object
    id: str = field(default_factory=new_call_id)


@dataclass
class ToolCallDelta:
    """One streamed piece of call `index`: the start (id and name set, arguments "") or an arguments fragment."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None


@dataclass
class _Call:
    id: str
    name: str
    arguments: str = ""
    valid: bool = True


Event = str | ToolCallDelta


def _holdback(text: str) -> int:
    """How many trailing characters might still become (whitespace +) an opening tag."""
    keep = 0
    for p in range(min(len(OPEN_TAG) - 1, len(text)), 0, -1):
        if text.endswith(OPEN_TAG[:p]):
            keep = p
            break
    j = len(text) - keep
    while j > 0 and text[j - 1].isspace():
        j -= 1
    return len(text) - j


class ToolCallParser:
    """Incremental parser: `feed(delta)` and, at the end, `finish()` return events (see the module doc)."""

    def __init__(self) -> None:
        self.calls: list[_Call] = []  # every call announced, in index order
        self._events: list[Event] = []
        self._state = "out"  # out | call | close | broken
        self._pending = ""  # out: text held back; close / broken: the tag read so far
        self._after_call = False  # out: drop whitespace right after a call
        self._lead = ""  # call: the whitespace before the tag
        self._raw = ""  # call: the block's text so far, tag included
        self._scan = CallScanner()
        self._sent_args = 0
        self._call: _Call | None = None

    @property
    def has_calls(self) -> bool:
        return bool(self.calls)

    @property
    def ok(self) -> bool:
        """Every announced call is complete and valid."""
        return all(c.valid for c in self.calls)

    def feed(self, text: str) -> list[Event]:
        for ch in text:
            self._char(ch)
        return self._take()

    def finish(self) -> list[Event]:
        if self._state == "out" and self._pending:
            if not (self.calls and self._pending.isspace()):
                self._content(self._pending)
        elif self._state == "call":
            if self._call is None:
                self._content(self._lead + self._raw)
            else:
                self._call.valid = False  # cut off inside the JSON
        self._state, self._pending = "out", ""
        return self._take()

    # ---- the machine ----------------------------------------------------------------------------

    def _char(self, ch: str) -> None:
        state = self._state
        if state == "out":
            self._out(ch)
        elif state == "call":
            self._in_call(ch)
        elif state == "close":
            self._pending += ch
            body = self._pending.lstrip()
            if body == CLOSE_TAG:
                self._state, self._pending, self._after_call = "out", "", True
            elif not CLOSE_TAG.startswith(body):
                rest, self._pending = self._pending, ""
                self._state, self._after_call = "out", True
                for c in rest:
                    self._out(c)
        else:  # broken: skip to the closing tag
            self._pending = (self._pending + ch)[-len(CLOSE_TAG) :]
            if self._pending == CLOSE_TAG:
                self._state, self._pending, self._after_call = "out", "", True

    def _out(self, ch: str) -> None:
        if self._after_call:
            if ch.isspace():
                return
            self._after_call = False
        self._pending += ch
        if self._pending.endswith(OPEN_TAG):
            before = self._pending[: -len(OPEN_TAG)]
            text = before.rstrip()
            self._content(text)
            self._lead, self._raw, self._pending = before[len(text) :], OPEN_TAG, ""
            self._state, self._scan, self._call, self._sent_args = "call", CallScanner(), None, 0
            return
        keep = _holdback(self._pending)
        if keep < len(self._pending):
            self._content(self._pending[: len(self._pending) - keep])
            self._pending = self._pending[len(self._pending) - keep :]

    def _in_call(self, ch: str) -> None:
        self._raw += ch
        scan = self._scan
        scan.feed(ch)
        if scan.error:
            if self._call is None:  # not a call after all: the tag is content, the rest is read again
                raw, lead = self._raw, self._lead
                self._content(lead + OPEN_TAG)
                self._state, self._after_call = "out", False
                for c in raw[len(OPEN_TAG) :]:
                    self._char(c)
            else:
                self._call.valid = False
                self._state, self._pending = "broken", ch
            return
        if self._call is None and scan.name is not None:
            self._call = _Call(new_call_id(), scan.name)
            self.calls.append(self._call)
            self._events.append(ToolCallDelta(len(self.calls) - 1, "", self._call.id, self._call.name))
        if self._call is not None and len(scan.arguments) > self._sent_args:
            self._args(scan.arguments[self._sent_args :])
        if scan.done:
            if self._call is None:  # an object without a name: content
                raw = self._raw
                self._state = "out"
                self._content(self._lead + raw)
                return
            self._close_call()
            self._state, self._pending = "close", ""

    def _close_call(self) -> None:
        """The call's JSON is complete: default the arguments and check them."""
        call = self._call
        assert call is not None
        if not self._scan.arguments:
            self._args("{}")
        try:
            call.valid = isinstance(json.loads(call.arguments), dict)
        except ValueError:
            call.valid = False

    def _args(self, text: str) -> None:
        assert self._call is not None
        self._call.arguments += text
        self._sent_args += len(text)
        last = self._events[-1] if self._events else None
        if isinstance(last, ToolCallDelta) and last.id is None and last.index == len(self.calls) - 1:
            last.arguments += text
        else:
            self._events.append(ToolCallDelta(len(self.calls) - 1, text))

    def _content(self, text: str) -> None:
        if not text:
            return
        if self._events and isinstance(self._events[-1], str):
            self._events[-1] += text
        else:
            self._events.append(text)

    def _take(self) -> list[Event]:
        events, self._events = self._events, []
        return events


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """(content, calls) of a whole generated text; (text, []) when a call is malformed or cut off."""
    parser = ToolCallParser()
    events = parser.feed(text) + parser.finish()
    if not parser.has_calls or not parser.ok:
        return text, []
    content = "".join(e for e in events if isinstance(e, str))
    return content, [ToolCall(c.name, c.arguments, c.id) for c in parser.calls]
