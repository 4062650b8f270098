"""POST /v1/responses and the stored-response routes, against a real server with the default model, through
the openai SDK and raw HTTP: every response validated by the SDK's own pydantic types (strictly), every
stream event too (sequence numbers increasing, one terminal event), the answer equal to the chat path's for
the same conversation, parse with a pydantic model, a function-tool round trip, previous_response_id, the
store (GET / DELETE / input_items / store=false / --no-responses-store), errors naming the Responses field,
and the openai-agents SDK running an agent with a function tool."""

from __future__ import annotations

import asyncio
import json

import httpx
import jsonschema
import openai
import pytest
from http_server import TINY_ARGS, TINY_NAME, ServerProcess, assert_error
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import BaseModel, TypeAdapter

pytestmark = pytest.mark.slow

NAME = "SmolLM2-135M-Instruct"
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "name": "get_weather", "description": "Current weather in a city", "parameters": WEATHER},
    {"type": "web_search"},  # a hosted tool: ignored, not refused
    {"type": "local_shell"},
]
EVENTS = TypeAdapter(ResponseStreamEvent)
TERMINAL = ("response.completed", "response.incomplete", "response.failed")


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


def post(server, **body) -> httpx.Response:
    return httpx.post(server.base_url + "/v1/responses", json={"model": NAME, **body}, timeout=180)


def strict(body: dict) -> Response:
    """The SDK's Response type, validated (the SDK itself parses leniently)."""
    return Response.model_validate(body)


def raw_events(server, **body) -> list[dict]:
    """Every event of a streamed response, each checked against the SDK's event union."""
    events = []
    with httpx.stream("POST", server.base_url + "/v1/responses", json={"model": NAME, "stream": True, **body},
                      timeout=180) as r:  # fmt: skip
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
                assert data["type"] == name, (name, data)
                EVENTS.validate_python(data)
                events.append(data)
    numbers = [e["sequence_number"] for e in events]
    assert numbers == list(range(len(events))), numbers
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"], kinds
    assert sum(k in TERMINAL for k in kinds) == 1 and kinds[-1] in TERMINAL, kinds
    return events


def test_create_is_a_valid_response_equal_to_the_chat_answer(server, client):
    body = post(server, input="Name a fruit.", instructions="Answer in one short sentence.", temperature=0,
                max_output_tokens=24).json()  # fmt: skip
    r = strict(body)
    assert r.id.startswith("resp_") and r.object == "response" and r.model == NAME
    assert r.status in ("completed", "incomplete") and r.instructions == "Answer in one short sentence."
    assert [o.type for o in r.output] == ["message"] and r.output[0].content[0].type == "output_text"
    assert body["output_text"] == r.output[0].content[0].text and r.output_text == body["output_text"]
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens and r.usage.output_tokens > 0
    if r.status == "incomplete":
        assert r.incomplete_details.reason == "max_output_tokens" and r.usage.output_tokens == 24
    chat = client.chat.completions.create(
        model=NAME,
        messages=[
            {"role": "system", "content": "Answer in one short sentence."},
            {"role": "user", "content": "Name a fruit."},
        ],
        temperature=0,
        max_tokens=24,
    )
    assert r.output_text == chat.choices[0].message.content
    assert r.usage.input_tokens == chat.usage.prompt_tokens


def test_stream_events_rebuild_the_response(server, client):
    events = raw_events(server, input="Count from one to five.", temperature=0, max_output_tokens=20)
    final = strict(events[-1]["response"])
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text and text == final.output_text
    done = [e for e in events if e["type"] == "response.output_text.done"]
    assert len(done) == 1 and done[0]["text"] == text
    kinds = [e["type"] for e in events]
    assert (
        kinds.index("response.output_item.added")
        < kinds.index("response.content_part.added")
        < kinds.index("response.output_text.delta")
    )
    same = client.responses.create(model=NAME, input="Count from one to five.", temperature=0, max_output_tokens=20)
    assert same.output_text == text
    with client.responses.stream(model=NAME, input="Count from one to five.", temperature=0, max_output_tokens=20) as s:
        events = list(s)  # the SDK's own stream helper (its get_final_response wants response.completed only)
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == text
    assert events[-1].type == f"response.{final.status}"


def test_parse_with_a_pydantic_model(client):
    class City(BaseModel):
        name: str
        country: str

    parsed = client.responses.parse(
        model=NAME, input="Paris is a city in which country?", text_format=City, temperature=0, max_output_tokens=80
    )
    assert isinstance(parsed.output_parsed, City), parsed.output_text
    assert parsed.text.format.type == "json_schema"


def test_function_tool_round_trip(server, client):
    first = client.responses.create(model=NAME, input="What is the weather in Paris?", tools=TOOLS,
                                    tool_choice="required", temperature=0, max_output_tokens=60)  # fmt: skip
    strict(first.model_dump(mode="json"))
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].call_id.startswith("call_")
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER)
    assert [t.type for t in first.tools] == ["function"]  # hosted tools ignored
    second = client.responses.create(
        model=NAME,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21 C"}],
        tools=TOOLS,
        temperature=0,
        max_output_tokens=30,
    )
    assert second.previous_response_id == first.id and second.status in ("completed", "incomplete")
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    events = raw_events(server, input="Weather in Rome?", tools=TOOLS, tool_choice="required", temperature=0,
                        max_output_tokens=60)  # fmt: skip
    args = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert len(done) == 1 and done[0]["arguments"] == args and done[0]["name"] == "get_weather"
    final = strict(events[-1]["response"])
    assert final.output[-1].type == "function_call" and final.output[-1].arguments == args


def test_previous_response_id_and_the_store(server, client):
    first = client.responses.create(model=NAME, input="My name is Ada.", temperature=0, max_output_tokens=12)
    second = client.responses.create(model=NAME, input="What is my name?", previous_response_id=first.id,
                                     temperature=0, max_output_tokens=12)  # fmt: skip
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert client.responses.retrieve(first.id).output_text == first.output_text
    items = client.responses.input_items.list(second.id).data
    assert [(i.type, i.role, i.content[0].text) for i in items] == [("message", "user", "What is my name?")]
    client.responses.delete(first.id)
    for r in (
        httpx.get(f"{server.base_url}/v1/responses/{first.id}"),
        httpx.delete(f"{server.base_url}/v1/responses/{first.id}"),
    ):
        assert_error(r, 404, code="response_not_found")
    r = post(server, input="again", previous_response_id=first.id)
    assert_error(r, 400, code="previous_response_not_found", param="previous_response_id")
    unstored = client.responses.create(model=NAME, input="hi", store=False, max_output_tokens=4)
    assert_error(httpx.get(f"{server.base_url}/v1/responses/{unstored.id}"), 404, code="response_not_found")


@pytest.mark.parametrize(
    "body, param",
    [
        ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": [{"type": "message", "role": "robot", "content": "hi"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input[0].content[0]"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"input": []}, "input"),
        ({"input": "hi", "text": {"format": {"type": "yaml"}}}, "text.format"),
        ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
        ({"input": "hi", "tools": [{"type": "function", "parameters": {}}]}, "tools[0].name"),
        ({"input": "hi", "tools": TOOLS, "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        ({"input": "hi", "temperature": -1}, "temperature"),
    ],
)
def test_bad_requests_name_the_responses_field(server, body, param):
    assert_error(post(server, **body), 400, param=param)


def test_unknown_model_and_unknown_items(server):
    assert_error(post(server, input="hi", model="nope"), 404, code="model_not_found")
    r = post(
        server, input=[{"type": "reasoning", "summary": []}, {"role": "user", "content": "hi"}], max_output_tokens=4
    )
    assert r.status_code == 200 and strict(r.json()).status in ("completed", "incomplete")


def test_no_responses_store_keeps_nothing(tiny_llama_dir):
    server = ServerProcess([tiny_llama_dir, "--served-model-name", TINY_NAME, *TINY_ARGS, "--no-responses-store"])
    try:
        server.wait_ready(timeout=120)
        r = httpx.post(server.base_url + "/v1/responses", json={"input": "hi", "max_output_tokens": 4}, timeout=60)
        assert r.status_code == 200, r.text
        rid = r.json()["id"]
        assert_error(httpx.get(f"{server.base_url}/v1/responses/{rid}"), 404, code="response_not_found")
        again = httpx.post(server.base_url + "/v1/responses", json={"input": "hi", "previous_response_id": rid})
        assert_error(again, 400, code="previous_response_not_found", param="previous_response_id")
    finally:
        server.stop()


def test_openai_agents_runs_an_agent_with_a_function_tool(server):
    import agents  # openai-agents, from the test extra
    from agents.models.openai_responses import OpenAIResponsesModel

    agents.set_tracing_disabled(True)
    seen: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        seen.append(city)
        return f"It is sunny and 21 C in {city}."

    model = OpenAIResponsesModel(
        model=NAME, openai_client=openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key="x")
    )
    agent = agents.Agent(
        name="weather",
        instructions="Use the tool to answer.",
        tools=[get_weather],
        model=model,
        model_settings=agents.ModelSettings(tool_choice="required", temperature=0, max_tokens=64),
    )
    result = asyncio.run(agents.Runner.run(agent, "What is the weather in Paris?", max_turns=4))
    assert len(seen) >= 1 and all(isinstance(c, str) and c for c in seen)
    assert isinstance(result.final_output, str)
