"""LangChain's `ChatOpenAI` (langchain-openai) against a real kvserve on the default model: invoke, stream
(sync and async) and a streamed tool call.

tests/test_clients_structured.py covers `with_structured_output` (json_schema, strict, function_calling)
and `bind_tools` with a forced tool_choice (non-streamed, and the tool result round trip).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

import pytest
from langchain_core.messages import AIMessageChunk
from pydantic import BaseModel, Field

pytestmark = pytest.mark.slow

NAME = "SmolLM2-135M-Instruct"  # the default model's served name
QUESTION = "What is the capital of France?"


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: Annotated[str, Field(max_length=40)]
    unit: Literal["celsius", "fahrenheit"]


@pytest.fixture(scope="module")
def chat(api_base):
    from langchain_openai import ChatOpenAI

    # use_responses_api=False: kvserve's chat API is /v1/chat/completions; max_retries=0: a failure shows.
    return ChatOpenAI(
        base_url=api_base,
        api_key="x",
        model=NAME,
        temperature=0,
        max_tokens=30,
        max_retries=0,
        timeout=120,
        use_responses_api=False,
    )


def test_invoke(chat):
    msg = chat.invoke(QUESTION)
    assert isinstance(msg.content, str) and "paris" in msg.content.lower(), msg
    assert msg.response_metadata["finish_reason"] in ("stop", "length")
    assert msg.response_metadata["model_name"] == NAME
    assert msg.usage_metadata["input_tokens"] > 0 and msg.usage_metadata["output_tokens"] > 0


def test_stream_joins_to_invoke(chat):
    full = chat.invoke(QUESTION).content
    chunks = list(chat.stream(QUESTION))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert len([c for c in chunks if c.content]) >= 3, chunks
    merged = chunks[0]
    for c in chunks[1:]:
        merged += c
    assert merged.content == full
    assert merged.response_metadata.get("finish_reason") in ("stop", "length"), merged


def test_async_invoke_and_stream(chat):
    async def run():
        msg = await chat.ainvoke(QUESTION)
        pieces = [c.content async for c in chat.astream(QUESTION)]
        batch = await chat.abatch(["Say hello.", "Say goodbye."], config={"max_concurrency": 2})
        return msg.content, pieces, [m.content for m in batch]

    full, pieces, batch = asyncio.run(run())
    assert "paris" in full.lower() and "".join(pieces) == full and len([p for p in pieces if p]) >= 3
    assert len(batch) == 2 and all(isinstance(t, str) and t.strip() for t in batch)


def test_streamed_tool_call(chat):
    """bind_tools with a named tool_choice, streamed: the tool-call chunks merge into one call whose
    arguments validate against the tool's schema."""
    bound = chat.bind_tools([GetWeather], tool_choice="GetWeather", max_tokens=100)
    merged = None
    for chunk in bound.stream("What is the weather like in Paris right now?"):
        merged = chunk if merged is None else merged + chunk
    assert merged is not None and merged.tool_call_chunks, merged
    [call] = merged.tool_calls
    assert call["name"] == "GetWeather" and call["id"], merged
    GetWeather.model_validate(call["args"])
    assert merged.response_metadata.get("finish_reason") == "tool_calls", merged
