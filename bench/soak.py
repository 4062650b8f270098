"""Soak test: many clients, a mix of every kind of request, for a long time; then checks the server.

    python -m bench.soak --duration 600 --clients 16 --json out.json               # starts kvserve
    python -m bench.soak --start-kvserve="--max-model-len 2048 --max-queue 8" --model /models/x
    python -m bench.soak --base-url http://127.0.0.1:8000 --duration 120            # a running server

C async clients loop over random requests (bench/soak_clients.py: streaming and non-streaming chat and
completions, structured output, required tool calls, /v1/responses, /v1/embeddings; max_tokens 1..96);
one in 20 is deliberately bad and must get the 400 naming its field. One client in five is a
disconnector: it closes streams after k chunks and gives some non-streaming requests a short timeout.
After the load: /metrics must show nothing running, waiting, in flight, and no KV block in use within
--idle-limit seconds of the last client's end; then a reconciliation phase (--reconcile requests one
after the other, none abandoned) whose `usage` must equal the token counters' deltas exactly, and
vllm:request_success_total must grow by its request count. Over the whole load the server's counters
must be at least the clients' usage sums (abandoned requests count on the server only). With a started
server, its RSS (VmRSS) is sampled every second and may grow by less than --max-rss-growth-mb from the
end of the warm-up to the end. Exit status 1 when a check fails, with one line per failed check.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import os
import random
import re
import shlex
import sys
import tempfile
import time
from dataclasses import asdict

import httpx

from .__main__ import _git_commit
from .report import write_json
from .servers import REPO_ROOT, ManagedServer, free_port, kvserve_argv
from .soak_clients import KINDS, KindStats, Outcome, send

IDLE_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")
IDLE_GAUGES += ("kvserve:requests_in_flight",)
REASONS = ("stop", "length", "abort")
_SAMPLE = re.compile(r"^([^\s{]+)(\{[^}]*\})?\s+(\S+)$")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of load (600)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients (16)")
    ap.add_argument("--base-url", default=None, help="root URL of a running server (default: start kvserve)")
    ap.add_argument(
        "--start-kvserve", default="", metavar="ARGS", help="arguments for `kvserve serve` when it is started"
    )
    ap.add_argument("--model", default=None, help="started: the model path to serve; --base-url: the name to ask")
    ap.add_argument("--json", default=None, metavar="PATH", help="write the report here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=float, default=None, help="seconds before the RSS baseline (20%% of it, 5..60)")
    ap.add_argument("--reconcile", type=int, default=20, help="requests of the reconciliation phase (20)")
    ap.add_argument("--reconcile-max-tokens", type=int, default=16, help="their max_tokens limit (16)")
    ap.add_argument("--bad-share", type=float, default=0.05, help="share of deliberately bad requests (0.05)")
    ap.add_argument("--drain-grace", type=float, default=10.0, help="s for requests in flight at the end (10)")
    ap.add_argument("--idle-limit", type=float, default=2.0, help="seconds to idle after the load (2)")
    ap.add_argument("--max-rss-growth-mb", type=float, default=64.0, help="RSS growth after warm-up (64)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per request (120)")
    ap.add_argument("--startup-timeout", type=float, default=300.0)
    ap.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"))
    ap.add_argument("--log-dir", default=os.path.join(tempfile.gettempdir(), "kvserve-bench"))
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return ap


async def scrape(client: httpx.AsyncClient) -> dict[str, float]:
    """/metrics samples summed by name; vllm:request_success_total split as `...:<finished_reason>`."""
    resp = await client.get("/metrics", timeout=10)
    resp.raise_for_status()
    out: dict[str, float] = {}
    for line in resp.text.splitlines():
        m = _SAMPLE.match(line)
        if not m or line.startswith("#"):
            continue
        name, labels, value = m.groups()
        if name == "vllm:request_success_total":
            reason = re.search(r'finished_reason="([^"]*)"', labels or "")
            name += ":" + (reason.group(1) if reason else "")
        out[name] = out.get(name, 0.0) + float(value)
    return out


async def wait_idle(client: httpx.AsyncClient, since: float, limit: float) -> dict:
    """Polls /metrics until every IDLE_GAUGES is 0 (or `limit` s pass); seconds counted from `since`."""
    while True:
        m = await scrape(client)
        idle = all(m.get(g, 1.0) == 0 for g in IDLE_GAUGES)
        if idle or time.monotonic() - since > limit:
            return {"idle": idle, "seconds": round(time.monotonic() - since, 3), "metrics": m}
        await asyncio.sleep(0.05)


class Monitor:
    """Every second: the server's VmRSS (when its pid is known); every 30 s a progress line."""

    def __init__(self, pid: int | None, stats: dict[str, KindStats], quiet: bool) -> None:
        self.pid, self.stats, self.quiet = pid, stats, quiet
        self.samples: list[tuple[float, float]] = []  # (seconds since start, MB)

    def sample(self, t0: float) -> None:
        if self.pid is None:
            return
        try:
            with open(f"/proc/{self.pid}/status") as f:
                kb = next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))
        except (OSError, StopIteration):
            return
        self.samples.append((round(time.monotonic() - t0, 2), round(kb / 1024, 1)))

    async def run(self, t0: float) -> None:
        n = 0
        while True:
            self.sample(t0)
            n += 1
            if not self.quiet and n % 30 == 0:
                s, rss = self.stats.values(), f", RSS {self.samples[-1][1]:.0f} MB" if self.samples else ""
                line = f"{sum(k.requests for k in s)} requests, {sum(k.unexpected_errors for k in s)} unexpected errors"
                print(f"[soak] {time.monotonic() - t0:.0f} s: {line}{rss}", file=sys.stderr, flush=True)
            await asyncio.sleep(1.0)


async def soak(args: argparse.Namespace, root_url: str, pid: int | None) -> dict:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=args.clients + 4)
    async with httpx.AsyncClient(base_url=root_url, headers=headers, limits=limits, trust_env=False) as client:
        model = args.model if args.base_url and args.model else (await client.get("/v1/models")).json()["data"][0]["id"]
        stats = {k: KindStats() for k in KINDS}
        monitor = Monitor(pid, stats, args.quiet)
        m0 = await scrape(client)
        t0 = time.monotonic()
        deadline = t0 + args.duration
        sampler = asyncio.create_task(monitor.run(t0))
        opts = {"timeout": args.timeout}

        async def loop(i: int) -> None:
            rng = random.Random(args.seed * 1000 + i)
            while time.monotonic() < deadline:
                kind = rng.choice(KINDS)
                bad = rng.random() < args.bad_share
                try:
                    out = await send(client, kind, rng, model, disconnector=i % 5 == 4, bad=bad, **opts)
                except asyncio.CancelledError:  # still running after the grace period: abandoned
                    stats[kind].add(Outcome(kind, "disconnected", "cancelled"))
                    raise
                stats[kind].add(out)

        tasks = [asyncio.create_task(loop(i)) for i in range(args.clients)]
        _, late = await asyncio.wait(tasks, timeout=args.duration + args.drain_grace)
        for task in late:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        load_s = time.monotonic() - t0
        after_load = await wait_idle(client, time.monotonic(), max(30.0, args.idle_limit))
        recon = {k: KindStats() for k in KINDS}
        rng = random.Random(args.seed - 1)
        for i in range(args.reconcile):
            kind = KINDS[i % len(KINDS)]
            recon[kind].add(await send(client, kind, rng, model, max_tokens=args.reconcile_max_tokens, **opts))
        after_recon = await wait_idle(client, time.monotonic(), 30.0)
        sampler.cancel()
        monitor.sample(t0)
    r = {"model": model, "load_s": round(load_s, 1), "stats": stats, "recon": recon, "m0": m0}
    return {**r, "after_load": after_load, "after_recon": after_recon, "rss": monitor.samples}


def _sums(stats: dict[str, KindStats]) -> dict[str, int]:
    keys = ("requests", "ok", "truncated", "disconnected", "cancelled", "unexpected_errors", "prompt_tokens")
    keys += ("completion_tokens", "engine_ok", "engine_sent")
    out = {k: sum(getattr(s, k) for s in stats.values()) for k in keys}
    out["expected_errors"] = sum(sum(s.expected_errors.values()) for s in stats.values())
    return out


def _delta(a: dict, b: dict) -> dict[str, int]:
    """Counter deltas from scrape `a` to scrape `b`: prompt and generation tokens, requests by reason."""

    def d(name: str) -> int:
        return int(b.get(name, 0) - a.get(name, 0))

    out = {"prompt_tokens": d("vllm:prompt_tokens_total"), "generation_tokens": d("vllm:generation_tokens_total")}
    return {**out, **{r: d(f"vllm:request_success_total:{r}") for r in REASONS}}


def evaluate(r: dict, args: argparse.Namespace) -> tuple[dict, list[tuple[str, bool, str]]]:
    """(the report's figures, [(check, passed, detail)])."""
    load, rec = _sums(r["stats"]), _sums(r["recon"])
    d_load = _delta(r["m0"], r["after_load"]["metrics"])
    d_rec = _delta(r["after_load"]["metrics"], r["after_recon"]["metrics"])
    warmup = args.warmup if args.warmup is not None else min(60.0, max(5.0, 0.2 * args.duration))
    rss = None
    after = [mb for t, mb in r["rss"] if t >= warmup]
    if after:
        rss = {"warmup_s": warmup, "warmup_end_mb": after[0], "end_mb": after[-1], "max_mb": max(after)}
        rss.update(growth_mb=round(rss["end_mb"] - rss["warmup_end_mb"], 1), start_mb=r["rss"][0][1])
    c = []
    bad_kinds = [k for k in KINDS if r["stats"][k].ok + r["recon"][k].ok == 0]
    c.append(("requests", not bad_kinds, f"no request of {bad_kinds} completed" if bad_kinds else ""))
    n_unexp = load["unexpected_errors"] + rec["unexpected_errors"]
    samples = [x for s in (*r["stats"].values(), *r["recon"].values()) for x in s.unexpected_samples]
    c.append(("unexpected_errors", n_unexp == 0, f"{n_unexp} unexpected errors, e.g. {samples[:1]}"))
    for name, w in (("idle_after_load", r["after_load"]), ("idle_after_reconciliation", r["after_recon"])):
        gauges = {g: w["metrics"].get(g) for g in IDLE_GAUGES}
        ok = w["idle"] and w["seconds"] <= args.idle_limit
        c.append((name, ok, f"idle: {w['idle']} after {w['seconds']} s (limit {args.idle_limit} s): {gauges}"))
    if rss is not None:
        ok = rss["growth_mb"] < args.max_rss_growth_mb
        c.append(("rss_growth", ok, f"RSS {rss['warmup_end_mb']} -> {rss['end_mb']} MB after warm-up"))
    served = d_load["stop"] + d_load["length"]
    c += [
        ("load_prompt_tokens", d_load["prompt_tokens"] >= load["prompt_tokens"],
         f"server counted {d_load['prompt_tokens']} prompt tokens < clients' usage {load['prompt_tokens']}"),
        ("load_generation_tokens", d_load["generation_tokens"] >= load["completion_tokens"],
         f"server counted {d_load['generation_tokens']} tokens < clients' usage {load['completion_tokens']}"),
        ("load_requests", load["engine_ok"] <= served and served + d_load["abort"] <= load["engine_sent"],
         f"server stop+length {served}, abort {d_load['abort']}; clients completed {load['engine_ok']}, "
         f"sent at most {load['engine_sent']}"),
        ("reconciliation_requests", rec["ok"] == args.reconcile and rec["engine_ok"] == d_rec["stop"] + d_rec["length"]
         and d_rec["abort"] == 0, f"{rec['ok']}/{args.reconcile} ok, {rec['engine_ok']} engine requests; "
         f"server: {d_rec}"),
        ("reconciliation_prompt_tokens", rec["prompt_tokens"] == d_rec["prompt_tokens"],
         f"usage {rec['prompt_tokens']} != counter delta {d_rec['prompt_tokens']}"),
        ("reconciliation_generation_tokens", rec["completion_tokens"] == d_rec["generation_tokens"],
         f"usage {rec['completion_tokens']} != counter delta {d_rec['generation_tokens']}"),
    ]  # fmt: skip
    figures = {
        "load_s": r["load_s"],
        "totals": load,
        "kinds": {k: {**asdict(s), "expected_errors": dict(s.expected_errors)} for k, s in r["stats"].items()},
        "rss": rss,
        "idle": {k: {"idle": r[k]["idle"], "seconds": r[k]["seconds"]} for k in ("after_load", "after_recon")},
        "counters": {"load": {"server": d_load, "clients": load}, "reconciliation": {"server": d_rec, "clients": rec}},
        "final_gauges": {g: r["after_recon"]["metrics"].get(g) for g in IDLE_GAUGES},
    }
    return figures, c


def print_table(fig: dict) -> None:
    print(f"{'kind':<18}{'requests':>9}{'ok':>7}{'trunc':>6}{'disc':>6}{'expect':>7}{'unexp':>6}{'prompt':>9}"
          f"{'compl':>8}{'max s':>7}")  # fmt: skip
    for kind, s in fig["kinds"].items():
        e = sum(s["expected_errors"].values())
        row = (s["requests"], s["ok"], s["truncated"], s["disconnected"], e, s["unexpected_errors"])
        print(f"{kind:<18}{row[0]:>9}{row[1]:>7}{row[2]:>6}{row[3]:>6}{row[4]:>7}{row[5]:>6}", end="")
        print(f"{s['prompt_tokens']:>9}{s['completion_tokens']:>8}{s['latency_max']:>7.1f}")
    t, rss, idle = fig["totals"], fig["rss"], fig["idle"]
    print(f"{t['requests']} requests in {fig['load_s']} s; idle {idle['after_load']['seconds']} s after the load"
          + (f"; RSS {rss['start_mb']} MB at start, {rss['warmup_end_mb']} after warm-up, {rss['end_mb']} at the end"
             if rss else ""))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    server = ready_s = None
    if args.base_url:
        root_url = args.base_url.rstrip("/").removesuffix("/v1")
    else:
        port = free_port()
        serve_args = (shlex.quote(args.model) + " " if args.model else "") + args.start_kvserve
        root_url = f"http://127.0.0.1:{port}"
        server = ManagedServer("kvserve", kvserve_argv(serve_args, port), root_url + "/v1",
                               os.path.join(args.log_dir, "soak-kvserve.log"), cwd=REPO_ROOT)  # fmt: skip
        if not args.quiet:
            print(f"[soak] starting: {shlex.join(server.argv)} (log: {server.log_path})", file=sys.stderr)
        server.start()
    try:
        if server is not None:
            ready_s = round(server.wait_ready(args.startup_timeout, args.api_key), 1)
        result = asyncio.run(soak(args, root_url, server.proc.pid if server else None))
    except (RuntimeError, httpx.HTTPError, OSError, ValueError, KeyError) as exc:  # the server died or never came
        log = f"; log {server.log_path}:\n{server.log_tail()}" if server else ""
        print(f"FAIL soak: {type(exc).__name__}: {exc}{log}\nsoak: FAILED")
        return 1
    finally:
        code = server.stop() if server else None
    fig, checks = evaluate(result, args)
    if server is not None:
        checks.append(("server_exit", code == 0, f"the server exited with {code} after SIGTERM (expected 0)"))
    fig["checks"] = [{"check": n, "ok": ok, "detail": "" if ok else d} for n, ok, d in checks]
    fig["server_exit_code"] = code
    print_table(fig)
    failed = [(n, d) for n, ok, d in checks if not ok]
    if args.json:
        meta = {"command": "python -m bench.soak " + shlex.join(argv), "git_commit": _git_commit()}
        meta.update(time=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), cpu_count=os.cpu_count())
        meta.update(model=result["model"], server=shlex.join(server.argv) if server else root_url)
        meta.update(server_ready_s=ready_s, duration_s=args.duration, clients=args.clients)
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        write_json(args.json, {"meta": meta, **fig, "passed": not failed, "rss_samples": result["rss"]})
        print(f"wrote {args.json}")
    for name, detail in failed:
        print(f"FAIL {name}: {detail}")
    print("soak: " + ("FAILED" if failed else f"all {len(checks)} checks passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
