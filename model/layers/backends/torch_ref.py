"""Reference attention: one sequence at a time, plain float32 math. The oracle for fast paths."""

from __future__ import annotations

import torch

from ..paged_kv import AttentionMetadata, gather_context, sequence_chunks


def attention(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """q: [T, heads, head_dim] -> [T, heads, head_dim]. K/V of this step are read back from the cache."""
    out = torch.empty_like(q)
    heads = q.shape[1]
    for chunk in sequence_chunks(meta):
        k, v = gather_context(cache, chunk.block_table, chunk.ctx_len)
        group = heads // k.shape[1]
        k = k.float().repeat_interleave(group, dim=1)
        v = v.float().repeat_interleave(group, dim=1)
        qs = q[chunk.q_start : chunk.q_start + chunk.q_len].float()
        scores = torch.einsum("qhd,khd->hqk", qs, k) * scale
        # Query i sits at position ctx_len - q_len + i and sees keys at positions <= its own.
        q_pos = torch.arange(chunk.ctx_len - chunk.q_len, chunk.ctx_len, device=q.device)
        k_pos = torch.arange(chunk.ctx_len, device=q.device)
        scores = scores.masked_fill(k_pos[None, :] > q_pos[:, None], float("-inf"))
        probs = scores.softmax(dim=-1)
        out[chunk.q_start : chunk.q_start + chunk.q_len] = torch.einsum("hqk,khd->qhd", probs, v).to(q.dtype)
    return out
