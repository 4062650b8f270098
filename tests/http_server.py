"""Real `kvserve serve` processes on 127.0.0.1 for the HTTP tests, plus small client helpers.

`tiny_server` (session): the tiny random Llama from conftest's `tiny_llama_dir`, served as
`tiny-llama`. Test modules import the fixtures they use from here; processes are cached by key,
so a server is started once per session even when several modules import its fixture.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Iterator

import httpx
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_NAME = "tiny-llama"
# fp32 on one thread keeps the tiny model's numbers identical from run to run and leaves a core free.
TINY_ARGS = ["--dtype", "float32", "--device", "cpu", "--kv-cache-memory", "8MiB", "--num-threads", "1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m app.main serve ARGS --port <free port>` with its output in a temp file."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "app.main", "serve", *args, "--port", str(self.port)]
        self._log = tempfile.NamedTemporaryFile("w+", prefix="kvserve-", suffix=".log", delete=False)
        full_env = {**os.environ, **(env or {})}
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, env=full_env)
        self._ready = False

    def output(self) -> str:
        with open(self._log.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_ready(self, timeout: float = 120.0) -> "ServerProcess":
        if self._ready:
            return self
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()[-4000:]}")
            try:
                if httpx.get(self.base_url + "/health", timeout=2).status_code == 200:
                    self._ready = True
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.output()[-4000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        os.unlink(self._log.name)

    # ---- helpers ---------------------------------------------------------------------------------

    def metrics(self, headers: dict[str, str] | None = None) -> dict[str, float]:
        """Prometheus samples by metric name (labels dropped; one model per server)."""
        r = httpx.get(self.base_url + "/metrics", headers=headers, timeout=10)
        r.raise_for_status()
        values: dict[str, float] = {}
        for line in r.text.splitlines():
            if not line or line.startswith("#"):
                continue
            name_labels, _, value = line.rpartition(" ")
            name = name_labels.split("{", 1)[0]
            values[name] = values.get(name, 0.0) + float(value)
        return values

    def wait_idle(self, timeout: float = 10.0, headers: dict[str, str] | None = None) -> dict[str, float]:
        """Poll /metrics until no request runs or waits and every KV block is free."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics(headers)
            if (
                m["vllm:num_requests_running"] == 0
                and m["vllm:num_requests_waiting"] == 0
                and m["vllm:kv_cache_usage_perc"] == 0
                and m["kvserve:requests_in_flight"] == 0
            ):
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"server not idle after {timeout}s: {m}")
            time.sleep(0.05)


_servers: dict[str, ServerProcess] = {}


def shared_server(key: str, args: list[str], env: dict[str, str] | None = None) -> ServerProcess:
    """Start (once per session) the server known as `key`; does not wait for it to be ready."""
    if key not in _servers:
        _servers[key] = ServerProcess(args, env)
    return _servers[key]


def stop_all() -> None:
    while _servers:
        _servers.popitem()[1].stop()


@pytest.fixture(scope="session")
def tiny_server(tiny_llama_dir) -> Iterator[ServerProcess]:
    server = shared_server(
        "tiny", [tiny_llama_dir, *TINY_ARGS, "--served-model-name", TINY_NAME, "--max-body-bytes", "256KiB"]
    )
    try:
        yield server.wait_ready()
    finally:
        stop_all()


@pytest.fixture(scope="session")
def base_url(tiny_server) -> str:
    return tiny_server.base_url


# ---- SSE parsing -------------------------------------------------------------------------------------


def sse_events(raw: str) -> list[Any]:
    """Parse an SSE body as sent by kvserve: `data: <json>\\n\\n` frames ending with `data: [DONE]`.

    Asserts the framing on the way: every event is exactly one `data:` line, and [DONE] comes last.
    """
    assert raw.endswith("data: [DONE]\n\n"), raw[-200:]
    events = []
    for block in raw.split("\n\n")[:-1]:
        lines = [ln for ln in block.split("\n") if not ln.startswith(":")]  # ':' lines are keep-alive pings
        if not lines:
            continue
        assert len(lines) == 1 and lines[0].startswith("data: "), block
        payload = lines[0][len("data: ") :]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    return events[:-1]


def post_stream(base_url: str, path: str, body: dict, headers: dict | None = None) -> tuple[httpx.Response, list]:
    with httpx.stream("POST", base_url + path, json=body, headers=headers, timeout=60) as r:
        raw = r.read().decode("utf-8")
    if r.status_code != 200:
        return r, [json.loads(raw)]
    assert r.headers["content-type"].startswith("text/event-stream")
    return r, sse_events(raw)


def assert_error(
    r: httpx.Response, status: int, code: str | None = None, param: str | None = None, type: str | None = None
) -> dict:
    """The response is `status` with OpenAI's error envelope (and the given code / param / type)."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    err = body["error"]
    assert isinstance(err["message"], str) and err["message"], body
    if code is not None:
        assert err["code"] == code, body
    if param is not None:
        assert err["param"] == param, body
    if type is not None:
        assert err["type"] == type, body
    return err
