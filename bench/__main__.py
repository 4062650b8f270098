"""Serving benchmark for OpenAI-compatible servers: a concurrency sweep with streaming requests.

Against a running server:
    python -m bench --base-url http://127.0.0.1:8000/v1 --concurrency 1 32 --max-tokens 128 \\
        --prompt-words 60 --json out.json --plot docs/bench.png

kvserve and a baseline, started by the benchmark one after the other, same requests, one run:
    python -m bench --start-kvserve="--dtype bfloat16" \\
        --baseline "transformers serve --continuous-batching --port {port} ..." --baseline-name transformers \\
        --concurrency 1 32 --json out.json --plot docs/bench.png

Each level sends 2×C requests (--num-requests N to fix the count) with C in flight (closed loop), or
Poisson arrivals with --request-rate. Requests are streaming chat completions (temperature 0,
stream_options.include_usage, ignore_eos unless --no-ignore-eos or the server rejects it); output
tokens come from `usage`. Reported per level: ok/errors, output tokens/s, requests/s, TTFT, ITL,
TPOT, end-to-end latency (p50/p99). With several servers, a side-by-side table with ratios follows.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from .report import format_comparison, format_server_table, write_json, write_plot
from .runner import SweepConfig, run_sweep
from .servers import REPO_ROOT, ManagedServer, expand_command, free_port, kvserve_argv
from .workload import IntRange


@dataclass
class Target:
    name: str
    base_url: str
    model: str | None = None
    argv: list[str] | None = None  # None: already running
    extra_body: dict | None = None


def _int_range(text: str) -> IntRange:
    try:
        return IntRange.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _json_obj(text: str) -> dict:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({exc})") from None
    if not isinstance(obj, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return obj


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


class _NewBaseline(argparse.Action):
    """--baseline CMD: starts a new baseline entry."""

    def __call__(self, parser, namespace, values, option_string=None):
        entries = list(getattr(namespace, self.dest) or [])
        entries.append({"command": values})
        setattr(namespace, self.dest, entries)


class _BaselineField(argparse.Action):
    """--baseline-name/-url/-model/-extra-body: a field of the latest --baseline."""

    def __call__(self, parser, namespace, values, option_string=None):
        entries = getattr(namespace, self.dest) or []
        if not entries:
            parser.error(f"{option_string} must come after the --baseline it belongs to")
        key = option_string.removeprefix("--baseline-").replace("-", "_")
        if key in entries[-1]:
            parser.error(f"{option_string} given twice for one --baseline")
        entries[-1][key] = values


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    g = ap.add_argument_group("the server under test")
    g.add_argument(
        "--base-url",
        default="http://127.0.0.1:8000/v1",
        help="OpenAI base URL of a running server (ignored with --start-kvserve)",
    )
    g.add_argument(
        "--name", default=None, help="its name in the report (default: kvserve with --start-kvserve, else 'server')"
    )
    g.add_argument("--model", default=None, help="model name to request (default: the first id of GET /models)")
    g.add_argument(
        "--start-kvserve",
        nargs="?",
        const="",
        default=None,
        metavar="ARGS",
        help="start kvserve (`python -m app.main serve ARGS`) on a free port and benchmark it; "
        "write ARGS with '=' when they start with '--', e.g. --start-kvserve='--dtype float32'",
    )
    g.add_argument("--kvserve-port", type=int, default=0, help="port for --start-kvserve (default: a free one)")
    g.add_argument(
        "--extra-body",
        type=_json_obj,
        default=None,
        metavar="JSON",
        help="extra fields merged into every request to this server",
    )
    b = ap.add_argument_group("baselines (each --baseline-* flag belongs to the --baseline before it)")
    b.add_argument(
        "--baseline",
        action=_NewBaseline,
        dest="baselines",
        default=[],
        metavar="CMD",
        help="a server command to start and benchmark after the first server; {port} is replaced "
        "by a free port, {python} by this interpreter. An empty CMD with --baseline-url "
        "benchmarks a server that is already running. Repeat for several baselines",
    )
    b.add_argument(
        "--baseline-name",
        action=_BaselineField,
        dest="baselines",
        metavar="NAME",
        help="its name in the report (default: the program's name)",
    )
    b.add_argument(
        "--baseline-url",
        action=_BaselineField,
        dest="baselines",
        metavar="URL",
        help="its base URL (default: http://127.0.0.1:{port}/v1 when CMD contains {port})",
    )
    b.add_argument(
        "--baseline-model",
        action=_BaselineField,
        dest="baselines",
        metavar="MODEL",
        help="its model name (default: the first id of GET /models)",
    )
    b.add_argument(
        "--baseline-extra-body",
        action=_BaselineField,
        dest="baselines",
        type=_json_obj,
        metavar="JSON",
        help="extra request fields for it",
    )
    w = ap.add_argument_group("workload")
    w.add_argument(
        "--endpoint",
        choices=["chat", "completions"],
        default="chat",
        help="/v1/chat/completions (default) or /v1/completions",
    )
    w.add_argument(
        "--concurrency",
        type=_positive_int,
        nargs="+",
        default=[1, 32],
        metavar="C",
        help="requests in flight, one level each (default: 1 32)",
    )
    w.add_argument(
        "--num-requests",
        type=_positive_int,
        default=None,
        metavar="N",
        help="requests per level (default: --requests-factor × C)",
    )
    w.add_argument("--requests-factor", type=_positive_int, default=2, help="requests per level = this × C (2)")
    w.add_argument(
        "--request-rate",
        type=float,
        default=None,
        metavar="R",
        help="Poisson arrivals at R requests/s, at most C in flight (default: closed loop)",
    )
    w.add_argument(
        "--prompt-words",
        type=_int_range,
        default=IntRange(60, 60),
        metavar="N|LO:HI",
        help="random words after 'Write a long story about ' (default 60: about 90 prompt tokens)",
    )
    w.add_argument(
        "--max-tokens",
        type=_int_range,
        default=IntRange(128, 128),
        metavar="N|LO:HI",
        help="output tokens per request, fixed or uniform in a range (default 128)",
    )
    w.add_argument("--temperature", type=float, default=0.0)
    w.add_argument(
        "--ignore-eos",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="send ignore_eos: true so every request makes max_tokens tokens (dropped for a server that rejects it)",
    )
    w.add_argument("--warmup", type=int, default=4, help="requests (16 tokens, all at once) before the sweep (4)")
    w.add_argument("--seed", type=int, default=0, help="seed of prompts, lengths and arrivals")
    r = ap.add_argument_group("limits and output")
    r.add_argument("--timeout", type=float, default=600.0, help="seconds per request (600)")
    r.add_argument(
        "--max-duration", type=float, default=1800.0, help="seconds per level; no new requests after it (1800)"
    )
    r.add_argument("--startup-timeout", type=float, default=600.0, help="seconds for a started server to be ready")
    r.add_argument(
        "--api-key",
        default=os.environ.get("OPENAI_API_KEY"),
        help="Bearer key sent to every server (default: $OPENAI_API_KEY)",
    )
    r.add_argument("--json", default=None, metavar="PATH", help="write all results here")
    r.add_argument("--plot", default=None, metavar="PATH", help="write a PNG: throughput and TTFT vs concurrency")
    r.add_argument("--per-request", action="store_true", help="include every request's timings in the JSON")
    r.add_argument(
        "--log-dir",
        default=os.path.join(tempfile.gettempdir(), "kvserve-bench"),
        help="where started servers' output goes, one NAME.log each (default: %(default)s)",
    )
    r.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return ap


def _program_name(argv: list[str] | None) -> str | None:
    """'transformers' for ['env', 'X=1', '/venv/bin/transformers', 'serve', ...]."""
    for word in argv or ():
        if word != "env" and "=" not in word:
            return os.path.basename(word)
    return None


def make_targets(args: argparse.Namespace, ap: argparse.ArgumentParser) -> list[Target]:
    targets = []
    if args.start_kvserve is not None:
        port = args.kvserve_port or free_port()
        targets.append(
            Target(
                args.name or "kvserve",
                f"http://127.0.0.1:{port}/v1",
                args.model,
                kvserve_argv(args.start_kvserve, port),
                args.extra_body,
            )
        )
    else:
        targets.append(Target(args.name or "server", args.base_url, args.model, None, args.extra_body))
    for i, entry in enumerate(args.baselines):
        cmd, url, port = entry["command"], entry.get("url"), None
        if url is None:
            if "{port}" not in cmd:
                ap.error(f"baseline {i + 1} ({cmd!r}): put {{port}} in its command or give --baseline-url")
            port = free_port()
            url = f"http://127.0.0.1:{port}/v1"
        argv = expand_command(cmd, port) if cmd.strip() else None
        name = entry.get("name") or _program_name(argv) or f"baseline{i + 1}"
        targets.append(Target(name, url, entry.get("model"), argv, entry.get("extra_body")))
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        ap.error(f"server names must differ: {names}")
    return targets


def _git_commit() -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return (head + ("-dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_target(t: Target, cfg: SweepConfig, args: argparse.Namespace) -> dict:
    cfg_t = SweepConfig(**{**cfg.__dict__, "extra_body": t.extra_body})
    if t.argv is None:
        run = asyncio.run(run_sweep(t.name, t.base_url, cfg_t, model=t.model))
        run["command"] = None
        return run
    log_path = os.path.join(args.log_dir, f"{t.name}.log")
    server = ManagedServer(t.name, t.argv, t.base_url, log_path, cwd=REPO_ROOT)
    if not args.quiet:
        print(f"[{t.name}] starting: {shlex.join(t.argv)} (log: {log_path})", file=sys.stderr, flush=True)
    server.start()
    ready_s = rss = None
    try:
        try:
            ready_s = server.wait_ready(args.startup_timeout, args.api_key)
        except RuntimeError as exc:
            run = {
                "name": t.name,
                "base_url": t.base_url,
                "model": t.model,
                "ignore_eos": None,
                "error": str(exc),
                "levels": [],
            }
        else:
            if not args.quiet:
                print(f"[{t.name}] ready in {ready_s:.1f} s", file=sys.stderr, flush=True)
            run = asyncio.run(run_sweep(t.name, t.base_url, cfg_t, model=t.model))
        rss = server.peak_rss_mb()
    finally:
        code = server.stop()
    run.update(command=shlex.join(t.argv), log=log_path, ready_s=ready_s, peak_rss_mb=rss, exit_code=code)
    return run


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.request_rate is not None and args.request_rate <= 0:
        ap.error("--request-rate must be positive")
    targets = make_targets(args, ap)
    cfg = SweepConfig(
        concurrency=args.concurrency,
        num_requests=args.num_requests,
        requests_factor=args.requests_factor,
        request_rate=args.request_rate,
        endpoint=args.endpoint,
        prompt_words=args.prompt_words,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        ignore_eos=args.ignore_eos,
        warmup=max(0, args.warmup),
        seed=args.seed,
        timeout=args.timeout,
        max_duration=args.max_duration,
        api_key=args.api_key,
        keep_requests=args.per_request,
        quiet=args.quiet,
    )
    runs = []
    for t in targets:
        runs.append(run_target(t, cfg, args))
        print(format_server_table(runs[-1]) + "\n", flush=True)
    cmp_text = format_comparison(runs)
    if cmp_text:
        print(cmp_text, flush=True)
    workload = (
        f"{args.endpoint}, prompt {args.prompt_words} words, max_tokens {args.max_tokens}, "
        + (f"Poisson {args.request_rate:g} req/s" if args.request_rate else "closed loop")
        + (
            f", {args.num_requests} requests per level"
            if args.num_requests
            else f", {args.requests_factor}xC requests per level"
        )
    )
    for path in (args.json, args.plot):
        if path and os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
    if args.json:
        from .report import comparison

        meta = {
            "command": "python -m bench " + shlex.join(argv),
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": _git_commit(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "workload": workload,
        }
        config = {k: (str(v) if isinstance(v, IntRange) else v) for k, v in cfg.__dict__.items() if k != "api_key"}
        write_json(
            args.json,
            {"meta": meta, "config": config, "servers": runs, "comparison": comparison(runs) if len(runs) > 1 else []},
        )
        print(f"wrote {args.json}", flush=True)
    if args.plot:
        if write_plot(args.plot, runs, title=workload):
            print(f"wrote {args.plot}", flush=True)
        else:
            print("no plot: matplotlib is not installed (pip install -e '.[bench]')", file=sys.stderr)
    return 1 if any(r.get("error") for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
