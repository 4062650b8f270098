"""Prompts as the engine takes them: completions' prompt forms and chat messages -> token ids.

The tokenizing functions run in a worker thread (asyncio.to_thread). Token ids are not checked
here: `AsyncEngine.submit` checks them against the vocabulary (and for emptiness) once.
"""

from __future__ import annotations

from typing import Any

from model import AsyncEngine

from ..errors import bad_request
from ..protocol import MAX_PROMPTS, ChatMessage
from .validation import check_text

_PROMPT_FORMS = "a string, a list of strings, a list of token ids or a list of token-id lists"
TEXT_PART_TYPES = ("text", "input_text")


def _is_token(x: Any) -> bool:
    return type(x) is int  # not bool


def normalize_prompts(prompt: Any, param: str = "prompt") -> list[str | list[int]]:
    """The request's prompt(s) as a list of texts / token-id lists; 400 naming `param` if malformed."""
    if prompt is None:
        raise bad_request(f"'{param}' is required", param)
    if isinstance(prompt, str):
        items: list[Any] = [prompt]
    elif isinstance(prompt, list):
        if not prompt:
            raise bad_request(f"the {param} is empty", param)
        if all(isinstance(p, str) for p in prompt):
            items = list(prompt)
        elif all(_is_token(t) for t in prompt):
            items = [prompt]
        elif all(isinstance(p, list) and all(_is_token(t) for t in p) for p in prompt):
            items = list(prompt)
        else:
            raise bad_request(f"'{param}' must be {_PROMPT_FORMS}", param)
    else:
        raise bad_request(f"'{param}' must be {_PROMPT_FORMS}", param)
    if len(items) > MAX_PROMPTS:
        raise bad_request(f"at most {MAX_PROMPTS} {param}s are allowed in one request, got {len(items)}", param)
    for item in items:
        if isinstance(item, str):
            check_text(item, param)
    return items


def encode_text(engine: AsyncEngine, text: str, add_special_tokens: bool, param: str) -> list[int]:
    """Token ids of `text`; 400 naming `param` if the tokenizer refuses it."""
    try:
        return engine.encode(text, add_special_tokens=add_special_tokens)
    except Exception as exc:  # noqa: BLE001 - the tokenizer's errors are about the input
        raise bad_request(f"cannot tokenize the {param}: {exc}", param) from None


def encode_prompts(engine: AsyncEngine, prompts: list[str | list[int]], echo: bool) -> list[tuple[list[int], str]]:
    """(token ids, text to echo) for each completions prompt; texts get the tokenizer's special tokens."""
    out = []
    for p in prompts:
        if isinstance(p, str):
            out.append((encode_text(engine, p, True, "prompt"), p))
        elif echo:
            try:
                text = engine.tokenizer.decode(p, skip_special_tokens=False)
            except OverflowError:  # an id outside 0..2**32-1: AsyncEngine.submit refuses the prompt
                text = ""
            out.append((p, text))
        else:
            out.append((p, ""))
    return out


def template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as the chat template sees them: string content (text parts joined by newlines)."""
    out = []
    for i, m in enumerate(messages):
        content = m.content
        if content is None:
            text = ""
        elif isinstance(content, str):
            text = content
        else:
            parts = []
            for j, part in enumerate(content):
                kind = part.get("type")
                if kind not in TEXT_PART_TYPES:
                    raise bad_request(
                        f"messages[{i}].content[{j}]: only text content parts are supported, got type {kind!r}",
                        "messages",
                    )
                value = part.get("text")
                if not isinstance(value, str):
                    raise bad_request(f"messages[{i}].content[{j}].text must be a string", "messages")
                parts.append(value)
            text = "\n".join(parts)
        check_text(text, "messages")
        msg: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": text}
        if m.name is not None:
            check_text(m.name, "messages")
            msg["name"] = m.name
        if m.tool_calls:
            msg["tool_calls"] = m.tool_calls
        if m.tool_call_id is not None:
            msg["tool_call_id"] = m.tool_call_id
        out.append(msg)
    return out


def render_and_tokenize(
    engine: AsyncEngine,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool,
    add_special_tokens: bool = False,
    tools: list[dict[str, Any]] | None = None,
    tool_choice: str | dict[str, Any] = "auto",
) -> list[int]:
    """The chat template applied (with `tools` shown, if given), then tokenized (runs in a worker thread).
    400 on a template error."""
    try:
        text = engine.render_chat(
            messages, add_generation_prompt=add_generation_prompt, tools=tools, tool_choice=tool_choice
        )
    except ValueError as exc:
        raise bad_request(str(exc), "messages") from None
    check_text(text, "messages")
    # The template already holds any BOS text: by default do not add special tokens again.
    return encode_text(engine, text, add_special_tokens, "messages")
