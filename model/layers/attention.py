"""Paged attention: the backend dispatch (the metadata and the cache helpers live in paged_kv.py).

Backends: `torch_ref` (plain per-sequence math, the oracle) and `sdpa` (torch's fused kernel).
"""

from __future__ import annotations

from typing import Callable

from .backends import sdpa, torch_ref
from .paged_kv import AttentionMetadata, PrefillChunk, gather_blocks, gather_context, sequence_chunks, write_kv

__all__ = [
    "AttentionMetadata",
    "PrefillChunk",
    "gather_blocks",
    "gather_context",
    "get_backend",
    "sequence_chunks",
    "write_kv",
]

_BACKENDS: dict[str, Callable] = {"torch_ref": torch_ref.attention, "sdpa": sdpa.attention}


def get_backend(name: str) -> Callable:
    """The attention function for a backend name: `torch_ref` (oracle) or `sdpa` (fast)."""
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown attention backend {name!r}") from None
