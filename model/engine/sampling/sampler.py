"""The Sampler: logits [B, V] + SamplingBatch -> token ids (and logprobs when asked).

It applies the logits processors, takes the argmax for greedy rows, and samples the two sampled
groups with the ops of `ops.py`; see the package docstring for the order of processing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .batch import SampleGroup, SamplingBatch
from .logprobs import compute_logprobs
from .ops import Workspace, _drop_below, _rows, _top_k_top_p_cut, _weights, sample_inverse_cdf, top_values
from .processors import apply_logit_edits

# First candidate count for top-p on CPU; rows whose cut lies deeper are redone with 8x more.
_CPU_TOP_P_CANDIDATES = 256


@dataclass
class SamplerOutput:
    token_ids: torch.Tensor  # [B] int64
    # Present when some row asked for logprobs (raw distribution); rows slice their own k.
    sampled_logprobs: torch.Tensor | None = None  # [B] float32
    top_ids: torch.Tensor | None = None  # [B, K] int64
    top_logprobs: torch.Tensor | None = None  # [B, K] float32


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
            lp = compute_logprobs(logits, token_ids, batch.max_logprobs)
            out.sampled_logprobs, out.top_logprobs, out.top_ids = lp.sampled, lp.top_logprobs, lp.top_ids
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
