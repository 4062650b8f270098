"""The allowed-token masks of a batch's constrained rows.

llguidance writes a bitmask (32 tokens per int32 word) for each constrained row; rows without a
grammar keep all bits set. numpy unpacks the bits into a [rows, vocab] bool tensor for the sampler's
`allowed_mask` hook (model/engine/sampling/processors.py), which puts -inf on every token a row may
not take, before temperature, top-k and top-p. A batch without constrained rows costs nothing here.

On CUDA the rows are filled in one parallel call on llguidance's thread pool. On the CPU, torch's
threads already own every core, and the pool's worker threads spin-wait after each call, so they
take the cores from the next forward pass (measured on 2 cores: a batch of 4 constrained rows ran
7.5x slower); there the engine thread fills the rows itself, tens of microseconds each.
"""

from __future__ import annotations

from collections.abc import Sequence

import llguidance
import llguidance.torch
import numpy as np
import torch

from .compiler import ChoiceGrammar


class MaskFiller:
    def __init__(self, vocab_size: int, parallel: bool = False) -> None:
        self.vocab_size = vocab_size
        self.words = (vocab_size + 31) // 32
        self.parallel = parallel
        self._executor: llguidance.LLExecutor | None = None

    def allowed(self, grammars: Sequence[ChoiceGrammar | None]) -> torch.Tensor | None:
        """[rows, vocab] bool (True: allowed) for the sampled rows, or None when no row is constrained."""
        rows = [(g.matcher, i) for i, g in enumerate(grammars) if g is not None]
        if not rows:
            return None
        bitmask = torch.full((len(grammars), self.words), -1, dtype=torch.int32)
        if self.parallel and len(rows) > 1:
            if self._executor is None:
                self._executor = llguidance.LLExecutor()
            llguidance.torch.fill_next_token_bitmask_par(self._executor, rows, bitmask)
        else:
            for matcher, i in rows:
                llguidance.torch.fill_next_token_bitmask(matcher, bitmask, i)
        bits = np.unpackbits(bitmask.numpy().view(np.uint8), axis=1, bitorder="little")[:, : self.vocab_size]
        return torch.from_numpy(np.ascontiguousarray(bits)).view(torch.bool)
