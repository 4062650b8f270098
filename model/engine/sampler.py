"""Batched sampling: logits [B, V] -> one token id per row, plus logprobs when asked.

Order of processing (HF / vLLM semantics):
  1. logit_bias, then min_tokens masks (EOS / stop_token_ids -> -inf);
  2. repetition penalty over prompt + output tokens (HF: divide positive logits, multiply negative);
     presence / frequency penalties over output tokens (OpenAI: frequency * count + presence);
  3. greedy rows take the argmax;
  4. sampled rows: temperature, then top-k, top-p and min-p, each a "keep weights >= threshold" mask
     on the unnormalized probabilities w = exp(logit - max), then inverse-CDF sampling with one
     uniform number per row.

The uniform is a pure function of (row seed, index of the token being sampled), computed on the
host while the batch is built, so a seeded request gets the same tokens whatever else is in the
batch and at whatever row it sits. Logprobs are those of the raw logits (log_softmax before any
processing), as in OpenAI's API and vLLM's default. All work on the logits happens on tensors;
the engine reads the result with one `.tolist()` per step.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model.sampling_params import SamplingParams

_MASK64 = (1 << 64) - 1
_NEG_INF = float("-inf")
# Start of the candidate search for the top-p cut on CPU (grows x8 for the rows it does not cover).
_CPU_TOP_P_CANDIDATES = 256


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
class CutParams:
    """Per sampled row, shape [S, 1]: what top-k and top-p keep."""

    top_k_index: torch.Tensor  # k - 1 (int64); 0 where top-k is off
    top_k_on: torch.Tensor  # bool
    top_p: torch.Tensor  # float32; 1.0 where top-p is off
    top_p_on: torch.Tensor  # bool

    def select(self, rows: torch.Tensor) -> CutParams:
        return CutParams(*(t.index_select(0, rows) for t in (self.top_k_index, self.top_k_on, self.top_p, self.top_p_on)))


@dataclass
class SamplingBatch:
    """Per-row sampling inputs as tensors, plus flags that let the sampler skip unused work.

    Rows are split into greedy rows and sampled rows; the tensors of the sampling stage
    (inv_temperature, uniform, cut, min_p) are indexed by position among the sampled rows.
    """

    num_rows: int
    vocab_size: int
    # Logit edits, applied to all rows in this order; None when no row needs them.
    logit_bias: Edits | None
    min_tokens_ban: Mask | None
    repetition: Edits | None  # value: the row's repetition penalty, one entry per distinct seen token
    presence_frequency: Edits | None  # value: frequency * count + presence, per distinct output token
    # Greedy / sampled split. Index tensors are None when every row is of that kind.
    greedy_rows: torch.Tensor | None
    sampled_rows: torch.Tensor | None
    num_greedy: int
    num_sampled: int
    # Sampled rows, shape [S, 1]. None when no sampled row uses the feature.
    inv_temperature: torch.Tensor | None  # 1 / temperature; None: every sampled row has temperature 1
    uniform: torch.Tensor | None  # each row's random number in [0, 1); None when no row is sampled
    cut: CutParams | None  # None: no row uses top-k or top-p
    top_k_max: int  # largest k among rows with top-k on (0: none)
    uses_top_p: bool
    top_p_full_mass: bool  # some top-p row has no top-k: its cut needs the whole vocabulary's mass
    min_p: torch.Tensor | None  # 0.0 where min-p is off
    # Logprobs: None when no row asked; else the largest number of alternatives asked.
    max_logprobs: int | None

    @property
    def all_greedy(self) -> bool:
        return self.num_sampled == 0

    @property
    def has_edits(self) -> bool:
        edits = (self.logit_bias, self.min_tokens_ban, self.repetition, self.presence_frequency)
        return any(e is not None for e in edits)

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
        # Per sampled row.
        self.temp: list[float] = []
        self.uniform: list[float] = []
        self.top_k: list[int] = []  # 0: off
        self.top_p: list[float] = []
        self.min_p: list[float] = []
        self.max_logprobs: int | None = None

    def add(self, i: int, row: SamplingRow) -> None:
        p = row.params
        if p.logit_bias:
            _extend3(self.bias, i, [int(t) for t in p.logit_bias], [float(v) for v in p.logit_bias.values()])
        if len(row.output_token_ids) < p.min_tokens:
            banned = set(p.stop_token_ids or ())
            if not p.ignore_eos:
                banned.update(row.eos_token_ids)
            self.ban[0].extend([i] * len(banned))
            self.ban[1].extend(banned)
        if p.repetition_penalty != 1.0:
            seen = set(row.prompt_token_ids).union(row.output_token_ids)
            _extend3(self.rep, i, seen, [p.repetition_penalty] * len(seen))
        if p.presence_penalty != 0.0 or p.frequency_penalty != 0.0:
            counts = Counter(row.output_token_ids)
            amounts = [p.frequency_penalty * c + p.presence_penalty for c in counts.values()]
            _extend3(self.pf, i, counts.keys(), amounts)
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
        self.min_p.append(p.min_p)

    def finish(self, num_rows: int, device: torch.device) -> SamplingBatch:
        def ints(xs: list[int]) -> torch.Tensor:
            return torch.tensor(xs, dtype=torch.int64, device=device)

        def column(xs: list[float]) -> torch.Tensor:
            return torch.tensor(xs, dtype=torch.float32, device=device).unsqueeze(1)

        def edits(e: tuple[list[int], list[int], list[float]]) -> Edits | None:
            return (ints(e[0]), ints(e[1]), torch.tensor(e[2], dtype=torch.float32, device=device)) if e[0] else None

        def subset(idx: list[int]) -> torch.Tensor | None:
            return ints(idx) if 0 < len(idx) < num_rows else None

        uses_top_p = any(p < 1.0 for p in self.top_p)
        cut = None
        if uses_top_p or any(self.top_k):
            k = ints(self.top_k).unsqueeze(1)
            top_p = column(self.top_p)
            cut = CutParams((k - 1).clamp_(min=0), k > 0, top_p, top_p < 1.0)
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
            inv_temperature=column([1.0 / t for t in self.temp]) if any(t != 1.0 for t in self.temp) else None,
            uniform=column(self.uniform) if self.sampled else None,
            cut=cut,
            top_k_max=max(self.top_k, default=0),
            uses_top_p=uses_top_p,
            top_p_full_mass=any(p < 1.0 and k == 0 for p, k in zip(self.top_p, self.top_k)),
            min_p=column(self.min_p) if any(self.min_p) else None,
            max_logprobs=self.max_logprobs,
        )


def _extend3(lists: tuple[list[int], list[int], list[float]], row: int, toks: Iterable[int], vals: list[float]) -> None:
    lists[0].extend([row] * len(vals))
    lists[1].extend(toks)
    lists[2].extend(vals)


@dataclass
class SamplerOutput:
    token_ids: torch.Tensor  # [B] int64
    # Present when some row asked for logprobs (raw distribution); rows slice their own k.
    sampled_logprobs: torch.Tensor | None = None  # [B] float32
    top_ids: torch.Tensor | None = None  # [B, K] int64
    top_logprobs: torch.Tensor | None = None  # [B, K] float32


class Sampler:
    """Turns logits into token ids for a SamplingBatch, without host syncs on an accelerator.

    `top_p_candidates`: how many of the largest weights the top-p cut looks at first. The default
    (None) is the whole vocabulary (one sort) on accelerators and 256 on CPU, where a full sort is
    very slow; on CPU the rows whose cut lies deeper are redone with 8x more candidates (finally a
    sort). Finding those rows reads a CPU tensor, which is no device sync. The cut is exact either way.
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
            if batch.max_logprobs > 0:
                out.top_logprobs, out.top_ids = top_values(logprobs, batch.max_logprobs)
            else:
                out.top_logprobs = logprobs[:, :0]
                out.top_ids = token_ids.new_empty((batch.num_rows, 0))
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
        return sample_inverse_cdf(self.weights(x, batch), batch.uniform)

    def weights(self, x: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """Sampled rows' logits x [S, V] -> the unnormalized probabilities they are sampled from:
        exp((x / temperature) - max), 0 for tokens cut by top-k / top-p / min-p. x is not modified."""
        w = x - x.amax(dim=-1, keepdim=True)  # (x - max) / t == x / t - max(x / t) for t > 0
        if batch.inv_temperature is not None:
            w.mul_(batch.inv_temperature)
        w.exp_()  # the top token has weight exactly 1
        threshold = self._keep_threshold(w, batch)
        if threshold is not None:
            w.masked_fill_(w < threshold, 0.0)
        return w

    def _keep_threshold(self, w: torch.Tensor, batch: SamplingBatch) -> torch.Tensor | None:
        """[S, 1]: the smallest weight each row keeps after top-k, top-p and min-p (None: all)."""
        found: list[torch.Tensor] = []
        if batch.min_p is not None:
            found.append(batch.min_p)  # p < min_p * p_max  <=>  w < min_p, as the max weight is 1
        if batch.cut is not None:
            if batch.uses_top_p:
                found.append(self._top_p_threshold(w, batch, batch.cut))
            else:
                found.append(_top_k_threshold(top_values(w, batch.top_k_max)[0], batch.cut))
        if not found:
            return None
        return found[0] if len(found) == 1 else torch.maximum(found[0], found[1])

    def _top_p_threshold(self, w: torch.Tensor, batch: SamplingBatch, cut: CutParams) -> torch.Tensor:
        """Top-k and top-p thresholds of every row, from the K largest weights of each row."""
        vocab = w.shape[1]
        first = self.top_p_candidates
        if first is None:
            first = _CPU_TOP_P_CANDIDATES if w.device.type == "cpu" else vocab
        k = min(vocab, max(first, batch.top_k_max))
        mass = w.sum(dim=-1, keepdim=True) if batch.top_p_full_mass else None
        out = torch.empty_like(w[:, :1])
        rows: torch.Tensor | None = None  # the rows still to do; None: all
        while True:
            sub = w if rows is None else w.index_select(0, rows)
            sub_cut = cut if rows is None else cut.select(rows)
            sub_mass = mass if mass is None or rows is None else mass.index_select(0, rows)
            vals = top_values(sub, k)[0]
            threshold, covered = _top_k_top_p_cut(vals, sub_cut, sub_mass)
            if rows is None:
                out = threshold
            else:
                out.index_copy_(0, rows, threshold)
            if k >= vocab:
                return out
            todo = covered.squeeze(1).logical_not().nonzero().squeeze(1)  # CPU only: a memory read
            if todo.numel() == 0:
                return out
            rows = todo if rows is None else rows[todo]
            k = min(vocab, k * 8)


def top_values(x: torch.Tensor, k: int, block: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest values of each row of x [R, V], descending, with their indices.

    For small k it first takes the maximum of `block` strided slices (token j is in slice
    j % (V // block)): the k slices with the largest maxima hold all of the k largest values, so
    only k * block candidates go through topk. On CPU this is several times faster than topk over
    the whole row."""
    rows, vocab = x.shape
    if k >= vocab:
        return x.sort(dim=-1, descending=True)
    slices = vocab // block
    if k * block * 4 > vocab:
        return x.topk(k, dim=-1)
    main = x[:, : slices * block].view(rows, block, slices)
    best = main.amax(dim=1).topk(k, dim=-1).indices  # [R, k] slice numbers
    idx = (best.unsqueeze(2) + torch.arange(0, slices * block, slices, device=x.device)).view(rows, -1)
    if slices * block < vocab:  # the last few tokens are candidates too
        tail = torch.arange(slices * block, vocab, device=x.device).expand(rows, -1)
        idx = torch.cat([idx, tail], dim=1)
    vals, pos = x.gather(1, idx).topk(k, dim=-1)
    return vals, idx.gather(1, pos)


def apply_logit_edits(x: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """In place on x [B, V] float32: logit_bias, min_tokens ban, repetition / presence / frequency."""
    if batch.logit_bias is not None:
        rows, toks, vals = batch.logit_bias
        x.index_put_((rows, toks), vals, accumulate=True)
    if batch.min_tokens_ban is not None:
        x.index_put_(batch.min_tokens_ban, torch.tensor(_NEG_INF, device=x.device))
    if batch.repetition is not None:
        rows, toks, penalty = batch.repetition
        seen = x[rows, toks]  # tokens are distinct per row, so one write per entry
        x.index_put_((rows, toks), torch.where(seen > 0, seen / penalty, seen * penalty))
    if batch.presence_frequency is not None:
        rows, toks, amount = batch.presence_frequency
        x.index_put_((rows, toks), -amount, accumulate=True)
    return x


def _top_k_threshold(vals: torch.Tensor, cut: CutParams) -> torch.Tensor:
    """[R, 1]: the k-th largest weight (0 where top-k is off). vals: [R, K >= k] descending."""
    return vals.gather(1, cut.top_k_index).masked_fill_(~cut.top_k_on, 0.0)


def _top_k_top_p_cut(vals: torch.Tensor, cut: CutParams, mass: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest weight kept by top-k then top-p, and whether the candidates cover the cut.

    vals: [R, K] the K largest weights of each row, descending; mass: [R, 1] each row's total
    weight (None when every top-p row also has top-k). Top-k comes first and top-p works on what
    it keeps, renormalized (HF order). Top-p keeps the smallest prefix whose mass reaches top_p:
    each token whose strictly higher-ranked mass is still below top_p.
    """
    top_k = _top_k_threshold(vals, cut)
    kept = vals.masked_fill(vals < top_k, 0.0)
    norm = kept.sum(dim=-1, keepdim=True)
    if mass is not None:
        norm = torch.where(cut.top_k_on, norm, mass)
    cum = (kept / norm).cumsum(dim=-1)
    above = F.pad(cum[:, :-1], (1, 0))  # mass ranked strictly above each candidate
    keep = (above < cut.top_p).sum(dim=-1, keepdim=True)  # >= 1: the top token always stays
    top_p = vals.gather(1, keep - 1).masked_fill_(~cut.top_p_on, 0.0)
    covered = ~cut.top_p_on | cut.top_k_on | (cum[:, -1:] >= cut.top_p)  # with top-k, K >= k
    return torch.maximum(top_k, top_p), covered


def sample_inverse_cdf(w: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Sample one token per row from unnormalized probabilities w [S, V] (consumed in place);
    uniform: [S, 1] in [0, 1). Token i is drawn when cdf[i-1] <= u * total < cdf[i], so a token
    of weight 0 is never drawn."""
    cdf = w.cumsum_(dim=-1)
    target = uniform * cdf[:, -1:]
    ids = torch.searchsorted(cdf, target, right=True).squeeze(1)
    return ids.clamp_(max=w.shape[1] - 1)
