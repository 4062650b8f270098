"""Logprobs of a step: those of the raw logits (log_softmax before any processing), as in OpenAI's
API and vLLM's default, for the sampled token and the top-k alternatives."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .ops import top_values


class Logprobs(NamedTuple):
    sampled: torch.Tensor  # [B] float32: the logprob of each row's sampled token
    top_logprobs: torch.Tensor  # [B, K] float32, descending
    top_ids: torch.Tensor  # [B, K] int64


def compute_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, num_top: int) -> Logprobs:
    """logits: [B, V] raw (any float dtype); token_ids: [B] the sampled tokens; num_top: K, the
    largest number of alternatives some row asked for (rows slice their own k; 0: none)."""
    logprobs = torch.log_softmax(logits, dim=-1, dtype=torch.float32)  # the raw distribution
    sampled = logprobs.gather(1, token_ids.unsqueeze(1)).squeeze(1)
    if num_top > 0:
        top_logprobs, top_ids = top_values(logprobs, num_top)
    else:
        top_logprobs = logprobs[:, :0]
        top_ids = token_ids.new_empty((len(token_ids), 0))
    return Logprobs(sampled, top_logprobs, top_ids)
