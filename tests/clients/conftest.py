"""The client matrix's shared pieces: one real kvserve on the default model for this package, and a guard
that refuses every connection that is not to the loopback address.

tests/ (one level up) is on sys.path through tests/conftest.py, so `from http_server import ...` works
here. litellm reads its model cost map from the package (LITELLM_LOCAL_MODEL_COST_MAP) instead of
fetching it at import; LangSmith tracing is switched off (it would upload runs).
"""

from __future__ import annotations

import os
import socket
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # before any test module imports litellm
os.environ.setdefault("LITELLM_TELEMETRY", "False")

from http_server import ServerProcess  # noqa: E402

NAME = "SmolLM2-135M-Instruct"
DEFAULT_ARGS = ["--max-model-len", "2048", "--kv-cache-memory", "256MiB", "--num-threads", "2"]
LOOPBACK = ("127.0.0.1", "::1", "localhost")
TRACING_VARS = ("LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "LANGCHAIN_TRACING")


@pytest.fixture(scope="package")
def default_server():
    """One server for the whole directory, stopped when its last test is done."""
    server = ServerProcess(DEFAULT_ARGS)
    try:
        yield server.wait_ready(timeout=180)
    finally:
        server.stop()


@pytest.fixture(scope="package")
def api_base(default_server) -> str:
    return default_server.base_url + "/v1"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Only loopback connections and name lookups (a client that phones home fails at once instead of
    hanging, and the test fails even if the client swallowed the error); tiktoken may not load (or
    download) an encoding."""
    connect = socket.socket.connect
    attempts: list[object] = []

    def guarded_connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOOPBACK:
            attempts.append(address)
            raise AssertionError(f"network access to {address!r} during a client test")
        return connect(self, address)

    getaddrinfo = socket.getaddrinfo

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host not in (*LOOPBACK, None) and host != b"127.0.0.1":
            attempts.append(host)
            raise AssertionError(f"name lookup of {host!r} during a client test")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    try:
        import tiktoken
    except ImportError:
        pass
    else:

        def no_tiktoken(*args, **kwargs):
            raise AssertionError(f"tiktoken used: {args} {kwargs}")

        for name in ("get_encoding", "encoding_for_model"):
            monkeypatch.setattr(tiktoken, name, no_tiktoken)
    for var in TRACING_VARS:
        monkeypatch.delenv(var, raising=False)
    yield
    assert not attempts, f"connections refused: {attempts}"
