"""Structured outputs with the default model (SmolLM2-135M-Instruct) through the openai SDK: every
constrained output parses and validates, and the constraint does not spoil easy answers.

Schemas bound their free strings (maxLength) and close their objects (additionalProperties false):
the constraint guarantees validity, the bounds keep a 135M model from rambling into max_tokens.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal

import jsonschema
import openai
import pytest
from http_server import ServerProcess
from pydantic import BaseModel, Field

pytestmark = pytest.mark.slow

NAME = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def client():
    server = ServerProcess(["--max-model-len", "2048", "--kv-cache-memory", "256MiB", "--num-threads", "2"])
    try:
        server.wait_ready(timeout=180)
        yield openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)
    finally:
        server.stop()


def closed(properties: dict, required: list[str] | None = None) -> dict:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


TEXT = {"type": "string", "maxLength": 40}
# (name, schema, prompt): nested objects, arrays with minItems/maxItems, enums, required and optional
# properties, integers and numbers with bounds, strings with patterns, a nullable type.
SCHEMAS = [
    (
        "person",
        closed(
            {
                "name": TEXT,
                "age": {"type": "integer", "minimum": 0, "maximum": 150},
                "email": {"type": "string", "pattern": "^[a-z]+@[a-z]+\\.com$"},
            },
            required=["name", "age"],
        ),
        "Give the name and age of a person called Alice who is 30, as JSON.",
    ),
    (
        "book",
        closed(
            {
                "book": closed(
                    {
                        "title": {"type": "string", "maxLength": 60},
                        "author": closed({"first": TEXT, "last": TEXT}),
                        "year": {"type": "integer", "minimum": 1400, "maximum": 2030},
                    }
                )
            }
        ),
        "Describe the book Nineteen Eighty-Four by George Orwell as JSON.",
    ),
    (
        "colors",
        closed(
            {
                "colors": {
                    "type": "array",
                    "items": {"type": "string", "enum": ["red", "green", "blue", "yellow"]},
                    "minItems": 2,
                    "maxItems": 3,
                }
            }
        ),
        "List two or three colors as JSON.",
    ),
    (
        "weather",
        closed(
            {
                "temperature": {"type": "number", "minimum": -50, "maximum": 60},
                "humidity": {"type": "integer", "minimum": 0, "maximum": 100},
                "unit": {"enum": ["C", "F"]},
            }
        ),
        "Report today's weather in Paris as JSON: temperature, humidity, unit.",
    ),
    (
        "product",
        closed(
            {
                "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 1, "maxItems": 4},
                "active": {"type": "boolean"},
                "note": {"type": ["string", "null"], "maxLength": 30},
            },
            required=["code", "tags", "active"],
        ),
        "Make a product record as JSON with a code like ABC-123, a few tags and whether it is active.",
    ),
]


def ask(client: openai.OpenAI, prompt: str, **kw):
    kw = {"temperature": 0, "max_tokens": 250, **kw}
    return client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": prompt}], **kw)


def json_schema_format(name: str, schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def test_every_schema_output_validates(client):
    for name, schema, prompt in SCHEMAS:
        choice = ask(client, prompt, response_format=json_schema_format(name, schema)).choices[0]
        assert choice.finish_reason == "stop", (name, choice)
        jsonschema.validate(json.loads(choice.message.content), schema)
    # The same schemas through vLLM's field and on /v1/completions.
    for name, schema, prompt in SCHEMAS[:2]:
        c = client.completions.create(
            model=NAME, prompt=prompt + "\n", max_tokens=250, temperature=0, extra_body={"guided_json": schema}
        )
        assert c.choices[0].finish_reason == "stop", (name, c.choices[0])
        jsonschema.validate(json.loads(c.choices[0].text), schema)


def test_json_object(client):
    prompt = 'Write a JSON object with the keys "name" and "age" for a cat called Tom who is 3 years old.'
    choice = ask(client, prompt, max_tokens=100, response_format={"type": "json_object"}).choices[0]
    assert choice.finish_reason == "stop" and isinstance(json.loads(choice.message.content), dict), choice


def test_regex_on_completions(client):
    pattern = r"\d{4}-\d{2}-\d{2}"
    c = client.completions.create(
        model=NAME, prompt="Date: ", max_tokens=16, temperature=0, extra_body={"structured_outputs": {"regex": pattern}}
    )
    assert c.choices[0].finish_reason == "stop" and re.fullmatch(pattern, c.choices[0].text), c.choices[0]


REVIEWS = [
    ("I loved it, wonderful!", "positive"),
    ("Terrible, I hated every minute.", "negative"),
    ("The best film I have seen this year, a joy.", "positive"),
    ("What a waste of money, awful and boring.", "negative"),
]


def test_choice_classifies_clear_sentences(client):
    """At temperature 0 the choice is the obvious label. (The wording matters to a 135M model: asked
    "Is the following review positive or negative?" it calls the third review negative.)"""
    template = "Classify the sentiment of this review as positive or negative.\nReview: {}\nSentiment:"
    for text, label in REVIEWS:
        r = ask(client, template.format(text), max_tokens=5, extra_body={"guided_choice": ["positive", "negative"]})
        assert (r.choices[0].message.content, r.choices[0].finish_reason) == (label, "stop"), text


WEATHER = SCHEMAS[3]


def test_streaming_equals_non_streaming_and_n(client):
    name, schema, prompt = WEATHER
    fmt = json_schema_format(name, schema)
    full = ask(client, prompt, response_format=fmt).choices[0].message.content
    stream = client.chat.completions.create(
        model=NAME,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=250,
        response_format=fmt,
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == full
    jsonschema.validate(json.loads(full), schema)

    r = ask(client, prompt, response_format=fmt, n=2, temperature=0.9, seed=1)
    assert len(r.choices) == 2
    for choice in r.choices:
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.message.content), schema)


class City(BaseModel):
    name: Annotated[str, Field(max_length=40)]
    country: Annotated[str, Field(max_length=40)]
    continent: Literal["Africa", "Asia", "Europe", "North America", "South America", "Oceania"]


def test_sdk_parse_with_a_pydantic_model(client):
    r = client.chat.completions.parse(
        model=NAME,
        messages=[{"role": "user", "content": "Tell me about Paris as JSON."}],
        response_format=City,
        temperature=0,
        max_tokens=120,
    )
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, City) and parsed.name == "Paris" and parsed.continent == "Europe", r


def test_max_tokens_too_small_for_the_schema(client):
    name, schema, prompt = SCHEMAS[1]
    choice = ask(client, prompt, max_tokens=5, response_format=json_schema_format(name, schema)).choices[0]
    assert choice.finish_reason == "length" and choice.message.content.startswith('{"'), choice
    # The server goes on serving constrained requests.
    assert ask(client, prompt, max_tokens=5, extra_body={"guided_choice": ["a", "b"]}).choices[0].message.content
