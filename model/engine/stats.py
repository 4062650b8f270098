"""EngineStats: an immutable snapshot of the engine's gauges and counters.

The engine thread publishes a fresh one after each step (`AsyncEngine.stats()`), so a metrics
scrape or a stats log line on another thread never reads the scheduler's live lists.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineStats:
    num_running: int = 0  # sequences in the running batch
    num_waiting: int = 0  # sequences waiting to be scheduled
    kv_usage: float = 0.0  # fraction of KV blocks in use
    num_free_blocks: int = 0
    num_blocks: int = 0
    prefix_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_hits: int = 0  # prompt tokens found there
    num_preemptions: int = 0
    prompt_tokens_total: int = 0  # prompt tokens admitted
    generation_tokens_total: int = 0  # tokens generated
