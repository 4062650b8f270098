"""Tool calling on /v1/chat/completions: the plan for a request, the message, the streamed deltas.

- `plan_tools`: the tools are checked (400 naming `tools` / `tool_choice`); with tool_choice "none" they
  are neither shown nor parsed. Otherwise the prompt shows them (the template's own rendering or the
  engine's fallback) and the output is constrained by the tool grammar: "required" and a named tool
  together with a `response_format` / `structured_outputs` constraint are a 400 naming `tool_choice`;
  "auto" with such a constraint keeps the client's constraint, and its answer is content (not parsed).
- `tool_message`: `message.tool_calls` (`call_<hex>` ids, arguments as JSON text) and `content` (the text
  before the calls, None if empty); finish_reason "tool_calls" when the model stopped after calls.
- `ToolStream`: the same as OpenAI stream deltas: content, then per call one delta with `index`, `id`,
  `type` and `function.name` (arguments ""), then `function.arguments` fragments with that index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from model import (
    SamplingParams,
    ToolCallDelta,
    ToolCallParser,
    check_tool_choice,
    check_tools,
    parse_tool_calls,
    tool_constraint,
    with_tool_grammar,
)

from ..protocol import ChatCompletionRequest


@dataclass(frozen=True)
class ToolPlan:
    tools: list[dict[str, Any]] | None  # shown in the prompt
    tool_choice: str | dict[str, Any]
    parse: bool  # tool calls are parsed out of the output


def plan_tools(req: ChatCompletionRequest, params: SamplingParams) -> tuple[SamplingParams, ToolPlan]:
    """The request's params with the tool grammar, and how to show and parse its tools."""
    tools = check_tools(req.tools) if req.tools else None
    choice = check_tool_choice(req.tool_choice, tools)
    if tools is None or choice == "none":
        return params, ToolPlan(None, choice, False)
    parallel = req.parallel_tool_calls is not False
    constrained = with_tool_grammar(params, tool_constraint(tools, choice, parallel), choice)
    parse = constrained.structured_outputs is not None and constrained.structured_outputs.param == "tools"
    return constrained, ToolPlan(tools, choice, parse)


def _finish(reason: str | None, has_calls: bool) -> str | None:
    return "tool_calls" if has_calls and reason == "stop" else reason


def tool_message(text: str, reason: str | None) -> tuple[dict[str, Any], str | None]:
    """(message, finish_reason) of a whole choice."""
    content, calls = parse_tool_calls(text)
    if not calls:
        return {"role": "assistant", "content": text}, reason
    message = {
        "role": "assistant",
        "content": content or None,
        "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls
        ],
    }
    return message, _finish(reason, True)


def _delta(event: str | ToolCallDelta) -> dict[str, Any]:
    if isinstance(event, str):
        return {"content": event}
    if event.id is not None:
        entry = {"index": event.index, "id": event.id, "type": "function"}
        entry["function"] = {"name": event.name, "arguments": event.arguments}
        return {"tool_calls": [entry]}
    return {"tool_calls": [{"index": event.index, "function": {"arguments": event.arguments}}]}


class ToolStream:
    """One choice's stream deltas (dicts for `choices[].delta`)."""

    def __init__(self) -> None:
        self._parser = ToolCallParser()

    def deltas(self, new_text: str, reason: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """(deltas for `new_text`, the finish_reason to send) ; `reason` not None ends the choice."""
        events = self._parser.feed(new_text) if new_text else []
        if reason is not None:
            events += self._parser.finish()
            reason = _finish(reason, self._parser.has_calls)
        return [_delta(e) for e in events], reason
