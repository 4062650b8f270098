"""Fast attention through torch's scaled_dot_product_attention (CPU and CUDA).

Decode: the whole batch in one call, keys gathered block-wise by a padded block table and masked by
context length. Prefill: one call per chunk; a chunk with no earlier context attends to its own K/V
with a causal mask, a chunk after cached/earlier tokens gathers its context from the cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..paged_kv import AttentionMetadata, PrefillChunk, gather_blocks, gather_context


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, **kw) -> torch.Tensor:
    """q: [B, H, Lq, D], k/v: [B, KVH, Lk, D]; grouped-query heads expanded by SDPA itself."""
    return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=q.shape[1] != k.shape[1], **kw)


def attention(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """q/k_new/v_new: this step's [T, heads, head_dim] (already written to the cache)."""
    out = torch.empty_like(q)
    kv_heads, head_dim = cache.shape[-2:]
    n = meta.num_decode
    if n:
        tables = meta.decode_block_tables
        k, v = gather_blocks(cache, tables)
        k = k.view(n, -1, kv_heads, head_dim).transpose(1, 2)
        v = v.view(n, -1, kv_heads, head_dim).transpose(1, 2)
        qd = q[:n].unsqueeze(2)  # [n, H, 1, D]
        out[:n] = _sdpa(qd, k, v, scale, attn_mask=meta.decode_mask).squeeze(2)
    for chunk in meta.prefills:
        sl = slice(chunk.q_start, chunk.q_start + chunk.q_len)
        out[sl] = prefill_chunk(q[sl], k_new[sl], v_new[sl], cache, chunk, scale)
    return out


def prefill_chunk(
    q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, cache: torch.Tensor, chunk: PrefillChunk, scale: float
) -> torch.Tensor:
    """One prefill chunk's attention: q/k_new/v_new [q_len, heads, head_dim] -> [q_len, heads, head_dim]."""
    qs = q.transpose(0, 1).unsqueeze(0)  # [1, H, q_len, D]
    if chunk.ctx_len == chunk.q_len:  # no earlier context: attend to this chunk's own K/V
        k = k_new.transpose(0, 1).unsqueeze(0)
        v = v_new.transpose(0, 1).unsqueeze(0)
        res = _sdpa(qs, k, v, scale, is_causal=True)
    else:
        k, v = gather_context(cache, chunk.block_table, chunk.ctx_len)
        k = k.transpose(0, 1).unsqueeze(0)
        v = v.transpose(0, 1).unsqueeze(0)
        q_pos = torch.arange(chunk.ctx_len - chunk.q_len, chunk.ctx_len, device=q.device)
        mask = torch.arange(chunk.ctx_len, device=q.device)[None, :] <= q_pos[:, None]
        res = _sdpa(qs, k, v, scale, attn_mask=mask)
    return res.squeeze(0).transpose(0, 1)
