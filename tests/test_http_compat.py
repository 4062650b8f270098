"""Compatibility details that clients rely on, against real servers on the tiny random Llama:

- `/v1/models` cards carry `max_model_len`;
- a chat of only a system message is answered;
- repeated slashes in the path (`//v1/models`, `/v1//chat/completions`) route as single ones (app/paths.py);
- `suffix` on /v1/completions is fill-in-the-middle where the vocabulary has FIM tokens
  (`<fim_prefix>` prompt `<fim_suffix>` suffix `<fim_middle>`, app/serving/fim.py), else a 400 naming it.

The FIM server runs a copy of the tiny model whose tokenizer has StarCoder's three FIM tokens added
(ids 300..302, inside the model's 320 rows), and beside it the tiny model itself. The default model's
vocabulary (SmolLM2-135M-Instruct) has no FIM tokens: tests/clients/test_client_openai.py checks its 400.
"""

from __future__ import annotations

import json
import os
import shutil
import socket

import httpx
import pytest
from helpers_tokenizer import write_tiny_tokenizer
from http_server import TINY_ARGS, TINY_NAME, ServerProcess, assert_error, post_stream, tiny_server

FIM_NAME = "tiny-fim"
PLAIN_NAME = "tiny-plain"  # the same tiny model without FIM tokens, in the FIM server
STARCODER_FIM = ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")
QWEN_FIM = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")
PREFIX, SUFFIX = "def add(a, b):\n    return", "\n\nprint(add(1, 2))\n"


def add_tokens(model_dir: str, tokens: tuple[str, ...]) -> list[int]:
    """Add `tokens` to the directory's tokenizer.json as special tokens; their ids."""
    from tokenizers import AddedToken, Tokenizer

    path = os.path.join(model_dir, "tokenizer.json")
    tok = Tokenizer.from_file(path)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens])
    tok.save(path)
    return [tok.token_to_id(t) for t in tokens]


# ---- fim.py on real tokenizers (no server) -----------------------------------------------------------


class _Engine:
    """What app/serving/fim.py uses of AsyncEngine: encode and tokenizer."""

    def __init__(self, path: str) -> None:
        from model.tokenizer import Tokenizer

        self.tokenizer = Tokenizer.from_hf_dir(path)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)


def _tokenizer_dir(tmp_path, tokens: tuple[str, ...] = (), add_bos: bool = True) -> tuple[str, list[int]]:
    path = str(tmp_path / "tok")
    write_tiny_tokenizer(path, add_bos_token=add_bos)
    return path, add_tokens(path, tokens) if tokens else []


@pytest.mark.parametrize("spelling", [STARCODER_FIM, QWEN_FIM], ids=["starcoder", "qwen"])
def test_fim_prompt_is_psm_with_bos_first(tmp_path, spelling):
    from app.serving.fim import encode_fim_prompts, find_fim_tokens

    path, (pre, suf, mid) = _tokenizer_dir(tmp_path, spelling)
    engine = _Engine(path)
    fim = find_fim_tokens(engine)
    assert fim is not None and (fim.prefix, fim.suffix, fim.middle) == (pre, suf, mid)
    assert fim.leading == (1,)  # the tiny tokenizer's BOS
    prompt_ids = engine.encode(PREFIX, add_special_tokens=False)
    suffix_ids = engine.encode(SUFFIX, add_special_tokens=False)
    [(ids, echo)] = encode_fim_prompts(engine, fim, [PREFIX], SUFFIX, echo=True)
    assert ids == [1, pre, *prompt_ids, suf, *suffix_ids, mid]
    assert echo == PREFIX
    # A token-id prompt is the prefix as given (no BOS added, as for any token-id prompt).
    [(ids, _)] = encode_fim_prompts(engine, fim, [[5, 6, 7]], SUFFIX, echo=False)
    assert ids == [pre, 5, 6, 7, suf, *suffix_ids, mid]
    # Several prompts, one suffix: each its own PSM prompt.
    many = encode_fim_prompts(engine, fim, ["a", "b"], "c", echo=False)
    assert [ids[-1] for ids, _ in many] == [mid, mid] and [ids[:2] for ids, _ in many] == [[1, pre], [1, pre]]


def test_fim_prompt_without_bos(tmp_path):
    from app.serving.fim import encode_fim_prompts, find_fim_tokens

    path, (pre, suf, mid) = _tokenizer_dir(tmp_path, STARCODER_FIM, add_bos=False)
    engine = _Engine(path)
    fim = find_fim_tokens(engine)
    assert fim is not None and fim.leading == ()
    [(ids, _)] = encode_fim_prompts(engine, fim, ["ab"], "c", echo=False)
    assert ids == [pre, *engine.encode("ab", False), suf, *engine.encode("c", False), mid]


def test_no_fim_tokens_or_an_incomplete_set(tmp_path):
    from app.errors import APIError
    from app.serving.fim import find_fim_tokens, require_fim

    path, _ = _tokenizer_dir(tmp_path, ("<fim_prefix>", "<fim_suffix>"))  # no <fim_middle>
    assert find_fim_tokens(_Engine(path)) is None
    with pytest.raises(APIError) as err:
        require_fim(None)
    assert err.value.status == 400 and err.value.param == "suffix"


# ---- /v1/models, system-only chat, double slashes (tiny server) -------------------------------------


def test_models_carry_max_model_len(tiny_server):
    listed = httpx.get(tiny_server.base_url + "/v1/models", timeout=10).json()["data"]
    assert [m["id"] for m in listed] == [TINY_NAME]
    one = httpx.get(tiny_server.base_url + f"/v1/models/{TINY_NAME}", timeout=10).json()
    max_len = httpx.post(tiny_server.base_url + "/tokenize", json={"prompt": "x"}, timeout=10).json()["max_model_len"]
    assert listed[0]["max_model_len"] == one["max_model_len"] == max_len > 0


@pytest.mark.parametrize("stream", [False, True])
def test_chat_with_only_a_system_message(tiny_server, stream):
    body = {
        "model": TINY_NAME,
        "messages": [{"role": "system", "content": "You are terse."}],
        "max_tokens": 5,
        "temperature": 0,
        "stream": stream,
    }
    if stream:
        r, events = post_stream(tiny_server.base_url, "/v1/chat/completions", body)
        assert r.status_code == 200, events
        assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        return
    r = httpx.post(tiny_server.base_url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length") and r.json()["usage"]["prompt_tokens"] > 0


@pytest.mark.parametrize("path", ["//v1/models", "/v1//models", "///v1///models", "//v1/models/" + TINY_NAME])
def test_double_slashes_get(tiny_server, path):
    r = httpx.get(tiny_server.base_url + path, timeout=10)
    assert r.status_code == 200, (path, r.text)
    body = r.json()
    assert body.get("id", TINY_NAME) == TINY_NAME and (body.get("object") in ("list", "model"))


def test_double_slashes_post_and_query(tiny_server):
    body = {"model": TINY_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    r = httpx.post(tiny_server.base_url + "/v1//chat/completions", json=body, timeout=60)
    assert r.status_code == 200 and r.json()["object"] == "chat.completion", r.text
    r = httpx.post(tiny_server.base_url + "//v1/completions?x=1", json={"prompt": "a", "max_tokens": 2}, timeout=60)
    assert r.status_code == 200 and r.json()["object"] == "text_completion", r.text
    assert httpx.get(tiny_server.base_url + "//health", timeout=10).json() == {"status": "ok"}
    assert_error(httpx.get(tiny_server.base_url + "//v1//nowhere", timeout=10), 404)


def test_double_slashes_on_the_wire(tiny_server):
    """The request line as sent (no client normalizes it): `GET //v1//models HTTP/1.1`."""
    with socket.create_connection(("127.0.0.1", tiny_server.port), timeout=10) as s:
        s.sendall(b"GET //v1//models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert json.loads(payload)["data"][0]["id"] == TINY_NAME


# ---- suffix -----------------------------------------------------------------------------------------


def test_suffix_without_fim_tokens_is_a_400(tiny_server):
    r = httpx.post(
        tiny_server.base_url + "/v1/completions", json={"prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 4}, timeout=30
    )
    err = assert_error(r, 400, param="suffix", type="invalid_request_error")
    assert "fim" in err["message"].lower()
    # An empty (or null) suffix is no suffix.
    for empty in ("", None):
        r = httpx.post(
            tiny_server.base_url + "/v1/completions", json={"prompt": "a", "suffix": empty, "max_tokens": 2}, timeout=30
        )
        assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def fim_server(tiny_llama_dir, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tiny-fim") / "model")
    shutil.copytree(tiny_llama_dir, path)
    ids = add_tokens(path, STARCODER_FIM)
    assert ids == [300, 301, 302]  # inside the tiny model's 320 embedding rows
    # Two models in one server: the FIM copy first (the default), the plain tiny model second.
    names = ["--served-model-name", FIM_NAME, "--served-model-name", PLAIN_NAME]
    server = ServerProcess([path, tiny_llama_dir, *TINY_ARGS, *names])
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def _tokens(base_url: str, text: str, special: bool) -> list[int]:
    r = httpx.post(base_url + "/tokenize", json={"prompt": text, "add_special_tokens": special}, timeout=10)
    r.raise_for_status()
    return r.json()["tokens"]


def test_suffix_with_fim_tokens(fim_server):
    url = fim_server.base_url
    expected = [
        1,  # BOS
        300,
        *_tokens(url, PREFIX, False),
        301,
        *_tokens(url, SUFFIX, False),
        302,
    ]
    # The tokenizer matches the FIM tokens' text whole: the same ids as the literal PSM string.
    assert _tokens(url, f"<fim_prefix>{PREFIX}<fim_suffix>{SUFFIX}<fim_middle>", True) == expected
    body = {"model": FIM_NAME, "prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 8, "temperature": 0, "echo": True}
    r = httpx.post(url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    fim = r.json()
    assert fim["usage"]["prompt_tokens"] == len(expected), (fim["usage"], expected)
    assert fim["choices"][0]["text"].startswith(PREFIX)  # echo: the prompt (the prefix)
    middle = fim["choices"][0]["text"][len(PREFIX) :]
    # Greedy on fp32: the same tokens as the PSM ids sent as a token-id prompt.
    plain = {"model": FIM_NAME, "prompt": expected, "max_tokens": 8, "temperature": 0}
    r = httpx.post(url + "/v1/completions", json=plain, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == middle and r.json()["usage"] == fim["usage"]
    # Streaming gives the same text.
    r, events = post_stream(url, "/v1/completions", {**body, "echo": False, "stream": True})
    assert r.status_code == 200, events
    assert "".join(e["choices"][0]["text"] for e in events if e["choices"]) == middle
    # Several prompts share the suffix; a token-id prompt is the prefix's ids.
    prefix_ids = _tokens(url, PREFIX, False)
    many = {"model": FIM_NAME, "prompt": [prefix_ids, prefix_ids], "suffix": SUFFIX, "max_tokens": 8, "temperature": 0}
    r = httpx.post(url + "/v1/completions", json=many, timeout=60)
    assert r.status_code == 200, r.text
    texts = [c["text"] for c in r.json()["choices"]]
    assert texts[0] == texts[1], texts
    assert r.json()["usage"]["prompt_tokens"] == 2 * (len(expected) - 1)  # no BOS before token ids


def test_suffix_lone_surrogate_is_a_400(fim_server):
    raw = '{"prompt": "a", "suffix": "\\ud800", "max_tokens": 2}'
    r = httpx.post(
        fim_server.base_url + "/v1/completions", content=raw, headers={"content-type": "application/json"}, timeout=30
    )
    assert_error(r, 400, param="suffix")


def test_suffix_follows_the_model_of_the_request(fim_server):
    """Each engine's FIM tokens are its own: the plain model of the same server refuses `suffix`."""
    body = {"prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 2}
    for _ in range(2):  # after the look-ups are cached, too
        r = httpx.post(fim_server.base_url + "/v1/completions", json={**body, "model": PLAIN_NAME}, timeout=30)
        assert_error(r, 400, param="suffix")
        r = httpx.post(fim_server.base_url + "/v1/completions", json={**body, "model": FIM_NAME}, timeout=30)
        assert r.status_code == 200 and r.json()["model"] == FIM_NAME, r.text
