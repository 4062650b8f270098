"""Faults inside the engine. A forward pass that raises fails only the requests of that step (their blocks
freed, a 500 `engine_step_failed` in the envelope or as the stream's error event) and the engine goes on
serving; a failure that kills the engine thread answers every waiter, turns /health to 503 and makes the
server exit with status 1 so that an orchestrator restarts it. The faults are injected by a
`sitecustomize` module on the server's PYTHONPATH (a test hook; the server has no such flag)."""

from __future__ import annotations

import asyncio
import json
import textwrap
import time

import httpx
import pytest
from http_server import TINY_ARGS, TINY_NAME, ServerProcess

from model import LLM, AsyncEngine, EngineConfig, SamplingParams, StepFailedError

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)

HOOK = textwrap.dedent(
    """
    import os

    def _wrap(cls, name, fail_at):
        original = getattr(cls, name)
        calls = [0]

        def wrapped(self, *args, **kwargs):
            calls[0] += 1
            if calls[0] == fail_at:
                raise RuntimeError("injected fault")
            return original(self, *args, **kwargs)

        setattr(cls, name, wrapped)

    if os.environ.get("KVSERVE_TEST_FAIL_STEP"):
        from model.engine.runner import ModelRunner
        _wrap(ModelRunner, "execute", int(os.environ["KVSERVE_TEST_FAIL_STEP"]))
    if os.environ.get("KVSERVE_TEST_FAIL_SCHEDULE"):
        from model.engine.scheduler import Scheduler
        _wrap(Scheduler, "schedule", int(os.environ["KVSERVE_TEST_FAIL_SCHEDULE"]))
    """
)


def _fail_once(runner, at_call: int) -> None:
    original, calls = runner.execute, [0]

    def execute(scheduled):
        calls[0] += 1
        if calls[0] == at_call:
            raise RuntimeError("injected fault")
        return original(scheduled)

    runner.execute = execute


def test_a_failed_step_aborts_only_its_requests(tiny_llama_dir):
    llm = LLM(tiny_llama_dir, dtype="float32", device="cpu", kv_cache_memory=4 * 1024**2)
    engine = llm.engine
    expected = llm.generate([[1, 5, 9]], GREEDY)[0].token_ids
    engine.add_request("a", [1, 2, 3, 4], GREEDY)
    engine.step()
    _fail_once(engine.runner, 1)
    engine.add_request("b", [1, 7, 7], GREEDY)
    with pytest.raises(StepFailedError) as info:
        engine.step()
    assert info.value.request_ids == ["a", "b"]
    assert not engine.has_unfinished_requests()
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    assert llm.generate([[1, 5, 9]], GREEDY)[0].token_ids == expected  # the engine still works


def test_async_engine_answers_the_failed_requests_and_lives_on(tiny_llama_dir):
    async def run() -> None:
        engine = AsyncEngine(EngineConfig(model=tiny_llama_dir, dtype="float32", device="cpu",
                                          kv_cache_memory=4 * 1024**2))  # fmt: skip
        engine.start()
        try:
            _fail_once(engine._engine.runner, 3)
            stream = await engine.submit([1, 2, 3], GREEDY)
            with pytest.raises(StepFailedError):
                async for _ in stream:
                    pass
            outputs = [o async for o in await engine.submit([1, 5, 9], GREEDY)]
            assert outputs[-1].finished and len(outputs[-1].token_ids) == 12
            assert not engine.is_dead
        finally:
            engine.shutdown()

    asyncio.run(run())


@pytest.fixture()
def hook_dir(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(HOOK)
    return str(tmp_path)


def _events(r: httpx.Response) -> list[dict | str]:
    out: list[dict | str] = []
    for line in r.iter_lines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


@pytest.mark.slow
def test_a_failed_step_over_http(tiny_llama_dir, hook_dir):
    server = ServerProcess([tiny_llama_dir, "--served-model-name", TINY_NAME, *TINY_ARGS],
                           env={"PYTHONPATH": hook_dir, "KVSERVE_TEST_FAIL_STEP": "4"})  # fmt: skip
    try:
        server.wait_ready()
        body = {"model": TINY_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20,
                "ignore_eos": True, "stream": True}  # fmt: skip
        with httpx.stream("POST", server.base_url + "/v1/chat/completions", json=body, timeout=60) as r:
            assert r.status_code == 200
            events = _events(r)
        assert events[-1] == "[DONE]"
        error = events[-2]["error"]
        assert error["code"] == "engine_step_failed" and error["type"] == "server_error"
        for _ in range(3):  # the engine goes on serving
            r = httpx.post(server.base_url + "/v1/completions", json={"prompt": "x", "max_tokens": 5}, timeout=60)
            assert r.status_code == 200, r.text
        assert httpx.get(server.base_url + "/health").status_code == 200
        server.wait_idle()
        assert "injected fault" in server.output() and "Traceback" in server.output()  # logged, not sent
    finally:
        server.stop()


@pytest.mark.slow
def test_a_dead_engine_answers_and_the_server_exits(tiny_llama_dir, hook_dir):
    server = ServerProcess([tiny_llama_dir, "--served-model-name", TINY_NAME, *TINY_ARGS],
                           env={"PYTHONPATH": hook_dir, "KVSERVE_TEST_FAIL_SCHEDULE": "3"})  # fmt: skip
    try:
        server.wait_ready()
        r = httpx.post(server.base_url + "/v1/completions", json={"prompt": "x", "max_tokens": 30}, timeout=60)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_dead", r.text
        deadline = time.monotonic() + 30
        while server.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert server.proc.returncode == 1, server.output()[-2000:]
        assert "the engine died; the server exits" in server.output()
    finally:
        server.stop()
