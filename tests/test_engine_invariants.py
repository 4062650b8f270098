"""Engine invariants at temperature 0 on a tiny random Llama: batching, prefix cache, chunked
prefill and preemption never change the tokens; abort in any state returns every block."""

from __future__ import annotations

import random

import pytest
import torch

from model import LLM, SamplingParams
from model.engine.runtime import resolve_dtype
from model.engine.sequence import SequenceStatus

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


def make_prompts(n: int, seed: int = 0, lo: int = 3, hi: int = 90) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 300) for _ in range(rng.randrange(lo, hi))] for _ in range(n)]


def tokens(llm: LLM, prompts, params=GREEDY) -> list[list[int]]:
    return [o.token_ids for o in llm.generate(prompts, params)]


def assert_idle(llm: LLM) -> None:
    stats = llm.engine.stats()
    assert stats.num_running == stats.num_waiting == 0
    assert stats.num_free_blocks == stats.num_blocks
    assert all(c == 0 for c in llm.engine.block_manager.ref_counts)


def new_llm(path: str, **kw) -> LLM:
    opts = dict(dtype="float32", device="cpu", kv_cache_memory=8 * 1024**2)
    opts.update(kw)
    return LLM(path, **opts)


# Every dtype the engine may pick by default on this machine (a set: just float32 where `auto` is fp32).
DEFAULT_DTYPES = sorted({"float32", str(resolve_dtype("auto", torch.device("cpu"))).removeprefix("torch.")})


@pytest.fixture(scope="module", params=DEFAULT_DTYPES)
def default_dtype_llm(request, tiny_llama_dir, tiny_llm):
    """The shared fp32 engine, or one like it in the other dtype `auto` picks here."""
    if request.param == "float32":
        return tiny_llm
    return new_llm(tiny_llama_dir, dtype=request.param, max_num_seqs=16, max_num_batched_tokens=256)


def test_batched_equals_one_by_one(default_dtype_llm):
    llm = default_dtype_llm
    prompts = make_prompts(8)
    assert len({len(p) for p in prompts}) > 4
    alone = [tokens(llm, [p])[0] for p in prompts]
    assert tokens(llm, prompts) == alone
    assert_idle(llm)


def test_prefix_cache_on_equals_off_and_hits(tiny_llama_dir):
    shared = make_prompts(1, seed=1, lo=70, hi=71)[0]
    prompts = [shared + tail for tail in make_prompts(6, seed=2, lo=2, hi=20)]
    off = new_llm(tiny_llama_dir, enable_prefix_caching=False)
    on = new_llm(tiny_llama_dir, enable_prefix_caching=True)
    expected = tokens(off, prompts)
    first = tokens(on, prompts[:1])
    hits_before = on.engine.stats().prefix_hits
    rest = tokens(on, prompts[1:])
    assert first + rest == expected
    # 70 shared tokens = 4 full blocks of 16 for each of the 5 later prompts.
    assert on.engine.stats().prefix_hits - hits_before >= 5 * 64
    assert off.engine.stats().prefix_hits == 0
    # A repeated prompt hits everything but its last (partial) block and still matches.
    assert tokens(on, prompts[:1]) == expected[:1]
    assert_idle(on)


@pytest.mark.parametrize("budget", [7, 16, 33])
def test_chunked_prefill_equals_unchunked(tiny_llama_dir, tiny_llm, budget):
    prompts = make_prompts(6, seed=3, lo=20, hi=120)
    expected = tokens(tiny_llm, prompts)
    chunked = new_llm(tiny_llama_dir, max_num_batched_tokens=budget, enable_prefix_caching=False)
    assert tokens(chunked, prompts) == expected
    assert_idle(chunked)


def test_preemption_equals_large_pool(tiny_llama_dir, tiny_llm):
    prompts = make_prompts(8, seed=4, lo=30, hi=60)
    params = SamplingParams(temperature=0, max_tokens=60, ignore_eos=True)
    expected = tokens(tiny_llm, prompts, params)
    # 2 layers * 2 * 2 kv heads * 16 dims * 4 bytes = 512 bytes/token: 40 blocks = 640 tokens,
    # far less than 8 sequences of ~110 tokens.
    small = new_llm(tiny_llama_dir, kv_cache_memory=512 * 16 * 40, max_model_len=256)
    assert tokens(small, prompts, params) == expected
    assert small.engine.stats().num_preemptions > 0
    assert_idle(small)


def test_seeded_sampling_is_independent_of_the_batch(default_dtype_llm):
    llm = default_dtype_llm
    params = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=20, seed=1234, ignore_eos=True)
    alone = llm.generate([[5, 6, 7, 8]], params)[0].token_ids
    others = SamplingParams(temperature=0.8, max_tokens=20, ignore_eos=True)
    mixed = llm.generate(make_prompts(3, seed=5) + [[5, 6, 7, 8]], [others] * 3 + [params])[3].token_ids
    assert alone == mixed
    unseeded = {
        tuple(llm.generate([[5, 6, 7, 8]], SamplingParams(max_tokens=20, ignore_eos=True))[0].token_ids)
        for _ in range(3)
    }
    assert len(unseeded) > 1
    assert_idle(llm)


def test_n_choices_and_stop_token_ids(tiny_llm):
    greedy = tokens(tiny_llm, [[9, 10, 11]])[0]
    stop_tok = greedy[5]
    out = tiny_llm.generate([[9, 10, 11]], SamplingParams(temperature=0, max_tokens=24, stop_token_ids=[stop_tok]))[0]
    assert out.finish_reason == "stop"
    assert out.outputs[0].stop_reason == stop_tok
    assert out.token_ids == greedy[: greedy.index(stop_tok) + 1]
    many = tiny_llm.generate([[9, 10, 11]], SamplingParams(n=4, max_tokens=8, seed=7, ignore_eos=True))[0]
    assert [c.index for c in many.outputs] == [0, 1, 2, 3]
    assert len({tuple(c.token_ids) for c in many.outputs}) > 1
    assert_idle(tiny_llm)


def test_abort_in_every_state_frees_every_block(tiny_llama_dir):
    llm = new_llm(tiny_llama_dir, max_num_batched_tokens=16, max_num_seqs=2)
    engine = llm.engine
    prompts = make_prompts(3, seed=6, lo=40, hi=41)
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", p, SamplingParams(max_tokens=50, ignore_eos=True))
    engine.step()  # r0 gets a 16-token chunk of its 40-token prompt: mid-prefill
    seqs = {rid: req.seqs[0] for rid, req in engine.requests.items()}
    assert seqs["r0"].status is SequenceStatus.RUNNING and 0 < seqs["r0"].num_computed_tokens < 40
    assert seqs["r2"].status is SequenceStatus.WAITING
    engine.abort_request("r2")  # waiting
    engine.abort_request("r0")  # mid-prefill
    for _ in range(6):
        engine.step()
    assert seqs["r1"].num_output_tokens > 0  # decoding
    engine.abort_request("r1")  # mid-decode
    assert not engine.has_unfinished_requests()
    assert engine.step() == []
    assert_idle(llm)


def test_bad_prompts_raise_value_error(tiny_llm):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tiny_llm.generate([[1, 2, 10_000]], GREEDY)
    with pytest.raises(ValueError, match="empty"):
        tiny_llm.generate([[]], GREEDY)
    with pytest.raises(ValueError, match="context limit"):
        tiny_llm.generate([[5] * 600], GREEDY)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tiny_llm.generate([[1, 2]], SamplingParams(logit_bias={99999: 1.0}))
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    assert_idle(tiny_llm)
