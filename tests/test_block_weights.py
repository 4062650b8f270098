"""The default GGUF model with its Q4_1 / Q8_0 weights run by the exact block kernels (the default on
CPU fp32): every Linear is switched, the rebuilt weights were checked bit for bit at load, greedy
output equals the float32 (oneDNN) path, and batching never changes a sequence's tokens."""

from __future__ import annotations

import pytest

from model import LLM, SamplingParams
from model.kernels.quant_linear import BlockQuantLinear

pytestmark = pytest.mark.slow
PROMPTS = ["Write a long story about a river and a mountain.", "What is the capital of France?", "List three colors:"]
GREEDY = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)


@pytest.fixture(scope="module")
def block_llm() -> LLM:
    return LLM(device="cpu", dtype="float32")


def test_every_linear_runs_from_blocks(block_llm):
    model = block_llm.engine.runner.model
    switched = [m for m in model.modules() if isinstance(vars(m).get("forward"), BlockQuantLinear)]
    layers = len(model.model.layers)
    assert len(switched) == 4 * layers + 1  # qkv, o, gate_up, down per layer + the tied lm_head
    assert all(f.forward.quantized for f in switched)


def test_greedy_equals_the_float32_path(block_llm):
    reference = LLM(device="cpu", dtype="float32", block_kernels=False)
    ours = [o.outputs[0].token_ids for o in block_llm.generate(PROMPTS, GREEDY)]
    theirs = [o.outputs[0].token_ids for o in reference.generate(PROMPTS, GREEDY)]
    assert ours == theirs


def test_batched_equals_alone(block_llm):
    together = [o.outputs[0].token_ids for o in block_llm.generate(PROMPTS, GREEDY)]
    alone = [block_llm.generate([p], GREEDY)[0].outputs[0].token_ids for p in PROMPTS]
    assert together == alone
