"""instructor on the async openai client, and its streamed partial objects, against a real kvserve on the
default model. tests/test_clients_structured.py covers the sync client in Mode.TOOLS, Mode.JSON_SCHEMA
and Mode.JSON.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import instructor
import openai
import pytest
from pydantic import BaseModel, Field

pytestmark = pytest.mark.slow

NAME = "SmolLM2-135M-Instruct"  # the default model's served name
PROMPT = "What is the capital of France? Answer with city and country."

Short = Annotated[str, Field(max_length=40)]


class Capital(BaseModel):
    """A capital city and the country it is the capital of."""

    city: Short
    country: Short


def assert_capital(value: object) -> None:
    assert isinstance(value, Capital), value
    assert "paris" in value.city.lower() and "france" in value.country.lower(), value


KW = dict(
    model=NAME,
    messages=[{"role": "user", "content": PROMPT}],
    response_model=Capital,
    max_retries=0,  # one attempt: a failure shows, it is not retried
    temperature=0,
    max_tokens=100,
)


@pytest.mark.parametrize("mode", [instructor.Mode.TOOLS, instructor.Mode.JSON_SCHEMA])
def test_async_response_model(api_base, mode):
    async def run():
        client = openai.AsyncOpenAI(base_url=api_base, api_key="unused", max_retries=0, timeout=120)
        async with client:
            patched = instructor.from_openai(client, mode=mode)
            value, completion = await patched.chat.completions.create_with_completion(**KW)
            return value, completion

    value, completion = asyncio.run(run())
    assert_capital(value)
    reason = completion.choices[0].finish_reason
    assert reason == ("tool_calls" if mode is instructor.Mode.TOOLS else "stop"), completion


@pytest.mark.parametrize("mode", [instructor.Mode.TOOLS, instructor.Mode.JSON_SCHEMA])
def test_partial_stream(api_base, mode):
    """create_partial streams the object as it fills in; the last one is the complete answer."""
    client = openai.OpenAI(base_url=api_base, api_key="unused", max_retries=0, timeout=120)
    partials = list(instructor.from_openai(client, mode=mode).chat.completions.create_partial(**KW))
    assert len(partials) >= 3, partials
    assert_capital(Capital.model_validate(partials[-1].model_dump()))
