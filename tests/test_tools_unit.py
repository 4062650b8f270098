"""Tool calling, engine side: the grammars (in llguidance, on the default model's real tokenizer), the
call parser (whole and streamed), the prompt fallback on SmolLM2's template, tool validation."""

from __future__ import annotations

import json
import random

import llguidance
import pytest

from model import InvalidParamError, SamplingParams, StructuredOutputs
from model.loader.gguf import default_model_path
from model.loader.gguf_vocab import tokenizer_from_gguf_file
from model.tools import (
    ToolCallDelta,
    ToolCallParser,
    check_tool_choice,
    check_tools,
    parse_tool_calls,
    prepare_chat,
    tool_constraint,
    tool_grammar,
)
from model.tools.grammar import with_tool_grammar
from model.tools.prompt import FALLBACK_FORMAT, FALLBACK_HEADER

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"$ref": "#/$defs/unit"}},
    "required": ["city"],
    "$defs": {"unit": {"enum": ["celsius", "fahrenheit"]}},
}
ADD = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather in a city", "parameters": WEATHER},
    },
    {"type": "function", "function": {"name": "add", "description": "Add two integers", "parameters": ADD}},
    {"type": "function", "function": {"name": "ping"}},  # no parameters: any object
]
PARIS = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}</tool_call>'
ADD_CALL = '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'
PING = '<tool_call>{"name": "ping", "arguments": {"x": [1, {"y": null}]}}</tool_call>'


@pytest.fixture(scope="module")
def tok():
    return tokenizer_from_gguf_file(default_model_path())


@pytest.fixture(scope="module")
def lltok(tok):
    return llguidance.LLTokenizer(tok.backend.to_str(), n_vocab=49152, eos_token=[2])


def matcher(lltok, grammar: str) -> llguidance.LLMatcher:
    lark = llguidance.LLMatcher.grammar_from_lark(grammar)
    assert llguidance.LLMatcher.validate_grammar(lark, lltok) == ""
    m = llguidance.LLMatcher(lltok, lark, log_level=0)
    assert not m.is_error()
    return m


def accepts(tok, lltok, grammar: str, text: str) -> bool:
    """The whole text is allowed and the grammar may end after it (it is stopped, or it takes EOS)."""
    m = matcher(lltok, grammar)
    ids = tok.encode(text, add_special_tokens=False)
    if not m.consume_tokens(ids) or m.is_error() or not m.is_accepting():
        return False
    return m.is_stopped() or m.consume_tokens([2])


def test_required_grammar(tok, lltok):
    g = tool_grammar(check_tools(TOOLS), "required")
    for text in (PARIS, ADD_CALL, PING, PARIS + ADD_CALL, '<tool_call>{"name": "ping", "arguments": {}}</tool_call>'):
        assert accepts(tok, lltok, g, text), text
    refused = [
        "The weather is nice.",  # no call
        "Sure. " + PARIS,  # text first
        '<tool_call>{"name": "nope", "arguments": {}}</tool_call>',  # unknown tool
        '<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>',  # missing required b
        '<tool_call>{"name": "add", "arguments": {"a": 1, "b": "2"}}</tool_call>',  # wrong type
        '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2, "c": 3}}</tool_call>',  # no extra keys
        '<tool_call>{"name": "get_weather", "arguments": {"city": "P", "unit": "kelvin"}}</tool_call>',  # $ref enum
        '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}',  # unclosed
        PARIS + "\nmore text",
    ]
    for text in refused:
        assert not accepts(tok, lltok, g, text), text


def test_single_call_and_named_grammars(tok, lltok):
    tools = check_tools(TOOLS)
    one = tool_grammar(tools, "required", parallel_tool_calls=False)
    assert accepts(tok, lltok, one, PARIS) and not accepts(tok, lltok, one, PARIS + ADD_CALL)
    m = matcher(lltok, one)
    assert m.consume_tokens(tok.encode(PARIS, add_special_tokens=False)) and m.is_stopped()  # nothing else allowed

    named = tool_grammar(tools, {"type": "function", "function": {"name": "add"}})
    assert accepts(tok, lltok, named, ADD_CALL)
    for text in (PARIS, ADD_CALL + ADD_CALL, "hello"):
        assert not accepts(tok, lltok, named, text), text
    assert tool_grammar(tools, "none") is None
    spec = tool_constraint(tools, "required")
    assert isinstance(spec, StructuredOutputs) and spec.param == "tools"
    assert spec.grammar == tool_grammar(tools, "required")


def test_auto_grammar(tok, lltok):
    tools = check_tools(TOOLS)
    g = tool_grammar(tools, "auto")
    for text in ("", "Paris is sunny today.", "Let me check.\n" + PARIS, PARIS + ADD_CALL, "a <tool x> b"):
        assert accepts(tok, lltok, g, text), text
    for text in ("Let me check. <tool_call>not json</tool_call>", "x <tool_call>" + ADD_CALL[11:] + " and more"):
        assert not accepts(tok, lltok, g, text), text
    single = tool_grammar(tools, "auto", parallel_tool_calls=False)
    assert accepts(tok, lltok, single, "Hi " + PARIS) and not accepts(tok, lltok, single, PARIS + PARIS)


@pytest.mark.parametrize(
    ("tools", "needle"),
    [
        ("nope", "non-empty list"),
        ([], "non-empty list"),
        ([{"type": "function", "function": {"name": f"t{i}"}} for i in range(129)], "at most 128"),
        ([{"type": "retrieval"}], '"type": "function"'),
        ([{"type": "function"}], "function must be an object"),
        ([{"type": "function", "function": {"name": ""}}], "1 to 64"),
        ([{"type": "function", "function": {"name": "has space"}}], "1 to 64"),
        ([{"type": "function", "function": {"name": "x" * 65}}], "1 to 64"),
        ([{"type": "function", "function": {"name": 3}}], "1 to 64"),
        ([{"type": "function", "function": {"name": "a"}}, {"type": "function", "function": {"name": "a"}}], "unique"),
        ([{"type": "function", "function": {"name": "a", "parameters": "x"}}], "JSON schema object"),
        ([{"type": "function", "function": {"name": "a", "parameters": {"type": "string"}}}], "describe an object"),
        ([{"type": "function", "function": {"name": "a", "description": 5}}], "description"),
    ],
)
def test_tool_validation_errors(tools, needle):
    with pytest.raises(InvalidParamError) as err:
        check_tools(tools)
    assert err.value.param == "tools" and needle in str(err.value)


def test_tool_choice_validation():
    tools = check_tools(TOOLS)
    assert check_tool_choice(None, tools) == "auto" and check_tool_choice(None, None) == "none"
    for bad, needle in [
        ({"type": "function", "function": {"name": "missing"}}, "not among the tools"),
        ("sometimes", "must be"),
        ({"type": "function"}, "must be"),
    ]:
        with pytest.raises(InvalidParamError) as err:
            check_tool_choice(bad, tools)
        assert err.value.param == "tool_choice" and needle in str(err.value)
    with pytest.raises(InvalidParamError) as err:
        check_tool_choice("required", None)
    assert err.value.param == "tool_choice"


def test_tool_grammar_and_other_constraint():
    tools = check_tools(TOOLS)
    own = SamplingParams(structured_outputs=StructuredOutputs(json_object=True, param="response_format"))
    kept = with_tool_grammar(own, tool_constraint(tools, "auto"), "auto")
    assert kept.structured_outputs.param == "response_format"  # "auto": the client's constraint wins
    with pytest.raises(InvalidParamError) as err:
        with_tool_grammar(own, tool_constraint(tools, "required"), "required")
    assert err.value.param == "tool_choice" and "response_format" in str(err.value)
    plain = with_tool_grammar([SamplingParams(n=2, stop=["x"])], tool_constraint(tools, "required"), "required")
    assert plain[0].n == 2 and plain[0].stop_list == ["x"] and plain[0].structured_outputs.param == "tools"


# ---- parser -------------------------------------------------------------------------------------


def streamed(text: str, sizes: list[int]) -> tuple[str, dict[int, tuple[str, str, str]], list]:
    """(content, {index: (id, name, arguments)}, events) of `text` fed in pieces of the given sizes."""
    parser, events, i, k = ToolCallParser(), [], 0, 0
    while i < len(text):
        n = sizes[k % len(sizes)]
        events += parser.feed(text[i : i + n])
        i, k = i + n, k + 1
    events += parser.finish()
    content = "".join(e for e in events if isinstance(e, str))
    calls: dict[int, list[str]] = {}
    for e in events:
        if isinstance(e, ToolCallDelta):
            if e.id is not None:
                assert e.index == len(calls) and e.name and e.arguments == ""  # a start comes first, once
                calls[e.index] = [e.id, e.name, ""]
            calls[e.index][2] += e.arguments
    return content, {i: tuple(c) for i, c in calls.items()}, events


WELL_FORMED = [
    ("Let me check.\n" + PARIS, "Let me check.", [("get_weather", '{"city": "Paris", "unit": "celsius"}')]),
    (
        PARIS + "\n\n" + ADD_CALL + "\n",
        "",
        [("get_weather", '{"city": "Paris", "unit": "celsius"}'), ("add", '{"a": 1, "b": 2}')],
    ),
    (
        '<tool_call>\n  { "name" : "ping", "arguments" : {"s": "}</tool_call>\\"{"} }\n</tool_call>',
        "",
        [("ping", '{"s": "}</tool_call>\\"{"}')],
    ),
    ('<tool_call>{"arguments": {"q": 1}, "name": "ping"}</tool_call>', "", [("ping", '{"q": 1}')]),  # any key order
    ('<tool_call>{"name": "ping"}</tool_call>', "", [("ping", "{}")]),  # no arguments: {}
    (
        'Sure <tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}',
        "Sure",
        [("add", '{"a": 1, "b": 2}')],
    ),  # no close
    (
        "a" + PING + " b " + ADD_CALL + " c  ",
        "abc",
        [("ping", '{"x": [1, {"y": null}]}'), ("add", '{"a": 1, "b": 2}')],
    ),
]


@pytest.mark.parametrize(("text", "content", "calls"), WELL_FORMED)
def test_parse_tool_calls(text, content, calls):
    got_content, got = parse_tool_calls(text)
    assert got_content == content
    assert [(c.name, c.arguments) for c in got] == calls
    assert all(c.id.startswith("call_") for c in got) and len({c.id for c in got}) == len(got)
    for c in got:
        json.loads(c.arguments)
    rng = random.Random(len(text))
    for sizes in ([1], [2, 5, 3], [len(text)], [rng.randint(1, 7) for _ in range(20)]):
        s_content, s_calls, _ = streamed(text, sizes)
        assert s_content == content
        assert [(name, args) for _, name, args in s_calls.values()] == calls  # fragments join to the arguments


MALFORMED = [
    "No tools needed, the answer is 4.",
    "Trailing space stays  ",
    "<tool_call>not json</tool_call> and text",
    "x <tool_call>[1, 2]</tool_call>",
    '<tool_call>{"arguments": {}}</tool_call>',  # no name
    '<tool_call>{"name": 7, "arguments": {}}</tool_call>',
    "A partial tag at the end <tool_c",
    "<tool_call>",
]


@pytest.mark.parametrize("text", MALFORMED)
def test_malformed_calls_are_content(text):
    assert parse_tool_calls(text) == (text, [])
    for sizes in ([1], [3], [len(text)]):
        content, calls, _ = streamed(text, sizes)
        assert content == text and calls == {}


def test_calls_broken_after_the_name():
    for text in (
        '<tool_call>{"name": "add", "arguments": {"a": 1',  # cut off (max_tokens)
        '<tool_call>{"name": "add", "arguments": 5}</tool_call>',  # arguments not an object
        '<tool_call>{"name": "add", "arguments": {"a": ]}</tool_call>',
    ):
        assert parse_tool_calls(text) == (text, [])  # whole text is content when not streamed
        _, calls, _ = streamed(text, [4])
        assert [name for _, name, _ in calls.values()] == ["add"]  # a stream already announced it


def test_incremental_events():
    parser = ToolCallParser()
    assert parser.feed("Hello <tool_c") == ["Hello"]  # the partial tag (and the space before it) is held
    assert parser.feed("all>") == []
    events = parser.feed('{"name": "add", "argu')
    assert len(events) == 1 and events[0].index == 0 and events[0].name == "add" and events[0].id.startswith("call_")
    assert parser.feed('ments": {"a": 1') == [ToolCallDelta(0, '{"a": 1')]
    assert parser.feed(', "b": 2}}</tool_call>') == [ToolCallDelta(0, ', "b": 2}')]
    second = parser.feed("<tool_call>" + PING[11:])
    assert [e.index for e in second] == [1, 1] and second[0].name == "ping"
    assert parser.finish() == [] and parser.ok and len(parser.calls) == 2

    held = ToolCallParser()
    assert held.feed("Hi <tool_c") == ["Hi"] and held.feed("x") == [" <tool_cx"]
    assert held.feed("  <") == [] and held.finish() == ["  <"]  # no call after all: everything comes out


# ---- prompt ---------------------------------------------------------------------------------------


def test_fallback_prompt_on_smollm2_template(tok):
    template = tok.chat_template
    assert "tools" not in template
    question = [{"role": "user", "content": "Weather in Paris?"}]
    tools = check_tools(TOOLS)
    assert prepare_chat(question, None, template) == (question, {})  # nothing to do

    messages, context = prepare_chat(question, tools, template, "required")
    text = tok.apply_chat_template(messages, chat_template=template, **context)
    assert context == {} and text.startswith("<|im_start|>system\n" + FALLBACK_HEADER)
    assert "SmolLM" not in text  # our system message replaces the template's default one
    entry = {"name": "get_weather", "description": "Weather in a city", "parameters": WEATHER}
    assert json.dumps(entry) in text and '{"name": "ping", "description": "", "parameters": {}}' in text
    assert FALLBACK_FORMAT in text and "You must call at least one function." in text
    assert text.endswith("<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n")

    with_system = [{"role": "system", "content": "Be brief."}, *question]
    messages, _ = prepare_chat(with_system, tools, template, {"type": "function", "function": {"name": "add"}})
    assert len(messages) == 2 and messages[0]["content"].startswith("Be brief.\n\n" + FALLBACK_HEADER)
    assert messages[0]["content"].endswith("You must call the function add.")


def test_tool_history_on_smollm2_template(tok):
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    history = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "", "tool_calls": [call, {**call, "id": "call_2"}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
    ]
    messages, _ = prepare_chat(history, None, tok.chat_template)
    text = tok.apply_chat_template(messages, chat_template=tok.chat_template)
    block = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    assert f"<|im_start|>assistant\n{block}{block}<|im_end|>" in text
    assert "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n<tool_response>\nrain\n</tool_response>" in text
    assert "<|im_start|>tool" not in text and history[1]["tool_calls"][0] is call  # the input is not changed


def test_template_with_tools_gets_them():
    template = (
        "{% for t in tools %}[{{ t.function.name }}]{% endfor %}"
        "{% for m in messages %}{% for c in m.tool_calls or [] %}{{ c.function.arguments | tojson }}{% endfor %}"
        "{{ m.role }}:{{ m.content }};{% endfor %}"
    )
    call = {"id": "c", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
    history = [{"role": "assistant", "content": "", "tool_calls": [call]}, {"role": "tool", "content": "2"}]
    messages, context = prepare_chat(history, check_tools(TOOLS), template)
    assert context["tools"][0]["function"]["name"] == "get_weather"
    assert messages[0]["tool_calls"][0]["function"]["arguments"] == {"a": 1} and messages[1]["role"] == "tool"


# ---- LLM.chat ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_llm_chat_with_tools():
    from model import LLM

    llm = LLM(max_model_len=2048, kv_cache_memory=128 * 1024**2)
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    params = SamplingParams(temperature=0, max_tokens=96)
    for choice, name in (("required", "get_weather"), ({"type": "function", "function": {"name": "add"}}, "add")):
        out = llm.chat(ask, params, tools=TOOLS, tool_choice=choice)[0].outputs[0]
        content, calls = parse_tool_calls(out.text)
        assert out.finish_reason == "stop" and content == "" and [c.name for c in calls] == [name], out.text
        json.loads(calls[0].arguments)
    plain = llm.chat(ask, params, tools=TOOLS, tool_choice="none")[0]
    assert plain.prompt_token_ids == llm.chat(ask, params)[0].prompt_token_ids  # "none": no tools shown
    own = SamplingParams(max_tokens=8, structured_outputs=StructuredOutputs(json_object=True, param="response_format"))
    with pytest.raises(InvalidParamError) as err:
        llm.chat(ask, own, tools=TOOLS, tool_choice="required")
    assert err.value.param == "tool_choice"
    with pytest.raises(InvalidParamError) as err:
        llm.chat(ask, params, tools=[{"type": "function", "function": {"name": "a b"}}])
    assert err.value.param == "tools"
