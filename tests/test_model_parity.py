"""Our decoder vs transformers on tiny random configs: logits (fp32) and 32 greedy tokens."""

from __future__ import annotations

import pytest
import torch
from tiny_models import ARCHS, write_tiny_model

from model import LLM, SamplingParams
from model.engine.scheduler import ScheduledSeq
from model.engine.sequence import Sequence

PROMPT = [1, 17, 250, 33, 99, 4, 180, 77, 5, 260, 41, 12, 150, 201, 9, 64, 3, 31, 111, 222, 8]


def engine_logits(llm: LLM, ids: list[int]) -> torch.Tensor:
    """Logits at every position of one prompt, through the engine's runner and paged cache."""
    engine = llm.engine
    seq = Sequence(10**6, "probe", 0, ids, SamplingParams(), 0, [])
    engine.block_manager.allocate(seq, len(ids))
    try:
        input_ids, positions, meta, _, _ = engine.runner.prepare([ScheduledSeq(seq, len(ids))])
        with torch.inference_mode():
            return engine.runner.model(
                input_ids, positions, engine.runner.kv_caches, meta, engine.runner.attn_fn, torch.arange(len(ids))
            )
    finally:
        engine.block_manager.free(seq)


def hf_greedy(hf_model, ids: list[int], n: int) -> list[int]:
    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            out.append(int(hf_model(torch.tensor([out])).logits[0, -1].argmax()))
    return out[len(ids) :]


@pytest.mark.parametrize("backend", ["sdpa", "torch_ref"])
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_and_greedy_match_transformers(tmp_path, arch, backend):
    hf = write_tiny_model(str(tmp_path), arch)
    llm = LLM(str(tmp_path), dtype="float32", device="cpu", attention_backend=backend, kv_cache_memory=4 * 1024**2)
    ours = engine_logits(llm, PROMPT)
    with torch.no_grad():
        ref = hf(torch.tensor([PROMPT])).logits[0]
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() <= 1e-4

    expected = hf_greedy(hf, PROMPT, 32)
    out = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=32, ignore_eos=True))[0]
    assert out.token_ids == expected
    assert out.finish_reason == "length"
