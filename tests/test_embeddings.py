"""Embeddings: the engine's prompt-only requests against transformers' final hidden states (last-token and
mean pooling, L2-normalized, |diff| <= 1e-5 per component), batched == alone (chunked prefills, next to
generation requests), KV blocks back to the pool; then POST /v1/embeddings through the openai SDK (base64
and float), `dimensions`, usage, errors naming the field, and LangChain's OpenAIEmbeddings."""

from __future__ import annotations

import math

import httpx
import openai
import pytest
import torch
from http_server import TINY_NAME, assert_error, tiny_server  # noqa: F401 - the session server fixture
from tiny_models import write_tiny_model

from model import LLM, SamplingParams

PROMPTS = [
    [1, 17, 250, 33, 99, 4, 180, 77, 5, 260, 41, 12, 150, 201, 9, 64, 3, 31, 111, 222, 8],
    [1, 40, 41],
    [1] + [7, 77, 177] * 15,
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("embed-llama"))
    hf = write_tiny_model(folder, "llama")
    return folder, hf


def _reference(hf, ids: list[int], pooling: str) -> torch.Tensor:
    with torch.no_grad():
        hidden = hf.model(torch.tensor([ids])).last_hidden_state[0]  # after the final norm
    pooled = hidden[-1] if pooling == "last" else hidden.mean(0)
    return pooled / pooled.norm()


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_embeddings_match_transformers_and_batching_changes_nothing(tiny, pooling):
    folder, hf = tiny
    llm = LLM(folder, dtype="float32", device="cpu", kv_cache_memory=4 * 1024**2, max_num_batched_tokens=16)
    together = llm.embed(PROMPTS, pooling)
    for ids, vector in zip(PROMPTS, together):
        assert len(vector) == 64
        assert (torch.tensor(vector) - _reference(hf, ids, pooling)).abs().max().item() <= 1e-5
        assert abs(math.sqrt(sum(v * v for v in vector)) - 1.0) < 1e-6
    alone = [llm.embed([p], pooling)[0] for p in PROMPTS]
    tol = 0.0 if pooling == "last" else 1e-6  # the mean's float64 sum runs over other chunk boundaries
    for a, b in zip(alone, together):
        assert max(abs(x - y) for x, y in zip(a, b)) <= tol
    assert llm.engine.block_manager.num_free_blocks == llm.engine.block_manager.num_blocks


def test_embeddings_run_next_to_generation(tiny):
    folder, hf = tiny
    llm = LLM(folder, dtype="float32", device="cpu", kv_cache_memory=4 * 1024**2, max_num_batched_tokens=16)
    engine = llm.engine
    greedy = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    expected = llm.generate([PROMPTS[0]], greedy)[0].token_ids
    engine.add_request("gen", PROMPTS[0], greedy)
    engine.add_checked_request("emb", PROMPTS[2], SamplingParams(max_tokens=1), pooling="last")
    outputs = {}
    mixed = False
    while engine.has_unfinished_requests():
        mixed |= len(engine.requests) == 2
        for out in engine.step():
            outputs[out.request_id] = out
    assert mixed and outputs["gen"].token_ids == expected
    vector = torch.tensor(outputs["emb"].embedding)
    assert (vector - _reference(hf, PROMPTS[2], "last")).abs().max().item() <= 1e-5
    assert outputs["emb"].outputs[0].token_ids == [] and outputs["emb"].finished


def test_pooling_is_checked(tiny):
    folder, _ = tiny
    llm = LLM(folder, dtype="float32", device="cpu", kv_cache_memory=4 * 1024**2)
    with pytest.raises(ValueError, match="pooling"):
        llm.engine.add_checked_request("x", [1, 2], SamplingParams(max_tokens=1), pooling="max")


@pytest.fixture(scope="module")
def client(tiny_server):  # noqa: F811
    return openai.OpenAI(base_url=tiny_server.base_url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_openai_sdk_embeddings(client, tiny_server, tiny_llama_dir):  # noqa: F811
    inputs = ["hello world", "the cat sat on the mat"]
    default = client.embeddings.create(model=TINY_NAME, input=inputs)  # the SDK asks for base64 and decodes it
    floats = client.embeddings.create(model=TINY_NAME, input=inputs, encoding_format="float")
    assert [d.index for d in default.data] == [0, 1] and default.model == TINY_NAME
    for a, b in zip(default.data, floats.data):
        assert max(abs(x - y) for x, y in zip(a.embedding, b.embedding)) <= 1e-6  # two runs of the tiny torch path
    engine = LLM(tiny_llama_dir, dtype="float32", device="cpu", kv_cache_memory=4 * 1024**2, num_threads=1)
    ids = [engine.tokenizer.encode(t) for t in inputs]
    local = engine.embed(ids)
    for d, v in zip(floats.data, local):
        assert max(abs(x - y) for x, y in zip(d.embedding, v)) <= 1e-5
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == sum(len(i) for i in ids)
    short = client.embeddings.create(model=TINY_NAME, input=inputs[0], encoding_format="float", dimensions=16)
    head = floats.data[0].embedding[:16]
    norm = math.sqrt(sum(v * v for v in head))
    assert max(abs(x / norm - y) for x, y in zip(head, short.data[0].embedding)) <= 1e-6
    tokens = client.embeddings.create(model=TINY_NAME, input=[ids[0], ids[1]], encoding_format="float")
    assert max(abs(x - y) for x, y in zip(tokens.data[1].embedding, floats.data[1].embedding)) <= 1e-6


@pytest.mark.parametrize(
    "body, param",
    [
        ({"input": []}, "input"),
        ({"input": ""}, "input"),
        ({"input": [[1, 2], [10**6]]}, "input"),
        ({"input": [1.5]}, "input"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "word " * 5000}, "input"),
    ],
)
def test_bad_embedding_requests(tiny_server, body, param):  # noqa: F811
    r = httpx.post(tiny_server.base_url + "/v1/embeddings", json={"model": TINY_NAME, **body}, timeout=60)
    assert_error(r, 400, param=param)


def test_langchain_openai_embeddings(tiny_server, client):  # noqa: F811
    from langchain_openai import OpenAIEmbeddings

    emb = OpenAIEmbeddings(
        model=TINY_NAME, base_url=tiny_server.base_url + "/v1", api_key="unused", check_embedding_ctx_length=False
    )
    docs = emb.embed_documents(["hello world", "a cat"])
    query = emb.embed_query("hello world")
    assert len(docs) == 2 and len(query) == 64
    ref = client.embeddings.create(model=TINY_NAME, input="hello world", encoding_format="float").data[0].embedding
    assert max(abs(x - y) for x, y in zip(query, ref)) <= 1e-6
    assert max(abs(x - y) for x, y in zip(docs[0], ref)) <= 1e-6
