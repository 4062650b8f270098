"""One streaming request against an OpenAI-compatible server, timed from the client's side.

- TTFT: from just before the request is sent to the first chunk that carries generated text
  (chat: `delta.content` or `delta.reasoning_content`; completions: `text`). The chat role chunk
  with empty content does not count.
- ITL: the gaps between consecutive text chunks (a server that puts several tokens in one chunk gives
  fewer, longer gaps; tokens that arrive in one network read give gaps near zero).
- Output tokens: `usage.completion_tokens` from the stream (stream_options.include_usage). A server
  that sends no usage is counted by text chunks instead, and the result says so (`usage_reported`).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field

import httpx


@dataclass
class RequestResult:
    ok: bool = False
    error: str | None = None
    status: int | None = None
    start: float = 0.0  # time.perf_counter() when the request was sent
    ttft: float | None = None  # seconds
    e2e: float | None = None  # seconds, until the stream ended
    itl: list[float] = field(default_factory=list)  # seconds
    output_tokens: int = 0
    prompt_tokens: int | None = None
    usage_reported: bool = False
    text_chunks: int = 0
    finish_reason: str | None = None

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first: (e2e - ttft) / (tokens - 1)."""
        if not self.ok or self.ttft is None or self.e2e is None or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tpot"] = self.tpot
        return d


def make_client(concurrency: int, timeout: float, api_key: str | None = None) -> httpx.AsyncClient:
    """An async client that keeps up to `concurrency` connections open (no proxies from the env)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    n = max(1, concurrency)
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
        timeout=httpx.Timeout(timeout, connect=min(timeout, 30.0)),
        headers=headers,
        trust_env=False,
    )


def _chunk_text(obj: dict) -> tuple[str, str | None]:
    """(generated text in this chunk, finish_reason if any) over all choices."""
    text = []
    finish = None
    for choice in obj.get("choices") or ():
        delta = choice.get("delta")
        if delta is not None:  # chat
            for key in ("content", "reasoning_content"):
                if delta.get(key):
                    text.append(delta[key])
        elif choice.get("text"):  # completions
            text.append(choice["text"])
        if choice.get("finish_reason"):
            finish = choice["finish_reason"]
    return "".join(text), finish


async def _stream(client: httpx.AsyncClient, url: str, payload: dict, res: RequestResult) -> None:
    last = None
    res.start = time.perf_counter()
    async with client.stream("POST", url, json=payload) as resp:
        res.status = resp.status_code
        if resp.status_code != 200:
            body = (await resp.aread()).decode("utf-8", "replace")
            res.error = f"HTTP {resp.status_code}: {body[:300]}"
            return
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue  # blank separators, comments, `event:` lines
            data = line[5:].strip()
            if data == "[DONE]":
                break
            now = time.perf_counter()
            try:
                obj = json.loads(data)
            except json.JSONDecodeError:
                res.error = f"bad SSE data: {data[:200]}"
                return
            if not isinstance(obj, dict):
                continue
            if obj.get("error"):
                res.error = f"error event: {json.dumps(obj['error'])[:300]}"
                return
            text, finish = _chunk_text(obj)
            if text:
                if last is None:
                    res.ttft = now - res.start
                else:
                    res.itl.append(now - last)
                last = now
                res.text_chunks += 1
            if finish:
                res.finish_reason = finish
            usage = obj.get("usage")
            if usage:
                res.usage_reported = True
                res.output_tokens = int(usage.get("completion_tokens") or 0)
                if usage.get("prompt_tokens") is not None:
                    res.prompt_tokens = int(usage["prompt_tokens"])
    res.e2e = time.perf_counter() - res.start
    if not res.usage_reported:
        res.output_tokens = res.text_chunks
    if res.ttft is None and res.output_tokens > 0:
        res.ttft = res.e2e  # tokens were generated but no text came back (e.g. all special tokens)
    res.ok = res.ttft is not None or (res.usage_reported and res.output_tokens == 0)
    if not res.ok:
        res.error = "stream ended without output"


async def send_request(client: httpx.AsyncClient, url: str, payload: dict, timeout: float) -> RequestResult:
    """Send one streaming request; never raises (errors are in the result). Bounded by `timeout` s."""
    res = RequestResult()
    try:
        await asyncio.wait_for(_stream(client, url, payload, res), timeout)
    except asyncio.TimeoutError:
        res.error = f"timeout after {timeout:g} s"
    except httpx.HTTPError as exc:
        res.error = f"{type(exc).__name__}: {exc}"[:300]
    except Exception as exc:  # noqa: BLE001 - one bad request must not stop the benchmark
        res.error = f"{type(exc).__name__}: {exc}"[:300]
    if res.error:
        res.ok = False
        if res.start and res.e2e is None:
            res.e2e = time.perf_counter() - res.start
    return res


@dataclass
class LevelRun:
    """The requests of one concurrency level (or request rate) and how long they took."""

    concurrency: int
    request_rate: float | None
    results: list[RequestResult]
    planned: int
    duration: float
    stopped_early: bool
    client_cpu_s: float = 0.0  # CPU time this benchmark process used during the level
