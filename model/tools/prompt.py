"""Tools and tool history in the chat prompt.

A template that knows tools (its source mentions `tools`) gets them as `tools=` in its Jinja context
(OpenAI function-tool dicts, as `transformers` passes them) and renders the history itself; assistant
`tool_calls` arguments are handed over as objects (templates write them with `| tojson`).

A template that does not (the default SmolLM2-135M's) gets a fallback, done on the messages:
- a system block (merged into the first system message, or prepended as one) that lists each tool as
  JSON `{"name", "description", "parameters"}` and asks for `<tool_call>{"name": ..., "arguments": {...}}
  </tool_call>` blocks (`FALLBACK_HEADER` ... `FALLBACK_FORMAT`, plus a line for the tool_choice);
- an assistant message's `tool_calls` become such blocks after its content;
- `tool` (and legacy `function`) results become a user message of `<tool_response>...</tool_response>`
  blocks (consecutive results share one message).
"""

from __future__ import annotations

import json
from typing import Any

from .grammar import CLOSE_TAG, OPEN_TAG, ToolChoice, named_tool

FALLBACK_HEADER = (
    "# Tools\n\nYou can call functions to help with the request. The functions, one per line as JSON "
    "(name, description, and parameters as a JSON schema):"
)
FALLBACK_FORMAT = (
    "To call a function, answer with one block per call, exactly in this form:\n"
    f'{OPEN_TAG}{{"name": "<function name>", "arguments": {{<the arguments as a JSON object>}}}}{CLOSE_TAG}\n'
    "The results come back in <tool_response></tool_response> blocks."
)
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"


def template_supports_tools(template: str | None) -> bool:
    """Whether the chat template renders tools itself (it refers to `tools`)."""
    return bool(template) and "tools" in template


def fallback_system_text(tools: list[dict[str, Any]], tool_choice: ToolChoice = "auto") -> str:
    """The system block that describes the tools to a template that cannot."""
    lines = [FALLBACK_HEADER]
    for tool in tools:
        fn = tool["function"]
        entry = {"name": fn["name"], "description": fn.get("description") or ""}
        entry["parameters"] = fn.get("parameters") or {}
        lines.append(json.dumps(entry, ensure_ascii=False))
    lines += ["", FALLBACK_FORMAT]
    name = named_tool(tool_choice)
    if name is not None:
        lines.append(f"You must call the function {name}.")
    elif tool_choice == "required":
        lines.append("You must call at least one function.")
    else:
        lines.append("If no function is needed, answer directly.")
    return "\n".join(lines)


def _arguments_object(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def call_text(call: dict[str, Any]) -> str:
    """One history tool call as the block the fallback asks the model to write."""
    fn = call.get("function") or {}
    args = _arguments_object(fn.get("arguments", {}))
    body = json.dumps({"name": fn.get("name", ""), "arguments": args}, ensure_ascii=False)
    return f"{OPEN_TAG}{body}{CLOSE_TAG}"


def _with_object_arguments(message: dict[str, Any]) -> dict[str, Any]:
    calls = []
    for call in message["tool_calls"]:
        fn = dict(call.get("function") or {})
        fn["arguments"] = _arguments_object(fn.get("arguments", {}))
        calls.append({**call, "function": fn})
    return {**message, "tool_calls": calls}


def _fallback_history(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    results: list[str] = []  # consecutive tool results, one user message
    for m in messages:
        role = m.get("role")
        if role in ("tool", "function"):
            results.append(f"{RESPONSE_OPEN}\n{m.get('content') or ''}\n{RESPONSE_CLOSE}")
            continue
        if results:
            out.append({"role": "user", "content": "\n".join(results)})
            results = []
        if role == "assistant" and m.get("tool_calls"):
            blocks = "".join(call_text(c) for c in m["tool_calls"])
            content = m.get("content") or ""
            rest = {k: v for k, v in m.items() if k not in ("tool_calls", "content")}
            out.append({**rest, "content": f"{content}\n{blocks}" if content else blocks})
        else:
            out.append(m)
    if results:
        out.append({"role": "user", "content": "\n".join(results)})
    return out


def prepare_chat(
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    template: str | None,
    tool_choice: ToolChoice = "auto",
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(messages to render, extra Jinja context) for `template`; unchanged when there are no tools and no
    tool history."""
    has_history = any(m.get("role") in ("tool", "function") or m.get("tool_calls") for m in messages)
    if template_supports_tools(template):
        if has_history:
            messages = [_with_object_arguments(m) if m.get("tool_calls") else m for m in messages]
        return messages, ({"tools": tools} if tools else {})
    if has_history:
        messages = _fallback_history(messages)
    if tools:
        text = fallback_system_text(tools, tool_choice)
        if messages and messages[0].get("role") == "system":
            first = messages[0]
            content = first.get("content") or ""
            messages = [{**first, "content": f"{content}\n\n{text}" if content else text}, *messages[1:]]
        else:
            messages = [{"role": "system", "content": text}, *messages]
    return messages, {}
