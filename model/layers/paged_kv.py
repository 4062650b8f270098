"""Paged KV cache: per-step attention metadata, writing K/V into the cache, gathering it back.

The KV cache of one layer is a tensor [2, num_blocks, block_size, kv_heads, head_dim]. A token at
position p of a sequence lives in slot `block_table[p // block_size] * block_size + p % block_size`.
In the flat batch, decode tokens (one query per sequence) come first, then each prefill chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class PrefillChunk:
    """One sequence's prefill chunk: queries flat[q_start:q_start+q_len], keys at positions 0..ctx_len-1."""

    q_start: int
    q_len: int
    ctx_len: int
    block_table: torch.Tensor  # [num_blocks_of_seq] int64


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] int64: cache slot of each new token
    block_size: int
    num_decode: int = 0  # flat[0:num_decode] are decode tokens, one per sequence
    decode_block_tables: torch.Tensor | None = None  # [num_decode, max_blocks] int64 (padded with 0)
    decode_context_lens: torch.Tensor | None = None  # [num_decode] int64
    decode_mask: torch.Tensor | None = None  # [num_decode, 1, 1, max_blocks*block_size] bool
    prefills: list[PrefillChunk] = field(default_factory=list)


def write_kv(cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Store this step's keys/values ([T, kv_heads, head_dim]) at their slots."""
    kv_heads, head_dim = k.shape[-2:]
    cache[0].view(-1, kv_heads, head_dim).index_copy_(0, slot_mapping, k)
    cache[1].view(-1, kv_heads, head_dim).index_copy_(0, slot_mapping, v)


def gather_context(cache: torch.Tensor, block_table: torch.Tensor, ctx_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of positions 0..ctx_len-1 of one sequence, each [ctx_len, kv_heads, head_dim]."""
    kv_heads, head_dim = cache.shape[-2:]
    k, v = gather_blocks(cache, block_table)
    return k.reshape(-1, kv_heads, head_dim)[:ctx_len], v.reshape(-1, kv_heads, head_dim)[:ctx_len]


def gather_blocks(cache: torch.Tensor, block_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies of the K and V blocks listed in `block_ids` (any shape).

    Each comes back as [*block_ids.shape, block_size, kv_heads, head_dim].

    index_select copies whole blocks; on the CPU it is 4-5x faster than `cache[0][block_ids]`,
    whose advanced-indexing kernel walks the block elements one stride at a time.
    """
    flat = block_ids.reshape(-1)
    shape = (*block_ids.shape, *cache.shape[2:])
    return cache[0].index_select(0, flat).view(shape), cache[1].index_select(0, flat).view(shape)


def sequence_chunks(meta: AttentionMetadata) -> list[PrefillChunk]:
    """Every sequence of the step as a chunk, decodes included (for the reference path)."""
    chunks = []
    for i in range(meta.num_decode):
        ctx = int(meta.decode_context_lens[i])
        n_blocks = (ctx + meta.block_size - 1) // meta.block_size
        chunks.append(PrefillChunk(i, 1, ctx, meta.decode_block_tables[i, :n_blocks]))
    return chunks + meta.prefills
