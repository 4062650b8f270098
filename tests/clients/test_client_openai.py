"""The openai SDK (sync and async) against a real kvserve on the default model: chat, streamed chat,
/v1/completions (plain and streamed), /v1/models, and the compatibility details around them.

tests/test_clients_structured.py covers `chat.completions.parse` and streamed tool calls; this file
covers the plain text paths. All at temperature 0 with short answers.
"""

from __future__ import annotations

import asyncio

import openai
import pytest

pytestmark = pytest.mark.slow

NAME = "SmolLM2-135M-Instruct"  # the default model's served name
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(api_base):
    return openai.OpenAI(base_url=api_base, api_key="unused", max_retries=0, timeout=120)


def async_client(api_base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=api_base, api_key="unused", max_retries=0, timeout=120)


def test_chat(client):
    r = client.chat.completions.create(model=NAME, messages=QUESTION, temperature=0, max_tokens=30)
    choice = r.choices[0]
    assert r.object == "chat.completion" and r.model == NAME
    assert choice.message.role == "assistant" and "paris" in choice.message.content.lower(), r
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 30


def test_chat_stream_joins_to_the_answer(client):
    kw = dict(model=NAME, messages=QUESTION, temperature=0, max_tokens=30)
    full = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 3, chunks
    assert "".join(pieces) == full
    assert chunks[0].choices[0].delta.role == "assistant"
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert reasons in (["stop"], ["length"]), chunks
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    # The SDK's stream helper builds the same final message.
    with client.chat.completions.stream(**kw) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == full


def test_async_chat_and_stream(api_base):
    async def run() -> tuple[str, list[str], list[str]]:
        async with async_client(api_base) as client:
            kw = dict(model=NAME, messages=QUESTION, temperature=0, max_tokens=30)
            full = (await client.chat.completions.create(**kw)).choices[0].message.content
            pieces = []
            async for chunk in await client.chat.completions.create(**kw, stream=True):
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
            # Concurrent requests on one async client (continuous batching) are answered too.
            many = await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model=NAME, messages=[{"role": "user", "content": f"Say the number {i}."}], max_tokens=8
                    )
                    for i in range(3)
                )
            )
            return full, pieces, [r.choices[0].message.content for r in many]

    full, pieces, many = asyncio.run(run())
    assert "paris" in full.lower()
    assert len(pieces) >= 3 and "".join(pieces) == full
    assert len(many) == 3 and all(isinstance(t, str) and t for t in many)


def test_completions(client):
    r = client.completions.create(model=NAME, prompt="The capital of France is", temperature=0, max_tokens=8, echo=True)
    assert r.object == "text_completion"
    text = r.choices[0].text
    assert text.startswith("The capital of France is") and len(text) > len("The capital of France is")
    assert r.usage.completion_tokens > 0
    kw = dict(model=NAME, prompt="The capital of France is", temperature=0, max_tokens=8)
    full = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(**kw, stream=True))
    assert len(chunks) >= 3
    assert "".join(c.choices[0].text for c in chunks) == full
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_async_completions(api_base):
    async def run():
        async with async_client(api_base) as client:
            return await client.completions.create(model=NAME, prompt=["1, 2, 3,", "a, b, c,"], max_tokens=4)

    r = asyncio.run(run())
    assert [c.index for c in r.choices] == [0, 1] and all(c.text for c in r.choices)


def test_models_list_has_max_model_len(client):
    models = client.models.list().data
    assert [m.id for m in models] == [NAME]
    assert models[0].model_extra["max_model_len"] == 2048  # --max-model-len
    assert client.models.retrieve(NAME).model_extra["max_model_len"] == 2048


def test_chat_with_only_a_system_message(client):
    r = client.chat.completions.create(
        model=NAME,
        messages=[{"role": "system", "content": "You are a friendly assistant. Greet the user."}],
        temperature=0,
        max_tokens=20,
    )
    assert r.choices[0].message.content.strip(), r


def test_double_slash_base_url(default_server):
    """A base URL that ends in a slash ('.../v1/') makes some clients send '/v1//chat/completions'."""
    import httpx

    body = {"model": NAME, "messages": QUESTION, "max_tokens": 5}
    r = httpx.post(default_server.base_url + "/v1//chat/completions", json=body, timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"], r.text


def test_suffix_without_fim_tokens(client):
    """SmolLM2-135M-Instruct's vocabulary has no FIM tokens (ids 0..16 are <|endoftext|>, <|im_start|>,
    <|im_end|>, <repo_name>, ...): `suffix` is a 400 naming it."""
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=NAME, prompt="def add(a, b):", suffix="\n", max_tokens=8)
    assert err.value.status_code == 400 and err.value.param == "suffix"
