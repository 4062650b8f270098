"""Structured outputs: constraints on what a choice may generate, enforced by llguidance grammars.

- `spec.StructuredOutputs`: the plain constraint object a request carries (`SamplingParams.structured_outputs`):
  exactly one of a JSON schema, "any JSON object", a regex, a list of choices or a Lark / GBNF grammar.
- `limits`: size and shape checks run before anything is compiled.
- `compiler.GrammarCompiler`: constraint -> validated llguidance grammar (cached), and per-choice matchers.
- `masks`: the allowed-token masks of a batch's constrained rows, filled in one parallel call.
"""

from .spec import StructuredOutputs

__all__ = ["StructuredOutputs"]
