"""Prometheus metrics at /metrics, with vLLM's names so existing dashboards work.

Engine gauges and counters are read from `LLMEngine.stats()` at scrape time (no bookkeeping on the
hot path); request outcomes are counted by the serving layer. One registry per app.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from .state import ServerState

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]


class _EngineCollector:
    def __init__(self, state: "ServerState") -> None:
        self.state = state

    def collect(self) -> Iterator:
        engine = self.state.engine
        name = self.state.model_name or "unknown"
        labels = ["model_name"]

        def gauge(metric: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(metric, doc, labels=labels)
            g.add_metric([name], value)
            return g

        def counter(metric: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(metric, doc, labels=labels)
            c.add_metric([name], value)
            return c

        if engine is None:
            return
        core = engine.engine
        stats = core.stats()
        yield gauge("vllm:num_requests_running", "Sequences in the running batch.", stats.num_running)
        yield gauge("vllm:num_requests_waiting", "Sequences waiting to be scheduled.", stats.num_waiting)
        yield gauge("vllm:kv_cache_usage_perc", "Fraction of KV-cache blocks in use (1 = full).", stats.kv_usage)
        yield gauge("kvserve:kv_cache_free_blocks", "Free KV-cache blocks.", stats.num_free_blocks)
        yield gauge("kvserve:kv_cache_blocks", "KV-cache blocks in the pool.", stats.num_blocks)
        yield gauge("kvserve:requests_in_flight", "HTTP generation requests admitted and not finished.",
                    self.state.admission.in_flight)
        yield counter("vllm:prompt_tokens", "Prompt tokens admitted to the engine.", core.num_prompt_tokens_total)
        yield counter("vllm:generation_tokens", "Tokens generated.", core.num_generation_tokens_total)
        yield counter("vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", stats.prefix_queries)
        yield counter("vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache.", stats.prefix_hits)
        yield counter("vllm:num_preemptions", "Sequences preempted (KV cache full).", stats.num_preemptions)


class Metrics:
    def __init__(self, state: "ServerState") -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_EngineCollector(state))  # type: ignore[arg-type]
        self.request_success = Counter(
            "vllm:request_success", "Requests that finished, by finish reason.",
            ["model_name", "finished_reason"], registry=self.registry,
        )
        self.state = state

    def count_finished(self, finish_reason: str | None) -> None:
        self.request_success.labels(self.state.model_name or "unknown", finish_reason or "abort").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
