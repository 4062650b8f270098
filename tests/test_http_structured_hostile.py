"""Hostile structured-output requests: each answered with a 400 (or, where llguidance handles it, a
documented 200) in under a second, the server healthy after and a normal request still served.

Its own tiny server with a 4 MiB body limit, so that a megabyte regex or 100,000 properties reach the
engine's limits (model/structured/limits.py) instead of the 413 of a smaller body cap.
"""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest
from http_server import TINY_ARGS, ServerProcess, assert_error

NAME = "tiny-hostile"
USER = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def url(tiny_llama_dir):
    server = ServerProcess([tiny_llama_dir, *TINY_ARGS, "--served-model-name", NAME, "--max-body-bytes", "4MiB"])
    try:
        yield server.wait_ready().base_url
    finally:
        server.stop()


def nested_schema(levels: int) -> dict:
    """{"type": "object", "properties": {"a": {... levels deep ...}}}, built without recursion."""
    schema: dict = {"type": "integer"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def nested_text(levels: int) -> str:
    """The same schema as JSON text (json.dumps would recurse past Python's limit)."""
    head = '{"type": "object", "required": ["a"], "properties": {"a": '
    return head * levels + '{"type": "integer"}' + "}}" * levels


def timed_post(url: str, path: str, body: dict | str) -> httpx.Response:
    """POST with the elapsed time checked: a hostile request is answered within a second."""
    content = body if isinstance(body, str) else json.dumps(body)
    start = time.monotonic()
    r = httpx.post(url + path, content=content, headers={"content-type": "application/json"}, timeout=30)
    elapsed = time.monotonic() - start
    assert elapsed < 1.0, (elapsed, r.status_code, r.text[:300])
    return r


def completion(fields_json: str) -> str:
    """A completions body with the constraint given as JSON text (so that it may be nested deeper than
    Python's own json module could write)."""
    return '{"model": "%s", "prompt": "Hi", "max_tokens": 8, "temperature": 0, %s}' % (NAME, fields_json)


def envelope(schema_json: str) -> str:
    return '"response_format": {"type": "json_schema", "json_schema": {"name": "h", "schema": %s}}' % schema_json


def assert_healthy(url: str) -> None:
    assert httpx.get(url + "/health", timeout=10).status_code == 200
    r = httpx.post(url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 4, "guided_choice": ["ok", "no"]})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] in ("ok", "no"), r.text


# (constraint fields as JSON text, the param a 400 names: None when the body itself is refused)
DEEP = [
    # 10,000 schema levels are 20,000 JSON levels: the body parser refuses it (400, no param), no 500.
    (envelope(nested_text(10_000)), None),
    ('"guided_json": ' + nested_text(10_000), None),
    ('"structured_outputs": {"json": %s}' % nested_text(10_000), None),
    ('"json_schema": ' + "[" * 100_000 + "]" * 100_000, None),
    # Deep enough to be refused by the schema limits, shallow enough to parse.
    (envelope(nested_text(100)), "response_format"),
    (envelope(nested_text(450)), "response_format"),
    ('"guided_json": ' + nested_text(450), "guided_json"),
    ('"json_schema": ' + json.dumps(json.dumps(nested_schema(300))), "json_schema"),  # the schema as a string
]


def test_deeply_nested_schemas(url):
    for fields, param in DEEP:
        err = assert_error(timed_post(url, "/v1/completions", completion(fields)), 400, param=param)
        assert "Traceback" not in err["message"], err
        chat = completion(fields).replace('"prompt": "Hi"', '"messages": [{"role": "user", "content": "Hi"}]')
        assert_error(timed_post(url, "/v1/chat/completions", chat), 400, param=param)
    assert_healthy(url)


def _properties(count: int) -> dict:
    return {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(count)}}


HOSTILE = [
    # (fields, param of the 400)
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "h", "schema": _properties(100_000)}}},
        "response_format",
    ),
    ({"guided_json": _properties(100_000)}, "guided_json"),
    ({"structured_outputs": {"regex": "a" * 1_000_000}}, "structured_outputs"),
    ({"guided_regex": "(" * 10_000 + "a" + ")" * 10_000}, "guided_regex"),
    ({"guided_regex": "(a"}, "guided_regex"),  # not a regex
    ({"guided_choice": [f"c{i}" for i in range(100_000)]}, "guided_choice"),
    ({"grammar": "root ::= " + " ".join(['"a"'] * 200_000)}, "grammar"),  # over the text limit
    ({"grammar": "root ::= missing"}, "grammar"),  # undefined rule
    ({"structured_outputs": {"grammar": "start: ( "}}, "structured_outputs"),  # not a grammar
    ({"json_schema": {"$ref": "#/$defs/missing"}}, "json_schema"),
    ({"json_schema": {"$ref": "https://example.com/schema.json"}}, "json_schema"),  # no fetching
    ({"json_schema": {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}}, "json_schema"),
    ({"json_schema": [{"type": "object"}]}, "json_schema"),
    ({"json_schema": "not json"}, "json_schema"),
    ({"guided_json": 42}, "guided_json"),
    ({"json_schema": {"type": "string", "pattern": "(" * 5000}}, "json_schema"),
    ({"json_schema": {"type": "frobnicate"}}, "json_schema"),
]


def test_hostile_constraints_are_quick_400s(url):
    for fields, param in HOSTILE:
        for path, base in (("/v1/completions", {"prompt": "Hi"}), ("/v1/chat/completions", {"messages": USER})):
            r = timed_post(url, path, {"model": NAME, "max_tokens": 8, **base, **fields})
            err = assert_error(r, 400, param=param, type="invalid_request_error")
            assert "Traceback" not in err["message"], err
    assert_healthy(url)


def test_error_messages_do_not_echo_huge_inputs(url):
    """A 400 about a big regex, grammar or schema quotes at most a little of it (no amplification)."""
    long = []
    for fields, param in HOSTILE:
        r = httpx.post(url + "/v1/completions", json={"model": NAME, "prompt": "Hi", **fields}, timeout=30)
        message = assert_error(r, 400, param=param)["message"]
        if len(message) > 2000:
            long.append((param, len(message), message[:120]))
    assert not long, long


def test_left_recursive_grammars_work(url):
    """llguidance parses with Earley, so a left-recursive grammar is accepted: a 200 whose output the
    grammar derives (documented in the README)."""
    cases = [
        ({"grammar": 'root ::= root "+" [0-9] | [0-9]'}, r"[0-9](\+[0-9])*"),  # GBNF
        (
            {"structured_outputs": {"grammar": 'start: expr\nexpr: expr "*" NUM | NUM\nNUM: /[0-9]/'}},
            r"[0-9](\*[0-9])*",
        ),
    ]
    for fields, pattern in cases:
        body = {"model": NAME, "prompt": "Hi", "max_tokens": 12, "temperature": 0, **fields}
        r = timed_post(url, "/v1/completions", body)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        text = choice["text"]
        # Finished, the text is a derivation; cut short by max_tokens, it may end with an operator.
        complete = re.fullmatch(pattern, text)
        assert complete or (choice["finish_reason"] == "length" and re.fullmatch(pattern, text + "0")), choice
    assert_healthy(url)


def test_many_hostile_requests_at_once_leave_the_server_serving(url):
    """Concurrent bad constraints (each compiled off the event loop) do not stall other requests."""
    import concurrent.futures as cf

    bodies = [{"model": NAME, "prompt": "Hi", "max_tokens": 4, **fields} for fields, _ in HOSTILE[:8]] * 2
    with cf.ThreadPoolExecutor(8) as pool:
        start = time.monotonic()
        codes = list(pool.map(lambda b: httpx.post(url + "/v1/completions", json=b, timeout=30).status_code, bodies))
        elapsed = time.monotonic() - start
    assert set(codes) == {400} and elapsed < 8, (codes, elapsed)
    assert_healthy(url)
