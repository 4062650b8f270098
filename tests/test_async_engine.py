"""AsyncEngine: background engine thread, concurrent streams, abort on early exit, engine death."""

from __future__ import annotations

import asyncio
import time

import pytest

from model import AsyncEngine, EngineConfig, EngineDeadError, LLMEngine, RequestAbortedError, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)


@pytest.fixture()
def async_engine(tiny_llama_dir):
    engine = AsyncEngine(EngineConfig(model=tiny_llama_dir, dtype="float32", device="cpu", kv_cache_memory=8 * 1024**2))
    engine.start()
    yield engine
    engine.shutdown()


def wait_idle(engine: AsyncEngine, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = engine.stats()  # the snapshot the engine thread publishes
        if stats.num_running == stats.num_waiting == 0 and stats.num_free_blocks == stats.num_blocks:
            return
        time.sleep(0.02)
    raise AssertionError(f"engine not idle: {engine.stats()}")


async def collect(engine: AsyncEngine, prompt, params, rid=None):
    outs = [o async for o in engine.generate(prompt, params, rid)]
    return outs


def test_concurrent_streams_match_offline(async_engine, tiny_llm):
    prompts = [[5, 6, 7], [100, 200, 30, 40, 50], [9] * 30]
    expected = [o.token_ids for o in tiny_llm.generate(prompts, GREEDY)]

    async def main():
        return await asyncio.gather(*(collect(async_engine, p, GREEDY) for p in prompts))

    results = asyncio.run(main())
    for outs, exp in zip(results, expected):
        assert outs[-1].finished and outs[-1].token_ids == exp
        # The deltas add up to the whole.
        assert sum((o.outputs[0].new_token_ids for o in outs), []) == exp
        assert "".join(o.outputs[0].new_text for o in outs) == outs[-1].text
    wait_idle(async_engine)


def test_leaving_early_aborts_and_frees_blocks(async_engine):
    async def main():
        params = SamplingParams(max_tokens=400, ignore_eos=True)
        gen = async_engine.generate([5, 6, 7, 8], params, "leaver")
        async for out in gen:
            if len(out.token_ids) >= 3:
                break
        await gen.aclose()

    asyncio.run(main())
    wait_idle(async_engine)


def test_duplicate_and_invalid_requests(async_engine):
    async def main():
        with pytest.raises(ValueError, match="vocabulary"):
            await collect(async_engine, [1, 99999], GREEDY)
        with pytest.raises(ValueError, match="context limit"):
            await collect(async_engine, [3] * 1000, GREEDY)

    asyncio.run(main())
    wait_idle(async_engine)


def test_engine_death_is_reported(tiny_llama_dir):
    """A failure outside a forward pass (here the scheduler) kills the engine: every request after it gets
    EngineDeadError and `on_dead` is called (a failed forward pass only fails its step: tests/test_faults.py)."""
    core = LLMEngine(EngineConfig(model=tiny_llama_dir, dtype="float32", device="cpu", kv_cache_memory=8 * 1024**2))
    engine = AsyncEngine(engine=core)
    died = []

    def boom(*_a, **_k):
        raise RuntimeError("simulated scheduler failure")

    core.scheduler.schedule = boom
    engine.on_dead = lambda: died.append(True)
    engine.start()
    try:

        async def main():
            with pytest.raises(EngineDeadError):
                await collect(engine, [1, 2, 3], GREEDY)
            with pytest.raises(EngineDeadError):
                await collect(engine, [1, 2, 3], GREEDY)

        asyncio.run(main())
        deadline = time.monotonic() + 5  # on_dead runs on the engine thread right after the waiters are answered
        while not died and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.is_dead and died == [True]
    finally:
        engine.shutdown()


def test_abort_all_ends_every_stream(async_engine):
    """The shutdown hook: every open stream raises RequestAbortedError and its blocks are freed."""

    async def main():
        params = SamplingParams(max_tokens=400, ignore_eos=True)
        started = asyncio.Event()

        async def consume(prompt):
            with pytest.raises(RequestAbortedError, match="going away"):
                async for _ in async_engine.generate(prompt, params):
                    started.set()

        tasks = [asyncio.ensure_future(consume([5 + i, 6, 7])) for i in range(3)]
        await started.wait()
        assert async_engine.abort_all("going away") == 3
        await asyncio.wait_for(asyncio.gather(*tasks), 10)

    asyncio.run(main())
    wait_idle(async_engine)


def test_outputs_carry_engine_timestamps(async_engine):
    outs = asyncio.run(collect(async_engine, [5, 6, 7], GREEDY))
    for out in outs:
        m = out.metrics
        assert m is not None and m.first_scheduled_time is not None and m.first_token_time is not None
        assert m.arrival_time <= m.first_scheduled_time <= m.first_token_time
    assert len({(o.metrics.arrival_time, o.metrics.first_scheduled_time) for o in outs}) == 1
    wait_idle(async_engine)
