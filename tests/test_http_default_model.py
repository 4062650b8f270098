"""`kvserve serve` with no model argument: the embedded SmolLM2-135M-Instruct, end to end over HTTP."""

from __future__ import annotations

import httpx
import openai
import pytest
from http_server import ServerProcess, assert_error, post_stream

pytestmark = pytest.mark.slow

NAME = "SmolLM2-135M-Instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def default_server():
    server = ServerProcess(["--max-model-len", "2048", "--kv-cache-memory", "256MiB", "--num-threads", "2"])
    try:
        yield server.wait_ready(timeout=180)
    finally:
        server.stop()


def test_default_model_chat_and_completions(default_server):
    url = default_server.base_url
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    assert [m.id for m in client.models.list().data] == [NAME]

    r = client.chat.completions.create(model=NAME, messages=QUESTION, max_tokens=24, temperature=0)
    answer = r.choices[0].message.content
    assert r.model == NAME and "Paris" in answer
    assert r.usage.completion_tokens <= 24 and r.choices[0].finish_reason in ("stop", "length")

    stream = client.chat.completions.create(
        model=NAME, messages=QUESTION, max_tokens=24, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    assert chunks[-1].usage == r.usage

    # The template came from the GGUF; the prompt counted in usage is the rendered conversation.
    ids = httpx.post(url + "/tokenize", json={"messages": QUESTION}).json()["tokens"]
    assert r.usage.prompt_tokens == len(ids)

    c = client.completions.create(model=NAME, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert c.choices[0].text.strip() and c.usage.completion_tokens <= 8
    _, events = post_stream(
        url,
        "/v1/completions",
        {"model": NAME, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0, "stream": True},
    )
    assert "".join(ev["choices"][0]["text"] for ev in events) == c.choices[0].text

    # Multibyte answer text streams whole (the model knows a few accented words).
    body = {
        "model": NAME,
        "messages": [{"role": "user", "content": "Write the French word for coffee shop."}],
        "max_tokens": 16,
        "temperature": 0,
    }
    full = httpx.post(url + "/v1/chat/completions", json=body, timeout=120).json()["choices"][0]["message"]["content"]
    _, events = post_stream(url, "/v1/chat/completions", {**body, "stream": True})
    pieces = [ev["choices"][0]["delta"].get("content") or "" for ev in events]
    assert "".join(pieces) == full and not any("\ufffd" in p for p in pieces)

    assert_error(
        httpx.post(url + "/v1/chat/completions", json={"model": "gpt-4o", "messages": QUESTION}), 404, "model_not_found"
    )
