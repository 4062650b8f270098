"""Errors, limits, security and lifecycle of a real `kvserve serve` process.

Every error class with its status and OpenAI envelope, context_length_exceeded before any SSE byte,
413, disconnects that free KV blocks (checked through /metrics), API keys, the admission queue (429),
a hostile chat template, a model without a template, KVSERVE_* env vars, and CLI exit codes.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest
from http_server import (  # noqa: F401 (fixtures)
    REPO,
    TINY_ARGS,
    TINY_NAME,
    ServerProcess,
    assert_error,
    base_url,
    tiny_server,
)

KEYS = ("sk-first-key", "sk-second-key")
MARKER_NAME = "kvserve-hostile-template-ran"
HOSTILE_TEMPLATE = (
    "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    "{{ cycler.__init__.__globals__.os.system('touch ' ~ marker) }}"
    "{{ ''.__class__.__mro__[1].__subclasses__() }}"
)


def post(base_url: str, path: str, body, headers: dict | None = None) -> httpx.Response:
    if isinstance(body, (bytes, str)):
        return httpx.post(
            base_url + path, content=body, headers={"content-type": "application/json", **(headers or {})}, timeout=60
        )
    return httpx.post(base_url + path, json=body, headers=headers, timeout=60)


# ---------------------------------------------------------------------------------------------- envelope

USER = [{"role": "user", "content": "Hi"}]
CASES = [
    # (path, body, status, code, param)
    ("/v1/completions", b'{"prompt": "Hi", ', 400, None, None),  # not JSON
    ("/v1/completions", b"[1, 2]", 400, None, None),  # not an object
    ("/v1/chat/completions", {"model": TINY_NAME}, 400, None, "messages"),
    ("/v1/chat/completions", {"messages": []}, 400, None, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, 400, None, "messages"),
    ("/v1/completions", {"prompt": "Hi", "temperature": "hot"}, 400, None, "temperature"),
    ("/v1/completions", {"prompt": "Hi", "temperature": 3}, 400, None, "temperature"),
    ("/v1/completions", {"prompt": "Hi", "top_p": 0}, 400, None, "top_p"),
    ("/v1/completions", {"prompt": "Hi", "n": 17}, 400, None, "n"),
    ("/v1/completions", {"prompt": "Hi", "max_tokens": 0}, 400, None, "max_tokens"),
    ("/v1/chat/completions", {"messages": USER, "max_completion_tokens": -1}, 400, None, "max_completion_tokens"),
    ("/v1/completions", {"prompt": "Hi", "presence_penalty": 5}, 400, None, "presence_penalty"),
    ("/v1/completions", {"prompt": "Hi", "logprobs": 21}, 400, None, "logprobs"),
    ("/v1/completions", {"prompt": "Hi", "echo": True, "logprobs": 1}, 400, None, "echo"),
    ("/v1/completions", {"prompt": "Hi", "suffix": "tail"}, 400, None, "suffix"),
    ("/v1/completions", {"model": "gpt-4", "prompt": "Hi"}, 404, "model_not_found", "model"),
    ("/v1/chat/completions", {"model": "gpt-4", "messages": USER}, 404, "model_not_found", "model"),
    ("/v1/completions", {}, 400, None, "prompt"),
    ("/v1/completions", {"prompt": []}, 400, None, "prompt"),
    ("/v1/completions", {"prompt": [[]]}, 400, None, "prompt"),
    ("/v1/completions", {"prompt": ["a", 1]}, 400, None, "prompt"),
    ("/v1/completions", {"prompt": [1, True]}, 400, None, "prompt"),
    ("/v1/completions", {"prompt": ["x"] * 129}, 400, None, "prompt"),
    ("/v1/completions", {"prompt": [5, 10**6]}, 400, None, "prompt"),
    ("/v1/completions", {"prompt": [[5], [-1]]}, 400, None, "prompt"),
    ("/v1/completions", {"prompt": "Hi", "logit_bias": {"999999": 1}}, 400, None, "logit_bias"),
    ("/v1/completions", {"prompt": "Hi", "logit_bias": {"abc": 1}}, 400, None, "logit_bias"),
    ("/v1/completions", {"prompt": "Hi", "logit_bias": {"5": 500}}, 400, None, "logit_bias"),
    ("/v1/completions", {"prompt": "Hi", "logit_bias": {str(i): 1 for i in range(1025)}}, 400, None, "logit_bias"),
    ("/v1/completions", {"prompt": "Hi", "stop_token_ids": [320]}, 400, None, "stop_token_ids"),
    ("/v1/completions", {"prompt": "Hi", "stop": ["s"] * 17}, 400, None, "stop"),
    ("/v1/completions", {"prompt": "Hi", "stop": ["x" * 257]}, 400, None, "stop"),
    ("/v1/completions", {"prompt": "Hi", "stop": [""]}, 400, None, "stop"),
    ("/v1/completions", b'{"prompt": "bad \\ud800 text"}', 400, None, "prompt"),
    ("/v1/completions", b'{"prompt": "Hi", "stop": ["\\udfff"]}', 400, None, "stop"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x\\ud83d"}]}', 400, None, "messages"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]},
        400,
        None,
        "messages",
    ),
    ("/v1/chat/completions", {"messages": USER * 1025}, 400, None, "messages"),
    (
        "/v1/chat/completions",
        {"messages": USER, "response_format": {"type": "yaml"}},
        400,
        None,
        "response_format",
    ),
    ("/v1/completions", {"prompt": "Hi", "response_format": {"type": "json_schema"}}, 400, None, "response_format"),
    ("/v1/chat/completions", {"messages": USER, "chat_template": "{{ 1 }}"}, 400, None, "chat_template"),
    (
        "/v1/chat/completions",
        {"messages": USER, "tools": [{"type": "function", "function": {"name": "not a name"}}]},
        400,
        None,
        "tools",
    ),
    (
        "/v1/chat/completions",
        {"messages": USER, "stream_options": {"include_usage": True}},
        400,
        None,
        "stream_options",
    ),
    ("/v1/chat/completions", {"messages": USER, "top_logprobs": 2}, 400, None, "top_logprobs"),
    ("/v1/chat/completions", {"messages": USER, "logprobs": True, "top_logprobs": 21}, 400, None, "top_logprobs"),
    ("/v1/chat/completions", {"messages": USER, "n": 2, "min_tokens": 5, "max_tokens": 2}, 400, None, "min_tokens"),
]


def test_503_while_loading(extra_servers):
    """Right after start-up the server listens but the model is still loading: /health and the API say 503."""
    server = extra_servers["env"]  # launched when this module started; nothing has waited for it yet
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            r = httpx.get(server.base_url + "/health", timeout=5)
        except httpx.TransportError:
            time.sleep(0.01)
            continue
        seen.append(r.status_code)
        if r.status_code == 200:
            break
        err = assert_error(r, 503, "model_loading")
        assert err["type"] == "service_unavailable_error"
        r = post(server.base_url, "/v1/completions", {"prompt": "Hi"}, auth("env-key"))
        if r.status_code == 503:
            assert_error(r, 503, "model_loading")
        time.sleep(0.01)
    assert seen[0] == 503 and seen[-1] == 200, seen


def test_503_after_engine_death():
    """A dead engine thread turns /health and every API call into 503 engine_dead (in-process app)."""
    import asyncio
    from types import SimpleNamespace

    from app.main import create_app
    from app.settings import Settings

    dead = SimpleNamespace(
        engine=SimpleNamespace(served_name="fake"), served_name="fake", is_dead=True, shutdown=lambda: None
    )

    async def run():
        transport = httpx.ASGITransport(app=create_app(Settings(), engine=dead))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return [
                await c.get("/health"),
                await c.post("/v1/completions", json={"prompt": "Hi"}),
                await c.post("/v1/chat/completions", json={"messages": USER}),
                await c.get("/v1/models"),
            ]

    for r in asyncio.run(run()):
        assert_error(r, 503, "engine_dead", type="service_unavailable_error")


def test_every_error_has_the_envelope(base_url):
    for path, body, status, code, param in CASES:
        r = post(base_url, path, body)
        err = assert_error(r, status, code, param)
        assert err["type"] == "invalid_request_error", (path, body, err)
        assert "Traceback" not in err["message"]
    # Messages say what to fix.
    err = assert_error(post(base_url, "/v1/completions", {"prompt": "Hi", "n": 17}), 400)
    assert "16" in err["message"]
    err = assert_error(
        post(base_url, "/v1/chat/completions", {"messages": USER, "response_format": {"type": "yaml"}}), 400
    )
    assert "unknown type 'yaml'" in err["message"] and "json_schema" in err["message"]
    # The parameter is named as the request spelled it (the alias, chat's top_logprobs), in the text too.
    err = assert_error(post(base_url, "/v1/chat/completions", {"messages": USER, "max_completion_tokens": -1}), 400)
    assert err["message"].startswith("max_completion_tokens "), err
    err = assert_error(
        post(base_url, "/v1/chat/completions", {"messages": USER, "logprobs": True, "top_logprobs": 21}), 400
    )
    assert err["message"].startswith("top_logprobs ") and "20" in err["message"], err


def test_unknown_routes_and_methods(base_url):
    assert_error(httpx.get(base_url + "/v1/nothing"), 404, "not_found")
    assert_error(httpx.post(base_url + "/v2/chat/completions", json={}), 404)
    assert_error(httpx.get(base_url + "/v1/completions"), 405)


def test_sdk_raises_typed_errors(base_url):
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=TINY_NAME, prompt="Hi", temperature=5)
    assert info.value.status_code == 400 and info.value.param == "temperature"
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=USER)
    assert info.value.code == "model_not_found"


def test_context_length_exceeded_before_any_sse_byte(base_url):
    long_ids = [5] * 600
    for stream in (False, True):
        r = post(base_url, "/v1/completions", {"prompt": long_ids, "stream": stream})
        err = assert_error(r, 400, "context_length_exceeded", "prompt")
        assert "512" in err["message"]
        assert err["message"] == (
            "This model's maximum context length is 512 tokens. However, you requested 616 "
            "tokens (600 in the prompt, 16 in the completion). Please reduce the length of "
            "the prompt or completion."
        ), err
    # Fits alone, but not with max_tokens: prompt + max_tokens > max_model_len.
    assert_error(
        post(base_url, "/v1/completions", {"prompt": [5] * 500, "max_tokens": 20, "stream": True}),
        400,
        "context_length_exceeded",
    )
    assert post(base_url, "/v1/completions", {"prompt": [5] * 500, "max_tokens": 12}).status_code == 200
    # A prompt of exactly max_model_len leaves no room to generate.
    assert_error(
        post(base_url, "/v1/completions", {"prompt": [5] * 512, "max_tokens": 1}), 400, "context_length_exceeded"
    )
    # Chat: the rendered conversation is what counts; the default max_tokens fills the context.
    big = [{"role": "user", "content": "word " * 700}]
    assert_error(
        post(base_url, "/v1/chat/completions", {"messages": big, "stream": True}),
        400,
        "context_length_exceeded",
        "messages",
    )


def test_body_too_large(base_url):
    # The tiny server runs with --max-body-bytes 256KiB.
    r = post(base_url, "/v1/completions", {"prompt": "x" * 300_000})
    assert_error(r, 413, "request_too_large")

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(40):
            yield b" " * 10_000

    r = httpx.post(base_url + "/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert_error(r, 413, "request_too_large")
    assert post(base_url, "/v1/completions", {"prompt": "Hello world " * 30, "max_tokens": 1}).status_code == 200


# ---------------------------------------------------------------------------------------------- disconnects


def _wait_running(server, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while server.metrics()["vllm:num_requests_running"] == 0:
        assert time.monotonic() < deadline, "the request never started running"
        time.sleep(0.02)


def test_streaming_disconnect_aborts_and_frees_blocks(tiny_server):
    base = tiny_server.wait_idle()
    n, max_tokens = 8, 480
    body = {
        "model": TINY_NAME,
        "prompt": "A long story",
        "n": n,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream("POST", tiny_server.base_url + "/v1/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        busy = tiny_server.metrics()
        assert busy["vllm:num_requests_running"] == n and busy["vllm:kv_cache_usage_perc"] > 0
    after = tiny_server.wait_idle(timeout=5)  # the engine dropped the request and returned its blocks
    generated = after["vllm:generation_tokens_total"] - base["vllm:generation_tokens_total"]
    assert generated < n * max_tokens / 2, generated


def test_non_streaming_disconnect_aborts_and_frees_blocks(tiny_server):
    base = tiny_server.wait_idle()
    n, max_tokens = 8, 480
    body = {"model": TINY_NAME, "prompt": "Another long story", "n": n, "max_tokens": max_tokens, "ignore_eos": True}
    payload = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", tiny_server.port)) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        _wait_running(tiny_server)
    after = tiny_server.wait_idle(timeout=5)
    generated = after["vllm:generation_tokens_total"] - base["vllm:generation_tokens_total"]
    assert generated < n * max_tokens / 2, generated


def test_refused_later_prompt_leaves_nothing_running(tiny_server):
    """With several prompts, one the engine refuses (after others were submitted) gives a 400 and no work."""
    base = tiny_server.wait_idle()
    body = {"model": TINY_NAME, "prompt": [[5, 6, 7], [5, 10**6]], "n": 8, "max_tokens": 480, "ignore_eos": True}
    for stream in (False, True):
        assert_error(post(tiny_server.base_url, "/v1/completions", {**body, "stream": stream}), 400, param="prompt")
    after = tiny_server.wait_idle(timeout=5)
    generated = after["vllm:generation_tokens_total"] - base["vllm:generation_tokens_total"]
    assert generated < 8 * 480 / 2, generated
    assert post(tiny_server.base_url, "/v1/completions", {"prompt": "Hi", "max_tokens": 1}).status_code == 200


# ---------------------------------------------------------------------------------------------- restricted server


@pytest.fixture(scope="module", autouse=True)
def extra_servers(tiny_llama_dir, tmp_path_factory):
    """Two more servers, launched when this module starts so that they load while other tests run.

    restricted: API keys, an admission queue of 1, one sequence at a time, and a hostile chat template.
    env: a copy of the tiny model without a chat template, configured only through KVSERVE_* variables.
    """
    tmp = tmp_path_factory.mktemp("hostile")
    marker = str(tmp / MARKER_NAME)
    template = tmp / "hostile.jinja"
    template.write_text(HOSTILE_TEMPLATE.replace("marker", repr(marker)))
    restricted = ServerProcess(
        [
            tiny_llama_dir,
            *TINY_ARGS,
            "--served-model-name",
            TINY_NAME,
            "--api-key",
            KEYS[0],
            "--api-key",
            KEYS[1],
            "--max-queue",
            "1",
            "--max-num-seqs",
            "1",
            "--chat-template",
            str(template),
        ],
        env={"KVSERVE_API_KEY": "ignored-because-the-flag-wins"},
    )
    restricted.marker = marker

    path = tmp_path_factory.mktemp("no-template")
    for name in os.listdir(tiny_llama_dir):
        shutil.copy(os.path.join(tiny_llama_dir, name), path / name)
    config = json.loads((path / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    env = {
        "KVSERVE_MODEL": str(path),
        "KVSERVE_SERVED_MODEL_NAME": "first,second",
        "KVSERVE_MAX_MODEL_LEN": "128",
        "KVSERVE_API_KEY": "env-key",
        "KVSERVE_DTYPE": "float32",
        "KVSERVE_DEVICE": "cpu",
        "KVSERVE_KV_CACHE_MEMORY": "4MiB",
        "KVSERVE_NUM_THREADS": "1",
        "KVSERVE_ALLOWED_ORIGINS": "http://app.example",
        "PYTHONPATH": str(_slow_load_hook(tmp_path_factory.mktemp("slow-load"))),
    }
    from_env = ServerProcess([], env=env)
    try:
        yield {"restricted": restricted, "env": from_env}
    finally:
        restricted.stop()
        from_env.stop()


def _slow_load_hook(folder):
    """A sitecustomize that makes the engine take 3 s longer to build (in its loading thread), so that the
    loading phase is seen whatever the machine's speed (test_503_while_loading)."""
    (folder / "sitecustomize.py").write_text(
        "import time\n"
        "from model.engine import async_engine\n"
        "_init = async_engine.AsyncEngine.__init__\n"
        "def _slow(self, *a, **k):\n"
        "    time.sleep(3)\n"
        "    _init(self, *a, **k)\n"
        "async_engine.AsyncEngine.__init__ = _slow\n"
    )
    return folder


@pytest.fixture()
def restricted_server(extra_servers):
    return extra_servers["restricted"].wait_ready()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_api_keys(restricted_server):
    url = restricted_server.base_url
    body = {"prompt": "Hi", "max_tokens": 2}
    assert_error(post(url, "/v1/completions", body), 401, "invalid_api_key")
    assert_error(post(url, "/v1/completions", body, auth("sk-wrong")), 401, "invalid_api_key")
    assert_error(post(url, "/v1/completions", body, auth("ignored-because-the-flag-wins")), 401)
    assert_error(post(url, "/v1/completions", body, {"Authorization": f"Basic {KEYS[0]}"}), 401)
    assert_error(post(url, "/v1/completions", body, auth(KEYS[0][:-1])), 401)
    r = post(url, "/v1/completions", body)
    assert r.headers.get("www-authenticate") == "Bearer"
    for key in KEYS:
        assert post(url, "/v1/completions", body, auth(key)).status_code == 200
    # Deny by default: every route but /health and /version, unknown ones included.
    for path in ("/v1/models", f"/v1/models/{TINY_NAME}", "/metrics", "/nowhere", "/docs", "/openapi.json"):
        assert_error(httpx.get(url + path), 401)
    assert_error(post(url, "/tokenize", {"prompt": "x"}), 401)
    assert httpx.get(url + "/health").status_code == 200
    assert httpx.get(url + "/version").status_code == 200
    assert httpx.get(url + "/v1/models", headers=auth(KEYS[1])).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="sk-wrong", max_retries=0).models.list()
    ok = openai.OpenAI(base_url=url + "/v1", api_key=KEYS[0], max_retries=0)
    assert ok.completions.create(model=TINY_NAME, prompt="Hi", max_tokens=1).choices


def test_queue_full_is_429_with_retry_after(restricted_server):
    url = restricted_server.base_url
    headers = auth(KEYS[0])
    restricted_server.wait_idle(headers=headers)
    body = {"prompt": "Hold the slot", "max_tokens": 400, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, headers=headers, timeout=30) as r:
        lines = r.iter_lines()  # keep the iterator: dropping it closes the connection
        first = next(lines)
        assert first.startswith("data: ") and '"text"' in first, first
        for extra in ({"prompt": "Hi", "max_tokens": 1}, {"prompt": "Hi", "max_tokens": 1, "stream": True}):
            refused = post(url, "/v1/completions", extra, headers)
            assert_error(refused, 429, "rate_limit_exceeded")
            assert int(refused.headers["retry-after"]) >= 1
        assert_error(post(url, "/v1/chat/completions", {"messages": USER}, headers), 429)
    restricted_server.wait_idle(headers=headers)  # the disconnect released the slot...
    assert post(url, "/v1/completions", {"prompt": "Hi", "max_tokens": 1}, headers).status_code == 200  # ...for good


def test_hostile_template_does_not_execute(restricted_server):
    url = restricted_server.base_url
    r = post(url, "/v1/chat/completions", {"messages": USER, "max_tokens": 2}, auth(KEYS[0]))
    err = assert_error(r, 400, param="messages")
    assert "template" in err["message"]
    assert not os.path.exists(restricted_server.marker)
    r = post(url, "/tokenize", {"messages": USER}, auth(KEYS[0]))
    assert_error(r, 400)
    assert not os.path.exists(restricted_server.marker)
    # The server is still fine.
    assert post(url, "/v1/completions", {"prompt": "Hi", "max_tokens": 1}, auth(KEYS[0])).status_code == 200


# ---------------------------------------------------------------------------------------------- no template, env


@pytest.fixture()
def env_server(extra_servers):
    return extra_servers["env"].wait_ready()


def test_env_vars_and_model_without_chat_template(env_server):
    url = env_server.base_url
    headers = auth("env-key")
    assert_error(httpx.get(url + "/v1/models"), 401)
    models = httpx.get(url + "/v1/models", headers=headers).json()["data"]
    assert [m["id"] for m in models] == ["first", "second"] and models[0]["max_model_len"] == 128
    r = post(url, "/v1/chat/completions", {"model": "second", "messages": USER}, headers)
    err = assert_error(r, 400, param="messages")
    assert "chat template" in err["message"]
    body = post(url, "/v1/completions", {"model": "second", "prompt": "Hi", "max_tokens": 2}, headers).json()
    assert body["model"] == "second" and body["choices"]
    assert post(url, "/v1/completions", {"prompt": "Hi", "max_tokens": 2}, headers).json()["model"] == "first"
    assert_error(
        post(url, "/v1/completions", {"prompt": [5] * 120, "max_tokens": 9}, headers), 400, "context_length_exceeded"
    )
    # CORS: a preflight from an allowed origin passes without a key; other origins get no CORS headers.
    pre = httpx.options(
        url + "/v1/chat/completions",
        headers={
            "Origin": "http://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://app.example"
    r = httpx.get(url + "/v1/models", headers={**headers, "Origin": "http://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


# ---------------------------------------------------------------------------------------------- CLI


def run_cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.main", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_cli_bad_flags_exit_2_with_one_line(tmp_path):
    for args, env, needle in [
        (["serve", "--bogus"], None, "--bogus"),
        (["serve", "--port", "eighty"], None, "--port"),
        (["serve", "--dtype", "float8"], None, "--dtype"),
        (["serve", "--max-num-seqs", "0"], None, "--max-num-seqs"),
        (["serve", str(tmp_path / "missing-model")], None, "does not exist"),
        (["serve", str(tmp_path)], {"KVSERVE_PORT": "-1"}, "KVSERVE_PORT"),
        (["serve", "--chat-template", str(tmp_path / "none.jinja")], None, "--chat-template"),
        (["frobnicate"], None, "frobnicate"),
    ]:
        proc = run_cli(*args, env=env)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and "error" in lines[0], (args, proc.stderr)
    help_text = run_cli("serve", "--help").stdout
    for flag in (
        "--host",
        "--port",
        "--api-key",
        "--served-model-name",
        "--max-model-len",
        "--max-num-seqs",
        "--max-num-batched-tokens",
        "--block-size",
        "--dtype",
        "--device",
        "--kv-cache-memory",
        "--chat-template",
        "--max-queue",
        "--allowed-origins",
        "--log-level",
        "KVSERVE_PORT",
    ):
        assert flag in help_text
    assert "serve" in run_cli("--help").stdout


def test_cli_unloadable_model_exits_2(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    number = port.getsockname()[1]
    port.close()
    proc = run_cli("serve", str(bad), "--port", str(number), "--device", "cpu", timeout=90)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if "ERROR" in ln]
    assert len(errors) == 1 and "broken.gguf" in errors[0], proc.stderr[-2000:]
