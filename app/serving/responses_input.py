"""Responses API request parts -> the chat-completions equivalents the engine path already serves.

- `input` (a string, or items): `message` items (role user / system / developer / assistant; content a
  string or `input_text` / `output_text` parts) become chat messages; `function_call` items become an
  assistant message's `tool_calls` (consecutive calls, and the assistant text just before them, are one
  message); `function_call_output` items become `tool` messages; `reasoning` items and item types this
  server does not know are skipped, as Codex-style clients send them. Images and files are refused (400).
- `tools`: `function` tools -> chat tools; other types (web_search, local_shell, mcp, ...) are ignored.
- `tool_choice`: none / auto / required / {"type": "function", "name"}; hosted-tool choices mean auto.
- `text.format`: text / json_object / json_schema {name, schema, strict} -> `response_format`.
Every error is an InvalidParamError naming the Responses field (`input[2].content`, `tools[0].name`, ...).
"""

from __future__ import annotations

import uuid
from typing import Any

from model import InvalidParamError

_ROLES = ("user", "system", "developer", "assistant")
_TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "refusal")
_SKIPPED_ITEMS = ("reasoning", "item_reference", "compaction")


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _text_of(content: Any, where: str) -> str:
    """A message's or an output's content (a string or text parts) as one string."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidParamError(f"{where} must be a string or a list of content parts", where)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS:
            text = part.get("text", part.get("refusal"))
            if not isinstance(text, str):
                raise InvalidParamError(f"{where}[{j}].text must be a string", f"{where}[{j}].text")
            texts.append(text)
        else:
            raise InvalidParamError(
                f"{where}[{j}]: content parts of type {kind!r} are not supported (this model reads text only)",
                f"{where}[{j}]",
            )
    return "".join(texts)


def _string(item: dict, key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidParamError(f"{where}.{key} must be a non-empty string", f"{where}.{key}")
    return value


def input_messages(value: str | list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(chat messages, the input items normalized with ids) of a request's `input`."""
    if isinstance(value, str):
        item = {"id": new_id("msg"), "type": "message", "role": "user", "status": "completed"}
        return [{"role": "user", "content": value}], [{**item, "content": [{"type": "input_text", "text": value}]}]
    messages: list[dict[str, Any]] = []
    items: list[dict[str, Any]] = []
    for i, raw in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(raw, dict):
            raise InvalidParamError(f"{where} must be an object (an input item)", where)
        kind = raw.get("type", "message" if "role" in raw else None)
        if kind == "message":
            role = raw.get("role")
            if role not in _ROLES:
                raise InvalidParamError(
                    f"{where}.role must be one of {', '.join(_ROLES)}, got {role!r}", f"{where}.role"
                )
            text = _text_of(raw.get("content"), f"{where}.content")
            part = "output_text" if role == "assistant" else "input_text"
            messages.append({"role": role, "content": text})
            items.append(
                {"id": raw.get("id") or new_id("msg"), "type": "message", "role": role, "status": "completed",
                 "content": [{"type": part, "text": text}]}
            )  # fmt: skip
        elif kind == "function_call":
            call = {
                "id": _string(raw, "call_id", where),
                "type": "function",
                "function": {"name": _string(raw, "name", where), "arguments": raw.get("arguments") or "{}"},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            items.append(
                {"id": raw.get("id") or new_id("fc"), "type": "function_call", "status": "completed",
                 "call_id": call["id"], "name": call["function"]["name"], "arguments": call["function"]["arguments"]}
            )  # fmt: skip
        elif kind == "function_call_output":
            call_id = _string(raw, "call_id", where)
            output = _text_of(raw.get("output", ""), f"{where}.output")
            messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
            items.append(
                {"id": raw.get("id") or new_id("fco"), "type": "function_call_output", "call_id": call_id,
                 "output": output, "status": "completed"}
            )  # fmt: skip
        elif kind in _SKIPPED_ITEMS or isinstance(kind, str):
            continue  # reasoning and hosted-tool items: nothing this model can use
        else:
            raise InvalidParamError(f"{where} has no 'type' (or 'role')", where)
    return messages, items


def chat_tools(tools: list[Any] | None) -> list[dict[str, Any]] | None:
    """The function tools in chat-completions form; other tool types are ignored."""
    out = []
    for i, tool in enumerate(tools or []):
        if not isinstance(tool, dict):
            raise InvalidParamError(f"tools[{i}] must be an object", f"tools[{i}]")
        if tool.get("type") != "function":
            continue
        function = {"name": _string(tool, "name", f"tools[{i}]")}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        out.append({"type": "function", "function": function})
    return out or None


def chat_tool_choice(choice: str | dict[str, Any] | None, has_tools: bool) -> str | dict[str, Any] | None:
    if choice is None or isinstance(choice, str):
        return choice if has_tools or choice != "auto" else None
    if choice.get("type") == "function":
        return {"type": "function", "function": {"name": _string(choice, "name", "tool_choice")}}
    return "auto" if has_tools else None  # a hosted tool (web_search, ...) or allowed_tools: the model decides


def response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    """`text.format` as chat's `response_format` (None for plain text)."""
    fmt = (text or {}).get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise InvalidParamError("text.format.type must be text, json_object or json_schema", "text.format")
    if fmt["type"] == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise InvalidParamError("text.format.schema must be a JSON schema object", "text.format.schema")
        schema = {"name": fmt.get("name") or "response", "schema": fmt["schema"], "strict": fmt.get("strict")}
        return {"type": "json_schema", "json_schema": schema}
    return {"type": fmt["type"]}


def output_as_message(output: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A response's output items as the assistant message of the conversation it continues."""
    text = "".join(p.get("text", "") for item in output if item["type"] == "message" for p in item["content"])
    calls = [
        {"id": item["call_id"], "type": "function", "function": {"name": item["name"], "arguments": item["arguments"]}}
        for item in output
        if item["type"] == "function_call"
    ]
    if not text and not calls:
        return None
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return message
