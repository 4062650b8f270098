"""litellm against a real kvserve on the default model: `litellm.completion` / `acompletion` with
`model="openai/<served name>"`, plain and streamed, and `litellm.text_completion`.

No network: conftest sets LITELLM_LOCAL_MODEL_COST_MAP=True before litellm is imported (else it fetches
its model cost map at import), and its guard fails the test on any connection or name lookup that is
not the loopback address. Nothing here counts tokens (that would load a tiktoken encoding).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:Items? .*ReadOnly:UserWarning"),  # litellm's TypedDicts, under pydantic
]

import litellm  # noqa: E402 - from the test extra: a missing package must fail, not skip

NAME = "SmolLM2-135M-Instruct"  # the default model's served name
MODEL = f"openai/{NAME}"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def kw(api_base) -> dict:
    return dict(model=MODEL, api_base=api_base, api_key="unused", temperature=0, max_tokens=30, num_retries=0)


def test_import_makes_no_connection():
    """`import litellm` in a fresh interpreter with every non-loopback connection refused."""
    code = """
import socket
real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo
def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1"):
        raise SystemExit(f"connect to {address!r} at import")
    return real_connect(self, address)
def getaddrinfo(host, *a, **k):
    if host not in ("127.0.0.1", "::1", "localhost", None):
        raise SystemExit(f"name lookup of {host!r} at import")
    return real_getaddrinfo(host, *a, **k)
socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
import litellm
"""
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr


def test_completion(kw):
    r = litellm.completion(messages=QUESTION, **kw)
    choice = r.choices[0]
    assert "paris" in choice.message.content.lower(), r
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0  # the server's usage, not counted locally


def test_completion_stream_joins_to_the_answer(kw):
    full = litellm.completion(messages=QUESTION, **kw).choices[0].message.content
    chunks = list(litellm.completion(messages=QUESTION, stream=True, **kw))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 3, chunks
    assert "".join(pieces) == full
    assert any(c.choices and c.choices[0].finish_reason in ("stop", "length") for c in chunks)
    rebuilt = litellm.stream_chunk_builder(chunks, messages=QUESTION)
    assert rebuilt.choices[0].message.content == full


def test_acompletion_and_stream(kw):
    async def run():
        full = (await litellm.acompletion(messages=QUESTION, **kw)).choices[0].message.content
        pieces = []
        async for chunk in await litellm.acompletion(messages=QUESTION, stream=True, **kw):
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
        return full, pieces

    full, pieces = asyncio.run(run())
    assert "paris" in full.lower() and len(pieces) >= 3 and "".join(pieces) == full


def test_text_completion(kw):
    """`litellm.text_completion` goes to /v1/completions."""
    r = litellm.text_completion(prompt="The capital of France is", **{**kw, "max_tokens": 8})
    assert r.choices[0].text.strip(), r
