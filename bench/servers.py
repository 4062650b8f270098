"""Start a server for a benchmark, wait until it answers, stop it afterwards.

kvserve is started as `python -m app.main serve ARGS --host 127.0.0.1 --port PORT` with this
interpreter, from the repository root. A baseline is any command line; `{port}` in it is replaced by a
free port and `{python}` by this interpreter. The process gets its own session (process group) so that
stopping it (SIGTERM, then SIGKILL after a grace period) reaches the children it started and nothing else.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time

import httpx

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kvserve_argv(args: str, port: int) -> list[str]:
    return [sys.executable, "-m", "app.main", "serve", *shlex.split(args), "--host", "127.0.0.1", "--port", str(port)]


def expand_command(command: str, port: int | None) -> list[str]:
    text = command.replace("{python}", shlex.quote(sys.executable))
    if port is not None:
        text = text.replace("{port}", str(port))
    return shlex.split(text)


class ManagedServer:
    """A server process that this benchmark started (and will stop)."""

    def __init__(
        self, name: str, argv: list[str], base_url: str, log_path: str, cwd: str | None = None, env: dict | None = None
    ):
        self.name, self.argv, self.base_url, self.log_path = name, argv, base_url.rstrip("/"), log_path
        self.cwd = cwd
        self.env = env
        self.proc: subprocess.Popen | None = None
        self._log = None
        self.started_at = 0.0

    @property
    def root_url(self) -> str:
        return self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url

    def start(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.log_path)), exist_ok=True)
        self._log = open(self.log_path, "wb")
        self._log.write(("$ " + shlex.join(self.argv) + "\n").encode())
        self._log.flush()
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.cwd,
            env=self.env,
            start_new_session=True,
        )

    def log_tail(self, n: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def wait_ready(self, timeout: float, api_key: str | None = None) -> float:
        """Seconds from start until GET /health (when the server has one) and GET /v1/models answer 200.
        Raises RuntimeError (with the log's tail) if the process exits or `timeout` passes first."""
        assert self.proc is not None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        deadline = self.started_at + timeout
        with httpx.Client(timeout=5.0, trust_env=False, headers=headers) as client:
            while True:
                code = self.proc.poll()
                if code is not None:
                    raise RuntimeError(
                        f"{self.name} exited with code {code} before it was ready; "
                        f"log {self.log_path}:\n{self.log_tail()}"
                    )
                if self._ready(client):
                    return time.perf_counter() - self.started_at
                if time.perf_counter() > deadline:
                    raise RuntimeError(
                        f"{self.name} was not ready after {timeout:g} s; log {self.log_path}:\n{self.log_tail()}"
                    )
                time.sleep(0.2)

    def _ready(self, client: httpx.Client) -> bool:
        try:
            health = client.get(self.root_url + "/health").status_code
            if health not in (200, 404, 405):
                return False
            return client.get(self.base_url + "/models").status_code == 200
        except httpx.HTTPError:
            return False

    def peak_rss_mb(self) -> float | None:
        """Peak resident memory of the started process itself (Linux /proc; children not included)."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            pass
        return None

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM to the server's process group, SIGKILL after `grace` seconds. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def __enter__(self) -> "ManagedServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
