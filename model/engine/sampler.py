"""Batched sampling: logits [B, V] -> one token id per row, plus logprobs when asked.

Order of processing (HF / vLLM semantics):
  1. logit_bias, then min_tokens masks (EOS / stop_token_ids -> -inf);
  2. repetition penalty over prompt + output tokens (HF: divide positive logits, multiply negative);
     presence / frequency penalties over output tokens (OpenAI: frequency * count + presence);
  3. greedy rows take the argmax;
  4. sampled rows: temperature, then top-k, top-p and min-p, each a "keep logits >= threshold" mask,
     then inverse-CDF sampling with one uniform number per row.

The uniform is a pure function of (row seed, index of the token being sampled), computed on the
host while the batch is built, so a seeded request gets the same tokens whatever else is in the
batch and at whatever row it sits. Logprobs are those of the raw logits (log_softmax before any
processing), as in OpenAI's API and vLLM's default. All work on the logits happens on tensors;
the engine reads the result with one `.tolist()` per step.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model.sampling_params import SamplingParams

_MASK64 = (1 << 64) - 1
_NEG_INF = float("-inf")
# Start of the candidate search for the top-p cut on CPU (grows x8 until it covers the cut).
_CPU_TOP_P_CANDIDATES = 128


def _mix64(z: int) -> int:
    """splitmix64 finalizer: a bijective 64-bit mix."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def seeded_uniform(seed: int, index: int) -> float:
    """A uniform number in [0, 1) that depends only on (seed, index).

    It has 23 random bits, so it is exact in float32 and `u * total < total` in float32 arithmetic:
    inverse-CDF sampling then never runs past the last token with non-zero probability.
    """
    z = _mix64(_mix64(seed & _MASK64) ^ (index & _MASK64))
    return (z >> 41) * 2.0**-23


@dataclass
class SamplingRow:
    """What the sampler needs to know about one sequence at this step."""

    params: SamplingParams
    seed: int  # always set: the engine draws one for unseeded requests
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    eos_token_ids: list[int]


# Sparse edits of the logits: (row index, token id[, value]) as parallel 1-D tensors.
Edits = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Mask = tuple[torch.Tensor, torch.Tensor]


@dataclass
class SamplingBatch:
    """Per-row sampling inputs as tensors, plus flags that let the sampler skip unused work.

    Rows are split into greedy rows and sampled rows; the per-row tensors of the sampling stage
    (temperature, top-k, ...) are indexed by position among the sampled rows.
    """

    num_rows: int
    vocab_size: int
    # Logit edits, applied to all rows in this order; None when no row needs them.
    logit_bias: Edits | None
    min_tokens_ban: Mask | None
    repetition: Edits | None  # value: the row's repetition penalty, one entry per seen token
    presence_frequency: Edits | None  # value: frequency * count + presence, per output token
    # Greedy / sampled split. Index tensors are None when every row is of that kind.
    greedy_rows: torch.Tensor | None
    sampled_rows: torch.Tensor | None
    num_greedy: int
    num_sampled: int
    # Sampled rows, shape [S, 1]. None when no sampled row uses the feature.
    temperature: torch.Tensor | None  # None: every sampled row has temperature 1
    uniform: torch.Tensor | None  # the random number of each row (None when no sampled row)
    top_k_index: torch.Tensor | None  # k - 1 (int64); 0 where top-k is off
    top_k_on: torch.Tensor | None
    top_k_max: int  # largest k among rows with top-k on
    top_p: torch.Tensor | None  # 1.0 where top-p is off
    top_p_on: torch.Tensor | None
    top_p_full_mass: bool  # some top-p row has no top-k: the cut needs the whole vocabulary's mass
    log_min_p: torch.Tensor | None  # log(min_p); -inf where min-p is off
    # Logprobs: None when no row asked; else the largest number of alternatives asked.
    max_logprobs: int | None

    @property
    def all_greedy(self) -> bool:
        return self.num_sampled == 0

    @property
    def has_edits(self) -> bool:
        return any(e is not None for e in (self.logit_bias, self.min_tokens_ban, self.repetition, self.presence_frequency))

    @classmethod
    def build(cls, rows: list[SamplingRow], vocab_size: int, device: torch.device) -> SamplingBatch:
        b = _Builder(vocab_size)
        for i, row in enumerate(rows):
            b.add(i, row)
        return b.finish(len(rows), device)


def _is_greedy(p: SamplingParams) -> bool:
    # top_k == 1 samples the argmax whatever the temperature.
    return p.temperature == 0.0 or p.top_k == 1


class _Builder:
    """Collects per-row values in Python lists (one cheap pass over the rows)."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.bias: tuple[list[int], list[int], list[float]] = ([], [], [])
        self.ban: tuple[list[int], list[int]] = ([], [])
        self.rep: tuple[list[int], list[int], list[float]] = ([], [], [])
        self.pf: tuple[list[int], list[int], list[float]] = ([], [], [])
        self.greedy: list[int] = []
        self.sampled: list[int] = []
        # Per sampled row: temperature, uniform, top-k, top-p, log(min_p).
        self.temp: list[float] = []
        self.uniform: list[float] = []
        self.top_k: list[int] = []
        self.top_p: list[float] = []
        self.log_min_p: list[float] = []
        self.max_logprobs: int | None = None

    def add(self, i: int, row: SamplingRow) -> None:
        p = row.params
        if p.logit_bias:
            for tok, val in p.logit_bias.items():
                _append3(self.bias, i, int(tok), float(val))
        if len(row.output_token_ids) < p.min_tokens:
            banned = set(p.stop_token_ids or ())
            if not p.ignore_eos:
                banned.update(row.eos_token_ids)
            for tok in banned:
                self.ban[0].append(i)
                self.ban[1].append(tok)
        if p.repetition_penalty != 1.0:
            for tok in set(row.prompt_token_ids).union(row.output_token_ids):
                _append3(self.rep, i, tok, p.repetition_penalty)
        if p.presence_penalty != 0.0 or p.frequency_penalty != 0.0:
            for tok, count in Counter(row.output_token_ids).items():
                _append3(self.pf, i, tok, p.frequency_penalty * count + p.presence_penalty)
        if p.logprobs is not None:
            self.max_logprobs = max(self.max_logprobs or 0, p.logprobs)
        if _is_greedy(p):
            self.greedy.append(i)
            return
        self.sampled.append(i)
        self.temp.append(p.temperature)
        self.uniform.append(seeded_uniform(row.seed, len(row.output_token_ids)))
        self.top_k.append(p.top_k if 0 < p.top_k < self.vocab_size else 0)
        self.top_p.append(p.top_p)
        self.log_min_p.append(math.log(p.min_p) if p.min_p > 0.0 else _NEG_INF)

    def finish(self, num_rows: int, device: torch.device) -> SamplingBatch:
        def ints(xs: list[int]) -> torch.Tensor:
            return torch.tensor(xs, dtype=torch.int64, device=device)

        def column(xs: list[float]) -> torch.Tensor:
            return torch.tensor(xs, dtype=torch.float32, device=device).unsqueeze(1)

        def edits(e: tuple[list[int], list[int], list[float]]) -> Edits | None:
            return (ints(e[0]), ints(e[1]), torch.tensor(e[2], dtype=torch.float32, device=device)) if e[0] else None

        def subset(idx: list[int]) -> torch.Tensor | None:
            return ints(idx) if 0 < len(idx) < num_rows else None

        any_top_k = any(self.top_k)
        any_top_p = any(p < 1.0 for p in self.top_p)
        return SamplingBatch(
            num_rows=num_rows,
            vocab_size=self.vocab_size,
            logit_bias=edits(self.bias),
            min_tokens_ban=(ints(self.ban[0]), ints(self.ban[1])) if self.ban[0] else None,
            repetition=edits(self.rep),
            presence_frequency=edits(self.pf),
            greedy_rows=subset(self.greedy),
            sampled_rows=subset(self.sampled),
            num_greedy=len(self.greedy),
            num_sampled=len(self.sampled),
            temperature=column(self.temp) if any(t != 1.0 for t in self.temp) else None,
            uniform=column(self.uniform) if self.sampled else None,
            top_k_index=ints([max(k - 1, 0) for k in self.top_k]).unsqueeze(1) if any_top_k else None,
            top_k_on=torch.tensor(self.top_k, device=device).gt(0).unsqueeze(1) if any_top_k else None,
            top_k_max=max(self.top_k, default=0),
            top_p=column(self.top_p) if any_top_p else None,
            top_p_on=column(self.top_p).lt(1.0) if any_top_p else None,
            top_p_full_mass=any(p < 1.0 and k == 0 for p, k in zip(self.top_p, self.top_k)),
            log_min_p=column(self.log_min_p) if any(v > _NEG_INF for v in self.log_min_p) else None,
            max_logprobs=self.max_logprobs,
        )


def _append3(lists: tuple[list[int], list[int], list[float]], row: int, tok: int, val: float) -> None:
    lists[0].append(row)
    lists[1].append(tok)
    lists[2].append(val)


@dataclass
class SamplerOutput:
    token_ids: torch.Tensor  # [B] int64
    # Present when some row asked for logprobs (raw distribution); rows slice their own k.
    sampled_logprobs: torch.Tensor | None = None  # [B] float32
    top_ids: torch.Tensor | None = None  # [B, K] int64
    top_logprobs: torch.Tensor | None = None  # [B, K] float32


class Sampler:
    """Turns logits into token ids for a SamplingBatch, without host syncs on an accelerator.

    `top_p_candidates`: how many of the largest logits the top-p cut looks at first. The default
    (None) is the full vocabulary (one sort) on accelerators and 128 on CPU, where a full sort is
    very slow; on CPU the candidate set grows x8 until it covers every row's cut. Reading that
    check is a plain memory read there, not a device sync. The cut is exact either way.
    """

    def __init__(self, top_p_candidates: int | None = None) -> None:
        self.top_p_candidates = top_p_candidates

    def __call__(self, logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
        assert logits.dim() == 2 and logits.shape[0] == batch.num_rows, logits.shape
        raw = logits.float()
        x = apply_logit_edits(logits.to(torch.float32, copy=True), batch) if batch.has_edits else raw
        token_ids = self._choose(x, batch)
        out = SamplerOutput(token_ids=token_ids)
        if batch.max_logprobs is not None:
            logprobs = raw.log_softmax(dim=-1)
            out.sampled_logprobs = logprobs.gather(1, token_ids.unsqueeze(1)).squeeze(1)
            out.top_logprobs, out.top_ids = logprobs.topk(batch.max_logprobs, dim=-1)
        return out

    def _choose(self, x: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        if batch.num_sampled == 0:
            return x.argmax(dim=-1)
        if batch.num_greedy == 0:
            return self._sample(x, batch)
        assert batch.greedy_rows is not None and batch.sampled_rows is not None
        ids = torch.empty(batch.num_rows, dtype=torch.int64, device=x.device)
        ids[batch.greedy_rows] = x.index_select(0, batch.greedy_rows).argmax(dim=-1)
        ids[batch.sampled_rows] = self._sample(x.index_select(0, batch.sampled_rows), batch)
        return ids

    def _sample(self, x: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """x: [S, V] logits of the sampled rows -> [S] token ids."""
        assert batch.uniform is not None
        return sample_inverse_cdf(self.warp(x, batch), batch.uniform)

    def warp(self, x: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """Sampled rows' logits x [S, V] -> divided by temperature, tokens cut by top-k / top-p /
        min-p at -inf. Never modifies x in place."""
        if batch.temperature is not None:
            x = x / batch.temperature
        threshold = self._keep_threshold(x, batch)
        if threshold is not None:
            x = x.masked_fill(x < threshold, _NEG_INF)
        return x

    def _keep_threshold(self, x: torch.Tensor, batch: SamplingBatch) -> torch.Tensor | None:
        """[S, 1]: the smallest logit each row keeps after top-k, top-p and min-p (None: keep all)."""
        found: list[torch.Tensor] = []
        if batch.log_min_p is not None:
            # p < min_p * p_max  <=>  logit < max_logit + log(min_p)
            found.append(x.amax(dim=-1, keepdim=True) + batch.log_min_p)
        if batch.top_p is not None:
            found.append(self._top_k_top_p_threshold(x, batch))
        elif batch.top_k_index is not None:
            found.append(_top_k_threshold(x.topk(batch.top_k_max, dim=-1).values, batch))
        if not found:
            return None
        return found[0] if len(found) == 1 else torch.maximum(found[0], found[1])

    def _top_k_top_p_threshold(self, x: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        vocab = x.shape[1]
        first = self.top_p_candidates
        if first is None:
            first = _CPU_TOP_P_CANDIDATES if x.device.type == "cpu" else vocab
        k = min(vocab, max(first, batch.top_k_max))
        log_mass = x.logsumexp(dim=-1, keepdim=True) if batch.top_p_full_mass else None
        while True:
            vals = x.sort(dim=-1, descending=True).values if k >= vocab else x.topk(k, dim=-1).values
            top_k = _top_k_threshold(vals, batch)
            top_p, covered = _top_p_threshold(vals, top_k, log_mass, batch)
            if k >= vocab or bool(covered.all()):  # CPU only: a memory read, no device sync
                return torch.maximum(top_k, top_p)
            k = min(vocab, k * 8)


def apply_logit_edits(x: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """In place on x [B, V] float32: logit_bias, min_tokens ban, repetition / presence / frequency."""
    if batch.logit_bias is not None:
        rows, toks, vals = batch.logit_bias
        x.index_put_((rows, toks), vals, accumulate=True)
    if batch.min_tokens_ban is not None:
        x.index_put_(batch.min_tokens_ban, torch.tensor(_NEG_INF, device=x.device))
    if batch.repetition is not None:
        rows, toks, penalty = batch.repetition
        seen = x[rows, toks]  # tokens are unique per row, so one write per entry
        x.index_put_((rows, toks), torch.where(seen > 0, seen / penalty, seen * penalty))
    if batch.presence_frequency is not None:
        rows, toks, amount = batch.presence_frequency
        x.index_put_((rows, toks), -amount, accumulate=True)
    return x


def _top_k_threshold(vals: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """[S, 1]: the k-th largest logit (-inf where top-k is off). vals: [S, K] sorted descending."""
    if batch.top_k_index is None or batch.top_k_on is None:
        return vals.new_full((vals.shape[0], 1), _NEG_INF)
    kth = vals.gather(1, batch.top_k_index)
    return kth.masked_fill(~batch.top_k_on, _NEG_INF)


def _top_p_threshold(
    vals: torch.Tensor, top_k: torch.Tensor, log_mass: torch.Tensor | None, batch: SamplingBatch
) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest kept logit of the top-p cut and whether the candidates cover it, both [S, 1].

    vals: [S, K] the K largest logits, descending; top_k: the top-k threshold (applied first, and
    the distribution renormalized over what it keeps). Keeps the smallest prefix whose mass
    reaches top_p, i.e. each token whose strictly higher-ranked mass is still below top_p.
    """
    assert batch.top_p is not None and batch.top_p_on is not None
    in_top_k = vals >= top_k
    masked = vals.masked_fill(~in_top_k, _NEG_INF)
    log_norm = masked.logsumexp(dim=-1, keepdim=True)
    if log_mass is not None:
        log_norm = log_mass if batch.top_k_on is None else torch.where(batch.top_k_on, log_norm, log_mass)
    probs = (masked - log_norm).exp()
    cum = probs.cumsum(dim=-1)
    above = F.pad(cum[:, :-1], (1, 0))  # mass ranked strictly above each candidate
    keep = (above < batch.top_p).sum(dim=-1, keepdim=True)  # >= 1: the top token is always kept
    threshold = vals.gather(1, keep - 1).masked_fill(~batch.top_p_on, _NEG_INF)
    covered = ~batch.top_p_on | (cum[:, -1:] >= batch.top_p)
    if batch.top_k_on is not None:
        covered = covered | batch.top_k_on  # K >= k: the whole renormalized top-k set is here
    return threshold, covered


def sample_inverse_cdf(x: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Sample one token per row of logits x [S, V] (masked tokens at -inf); uniform: [S, 1] in [0, 1).

    Token i is drawn when cdf[i-1] <= u * total < cdf[i], so it is never a zero-probability token.
    """
    weights = (x - x.amax(dim=-1, keepdim=True)).exp_()
    cdf = weights.cumsum_(dim=-1)
    target = uniform * cdf[:, -1:]
    ids = torch.searchsorted(cdf, target, right=True).squeeze(1)
    return ids.clamp_(max=x.shape[1] - 1)
