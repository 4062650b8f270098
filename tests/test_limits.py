"""The README's limits table: every row's number equals the code's constant, and one request just over each
limit gets the 4xx the table promises, naming the field (against the shared tiny-model server)."""

from __future__ import annotations

import os
import re

import httpx
import pytest
from http_server import TINY_NAME, assert_error, tiny_server  # noqa: F401 - the session server fixture

from app import limits, protocol
from model import sampling_params as sp
from model.structured import limits as structured
from model.tools import grammar

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _table() -> str:
    text = open(README, encoding="utf-8").read()
    return text[text.index("### Limits") : text.index("A stream whose client stops reading")]


@pytest.mark.parametrize(
    "row, numbers",
    [
        ("header fields / header bytes", [limits.MAX_HEADERS, limits.MAX_HEADER_BYTES // 1024]),
        ("prompts per", [protocol.MAX_PROMPTS]),
        ("prompts x `n`", [protocol.MAX_CHOICES]),
        ("| `n` |", [sp.MAX_N]),
        ("chat `messages`", [protocol.MAX_MESSAGES]),
        ("`stop` strings", [sp.MAX_STOP_STRINGS, sp.MAX_STOP_STRING_LEN]),
        ("`stop_token_ids`", [sp.MAX_STOP_TOKEN_IDS]),
        ("`logit_bias` entries", [sp.MAX_LOGIT_BIAS]),
        ("`logprobs` / `top_logprobs`", [sp.MAX_LOGPROBS]),
        (
            "JSON schema",
            [structured.MAX_SCHEMA_BYTES // 1024, structured.MAX_SCHEMA_DEPTH, structured.MAX_SCHEMA_PROPERTIES],
        ),  # fmt: skip
        ("regex or grammar", [structured.MAX_TEXT_BYTES // 1024, structured.MAX_CHOICES]),
        ("| `tools` |", [grammar.MAX_TOOLS]),
    ],
)
def test_the_table_states_the_codes_limits(row, numbers):
    line = next(ln for ln in _table().splitlines() if row in ln)
    limit_cell = line.split("|")[2]
    assert [int(n) for n in re.findall(r"\d+", limit_cell)] == numbers, line


def _deep_schema(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


CHAT = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/completions", {"prompt": ["x"] * (protocol.MAX_PROMPTS + 1)}, "prompt"),
        ("/v1/embeddings", {"input": ["x"] * (protocol.MAX_PROMPTS + 1)}, "input"),
        ("/v1/completions", {"prompt": ["x"] * 20, "n": 16}, "n"),
        ("/v1/completions", {"prompt": "x", "n": sp.MAX_N + 1}, "n"),
        ("/v1/chat/completions", {"messages": CHAT * (protocol.MAX_MESSAGES + 1)}, "messages"),
        ("/v1/completions", {"prompt": "x", "stop": ["s"] * (sp.MAX_STOP_STRINGS + 1)}, "stop"),
        ("/v1/completions", {"prompt": "x", "stop": "s" * (sp.MAX_STOP_STRING_LEN + 1)}, "stop"),
        ("/v1/completions", {"prompt": "x", "stop_token_ids": [1] * (sp.MAX_STOP_TOKEN_IDS + 1)}, "stop_token_ids"),
        (
            "/v1/completions",
            {"prompt": "x", "logit_bias": {str(i): 1 for i in range(sp.MAX_LOGIT_BIAS + 1)}},
            "logit_bias",
        ),  # fmt: skip
        ("/v1/completions", {"prompt": "x", "logprobs": sp.MAX_LOGPROBS + 1}, "logprobs"),
        (
            "/v1/chat/completions",
            {"messages": CHAT, "logprobs": True, "top_logprobs": sp.MAX_LOGPROBS + 1},
            "top_logprobs",
        ),  # fmt: skip
        (
            "/v1/chat/completions",
            {
                "messages": CHAT,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": _deep_schema(structured.MAX_SCHEMA_DEPTH)},
                },
            },
            "response_format",
        ),  # fmt: skip
        (
            "/v1/completions",
            {"prompt": "x", "structured_outputs": {"regex": "a" * (structured.MAX_TEXT_BYTES + 1)}},
            "structured_outputs",
        ),  # fmt: skip
        (
            "/v1/completions",
            {"prompt": "x", "structured_outputs": {"choice": ["a"] * (structured.MAX_CHOICES + 1)}},
            "structured_outputs",
        ),  # fmt: skip
        (
            "/v1/chat/completions",
            {
                "messages": CHAT,
                "tools": [
                    {**TOOL, "function": {**TOOL["function"], "name": f"f{i}"}} for i in range(grammar.MAX_TOOLS + 1)
                ],
            },
            "tools",
        ),  # fmt: skip
        ("/v1/completions", {"prompt": "word " * 600, "max_tokens": 1}, "prompt"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 10**6}, "prompt"),
    ],
)
def test_just_over_each_limit_is_a_400_naming_the_field(tiny_server, path, body, param):  # noqa: F811
    r = httpx.post(tiny_server.base_url + path, json={"model": TINY_NAME, **body}, timeout=60)
    assert_error(r, 400, param=param)


def test_body_and_header_limits(tiny_server):  # noqa: F811
    from app.settings import Settings

    assert Settings().max_body_bytes == 2 * 1024 * 1024  # the table's default; the tiny server runs with 256KiB
    big = httpx.post(tiny_server.base_url + "/v1/completions", content=b"x" * (256 * 1024 + 1),
                     headers={"content-type": "application/json"}, timeout=60)  # fmt: skip
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    headers = {f"x-h{i}": "v" for i in range(limits.MAX_HEADERS + 1)}
    r = httpx.get(tiny_server.base_url + "/v1/models", headers=headers, timeout=10)
    assert r.status_code == 431 and set(r.json()) == {"error"}
