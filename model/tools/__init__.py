"""Tool calling on the engine side: tools in the prompt, the grammar for the calls, and the call parser.

- `prompt.prepare_chat`: tools as `tools=` in a template that knows them, or a system-prompt fallback
  (and tool history as text) for one that does not;
- `grammar.tool_constraint`: the `StructuredOutputs` grammar for tool_choice "auto", "required" or a
  named tool (checks the tools first: InvalidParamError naming "tools" or "tool_choice");
- `parser.parse_tool_calls` / `parser.ToolCallParser`: `<tool_call>` blocks out of generated text, whole
  or streamed.
"""

from .grammar import check_tool_choice, check_tools, tool_constraint, tool_grammar
from .parser import ToolCall, ToolCallDelta, ToolCallParser, parse_tool_calls
from .prompt import prepare_chat

__all__ = [
    "ToolCall",
    "ToolCallDelta",
    "ToolCallParser",
    "check_tool_choice",
    "check_tools",
    "parse_tool_calls",
    "prepare_chat",
    "tool_constraint",
    "tool_grammar",
]
