"""Host-side batch preparation: per-row SamplingParams -> the tensors the sampler works on.

`SamplingBatch.build` makes one cheap pass over the rows in Python lists, then turns them into a
few tensors: sparse logit edits, the greedy rows, and two sampled groups (whole vocabulary, and
top-k / top-p candidates) with their per-row parameters and seeded uniform numbers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from itertools import chain

import numpy as np
import torch

from model.sampling_params import SamplingParams

from .seeding import seeded_uniform

_TINY = 1e-30  # "keep everything" threshold for weights (a weight below it has no mass to speak of)


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
    # [num_rows, vocab_size] bool on the logits' device: the tokens each row may take (e.g. from a
    # grammar matcher); applied last, as -inf elsewhere. Each row must allow at least one token.
    # None: every token allowed.
    allowed_mask: torch.Tensor | None = None

    @property
    def all_greedy(self) -> bool:
        return self.num_greedy == self.num_rows

    @property
    def has_edits(self) -> bool:
        edits = (self.logit_bias, self.min_tokens_ban, self.repetition, self.presence_frequency, self.allowed_mask)
        return any(e is not None for e in edits)

    @classmethod
    def build(
        cls,
        rows: list[SamplingRow],
        vocab_size: int,
        device: torch.device,
        allowed_mask: torch.Tensor | None = None,
    ) -> SamplingBatch:
        b = _Builder(vocab_size, device)
        for i, row in enumerate(rows):
            b.add(i, row)
        return b.finish(len(rows), allowed_mask)


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
        self,
        row: int,
        tokens: Collection[int],
        scale: float = 1.0,
        offset: float = 0.0,
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

    def finish(self, num_rows: int, allowed_mask: torch.Tensor | None = None) -> SamplingBatch:
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
            allowed_mask=allowed_mask,
        )
