"""Sampler tests: every expectation comes from an oracle (argmax, the plain per-row reference
filters of model.engine.sampling.reference, transformers' logits processors, direct formulas,
log_softmax)."""

from __future__ import annotations

import time

import pytest
import torch
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from model.engine.sampling import (
    Sampler,
    SamplingBatch,
    SamplingRow,
    apply_logit_edits,
    seeded_uniform,
    top_values,
)
from model.engine.sampling.reference import reference_distribution, reference_warp
from model.sampling_params import SamplingParams

CPU = torch.device("cpu")
EOS = 2


def row(seed: int = 0, prompt: list[int] | None = None, output: list[int] | None = None, **kw) -> SamplingRow:
    """A row with the given SamplingParams fields."""
    kw.setdefault("max_tokens", 64)
    return SamplingRow(SamplingParams(**kw), seed, prompt or [1, 5, 7], output or [], [EOS])


def build(rows: list[SamplingRow], vocab: int) -> SamplingBatch:
    return SamplingBatch.build(rows, vocab, CPU)


def logits_for(num_rows: int, vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(num_rows, vocab, generator=g) * 3


# ---------------------------------------------------------------- greedy


def test_greedy_is_argmax() -> None:
    x = logits_for(5, 300)
    rows = [row(temperature=0.0) for _ in range(4)] + [row(temperature=0.8, top_k=1)]
    out = Sampler()(x, build(rows, 300))
    assert out.token_ids.tolist() == x.argmax(-1).tolist()
    assert out.sampled_logprobs is None


def test_greedy_and_sampled_rows_mixed() -> None:
    """Greedy rows, whole-vocabulary rows and top-k / top-p rows in one batch."""
    x = logits_for(9, 300, seed=1)
    kinds = [dict(temperature=0.0), dict(temperature=0.9), dict(temperature=1.2, top_p=0.8, top_k=30)]
    rows = [row(seed=i, **kinds[i % 3]) for i in range(9)]
    ids = Sampler()(x, build(rows, 300)).token_ids.tolist()
    assert ids[0::3] == x[0::3].argmax(-1).tolist()
    alone = [Sampler()(x[i : i + 1], build([rows[i]], 300)).token_ids.item() for i in range(9)]
    assert ids == alone


def test_bf16_logits() -> None:
    x = logits_for(3, 100).bfloat16()
    out = Sampler()(x, build([row(temperature=0.0, logprobs=2)] * 3, 100))
    assert out.token_ids.tolist() == x.float().argmax(-1).tolist()
    assert out.top_logprobs is not None and out.top_logprobs.dtype == torch.float32


# ---------------------------------------------------------------- top-k / top-p / min-p masks


@pytest.mark.parametrize("vocab", [4096, 4099, 300])  # two-stage, two-stage with a tail, plain
@pytest.mark.parametrize("k", [1, 5, 20, 64])
def test_top_values_match_topk(vocab: int, k: int) -> None:
    x = logits_for(3, vocab, seed=k)
    x[1, 100:] = x[1, :100].repeat(vocab // 100 + 1)[: vocab - 100] - 1.0  # repeated values
    vals, idx = top_values(x, k)
    want_vals, want_idx = x.topk(k, dim=-1)
    assert torch.equal(vals, want_vals)
    assert torch.equal(x.gather(1, idx), vals)
    assert torch.equal(idx[0], want_idx[0]) and torch.equal(idx[2], want_idx[2])  # distinct values


FILTER_CASES = [
    dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0),
    dict(temperature=0.7, top_k=5, top_p=1.0, min_p=0.0),
    dict(temperature=1.3, top_k=0, top_p=0.9, min_p=0.0),
    dict(temperature=1.0, top_k=0, top_p=0.3, min_p=0.0),
    dict(temperature=0.5, top_k=0, top_p=1.0, min_p=0.05),
    dict(temperature=1.0, top_k=20, top_p=0.8, min_p=0.0),
    dict(temperature=2.0, top_k=40, top_p=0.95, min_p=0.02),
    dict(temperature=1.0, top_k=0, top_p=0.99, min_p=0.1),
    dict(temperature=1.9, top_k=0, top_p=0.999, min_p=0.0),  # flat: the cut is deep in the tail
]


@pytest.mark.parametrize("candidates", [None, 4, 10_000])  # CPU default, growing loop, full sort
def test_filters_match_reference(candidates: int | None) -> None:
    vocab = 500
    x = logits_for(len(FILTER_CASES), vocab, seed=2)
    batch = build([row(seed=i, **case) for i, case in enumerate(FILTER_CASES)], vocab)
    probs = Sampler(top_p_candidates=candidates).probabilities(x, batch)
    for i, case in enumerate(FILTER_CASES):
        ref = reference_warp(x[i], **case)
        kept = probs[i] > 0
        assert torch.equal(kept, ref.isfinite()), (case, int(kept.sum()), int(ref.isfinite().sum()))
        torch.testing.assert_close(probs[i].double(), ref.softmax(-1), atol=1e-6, rtol=1e-5)


def test_filters_row_independent() -> None:
    """A row's cut does not depend on the other rows (mixed top-k / top-p / none)."""
    vocab = 400
    x = logits_for(len(FILTER_CASES), vocab, seed=3)
    rows = [row(seed=i, **case) for i, case in enumerate(FILTER_CASES)]
    together = Sampler(top_p_candidates=4).probabilities(x, build(rows, vocab))
    for i in range(len(rows)):
        alone = Sampler(top_p_candidates=4).probabilities(x[i : i + 1], build([rows[i]], vocab))
        assert torch.equal(together[i], alone[0])


# ---------------------------------------------------------------- penalties, bias, min_tokens


def test_repetition_penalty_matches_transformers() -> None:
    vocab = 50
    x = logits_for(3, vocab, seed=4)
    prompts = [[1, 4, 4, 9], [3, 3], [10, 11, 12]]
    outputs = [[9, 20, 21], [30, 3], []]
    penalties = [1.3, 0.7, 2.0]
    rows = [row(prompt=p, output=o, repetition_penalty=r) for p, o, r in zip(prompts, outputs, penalties)]
    got = apply_logit_edits(x.clone(), build(rows, vocab))
    for i in range(3):
        ids = torch.tensor([prompts[i] + outputs[i]])
        want = RepetitionPenaltyLogitsProcessor(penalties[i])(ids, x[i : i + 1].clone())
        torch.testing.assert_close(got[i : i + 1], want)


def test_presence_frequency_formula() -> None:
    vocab = 40
    x = logits_for(2, vocab, seed=5)
    outputs = [[3, 3, 3, 7, 8, 8], [1]]
    params = [
        dict(presence_penalty=0.5, frequency_penalty=0.25),
        dict(presence_penalty=-1.0, frequency_penalty=2.0),
    ]
    rows = [row(prompt=[3, 9, 9], output=o, **p) for o, p in zip(outputs, params)]
    got = apply_logit_edits(x.clone(), build(rows, vocab))
    for i in range(2):
        want = x[i].clone()
        for tok in range(vocab):
            count = outputs[i].count(tok)  # prompt tokens are not penalized
            want[tok] -= params[i]["frequency_penalty"] * count + params[i]["presence_penalty"] * (count > 0)
        torch.testing.assert_close(got[i], want)


def test_logit_bias_forces_and_bans() -> None:
    vocab = 100
    x = logits_for(64, vocab, seed=6)
    forced = Sampler()(x, build([row(seed=s, logit_bias={17: 100.0}) for s in range(64)], vocab))
    assert forced.token_ids.tolist() == [17] * 64
    top = x.argmax(-1)
    banned = Sampler()(x, build([row(temperature=0.0, logit_bias={int(t): -100.0}) for t in top], vocab))
    want = x.clone()
    want[torch.arange(64), top] -= 100.0
    assert banned.token_ids.tolist() == want.argmax(-1).tolist()
    assert not (banned.token_ids == top).any()


def test_min_tokens_masks_eos_and_stop_token_ids() -> None:
    vocab = 30
    x = torch.zeros(4, vocab)
    x[:, EOS] = 10.0
    x[:, 5] = 9.0
    x[:, 6] = 8.0
    rows = [
        row(output=[1, 1], min_tokens=3, temperature=0.0),  # EOS masked -> 5
        row(output=[1, 1, 1], min_tokens=3, temperature=0.0),  # min reached -> EOS
        row(output=[1], min_tokens=3, temperature=0.0, stop_token_ids=[5]),  # EOS and 5 masked -> 6
        row(output=[1], min_tokens=3, temperature=0.0, ignore_eos=True, stop_token_ids=[5]),  # EOS is no stop
    ]
    assert Sampler()(x, build(rows, vocab)).token_ids.tolist() == [5, EOS, 6, EOS]


def test_allowed_mask_restricts_every_row_kind() -> None:
    """The per-row allowed-token mask (the hook for structured outputs) puts -inf on disallowed
    tokens after the other edits, for greedy, whole-vocabulary and top-k / top-p rows alike."""
    vocab = 300
    x = logits_for(len(FILTER_CASES) + 1, vocab, seed=14)
    n = len(x)
    favourite = x.argmax(-1)
    rows = [row(temperature=0.0, logprobs=2, logit_bias={int(favourite[0]): 100.0})]
    rows += [row(seed=i, **case) for i, case in enumerate(FILTER_CASES)]
    allowed = torch.rand(n, vocab, generator=torch.Generator().manual_seed(15)) < 0.3
    allowed[torch.arange(n), favourite] = False  # the unmasked favourite is never allowed
    allowed[-1] = False
    allowed[-1, [3, 250]] = True  # a row with only two tokens allowed
    batch = SamplingBatch.build(rows, vocab, CPU, allowed_mask=allowed)
    masked = x.masked_fill(~allowed, float("-inf"))
    probs = Sampler(top_p_candidates=4).probabilities(x, batch)
    assert probs[0, masked[0].argmax()] == 1.0  # the bias on a disallowed token does not win
    for i, case in enumerate(FILTER_CASES, start=1):
        ref = reference_warp(masked[i], **case)
        assert torch.equal(probs[i] > 0, ref.isfinite()), case
        torch.testing.assert_close(probs[i].double(), reference_distribution(masked[i], **case), atol=1e-6, rtol=1e-5)
    assert (probs[~allowed] == 0).all()
    out = Sampler()(x, batch)
    assert out.token_ids[0] == masked[0].argmax()
    assert allowed[torch.arange(n), out.token_ids].all()
    assert out.sampled_logprobs is not None  # logprobs stay those of the raw logits
    torch.testing.assert_close(out.sampled_logprobs, x.log_softmax(-1).gather(1, out.token_ids[:, None]).squeeze(1))
    everything = SamplingBatch.build(rows, vocab, CPU, allowed_mask=torch.ones(n, vocab, dtype=torch.bool))
    assert torch.equal(Sampler()(x, everything).token_ids, Sampler()(x, build(rows, vocab)).token_ids)
    only_mask = SamplingBatch.build([row(temperature=0.0)], vocab, CPU, allowed_mask=allowed[1:2])  # no other edit
    assert Sampler()(x[1:2], only_mask).token_ids[0] == masked[1].argmax()


# ---------------------------------------------------------------- seeds and statistics


def test_seeded_row_is_independent_of_batch_and_position() -> None:
    sampler = Sampler()  # one instance: its reused work buffers must not leak between calls
    vocab = 1000
    target = logits_for(1, vocab, seed=7)[0]
    for seed in range(20):
        mine = row(seed=seed, output=[4] * 7, temperature=0.9, top_p=0.95)
        others_a = [row(seed=100 + j, temperature=0.0) for j in range(2)]
        busy = dict(top_k=3, min_p=0.1, repetition_penalty=1.5, logit_bias={3: 5.0})
        others_b = [row(seed=200 + j, **busy) for j in range(4)]
        xa = torch.cat([target[None], logits_for(2, vocab, seed=8)])
        xb = torch.cat([logits_for(3, vocab, seed=9), target[None], logits_for(1, vocab, seed=10)])
        a = sampler(xa, build([mine] + others_a, vocab)).token_ids[0]
        b = sampler(xb, build(others_b[:3] + [mine] + others_b[3:], vocab)).token_ids[3]
        assert a == b


def test_seeded_uniform_depends_on_seed_and_index() -> None:
    us = {seeded_uniform(s, i) for s in range(30) for i in range(30)}
    assert len(us) == 900 and all(0.0 <= u < 1.0 for u in us)
    assert seeded_uniform(-5, 3) == seeded_uniform(-5, 3)


def _frequencies(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.bincount(ids, minlength=vocab).double() / len(ids)


def _assert_close_to(freq: torch.Tensor, probs: torch.Tensor, n: int) -> None:
    """Each frequency within 5 standard errors of its probability; zero-probability never drawn."""
    sigma = (probs * (1 - probs) / n).sqrt()
    assert ((freq - probs).abs() <= 5 * sigma + 1e-12).all(), (freq, probs)


@pytest.mark.parametrize("vary", ["seed", "index"])
def test_sampling_frequencies_match_distribution(vary: str) -> None:
    probs = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04, 0.0], dtype=torch.float64)
    n = 20_000 if vary == "seed" else 5_000  # varying the index needs outputs of every length
    if vary == "seed":
        rows = [row(seed=s) for s in range(n)]
    else:
        out = [0] * n
        rows = [SamplingRow(SamplingParams(max_tokens=n + 1), 42, [1], out[:i], [EOS]) for i in range(n)]
    ids = Sampler()(probs.log().float().expand(n, -1), build(rows, 7)).token_ids
    _assert_close_to(_frequencies(ids, 7), probs, n)


@pytest.mark.parametrize("case", FILTER_CASES[1:6])
def test_filtered_sampling_frequencies(case: dict) -> None:
    vocab, n = 12, 12_000
    base = torch.tensor([3.0, 2.5, 2.2, 2.0, 1.5, 1.0, 0.7, 0.2, 0.0, -0.5, -1.0, -3.0])
    base = base[torch.randperm(vocab, generator=torch.Generator().manual_seed(0))]  # not in id order
    x = base.expand(n, -1)
    ids = Sampler(top_p_candidates=4)(x, build([row(seed=s, **case) for s in range(n)], vocab)).token_ids
    _assert_close_to(_frequencies(ids, vocab), reference_distribution(base, **case), n)


# ---------------------------------------------------------------- logprobs


def test_logprobs_are_raw_log_softmax() -> None:
    vocab = 200
    x = logits_for(4, vocab, seed=11)
    rows = [
        row(seed=1, logprobs=3, temperature=0.5, repetition_penalty=1.5),
        row(seed=2, logprobs=0),
        row(seed=3, temperature=0.0, logprobs=5, logit_bias={7: 30.0}),
        row(seed=4),
    ]
    out = Sampler()(x, build(rows, vocab))
    ref = x.log_softmax(-1)
    assert out.sampled_logprobs is not None and out.top_ids is not None and out.top_logprobs is not None
    assert out.top_ids.shape == (4, 5)
    torch.testing.assert_close(out.sampled_logprobs, ref.gather(1, out.token_ids[:, None]).squeeze(1))
    want_lp, want_ids = ref.topk(5, dim=-1)
    torch.testing.assert_close(out.top_logprobs, want_lp)
    assert torch.equal(out.top_ids, want_ids)
    assert out.token_ids[2] == 7  # the bias acted on the choice, not on the reported logprobs


def test_padded_logits_slice() -> None:
    """The runner passes logits[:, :vocab] of a padded lm_head: a non-contiguous view."""
    vocab = 4096
    wide = logits_for(6, vocab + 64, seed=13)
    rows = [row(seed=i, **case) for i, case in enumerate(FILTER_CASES[:5])] + [row(temperature=0.0, logprobs=3)]
    a = Sampler()(wide[:, :vocab], build(rows, vocab))
    b = Sampler()(wide[:, :vocab].contiguous(), build(rows, vocab))
    assert torch.equal(a.token_ids, b.token_ids) and torch.equal(a.top_ids, b.top_ids)


def test_logits_are_not_modified() -> None:
    x = logits_for(4, 200, seed=12)
    before = x.clone()
    rows = [
        row(seed=1, temperature=0.7, repetition_penalty=1.3, logit_bias={5: 3.0}, logprobs=2),
        row(seed=2, top_p=0.5, min_p=0.1),
        row(temperature=0.0, presence_penalty=1.0, output=[3, 3]),
        row(seed=3, min_tokens=5, temperature=1.5),
    ]
    Sampler()(x, build(rows, 200))
    Sampler().probabilities(x, build(rows, 200))
    assert torch.equal(x, before)


# ---------------------------------------------------------------- cost


def test_build_is_cheap() -> None:
    rows = [row(seed=i, output=list(range(50)), temperature=0.8, top_p=0.9) for i in range(32)]
    build(rows, 49152)
    start = time.perf_counter()
    for _ in range(20):
        build(rows, 49152)
    per_build = (time.perf_counter() - start) / 20
    assert per_build < 0.005, per_build  # typically ~0.1 ms; generous for a loaded CI machine


def test_a_top_p_that_rounds_to_zero_in_float32_keeps_the_top_token():
    """Found by schemathesis (tests/test_fuzz.py): top_p=1.9e-89 is > 0 but 0.0 as float32."""
    import torch

    from model import SamplingParams
    from model.engine.sampling import Sampler, SamplingBatch, SamplingRow

    logits = torch.tensor([[0.1, 3.0, 0.2, -1.0]])
    params = SamplingParams(temperature=1.0, top_p=1.947000504151662e-89, seed=1)
    row = SamplingRow(params=params, seed=1, prompt_token_ids=[1], output_token_ids=[], eos_token_ids=[])
    out = Sampler()(logits, SamplingBatch.build([row], 4, torch.device("cpu")))
    assert out.token_ids.tolist() == [1]
