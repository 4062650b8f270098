"""Drive one server through a concurrency sweep.

Closed loop (default): C workers each send a request, wait for its stream to end, and send the next,
until the level's requests are used up (2×C by default) or `max_duration` has passed. With a request
rate, arrivals follow a Poisson process (exponential gaps, seeded) and C caps the requests in flight;
a request's times start when it is sent, not when it arrived.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from dataclasses import dataclass, field

import httpx

from .client import LevelRun, RequestResult, make_client, send_request
from .report import summarize_level
from .workload import IntRange, RequestSpec, build_payload, endpoint_path, make_requests


@dataclass
class SweepConfig:
    concurrency: list[int]
    num_requests: int | None = None  # per level; None: requests_factor × C
    requests_factor: int = 2
    request_rate: float | None = None  # req/s (Poisson); None: closed loop
    endpoint: str = "chat"
    prompt_words: IntRange = field(default_factory=lambda: IntRange(60, 60))
    max_tokens: IntRange = field(default_factory=lambda: IntRange(128, 128))
    temperature: float = 0.0
    ignore_eos: bool = True
    extra_body: dict | None = None
    warmup: int = 4
    seed: int = 0
    timeout: float = 600.0  # per request, seconds
    max_duration: float = 1800.0  # per level, seconds: no new requests after it
    api_key: str | None = None
    keep_requests: bool = False  # put every request's timings in the result
    quiet: bool = False

    def requests_for(self, c: int) -> int:
        return self.num_requests if self.num_requests is not None else max(1, self.requests_factor * c)


def _log(cfg: SweepConfig, msg: str) -> None:
    if not cfg.quiet:
        print(msg, file=sys.stderr, flush=True)


async def run_level(
    client: httpx.AsyncClient,
    url: str,
    payloads: list[dict],
    concurrency: int,
    *,
    request_rate: float | None,
    timeout: float,
    max_duration: float,
    seed: int = 0,
) -> LevelRun:
    """Send `payloads` with at most `concurrency` in flight; bounded by count and by `max_duration`."""
    n = len(payloads)
    results: list[RequestResult | None] = [None] * n
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    deadline = t0 + max_duration
    stopped = False

    if request_rate is None:
        todo = iter(enumerate(payloads))

        async def worker() -> None:
            nonlocal stopped
            for i, payload in todo:  # shared iterator: each worker takes the next request
                if time.perf_counter() > deadline:
                    stopped = True
                    return
                results[i] = await send_request(client, url, payload, timeout)

        await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, n)))))
    else:
        rng = random.Random(seed)
        sem = asyncio.Semaphore(max(1, concurrency))

        async def one(i: int, payload: dict) -> None:
            nonlocal stopped
            async with sem:
                if time.perf_counter() > deadline:
                    stopped = True
                    return
                results[i] = await send_request(client, url, payload, timeout)

        tasks = []
        for i, payload in enumerate(payloads):
            if time.perf_counter() > deadline:
                stopped = True
                break
            tasks.append(asyncio.create_task(one(i, payload)))
            if i < n - 1:
                await asyncio.sleep(rng.expovariate(request_rate))
        await asyncio.gather(*tasks)

    done = [r for r in results if r is not None]
    starts = [r.start for r in done if r.start]
    ends = [r.start + r.e2e for r in done if r.start and r.e2e is not None]
    duration = (max(ends) - min(starts)) if starts and ends else time.perf_counter() - t0
    return LevelRun(concurrency, request_rate, done, n, duration, stopped, time.process_time() - cpu0)


async def detect_model(client: httpx.AsyncClient, base_url: str) -> str:
    resp = await client.get(base_url.rstrip("/") + "/models")
    resp.raise_for_status()
    data = resp.json().get("data") or []
    if not data:
        raise RuntimeError(f"{base_url}/models lists no model; pass --model")
    return data[0]["id"]


async def probe(client: httpx.AsyncClient, url: str, cfg: SweepConfig, model: str) -> tuple[bool, RequestResult]:
    """One short request. If the server rejects `ignore_eos` (400/422), retry without it.
    Returns (ignore_eos used, the result of the last try)."""
    spec = RequestSpec("Say hello.", min(4, cfg.max_tokens.hi) or 1)
    use = cfg.ignore_eos
    payload = build_payload(
        spec, endpoint=cfg.endpoint, model=model, temperature=cfg.temperature, ignore_eos=use, extra_body=cfg.extra_body
    )
    res = await send_request(client, url, payload, cfg.timeout)
    if not res.ok and use and res.status in (400, 422):
        payload.pop("ignore_eos", None)
        retry = await send_request(client, url, payload, cfg.timeout)
        if retry.ok:
            return False, retry
    return use, res


async def run_sweep(name: str, base_url: str, cfg: SweepConfig, model: str | None = None) -> dict:
    """The whole sweep against one server: model detection (`model` None: the first id of GET /models),
    probe, warm-up, then each concurrency. Returns a JSON-ready dict (levels summarized); a server that
    cannot answer the probe gives `error` and no levels."""
    base_url = base_url.rstrip("/")
    url = base_url + endpoint_path(cfg.endpoint)
    out: dict = {
        "name": name,
        "base_url": base_url,
        "endpoint": cfg.endpoint,
        "model": model,
        "ignore_eos": None,
        "error": None,
        "levels": [],
    }
    async with make_client(max(cfg.concurrency + [cfg.warmup, 1]), cfg.timeout, cfg.api_key) as client:
        try:
            model = model or await detect_model(client, base_url)
        except Exception as exc:  # noqa: BLE001
            out["error"] = f"cannot list models at {base_url}/models: {exc}"
            _log(cfg, f"[{name}] {out['error']}")
            return out
        out["model"] = model
        use_eos, first = await probe(client, url, cfg, model)
        if not first.ok:
            out["error"] = f"probe request failed: {first.error}"
            _log(cfg, f"[{name}] {out['error']}")
            return out
        out["ignore_eos"] = use_eos
        if cfg.ignore_eos and not use_eos:
            _log(
                cfg,
                f"[{name}] the server rejects ignore_eos; sending requests without it "
                "(outputs may end early at EOS: see the out-token column)",
            )
        if not first.usage_reported:
            _log(cfg, f"[{name}] the server sends no usage in the stream; counting tokens by text chunks")

        def payloads(n: int, seed: int, max_tokens: IntRange) -> list[dict]:
            specs = make_requests(n, cfg.prompt_words, max_tokens, seed)
            return [
                build_payload(
                    s,
                    endpoint=cfg.endpoint,
                    model=model,
                    temperature=cfg.temperature,
                    ignore_eos=use_eos,
                    extra_body=cfg.extra_body,
                )
                for s in specs
            ]

        if cfg.warmup > 0:
            warm_tokens = IntRange(min(16, cfg.max_tokens.hi), min(16, cfg.max_tokens.hi))
            t = time.perf_counter()
            warm = await run_level(
                client,
                url,
                payloads(cfg.warmup, cfg.seed + 999_983, warm_tokens),
                cfg.warmup,
                request_rate=None,
                timeout=cfg.timeout,
                max_duration=cfg.max_duration,
            )
            bad = sum(not r.ok for r in warm.results)
            _log(
                cfg,
                f"[{name}] warm-up: {cfg.warmup} requests in {time.perf_counter() - t:.1f} s"
                + (f", {bad} failed" if bad else ""),
            )

        for level_index, c in enumerate(cfg.concurrency):
            n = cfg.requests_for(c)
            level = await run_level(
                client,
                url,
                payloads(n, cfg.seed + 1000 * (level_index + 1), cfg.max_tokens),
                c,
                request_rate=cfg.request_rate,
                timeout=cfg.timeout,
                max_duration=cfg.max_duration,
                seed=cfg.seed + level_index,
            )
            summary = summarize_level(level)
            if cfg.keep_requests:
                summary["requests_detail"] = [r.to_dict() for r in level.results]
            out["levels"].append(summary)
            _log(
                cfg,
                f"[{name}] C={c}: {summary['ok']}/{summary['requests']} ok, "
                f"{summary['output_tok_s']:.1f} out tok/s, TTFT p50 {_ms(summary['ttft_ms_p50'])}, "
                f"ITL p50 {_ms(summary['itl_ms_p50'])}, {summary['duration_s']:.1f} s",
            )
    return out


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} ms"
