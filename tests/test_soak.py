"""The soak test (bench/soak.py) for 45 s against a kvserve it starts with the default model: 16 clients
mixing every kind of request (3 of them disconnecting on purpose), then the server must be idle within 2 s,
its RSS may grow by less than 64 MB after the warm-up, and its counters must reconcile with the usage the
clients saw. The default model, not the tiny random one: tool calls and JSON answers must parse, which
only the constrained decoding of a real model gives in a few tokens. One engine thread leaves the other
core to the 16 clients (with both cores the engine's threads and the client fight for them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER_ARGS = "--max-model-len 2048 --kv-cache-memory 256MiB --num-threads 1"


def test_soak_45s(tmp_path):
    path = tmp_path / "soak.json"
    cmd = [sys.executable, "-m", "bench.soak", "--duration", "45", "--clients", "16"]
    cmd += [f"--start-kvserve={SERVER_ARGS}", "--json", str(path), "--log-dir", str(tmp_path), "--quiet"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180)
    output = f"{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, output
    report = json.loads(path.read_text())
    assert report["passed"] and all(c["ok"] for c in report["checks"]), output

    totals = report["totals"]
    assert totals["unexpected_errors"] == 0, output
    assert totals["requests"] >= 32 and totals["ok"] > 0 and totals["disconnected"] > 0, output
    assert all(k["requests"] > 0 for k in report["kinds"].values()), output
    assert report["rss"]["growth_mb"] < 64, report["rss"]
    assert all(w["idle"] and w["seconds"] <= 2.0 for w in report["idle"].values()), report["idle"]
    assert report["final_gauges"] == dict.fromkeys(report["final_gauges"], 0.0), report["final_gauges"]

    load, recon = report["counters"]["load"], report["counters"]["reconciliation"]
    assert load["server"]["prompt_tokens"] >= load["clients"]["prompt_tokens"] > 0, load
    assert load["server"]["generation_tokens"] >= load["clients"]["completion_tokens"] > 0, load
    assert recon["clients"]["ok"] == 20 and recon["server"]["abort"] == 0, recon
    assert recon["server"]["prompt_tokens"] == recon["clients"]["prompt_tokens"] > 0, recon
    assert recon["server"]["generation_tokens"] == recon["clients"]["completion_tokens"] > 0, recon
    assert recon["server"]["stop"] + recon["server"]["length"] == recon["clients"]["engine_ok"], recon
    assert report["server_exit_code"] == 0, output
