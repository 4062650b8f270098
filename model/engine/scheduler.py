"""Token-budget scheduling: no phases, one code path for decode, chunked prefill and cache hits.

Each step: every running sequence gets its next tokens first (one for decode, the next chunk for a
sequence still in prefill), then waiting sequences are admitted with prefill chunks from the budget
that is left. When KV blocks run out, the newest running sequence is preempted: its blocks are freed
and it goes back to the front of the queue to be recomputed later (prefix caching makes that cheap).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from .block_manager import BlockManager
from .sequence import Sequence, SequenceStatus

# A sampled token's logprob data from the runner: (its logprob, top ids, top logprobs).
TokenLogprobData = tuple[float, list[int], list[float]]
# What `Scheduler.update` hands to the output processor for each sequence that sampled a token:
# (sequence, token, logprob data, whether the token is text; False for an EOS or stop token id that ended it).
SampledToken = tuple[Sequence, int, "TokenLogprobData | None", bool]


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_new_tokens: int

    @property
    def completes(self) -> bool:
        """True when this chunk reaches the end of the sequence."""
        return self.seq.num_computed_tokens + self.num_new_tokens == len(self.seq.token_ids)

    @property
    def samples(self) -> bool:
        """True when this chunk's last logits give a token (never for an embedding request)."""
        return self.completes and self.seq.pooling is None

    @property
    def pools(self) -> bool:
        """True when this chunk's hidden states feed an embedding (every chunk for the mean)."""
        return self.seq.pooling == "mean" or (self.seq.pooling is not None and self.completes)


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq] = field(default_factory=list)
    num_preempted: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)


class Scheduler:
    def __init__(
        self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int, max_model_len: int
    ) -> None:
        self.blocks = block_manager
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions_total = 0
        self.num_generation_tokens_total = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions_total += 1
        self.waiting.appendleft(seq)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        # 1. Running sequences, oldest first.
        for seq in list(self.running):
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted below while serving an older sequence
            num_new = min(seq.num_uncomputed, budget)
            while not self.blocks.can_allocate(seq, num_new):
                victim = self.running[-1]
                self._preempt(victim)
                out.num_preempted += 1
                if victim is seq:
                    break
            if seq.status is not SequenceStatus.RUNNING:
                continue
            self.blocks.allocate(seq, num_new)
            out.scheduled.append(ScheduledSeq(seq, num_new))
            budget -= num_new
        # 2. Waiting sequences, in arrival order (preempted ones are at the front). None are admitted
        # in a step that had to preempt: blocks are short.
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs and not out.num_preempted:
            seq = self.waiting[0]
            if not seq.block_table and seq.pooling != "mean":  # a mean needs every row computed
                self.blocks.allocate_cached_prefix(seq)
                if seq.num_preemptions == 0:
                    seq.num_cached_tokens = seq.num_computed_tokens
            num_new = min(seq.num_uncomputed, budget)
            if not self.blocks.can_allocate(seq, num_new):
                if not self.running:
                    # Nothing will free blocks: take what fits now and continue next step.
                    num_new = min(num_new, self._tokens_that_fit(seq))
                if num_new == 0 or not self.blocks.can_allocate(seq, num_new):
                    # A waiting sequence holds nothing: give back the cached prefix it just took, or the
                    # running ones starve for blocks and every sequence ends up waiting (a deadlock).
                    self.blocks.free(seq)
                    break
            self.waiting.popleft()
            self.blocks.allocate(seq, num_new)
            if seq.first_scheduled_time is None:
                seq.first_scheduled_time = time.monotonic()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            out.scheduled.append(ScheduledSeq(seq, num_new))
            budget -= num_new
        return out

    def update(
        self,
        scheduled: list[ScheduledSeq],
        sampled: list[ScheduledSeq],
        token_ids: list[int],
        logprobs: list[TokenLogprobData | None] | None,
    ) -> list[SampledToken]:
        """After a forward pass: commit the computed tokens, append each sampled token, and finish the
        sequences that hit EOS, a stop token id, max_tokens or the context limit (blocks freed).
        Stop strings are the output processor's: they need the text."""
        for s in scheduled:
            s.seq.num_computed_tokens += s.num_new_tokens
            self.blocks.commit_full_blocks(s.seq)
        now = time.monotonic()
        out: list[SampledToken] = []
        for i, s in enumerate(sampled):
            seq, token = s.seq, token_ids[i]
            seq.token_ids.append(token)
            if seq.first_token_time is None:
                seq.first_token_time = now
            is_text = self._check_finished(seq, token)
            out.append((seq, token, logprobs[i] if logprobs else None, is_text))
        self.num_generation_tokens_total += len(sampled)
        return out

    def _check_finished(self, seq: Sequence, token: int) -> bool:
        """Finish `seq` if `token` ends it; False when the token itself is not part of the text (EOS, a
        stop token id)."""
        params = seq.params
        if token in seq.eos_token_ids and not params.ignore_eos:
            self.finish(seq, "stop")
            return False
        if params.stop_token_ids is not None and token in params.stop_token_ids:
            self.finish(seq, "stop", token)
            return False
        if seq.grammar is not None:
            seq.grammar.advance(token)
        if seq.grammar is not None and seq.grammar.finished:
            self.finish(seq, "stop")  # the constraint is complete: nothing else may follow
        elif params.max_tokens is not None and seq.num_output_tokens >= params.max_tokens:
            self.finish(seq, "length")
        elif len(seq.token_ids) >= self.max_model_len:
            self.finish(seq, "length")
        return True

    def _tokens_that_fit(self, seq: Sequence) -> int:
        bs = self.blocks.block_size
        capacity = (len(seq.block_table) + self.blocks.num_free_blocks) * bs
        return max(0, capacity - seq.num_computed_tokens)

    def finish(self, seq: Sequence, reason: str, stop_reason: str | int | None = None) -> None:
        """Mark a sequence finished (in any state) and return its blocks."""
        if seq.status is SequenceStatus.FINISHED:
            return
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        else:
            try:
                self.waiting.remove(seq)
            except ValueError:
                pass
        self.blocks.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        seq.stop_reason = stop_reason
