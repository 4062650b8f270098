"""Logits processors: the edits applied to a copy of the raw logits before anything is chosen.

`apply_logit_edits` is the one place where the logits a row samples from are changed, in this
order: logit_bias, the min_tokens ban, the repetition penalty, presence / frequency penalties, and
last the optional per-row allowed-token mask (`SamplingBatch.allowed_mask`). That mask is the hook
for structured outputs: a grammar matcher fills a [B, V] bool tensor with the tokens each row may
take next, and every other token gets -inf here, so greedy, whole-vocabulary and top-k / top-p rows
all honour it. Logprobs stay those of the raw logits, untouched by any of these edits.
"""

from __future__ import annotations

import torch

from .batch import SamplingBatch

_NEG_INF = float("-inf")


def apply_logit_edits(x: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """In place on x [B, V] float32: logit_bias, min_tokens ban, repetition / presence / frequency,
    then -inf on the tokens that `batch.allowed_mask` (when set) does not allow."""
    if batch.logit_bias is not None:
        rows, toks, vals = batch.logit_bias
        x.index_put_((rows, toks), vals, accumulate=True)
    if batch.min_tokens_ban is not None:
        x.index_put_(batch.min_tokens_ban, x.new_full((), _NEG_INF))  # no host-to-device copy
    if batch.repetition is not None:
        rows, toks, penalty = batch.repetition
        seen = x[rows, toks]  # tokens are distinct per row, so one write per entry
        x.index_put_((rows, toks), torch.where(seen > 0, seen / penalty, seen * penalty))
    if batch.presence_frequency is not None:
        rows, toks, amount = batch.presence_frequency
        x.index_put_((rows, toks), -amount, accumulate=True)
    if batch.allowed_mask is not None:
        assert batch.allowed_mask.shape == x.shape, (batch.allowed_mask.shape, x.shape)
        x.masked_fill_(batch.allowed_mask.logical_not(), _NEG_INF)
    return x
