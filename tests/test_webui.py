"""The built-in chat page (app/webui) in a real browser: Debian's Chromium driven by Playwright.

Three real servers on the tiny Llama: the shared `tiny_server` (the page, open), one with
`--api-key` (the key flow) and one with `--no-webui` (/ is a 404). The browser is /usr/bin/chromium
(the `chromium_path` fixture apt-installs it when missing and running as root, and skips only where no
browser can be had); Playwright (the pip package, from the test extra) drives it and never downloads a
browser of its own. Replies are slowed down where the test needs time to watch them, with Chromium's
own network throttling (DevTools), not by the server.

The screenshot of a conversation goes to docs/webui.png and to pytest's tmp dir.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from typing import Any, Iterator

import httpx
import pytest
from http_server import REPO, TINY_ARGS, TINY_NAME, ServerProcess, assert_error, tiny_server
from playwright.sync_api import Browser, Page, Request, expect, sync_playwright

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
# Headless as root, and no background traffic to hosts this closed network cannot reach.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
KEY = "sekrit"
PROMPT = "Tell me a long story"
STATS = re.compile(r"^(~?)(\d+) tokens · (\d+\.\d) tok/s")
WAIT_MS = 20_000


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's Chromium, apt-installed here when missing (as root); skip where none can be had."""
    if not os.access(CHROMIUM, os.X_OK) and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, capture_output=True, timeout=900)
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no browser: {CHROMIUM} is missing and could not be apt-installed (not root, or apt failed)")
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def servers(tiny_llama_dir: str, request: pytest.FixtureRequest) -> Iterator[dict[str, ServerProcess]]:
    """open: the shared tiny server; keyed: --api-key KEY; off: --no-webui (all started before any waits)."""
    args = [tiny_llama_dir, *TINY_ARGS, "--served-model-name", TINY_NAME]
    own = {"keyed": ServerProcess([*args, "--api-key", KEY]), "off": ServerProcess([*args, "--no-webui"])}
    try:
        found = {"open": request.getfixturevalue("tiny_server")}
        for server in own.values():
            server.wait_ready()
        yield {**found, **own}
    finally:
        for server in own.values():
            server.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 720})
    p = context.new_page()
    p.set_default_timeout(WAIT_MS)
    try:
        yield p
    finally:
        context.close()


# ---- helpers --------------------------------------------------------------------------------------


def throttle(page: Page, bytes_per_s: int) -> None:
    """Chromium's own download throttling (-1: none), so that a fast tiny-model reply takes visible time."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": bytes_per_s, "uploadThroughput": -1},
    )


def chat_requests(page: Page) -> list[Request]:
    """The page's POSTs to /v1/chat/completions, in order, as they are sent."""
    seen: list[Request] = []
    page.on("request", lambda r: seen.append(r) if r.url.endswith("/v1/chat/completions") else None)
    return seen


def record_growth(page: Page) -> None:
    """Record (time, reply length, stats text) at every change of the log or the stats line."""
    page.evaluate(
        """() => {
            window.samples = [];
            const log = document.getElementById("log"), stats = document.getElementById("stats");
            new MutationObserver(() => {
                const t = log.querySelector(".msg.assistant:last-child .text");
                window.samples.push([performance.now(), t ? t.textContent.length : 0, stats.textContent]);
            }).observe(document.body, { subtree: true, childList: true, characterData: true });
        }"""
    )


def send(page: Page, text: str, *, max_tokens: str = "", temperature: str = "0") -> None:
    page.fill("#temperature", temperature)
    page.fill("#max-tokens", max_tokens)
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def stats_of(page: Page, state: str) -> re.Match:
    """Wait for the stats line in `state` (done, stopped, error, ...) and parse its token count and rate."""
    expect(page.locator("#stats")).to_have_attribute("data-state", state)
    text = page.text_content("#stats") or ""
    m = STATS.match(text)
    assert m, text
    return m


def reply_texts(page: Page) -> list[str]:
    return page.locator(".msg.assistant .text").all_text_contents()


def completion_tokens(base_url: str, body: dict[str, Any]) -> int:
    body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    r = httpx.post(base_url + "/v1/chat/completions", json=body, timeout=60)
    r.raise_for_status()
    return r.json()["usage"]["completion_tokens"]


# ---- tests ----------------------------------------------------------------------------------------


def test_page_streams_a_conversation(servers: dict[str, ServerProcess], page: Page, tmp_path) -> None:
    server = servers["open"]
    head = httpx.get(server.base_url + "/", timeout=10)
    assert head.status_code == 200 and head.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in head.headers["content-security-policy"]
    sent = chat_requests(page)
    throttle(page, 20_000)  # ~100 SSE frames a second: the reply arrives over many reads
    page.goto(server.base_url + "/")
    expect(page.locator("#model")).to_have_value(TINY_NAME)
    assert page.locator("#model option").all_text_contents() == [TINY_NAME]
    page.fill("#system", "You are a storyteller.")
    record_growth(page)
    send(page, PROMPT, max_tokens="64")
    expect(page.locator("#stop")).to_be_enabled()
    done = stats_of(page, "done")
    expect(page.locator("#stop")).to_be_disabled()

    # The reply grew over time, and a live tokens/s was shown while it streamed.
    samples = page.evaluate("window.samples")
    lengths = [n for _, n, _ in samples if n]
    assert len(set(lengths)) >= 5 and lengths == sorted(lengths), lengths
    assert samples[-1][0] - next(t for t, n, _ in samples if n) > 100, samples  # ms from the first text to the last
    live = [STATS.match(s) for _, _, s in samples]
    assert any(m and m.group(1) == "~" for m in live), [s for _, _, s in samples]
    reply = reply_texts(page)[0]
    assert reply and len(reply) == lengths[-1]

    # The final count is the server's usage (the tokens, not the SSE chunks), and a rate is shown.
    body = sent[0].post_data_json
    assert body["model"] == TINY_NAME and body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0 and body["max_tokens"] == 64
    assert body["messages"] == [
        {"role": "system", "content": "You are a storyteller."},
        {"role": "user", "content": PROMPT},
    ]
    assert done.group(1) == "" and int(done.group(2)) == completion_tokens(server.base_url, body)
    assert float(done.group(3)) > 0

    # The second turn sends the whole conversation.
    send(page, "And then?", max_tokens="16")
    stats_of(page, "done")
    messages = sent[1].post_data_json["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"] == reply and messages[3]["content"] == "And then?"
    assert len(reply_texts(page)) == 2
    os.makedirs(os.path.join(REPO, "docs"), exist_ok=True)
    for path in (os.path.join(REPO, "docs", "webui.png"), str(tmp_path / "webui.png")):
        page.screenshot(path=path)


def test_errors_and_stop_mid_stream(servers: dict[str, ServerProcess], page: Page) -> None:
    server = servers["open"]
    sent = chat_requests(page)
    page.goto(server.base_url + "/")
    expect(page.locator("#model")).to_have_value(TINY_NAME)

    # An error before the stream (prompt + max_tokens over the tiny model's 512): the server's message,
    # the turn taken back (the text returns to the input box), the page ready again.
    send(page, PROMPT, max_tokens="2000")
    expect(page.locator("#error")).to_contain_text("maximum context length is 512 tokens")
    expect(page.locator("#stats")).to_have_attribute("data-state", "error")
    expect(page.locator("#prompt")).to_have_value(PROMPT)
    assert page.locator(".msg").count() == 0 and page.locator("#send").is_enabled()

    # A long reply (the rest of the context: 472 tokens) stopped after a few chunks.
    throttle(page, 3_000)  # the whole reply would take ~20 s
    send(page, PROMPT)
    expect(page.locator("#stats")).to_have_attribute("data-state", "streaming")
    expect(page.locator("#error")).to_be_hidden()
    time.sleep(0.5)
    page.click("#stop")
    stopped = stats_of(page, "stopped")
    assert "stopped" in (page.text_content("#stats") or "")
    expect(page.locator(".msg.assistant.stopped")).to_have_count(1)
    partial = reply_texts(page)[0]
    time.sleep(0.5)
    assert reply_texts(page)[0] == partial and partial  # nothing arrives after Stop
    assert 0 < int(stopped.group(2)) < 472, stopped.group(0)
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#stop")).to_be_disabled()
    server.wait_idle()  # the server let the request go (its KV blocks are free)

    # Usable again: the next turn streams, and the stopped reply is part of the conversation.
    throttle(page, -1)
    send(page, "Short one", max_tokens="8")
    assert int(stats_of(page, "done").group(2)) <= 8
    messages = sent[-1].post_data_json["messages"]
    assert messages == [
        {"role": "user", "content": PROMPT},
        {"role": "assistant", "content": partial},
        {"role": "user", "content": "Short one"},
    ]
    expect(page.locator("#error")).to_be_hidden()


def test_api_key_flow(servers: dict[str, ServerProcess], page: Page) -> None:
    url = servers["keyed"].base_url
    # The page and its files need no key; the API still does.
    for path in ("/", "/webui/chat.js", "/webui/chat.css"):
        assert httpx.get(url + path, timeout=10).status_code == 200, path
    assert_error(httpx.get(url + "/v1/models", timeout=10), 401, "invalid_api_key")
    sent = chat_requests(page)

    page.goto(url + "/")
    expect(page.locator("#error")).to_contain_text("Error 401: missing API key")
    expect(page.locator("#key-box")).to_be_visible()
    page.fill("#api-key", "wrong")
    page.click("#key-save")
    expect(page.locator("#error")).to_contain_text("incorrect API key provided")
    expect(page.locator("#key-box")).to_be_visible()

    page.fill("#api-key", KEY)
    page.click("#key-save")
    expect(page.locator("#model")).to_have_value(TINY_NAME)
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#key-box")).to_be_hidden()
    send(page, "Hi", max_tokens="8")
    stats_of(page, "done")
    assert sent[-1].header_value("authorization") == f"Bearer {KEY}"
    assert page.evaluate("localStorage.getItem('kvserve.apiKey')") == KEY

    # Kept across a reload; a key that stops working brings the key box back with the error.
    page.reload()
    expect(page.locator("#model")).to_have_value(TINY_NAME)
    expect(page.locator("#key-box")).to_be_hidden()
    page.evaluate("localStorage.setItem('kvserve.apiKey', 'revoked')")
    send(page, "Hi again", max_tokens="8")
    expect(page.locator("#error")).to_contain_text("Error 401: incorrect API key provided")
    expect(page.locator("#key-box")).to_be_visible()
    expect(page.locator("#prompt")).to_have_value("Hi again")


def test_no_webui_is_a_404(servers: dict[str, ServerProcess]) -> None:
    url = servers["off"].base_url
    for path in ("/", "/webui/chat.js", "/webui/chat.css"):
        assert_error(httpx.get(url + path, timeout=10), 404)
    assert httpx.get(url + "/v1/models", timeout=10).status_code == 200
