"""vLLM's router (`vllm-router`, the Rust router on PyPI) in front of two real kvserve workers on 127.0.0.1:
it finds them healthy through kvserve's /health and /v1/models, routes a shared-prefix workload to one worker
under cache-aware routing (the prefix-cache hits are in that worker's /metrics, the other served nothing),
streams through, and after one worker is killed fails over: later requests succeed on the other."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import httpx
import pytest
from http_server import TINY_ARGS, TINY_NAME, ServerProcess, free_port

pytestmark = pytest.mark.slow
SHARED = "You are a helpful assistant who answers in one short sentence. " * 4


def _router_binary() -> str:
    found = shutil.which("vllm-router") or os.path.join(os.path.dirname(sys.executable), "vllm-router")
    if not os.path.exists(found):
        pytest.fail("vllm-router is not installed (it is in the test extra)")
    return found


@pytest.fixture(scope="module")
def cluster(tiny_llama_dir):
    workers = [ServerProcess([tiny_llama_dir, "--served-model-name", TINY_NAME, *TINY_ARGS]) for _ in range(2)]
    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", prefix="vllm-router-", suffix=".log", delete=False)
    router = None
    try:
        for w in workers:
            w.wait_ready(timeout=120)
        cmd = [_router_binary(), "--host", "127.0.0.1", "--port", str(port), "--policy", "cache_aware",
               "--worker-urls", *(w.base_url for w in workers), "--cb-failure-threshold", "1",
               "--health-check-interval-secs", "1"]  # fmt: skip
        router = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if router.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"vllm-router did not start:\n{log.read()[-3000:]}")
            time.sleep(0.2)
        yield base, workers
    finally:
        if router is not None:
            router.terminate()
            router.wait(10)
        for w in workers:
            w.stop()
        log.close()
        os.unlink(log.name)


def _served(worker: ServerProcess) -> float:
    m = worker.metrics()
    return m["vllm:request_success_total"]


def test_models_through_the_router(cluster):
    base, _ = cluster
    r = httpx.get(base + "/v1/models", timeout=10)
    assert r.status_code == 200 and r.json()["data"][0]["id"] == TINY_NAME


def test_a_shared_prefix_lands_on_one_worker(cluster):
    base, workers = cluster
    before = [_served(w) for w in workers]
    for i in range(8):
        r = httpx.post(base + "/v1/completions", json={"model": TINY_NAME, "prompt": SHARED + f"Question {i}?",
                                                        "max_tokens": 4}, timeout=60)  # fmt: skip
        assert r.status_code == 200, r.text
    with httpx.stream("POST", base + "/v1/chat/completions", timeout=60,
                      json={"model": TINY_NAME, "messages": [{"role": "user", "content": SHARED}], "max_tokens": 8,
                            "stream": True}) as r:  # fmt: skip
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    served = [_served(w) - b for w, b in zip(workers, before)]
    assert sorted(served) == [0, 9], served
    busy = workers[served.index(9)]
    assert busy.metrics()["vllm:prefix_cache_hits_total"] > 0  # the shared prefix came from its cache


def test_failover_when_a_worker_dies(cluster):
    base, workers = cluster
    survivor_before = _served(workers[1])
    workers[0].proc.kill()
    workers[0].proc.wait(10)
    results = []
    for i in range(12):
        r = httpx.post(base + "/v1/completions", json={"model": TINY_NAME, "prompt": f"{SHARED} after {i}",
                                                        "max_tokens": 4}, timeout=60)  # fmt: skip
        results.append(r.status_code)
    # The router may fail the request that finds the dead worker (its circuit breaker opens on it); every
    # later one goes to the survivor.
    first_ok = results.index(200)
    assert first_ok <= 2 and all(code == 200 for code in results[first_ok:]), results
    assert _served(workers[1]) - survivor_before >= len(results) - first_ok
