"""Tool definitions checked, and the llguidance Lark grammar that makes a model's tool calls well formed.

A call is written `<tool_call>{"name": "<tool>", "arguments": {...}}</tool_call>` (the format the prompt
fallback asks for, and Hermes/Qwen-style templates use). The JSON around the arguments is fixed text in
the grammar, one alternative per tool, and the arguments are an inline `%json` of that tool's own
`parameters` schema (so each schema is its own root: its `$ref`s and `$defs` keep working), written
compactly with `", "` and `": "` separators:

- `"required"`: calls from the first token, one or more (exactly one with `parallel_tool_calls=False`);
- a named tool `{"type": "function", "function": {"name": ...}}`: exactly one call of that tool;
- `"auto"`: free text without `<tool_call>`, or free text that ends in `<tool_call>` followed by calls
  (the model decides; once it writes the tag, the rest is constrained);
- `"none"`: no grammar (and the server renders no tools).

Calls follow each other with nothing in between, and after the last call only the end is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from typing import Any

from ..errors import InvalidParamError
from ..sampling_params import SamplingParams
from ..structured.limits import check_schema
from ..structured.spec import StructuredOutputs

MAX_TOOLS = 128
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
TOOL_CHOICE_MODES = ("none", "auto", "required")
OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
# How the arguments are written: no free whitespace (a small model spends its tokens on newlines).
_JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

ToolChoice = str | dict[str, Any] | None


def check_tools(tools: Any) -> list[dict[str, Any]]:
    """The tools as OpenAI function-tool dicts, checked: InvalidParamError(param="tools") if malformed."""

    def bad(message: str) -> InvalidParamError:
        return InvalidParamError(message, "tools")

    if not isinstance(tools, list) or not tools:
        raise bad("tools must be a non-empty list of function tools")
    if len(tools) > MAX_TOOLS:
        raise bad(f"at most {MAX_TOOLS} tools are allowed, got {len(tools)}")
    seen: set[str] = set()
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise bad(f'{where} must be an object with "type": "function"')
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise bad(f"{where}.function must be an object")
        name = fn.get("name")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            raise bad(f"{where}.function.name must be 1 to 64 characters of a-z, A-Z, 0-9, _ and -, got {name!r}")
        if name in seen:
            raise bad(f"{where}.function.name {name!r} is used by another tool; names must be unique")
        seen.add(name)
        description = fn.get("description")
        if description is not None and not isinstance(description, str):
            raise bad(f"{where}.function.description must be a string")
        parameters = fn.get("parameters")
        if parameters is not None:
            if not isinstance(parameters, dict):
                raise bad(f"{where}.function.parameters must be a JSON schema object")
            if parameters.get("type", "object") != "object":
                raise bad(f'{where}.function.parameters must describe an object ("type": "object")')
            check_schema(parameters, "tools")
        out.append(tool)
    return out


def named_tool(tool_choice: ToolChoice) -> str | None:
    """The tool a named tool_choice forces ({"type": "function", "function": {"name": ...}}), else None."""
    if isinstance(tool_choice, dict):
        fn = tool_choice.get("function")
        if tool_choice.get("type") == "function" and isinstance(fn, dict) and isinstance(fn.get("name"), str):
            return fn["name"]
    return None


def check_tool_choice(tool_choice: ToolChoice, tools: list[dict[str, Any]] | None) -> str | dict[str, Any]:
    """tool_choice checked against the tools ("auto" when tools are given without one, else "none")."""
    if tool_choice is None:
        return "auto" if tools else "none"
    name = named_tool(tool_choice)
    if name is None and tool_choice not in TOOL_CHOICE_MODES:
        raise InvalidParamError(
            'tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}',
            "tool_choice",
        )
    if (name is not None or tool_choice == "required") and not tools:
        raise InvalidParamError("a required or named tool_choice needs tools", "tool_choice")
    if name is not None and name not in {t["function"]["name"] for t in tools or ()}:
        raise InvalidParamError(f"tool_choice names the function {name!r}, which is not among the tools", "tool_choice")
    return tool_choice


def _lit(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a JSON string literal is a Lark string literal


def _arguments_schema(tool: dict[str, Any]) -> dict[str, Any]:
    schema = dict(tool["function"].get("parameters") or {})
    schema.setdefault("type", "object")
    schema["x-guidance"] = {**_JSON_STYLE, **(schema.get("x-guidance") or {})}
    return schema


def _tool_rules(tools: list[dict[str, Any]]) -> list[str]:
    rules = []
    for i, tool in enumerate(tools):
        head = _lit('{"name": ' + json.dumps(tool["function"]["name"]) + ', "arguments": ')
        rules.append(f"tool_{i}: {head} args_{i} {_lit('}' + CLOSE_TAG)}")
        rules.append(f"args_{i}: %json {json.dumps(_arguments_schema(tool), ensure_ascii=False)}")
    return rules


def tool_grammar(
    tools: list[dict[str, Any]], tool_choice: ToolChoice = "auto", parallel_tool_calls: bool = True
) -> str | None:
    """The Lark grammar for `tool_choice` over checked `tools`; None for "none"."""
    tool_choice = check_tool_choice(tool_choice, tools)
    if tool_choice == "none":
        return None
    name = named_tool(tool_choice)
    if name is not None:
        tools = [t for t in tools if t["function"]["name"] == name]
    lines = ["call: " + " | ".join(f"tool_{i}" for i in range(len(tools)))]
    more = f" ({_lit(OPEN_TAG)} call)*" if parallel_tool_calls and name is None else ""
    if tool_choice == "auto":
        lines[:0] = [
            "start: FREE | lead calls",
            f"FREE: /(?s:.*)/ & ~/(?s:.*{re.escape(OPEN_TAG)}.*)/",
            f"lead[suffix={_lit(OPEN_TAG)}]: FREE",
            f"calls: call{more}",
        ]
    else:
        lines.insert(0, f"start: {_lit(OPEN_TAG)} call{more}")
    return "\n".join(lines + _tool_rules(tools)) + "\n"


def tool_constraint(
    tools: list[dict[str, Any]], tool_choice: ToolChoice = "auto", parallel_tool_calls: bool = True
) -> StructuredOutputs | None:
    """The grammar as a StructuredOutputs (param "tools": a schema llguidance refuses names the tools)."""
    grammar = tool_grammar(tools, tool_choice, parallel_tool_calls)
    return None if grammar is None else StructuredOutputs(grammar=grammar, param="tools")


def with_tool_grammar(
    params: SamplingParams | Sequence[SamplingParams] | None,
    constraint: StructuredOutputs | None,
    tool_choice: ToolChoice = "auto",
) -> Any:
    """`params` (one, a list or None: the defaults) carrying the tool grammar. A params object that already
    has a constraint keeps it under "auto" (its answer is content); under "required" or a named tool the
    two constraints conflict: InvalidParamError(param="tool_choice")."""

    def one(p: SamplingParams) -> SamplingParams:
        if constraint is None:
            return p
        if p.structured_outputs is not None:
            if tool_choice == "auto":
                return p
            other = p.structured_outputs.param
            raise InvalidParamError(
                f"tool_choice {json.dumps(tool_choice)} and {other} are two constraint sources on the output; "
                "send only one",
                "tool_choice",
            )
        return dataclasses.replace(p, structured_outputs=constraint)

    if params is None:
        return one(SamplingParams())
    if isinstance(params, SamplingParams):
        return one(params)
    return [one(p) for p in params]
