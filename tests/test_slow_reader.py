"""A client that opens a big stream and never reads it: other requests are served as usual meanwhile, and
after `--stream-send-timeout` the stalled stream is dropped with one log line: its engine request ends,
its KV blocks and its admission slot come back (the server is idle again), no traceback."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest
from http_server import TINY_ARGS, TINY_NAME, ServerProcess

pytestmark = pytest.mark.slow


def test_a_stalled_reader_blocks_nobody_and_is_dropped(tiny_llama_dir):
    server = ServerProcess([tiny_llama_dir, "--served-model-name", TINY_NAME, *TINY_ARGS, "--stream-send-timeout", "2"])
    try:
        server.wait_ready()
        body = json.dumps(
            {
                "model": TINY_NAME,
                "prompt": "x",
                "max_tokens": 400,
                "ignore_eos": True,
                "n": 16,
                "logprobs": 20,
                "stream": True,
            }
        ).encode()  # fmt: skip: ~10 MB of events
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", server.port))
        stalled.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
        time.sleep(0.5)  # the stream is under way; this client reads nothing from here on
        for _ in range(3):
            t0 = time.monotonic()
            r = httpx.post(server.base_url + "/v1/completions", json={"prompt": "hi", "max_tokens": 8}, timeout=30)
            assert r.status_code == 200 and time.monotonic() - t0 < 10
        assert server.metrics()["kvserve:requests_in_flight"] >= 1  # the stalled stream still holds its slot
        server.wait_idle(timeout=30)  # dropped after the send timeout: slot, blocks, running all back to 0
        log = server.output()
        assert "stopped reading for 2s: the stream was dropped" in log and "Traceback" not in log
        stalled.close()
    finally:
        server.stop()


def test_a_request_past_its_time_limit_is_aborted_with_a_408(tiny_llama_dir):
    server = ServerProcess([tiny_llama_dir, "--served-model-name", TINY_NAME, *TINY_ARGS, "--request-timeout", "0.5"])
    try:
        server.wait_ready()
        slow = {"prompt": "x", "max_tokens": 480, "ignore_eos": True, "n": 16, "logprobs": 20}
        r = httpx.post(server.base_url + "/v1/completions", json=slow, timeout=60)
        assert r.status_code == 408 and r.json()["error"]["code"] == "request_timeout", r.text
        with httpx.stream("POST", server.base_url + "/v1/completions", json={**slow, "stream": True}, timeout=60) as s:
            lines = [line for line in s.iter_lines() if line]
        assert lines[-1] == "data: [DONE]" and '"request_timeout"' in lines[-2]
        quick = httpx.post(server.base_url + "/v1/completions", json={"prompt": "x", "max_tokens": 4}, timeout=60)
        assert quick.status_code == 200
        server.wait_idle(timeout=10)
    finally:
        server.stop()
