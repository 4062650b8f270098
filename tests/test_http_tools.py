"""Tool calling over HTTP with the default model (SmolLM2-135M-Instruct, whose template has no tools: the
prompt fallback), checked with the OpenAI SDK: constrained calls valid against each tool's schema,
streamed calls rebuilt by the SDK equal to the non-streamed ones, history, errors."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
from http_server import ServerProcess, assert_error
from openai.lib.streaming.chat import ChatCompletionStreamState

pytestmark = pytest.mark.slow

NAME = "SmolLM2-135M-Instruct"
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
ADD = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
    "additionalProperties": False,
}
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Current weather in a city", "parameters": WEATHER},
    },
    {"type": "function", "function": {"name": "add", "description": "Add two integers", "parameters": ADD}},
]
STRICT_TOOLS = [{**t, "function": {**t["function"], "strict": True}} for t in TOOLS]  # the SDK's stream helper
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
ADD_TOOL = {"type": "function", "function": {"name": "add"}}


@pytest.fixture(scope="module")
def server():
    server = ServerProcess(["--max-model-len", "2048", "--kv-cache-memory", "256MiB", "--num-threads", "2"])
    try:
        yield server.wait_ready(timeout=180)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=180)


def valid_calls(calls) -> list[tuple[str, dict]]:
    """(name, arguments) of each call, each checked against its tool's schema."""
    out = []
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_"), call
        args = json.loads(call.function.arguments)
        jsonschema.validate(args, SCHEMAS[call.function.name])
        out.append((call.function.name, args))
    return out


def create(client, **kw):
    return client.chat.completions.create(**{"model": NAME, "temperature": 0, "max_tokens": 96, **kw})


def test_required_and_named_calls_are_valid(client):
    r = create(client, messages=ASK, tools=TOOLS, tool_choice="required")
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None, choice
    calls = valid_calls(choice.message.tool_calls)
    assert calls and calls[0][0] == "get_weather", calls

    math = [{"role": "user", "content": "What is 2 plus 3?"}]
    r = create(client, messages=math, tools=TOOLS, tool_choice=ADD_TOOL)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [name for name, _ in valid_calls(choice.message.tool_calls)] == ["add"]

    r = create(client, messages=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    assert r.choices[0].finish_reason == "tool_calls" and len(valid_calls(r.choices[0].message.tool_calls)) == 1


@pytest.mark.parametrize("tool_choice", ["required", ADD_TOOL])
def test_streamed_calls_equal_the_response(client, tool_choice):
    kw = {"messages": ASK, "tools": STRICT_TOOLS, "tool_choice": tool_choice, "temperature": 0, "max_tokens": 96}
    whole = client.chat.completions.create(model=NAME, **kw).choices[0]
    with client.chat.completions.stream(model=NAME, **kw) as stream:
        chunks = [event.chunk for event in stream if event.type == "chunk"]
        streamed = stream.get_final_completion().choices[0]
    assert streamed.finish_reason == whole.finish_reason == "tool_calls"
    key = [(c.function.name, c.function.arguments) for c in whole.message.tool_calls]
    assert [(c.function.name, c.function.arguments) for c in streamed.message.tool_calls] == key
    assert [c.id for c in streamed.message.tool_calls] != [c.id for c in whole.message.tool_calls]  # fresh ids
    assert streamed.message.tool_calls[0].function.parsed_arguments == json.loads(key[0][1])
    # The shape: per call, one delta with id, type and name (arguments ""), then argument fragments.
    pieces = [tc for ch in chunks for choice in ch.choices for tc in (choice.delta.tool_calls or [])]
    starts = [p for p in pieces if p.id is not None]
    assert [(p.index, p.type, p.function.name, p.function.arguments) for p in starts] == [
        (i, "function", name, "") for i, (name, _) in enumerate(key)
    ]
    for i, (_, args) in enumerate(key):
        assert "".join(p.function.arguments for p in pieces if p.index == i and p.id is None) == args


def test_auto_gives_content_or_valid_calls(client):
    for messages in (ASK, [{"role": "user", "content": "Say hello."}]):
        for stream in (False, True):
            kw = {"messages": messages, "tools": TOOLS, "tool_choice": "auto"}
            if stream:
                state = ChatCompletionStreamState()
                for chunk in create(client, stream=True, **kw):
                    state.handle_chunk(chunk)
                choice = state.get_final_completion().choices[0]
            else:
                choice = create(client, **kw).choices[0]
            if choice.message.tool_calls:
                assert choice.finish_reason == "tool_calls" and valid_calls(choice.message.tool_calls)
            else:
                assert choice.message.content and choice.finish_reason in ("stop", "length"), choice


def test_n2_gives_two_choices_with_valid_calls(client):
    kw = {"messages": ASK, "tools": TOOLS, "tool_choice": "required", "n": 2, "temperature": 1.0, "seed": 7}
    r = client.chat.completions.create(model=NAME, max_tokens=96, **kw)
    assert sorted(c.index for c in r.choices) == [0, 1]
    for choice in r.choices:
        assert choice.finish_reason == "tool_calls" and valid_calls(choice.message.tool_calls)
    state = ChatCompletionStreamState()
    for chunk in client.chat.completions.create(model=NAME, max_tokens=96, stream=True, **kw):
        state.handle_chunk(chunk)
    final = state.get_final_completion()
    assert sorted(c.index for c in final.choices) == [0, 1]
    for choice, whole in zip(sorted(final.choices, key=lambda c: c.index), r.choices):  # same seed, same calls
        assert choice.finish_reason == "tool_calls"
        assert valid_calls(choice.message.tool_calls) == valid_calls(whole.message.tool_calls)


def test_tool_history_renders(client):
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees and sunny"},
    ]
    plain = create(client, messages=history, max_tokens=24)
    with_tools = create(client, messages=history, tools=TOOLS, max_tokens=24)
    for r in (plain, with_tools):
        assert r.choices[0].message.content or r.choices[0].message.tool_calls
    assert with_tools.usage.prompt_tokens > plain.usage.prompt_tokens  # the tools' prompt was added
    none = create(client, messages=history, tools=TOOLS, tool_choice="none", max_tokens=8)
    assert none.usage.prompt_tokens == plain.usage.prompt_tokens and not none.choices[0].message.tool_calls


BAD = [
    ([{"type": "function", "function": {"name": "bad name"}}], "required", "tools", "1 to 64"),
    ([{"type": "function", "function": {"name": "f", "parameters": "x"}}], "auto", "tools", "JSON schema object"),
    ([TOOLS[0], TOOLS[0]], "auto", "tools", "unique"),
    ([{"type": "web_search"}], "auto", "tools", '"type": "function"'),
    (TOOLS, {"type": "function", "function": {"name": "nope"}}, "tool_choice", "not among the tools"),
    (  # a schema the grammar engine refuses, reported by the engine against `tools`
        [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "minProperties": "x"}}}],
        "required",
        "tools",
        "tools",
    ),
]


@pytest.mark.parametrize(("tools", "tool_choice", "param", "words"), BAD)
def test_bad_tools_are_400_with_param(server, tools, tool_choice, param, words):
    body = {"model": NAME, "messages": ASK, "tools": tools, "tool_choice": tool_choice, "max_tokens": 4}
    for stream in (False, True):
        r = httpx.post(server.base_url + "/v1/chat/completions", json={**body, "stream": stream}, timeout=60)
        err = assert_error(r, 400, param=param)
        assert words in err["message"], err


def test_required_with_response_format_is_two_constraints(server, client):
    body = {"model": NAME, "messages": ASK, "tools": TOOLS, "max_tokens": 16}
    r = httpx.post(
        server.base_url + "/v1/chat/completions",
        json={**body, "tool_choice": "required", "response_format": {"type": "json_object"}},
        timeout=60,
    )
    err = assert_error(r, 400, param="tool_choice")
    assert "two constraint sources" in err["message"] and "response_format" in err["message"], err
    # "auto": the response format wins and the answer is content (JSON), never parsed as calls.
    r = create(client, messages=ASK, tools=TOOLS, tool_choice="auto", response_format={"type": "json_object"})
    assert not r.choices[0].message.tool_calls and r.choices[0].message.content.startswith("{")
