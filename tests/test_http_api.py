"""The OpenAI API of a real `kvserve serve` process (tiny random Llama), through the `openai` SDK and httpx.

Shapes and ids, usage arithmetic, every prompt form, streaming framing and stream == non-stream,
n > 1, stop strings across token boundaries, multibyte text, logprobs formats, echo, include_usage,
seeded determinism under concurrency, /tokenize and /detokenize.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import httpx
import openai
import pytest
from helpers_tokenizer import TINY_EOS_ID
from http_server import TINY_NAME, assert_error, base_url, post_stream, tiny_server  # noqa: F401 (fixtures)

NO_EOS = {"ignore_eos": True}


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def vocab(tiny_llama_dir) -> dict[str, int]:
    with open(os.path.join(tiny_llama_dir, "tokenizer.json"), encoding="utf-8") as f:
        return json.load(f)["model"]["vocab"]


def tokenize(base_url: str, **body) -> list[int]:
    r = httpx.post(base_url + "/tokenize", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["tokens"]


def completion(base_url: str, **body) -> dict:
    r = httpx.post(base_url + "/v1/completions", json={"model": TINY_NAME, **body}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def chat(base_url: str, **body) -> dict:
    r = httpx.post(base_url + "/v1/chat/completions", json={"model": TINY_NAME, **body}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def streamed_texts(events: list[dict], field: str = "text") -> dict[int, str]:
    texts: dict[int, str] = {}
    for ev in events:
        for ch in ev["choices"]:
            piece = ch[field] if field == "text" else ch["delta"].get("content") or ""
            texts[ch["index"]] = texts.get(ch["index"], "") + piece
    return texts


def token_ids(logprobs_tokens: list[str]) -> list[int]:
    return [int(t.removeprefix("token_id:")) for t in logprobs_tokens]


# ---------------------------------------------------------------------------------------------- basics


def test_health_version_models(base_url, client):
    r = httpx.get(base_url + "/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert isinstance(httpx.get(base_url + "/version").json()["version"], str)
    models = client.models.list()
    assert [m.id for m in models.data] == [TINY_NAME]
    card = httpx.get(base_url + f"/v1/models/{TINY_NAME}").json()
    assert card["object"] == "model" and card["id"] == TINY_NAME and card["max_model_len"] == 512
    assert client.models.retrieve(TINY_NAME).id == TINY_NAME
    assert_error(httpx.get(base_url + "/v1/models/other"), 404, "model_not_found", "model")


def test_completion_shape_and_usage(base_url, client):
    before = int(time.time())
    r = client.completions.create(model=TINY_NAME, prompt="Hello world", max_tokens=5, temperature=0, extra_body=NO_EOS)
    assert r.id.startswith("cmpl-") and len(r.id) > 10 and r.object == "text_completion"
    assert before - 1 <= r.created <= time.time() + 1 and r.model == TINY_NAME
    assert len(r.choices) == 1 and r.choices[0].index == 0 and r.choices[0].finish_reason == "length"
    prompt_ids = tokenize(base_url, prompt="Hello world")
    assert r.usage.prompt_tokens == len(prompt_ids)
    assert r.usage.completion_tokens == 5 and r.usage.total_tokens == len(prompt_ids) + 5
    # The default max_tokens of /v1/completions is 16 (OpenAI's).
    r = client.completions.create(model=TINY_NAME, prompt="Hello world", temperature=0, extra_body=NO_EOS)
    assert r.usage.completion_tokens == 16 and r.choices[0].finish_reason == "length"
    # max_completion_tokens is an alias of max_tokens; the model field may be omitted.
    body = completion(base_url, prompt="Hello", max_completion_tokens=3, ignore_eos=True)
    assert body["usage"]["completion_tokens"] == 3
    r = httpx.post(base_url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2, "ignore_eos": True})
    assert r.status_code == 200 and r.json()["model"] == TINY_NAME
    # Unknown fields are ignored.
    assert completion(base_url, prompt="Hi", max_tokens=2, no_such_field={"x": 1}, user="u1")["choices"]


def test_chat_shape_usage_and_content_parts(base_url, client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    r = client.chat.completions.create(
        model=TINY_NAME, messages=messages, max_tokens=6, temperature=0, extra_body=NO_EOS
    )
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == TINY_NAME
    msg = r.choices[0].message
    assert msg.role == "assistant" and isinstance(msg.content, str) and r.choices[0].finish_reason == "length"
    prompt_ids = tokenize(base_url, messages=messages)
    assert r.usage.prompt_tokens == len(prompt_ids) and r.usage.completion_tokens == 6
    assert r.usage.total_tokens == len(prompt_ids) + 6
    # Content as a list of text parts is the same prompt as the joined string.
    parts = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]},
    ]
    joined = [messages[0], {"role": "user", "content": "Hello\nthere"}]
    a = chat(base_url, messages=parts, max_tokens=6, temperature=0, ignore_eos=True)
    b = chat(base_url, messages=joined, max_tokens=6, temperature=0, ignore_eos=True)
    assert a["choices"][0]["message"] == b["choices"][0]["message"]
    assert a["usage"] == b["usage"]
    # response_format text is accepted.
    assert chat(base_url, messages=messages, max_tokens=1, response_format={"type": "text"})["choices"]


def test_chat_default_max_tokens_is_the_context_limit(base_url):
    messages = [{"role": "user", "content": "Go on"}]
    body = chat(base_url, messages=messages, temperature=0, ignore_eos=True)
    n_prompt = body["usage"]["prompt_tokens"]
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 512 - n_prompt


def test_prompt_forms(base_url):
    text_ids = tokenize(base_url, prompt="The quick brown fox")
    common = dict(max_tokens=4, temperature=0, ignore_eos=True)
    one = completion(base_url, prompt="The quick brown fox", **common)
    as_ids = completion(base_url, prompt=text_ids, **common)
    assert as_ids["choices"][0]["text"] == one["choices"][0]["text"]
    assert as_ids["usage"] == one["usage"]

    other_ids = tokenize(base_url, prompt="Hello")
    many = completion(base_url, prompt=["The quick brown fox", "Hello"], n=2, **common)
    assert [c["index"] for c in many["choices"]] == [0, 1, 2, 3]
    texts = [c["text"] for c in many["choices"]]
    assert texts[0] == texts[1] == one["choices"][0]["text"]  # greedy: both choices of prompt 0 agree
    assert many["usage"]["prompt_tokens"] == len(text_ids) + len(other_ids)  # each prompt once
    assert many["usage"]["completion_tokens"] == 4 * 4  # every choice's tokens

    lists = completion(base_url, prompt=[text_ids, other_ids], **common)
    assert [c["text"] for c in lists["choices"]] == [texts[0], texts[2]]
    assert lists["usage"]["prompt_tokens"] == len(text_ids) + len(other_ids)


def test_echo(base_url):
    body = completion(base_url, prompt="Hello world", max_tokens=3, temperature=0, echo=True, ignore_eos=True)
    plain = completion(base_url, prompt="Hello world", max_tokens=3, temperature=0, ignore_eos=True)
    assert body["choices"][0]["text"] == "Hello world" + plain["choices"][0]["text"]
    ids = tokenize(base_url, prompt="Hello world", add_special_tokens=False)
    body = completion(base_url, prompt=ids, max_tokens=3, temperature=0, echo=True, ignore_eos=True)
    assert body["choices"][0]["text"].startswith("Hello world")
    _, events = post_stream(
        base_url,
        "/v1/completions",
        {"prompt": "Hello world", "max_tokens": 3, "temperature": 0, "echo": True, "ignore_eos": True, "stream": True},
    )
    assert events[0]["choices"][0]["text"].startswith("Hello world")
    assert streamed_texts(events)[0] == "Hello world" + plain["choices"][0]["text"]


# ---------------------------------------------------------------------------------------------- streaming


def test_completion_stream_equals_non_stream(base_url):
    body = {
        "model": TINY_NAME,
        "prompt": ["Once upon a time", "Numbers like"],
        "n": 2,
        "max_tokens": 24,
        "temperature": 1.0,
        "seed": 1234,
        "ignore_eos": True,
    }
    full = completion(base_url, **body)
    r, events = post_stream(base_url, "/v1/completions", {**body, "stream": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    ids = {ev["id"] for ev in events}
    assert len(ids) == 1 and ids.pop().startswith("cmpl-")
    assert all(ev["object"] == "text_completion" and ev["model"] == TINY_NAME for ev in events)
    assert all("usage" not in ev for ev in events)  # no usage unless asked
    got = streamed_texts(events)
    assert got == {c["index"]: c["text"] for c in full["choices"]}
    assert len(set(got.values())) > 1  # sampled: the choices differ
    finishes = [(ch["index"], ch["finish_reason"]) for ev in events for ch in ev["choices"] if ch["finish_reason"]]
    assert sorted(finishes) == [(i, "length") for i in range(4)]


def test_chat_stream_framing_n_and_usage(base_url):
    body = {
        "model": TINY_NAME,
        "messages": [{"role": "user", "content": "Tell me a story"}],
        "n": 3,
        "max_tokens": 12,
        "temperature": 0.9,
        "seed": 7,
        "ignore_eos": True,
    }
    full = chat(base_url, **body)
    r, events = post_stream(base_url, "/v1/chat/completions", {**body, "stream": True})
    assert all(ev["object"] == "chat.completion.chunk" and ev["id"].startswith("chatcmpl-") for ev in events)
    assert len({ev["id"] for ev in events}) == 1
    per_choice: dict[int, list[dict]] = {}
    for ev in events:
        assert len(ev["choices"]) == 1 and "usage" not in ev
        ch = ev["choices"][0]
        per_choice.setdefault(ch["index"], []).append(ch)
    assert sorted(per_choice) == [0, 1, 2]
    for index, chunks in per_choice.items():
        assert chunks[0]["delta"]["role"] == "assistant"  # the role chunk comes first
        assert all("role" not in c["delta"] for c in chunks[1:])
        reasons = [c["finish_reason"] for c in chunks]
        assert reasons[-1] == "length" and all(x is None for x in reasons[:-1])  # one finish, on the last
    assert streamed_texts(events, "delta") == {c["index"]: c["message"]["content"] for c in full["choices"]}

    # include_usage: every chunk carries usage null, then one extra chunk with no choices and the totals.
    _, events = post_stream(
        base_url, "/v1/chat/completions", {**body, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert all("usage" in ev and ev["usage"] is None for ev in events[:-1])
    assert events[-1]["choices"] == [] and events[-1]["usage"] == full["usage"]
    assert full["usage"]["completion_tokens"] == 3 * 12
    # stream_options.include_usage false: no usage chunk.
    _, events = post_stream(
        base_url, "/v1/chat/completions", {**body, "n": 1, "stream": True, "stream_options": {"include_usage": False}}
    )
    assert all(ev["choices"] for ev in events)


def test_sdk_streaming_sync_and_async(base_url, client):
    messages = [{"role": "user", "content": "Hello"}]
    full = client.chat.completions.create(model=TINY_NAME, messages=messages, max_tokens=10, seed=3, extra_body=NO_EOS)
    stream = client.chat.completions.create(
        model=TINY_NAME,
        messages=messages,
        max_tokens=10,
        seed=3,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=NO_EOS,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].usage.total_tokens == full.usage.total_tokens

    async def run():
        aclient = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)
        try:
            r = await aclient.completions.create(
                model=TINY_NAME, prompt="Hello", max_tokens=8, seed=5, extra_body=NO_EOS
            )
            s = await aclient.completions.create(
                model=TINY_NAME, prompt="Hello", max_tokens=8, seed=5, stream=True, extra_body=NO_EOS
            )
            pieces = [c.choices[0].text async for c in s]
            return r.choices[0].text, "".join(pieces)
        finally:
            await aclient.close()

    a, b = asyncio.run(run())
    assert a == b


def _stop_across_boundary(text: str, tokens: list[str]) -> tuple[str, int] | None:
    """A 2-character stop string made of the last character of one token and the first of the next,
    whose first occurrence in `text` is at that boundary; with the length of the text before it."""
    pos = 0
    for tok in tokens[:-1]:
        if "\ufffd" in tok:  # a token holding part of a character: texts no longer line up
            return None
        pos += len(tok)
        assert text[:pos].endswith(tok)
        candidate = text[pos - 1 : pos + 1]
        if (
            pos >= 2
            and len(candidate) == 2
            and "\ufffd" not in candidate
            and candidate.isprintable()
            and text.find(candidate) == pos - 1
        ):
            return candidate, pos - 1
    return None


def test_stop_string_split_across_tokens_is_excluded(base_url):
    found = None
    for prompt in ("Hello world", "The quick brown fox", "Tokenizers split text", "user assistant system"):
        base = completion(base_url, prompt=prompt, max_tokens=24, temperature=0, logprobs=0, ignore_eos=True)
        text = base["choices"][0]["text"]
        found = _stop_across_boundary(text, base["choices"][0]["logprobs"]["tokens"])
        if found:
            break
    assert found is not None, "no greedy output with a usable token boundary"
    stop, cut = found
    expected = text[:cut]
    common = {"prompt": prompt, "max_tokens": 24, "temperature": 0, "ignore_eos": True, "stop": [stop, "\x00zz"]}
    body = completion(base_url, **common)
    ch = body["choices"][0]
    assert ch["text"] == expected and ch["finish_reason"] == "stop" and ch["stop_reason"] == stop
    _, events = post_stream(base_url, "/v1/completions", {**common, "stream": True})
    assert streamed_texts(events)[0] == expected
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    body = completion(base_url, **common, include_stop_str_in_output=True)
    assert body["choices"][0]["text"] == expected + stop

    # The same through chat, with the stop string as a single str.
    messages = [{"role": "user", "content": "Hello"}]
    base = chat(base_url, messages=messages, max_tokens=16, temperature=0, ignore_eos=True)["choices"][0]
    content = base["message"]["content"]
    probe = next(
        (
            content[i : i + 2]
            for i in range(1, len(content) - 1)
            if content[i : i + 2].isprintable()
            and "\ufffd" not in content[i : i + 2]
            and content.find(content[i : i + 2]) == i
        ),
        None,
    )
    if probe is not None:
        got = chat(base_url, messages=messages, max_tokens=16, temperature=0, ignore_eos=True, stop=probe)
        assert got["choices"][0]["message"]["content"] == content[: content.find(probe)]
        assert got["choices"][0]["finish_reason"] == "stop"


def test_multibyte_text_streams_whole_characters(base_url, vocab):
    from model.tokenizer import BYTE_TO_UNICODE

    # Push the model towards the two byte tokens of "é" (C3 A9), so characters get split across tokens.
    lead, cont = vocab[BYTE_TO_UNICODE[0xC3]], vocab[BYTE_TO_UNICODE[0xA9]]
    body = {
        "model": TINY_NAME,
        "prompt": "Caf\u00e9",
        "max_tokens": 12,
        "n": 8,
        "seed": 11,
        "temperature": 1.0,
        "ignore_eos": True,
        "logit_bias": {str(lead): 6, str(cont): 6, **{str(t): -100 for t in (0, 1, TINY_EOS_ID)}},
        "logprobs": 0,
        "return_tokens_as_token_ids": True,
    }
    full = completion(base_url, **body)
    _, events = post_stream(base_url, "/v1/completions", {**body, "stream": True})
    streamed = streamed_texts(events)
    split_chars = 0
    for ch in full["choices"]:
        ids = token_ids(ch["logprobs"]["tokens"])
        decoded = httpx.post(base_url + "/detokenize", json={"tokens": ids}).json()["prompt"]
        assert ch["text"] == decoded == streamed[ch["index"]]
        split_chars += sum(1 for a, b in zip(ids, ids[1:]) if (a, b) == (lead, cont))
        if "\ufffd" not in decoded:  # no broken bytes in the end: none may have been streamed either
            assert all("\ufffd" not in c["text"] for ev in events for c in ev["choices"] if c["index"] == ch["index"])
    assert split_chars > 0  # the test exercised characters split across tokens
    assert "\u00e9" in "".join(streamed.values())


# ---------------------------------------------------------------------------------------------- logprobs


def test_completion_logprobs_legacy_format(base_url):
    # Token ids as names ("token_id:N") keep the top_logprobs keys unique (several byte tokens decode to U+FFFD).
    common = {
        "prompt": "Hello world",
        "max_tokens": 6,
        "temperature": 0,
        "logprobs": 3,
        "ignore_eos": True,
        "return_tokens_as_token_ids": True,
    }
    body = completion(base_url, **common)
    lp = body["choices"][0]["logprobs"]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == 6
    assert lp["text_offset"][0] == 0
    for i, (tok, value, top) in enumerate(zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"])):
        assert isinstance(tok, str) and value <= 0.0
        assert 3 <= len(top) <= 4 and tok in top and top[tok] == value
        assert value == pytest.approx(max(top.values()), abs=1e-5)  # greedy picks the most likely token
    by_text = completion(base_url, **{**common, "return_tokens_as_token_ids": False})["choices"][0]["logprobs"]
    assert by_text["token_logprobs"] == lp["token_logprobs"]
    for i in range(1, 6):
        assert by_text["text_offset"][i] == by_text["text_offset"][i - 1] + len(by_text["tokens"][i - 1])
    _, events = post_stream(base_url, "/v1/completions", {**common, "stream": True})
    tokens = [t for ev in events for t in (ev["choices"][0]["logprobs"] or {}).get("tokens", [])]
    offsets = [t for ev in events for t in (ev["choices"][0]["logprobs"] or {}).get("text_offset", [])]
    assert tokens == lp["tokens"] and offsets == lp["text_offset"]
    # logprobs=0: the sampled token only.
    lp0 = completion(base_url, **{**common, "logprobs": 0})["choices"][0]["logprobs"]
    assert all(len(top) == 1 for top in lp0["top_logprobs"])


def test_chat_logprobs_format(base_url, client):
    messages = [{"role": "user", "content": "Hi"}]
    r = client.chat.completions.create(
        model=TINY_NAME,
        messages=messages,
        max_tokens=5,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        extra_body=NO_EOS,
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 5
    for entry in content:
        assert entry.logprob <= 0 and all(0 <= b < 256 for b in entry.bytes) and entry.bytes
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob, abs=1e-5)  # greedy
    body = chat(base_url, messages=messages, max_tokens=5, temperature=0, logprobs=True, ignore_eos=True)
    assert all(e["top_logprobs"] == [] for e in body["choices"][0]["logprobs"]["content"])
    assert chat(base_url, messages=messages, max_tokens=2)["choices"][0]["logprobs"] is None
    _, events = post_stream(
        base_url,
        "/v1/chat/completions",
        {
            "messages": messages,
            "max_tokens": 5,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": 2,
            "ignore_eos": True,
            "stream": True,
        },
    )
    streamed = [e for ev in events for e in ((ev["choices"][0]["logprobs"] or {}).get("content") or [])]
    assert [e["token"] for e in streamed] == [e.token for e in content]


# ---------------------------------------------------------------------------------------------- sampling


def test_seeded_determinism_under_concurrency(base_url):
    async def run():
        aclient = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=60)

        async def seeded():
            r = await aclient.completions.create(
                model=TINY_NAME, prompt="Seeds make", max_tokens=20, temperature=1.0, seed=424242, extra_body=NO_EOS
            )
            return r.choices[0].text

        async def noise(i):
            await aclient.completions.create(
                model=TINY_NAME,
                prompt=f"Other prompt {i}" * (i + 1),
                max_tokens=10 + 5 * i,
                temperature=1.0,
                extra_body=NO_EOS,
            )

        try:
            alone = await seeded()
            together = await asyncio.gather(seeded(), noise(0), seeded(), noise(1), noise(2), seeded())
            return alone, [t for t in together if t is not None]
        finally:
            await aclient.close()

    alone, together = asyncio.run(run())
    assert together == [alone] * 3


def test_sampling_extras_and_stop_token_ids(base_url):
    base = completion(
        base_url,
        prompt="Hello world",
        max_tokens=8,
        temperature=0,
        ignore_eos=True,
        logprobs=0,
        return_tokens_as_token_ids=True,
    )
    ids = token_ids(base["choices"][0]["logprobs"]["tokens"])
    third = ids[2]
    first_at = ids.index(third)
    body = completion(
        base_url, prompt="Hello world", max_tokens=8, temperature=0, ignore_eos=True, stop_token_ids=[third]
    )
    ch = body["choices"][0]
    assert ch["finish_reason"] == "stop" and ch["stop_reason"] == third
    assert body["usage"]["completion_tokens"] == first_at + 1
    body = completion(
        base_url,
        prompt="Hello world",
        max_tokens=6,
        temperature=0.8,
        top_k=5,
        top_p=0.9,
        min_p=0.05,
        repetition_penalty=1.1,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        min_tokens=6,
        skip_special_tokens=False,
        seed=1,
    )
    assert body["usage"]["completion_tokens"] == 6  # min_tokens == max_tokens: exactly 6, whatever EOS does


def test_tokenize_and_detokenize(base_url):
    r = httpx.post(base_url + "/tokenize", json={"prompt": "Hello world", "return_token_strs": True}).json()
    assert set(r) == {"count", "max_model_len", "tokens", "token_strs"}
    assert r["count"] == len(r["tokens"]) == len(r["token_strs"]) and r["max_model_len"] == 512
    assert r["tokens"][0] == 1  # BOS added by default
    plain = tokenize(base_url, prompt="Hello world", add_special_tokens=False)
    assert plain == r["tokens"][1:]
    assert httpx.post(base_url + "/detokenize", json={"tokens": plain}).json() == {"prompt": "Hello world"}
    chat_ids = tokenize(base_url, messages=[{"role": "user", "content": "Hi"}])
    with_prompt = tokenize(base_url, messages=[{"role": "user", "content": "Hi"}], add_generation_prompt=False)
    assert len(chat_ids) > len(with_prompt)
    assert_error(httpx.post(base_url + "/detokenize", json={"tokens": [10**6]}), 400, param="tokens")
    assert_error(httpx.post(base_url + "/tokenize", json={}), 400)
