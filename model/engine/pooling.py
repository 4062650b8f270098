"""Embedding requests: a prompt-only kind of sequence (no decode, no sampling), pooled when its prefill ends.

A sequence with `pooling` set ("last" or "mean") is scheduled like any prefill, chunks and all, next to
generation requests in the same steps. The runner hands back the final-norm hidden states of the rows
the pooling needs (the last prompt token, or every row of each chunk for the mean); `Pooler` keeps the
running float64 sum across chunks (restarted when a chunk starts at position 0, as after a preemption)
and, once the whole prompt is computed, gives the L2-normalized vector. Mean-pooled sequences skip the
prefix cache: every row must be computed.
"""

from __future__ import annotations

import torch

from .sequence import Sequence

POOLING_TYPES = ("last", "mean")


class Pooler:
    def __init__(self) -> None:
        self._sums: dict[int, tuple[torch.Tensor, int]] = {}  # seq_id -> (float64 sum, rows)

    def add(self, seq: Sequence, chunk_start: int, rows: torch.Tensor) -> list[float] | None:
        """Fold one chunk's hidden rows in; the finished embedding when the prompt is complete, else None."""
        complete = chunk_start + (rows.shape[0] if seq.pooling == "mean" else 0) >= seq.num_prompt_tokens
        if seq.pooling == "last":
            return _normalize(rows[-1].double())  # the runner sends the last row only on the final chunk
        total, count = self._sums.pop(seq.seq_id, (None, 0)) if chunk_start > 0 else (None, 0)
        chunk = rows.double().sum(dim=0)
        total = chunk if total is None else total + chunk
        count += rows.shape[0]
        if not complete:
            self._sums[seq.seq_id] = (total, count)
            return None
        return _normalize(total / count)

    def drop(self, seq: Sequence) -> None:
        self._sums.pop(seq.seq_id, None)


def _normalize(vector: torch.Tensor) -> list[float]:
    norm = torch.linalg.vector_norm(vector)
    return (vector / norm if norm > 0 else vector).float().tolist()
