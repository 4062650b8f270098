"""Structured outputs over HTTP, the mechanics: which request field maps to which constraint, one
constraint per request, bad shapes as 400s naming the field, and every alias actually constraining
the output (tiny random model: only constraints whose outputs are short whatever the model prefers).

The default model's quality checks (schemas, classification, the SDK's `parse`) are in
test_http_structured_quality.py; hostile inputs in test_http_structured_hostile.py.
"""

from __future__ import annotations

import json
import re

import httpx
import jsonschema
import pytest
from http_server import TINY_NAME, assert_error, base_url, post_stream, tiny_server  # noqa: F401

USER = [{"role": "user", "content": "Answer."}]
# A schema whose compact JSON outputs are exactly {"k":"x"} and {"k":"y"}: short for any model.
SMALL_SCHEMA = {
    "type": "object",
    "properties": {"k": {"enum": ["x", "y"]}},
    "required": ["k"],
    "additionalProperties": False,
}
SCHEMA_ENVELOPE = {"type": "json_schema", "json_schema": {"name": "small", "schema": SMALL_SCHEMA, "strict": True}}


def post(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(url + path, json={"model": TINY_NAME, **body}, timeout=60)


def complete(url: str, **body) -> dict:
    r = post(url, "/v1/completions", {"prompt": "Hi", "max_tokens": 40, "temperature": 0, **body})
    assert r.status_code == 200, r.text
    return r.json()


# (request fields, the param a 400 names, a fragment of its message); each case is sent to both endpoints.
BAD = [
    ({"response_format": SCHEMA_ENVELOPE, "guided_regex": "a+"}, "guided_regex", "'response_format' already"),
    ({"response_format": {"type": "json_object"}, "grammar": 'root ::= "a"'}, "grammar", "one structured-output"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs", "structured_outputs.choice"),
    ({"structured_outputs": {"json_object": True, "json": {}}}, "structured_outputs", "structured_outputs.json"),
    ({"structured_outputs": {"regex": "a"}, "guided_choice": ["a"]}, "guided_choice", "'structured_outputs'"),
    ({"guided_json": SMALL_SCHEMA, "json_schema": SMALL_SCHEMA}, "json_schema", "'guided_json'"),
    ({"guided_regex": "a", "guided_grammar": 'start: "a"'}, "guided_grammar", "'guided_regex'"),
    ({"response_format": {"type": "json_schema"}}, "response_format", "json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format", "schema"),
    ({"response_format": {"type": "json_schema", "json_schema": "{}"}}, "response_format", "json_schema"),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}},
        "response_format",
        "an array",
    ),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": "str"}}},
        "response_format",
        "a string",
    ),
    ({"response_format": {"type": "json_object", "schema": 3}}, "response_format", "a number"),
    ({"response_format": {"type": "xml"}}, "response_format", "unknown type 'xml'"),
    ({"response_format": "json"}, "response_format", None),
    ({"structured_outputs": "regex"}, "structured_outputs", "must be an object"),
    ({"structured_outputs": {}}, "structured_outputs", "needs one of"),
    ({"structured_outputs": {"disable_fallback": True}}, "structured_outputs", "needs one of"),
    ({"structured_outputs": {"json_schema": SMALL_SCHEMA}}, "structured_outputs", "unknown key 'json_schema'"),
    ({"structured_outputs": {"json_object": "yes"}}, "structured_outputs", "true or false"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs", "choice"),
    ({"guided_choice": "positive"}, "guided_choice", "list of strings"),
    ({"guided_choice": ["a", 1]}, "guided_choice", "string"),
    ({"guided_regex": 5}, "guided_regex", "string"),
    ({"guided_grammar": ["a"]}, "guided_grammar", "string"),
    ({"guided_json": [1, 2]}, "guided_json", "object"),
    ({"json_schema": True}, "json_schema", "object"),
    ({"grammar": {"root": "a"}}, "grammar", "string"),
]


def test_bad_shapes_and_two_constraints_are_400s_naming_the_field(base_url):
    for fields, param, fragment in BAD:
        for path, body in (("/v1/completions", {"prompt": "Hi"}), ("/v1/chat/completions", {"messages": USER})):
            err = assert_error(post(base_url, path, {**body, **fields}), 400, param=param, type="invalid_request_error")
            assert fragment is None or fragment in err["message"], (fields, err)
            assert "Traceback" not in err["message"]
    # Streaming and n > 1 are refused the same way, before any SSE byte.
    r, events = post_stream(
        base_url, "/v1/completions", {"prompt": "Hi", "stream": True, "n": 2, **BAD[0][0], "model": TINY_NAME}
    )
    assert_error(r, 400, param="guided_regex")
    assert httpx.get(base_url + "/health").status_code == 200


def test_text_and_null_fields_ask_for_no_constraint(base_url):
    """response_format text, null fields, json_object false and vLLM's backend options are not constraints."""
    out = complete(
        base_url,
        response_format={"type": "text"},
        guided_json=None,
        structured_outputs={"regex": "[a-c]{3}", "json_object": False, "disable_fallback": True},
        guided_decoding_backend="xgrammar",
        guided_whitespace_pattern=" ",
    )
    assert re.fullmatch("[a-c]{3}", out["choices"][0]["text"]), out


# (request fields, a check of the text): every alias, each with its own constraint, on completions.
def _schema_ok(text: str) -> bool:
    jsonschema.validate(json.loads(text), SMALL_SCHEMA)
    return True


ALIASES = [
    ({"structured_outputs": {"regex": r"\d{3}"}}, lambda t: re.fullmatch(r"\d{3}", t)),
    ({"structured_outputs": {"choice": ["alpha", "beta"]}}, lambda t: t in ("alpha", "beta")),
    ({"structured_outputs": {"json": SMALL_SCHEMA}}, _schema_ok),
    ({"structured_outputs": {"json": json.dumps(SMALL_SCHEMA)}}, _schema_ok),
    ({"structured_outputs": {"grammar": 'start: "on" | "off"'}}, lambda t: t in ("on", "off")),  # Lark
    ({"guided_regex": "[xyz]{2}-[0-9]"}, lambda t: re.fullmatch("[xyz]{2}-[0-9]", t)),
    ({"guided_choice": ["red", "green", "blue"]}, lambda t: t in ("red", "green", "blue")),
    ({"guided_json": SMALL_SCHEMA}, _schema_ok),
    ({"guided_grammar": 'start: /[0-9]{2}/ "!"'}, lambda t: re.fullmatch("[0-9]{2}!", t)),
    ({"json_schema": SMALL_SCHEMA}, _schema_ok),
    ({"grammar": 'root ::= "yes" | "no"'}, lambda t: t in ("yes", "no")),  # GBNF
    ({"grammar": "root ::= [a-c] digit\ndigit ::= [0-9]"}, lambda t: re.fullmatch("[a-c][0-9]", t)),
    ({"response_format": SCHEMA_ENVELOPE}, _schema_ok),
    ({"response_format": {**SCHEMA_ENVELOPE, "json_schema": {"name": "s", "schema": SMALL_SCHEMA}}}, _schema_ok),
    ({"response_format": {"type": "json_object", "schema": SMALL_SCHEMA}}, _schema_ok),  # llama.cpp's form
]


def test_every_alias_constrains_the_output(base_url):
    for fields, check in ALIASES:
        for stream in (False, True):
            body = {"prompt": "Hi", "max_tokens": 40, "temperature": 0, **fields}
            if stream:
                r, events = post_stream(base_url, "/v1/completions", {**body, "stream": True, "model": TINY_NAME})
                assert r.status_code == 200, events
                text = "".join(ev["choices"][0]["text"] for ev in events)
                reason = events[-1]["choices"][0]["finish_reason"]
            else:
                choice = complete(base_url, **body)["choices"][0]
                text, reason = choice["text"], choice["finish_reason"]
            assert reason == "stop" and check(text), (fields, stream, text, reason)


def test_chat_streaming_and_n(base_url):
    """Chat gets the same constraint; streaming equals non-streaming at temperature 0; n=3 sampled
    choices are each valid."""
    body = {"messages": USER, "max_tokens": 40, "temperature": 0, "response_format": SCHEMA_ENVELOPE}
    r = post(base_url, "/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    text = r.json()["choices"][0]["message"]["content"]
    jsonschema.validate(json.loads(text), SMALL_SCHEMA)
    _, events = post_stream(base_url, "/v1/chat/completions", {**body, "stream": True, "model": TINY_NAME})
    assert "".join(ev["choices"][0]["delta"].get("content") or "" for ev in events) == text

    r = post(base_url, "/v1/chat/completions", {**body, "n": 3, "temperature": 1.0, "seed": 7})
    choices = r.json()["choices"]
    assert len(choices) == 3 and all(c["finish_reason"] == "stop" for c in choices), choices
    for c in choices:
        jsonschema.validate(json.loads(c["message"]["content"]), SMALL_SCHEMA)
    # Several prompts of one completions request, each with n=2: every choice is constrained.
    out = complete(base_url, prompt=["a", "b"], n=2, temperature=1.0, seed=3, guided_choice=["one", "two"])
    assert sorted(c["index"] for c in out["choices"]) == [0, 1, 2, 3]
    assert all(c["text"] in ("one", "two") for c in out["choices"]), out


def test_max_tokens_too_small_ends_with_length(base_url):
    for stream in (False, True):
        body = {"prompt": "Hi", "max_tokens": 2, "temperature": 0, "guided_json": SMALL_SCHEMA}
        if stream:
            _, events = post_stream(base_url, "/v1/completions", {**body, "stream": True, "model": TINY_NAME})
            reason = events[-1]["choices"][0]["finish_reason"]
        else:
            reason = complete(base_url, **body)["choices"][0]["finish_reason"]
        assert reason == "length"
    assert httpx.get(base_url + "/health").status_code == 200
    assert complete(base_url, guided_choice=["ok"])["choices"][0]["text"] == "ok"
