"""StructuredOutputs: one constraint on a choice's output (vLLM's `structured_outputs` fields).

Exactly one source is set:
- `json`: a JSON schema (a dict, or its JSON text); the output is one JSON value valid against it;
- `json_object`: any JSON object;
- `regex`: the output fully matches the regular expression (Rust `regex` syntax, as llguidance takes it);
- `choice`: the output is exactly one of the strings;
- `grammar`: a Lark grammar (llguidance's dialect, `%json {...}` inline schemas allowed) or a GBNF grammar.

`param` names the request field the constraint came from (e.g. "response_format", "guided_json"),
so that a bad schema is reported against the field the client actually sent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidParamError

SOURCES = ("json", "json_object", "regex", "choice", "grammar")


@dataclass(frozen=True)
class StructuredOutputs:
    json: dict[str, Any] | str | None = None
    json_object: bool = False
    regex: str | None = None
    choice: tuple[str, ...] | list[str] | None = None
    grammar: str | None = None
    param: str = field(default="structured_outputs", compare=False)

    def __post_init__(self) -> None:
        given = [name for name in SOURCES if getattr(self, name) not in (None, False)]
        if len(given) != 1:
            what = "none" if not given else ", ".join(given)
            raise InvalidParamError(f"{self.param}: give exactly one of {', '.join(SOURCES)} (got {what})", self.param)
        if self.json is not None and not isinstance(self.json, (dict, str)):
            raise InvalidParamError(f"{self.param}: a JSON schema must be an object", self.param)
        if self.regex is not None and not isinstance(self.regex, str):
            raise InvalidParamError(f"{self.param}: regex must be a string", self.param)
        if self.grammar is not None and not isinstance(self.grammar, str):
            raise InvalidParamError(f"{self.param}: grammar must be a string", self.param)
        if self.choice is not None:
            if not isinstance(self.choice, (list, tuple)) or not self.choice:
                raise InvalidParamError(f"{self.param}: choice must be a non-empty list of strings", self.param)
            if not all(isinstance(c, str) and c for c in self.choice):
                raise InvalidParamError(f"{self.param}: every choice must be a non-empty string", self.param)
            object.__setattr__(self, "choice", tuple(self.choice))

    @property
    def kind(self) -> str:
        return next(name for name in SOURCES if getattr(self, name) not in (None, False))

    def cache_key(self) -> tuple[str, str]:
        """(kind, canonical text): equal constraints compile once."""
        kind = self.kind
        if kind == "json":
            text = self.json if isinstance(self.json, str) else json.dumps(self.json, sort_keys=True)
            return kind, text
        if kind == "choice":
            return kind, json.dumps(list(self.choice or ()))
        if kind == "json_object":
            return kind, ""
        return kind, str(getattr(self, kind))
