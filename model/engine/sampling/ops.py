"""Sampling ops on tensors: candidate search, weights, top-k / top-p / min-p cuts, inverse-CDF draws.

Every cut is a "keep weights >= threshold" test on the unnormalized probabilities
w = exp((logit - max) / temperature), so the top token has weight exactly 1. Nothing here reads a
device tensor on the host.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .batch import _TINY, CutParams


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


def _rows(x: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """The given rows of x (None: all of x)."""
    return x if rows is None else x.index_select(0, rows)


def _weights(x: torch.Tensor, row_max: torch.Tensor, inv_t: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
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


def _top_k_top_p_cut(w: torch.Tensor, cut: CutParams, mass: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
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
    # >= 1: the top token always stays (also for a top_p so small that float32 rounds it to 0)
    keep = (above < cut.top_p).sum(dim=-1, keepdim=True).clamp_(min=1)
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
