"""Operating a real `kvserve serve` process: /metrics, request logs, graceful shutdown.

- /metrics: vLLM's exact series names; the token counters equal the sums of the responses' usage;
  request_success by finish reason, histogram counts, HTTP counts by status; gauges back to 0 when idle.
- logs (--log-format json): X-Request-Id echoed (or made), one JSON object per line with the request's
  fields, engine-stats lines while busy, no prompt text unless --log-prompts.
- SIGTERM: new requests get 503 while the socket stays open, an in-flight request finishes, the ones
  still running at --shutdown-timeout end cleanly (error event + [DONE] / a 503), exit code 0.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time
from typing import Any

import httpx
import pytest
from http_server import TINY_ARGS, TINY_NAME, ServerProcess, assert_error, post_stream, sse_events
from prometheus_client.parser import text_string_to_metric_families

SECRET = "zebra-marmalade-secret"  # prompt text that must not reach the logs by default
STOP_TOKEN = 10  # forced with logit_bias and listed in stop_token_ids: finish_reason "stop" after 1 token

VLLM_SERIES = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
    "vllm:num_preemptions_total",
    "vllm:time_to_first_token_seconds_bucket",
    "vllm:time_to_first_token_seconds_count",
    "vllm:inter_token_latency_seconds_bucket",
    "vllm:inter_token_latency_seconds_sum",
    "vllm:e2e_request_latency_seconds_count",
    "vllm:request_queue_time_seconds_count",
)


@pytest.fixture(scope="module")
def ops_server(tiny_llama_dir):
    server = ServerProcess(
        [
            tiny_llama_dir,
            *TINY_ARGS,
            "--served-model-name",
            TINY_NAME,
            "--log-format",
            "json",
            "--log-stats-interval",
            "0.5",
        ]
    )
    try:
        yield server.wait_ready()
    finally:
        server.stop()


class Scrape:
    """One /metrics response: samples by name and labels."""

    def __init__(self, base_url: str) -> None:
        r = httpx.get(base_url + "/metrics", timeout=10)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text[:200]
        self.text = r.text
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for family in text_string_to_metric_families(r.text):
            for s in family.samples:
                self.samples.append((s.name, dict(s.labels), s.value))

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples called `name` whose labels include `labels` (0 when none)."""
        return sum(v for n, lab, v in self.samples if n == name and all(lab.get(k) == x for k, x in labels.items()))

    def names(self) -> set[str]:
        return {n for n, _, _ in self.samples}


def wait_idle(base_url: str, timeout: float = 10.0) -> Scrape:
    deadline = time.monotonic() + timeout
    while True:
        m = Scrape(base_url)
        busy = [
            m.value(n)
            for n in (
                "vllm:num_requests_running",
                "vllm:num_requests_waiting",
                "vllm:kv_cache_usage_perc",
                "kvserve:requests_in_flight",
            )
        ]
        if not any(busy):
            return m
        assert time.monotonic() < deadline, f"not idle after {timeout}s: {busy}"
        time.sleep(0.05)


def delta(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


def _post(url: str, path: str, body: dict, headers: dict | None = None) -> httpx.Response:
    return httpx.post(url + path, json={"model": TINY_NAME, **body}, headers=headers, timeout=60)


# ---------------------------------------------------------------------------------------------- /metrics


def test_metrics_follow_the_responses(ops_server):
    url = ops_server.base_url
    before = wait_idle(url)
    assert before.text.count("# TYPE vllm:prompt_tokens_total counter") == 1
    for name in VLLM_SERIES:
        assert name in before.names(), name
    for name in VLLM_SERIES:  # every vLLM series carries model_name
        assert all(lab.get("model_name") == TINY_NAME for n, lab, _ in before.samples if n == name), name
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"} <= before.names()
    for reason in ("stop", "length", "abort"):
        assert re.search(r'^vllm:request_success_total\{[^}]*finished_reason="%s"' % reason, before.text, re.M)

    no_eos = {"ignore_eos": True}
    usages: list[dict] = []
    choices = {"stop": 0, "length": 0}

    def record(usage: dict, reasons: list[str]) -> None:
        usages.append(usage)
        for r in reasons:
            choices[r] += 1

    r = _post(url, "/v1/completions", {"prompt": "Metrics one", "max_tokens": 7, **no_eos})
    record(r.json()["usage"], [c["finish_reason"] for c in r.json()["choices"]])
    r = _post(url, "/v1/completions", {"prompt": ["Two prompts", "at once here"], "max_tokens": 3, **no_eos})
    record(r.json()["usage"], [c["finish_reason"] for c in r.json()["choices"]])
    r = _post(
        url,
        "/v1/completions",
        {"prompt": "Stop now", "max_tokens": 10, "logit_bias": {str(STOP_TOKEN): 100}, "stop_token_ids": [STOP_TOKEN]},
    )
    assert r.json()["choices"][0]["finish_reason"] == "stop" and r.json()["usage"]["completion_tokens"] == 1
    record(r.json()["usage"], ["stop"])
    r = _post(url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6, **no_eos})
    record(r.json()["usage"], [c["finish_reason"] for c in r.json()["choices"]])
    for path, body in (
        ("/v1/completions", {"prompt": "Streamed", "n": 2, "max_tokens": 5}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Yo"}], "max_tokens": 4}),
    ):
        resp, events = post_stream(
            url, path, {"model": TINY_NAME, **body, **no_eos, "stream": True, "stream_options": {"include_usage": True}}
        )
        assert resp.status_code == 200
        reasons = [c["finish_reason"] for e in events for c in e["choices"] if c.get("finish_reason")]
        record(events[-1]["usage"], reasons)
    n_choices = sum(choices.values())
    assert n_choices == 8 and choices["stop"] == 1

    after = wait_idle(url)  # gauges back to 0 once everything is done
    prompt = sum(u["prompt_tokens"] for u in usages)
    completion = sum(u["completion_tokens"] for u in usages)
    assert delta(before, after, "vllm:prompt_tokens_total") == prompt
    assert delta(before, after, "vllm:generation_tokens_total") == completion
    for reason in ("stop", "length"):
        assert delta(before, after, "vllm:request_success_total", finished_reason=reason) == choices[reason]
    assert delta(before, after, "vllm:request_success_total", finished_reason="abort") == 0
    for hist in (
        "vllm:time_to_first_token_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:request_queue_time_seconds",
    ):
        assert delta(before, after, hist + "_count") == n_choices, hist
        assert delta(before, after, hist + "_bucket", le="+Inf") == n_choices, hist
        assert delta(before, after, hist + "_sum") > 0, hist
    # one inter-token latency per token after each choice's first
    assert delta(before, after, "vllm:inter_token_latency_seconds_count") == completion - n_choices
    assert delta(before, after, "vllm:prefix_cache_queries_total") > 0
    assert (
        delta(before, after, "kvserve:http_requests_total", method="POST", route="/v1/completions", status="200") == 4
    )
    assert (
        delta(before, after, "kvserve:http_requests_total", method="POST", route="/v1/chat/completions", status="200")
        == 2
    )


def test_metrics_count_aborts_and_errors(ops_server):
    url = ops_server.base_url
    before = wait_idle(url)
    body = {"model": TINY_NAME, "prompt": "A long one", "max_tokens": 480, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()  # keep the iterator: dropping it closes the connection
        assert next(lines).startswith("data: ")
        busy = Scrape(url)
        assert busy.value("vllm:num_requests_running") == 1 and busy.value("vllm:kv_cache_usage_perc") > 0
    payload = json.dumps({**body, "stream": False}).encode()
    with socket.create_connection(("127.0.0.1", ops_server.port)) as sock:  # non-streaming, then gone
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        deadline = time.monotonic() + 10
        while Scrape(url).value("vllm:num_requests_running") == 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    assert_error(_post(url, "/v1/completions", {"prompt": "x", "max_tokens": -1}), 400)
    assert_error(httpx.get(url + "/nowhere"), 404)
    after = wait_idle(url)
    assert delta(before, after, "vllm:request_success_total", finished_reason="abort") == 2
    assert delta(before, after, "vllm:request_success_total") == 2
    assert delta(before, after, "vllm:e2e_request_latency_seconds_count") == 2
    assert delta(before, after, "kvserve:http_requests_total", route="/v1/completions", status="400") == 1
    assert delta(before, after, "kvserve:http_requests_total", method="GET", route="other", status="404") == 1
    assert 0 < delta(before, after, "vllm:generation_tokens_total") < 2 * 480


# ---------------------------------------------------------------------------------------------- logs


def json_lines(server: ServerProcess) -> list[dict[str, Any]]:
    lines = [ln for ln in server.output().splitlines() if ln.strip()]
    out = []
    for ln in lines:
        obj = json.loads(ln)  # --log-format json: every line is one JSON object
        assert {"ts", "level", "logger", "msg"} <= set(obj), obj
        out.append(obj)
    return out


def wait_for_line(server: ServerProcess, pred, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        for obj in json_lines(server):
            if pred(obj):
                return obj
        assert time.monotonic() < deadline, "no such log line:\n" + server.output()[-3000:]
        time.sleep(0.1)


def test_request_id_is_echoed(ops_server):
    url = ops_server.base_url
    r = _post(url, "/v1/completions", {"prompt": "Hi", "max_tokens": 2}, {"X-Request-Id": "client-id-42"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "client-id-42"
    r = _post(url, "/v1/completions", {"prompt": "Hi", "max_tokens": 2})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    r = _post(url, "/v1/completions", {"prompt": "Hi", "max_tokens": 2}, {"X-Request-Id": "has spaces\tand tab"})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])  # not echoed into headers and logs as is
    with httpx.stream(
        "POST",
        url + "/v1/chat/completions",
        headers={"X-Request-Id": "stream-id"},
        timeout=30,
        json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "stream": True},
    ) as r:
        assert r.headers["x-request-id"] == "stream-id"
        sse_events(r.read().decode())
    r = _post(url, "/v1/completions", {"model": "nope", "prompt": "Hi"}, {"X-Request-Id": "error-id"})
    assert_error(r, 404, "model_not_found")
    assert r.headers["x-request-id"] == "error-id"
    assert httpx.get(url + "/health", headers={"X-Request-Id": "h"}).headers["x-request-id"] == "h"


def test_json_request_lines_without_prompts(ops_server):
    url = ops_server.base_url
    r = _post(
        url,
        "/v1/completions",
        {"prompt": f"Tell me about {SECRET}", "max_tokens": 5, "ignore_eos": True},
        {"X-Request-Id": "json-line-1"},
    )
    assert r.status_code == 200
    usage = r.json()["usage"]
    resp, events = post_stream(
        url,
        "/v1/chat/completions",
        {
            "model": TINY_NAME,
            "messages": [{"role": "user", "content": SECRET}],
            "max_tokens": 3,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        headers={"X-Request-Id": "json-line-2"},
    )
    assert resp.status_code == 200
    line = wait_for_line(ops_server, lambda o: o.get("request_id") == "json-line-1")
    assert line["logger"] == "kvserve.access" and line["level"] == "info"
    assert line["method"] == "POST" and line["path"] == "/v1/completions" and line["status"] == 200
    assert line["prompt_tokens"] == usage["prompt_tokens"] and line["completion_tokens"] == usage["completion_tokens"]
    assert isinstance(line["latency_ms"], float) and line["latency_ms"] > 0
    assert line["id"] == r.json()["id"] and line["finish_reason"] == "length" and line["stream"] is False
    line = wait_for_line(ops_server, lambda o: o.get("request_id") == "json-line-2")
    assert line["path"] == "/v1/chat/completions" and line["stream"] is True
    assert line["prompt_tokens"] == events[-1]["usage"]["prompt_tokens"]
    assert line["completion_tokens"] == events[-1]["usage"]["completion_tokens"]
    assert_error(_post(url, "/v1/completions", {"prompt": SECRET, "max_tokens": 0}, {"X-Request-Id": "bad-1"}), 400)
    line = wait_for_line(ops_server, lambda o: o.get("request_id") == "bad-1")
    assert line["status"] == 400
    assert SECRET not in ops_server.output()
    assert all("prompt" not in o for o in json_lines(ops_server))


def test_engine_stats_lines_while_busy(ops_server):
    url = ops_server.base_url
    wait_idle(url)
    r = _post(url, "/v1/completions", {"prompt": "Busy", "n": 4, "max_tokens": 400, "ignore_eos": True})
    assert r.status_code == 200
    line = wait_for_line(ops_server, lambda o: o.get("logger") == "kvserve.stats" and o.get("running", 0) > 0)
    assert {"waiting", "kv_usage_pct", "prompt_tokens_per_s", "generation_tokens_per_s"} <= set(line)
    assert line["generation_tokens_per_s"] > 0 and 0 < line["kv_usage_pct"] <= 100


# ---------------------------------------------------------------------------------------------- shutdown


class _Streamer(threading.Thread):
    """POST in the background; `started` is set once the first response bytes arrive."""

    def __init__(self, url: str, body: dict) -> None:
        super().__init__(daemon=True)
        self.url, self.body = url, {"model": TINY_NAME, **body}
        self.started = threading.Event()
        self.status: int | None = None
        self.raw = ""

    def run(self) -> None:
        with httpx.stream("POST", self.url + "/v1/completions", json=self.body, timeout=60) as r:
            self.status = r.status_code
            chunks = []
            for chunk in r.iter_bytes():
                chunks.append(chunk)
                self.started.set()
            self.raw = b"".join(chunks).decode()
        self.started.set()


def test_sigterm_drains_then_exits_0(tiny_llama_dir):
    # Two sequences at a time: the short request keeps one slot, the long ones queue behind the other.
    timeout = 4
    server = ServerProcess(
        [tiny_llama_dir, *TINY_ARGS, "--served-model-name", TINY_NAME, "--max-num-seqs", "2"],
        env={"KVSERVE_SHUTDOWN_TIMEOUT": str(timeout), "KVSERVE_LOG_PROMPTS": "true"},
    )
    try:
        url = server.wait_ready().base_url
        short = _Streamer(url, {"prompt": f"short {SECRET}", "max_tokens": 250, "ignore_eos": True, "stream": True})
        long = _Streamer(url, {"prompt": "long", "n": 16, "max_tokens": 500, "ignore_eos": True, "stream": True})
        plain = _Streamer(url, {"prompt": "plain", "n": 4, "max_tokens": 500, "ignore_eos": True})
        short.start()
        assert short.started.wait(30)
        long.start()
        assert long.started.wait(30)
        plain.start()
        deadline = time.monotonic() + 60  # generous: CI machines can be loaded
        while Scrape(url).value("kvserve:requests_in_flight") < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert short.is_alive(), "the short request finished before SIGTERM; make it longer"

        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        # Still listening while draining: a 503 in the envelope, not a refused connection.
        assert_error(_post(url, "/v1/completions", {"prompt": "new", "max_tokens": 2}), 503, "draining")
        assert_error(httpx.get(url + "/health"), 503, "draining")
        rc = server.proc.wait(timeout + 15)
        elapsed = time.monotonic() - t0
        for t in (short, long, plain):
            t.join(10)
        assert rc == 0, server.output()[-3000:]
        assert elapsed < timeout + 8, elapsed

        # The short request finished normally during the drain.
        assert short.status == 200
        events = sse_events(short.raw)
        assert all("error" not in e for e in events)
        assert [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]] == ["length"]
        # The long ones were still running at the timeout: a clean end (error event, then [DONE]) and a 503.
        assert long.status == 200
        events = sse_events(long.raw)
        assert events[-1]["error"]["code"] == "shutdown_timeout"
        assert plain.status == 503
        body = json.loads(plain.raw)
        assert body["error"]["code"] == "shutdown_timeout" and body["error"]["type"] == "service_unavailable_error"
        log = server.output()
        assert f"timeout of {timeout}s reached" in log
        assert SECRET in log  # KVSERVE_LOG_PROMPTS=true puts prompts into the request lines
    finally:
        server.stop()
