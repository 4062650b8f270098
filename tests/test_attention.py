"""The fast SDPA paged-attention path equals the plain reference path on random block tables,
grouped-query heads and mixed prefill/decode batches."""

from __future__ import annotations

import random

import pytest
import torch

from model.layers.attention import AttentionMetadata, PrefillChunk, get_backend, write_kv

BLOCK = 4


def build_case(seed: int, heads: int, kv_heads: int, dim: int, decode_ctx: list[int], prefill: list[tuple[int, int]]):
    """decode_ctx: context lengths of decode sequences; prefill: (already cached, new) token counts."""
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    num_blocks = 64
    cache = torch.randn(2, num_blocks, BLOCK, kv_heads, dim, generator=gen)
    free = list(range(num_blocks))
    rng.shuffle(free)  # random, non-contiguous block tables

    def table(n_tokens: int) -> list[int]:
        return [free.pop() for _ in range(-(-n_tokens // BLOCK))]

    tables, slots, chunks, q_start = [], [], [], 0
    for ctx in decode_ctx:
        t = table(ctx)
        tables.append(t)
        slots.append(t[(ctx - 1) // BLOCK] * BLOCK + (ctx - 1) % BLOCK)
        q_start += 1
    for cached, new in prefill:
        ctx = cached + new
        t = table(ctx)
        for p in range(cached, ctx):
            slots.append(t[p // BLOCK] * BLOCK + p % BLOCK)
        chunks.append(PrefillChunk(q_start, new, ctx, torch.tensor(t)))
        q_start += new
    meta = AttentionMetadata(slot_mapping=torch.tensor(slots), block_size=BLOCK, prefills=chunks)
    if decode_ctx:
        max_blocks = max(len(t) for t in tables)
        padded = torch.zeros(len(tables), max_blocks, dtype=torch.long)
        for i, t in enumerate(tables):
            padded[i, : len(t)] = torch.tensor(t)
        meta.num_decode = len(decode_ctx)
        meta.decode_block_tables = padded
        meta.decode_context_lens = torch.tensor(decode_ctx)
        meta.decode_mask = (torch.arange(max_blocks * BLOCK)[None, :] < meta.decode_context_lens[:, None])[
            :, None, None
        ]
    total = q_start
    q = torch.randn(total, heads, dim, generator=gen)
    k = torch.randn(total, kv_heads, dim, generator=gen)
    v = torch.randn(total, kv_heads, dim, generator=gen)
    write_kv(cache, k, v, meta.slot_mapping)
    return q, k, v, cache, meta


@pytest.mark.parametrize(
    "heads,kv_heads,decode_ctx,prefill",
    [
        (4, 4, [1, 5, 17, 9], []),  # decode only, MHA
        (8, 2, [3, 30, 12], [(0, 9)]),  # GQA, decode + fresh prefill
        (6, 3, [], [(0, 13), (8, 5), (12, 1)]),  # prefill after cached context, single-token chunk
        (4, 1, [7, 2], [(4, 11), (0, 1)]),  # MQA, mixed
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sdpa_equals_reference(heads, kv_heads, decode_ctx, prefill, dtype):
    q, k, v, cache, meta = build_case(len(decode_ctx) * 10 + len(prefill), heads, kv_heads, 16, decode_ctx, prefill)
    q, k, v, cache = (t.to(dtype) for t in (q, k, v, cache))
    scale = 16**-0.5
    ref = get_backend("torch_ref")(q, k, v, cache, meta, scale)
    fast = get_backend("sdpa")(q, k, v, cache, meta, scale)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(fast.float(), ref.float(), atol=tol, rtol=tol)
