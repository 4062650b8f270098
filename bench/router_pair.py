"""N kvserve workers behind vLLM's router, as one command the harness can start as a baseline.

    python -m bench --start-kvserve \\
        --baseline "{python} -m bench.router_pair --port {port} --workers 2 -- --num-threads 1" \\
        --baseline-name "router+2 workers" --concurrency 1 32

Starts `--workers` `python -m app.main serve` processes on free ports (the arguments after `--` go to each),
waits for their /health, then runs `vllm-router --policy cache_aware` on --port in the foreground; SIGTERM
or SIGINT stops the router and the workers. Exit status: the router's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"router_pair: a worker exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"router_pair: {url} not healthy after {timeout:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--policy", default="cache_aware")
    parser.add_argument("worker_args", nargs=argparse.REMAINDER, help="-- then arguments for each worker")
    args = parser.parse_args()
    extra = args.worker_args[1:] if args.worker_args[:1] == ["--"] else args.worker_args
    router_bin = shutil.which("vllm-router") or os.path.join(os.path.dirname(sys.executable), "vllm-router")
    procs: list[subprocess.Popen] = []
    try:
        urls = []
        for _ in range(args.workers):
            port = _free_port()
            cmd = [sys.executable, "-m", "app.main", "serve", "--host", "127.0.0.1", "--port", str(port), *extra]
            procs.append(subprocess.Popen(cmd))
            urls.append(f"http://127.0.0.1:{port}")
        for url, proc in zip(urls, procs):
            _wait_healthy(url, proc)
        router = subprocess.Popen([router_bin, "--host", args.host, "--port", str(args.port), "--policy",
                                   args.policy, "--worker-urls", *urls])  # fmt: skip
        procs.append(router)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: router.terminate())
        return router.wait()
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    raise SystemExit(main())
