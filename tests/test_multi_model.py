"""Several models in one server (`kvserve serve A B --served-model-name a --served-model-name b`): each has its
own engine, a request reaches the model its `model` field names (greedy tokens equal to that model run alone
with the engine library), /v1/models lists both with their context lengths, unknown names are 404s, and a
mismatched name count is a CLI error."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from http_server import TINY_ARGS, ServerProcess, assert_error
from tiny_models import write_tiny_model

from model import LLM, SamplingParams

pytestmark = pytest.mark.slow
PROMPT = [1, 17, 250, 33, 99, 4, 180, 77, 5, 260]


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    a, b = (str(tmp_path_factory.mktemp(name)) for name in ("model-a", "model-b"))
    write_tiny_model(a, "llama", seed=1)
    write_tiny_model(b, "qwen2", seed=2)
    return a, b


@pytest.fixture(scope="module")
def server(two_models):
    a, b = two_models
    server = ServerProcess([a, b, "--served-model-name", "a", "--served-model-name", "b", *TINY_ARGS])
    try:
        yield server.wait_ready(timeout=120)
    finally:
        server.stop()


def _alone(path: str) -> list[int]:
    llm = LLM(path, dtype="float32", device="cpu", kv_cache_memory=8 * 1024**2, num_threads=1)
    return llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))[0].token_ids


def _completion(server, model: str | None) -> list[int]:
    body = {"prompt": PROMPT, "max_tokens": 12, "temperature": 0, "ignore_eos": True, "logprobs": 0,
            "return_tokens_as_token_ids": True}  # fmt: skip
    if model is not None:
        body["model"] = model
    r = httpx.post(server.base_url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == (model or "a")
    return [int(t.removeprefix("token_id:")) for t in r.json()["choices"][0]["logprobs"]["tokens"]]


def test_each_request_reaches_its_own_model(server, two_models):
    expected_a, expected_b = (_alone(p) for p in two_models)
    assert expected_a != expected_b
    assert _completion(server, "a") == expected_a
    assert _completion(server, "b") == expected_b
    assert _completion(server, None) == expected_a  # no model field: the first
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    for name in ("a", "b"):
        r = httpx.post(server.base_url + "/v1/chat/completions", json={"model": name, **chat}, timeout=60)
        assert r.status_code == 200 and r.json()["model"] == name
    r = httpx.post(server.base_url + "/v1/embeddings", json={"model": "b", "input": "hi"}, timeout=60)
    assert r.status_code == 200 and r.json()["model"] == "b"


def test_models_are_listed_and_unknown_names_refused(server, two_models):
    data = httpx.get(server.base_url + "/v1/models", timeout=10).json()["data"]
    assert [(m["id"], m["root"]) for m in data] == [("a", two_models[0]), ("b", two_models[1])]
    assert all(m["max_model_len"] > 0 for m in data)
    r = httpx.post(server.base_url + "/v1/completions", json={"model": "c", "prompt": "x"}, timeout=10)
    assert_error(r, 404, code="model_not_found", param="model")


def test_one_name_per_model_is_required(two_models):
    a, b = two_models
    cmd = [sys.executable, "-m", "app.main", "serve", a, b, "--served-model-name", "only-one"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "2 models need 2 --served-model-name flags" in done.stderr
