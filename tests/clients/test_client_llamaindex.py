"""LlamaIndex's `OpenAILike` (llama-index-llms-openai-like) against a real kvserve on the default model:
complete, chat, stream_chat and their async forms with `is_chat_model=True` (chat completions), and
complete / stream_complete with `is_chat_model=False` (/v1/completions).

`max_tokens` is set and no tokenizer is given, so LlamaIndex never counts tokens (it would fetch a
tiktoken encoding or a Hugging Face tokenizer).

llama-index-llms-openai (which OpenAILike builds on) pins `openai<3` while openai-agents (also in the
test extra) needs `openai>=3`; the two install together with `pip install --no-deps
llama-index-llms-openai llama-index-llms-openai-like` (after llama-index-core), and the SDK surface
OpenAILike uses works with openai 3 (`make install` does this).
"""

from __future__ import annotations

import asyncio

import pytest

pytestmark = pytest.mark.slow

import llama_index.llms.openai_like as openai_like  # noqa: E402 - installed by `make install`: must not skip
from llama_index.core.llms import ChatMessage  # noqa: E402

NAME = "SmolLM2-135M-Instruct"  # the default model's served name
QUESTION = "What is the capital of France?"


def make_llm(api_base: str, is_chat_model: bool, max_tokens: int = 30):
    return openai_like.OpenAILike(
        model=NAME,
        api_base=api_base,
        api_key="unused",
        is_chat_model=is_chat_model,
        context_window=2048,
        max_tokens=max_tokens,
        temperature=0,
        max_retries=0,
        timeout=120,
    )


@pytest.fixture(scope="module")
def llm(api_base):
    return make_llm(api_base, is_chat_model=True)


def test_metadata(llm):
    meta = llm.metadata
    assert meta.is_chat_model and meta.context_window == 2048 and meta.model_name == NAME


def test_complete(llm):
    r = llm.complete(QUESTION)
    assert "paris" in r.text.lower(), r


def test_chat(llm):
    r = llm.chat(
        [ChatMessage(role="system", content="You are a helpful assistant."), ChatMessage(role="user", content=QUESTION)]
    )
    assert r.message.role == "assistant" and "paris" in r.message.content.lower(), r


def test_stream_chat_joins_to_chat(llm):
    messages = [ChatMessage(role="user", content=QUESTION)]
    full = llm.chat(messages).message.content
    chunks = list(llm.stream_chat(messages))
    deltas = [c.delta for c in chunks if c.delta]
    assert len(deltas) >= 3, chunks
    assert "".join(deltas) == full == chunks[-1].message.content


def test_async_chat_and_stream(llm):
    async def run():
        messages = [ChatMessage(role="user", content=QUESTION)]
        full = (await llm.achat(messages)).message.content
        deltas = [c.delta async for c in await llm.astream_chat(messages) if c.delta]
        done = await llm.acomplete("Say hello.")
        return full, deltas, done.text

    full, deltas, text = asyncio.run(run())
    assert "paris" in full.lower() and "".join(deltas) == full and len(deltas) >= 3
    assert text.strip()


def test_completion_model(api_base):
    """is_chat_model=False: /v1/completions with a plain prompt."""
    llm = make_llm(api_base, is_chat_model=False, max_tokens=8)
    prompt = "The capital of France is"
    full = llm.complete(prompt).text
    assert full.strip(), full
    chunks = list(llm.stream_complete(prompt))
    assert len([c for c in chunks if c.delta]) >= 3
    assert "".join(c.delta for c in chunks if c.delta) == full == chunks[-1].text
