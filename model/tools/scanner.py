"""A character-at-a-time scanner of one tool call's JSON object: `{"name": "...", "arguments": {...}}`.

It reads the top-level object's keys and values as they arrive: `name` once its string is complete,
`arguments` (or `parameters`) as the raw text of the object value so far, `done` at the closing brace,
`error` as soon as the text cannot be such an object. Other keys' values are skipped. Nested values
are tracked by their brackets and strings only; the arguments are parsed once complete (the parser).
"""

from __future__ import annotations

import json

ARGUMENT_KEYS = ("arguments", "parameters")
_CLOSERS = {"{": "}", "[": "]"}
_SCALAR_START = frozenset("-0123456789tfn")


class CallScanner:
    def __init__(self) -> None:
        self.name: str | None = None
        self.arguments = ""
        self.done = False
        self.error = False
        self._state = "start"  # start | key_or_end | key | key_text | colon | value | in_value | after_value
        self._key = ""
        self._value = ""  # the current value's raw text (not kept for arguments: see `arguments`)
        self._stack: list[str] = []
        self._in_string = False
        self._escape = False
        self._scalar = False
        self._capturing = False  # the current value is the arguments

    def feed(self, ch: str) -> None:
        if self.error or self.done:
            return
        state = self._state
        if state == "in_value":
            self._value_char(ch)
        elif state == "key_text":
            self._key_char(ch)
        elif ch.isspace():
            return
        elif state == "start":
            self._expect(ch == "{", "key_or_end")
        elif state in ("key_or_end", "key"):
            if ch == "}" and state == "key_or_end":
                self.done = True
            else:
                self._key = ""
                self._expect(ch == '"', "key_text")
        elif state == "colon":
            self._expect(ch == ":", "value")
        elif state == "value":
            self._start_value(ch)
        elif ch == ",":  # after_value
            self._state = "key"
        else:
            self._expect(ch == "}", "after_value")
            self.done = not self.error

    def _expect(self, ok: bool, next_state: str) -> None:
        if ok:
            self._state = next_state
        else:
            self.error = True

    def _key_char(self, ch: str) -> None:
        if self._escape:
            self._escape = False
        elif ch == "\\":
            self._escape = True
        elif ch == '"':
            try:
                self._key = json.loads('"' + self._key + '"')
            except ValueError:
                self.error = True
                return
            self._state = "colon"
            return
        self._key += ch

    def _start_value(self, ch: str) -> None:
        self._capturing = self._key in ARGUMENT_KEYS and not self.arguments
        if self._capturing and ch != "{":
            self.error = True
            return
        self._value, self._stack, self._in_string, self._escape, self._scalar = "", [], False, False, False
        if ch in _CLOSERS:
            self._stack.append(_CLOSERS[ch])
        elif ch == '"':
            self._in_string = True
        elif ch in _SCALAR_START:
            self._scalar = True
        else:
            self.error = True
            return
        self._state = "in_value"
        self._append(ch)

    def _append(self, ch: str) -> None:
        if self._capturing:
            self.arguments += ch
        else:
            self._value += ch

    def _value_char(self, ch: str) -> None:
        if self._scalar:
            if ch in ",}" or ch.isspace():
                self._end_value()
                self.feed(ch)  # the delimiter belongs to the object
                return
            self._append(ch)
            return
        self._append(ch)
        if self._in_string:
            if self._escape:
                self._escape = False
            elif ch == "\\":
                self._escape = True
            elif ch == '"':
                self._in_string = False
                if not self._stack:
                    self._end_value()
        elif ch == '"':
            self._in_string = True
        elif ch in _CLOSERS:
            self._stack.append(_CLOSERS[ch])
        elif ch in "]}":
            if ch != self._stack.pop():
                self.error = True
            elif not self._stack:
                self._end_value()

    def _end_value(self) -> None:
        self._state, self._capturing = "after_value", False
        if self._key == "name" and self.name is None:
            try:
                name = json.loads(self._value)
            except ValueError:
                name = None
            if not isinstance(name, str) or not name:
                self.error = True
                return
            self.name = name
