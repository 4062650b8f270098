"""Chat messages and tool_choice checked per role as OpenAI does, at the edge, on a real server.

system/developer/user need `content`; assistant needs `content` or `tool_calls` (each
{"id", "type": "function", "function": {"name", "arguments"}}); tool needs `tool_call_id` and
`content`; function needs `name`; other roles are refused. tool_choice is "none", "auto", "required" or
{"type": "function", "function": {"name"}}. Each mistake is a 400 in OpenAI's envelope whose `param`
is the top-level field (as for every nested validation error) and whose message names the exact place.
"""

from __future__ import annotations

import httpx
import pytest
from http_server import TINY_NAME, assert_error, base_url, tiny_server  # noqa: F401 (fixtures)

USER = {"role": "user", "content": "Hi"}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def chat(base_url: str, body: dict) -> httpx.Response:
    return httpx.post(base_url + "/v1/chat/completions", json={"model": TINY_NAME, "max_tokens": 2, **body}, timeout=60)


def with_call(**changes) -> dict:
    return {**CALL, **changes}


def call_without(key: str) -> dict:
    return {k: v for k, v in CALL.items() if k != key}


def calling(*calls) -> dict:
    return {"role": "assistant", "tool_calls": list(calls)}


AUDIO = {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}


BAD_MESSAGES = [
    # (id, messages, words the error message must contain)
    ("user-without-content", [{"role": "user"}], ["messages.0", "'user' message needs 'content'"]),
    ("user-null-content", [{"role": "user", "content": None}], ["messages.0", "'user' message needs 'content'"]),
    ("system-without-content", [{"role": "system"}, USER], ["messages.0", "'system' message needs 'content'"]),
    (
        "developer-without-content",
        [{"role": "developer", "name": "x"}, USER],
        ["messages.0", "'developer' message needs 'content'"],
    ),
    ("content-not-text", [{"role": "user", "content": 42}], ["messages.0.content", "string or a list"]),
    ("content-empty-list", [{"role": "user", "content": []}], ["messages.0.content", "empty list"]),
    ("content-part-not-object", [{"role": "user", "content": ["Hi"]}], ["messages.0.content", "content[0]"]),
    (
        "content-part-without-type",
        [{"role": "user", "content": [{"text": "Hi"}]}],
        ["messages.0.content", "content[0]", "'type'"],
    ),
    (
        "image-part",
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "http://x/y.png"}},
                ],
            }
        ],
        ["messages[0].content[1]", "only text content parts", "image_url"],
    ),
    ("audio-part", [{"role": "user", "content": [AUDIO]}], ["messages[0].content[0]", "input_audio"]),
    (
        "text-part-without-text",
        [{"role": "user", "content": [{"type": "text"}]}],
        ["messages[0].content[0].text", "string"],
    ),
    (
        "assistant-without-content-or-calls",
        [USER, {"role": "assistant"}, USER],
        ["messages.1", "'assistant' message needs 'content' or 'tool_calls'"],
    ),
    (
        "assistant-null-content-empty-calls",
        [USER, {"role": "assistant", "content": None, "tool_calls": []}],
        ["messages.1", "'content' or 'tool_calls'"],
    ),
    (
        "tool-calls-not-a-list",
        [USER, {"role": "assistant", "tool_calls": CALL}],
        ["messages.1.tool_calls", "valid list"],
    ),
    (
        "tool-call-not-an-object",
        [USER, {"role": "assistant", "tool_calls": ["get_weather"]}],
        ["messages.1.tool_calls.0"],
    ),
    ("tool-call-without-id", [USER, calling(call_without("id"))], ["'messages.1.tool_calls.0.id' is required"]),
    (
        "tool-call-id-not-string",
        [USER, {"role": "assistant", "tool_calls": [with_call(id=7)]}],
        ["messages.1.tool_calls.0.id", "string"],
    ),
    ("tool-call-without-type", [USER, calling(call_without("type"))], ["'messages.1.tool_calls.0.type' is required"]),
    (
        "tool-call-wrong-type",
        [USER, {"role": "assistant", "tool_calls": [with_call(type="code")]}],
        ["messages.1.tool_calls.0.type", "'function'"],
    ),
    (
        "tool-call-without-function",
        [USER, {"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]}],
        ["'messages.1.tool_calls.0.function' is required"],
    ),
    (
        "tool-call-without-name",
        [USER, {"role": "assistant", "tool_calls": [with_call(function={"arguments": "{}"})]}],
        ["'messages.1.tool_calls.0.function.name' is required"],
    ),
    (
        "tool-call-without-arguments",
        [USER, {"role": "assistant", "tool_calls": [with_call(function={"name": "f"})]}],
        ["'messages.1.tool_calls.0.function.arguments' is required"],
    ),
    (
        "tool-call-arguments-object",
        [
            USER,
            {"role": "assistant", "tool_calls": [with_call(function={"name": "f", "arguments": {"city": "Paris"}})]},
        ],
        ["messages.1.tool_calls.0.function.arguments", "string"],
    ),
    (
        "tool-without-tool-call-id",
        [USER, calling(CALL), {"role": "tool", "content": "18C"}],
        ["messages.2", "'tool' message needs 'tool_call_id'"],
    ),
    (
        "tool-call-id-number",
        [USER, {"role": "assistant", "tool_calls": [CALL]}, {"role": "tool", "tool_call_id": 1, "content": "18C"}],
        ["messages.2.tool_call_id", "string"],
    ),
    (
        "tool-without-content",
        [USER, {"role": "assistant", "tool_calls": [CALL]}, {"role": "tool", "tool_call_id": "call_1"}],
        ["messages.2", "'tool' message needs 'content'"],
    ),
    (
        "function-without-name",
        [USER, {"role": "function", "content": "18C"}],
        ["messages.1", "'function' message needs 'name'"],
    ),
    ("unknown-role", [{"role": "wizard", "content": "Hi"}], ["messages.0.role", "'user'"]),
    ("missing-role", [{"content": "Hi"}], ["'messages.0.role' is required"]),
    ("message-not-an-object", ["Hi"], ["messages.0"]),
]


@pytest.mark.parametrize("messages,words", [c[1:] for c in BAD_MESSAGES], ids=[c[0] for c in BAD_MESSAGES])
def test_malformed_messages_are_400_naming_the_field(base_url, messages, words):
    err = assert_error(chat(base_url, {"messages": messages}), 400, param="messages", type="invalid_request_error")
    for word in words:
        assert word in err["message"], err
    assert err["code"] is None


BAD_TOOL_CHOICES = [
    ("unknown-mode", "sometimes", TOOLS, 'must be "none", "auto", "required"'),
    ("number", 1, TOOLS, "must be"),
    ("list", ["auto"], TOOLS, "must be"),
    ("object-without-function", {"type": "function"}, TOOLS, "must be"),
    ("object-wrong-type", {"type": "tool", "function": {"name": "get_weather"}}, TOOLS, "must be"),
    ("object-without-name", {"type": "function", "function": {}}, TOOLS, "must be"),
    ("name-not-string", {"type": "function", "function": {"name": 3}}, TOOLS, "must be"),
    ("required-without-tools", "required", None, "needs 'tools'"),
    ("named-without-tools", {"type": "function", "function": {"name": "get_weather"}}, None, "needs 'tools'"),
]


@pytest.mark.parametrize("choice,tools,words", [c[1:] for c in BAD_TOOL_CHOICES], ids=[c[0] for c in BAD_TOOL_CHOICES])
def test_malformed_tool_choice_is_400(base_url, choice, tools, words):
    body = {"messages": [USER], "tool_choice": choice}
    if tools is not None:
        body["tools"] = tools
    err = assert_error(chat(base_url, body), 400, param="tool_choice", type="invalid_request_error")
    assert words in err["message"], err


def test_well_formed_conversations_are_answered(base_url):
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Really brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}], "name": "ann"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": ""},
    ]
    for body in (
        {"messages": conversation},
        {"messages": [USER], "tool_choice": "auto"},  # no tools: nothing to call, nothing refused
        {"messages": [USER], "tool_choice": "none", "tools": TOOLS},
    ):
        r = chat(base_url, body)
        assert r.status_code == 200, (body, r.text)
        assert r.json()["choices"][0]["message"]["role"] == "assistant"


def test_a_well_formed_tool_history_is_not_a_validation_error(base_url):
    """assistant tool_calls (content null) + the tool's answer: answered (the tiny model's short context may
    not hold the tools' prompt: then context_length_exceeded, never a message error)."""
    history = [
        USER,
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "function", "name": "get_weather", "content": "18C"},
    ]
    for body in (
        {"messages": history},
        {"messages": history, "tools": TOOLS, "tool_choice": "auto"},
        {"messages": history, "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    ):
        r = chat(base_url, body)
        if r.status_code != 200:
            assert_error(r, 400, param="messages", code="context_length_exceeded")


def test_tokenize_checks_messages_the_same_way(base_url):
    r = httpx.post(base_url + "/tokenize", json={"model": TINY_NAME, "messages": [{"role": "user"}]}, timeout=60)
    err = assert_error(r, 400, param="messages")
    assert "'user' message needs 'content'" in err["message"], err
    r = httpx.post(base_url + "/tokenize", json={"model": TINY_NAME, "messages": [USER]}, timeout=60)
    assert r.status_code == 200 and r.json()["count"] > 0, r.text
