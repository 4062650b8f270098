"""quantization="fp16" (float16 weights, float32 math through fbgemm) against its oracle: transformers
with the same weights rounded to float16, computing in float32. Invariance holds as in float32."""

from __future__ import annotations

import pytest
import torch
from test_engine_invariants import assert_idle, make_prompts, tokens
from test_model_parity import PROMPT, engine_logits, hf_greedy
from tiny_models import ARCHS, write_tiny_model
from torch import nn

from model import LLM, SamplingParams
from model.layers.fp16_weights import fp16_weights_supported

pytestmark = pytest.mark.skipif(not fp16_weights_supported(), reason="needs torch's fbgemm engine (x86-64)")


def round_weights_to_fp16(hf: nn.Module) -> None:
    """What our fp16 mode stores: every Linear and Embedding weight (and bias) rounded to float16."""
    with torch.no_grad():
        for module in hf.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                for p in module.parameters(recurse=False):
                    p.copy_(p.half().float())


@pytest.mark.parametrize("arch", ARCHS)
def test_fp16_weights_match_transformers_with_rounded_weights(tmp_path, arch):
    hf = write_tiny_model(str(tmp_path), arch)
    llm = LLM(str(tmp_path), dtype="float32", device="cpu", quantization="fp16", kv_cache_memory=4 * 1024**2)
    ours = engine_logits(llm, PROMPT)
    with torch.no_grad():
        exact = hf(torch.tensor([PROMPT])).logits[0]
    round_weights_to_fp16(hf)
    with torch.no_grad():
        ref = hf(torch.tensor([PROMPT])).logits[0]
    assert (ours - ref).abs().max().item() <= 1e-4
    # The rounding is visible against the unrounded model: the test can tell the two apart.
    assert (ours - exact).abs().max().item() > 1e-4
    out = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=32, ignore_eos=True))[0]
    assert out.token_ids == hf_greedy(hf, PROMPT, 32)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])  # qwen3's tiny config ties lm_head to the embedding
def test_fp16_weights_keep_no_float32_copies(tmp_path, arch):
    write_tiny_model(str(tmp_path), arch)
    llm = LLM(str(tmp_path), dtype="float32", device="cpu", quantization="fp16", kv_cache_memory=4 * 1024**2)
    model = llm.engine.runner.model
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            assert module.weight.numel() == 0, name


def test_fp16_weights_batched_equals_one_by_one(tiny_llama_dir):
    llm = LLM(tiny_llama_dir, dtype="float32", device="cpu", quantization="fp16", kv_cache_memory=8 * 1024**2)
    prompts = make_prompts(8)
    alone = [tokens(llm, [p])[0] for p in prompts]
    assert tokens(llm, prompts) == alone
    assert_idle(llm)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(quantization="int4"), "quantization must be fp16"),
        (dict(quantization="fp16", dtype="bfloat16"), "runs on the CPU in float32"),
    ],
)
def test_fp16_weights_bad_combinations_are_clear_errors(tiny_llama_dir, kwargs, message):
    with pytest.raises(ValueError, match=message):
        LLM(tiny_llama_dir, device="cpu", kv_cache_memory=4 * 1024**2, **kwargs)


@pytest.mark.slow
def test_default_model_with_fp16_weights_names_paris():
    llm = LLM(dtype="float32", device="cpu", quantization="fp16")
    out = llm.chat(
        [{"role": "user", "content": "What is the capital of France?"}], SamplingParams(temperature=0, max_tokens=32)
    )[0]
    assert "Paris" in out.text
    assert out.finish_reason == "stop"
