"""Chat templates rendered in a Jinja sandbox, as `transformers` renders them.

The sandbox is immutable, fails loudly on unsafe attribute access and refuses memory bombs;
any template failure becomes a `ValueError`.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any, Mapping

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

_MAX_SEQUENCE_REPEAT = 1 << 20  # longest str/list a template may build with `*`
_MAX_EXPONENT = 1024


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}` (used by some templates to mark assistant text):
    rendered as its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _ChatSandbox(ImmutableSandboxedEnvironment):
    """Immutable sandbox that fails loudly on any unsafe attribute (the stock one returns an
    Undefined that only fails when used) and refuses giant `*` / `**` results (memory bombs)."""

    intercepted_binops = frozenset({"*", "**"})

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is not allowed")

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int):
                    if len(seq) * times > _MAX_SEQUENCE_REPEAT:
                        raise SecurityError("the template builds a value that is too large")
        if operator == "**" and isinstance(right, int) and abs(right) > _MAX_EXPONENT:
            raise SecurityError("the template computes a power that is too large")
        return super().call_binop(context, operator, left, right)


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    # Like transformers: no HTML escaping, optional formatting arguments.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=1)
def _environment() -> _ChatSandbox:
    env = _ChatSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, "jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    return _environment().from_string(template)


def render_chat_template(template: str, context: Mapping[str, Any]) -> str:
    """Render a chat template in the sandbox; every failure is a ValueError with a clear message."""
    try:
        return _compile(template).render(**context)
    except SecurityError as exc:
        raise ValueError(f"chat template refused: it tried an unsafe operation ({exc})") from None
    except TemplateError as exc:  # syntax errors and raise_exception(...) messages
        raise ValueError(f"chat template error: {exc}") from None
    except Exception as exc:  # a template bug (TypeError, KeyError, ...) is the template's fault
        raise ValueError(f"chat template failed: {type(exc).__name__}: {exc}") from None


__all__ = ["render_chat_template"]
