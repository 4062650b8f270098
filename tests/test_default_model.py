"""The embedded default GGUF (SmolLM2-135M-Instruct) end to end, against transformers' own GGUF loader."""

from __future__ import annotations

import os

import pytest
import torch

from model import LLM, SamplingParams
from model.loader.gguf import default_model_path

pytestmark = pytest.mark.slow

PROMPTS = [
    "The history of the Roman Empire is long and complicated. It began when the city of Rome, founded according "
    "to legend in 753 BC, grew from a small settlement into a power that ruled the Mediterranean. Historians say",
    "Here is a short Python function that computes the factorial of a number using recursion, followed by an "
    "explanation of how recursion works and why a base case is needed to stop it from running forever:\n",
    "Photosynthesis is the process by which green plants, algae and some bacteria convert light energy into "
    "chemical energy. In this short essay for students we will look at the two main stages of the process, which",
]


@pytest.fixture(scope="module")
def default_llm() -> LLM:
    return LLM(dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def hf_gguf_model():
    from transformers import AutoModelForCausalLM

    path = default_model_path()
    return AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
    ).eval()


def test_greedy_equals_transformers_gguf(default_llm, hf_gguf_model):
    for prompt in PROMPTS:
        ids = default_llm.tokenizer.encode(prompt)
        assert len(ids) >= 40
        ours = default_llm.generate([ids], SamplingParams(temperature=0, max_tokens=48, ignore_eos=True))[0]
        with torch.no_grad():
            ref = hf_gguf_model.generate(
                torch.tensor([ids]), max_new_tokens=48, min_new_tokens=48, do_sample=False, pad_token_id=0
            )[0, len(ids) :].tolist()
        # min_new_tokens masks EOS in transformers; compare up to the first EOS our run produced.
        eos = set(default_llm.engine.runtime.eos_token_ids)
        cut = next((i for i, t in enumerate(ours.token_ids) if t in eos), 48)
        assert cut >= 40
        assert ours.token_ids[:cut] == ref[:cut]


def test_chat_names_paris(default_llm):
    out = default_llm.chat(
        [{"role": "user", "content": "What is the capital of France?"}], SamplingParams(temperature=0, max_tokens=32)
    )[0]
    assert "Paris" in out.text
    assert out.finish_reason == "stop"


def test_bfloat16_chat_names_paris():
    llm = LLM(dtype="bfloat16", device="cpu", kv_cache_memory=64 * 1024**2, max_model_len=2048)
    out = llm.chat(
        [{"role": "user", "content": "What is the capital of France?"}], SamplingParams(temperature=0, max_tokens=32)
    )[0]
    assert "Paris" in out.text
