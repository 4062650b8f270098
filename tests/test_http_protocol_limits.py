"""Protocol-level limits and hostile input against a real `kvserve serve` process (default limits).

- the default body limit is 2 MiB: a 2.5 MB body is a 413 in the envelope;
- a lone surrogate in the `model` field (JSON `"\\ud800"`) is a 404 model_not_found, not a 500;
- more than 100 header fields, or a request line plus headers over 16 KiB (arriving whole or in
  pieces), is a 431 in the envelope;
- what is not HTTP/1.1 (a garbage request line, `HTTP/9.9x`, TLS bytes, bad header syntax) is a 400
  in the envelope;
- no response carries a traceback or a file path, and the server log has no traceback either.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
from http_server import REPO, TINY_ARGS, TINY_NAME, ServerProcess

MAX_HEADERS = 100
MAX_HEADER_BYTES = 16 * 1024


@pytest.fixture(scope="module")
def server(tiny_llama_dir):
    # TINY_ARGS but no --max-body-bytes: the default limit is under test.
    proc = ServerProcess([tiny_llama_dir, *TINY_ARGS, "--served-model-name", TINY_NAME])
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


def exchange(port: int, data: bytes, pieces: int = 1, pause: float = 0.0, timeout: float = 10.0) -> bytes:
    """Send `data` (in `pieces`, `pause` seconds apart) on a fresh connection; everything read until the
    server closes it. A server that answers early and closes may make the rest of the send fail."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        step = -(-len(data) // pieces)
        try:
            for i in range(0, len(data), step):
                sock.sendall(data[i : i + step])
                if pause:
                    time.sleep(pause)
        except OSError:
            pass  # answered and closed before the whole request was sent
        out = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                out += chunk
        except OSError:
            pass
        return out


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, raw[:500]
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), lines[0]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def assert_clean(raw: bytes, *paths: str) -> None:
    """No traceback, no source or install path in what the client got."""
    for needle in ("site-packages", "Traceback", 'File "', ".py", REPO, "/usr/", *paths):
        assert needle.encode() not in raw, (needle, raw[:1000])


def assert_envelope(raw: bytes, status: int, code: str | None = None, *paths: str) -> dict:
    got, headers, body = parse(raw)
    assert got == status, raw[:1000]
    assert headers["content-type"].startswith("application/json"), headers
    assert int(headers["content-length"]) == len(body), (headers, len(body))
    err = json.loads(body.decode("utf-8"))["error"]  # strict UTF-8: no lone surrogate written out
    assert set(err) == {"message", "type", "param", "code"} and err["message"], err
    if code is not None:
        assert err["code"] == code, err
    assert_clean(raw, *paths)
    return err


def request(method: str, path: str, headers: list[tuple[str, str]] = (), body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *(f"{k}: {v}" for k, v in headers)]
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# ------------------------------------------------------------------------------------------------ body


def test_default_body_limit_is_2mib(server, tiny_llama_dir):
    padded = json.dumps({"model": TINY_NAME, "prompt": "hi", "max_tokens": 1, "pad": "x" * 2_500_000}).encode()
    raw = exchange(server.port, request("POST", "/v1/completions", body=padded))
    err = assert_envelope(raw, 413, "request_too_large", tiny_llama_dir)
    assert str(2 * 1024 * 1024) in err["message"]
    small = json.dumps({"model": TINY_NAME, "prompt": "hi", "max_tokens": 1, "pad": "x" * 1_500_000}).encode()
    status, _, _ = parse(exchange(server.port, request("POST", "/v1/completions", body=small)))
    assert status == 200


# ------------------------------------------------------------------------------------------------ model


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"])
def test_lone_surrogate_model_is_not_a_500(server, tiny_llama_dir, path):
    body = (
        b'{"model": "\\ud800", "prompt": "hi", "max_tokens": 1, "tokens": [1], '
        b'"messages": [{"role": "user", "content": "hi"}]}'
    )
    raw = exchange(server.port, request("POST", path, body=body))
    status, _, _ = parse(raw)
    assert status in (400, 404), raw[:1000]
    err = assert_envelope(raw, status, None, tiny_llama_dir)
    assert err["param"] == "model"


def test_lone_surrogate_model_path(server, tiny_llama_dir):
    for path in ("/v1/models/%ED%A0%80", "/v1/models/\\ud800", "/v1/models/%ff"):
        assert_envelope(exchange(server.port, request("GET", path)), 404, "model_not_found", tiny_llama_dir)


# ------------------------------------------------------------------------------------------------ headers


def test_header_count_limit(server):
    few = [(f"X-Extra-{i}", "v") for i in range(MAX_HEADERS - 3)]  # + Host, Connection
    status, _, body = parse(exchange(server.port, request("GET", "/health", few)))
    assert status == 200, body
    many = [(f"X-Extra-{i}", "v") for i in range(MAX_HEADERS)]
    err = assert_envelope(
        exchange(server.port, request("GET", "/health", many)), 431, "request_header_fields_too_large"
    )
    assert str(MAX_HEADERS) in err["message"]
    thousands = [(f"X-Extra-{i}", "v") for i in range(5000)]
    assert_envelope(
        exchange(server.port, request("POST", "/v1/completions", thousands, b"{}")),
        431,
        "request_header_fields_too_large",
    )


def test_header_size_limit(server):
    status, _, body = parse(exchange(server.port, request("GET", "/health", [("X-Big", "a" * 8000)])))
    assert status == 200, body
    big = request("GET", "/health", [("X-Big", "a" * (MAX_HEADER_BYTES + 100))])
    # Arriving whole (the app's check) and in pieces (h11 refuses the incomplete head): the same answer.
    assert_envelope(exchange(server.port, big), 431, "request_header_fields_too_large")
    assert_envelope(exchange(server.port, big, pieces=8, pause=0.05), 431, "request_header_fields_too_large")
    long_target = request("GET", "/v1/models/" + "m" * (MAX_HEADER_BYTES + 100))
    assert_envelope(exchange(server.port, long_target), 431, "request_header_fields_too_large")


# ------------------------------------------------------------------------------------------------ garbage

GARBAGE = [
    b"GET / HTTP/9.9x\r\n\r\n",
    b"GET / HTTP/9.9x\r\nHost: x\r\n\r\n",
    b"GARBAGE\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(40),  # a TLS ClientHello
    b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
    b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /health HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b'POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\nZZZ\r\n\r\n',
]


@pytest.mark.parametrize("data", GARBAGE, ids=range(len(GARBAGE)))
def test_not_http_is_a_400_in_the_envelope(server, tiny_llama_dir, data):
    raw = exchange(server.port, data)
    assert_envelope(raw, 400, "invalid_http_request", tiny_llama_dir)
    assert parse(raw)[1]["connection"] == "close"


def test_garbage_after_a_good_request(server):
    good = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    raw = exchange(server.port, good + b"GARBAGE\r\n\r\n")
    first, _, rest = raw.partition(b'{"status":"ok"}')
    assert parse(first)[0] == 200 and rest, raw
    assert_envelope(rest, 400, "invalid_http_request")


def test_server_still_serves_and_logged_no_traceback(server):
    status, _, _ = parse(exchange(server.port, request("GET", "/health")))
    assert status == 200
    log = server.output()
    assert "Traceback" not in log and "site-packages" not in log, log[-3000:]
