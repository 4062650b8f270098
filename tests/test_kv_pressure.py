"""A KV pool far smaller than the load: 8 concurrent requests of ~500 tokens each into a pool of ~2000 token
slots. Every request completes with all its tokens (they queue, or are preempted and recomputed), the
preemptions show in /metrics, nothing fails, and the pool is empty afterwards."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from http_server import TINY_NAME, ServerProcess

pytestmark = pytest.mark.slow


def test_an_exhausted_kv_pool_queues_and_preempts_but_never_fails(tiny_llama_dir):
    args = [tiny_llama_dir, "--served-model-name", TINY_NAME, "--dtype", "float32", "--device", "cpu",
            "--num-threads", "1", "--kv-cache-memory", "1MiB", "--max-num-seqs", "8"]  # fmt: skip
    server = ServerProcess(args)
    try:
        server.wait_ready()
        blocks = server.metrics()["kvserve:kv_cache_blocks"]
        prompts = [[1] + [(7 * i + j) % 250 + 3 for j in range(380)] for i in range(8)]

        async def one(client: httpx.AsyncClient, prompt: list[int]) -> httpx.Response:
            body = {"prompt": prompt, "max_tokens": 120, "ignore_eos": True, "temperature": 0}
            return await client.post(server.base_url + "/v1/completions", json=body, timeout=300)

        async def run() -> list[httpx.Response]:
            async with httpx.AsyncClient() as client:
                return await asyncio.gather(*(one(client, p) for p in prompts))

        answers = asyncio.run(run())
        assert all(r.status_code == 200 for r in answers), [r.text for r in answers if r.status_code != 200]
        assert all(r.json()["usage"]["completion_tokens"] == 120 for r in answers)
        assert blocks * 16 < 8 * 500  # the pool really was too small for all of them at once
        m = server.wait_idle(timeout=30)
        assert m["vllm:num_preemptions_total"] > 0 or m["vllm:request_queue_time_seconds_sum"] > 0
        assert m["kvserve:kv_cache_free_blocks"] == blocks
    finally:
        server.stop()


def test_the_engine_drains_a_pool_too_small_for_its_load(tiny_llama_dir):
    """The regression the HTTP test found: a preempted sequence re-admitted from the prefix cache used to
    keep the cached blocks it took while it waited, until every sequence waited and none ran (a deadlock)."""
    from model import LLM, SamplingParams

    llm = LLM(tiny_llama_dir, dtype="float32", device="cpu", kv_cache_memory=1024 * 1024, max_num_seqs=8)
    engine = llm.engine
    params = SamplingParams(max_tokens=120, ignore_eos=True, temperature=0)
    for i in range(8):
        engine.add_request(str(i), [1] + [(7 * i + j) % 250 + 3 for j in range(380)], params)
    done = {}
    for _ in range(5000):
        if not engine.has_unfinished_requests():
            break
        for out in engine.step():
            if out.finished:
                done[out.request_id] = len(out.outputs[0].token_ids)
    assert done == {str(i): 120 for i in range(8)}
    assert engine.scheduler.num_preemptions_total > 0
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
