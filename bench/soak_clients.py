"""The requests of the soak test (bench/soak.py): one random request of a kind, sent and checked.

Kinds: streaming and non-streaming chat and completions, structured output (response_format json_schema,
the content validated with jsonschema), tool calls (tool_choice "required", each call's arguments
validated against its tool's schema), /v1/responses (streaming or not) and /v1/embeddings. Every
request gets one `Outcome`: ok (`truncated` too when max_tokens cut a JSON answer short, so it could not
be validated), disconnected (a disconnector closed the stream or gave up on purpose), expected (a 429
when the queue is full, or the 400 naming the field a deliberately bad request broke) or unexpected
(anything else: 5xx, malformed SSE, no [DONE], an error event, invalid JSON where a schema was asked).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import jsonschema

from .workload import WORDS

KINDS = ("chat_stream", "chat", "completion_stream", "completion", "structured", "tool", "responses", "embeddings")


def _obj(props: dict, required: list[str]) -> dict:
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


_S24 = {"type": "string", "maxLength": 24}
PERSON = _obj({"name": _S24, "age": {"type": "integer", "minimum": 0, "maximum": 120}, "city": _S24}, ["name", "age"])
WEATHER = _obj({"city": _S24, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, ["city", "unit"])
ADD = _obj({"a": {"type": "integer"}, "b": {"type": "integer"}}, ["a", "b"])
TOOL_SCHEMAS = {"get_weather": WEATHER, "add": ADD}
TOOLS = [{"type": "function", "function": {"name": n, "parameters": s}} for n, s in TOOL_SCHEMAS.items()]
# kind -> (field, bad value) choices; the 400 must name the field
BAD = {
    "chat": [("temperature", -1), ("top_p", 7), ("max_tokens", -3), ("n", 0)],
    "completion": [("temperature", -1), ("top_p", 7), ("max_tokens", -3), ("n", 0)],
    "structured": [("response_format", {"type": "bogus"})],
    "tool": [("tool_choice", {"type": "function", "function": {"name": "nope"}})],
    "responses": [("max_output_tokens", -2), ("temperature", 9)],
    "embeddings": [("encoding_format", "zz")],
}


class Unexpected(Exception):
    pass


@dataclass
class Outcome:
    kind: str
    status: str  # ok | disconnected | expected | unexpected
    detail: str = ""
    truncated: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    engine_requests: int = 1  # engine requests behind the HTTP request (embeddings: one per input)
    latency: float = 0.0


@dataclass
class KindStats:
    requests: int = 0
    ok: int = 0
    truncated: int = 0
    disconnected: int = 0
    cancelled: int = 0  # of the disconnected: still running at the end of the grace period
    expected_errors: Counter = field(default_factory=Counter)
    unexpected_errors: int = 0
    unexpected_samples: list = field(default_factory=list)
    prompt_tokens: int = 0  # usage sums of the completed (ok) requests
    completion_tokens: int = 0
    engine_ok: int = 0  # engine requests of the ok ones
    engine_sent: int = 0  # engine requests that may have reached the engine (not refused)
    latency_max: float = 0.0

    def add(self, o: Outcome) -> None:
        self.requests += 1
        self.latency_max = max(self.latency_max, o.latency)
        if o.status == "ok":
            self.ok += 1
            self.truncated += o.truncated
            self.prompt_tokens += o.prompt_tokens
            self.completion_tokens += o.completion_tokens
            self.engine_ok += o.engine_requests
        elif o.status == "disconnected":
            self.disconnected += 1
            self.cancelled += o.detail == "cancelled"
        elif o.status == "expected":
            self.expected_errors[o.detail] += 1
        else:
            self.unexpected_errors += 1
            if len(self.unexpected_samples) < 5:
                self.unexpected_samples.append(o.detail[:400])
        if o.status != "expected":
            self.engine_sent += o.engine_requests


def _words(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def build(kind: str, rng: random.Random, model: str, max_tokens: int = 96) -> tuple[str, dict, int]:
    """(path, body, engine requests) of one random request of `kind`, with up to `max_tokens` tokens."""
    base = kind.removesuffix("_stream")
    stream = kind.endswith("_stream") or (kind in ("structured", "tool", "responses") and rng.random() < 0.5)
    body: dict = {"model": model, "temperature": round(rng.uniform(0, 1), 2)}
    if base == "embeddings":
        texts = [_words(rng, 1, 40) for _ in range(rng.randint(1, 3))]
        return "/v1/embeddings", {"model": model, "input": texts[0] if len(texts) == 1 else texts}, len(texts)
    lo = min(max_tokens, 16 if base in ("structured", "tool") else 1)
    body["max_output_tokens" if base == "responses" else "max_tokens"] = rng.randint(lo, max_tokens)
    if stream:
        body["stream"] = True
        if base != "responses":
            body["stream_options"] = {"include_usage": True}
    if base == "completion":
        return "/v1/completions", {**body, "prompt": "Write a story about " + _words(rng, 2, 60)}, 1
    if base == "responses":
        body.update(input="Tell me about " + _words(rng, 2, 30), store=rng.random() < 0.5)
        return "/v1/responses", body, 1
    text = "Write a story about " + _words(rng, 2, 60)
    if base == "structured":
        text = f"Describe a person who likes {_words(rng, 1, 4)} as JSON."
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    elif base == "tool":
        text = rng.choice([f"What is the weather in {rng.choice(WORDS)} town?", "What is 17 plus 25?"])
        body.update(tools=TOOLS, tool_choice="required")
    body["messages"] = [{"role": "user", "content": text}]
    return "/v1/chat/completions", body, 1


def check_usage(usage: dict | None, max_tokens: int, names=("prompt_tokens", "completion_tokens")) -> tuple[int, int]:
    if not isinstance(usage, dict):
        raise Unexpected(f"no usage: {usage!r}")
    p, c = usage.get(names[0]), usage.get(names[1]) if names[1] else 0
    if not isinstance(p, int) or p < 1 or not isinstance(c, int) or not 0 <= c <= max_tokens:
        raise Unexpected(f"bad usage {usage} (max_tokens {max_tokens})")
    return p, c


def check_answer(kind: str, finish: str | None, text: str, calls: list[tuple[str, str]]) -> bool:
    """Checks the answer of a chat/completion kind; True if max_tokens cut a JSON answer short."""
    if kind == "tool":
        if finish == "length":
            return True
        if finish != "tool_calls" or not calls:
            raise Unexpected(f"tool_choice required gave finish_reason {finish!r}, calls {calls}, text {text!r}")
        for name, args in calls:
            if name not in TOOL_SCHEMAS:
                raise Unexpected(f"call of unknown tool {name!r}")
            try:
                jsonschema.validate(json.loads(args), TOOL_SCHEMAS[name])
            except (ValueError, jsonschema.ValidationError) as exc:
                raise Unexpected(f"tool {name} arguments {args!r}: {str(exc)[:200]}") from None
        return False
    if finish not in ("stop", "length"):
        raise Unexpected(f"finish_reason {finish!r}")
    if kind == "structured":
        if finish == "length":
            return True
        try:
            jsonschema.validate(json.loads(text), PERSON)
        except (ValueError, jsonschema.ValidationError) as exc:
            raise Unexpected(f"structured output {text!r}: {str(exc)[:200]}") from None
    return False


async def read_sse(resp: httpx.Response, stop_after: int | None) -> tuple[list, bool]:
    """(data objects, saw [DONE]) of an SSE body; stops early after `stop_after` data events."""
    events: list = []
    done, name = False, None
    if stop_after == 0:
        return events, False
    async for line in resp.aiter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        if not line or line.startswith((":", "event:")):
            continue
        if not line.startswith("data: ") or done:
            raise Unexpected(f"malformed SSE line {line[:200]!r}" + (" after [DONE]" if done else ""))
        if line == "data: [DONE]":
            done = True
            continue
        try:
            obj = json.loads(line[6:])
        except ValueError:
            raise Unexpected(f"SSE data is not JSON: {line[:200]!r}") from None
        if not isinstance(obj, dict) or "error" in obj or name not in (None, obj.get("type")):
            raise Unexpected(f"error event, or not the {name!r} event: {line[:300]}")
        events.append(obj)
        name = None
        if stop_after is not None and len(events) >= stop_after:
            return events, False
    return events, done


def chat_result(events: list[dict]) -> tuple[str | None, str, list, dict | None]:
    """(finish_reason, text, [(tool name, arguments)], usage) of a chat/completions response or stream."""
    finish, text, calls, usage = None, [], {}, None
    for obj in events:
        usage = obj.get("usage") or usage
        for ch in obj.get("choices") or ():
            part = ch.get("delta", ch.get("message"))
            if part is None:
                text.append(ch.get("text") or "")
            else:
                text.append(part.get("content") or "")
                for i, tc in enumerate(part.get("tool_calls") or ()):
                    name, args = calls.get(tc.get("index", i), ("", ""))
                    fn = tc.get("function") or {}
                    calls[tc.get("index", i)] = (name + (fn.get("name") or ""), args + (fn.get("arguments") or ""))
            finish = ch.get("finish_reason") or finish
    return finish, "".join(text), [calls[i] for i in sorted(calls)], usage


def responses_result(events: list[dict]) -> tuple[dict, str]:
    """(final response object, streamed text) of a /v1/responses stream, checked for OpenAI's event order."""
    seq = [e.get("sequence_number") for e in events]
    if not events or any(not isinstance(s, int) for s in seq) or seq != sorted(set(seq)):
        raise Unexpected(f"sequence numbers not strictly increasing: {seq[:20]}")
    last = events[-1]
    if last.get("type") not in ("response.completed", "response.incomplete"):
        raise Unexpected(f"stream ended with {last.get('type')!r}: {json.dumps(last)[:300]}")
    text = "".join(e.get("delta", "") for e in events if e.get("type") == "response.output_text.delta")
    return last.get("response") or {}, text


async def send(client: httpx.AsyncClient, kind: str, rng: random.Random, model: str, **opts) -> Outcome:
    """One request of `kind`; never raises. opts: timeout, and disconnector, bad, max_tokens."""
    path, body, n_engine = build(kind, rng, model, opts.get("max_tokens", 96))
    base = kind.removesuffix("_stream")
    bad = BAD[base][rng.randrange(len(BAD[base]))] if opts.get("bad") else None
    if bad:
        body[bad[0]] = bad[1]
    stream = bool(body.get("stream"))
    stop_after = rng.randint(0, 12) if opts.get("disconnector") and stream else None
    timeout = opts["timeout"]
    if opts.get("disconnector") and not stream and rng.random() < 0.5:
        timeout = rng.uniform(0.02, 1.0)
    out = Outcome(kind, "ok", engine_requests=n_engine)
    start = time.monotonic()
    try:
        await asyncio.wait_for(
            _exchange(client, path, body, out, bad=bad, stop_after=stop_after, timeout=timeout), opts["timeout"] + 5
        )
    except Unexpected as exc:
        out.status, out.detail = "unexpected", str(exc)
    except httpx.TimeoutException as exc:
        abandoned = timeout < opts["timeout"]
        out.status, out.detail = ("disconnected", "") if abandoned else ("unexpected", f"timeout: {exc!r}")
    except Exception as exc:  # noqa: BLE001 - one bad request must not stop the soak
        out.status, out.detail = "unexpected", f"{type(exc).__name__}: {exc}"
    out.latency = time.monotonic() - start
    if out.status == "unexpected":
        out.detail = f"{path} {json.dumps({k: v for k, v in body.items() if k != 'tools'})[:300]}: {out.detail}"
    return out


async def _exchange(client: httpx.AsyncClient, path: str, body: dict, out: Outcome, **how) -> None:
    """Sends `body`, reads the answer as `how` says (bad: the (field, value) it broke; stop_after: the
    events after which to disconnect; timeout: the client's timeout) and checks it, filling in `out`."""
    bad, stop_after, timeout = how["bad"], how["stop_after"], how["timeout"]
    stream, base = bool(body.get("stream")), out.kind.removesuffix("_stream")
    async with client.stream("POST", path, json=body, timeout=timeout) as resp:
        if resp.status_code != 200:
            raw = (await resp.aread()).decode("utf-8", "replace")
            try:
                err = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                raise Unexpected(f"HTTP {resp.status_code} without the error envelope: {raw[:300]}") from None
            if resp.status_code == 429 and err.get("code") == "rate_limit_exceeded":
                out.status, out.detail = "expected", "429 queue full"
                await asyncio.sleep(min(1.0, float(resp.headers.get("retry-after") or 0.2)))
                return
            if bad and resp.status_code == 400 and err.get("param") == bad[0]:
                out.status, out.detail = "expected", f"400 {bad[0]}"
                return
            raise Unexpected(f"HTTP {resp.status_code}: {raw[:300]}")
        if bad:
            raise Unexpected(f"bad {bad[0]}={bad[1]!r} was accepted")
        if stream:
            events, done = await read_sse(resp, stop_after)
            if stop_after is not None and not done and len(events) >= stop_after:
                out.status = "disconnected"  # leaving the block closes the connection mid-stream
                return
            if base != "responses" and not done:
                raise Unexpected(f"stream ended without [DONE] after {len(events)} events")
        else:
            events = [json.loads(await resp.aread())]
    max_tokens = body.get("max_tokens") or body.get("max_output_tokens") or 0
    if base == "embeddings":
        vectors = [d.get("embedding") for d in events[0].get("data") or ()]
        if len(vectors) != out.engine_requests or any(abs(math.hypot(*v) - 1) > 1e-3 for v in vectors):
            raise Unexpected(f"{len(vectors)} embeddings for {out.engine_requests} inputs, or not unit length")
        out.prompt_tokens, out.completion_tokens = check_usage(events[0].get("usage"), 0, ("prompt_tokens", None))
    elif base == "responses":
        final, text = responses_result(events) if stream else (events[0], None)
        if final.get("status") not in ("completed", "incomplete") or text not in (None, final.get("output_text")):
            raise Unexpected(f"response status {final.get('status')!r} / streamed text differs: {text!r}")
        usage = check_usage(final.get("usage"), max_tokens, ("input_tokens", "output_tokens"))
        if final["status"] == "incomplete" and usage[1] != max_tokens:
            raise Unexpected(f"status {final['status']!r} with {usage[1]} of {max_tokens} output tokens")
        out.prompt_tokens, out.completion_tokens = usage
    else:
        finish, text, calls, usage = chat_result(events)
        out.truncated = check_answer(base, finish, text, calls)
        out.prompt_tokens, out.completion_tokens = check_usage(usage, max_tokens)
        if finish == "length" and out.completion_tokens != max_tokens:
            raise Unexpected(f"finish_reason {finish!r} with {out.completion_tokens} of {max_tokens} tokens")
