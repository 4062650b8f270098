"""Paged KV block bookkeeping with prefix caching.

Blocks are reference-counted. A full block gets a chained hash: sha256(parent hash + its token ids),
so equal hashes mean equal whole prefixes (collision-safe). Blocks whose count drops to 0 stay
cached in a free queue (least recently freed first out) until they are reused for new data.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict

from .sequence import Sequence


def block_hash(parent: bytes, token_ids: list[int]) -> bytes:
    return hashlib.sha256(parent + array("q", token_ids).tobytes()).digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_to_hash: dict[int, bytes] = {}
        self.hash_to_block: dict[bytes, int] = {}
        self.free_queue: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        # Counters for metrics.
        self.prefix_queries = 0  # prompt tokens looked up
        self.prefix_hits = 0  # prompt tokens found

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        total = seq.num_computed_tokens + num_new_tokens
        return max(0, -(-total // self.block_size) - len(seq.block_table))

    def _take_free_block(self) -> int:
        block, _ = self.free_queue.popitem(last=False)
        old = self.block_to_hash.pop(block, None)
        if old is not None and self.hash_to_block.get(old) == block:
            del self.hash_to_block[old]
        self.ref_counts[block] = 1
        return block

    def allocate_cached_prefix(self, seq: Sequence) -> None:
        """Give a fresh sequence the cached blocks of its longest cached prefix.

        The last token is never matched, so at least one token is computed and yields logits.
        """
        assert not seq.block_table and seq.num_computed_tokens == 0
        if not self.enable_prefix_caching:
            return
        num_full = (len(seq.token_ids) - 1) // self.block_size
        self.prefix_queries += len(seq.token_ids)
        parent = b""
        for i in range(num_full):
            h = block_hash(parent, seq.token_ids[i * self.block_size : (i + 1) * self.block_size])
            block = self.hash_to_block.get(h)
            if block is None:
                break
            if self.ref_counts[block] == 0:
                del self.free_queue[block]
            self.ref_counts[block] += 1
            seq.block_table.append(block)
            seq.block_hashes.append(h)
            parent = h
        seq.num_computed_tokens = len(seq.block_table) * self.block_size
        self.prefix_hits += seq.num_computed_tokens

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.blocks_needed(seq, num_new_tokens) <= self.num_free_blocks

    def allocate(self, seq: Sequence, num_new_tokens: int) -> None:
        """Append blocks so the sequence has room for `num_new_tokens` more tokens."""
        need = self.blocks_needed(seq, num_new_tokens)
        assert need <= self.num_free_blocks, "caller must check can_allocate"
        for _ in range(need):
            seq.block_table.append(self._take_free_block())

    def commit_full_blocks(self, seq: Sequence) -> None:
        """Register the hashes of blocks that became full of computed tokens."""
        if not self.enable_prefix_caching:
            return
        num_full = seq.num_computed_tokens // self.block_size
        bs = self.block_size
        for i in range(len(seq.block_hashes), num_full):
            parent = seq.block_hashes[-1] if seq.block_hashes else b""
            h = block_hash(parent, seq.token_ids[i * bs : (i + 1) * bs])
            seq.block_hashes.append(h)
            block = seq.block_table[i]
            if h not in self.hash_to_block and block not in self.block_to_hash:
                self.hash_to_block[h] = block
                self.block_to_hash[block] = h

    def free(self, seq: Sequence) -> None:
        """Drop the sequence's references; its tail blocks become the first to be evicted."""
        for block in reversed(seq.block_table):
            self.ref_counts[block] -= 1
            assert self.ref_counts[block] >= 0
            if self.ref_counts[block] == 0:
                self.free_queue[block] = None
        seq.block_table = []
        seq.block_hashes = []
        seq.num_computed_tokens = 0
