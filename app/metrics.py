"""Prometheus metrics at /metrics, with vLLM's names so existing dashboards work.

One CollectorRegistry per app (no global state). Three sources:

- engine state, read at scrape time from the stats snapshot the engine thread publishes after each
  step (`AsyncEngine.stats()`; nothing on the hot path): `vllm:num_requests_running`,
  `vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc` (0..1),
  `vllm:prompt_tokens_total`, `vllm:generation_tokens_total`, `vllm:prefix_cache_queries_total`,
  `vllm:prefix_cache_hits_total`, `vllm:num_preemptions_total` (counters are exposed with the
  `_total` suffix, exactly as vLLM's are);
- per-request timings, observed by `Metrics.track` from the stream of RequestOutputs the serving layer
  reads: `vllm:time_to_first_token_seconds` (from the HTTP request's arrival),
  `vllm:inter_token_latency_seconds` (one observation per token after the first),
  `vllm:e2e_request_latency_seconds`, `vllm:request_queue_time_seconds` (engine arrival to first
  scheduled chunk) and `vllm:request_success_total{finished_reason="stop"|"length"|"abort"}`. As in
  vLLM, each of a request's `n` choices counts as one request;
- the process (`process_*`, `python_*`) and the HTTP layer: `kvserve:http_requests_total{method,route,status}`.

Every vLLM-named series carries the `model_name` label (the first served name).

Metrics only observe: they get callables for the stats snapshot, the admission count and the server
phase, never the server state or the engine itself.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, AsyncIterator, Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from model import EngineStats, RequestAbortedError, RequestOutput

from .phase import Phase

if TYPE_CHECKING:
    from .context import RequestInfo

__all__ = ["Metrics", "CONTENT_TYPE_LATEST", "FINISHED_REASONS"]

FINISHED_REASONS = ("stop", "length", "abort")
# Bucket bounds in seconds: fine at the low end (a small model on CPU answers in milliseconds) and long
# enough for big prompts on slow hardware.
# fmt: off
TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
               0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
                   120.0, 300.0, 600.0, 1200.0, 3600.0)
# fmt: on


class _EngineCollector:
    """Gauges and counters read from the engine's stats snapshot at scrape time."""

    def __init__(self, metrics: "Metrics") -> None:
        self.metrics = metrics

    def collect(self) -> Iterator:
        m = self.metrics
        stats = m.stats()
        if stats is None:  # still loading
            return
        name = m.model_name or "unknown"
        labels = ["model_name"]

        def gauge(metric: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(metric, doc, labels=labels)
            g.add_metric([name], value)
            return g

        def counter(metric: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(metric, doc, labels=labels)  # exposed as <metric>_total
            c.add_metric([name], value)
            return c

        yield gauge("vllm:num_requests_running", "Sequences in the running batch.", stats.num_running)
        yield gauge("vllm:num_requests_waiting", "Sequences waiting to be scheduled.", stats.num_waiting)
        yield gauge("vllm:kv_cache_usage_perc", "Fraction of KV-cache blocks in use (1 = full).", stats.kv_usage)
        yield gauge("kvserve:kv_cache_free_blocks", "Free KV-cache blocks.", stats.num_free_blocks)
        yield gauge("kvserve:kv_cache_blocks", "KV-cache blocks in the pool.", stats.num_blocks)
        yield gauge("kvserve:requests_in_flight", "HTTP generation requests admitted and not finished.", m.in_flight())
        yield gauge(
            "kvserve:draining", "1 while the server drains before shutting down.", float(m.phase().shutting_down)
        )
        yield counter("vllm:prompt_tokens", "Prompt tokens admitted to the engine.", stats.prompt_tokens_total)
        yield counter("vllm:generation_tokens", "Tokens generated.", stats.generation_tokens_total)
        yield counter("vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", stats.prefix_queries)
        yield counter("vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache.", stats.prefix_hits)
        yield counter("vllm:num_preemptions", "Sequences preempted (KV cache full).", stats.num_preemptions)


class Metrics:
    """The app's registry. `stats`: the engine's latest snapshot (None while loading); `in_flight`: HTTP
    generation requests admitted; `phase`: the server's life-cycle phase."""

    def __init__(
        self, stats: Callable[[], EngineStats | None], in_flight: Callable[[], int], phase: Callable[[], Phase]
    ) -> None:
        self.stats = stats
        self.in_flight = in_flight
        self.phase = phase
        reg = self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        GCCollector(registry=reg)
        reg.register(_EngineCollector(self))  # type: ignore[arg-type]
        model = ["model_name"]
        self.request_success = Counter(
            "vllm:request_success",
            "Requests that finished, by finish reason.",
            ["model_name", "finished_reason"],
            registry=reg,
        )
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Time from the HTTP request's arrival to its first generated token.",
            model,
            buckets=TTFT_BUCKETS,
            registry=reg,
        )
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Time between two generated tokens of a request.",
            model,
            buckets=ITL_BUCKETS,
            registry=reg,
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Time from the HTTP request's arrival to its last token.",
            model,
            buckets=REQUEST_BUCKETS,
            registry=reg,
        )
        self.queue = Histogram(
            "vllm:request_queue_time_seconds",
            "Time a request waited in the engine before its first prefill chunk.",
            model,
            buckets=REQUEST_BUCKETS,
            registry=reg,
        )
        self.http_requests = Counter(
            "kvserve:http_requests",
            "HTTP requests answered, by route and status.",
            ["method", "route", "status"],
            registry=reg,
        )
        self._bound: str | None = None

    @property
    def model_name(self) -> str | None:
        return self._bound

    def bind_model(self, name: str) -> None:
        """Fix the model_name label (once the engine is up) and create the series at 0."""
        self._bound = name
        self._success = {r: self.request_success.labels(name, r) for r in FINISHED_REASONS}
        self._ttft = self.ttft.labels(name)
        self._itl = self.itl.labels(name)
        self._e2e = self.e2e.labels(name)
        self._queue = self.queue.labels(name)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def count_http(self, method: str, route: str, status: int) -> None:
        self.http_requests.labels(method, route, str(status)).inc()

    def _finished(self, reason: str, e2e: float, queue_time: float | None) -> None:
        if self._bound is None:
            return
        self._success.get(reason, self._success["abort"]).inc()
        self._e2e.observe(e2e)
        if queue_time is not None:
            self._queue.observe(queue_time)

    async def track(
        self, stream: AsyncIterator[RequestOutput], n: int, num_prompt_tokens: int, info: "RequestInfo | None"
    ) -> AsyncIterator[RequestOutput]:
        """`stream` (one engine request with `n` choices), observing its timings and outcome on the way.

        A choice that ends without a finish reason (client gone, shutdown, engine failure) counts as
        "abort". Closing this iterator closes `stream` (which aborts the engine request). Also refuses
        to start once the shutdown drain has aborted the requests in flight.
        """
        start = info.start if info is not None else time.monotonic()
        last_token: list[float | None] = [None] * n
        num_tokens = [0] * n
        finished = [False] * n
        queue_time: float | None = None
        counted = True
        try:
            if self.phase().refuses_streams:
                raise RequestAbortedError("the server is shutting down")
            async for out in stream:
                now = time.monotonic()
                m = out.metrics
                if queue_time is None and m is not None and m.first_scheduled_time is not None:
                    queue_time = max(0.0, m.first_scheduled_time - m.arrival_time)
                for c in out.outputs:
                    i = c.index
                    k = len(c.new_token_ids)
                    if k and self._bound is not None:
                        prev = last_token[i]
                        if prev is None:
                            self._ttft.observe(now - start)
                            k -= 1
                        step = (now - prev) / k if prev is not None and k else 0.0
                        for _ in range(k):
                            self._itl.observe(step)
                        last_token[i] = now
                    num_tokens[i] = len(c.token_ids)
                    if c.finish_reason is not None and not finished[i]:
                        finished[i] = True
                        reason = c.finish_reason if c.finish_reason in FINISHED_REASONS else "stop"
                        self._finished(reason, now - start, queue_time)
                        if info is not None:
                            info.finish_reasons.append(reason)
                yield out
        except ValueError:
            counted = False  # refused by the engine (a 400): it never ran
            raise
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
            if counted:
                now = time.monotonic()
                for i in range(n):
                    if not finished[i]:
                        self._finished("abort", now - start, queue_time)
                        if info is not None:
                            info.finish_reasons.append("abort")
            if info is not None and counted:
                info.prompt_tokens += num_prompt_tokens
                info.completion_tokens += sum(num_tokens)
