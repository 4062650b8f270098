"""The allowed-token masks of a batch's constrained rows, in one parallel llguidance call.

llguidance writes a bitmask (32 tokens per int32 word) for each constrained row; rows without a
grammar keep all bits set. numpy unpacks the bits into a [rows, vocab] bool tensor for the sampler's
`allowed_mask` hook (model/engine/sampling/processors.py), which puts -inf on every token a row may
not take, before temperature, top-k and top-p. A batch without constrained rows costs nothing here.
"""

from __future__ import annotations

from collections.abc import Sequence

import llguidance
import llguidance.torch
import numpy as np
import torch

from .compiler import ChoiceGrammar


class MaskFiller:
    def __init__(self, vocab_size: int, num_threads: int | None = None) -> None:
        self.vocab_size = vocab_size
        self.words = (vocab_size + 31) // 32
        self._executor: llguidance.LLExecutor | None = None
        self._num_threads = num_threads

    def allowed(self, grammars: Sequence[ChoiceGrammar | None]) -> torch.Tensor | None:
        """[rows, vocab] bool (True: allowed) for the sampled rows, or None when no row is constrained."""
        rows = [(g.matcher, i) for i, g in enumerate(grammars) if g is not None]
        if not rows:
            return None
        if self._executor is None:
            self._executor = llguidance.LLExecutor(self._num_threads)
        bitmask = torch.full((len(grammars), self.words), -1, dtype=torch.int32)
        llguidance.torch.fill_next_token_bitmask_par(self._executor, rows, bitmask)
        bits = np.unpackbits(bitmask.numpy().view(np.uint8), axis=1, bitorder="little")[:, : self.vocab_size]
        return torch.from_numpy(np.ascontiguousarray(bits)).view(torch.bool)
