"""Limits on a constraint, checked before anything is compiled (cheap, iterative, no recursion).

A hostile schema (10,000 levels deep, 100,000 properties), a megabyte regex or an endless choice list
is refused here in microseconds with an InvalidParamError naming the request field, so that neither
the compiler nor the engine thread ever sees it. The bounds follow OpenAI's documented structured-output
limits where they exist (5,000 object properties in all) and are generous elsewhere.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import InvalidParamError
from .spec import StructuredOutputs

MAX_TEXT_BYTES = 64 * 1024  # a regex or a grammar
MAX_SCHEMA_BYTES = 256 * 1024  # a JSON schema as text
MAX_SCHEMA_DEPTH = 64  # nested objects / arrays in a schema document (a schema level is ~2 of them)
MAX_SCHEMA_PROPERTIES = 5000  # property names over the whole schema
MAX_CHOICES = 1024
MAX_CHOICE_BYTES = 64 * 1024  # all choices together


def check_limits(spec: StructuredOutputs) -> None:
    """InvalidParamError(param=spec.param) if the constraint is over a limit or is not a valid document."""
    param = spec.param
    kind = spec.kind
    if kind in ("regex", "grammar"):
        text: str = getattr(spec, kind)
        if len(text.encode("utf-8", "surrogatepass")) > MAX_TEXT_BYTES:
            raise InvalidParamError(f"{param}: the {kind} is longer than {MAX_TEXT_BYTES} bytes", param)
    elif kind == "choice":
        choices = spec.choice or ()
        if len(choices) > MAX_CHOICES:
            raise InvalidParamError(f"{param}: at most {MAX_CHOICES} choices are allowed, got {len(choices)}", param)
        if sum(len(c.encode("utf-8", "surrogatepass")) for c in choices) > MAX_CHOICE_BYTES:
            raise InvalidParamError(f"{param}: the choices are longer than {MAX_CHOICE_BYTES} bytes in all", param)
    elif kind == "json":
        check_schema(spec.json, param)


def check_schema(schema: dict[str, Any] | str | None, param: str) -> dict[str, Any]:
    """The schema as a dict, after the size, depth and property-count checks."""
    if isinstance(schema, str):
        if len(schema.encode("utf-8", "surrogatepass")) > MAX_SCHEMA_BYTES:
            raise InvalidParamError(f"{param}: the JSON schema is longer than {MAX_SCHEMA_BYTES} bytes", param)
        try:
            schema = json.loads(schema)
        except RecursionError:
            raise InvalidParamError(f"{param}: the JSON schema is nested too deeply", param) from None
        except ValueError as exc:
            raise InvalidParamError(f"{param}: the JSON schema is not valid JSON: {exc}", param) from None
    if not isinstance(schema, dict):
        raise InvalidParamError(f"{param}: a JSON schema must be an object", param)
    depth, properties, size = _measure(schema)
    if depth > MAX_SCHEMA_DEPTH:
        raise InvalidParamError(f"{param}: the JSON schema is nested deeper than {MAX_SCHEMA_DEPTH} levels", param)
    if properties > MAX_SCHEMA_PROPERTIES:
        raise InvalidParamError(
            f"{param}: the JSON schema has {properties} properties; the limit is {MAX_SCHEMA_PROPERTIES}", param
        )
    if size > MAX_SCHEMA_BYTES:
        raise InvalidParamError(f"{param}: the JSON schema is larger than {MAX_SCHEMA_BYTES} bytes", param)
    return schema


def _measure(doc: Any) -> tuple[int, int, int]:
    """(nesting depth, property names, approximate size in bytes) of a JSON document, iteratively.

    Stops early once a limit is passed, so a huge document costs no more than the limit."""
    depth = properties = size = 0
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, level = stack.pop()
        if level > depth:
            depth = level
            if depth > MAX_SCHEMA_DEPTH:
                break
        if isinstance(node, dict):
            props = node.get("properties")
            if isinstance(props, dict):
                properties += len(props)
                if properties > MAX_SCHEMA_PROPERTIES:
                    break
            for key, value in node.items():
                size += len(str(key)) + 4
                stack.append((value, level + 1))
        elif isinstance(node, list):
            for value in node:
                stack.append((value, level + 1))
        else:
            size += len(str(node)) + 1
        if size > MAX_SCHEMA_BYTES:
            break
    return depth, properties, size
