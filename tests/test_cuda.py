"""The same engine on CUDA: parity with transformers on the GPU, batching invariance, blocks freed.

Without a CUDA GPU only the first test runs (asking for cuda is a clear error); the rest skip.
"""

from __future__ import annotations

import pytest
import torch
from test_engine_invariants import assert_idle, make_prompts, tokens
from test_model_parity import PROMPT, engine_logits
from tiny_models import ARCHS, write_tiny_model

from model import LLM, SamplingParams

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.skipif(torch.cuda.is_available(), reason="only meaningful without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(tiny_llama_dir):
    with pytest.raises(ValueError, match="no CUDA GPU"):
        LLM(tiny_llama_dir, device="cuda")


@needs_cuda
@pytest.mark.parametrize("arch", ARCHS)
def test_cuda_fp32_logits_and_greedy_match_transformers(tmp_path, arch):
    hf = write_tiny_model(str(tmp_path), arch).to("cuda")
    llm = LLM(str(tmp_path), dtype="float32", device="cuda", kv_cache_memory=16 * 1024**2)
    assert llm.engine.runtime.device.type == "cuda"
    ours = engine_logits(llm, PROMPT)
    with torch.no_grad():
        ref = hf(torch.tensor([PROMPT], device="cuda")).logits[0]
    assert (ours - ref).abs().max().item() <= 1e-3
    ids = list(PROMPT)
    with torch.no_grad():
        for _ in range(24):
            ids.append(int(hf(torch.tensor([ids], device="cuda")).logits[0, -1].argmax()))
    expected = ids[len(PROMPT) :]
    out = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=24, ignore_eos=True))[0]
    assert out.token_ids == expected


@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_batched_equals_one_by_one_and_frees_blocks(tiny_llama_dir, dtype):
    llm = LLM(tiny_llama_dir, dtype=dtype, device="cuda", kv_cache_memory=16 * 1024**2)
    prompts = make_prompts(8)
    alone = [tokens(llm, [p])[0] for p in prompts]
    batched = tokens(llm, prompts)
    if dtype == "float32":
        assert batched == alone
    else:  # bf16 batched kernels may round differently; the first tokens still agree
        assert [b[:4] for b in batched] == [a[:4] for a in alone]
    assert_idle(llm)


@needs_cuda
def test_cuda_sampling_is_seeded_and_aborts_free_blocks(tiny_llama_dir):
    llm = LLM(tiny_llama_dir, dtype="float32", device="cuda", kv_cache_memory=16 * 1024**2)
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=7, max_tokens=16, ignore_eos=True)
    prompts = make_prompts(4, seed=3)
    assert tokens(llm, prompts, params) == tokens(llm, prompts, params)
    engine = llm.engine
    engine.add_request("a", prompts[0], params)
    engine.step()
    engine.abort_request("a")
    assert_idle(llm)
