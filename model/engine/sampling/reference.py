"""A plain per-row reference of the sampling filters: the oracle the sampler tests compare with.

Written to be obviously correct, not fast: one row at a time, in float64, with Python lists and
sorts, sharing no code with the batched fast path (`ops.py`, `sampler.py`). Removed tokens are
marked -inf, as in HF's logits warpers.
"""

from __future__ import annotations

import math

import torch


def reference_warp(x: torch.Tensor, temperature: float, top_k: int, top_p: float, min_p: float) -> torch.Tensor:
    """HF order: temperature, top-k, top-p, min-p; removed tokens at -inf. x: [V].

    Returns the warped logits [V] (float64). top_k <= 0, top_p >= 1 and min_p <= 0 mean "off"."""
    x = x.double() / temperature
    if top_k > 0:
        kth = sorted(x.tolist(), reverse=True)[min(top_k, len(x)) - 1]
        x = torch.where(x < kth, -math.inf, x)
    if top_p < 1.0:
        probs = x.softmax(-1).tolist()
        order = sorted(range(len(probs)), key=lambda i: -probs[i])
        mass, keep = 0.0, set()
        for i in order:
            if mass >= top_p:
                break
            keep.add(i)
            mass += probs[i]
        x = torch.tensor([v if i in keep else -math.inf for i, v in enumerate(x.tolist())], dtype=x.dtype)
    if min_p > 0.0:
        probs = x.softmax(-1)
        x = torch.where(probs < min_p * probs.max(), -math.inf, x)
    return x


def reference_distribution(x: torch.Tensor, temperature: float, top_k: int, top_p: float, min_p: float) -> torch.Tensor:
    """The distribution [V] (float64) a row with these parameters samples from: softmax of
    `reference_warp`, zero on the removed tokens."""
    return reference_warp(x, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p).softmax(-1)
