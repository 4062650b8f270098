"""Request fields -> one `model.StructuredOutputs` (or none): the HTTP side of structured outputs.

Accepted, in this order of precedence (a second constraint is a 400 naming its field):

- OpenAI `response_format`: `{"type": "json_object"}`, `{"type": "json_schema", "json_schema": {"name",
  "schema", "strict", "description"}}` (enforced whether or not `strict` is set), `{"type": "text"}` (none);
  llama.cpp's `{"type": "json_object", "schema": {...}}` is a schema too;
- vLLM `structured_outputs`: `{"json" | "regex" | "choice" | "grammar" | "json_object": ...}`, its tuning
  keys (`disable_fallback`, `whitespace_pattern`, ...) ignored;
- vLLM's older top-level `guided_json`, `guided_regex`, `guided_choice`, `guided_grammar`;
- llama.cpp's top-level `json_schema` (a schema object) and `grammar` (GBNF or Lark text).

The constraint's `param` is the field it came from, so an invalid or over-limit schema, regex or
grammar (checked and compiled by the engine in `AsyncEngine.submit`) is a 400 naming that field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from model import InvalidParamError, StructuredOutputs

# The request fields that carry a constraint, in order of precedence.
FIELDS = (
    "response_format",
    "structured_outputs",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "json_schema",
    "grammar",
)
# Top-level fields that name one StructuredOutputs source each.
_TOP_LEVEL = {
    "guided_json": "json",
    "guided_regex": "regex",
    "guided_choice": "choice",
    "guided_grammar": "grammar",
    "json_schema": "json",
    "grammar": "grammar",
}
SOURCES = ("json", "regex", "choice", "grammar", "json_object")
# vLLM's `structured_outputs` keys that tune its own backends; nothing to do here.
IGNORED_KEYS = frozenset(
    {"disable_fallback", "disable_any_whitespace", "disable_additional_properties", "whitespace_pattern", "backend"}
)
RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")


def structured_outputs_of(values: Mapping[str, Any]) -> StructuredOutputs | None:
    """The one constraint the request's fields (`FIELDS` -> value) ask for; InvalidParamError naming the field."""
    found: tuple[str, dict[str, Any]] | None = None
    for name in FIELDS:
        value = values.get(name)
        if value is None:
            continue
        source = _source(name, value)
        if source is None:
            continue
        if found is not None:
            raise InvalidParamError(
                f"{name}: a request may carry one structured-output constraint; '{found[0]}' already gives one", name
            )
        found = (name, source)
    if found is None:
        return None
    name, source = found
    return StructuredOutputs(**source, param=name)


def _source(name: str, value: Any) -> dict[str, Any] | None:
    """{StructuredOutputs field: value} for one request field, or None when it asks for no constraint."""
    if name == "response_format":
        return _response_format(value)
    if name == "structured_outputs":
        return _vllm_object(value)
    return {_TOP_LEVEL[name]: value}


def _response_format(fmt: Any) -> dict[str, Any] | None:
    """OpenAI's response_format (a ResponseFormat model: `type`, `json_schema`, llama.cpp's `schema`)."""
    kind = fmt.type
    if kind == "text":
        return None
    if kind == "json_object":
        schema = fmt.schema_
        if schema is None:
            return {"json_object": True}
        return {"json": _schema_object(schema, "schema")}
    if kind == "json_schema":
        spec = fmt.json_schema
        if spec is None and fmt.schema_ is not None:
            return {"json": _schema_object(fmt.schema_, "schema")}
        if not isinstance(spec, dict):
            raise InvalidParamError(
                'response_format: type "json_schema" needs "json_schema": {"name": ..., "schema": {...}}',
                "response_format",
            )
        if "schema" not in spec:
            raise InvalidParamError(
                "response_format: json_schema.schema is required (a JSON schema)", "response_format"
            )
        return {"json": _schema_object(spec["schema"], "json_schema.schema")}
    allowed = ", ".join(f"'{t}'" for t in RESPONSE_FORMAT_TYPES)
    raise InvalidParamError(f"response_format: unknown type '{kind}'; use one of {allowed}", "response_format")


def _schema_object(schema: Any, where: str) -> dict[str, Any]:
    if not isinstance(schema, dict):
        raise InvalidParamError(
            f"response_format: {where} must be a JSON schema object, got {_json_type(schema)}", "response_format"
        )
    return schema


def _vllm_object(obj: Any) -> dict[str, Any]:
    """vLLM's `structured_outputs` object: exactly one of SOURCES, the tuning keys ignored."""
    param = "structured_outputs"
    if not isinstance(obj, dict):
        raise InvalidParamError(f"{param} must be an object with one of {', '.join(SOURCES)}", param)
    chosen: dict[str, Any] = {}
    for key, value in obj.items():
        if key in IGNORED_KEYS:
            continue
        if key not in SOURCES:
            raise InvalidParamError(f"{param}: unknown key '{key}'; use one of {', '.join(SOURCES)}", param)
        if key == "json_object":
            if value is None or value is False:
                continue
            if value is not True:
                raise InvalidParamError(f"{param}.json_object must be true or false", param)
        elif value is None:
            continue
        if chosen:
            first = next(iter(chosen))
            raise InvalidParamError(f"{param}.{key}: give one constraint; '{param}.{first}' is already given", param)
        chosen[key] = value
    if not chosen:
        raise InvalidParamError(f"{param} needs one of {', '.join(SOURCES)}", param)
    return chosen


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "null" if value is None else type(value).__name__
