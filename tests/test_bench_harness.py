"""The serving benchmark (`python -m bench`) against a fake OpenAI-compatible streaming server.

The fake streams one chunk per token after known delays, then a usage chunk, so counts and timings
can be checked. Run as a script it serves on a port (used to test starting a baseline command):
    python tests/test_bench_harness.py --port 8123 [--reject-ignore-eos]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import threading
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

FIRST_DELAY = 0.05  # seconds before the first token
TOKEN_DELAY = 0.01  # seconds between tokens
MODEL = "fake-model"


def create_fake_app(reject_ignore_eos: bool = False, fail_max_tokens: int | None = None):
    app = FastAPI()
    app.state.received = []

    def err(status: int, message: str) -> JSONResponse:
        return JSONResponse(
            {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}},
            status_code=status,
        )

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "test"}]}

    async def generate(request: Request, chat: bool):
        body = await request.json()
        app.state.received.append(body)
        if body.get("model") != MODEL:
            return err(404, f"The model '{body.get('model')}' does not exist")
        if reject_ignore_eos and "ignore_eos" in body:
            return err(422, "Unexpected fields in the request: {'ignore_eos'}")
        if fail_max_tokens is not None and body.get("max_tokens") == fail_max_tokens:
            return err(500, "injected failure")
        k = int(body.get("max_tokens") or 16)
        usage = (body.get("stream_options") or {}).get("include_usage")
        obj = "chat.completion.chunk" if chat else "text_completion"

        def frame(choices, **extra) -> str:
            return (
                "data: " + json.dumps({"id": "x", "object": obj, "model": MODEL, "choices": choices, **extra}) + "\n\n"
            )

        def choice(text: str | None, finish: str | None = None) -> dict:
            if chat:
                delta = {"content": text} if text is not None else {}
                return {"index": 0, "delta": delta, "finish_reason": finish}
            return {"index": 0, "text": text or "", "finish_reason": finish}

        async def stream():
            if chat:
                yield frame([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            await asyncio.sleep(FIRST_DELAY)
            for i in range(k):
                if i:
                    await asyncio.sleep(TOKEN_DELAY)
                yield frame([choice(f"w{i} ")])
            yield frame([choice(None, "length")])
            if usage:
                yield frame([], usage={"prompt_tokens": 11, "completion_tokens": k, "total_tokens": 11 + k})
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await generate(request, True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, False)

    return app


class FakeServer:
    """The fake app served by uvicorn on a thread, on a socket bound to a free port."""

    def __init__(self, **kwargs):
        import uvicorn

        self.app = create_fake_app(**kwargs)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "FakeServer":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "fake server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    @property
    def received(self) -> list[dict]:
        return self.app.state.received


# ------------------------------------------------------------------------------------------ tests


def test_lengths_and_percentiles():
    import pytest

    from bench.report import percentile
    from bench.workload import IntRange, make_requests

    assert IntRange.parse("128") == IntRange(128, 128)
    assert IntRange.parse("4:9") == IntRange(4, 9)
    for bad in ("x", "9:4", "-1"):
        with pytest.raises(ValueError):
            IntRange.parse(bad)
    reqs = make_requests(50, IntRange(5, 10), IntRange(4, 9), seed=1)
    assert reqs == make_requests(50, IntRange(5, 10), IntRange(4, 9), seed=1)  # reproducible
    assert {r.max_tokens for r in reqs} <= set(range(4, 10)) and len({r.max_tokens for r in reqs}) > 1
    assert all(5 <= len(r.prompt.split()) - 5 <= 10 for r in reqs)  # "Write a long story about" + words
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile(range(101), 99) == 99


def test_sweep_counts_and_timings():
    from bench.runner import SweepConfig, run_sweep
    from bench.workload import IntRange

    cfg = SweepConfig(
        concurrency=[1, 4],
        max_tokens=IntRange(8, 8),
        prompt_words=IntRange(5, 5),
        warmup=1,
        timeout=30,
        quiet=True,
        keep_requests=True,
    )
    with FakeServer() as fake:
        run = asyncio.run(run_sweep("fake", fake.base_url, cfg))
    assert run["error"] is None and run["model"] == MODEL and run["ignore_eos"] is True
    # probe + warm-up + 2 + 8 requests, every one streaming with usage, ignore_eos and max_tokens
    assert len(fake.received) == 1 + 1 + 2 + 8
    sweep_bodies = fake.received[2:]
    assert all(
        b["stream"]
        and b["stream_options"] == {"include_usage": True}
        and b["ignore_eos"] is True
        and b["temperature"] == 0
        and b["max_tokens"] == 8
        and b["messages"][0]["role"] == "user"
        for b in sweep_bodies
    )
    assert len({b["messages"][0]["content"] for b in sweep_bodies}) > 1
    by_c = {lv["concurrency"]: lv for lv in run["levels"]}
    assert set(by_c) == {1, 4}
    for c, lv in by_c.items():
        assert lv["requests"] == lv["ok"] == 2 * c and lv["errors"] == 0
        assert lv["output_tokens"] == 8 * 2 * c and lv["output_tokens_mean"] == 8
        assert lv["prompt_tokens_mean"] == 11 and lv["usage_missing"] == 0
        assert FIRST_DELAY * 0.9 <= lv["ttft_ms_p50"] / 1000 <= FIRST_DELAY + 0.5
        assert TOKEN_DELAY * 0.9 <= lv["itl_ms_p50"] / 1000 <= TOKEN_DELAY + 0.1
        assert lv["itl_ms_p99"] >= lv["itl_ms_p50"] and lv["ttft_ms_p99"] >= lv["ttft_ms_p50"]
        assert TOKEN_DELAY * 0.9 <= lv["tpot_ms_p50"] / 1000 <= TOKEN_DELAY + 0.1
        expected_e2e = FIRST_DELAY + 7 * TOKEN_DELAY
        assert expected_e2e * 0.9 <= lv["e2e_ms_p50"] / 1000 <= expected_e2e + 0.5
        assert lv["output_tok_s"] == lv["output_tokens"] / lv["duration_s"]
        details = lv["requests_detail"]
        assert all(len(d["itl"]) == 7 and d["text_chunks"] == 8 for d in details)  # role chunk not counted
    # C=4 runs 4 streams at once: its level takes about as long as C=1 with a quarter of the requests
    assert by_c[4]["duration_s"] < 2.5 * by_c[1]["duration_s"]


def test_completions_random_lengths_rejected_ignore_eos_and_errors():
    from bench.runner import SweepConfig, run_sweep
    from bench.workload import IntRange

    cfg = SweepConfig(
        concurrency=[3],
        num_requests=12,
        endpoint="completions",
        max_tokens=IntRange(2, 5),
        prompt_words=IntRange(1, 8),
        warmup=0,
        timeout=30,
        quiet=True,
        keep_requests=True,
    )
    with FakeServer(reject_ignore_eos=True, fail_max_tokens=3) as fake:
        run = asyncio.run(run_sweep("fake", fake.base_url, cfg))
    assert run["error"] is None and run["ignore_eos"] is False  # probe got 422, retried without it
    bodies = fake.received[2:]
    assert len(bodies) == 12 and all("prompt" in b and "ignore_eos" not in b for b in bodies)
    lv = run["levels"][0]
    failing = sum(b["max_tokens"] == 3 for b in bodies)
    assert 0 < failing < 12
    assert lv["errors"] == failing and lv["ok"] == 12 - failing
    assert lv["output_tokens"] == sum(b["max_tokens"] for b in bodies if b["max_tokens"] != 3)
    assert any("HTTP 500" in e for e in lv["error_samples"])
    # a wrong model name fails the probe: the run reports it instead of a sweep
    with FakeServer() as fake:
        bad = asyncio.run(run_sweep("fake", fake.base_url, cfg, model="nope"))
    assert bad["levels"] == [] and "404" in bad["error"]


def test_cli_sweep_with_started_baseline(tmp_path, capsys):
    from bench.__main__ import main

    out_json = tmp_path / "out.json"
    plot = tmp_path / "bench.png"
    script = os.path.abspath(__file__)
    with FakeServer() as fake:
        rc = main(
            [
                "--base-url",
                fake.base_url,
                "--name",
                "inproc",
                "--concurrency",
                "1",
                "2",
                "--num-requests",
                "4",
                "--max-tokens",
                "4",
                "--prompt-words",
                "5",
                "--warmup",
                "1",
                "--baseline",
                f"{{python}} {script} --port {{port}}",
                "--baseline-name",
                "started",
                "--startup-timeout",
                "60",
                "--timeout",
                "30",
                "--log-dir",
                str(tmp_path / "logs"),
                "--json",
                str(out_json),
                "--plot",
                str(plot),
                "--quiet",
            ]
        )
    assert rc == 0
    text = capsys.readouterr().out
    assert "out tok/s" in text and "TTFT p50" in text and "Side by side" in text and "inproc/started" in text
    doc = json.loads(out_json.read_text())
    assert doc["meta"]["command"].startswith("python -m bench ")
    names = [s["name"] for s in doc["servers"]]
    assert names == ["inproc", "started"]
    for s in doc["servers"]:
        assert s["error"] is None
        assert [lv["concurrency"] for lv in s["levels"]] == [1, 2]
        assert all(lv["ok"] == 4 and lv["output_tokens"] == 16 for lv in s["levels"])
    started = doc["servers"][1]
    assert started["ready_s"] is not None and started["exit_code"] in (0, -15) and "--port" in started["command"]
    assert len(doc["comparison"]) == 2 and all(r["output_tok_s"] > 0 for r in doc["comparison"])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="serve the fake OpenAI-compatible streaming server")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--reject-ignore-eos", action="store_true")
    a = ap.parse_args()
    import uvicorn

    uvicorn.run(
        create_fake_app(reject_ignore_eos=a.reject_ignore_eos), host="127.0.0.1", port=a.port, log_level="warning"
    )


def test_llama_server_is_found_from_env_path_or_cache(tmp_path, monkeypatch):
    import subprocess
    import sys

    from bench import llama_server

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("LLAMA_SERVER", raising=False)
    monkeypatch.setenv("KVSERVE_CACHE", str(tmp_path / "cache"))
    assert llama_server.find() is None
    built = tmp_path / "cache" / "llama.cpp" / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp" / "build" / "bin"
    built.mkdir(parents=True)
    (built / "llama-server").write_text("#!/bin/sh\n")
    (built / "llama-server").chmod(0o755)
    assert llama_server.find() == built / "llama-server"
    other = tmp_path / "my-llama-server"
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    monkeypatch.setenv("LLAMA_SERVER", str(other))
    assert llama_server.find() == other
    env = {"PATH": "/usr/bin:/bin", "KVSERVE_CACHE": str(tmp_path / "nothing"), "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "bench.llama_server"], env=env, capture_output=True, text=True)
    assert done.returncode == 1 and "run with --build" in done.stderr
