"""Batched sampling: logits [B, V] -> one token id per row, plus logprobs when asked.

Order of processing (HF / vLLM semantics):
  1. logit_bias, then min_tokens masks (EOS / stop_token_ids -> -inf);
  2. repetition penalty over prompt + output tokens (HF: divide positive logits, multiply negative);
     presence / frequency penalties over output tokens (OpenAI: frequency * count + presence);
  3. greedy rows take the argmax;
  4. sampled rows: temperature, then top-k, top-p and min-p, each a "keep weights >= threshold" cut
     on the unnormalized probabilities w = exp((logit - max) / temperature), then inverse-CDF
     sampling with one uniform number per row.

Sampled rows come in two groups. Rows without top-k / top-p sample from the whole vocabulary. Rows
with top-k or top-p only need their largest logits: they sample among candidates found by
`top_values`, which on CPU is much cheaper than masking and summing the whole vocabulary.

The uniform is a pure function of (row seed, index of the token being sampled), computed on the
host while the batch is built, so a seeded request gets the same tokens whatever else is in the
batch and at whatever row it sits. Logprobs are those of the raw logits (log_softmax before any
processing), as in OpenAI's API and vLLM's default. All work on the logits happens on tensors;
the engine reads the result with one `.tolist()` per step.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from itertools import chain

import numpy as np
import torch
import torch.nn.functional as F

from model.sampling_params import SamplingParams

_MASK64 = (1 << 64) - 1
_NEG_INF = float("-inf")
_TINY = 1e-30  # "keep everything" threshold for weights (a weight below it has no mass to speak of)
# First candidate count for top-p on CPU; rows whose cut lies deeper are redone with 8x more.
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
    """Per row, shape [R, 1]: what top-k and top-p keep."""

    top_k_index: torch.Tensor  # k - 1 (int64); 0 where top-k is off
    top_k_on: torch.Tensor  # bool
    top_p: torch.Tensor  # float32; 1.0 where top-p is off
    top_p_on: torch.Tensor  # bool


@dataclass
class SampleGroup:
    """Sampled rows that share a code path; per-row tensors have shape [R, 1]."""

    rows: torch.Tensor | None  # the rows' indices in the batch; None: every row of the batch
    size: int
    inv_temperature: torch.Tensor | None  # None: every row has temperature 1
    uniform: torch.Tensor  # each row's random number in [0, 1)
    min_p: torch.Tensor | None  # _TINY where min-p is off; None: off for every row
    cut: CutParams | None  # top-k / top-p; None for the whole-vocabulary group
    top_k_max: int = 0  # the largest k of the rows with top-k on (0: none)
    uses_top_p: bool = False
    top_p_full_mass: bool = False  # some row has top-p without top-k: its cut needs the total mass

    def select(self, idx: torch.Tensor) -> SampleGroup:
        """The same parameters for a subset of the group's rows (idx: positions in the group)."""

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t.index_select(0, idx)

        def maybe(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else pick(t)

        cut = None
        if self.cut is not None:
            c = self.cut
            cut = CutParams(*(pick(t) for t in (c.top_k_index, c.top_k_on, c.top_p, c.top_p_on)))
        return SampleGroup(
            rows=None,
            size=len(idx),
            inv_temperature=maybe(self.inv_temperature),
            uniform=pick(self.uniform),
            min_p=maybe(self.min_p),
            cut=cut,
            top_k_max=self.top_k_max,
            uses_top_p=self.uses_top_p,
            top_p_full_mass=self.top_p_full_mass,
        )


@dataclass
class SamplingBatch:
    """Per-row sampling inputs as tensors, plus flags that let the sampler skip unused work.

    A row's seed and the index of the token being sampled only matter through `seeded_uniform`,
    so the batch holds that number (SampleGroup.uniform) instead of the two."""

    num_rows: int
    vocab_size: int
    # Logit edits, applied to all rows in this order; None when no row needs them.
    logit_bias: Edits | None
    min_tokens_ban: Mask | None
    repetition: Edits | None  # value: the row's repetition penalty, one entry per distinct seen token
    presence_frequency: Edits | None  # value: frequency * count + presence, per distinct output token
    # Greedy rows (None: all rows, when num_greedy == num_rows) and the two sampled groups.
    greedy_rows: torch.Tensor | None
    num_greedy: int
    whole_vocab: SampleGroup | None  # sampled rows without top-k / top-p
    candidates: SampleGroup | None  # sampled rows with top-k or top-p
    # Logprobs: None when no row asked; else the largest number of alternatives asked.
    max_logprobs: int | None

    @property
    def all_greedy(self) -> bool:
        return self.num_greedy == self.num_rows

    @property
    def has_edits(self) -> bool:
        edits = (self.logit_bias, self.min_tokens_ban, self.repetition, self.presence_frequency)
        return any(e is not None for e in edits)

    @classmethod
    def build(cls, rows: list[SamplingRow], vocab_size: int, device: torch.device) -> SamplingBatch:
        b = _Builder(vocab_size, device)
        for i, row in enumerate(rows):
            b.add(i, row)
        return b.finish(len(rows))


def _is_greedy(p: SamplingParams) -> bool:
    # top_k == 1 samples the argmax whatever the temperature.
    return p.temperature == 0.0 or p.top_k == 1


class _GroupBuilder:
    """Per-row values of one sampled group, as Python lists."""

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.temp: list[float] = []
        self.uniform: list[float] = []
        self.min_p: list[float] = []
        self.top_k: list[int] = []  # 0: off
        self.top_p: list[float] = []

    def add(self, i: int, row: SamplingRow, top_k: int) -> None:
        p = row.params
        self.rows.append(i)
        self.temp.append(p.temperature)
        self.uniform.append(seeded_uniform(row.seed, len(row.output_token_ids)))
        self.min_p.append(p.min_p)
        self.top_k.append(top_k)
        self.top_p.append(p.top_p)

    def finish(self, num_rows: int, device: torch.device, with_cut: bool) -> SampleGroup | None:
        if not self.rows:
            return None

        def column(xs: list[float]) -> torch.Tensor:
            return torch.tensor(xs, dtype=torch.float32, device=device).unsqueeze(1)

        cut = None
        if with_cut:
            k = torch.tensor(self.top_k, dtype=torch.int64, device=device).unsqueeze(1)
            top_p = column(self.top_p)
            cut = CutParams((k - 1).clamp_(min=0), k > 0, top_p, top_p < 1.0)
        size = len(self.rows)
        scaled = any(t != 1.0 for t in self.temp)
        return SampleGroup(
            rows=torch.tensor(self.rows, dtype=torch.int64, device=device) if size < num_rows else None,
            size=size,
            inv_temperature=column([1.0 / t for t in self.temp]) if scaled else None,
            uniform=column(self.uniform),
            min_p=column([m or _TINY for m in self.min_p]) if any(self.min_p) else None,
            cut=cut,
            top_k_max=max(self.top_k),
            uses_top_p=any(p < 1.0 for p in self.top_p),
            top_p_full_mass=any(p < 1.0 and k == 0 for p, k in zip(self.top_p, self.top_k)),
        )


@dataclass
class _EditsBuilder:
    """Sparse logit edits of several rows: per row a collection of token ids, and per token the
    value `scale * weight + offset`; scale and offset are per row, weight per token (1 unless
    `weighted`)."""

    weighted: bool = False
    rows: list[int] = field(default_factory=list)
    tokens: list[Collection[int]] = field(default_factory=list)
    weights: list[Collection[float]] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    offset: list[float] = field(default_factory=list)

    def add(
        self, row: int, tokens: Collection[int], scale: float = 1.0, offset: float = 0.0,
        weights: Collection[float] | None = None,
    ) -> None:
        assert (weights is not None) == self.weighted
        self.rows.append(row)
        self.tokens.append(tokens)
        self.scale.append(scale)
        self.offset.append(offset)
        if weights is not None:
            self.weights.append(weights)

    def finish(self, device: torch.device) -> Edits | None:
        if not self.rows:
            return None
        sizes = torch.tensor([len(t) for t in self.tokens])
        tokens = _int_array(self.tokens)
        rows = torch.tensor(self.rows).repeat_interleave(sizes)
        value = torch.tensor(self.scale, dtype=torch.float64).repeat_interleave(sizes)
        if self.weighted:
            weights = np.fromiter(chain.from_iterable(self.weights), np.float64, len(tokens))
            value.mul_(torch.from_numpy(weights))
        value.add_(torch.tensor(self.offset, dtype=torch.float64).repeat_interleave(sizes))
        return rows.to(device), torch.from_numpy(tokens).to(device), value.to(device, torch.float32)


def _int_array(chunks: list[Collection[int]]) -> np.ndarray:
    """Concatenate collections of ints into one int64 array (much faster than torch.tensor(list))."""
    return np.fromiter(chain.from_iterable(chunks), np.int64, sum(len(c) for c in chunks))


class _Builder:
    """Collects per-row values in Python lists (one cheap pass over the rows)."""

    def __init__(self, vocab_size: int, device: torch.device) -> None:
        self.vocab_size = vocab_size
        self.device = device
        self.bias = _EditsBuilder(weighted=True)
        self.ban = _EditsBuilder()
        self.rep = _EditsBuilder()
        self.pf = _EditsBuilder(weighted=True)
        self.greedy: list[int] = []
        self.whole_vocab = _GroupBuilder()
        self.candidates = _GroupBuilder()
        self.max_logprobs: int | None = None

    def add(self, i: int, row: SamplingRow) -> None:
        p = row.params
        if p.logit_bias:
            bias = p.logit_bias
            self.bias.add(i, [int(t) for t in bias], weights=[float(v) for v in bias.values()])
        if len(row.output_token_ids) < p.min_tokens:
            banned = set(p.stop_token_ids or ())
            if not p.ignore_eos:
                banned.update(row.eos_token_ids)
            self.ban.add(i, banned)
        if p.repetition_penalty != 1.0:
            seen = set(row.prompt_token_ids).union(row.output_token_ids)
            self.rep.add(i, seen, scale=p.repetition_penalty)
        if p.presence_penalty != 0.0 or p.frequency_penalty != 0.0:
            counts = Counter(row.output_token_ids)
            self.pf.add(i, counts.keys(), p.frequency_penalty, p.presence_penalty, weights=counts.values())
        if p.logprobs is not None:
            self.max_logprobs = max(self.max_logprobs or 0, p.logprobs)
        top_k = p.top_k if 0 < p.top_k < self.vocab_size else 0
        if _is_greedy(p):
            self.greedy.append(i)
        elif top_k or p.top_p < 1.0:
            self.candidates.add(i, row, top_k)
        else:
            self.whole_vocab.add(i, row, 0)

    def finish(self, num_rows: int) -> SamplingBatch:
        device = self.device
        ban = self.ban.finish(device)
        return SamplingBatch(
            num_rows=num_rows,
            vocab_size=self.vocab_size,
            logit_bias=self.bias.finish(device),
            min_tokens_ban=None if ban is None else ban[:2],
            repetition=self.rep.finish(device),
            presence_frequency=self.pf.finish(device),
            greedy_rows=torch.tensor(self.greedy, device=device) if 0 < len(self.greedy) < num_rows else None,
            num_greedy=len(self.greedy),
            whole_vocab=self.whole_vocab.finish(num_rows, device, with_cut=False),
            candidates=self.candidates.finish(num_rows, device, with_cut=True),
            max_logprobs=self.max_logprobs,
        )


@dataclass
class SamplerOutput:
    token_ids: torch.Tensor  # [B] int64
    # Present when some row asked for logprobs (raw distribution); rows slice their own k.
    sampled_logprobs: torch.Tensor | None = None  # [B] float32
    top_ids: torch.Tensor | None = None  # [B, K] int64
    top_logprobs: torch.Tensor | None = None  # [B, K] float32


class Workspace:
    """Reused float32 work buffers for the [rows, vocab] temporaries of the hot path, on CPU.

    A fresh multi-megabyte CPU tensor costs about as much as the arithmetic on it (glibc maps and
    unmaps it, and every page faults in), so the sampler keeps its big temporaries here. Elsewhere
    the caching allocator already reuses memory, so this hands out fresh tensors."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, rows: int, cols: int, device: torch.device) -> torch.Tensor:
        """An uninitialized [rows, cols] float32 tensor; the previous one of that name is reused."""
        if device.type != "cpu":
            return torch.empty(rows, cols, device=device)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < rows * cols:
            buf = self._buffers[name] = torch.empty(rows * cols)
        return buf[: rows * cols].view(rows, cols)

    def like(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self.get(name, x.shape[0], x.shape[1], x.device)


# One round of the candidate search: (rows of the group it covers, or None for all; the rows'
# candidate weights [R, K], 0 where cut; their token ids [R, K], or None: the whole vocabulary).
Round = tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]


class Sampler:
    """Turns logits into token ids for a SamplingBatch, without host syncs on an accelerator.

    `top_p_candidates`: how many of the largest logits the top-p cut looks at first. The default
    (None) is the whole vocabulary (one sort) on accelerators and 256 on CPU, where a full sort is
    very slow; on CPU the rows whose cut lies deeper are redone with 8x more candidates (finally a
    sort). Finding those rows reads a CPU tensor, which is no device sync. The cut is exact either
    way.
    """

    def __init__(self, top_p_candidates: int | None = None) -> None:
        self.top_p_candidates = top_p_candidates
        self.ws = Workspace()

    def __call__(self, logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
        assert logits.dim() == 2 and logits.shape[0] == batch.num_rows, logits.shape
        token_ids = self._choose(self._edited(logits, batch), batch)
        out = SamplerOutput(token_ids=token_ids)
        if batch.max_logprobs is not None:
            logprobs = torch.log_softmax(logits, dim=-1, dtype=torch.float32)  # the raw distribution
            out.sampled_logprobs = logprobs.gather(1, token_ids.unsqueeze(1)).squeeze(1)
            if batch.max_logprobs > 0:
                out.top_logprobs, out.top_ids = top_values(logprobs, batch.max_logprobs)
            else:
                out.top_logprobs = logprobs[:, :0]
                out.top_ids = token_ids.new_empty((batch.num_rows, 0))
        return out

    def probabilities(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """[B, V]: the distribution each row is sampled from (one-hot for greedy rows). For tests
        and debugging; it follows the sampling code path but is not fast."""
        x = self._edited(logits, batch)
        probs = torch.zeros_like(x)
        all_rows = torch.arange(batch.num_rows, device=x.device)
        if batch.num_greedy:
            greedy = _rows(all_rows, batch.greedy_rows)
            probs[greedy, x[greedy].argmax(dim=-1)] = 1.0
        for group in (batch.whole_vocab, batch.candidates):
            if group is None:
                continue
            rows = _rows(all_rows, group.rows)
            for sub, w, ids in self._rounds(x[rows], group):
                p = w / w.sum(dim=-1, keepdim=True)
                if ids is not None:
                    p = torch.zeros(len(p), x.shape[1], device=x.device).scatter_(1, ids, p)
                probs[_rows(rows, sub)] = p
        return probs

    def _edited(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """float32 logits with the batch's edits applied (a copy; logits itself is left alone)."""
        if not batch.has_edits:
            return logits.float()
        return apply_logit_edits(self.ws.like("edited", logits).copy_(logits), batch)

    def _select(self, x: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """The given rows of x (None: all), in a reused buffer."""
        if rows is None:
            return x
        return torch.index_select(x, 0, rows, out=self.ws.get("rows", len(rows), x.shape[1], x.device))

    def _choose(self, x: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        if batch.all_greedy:
            return x.argmax(dim=-1)
        parts: list[tuple[torch.Tensor | None, torch.Tensor]] = []
        if batch.num_greedy:
            parts.append((batch.greedy_rows, self._select(x, batch.greedy_rows).argmax(dim=-1)))
        for group in (batch.whole_vocab, batch.candidates):
            if group is not None:  # each part is finished before the next one reuses the buffer
                parts.append((group.rows, self._sample(self._select(x, group.rows), group)))
        if len(parts) == 1:
            return parts[0][1]
        ids = torch.empty(batch.num_rows, dtype=torch.int64, device=x.device)
        for rows, part in parts:
            ids[rows] = part
        return ids

    def _sample(self, x: torch.Tensor, group: SampleGroup) -> torch.Tensor:
        """x: [R, V] logits of the group's rows -> [R] sampled token ids."""
        out = torch.empty(group.size, dtype=torch.int64, device=x.device)
        for sub, w, ids in self._rounds(x, group):
            picked = sample_inverse_cdf(w, _rows(group.uniform, sub))
            if ids is not None:
                picked = ids.gather(1, picked.unsqueeze(1)).squeeze(1)
            if sub is None:
                out = picked
            else:
                out.index_copy_(0, sub, picked)
        return out

    def _rounds(self, x: torch.Tensor, group: SampleGroup) -> Iterator[Round]:
        """The weights each row samples from; later rounds redo the rows earlier ones did not cover."""
        if group.cut is None:
            return iter([(None, self._whole_vocab_weights(x, group), None)])
        return self._candidate_rounds(x, group)

    def _candidate_rounds(self, x: torch.Tensor, group: SampleGroup) -> Iterator[Round]:
        vocab = x.shape[1]
        first = group.top_k_max
        if group.uses_top_p:
            start = self.top_p_candidates
            if start is None:
                start = _CPU_TOP_P_CANDIDATES if x.device.type == "cpu" else vocab
            first = max(first, start)
        k = min(vocab, first)
        row_max = x.amax(dim=-1, keepdim=True)
        mass = None
        if group.top_p_full_mass:
            full = _weights(x, row_max, group.inv_temperature, self.ws.like("weights", x))
            mass = full.sum(dim=-1, keepdim=True)
        sub: torch.Tensor | None = None  # the rows still to do; None: all
        while True:
            g = group if sub is None else group.select(sub)
            assert g.cut is not None
            vals, ids = top_values(_rows(x, sub), k)
            w = _weights(vals, _rows(row_max, sub), g.inv_temperature, torch.empty_like(vals))
            threshold, covered = _top_k_top_p_cut(w, g.cut, None if mass is None else _rows(mass, sub))
            if g.min_p is not None:
                threshold = torch.maximum(threshold, g.min_p)
            yield sub, _drop_below(w, threshold, torch.empty_like(w)), ids
            if k >= vocab or not group.uses_top_p:
                return
            todo = covered.squeeze(1).logical_not().nonzero().squeeze(1)  # CPU only: a memory read
            if todo.numel() == 0:
                return
            sub = todo if sub is None else sub[todo]
            k = min(vocab, k * 8)

    def _whole_vocab_weights(self, x: torch.Tensor, group: SampleGroup) -> torch.Tensor:
        w = _weights(x, x.amax(dim=-1, keepdim=True), group.inv_temperature, self.ws.like("weights", x))
        if group.min_p is not None:
            # p < min_p * p_max  <=>  w < min_p, as the top weight is 1
            _drop_below(w, group.min_p, self.ws.like("keep", x))
        return w


def _rows(x: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """The given rows of x (None: all of x)."""
    return x if rows is None else x.index_select(0, rows)


def _weights(
    x: torch.Tensor, row_max: torch.Tensor, inv_t: torch.Tensor | None, out: torch.Tensor
) -> torch.Tensor:
    """out = exp((x - max) / temperature); the top token gets weight exactly 1."""
    w = torch.sub(x, row_max, out=out)
    if inv_t is not None:
        w.mul_(inv_t)
    return w.exp_()


def _drop_below(w: torch.Tensor, threshold: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """In place: zero the weights below each row's threshold [R, 1]; returns w.

    Float ops only (bool masks are several times slower on CPU): floor(w / t) >= 1 exactly when
    w >= t, also after rounding, as w and t are float32."""
    keep = torch.div(w, threshold.clamp(min=_TINY), out=scratch).floor_().clamp_(max=1.0)
    return w.mul_(keep)


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
        x.index_put_(batch.min_tokens_ban, x.new_full((), _NEG_INF))  # no host-to-device copy
    if batch.repetition is not None:
        rows, toks, penalty = batch.repetition
        seen = x[rows, toks]  # tokens are distinct per row, so one write per entry
        x.index_put_((rows, toks), torch.where(seen > 0, seen / penalty, seen * penalty))
    if batch.presence_frequency is not None:
        rows, toks, amount = batch.presence_frequency
        x.index_put_((rows, toks), -amount, accumulate=True)
    return x


def _top_k_top_p_cut(
    w: torch.Tensor, cut: CutParams, mass: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest weight kept by top-k then top-p, and whether the candidates cover the cut.

    w: [R, K] the weights of each row's K largest logits, descending; mass: [R, 1] each row's
    total weight (None when every top-p row also has top-k). Top-k comes first and top-p works on
    what it keeps, renormalized (HF order). Top-p keeps the smallest prefix whose mass reaches
    top_p: each token whose strictly higher-ranked mass is still below top_p.
    """
    top_k = w.gather(1, cut.top_k_index).masked_fill_(~cut.top_k_on, 0.0)
    kept = w.masked_fill(w < top_k, 0.0)
    norm = kept.sum(dim=-1, keepdim=True)
    if mass is not None:
        norm = torch.where(cut.top_k_on, norm, mass)
    cum = (kept / norm).cumsum(dim=-1)
    above = F.pad(cum[:, :-1], (1, 0))  # mass ranked strictly above each candidate
    keep = (above < cut.top_p).sum(dim=-1, keepdim=True)  # >= 1: the top token always stays
    top_p = w.gather(1, keep - 1).masked_fill_(~cut.top_p_on, 0.0)
    covered = ~cut.top_p_on | cut.top_k_on | (cum[:, -1:] >= cut.top_p)  # with top-k, K >= k
    return torch.maximum(top_k, top_p), covered


def sample_inverse_cdf(w: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Sample one index per row from unnormalized probabilities w [R, N] (consumed in place);
    uniform: [R, 1] in [0, 1). Index i is drawn when cdf[i-1] <= u * total < cdf[i], so an index
    of weight 0 is never drawn."""
    cdf = w.cumsum_(dim=-1)
    target = uniform * cdf[:, -1:]
    ids = torch.searchsorted(cdf, target, right=True).squeeze(1)
    return ids.clamp_(max=w.shape[1] - 1)
