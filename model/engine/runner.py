"""ModelRunner: owns the model and the KV cache, turns a schedule into one forward pass.

It builds the flat batch (input ids, positions, slot mapping, block tables, logits indices) with
numpy on the host, runs the model, and samples. Decode sequences go first in the flat batch so the
attention backend can handle them in one call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..layers.attention import AttentionMetadata, PrefillChunk, get_backend
from ..structured.masks import MaskFiller
from .sampling import Sampler, SamplerOutput, SamplingBatch, SamplingRow
from .scheduler import ScheduledSeq


@dataclass
class StepResult:
    """Per scheduled sequence that sampled: its new token and optional logprob data (host lists)."""

    sampled: list[ScheduledSeq]
    token_ids: list[int]
    logprobs: list[tuple[float, list[int], list[float]]] | None  # (sampled logprob, top ids, top logprobs)
    pooled: list[tuple[ScheduledSeq, torch.Tensor]] = field(default_factory=list)  # embedding rows (final norm)


class ModelRunner:
    def __init__(
        self,
        model: torch.nn.Module,
        kv_caches: list[torch.Tensor],
        block_size: int,
        vocab_size: int,
        device: torch.device,
        attention_backend: str,
        forward: Callable[..., torch.Tensor] | None = None,
    ) -> None:
        self.model = model
        self.forward = forward or model  # the model's forward or a fused replacement with its signature
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.vocab_size = vocab_size
        self.device = device
        self.attn_fn = get_backend(attention_backend)
        self.sampler = Sampler()
        self.masks = MaskFiller(vocab_size, parallel=device.type == "cuda")

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self.device, non_blocking=True)

    def _slots(self, block_table: list[int], start: int, end: int) -> np.ndarray:
        pos = np.arange(start, end)
        return np.asarray(block_table, dtype=np.int64)[pos // self.block_size] * self.block_size + pos % self.block_size

    @staticmethod
    def _split(scheduled: list[ScheduledSeq]) -> tuple[list[ScheduledSeq], list[ScheduledSeq]]:
        """(decodes, prefill chunks): the flat batch holds them in this order."""
        decodes = [s for s in scheduled if s.num_new_tokens == 1 and s.seq.num_computed_tokens > 0]
        prefills = [s for s in scheduled if not (s.num_new_tokens == 1 and s.seq.num_computed_tokens > 0)]
        return decodes, prefills

    def _pool_rows(self, scheduled: list[ScheduledSeq]) -> tuple[list[tuple[ScheduledSeq, int, int]], list[int]]:
        """For embedding requests: (scheduled seq, first row in the hidden output, rows) and the flat rows."""
        decodes, prefills = self._split(scheduled)
        spans, rows, flat = [], [], 0
        for s in decodes + prefills:
            if s.pools:
                wanted = (
                    range(flat, flat + s.num_new_tokens) if s.seq.pooling == "mean" else [flat + s.num_new_tokens - 1]
                )
                spans.append((s, len(rows), len(wanted)))
                rows.extend(wanted)
            flat += s.num_new_tokens
        return spans, rows

    def prepare(
        self, scheduled: list[ScheduledSeq]
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, torch.Tensor, list[ScheduledSeq]]:
        decodes, prefills = self._split(scheduled)
        ordered = decodes + prefills
        ids, pos, slots, logits_idx, sampled = [], [], [], [], []
        flat = 0
        for s in ordered:
            seq, start = s.seq, s.seq.num_computed_tokens
            end = start + s.num_new_tokens
            ids.append(seq.token_ids[start:end])
            pos.append(np.arange(start, end))
            slots.append(self._slots(seq.block_table, start, end))
            flat += s.num_new_tokens
            if s.samples:
                logits_idx.append(flat - 1)
                sampled.append(s)
        input_ids = self._tensor(np.fromiter((t for chunk in ids for t in chunk), dtype=np.int64))
        positions = self._tensor(np.concatenate(pos).astype(np.int64))
        meta = AttentionMetadata(slot_mapping=self._tensor(np.concatenate(slots)), block_size=self.block_size)
        if decodes:
            max_blocks = max(len(s.seq.block_table) for s in decodes)
            tables = np.zeros((len(decodes), max_blocks), dtype=np.int64)
            for i, s in enumerate(decodes):
                tables[i, : len(s.seq.block_table)] = s.seq.block_table
            ctx = np.array([s.seq.num_computed_tokens + 1 for s in decodes], dtype=np.int64)
            meta.num_decode = len(decodes)
            meta.decode_block_tables = self._tensor(tables)
            meta.decode_context_lens = self._tensor(ctx)
            key_pos = torch.arange(max_blocks * self.block_size, device=self.device)
            meta.decode_mask = (key_pos[None, :] < meta.decode_context_lens[:, None])[:, None, None, :]
        q_start = len(decodes)
        for s in prefills:
            ctx_len = s.seq.num_computed_tokens + s.num_new_tokens
            n_blocks = -(-ctx_len // self.block_size)
            table = self._tensor(np.asarray(s.seq.block_table[:n_blocks], dtype=np.int64))
            meta.prefills.append(PrefillChunk(q_start, s.num_new_tokens, ctx_len, table))
            q_start += s.num_new_tokens
        logits_indices = self._tensor(np.asarray(logits_idx, dtype=np.int64))
        return input_ids, positions, meta, logits_indices, sampled

    @torch.inference_mode()
    def execute(self, scheduled: list[ScheduledSeq]) -> StepResult:
        input_ids, positions, meta, logits_indices, sampled = self.prepare(scheduled)
        spans, rows = self._pool_rows(scheduled)
        if rows:
            hidden_rows = self._tensor(np.asarray(rows, dtype=np.int64))
            logits, hidden = self.forward(
                input_ids, positions, self.kv_caches, meta, self.attn_fn, logits_indices, hidden_rows
            )
            pooled = [(s, hidden[start : start + n].cpu()) for s, start, n in spans]
        else:
            logits = self.forward(input_ids, positions, self.kv_caches, meta, self.attn_fn, logits_indices)
            pooled = []
        if not sampled:
            return StepResult([], [], None, pooled)
        rows = [
            SamplingRow(
                params=s.seq.params,
                seed=s.seq.seed,
                prompt_token_ids=s.seq.prompt_token_ids,
                output_token_ids=s.seq.output_token_ids,
                eos_token_ids=s.seq.eos_token_ids,
            )
            for s in sampled
        ]
        allowed = self.masks.allowed([s.seq.grammar for s in sampled])  # None: no row is constrained
        if allowed is not None:
            allowed = allowed.to(self.device, non_blocking=True)
        batch = SamplingBatch.build(rows, self.vocab_size, self.device, allowed_mask=allowed)
        out: SamplerOutput = self.sampler(logits[:, : self.vocab_size], batch)
        return StepResult(sampled, out.token_ids.tolist(), self._logprobs_to_host(out, sampled), pooled)

    @staticmethod
    def _logprobs_to_host(out: SamplerOutput, sampled: list[ScheduledSeq]):
        if getattr(out, "sampled_logprobs", None) is None:
            return None
        lp = out.sampled_logprobs.tolist()
        top_ids = out.top_ids.tolist()
        top_lp = out.top_logprobs.tolist()
        result = []
        for i, s in enumerate(sampled):
            k = s.seq.params.logprobs
            if k is None:
                result.append(None)
            else:
                result.append((lp[i], top_ids[i][:k], top_lp[i][:k]))
        return result
