"""Statistics, tables, JSON and the PNG plot of a benchmark run.

Per level (one concurrency): output tokens/s and requests/s over the level's wall time (first request
sent to last stream ended), TTFT / ITL / TPOT / end-to-end latency percentiles over the successful
requests (ITL pools the gaps of all requests). Times in the JSON and tables are milliseconds.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from .client import LevelRun


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between order statistics; None if empty."""
    xs = sorted(values)
    if not xs:
        return None
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _ms(v: float | None) -> float | None:
    return None if v is None else v * 1000.0


def summarize_level(level: "LevelRun") -> dict:
    ok = [r for r in level.results if r.ok]
    errors = [r for r in level.results if not r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    dur = level.duration if level.duration > 0 else float("nan")
    ttft = [r.ttft for r in ok if r.ttft is not None]
    itl = [g for r in ok for g in r.itl]
    tpot = [t for t in (r.tpot for r in ok) if t is not None]
    e2e = [r.e2e for r in ok if r.e2e is not None]
    prompt = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    samples: list[str] = []
    for r in errors:
        if r.error and r.error not in samples:
            samples.append(r.error)
        if len(samples) == 3:
            break
    s = {
        "concurrency": level.concurrency,
        "request_rate": level.request_rate,
        "requests": len(level.results),
        "planned": level.planned,
        "ok": len(ok),
        "errors": len(errors),
        "error_samples": samples,
        "stopped_early": level.stopped_early,
        "duration_s": level.duration,
        "output_tokens": out_tokens,
        "output_tok_s": out_tokens / dur if ok else 0.0,
        "req_s": len(ok) / dur if ok else 0.0,
        "prompt_tokens_mean": _mean(prompt),
        "output_tokens_mean": _mean([r.output_tokens for r in ok]),
        "usage_missing": sum(not r.usage_reported for r in ok),
        # the benchmark client's own CPU use: on a small machine it competes with the server
        "client_cpu_pct": 100.0 * level.client_cpu_s / dur if level.duration > 0 else None,
    }
    for key, vals in (("ttft", ttft), ("itl", itl), ("tpot", tpot), ("e2e", e2e)):
        s[f"{key}_ms_mean"] = _ms(_mean(vals))
        s[f"{key}_ms_p50"] = _ms(percentile(vals, 50))
        s[f"{key}_ms_p99"] = _ms(percentile(vals, 99))
    return s


# ------------------------------------------------------------------------------------------ tables


def _fmt(v: float | None, digits: int | None = None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if digits is not None:
        return f"{v:.{digits}f}"
    return f"{v:.1f}" if abs(v) < 100 else f"{v:.0f}"


_COLUMNS = [  # (header, key, width, digits)
    ("C", "concurrency", 4, 0),
    ("ok", "ok", 5, 0),
    ("err", "errors", 4, 0),
    ("out tok/s", "output_tok_s", 10, 1),
    ("req/s", "req_s", 7, 2),
    ("TTFT p50", "ttft_ms_p50", 9, None),
    ("TTFT p99", "ttft_ms_p99", 9, None),
    ("ITL p50", "itl_ms_p50", 8, None),
    ("ITL p99", "itl_ms_p99", 8, None),
    ("TPOT p50", "tpot_ms_p50", 9, None),
    ("E2E p50", "e2e_ms_p50", 9, None),
    ("E2E p99", "e2e_ms_p99", 9, None),
    ("in tok", "prompt_tokens_mean", 7, 0),
    ("out tok", "output_tokens_mean", 8, 0),
    ("client CPU%", "client_cpu_pct", 12, 0),
]


def server_header(run: dict) -> str:
    bits = [f"{run['base_url']}", f"model {run.get('model') or '?'}"]
    if run.get("ignore_eos") is not None:
        bits.append("ignore_eos " + ("on" if run["ignore_eos"] else "off (rejected)"))
    if run.get("ready_s") is not None:
        bits.append(f"ready in {run['ready_s']:.1f} s")
    if run.get("peak_rss_mb") is not None:
        bits.append(f"peak RSS {run['peak_rss_mb']:.0f} MB")
    return f"{run['name']} ({', '.join(bits)})"


def format_server_table(run: dict) -> str:
    lines = [server_header(run)]
    if run.get("error"):
        lines.append(f"  FAILED: {run['error']}")
        return "\n".join(lines)
    lines.append("  " + " ".join(h.rjust(w) for h, _, w, _ in _COLUMNS) + "   (times in ms)")
    for lv in run["levels"]:
        lines.append("  " + " ".join(_fmt(lv.get(k), d).rjust(w) for _, k, w, d in _COLUMNS))
        for e in lv.get("error_samples") or ():
            lines.append(f"       error: {e}")
        if lv.get("stopped_early"):
            lines.append(f"       stopped at --max-duration after {lv['requests']} of {lv['planned']} requests")
        if lv.get("usage_missing"):
            lines.append(f"       {lv['usage_missing']} requests had no usage: tokens counted by text chunks")
    return "\n".join(lines)


# (header, key, higher is better (None: no ratio), digits)
_CMP = [
    ("out tok/s", "output_tok_s", True, 1),
    ("req/s", "req_s", True, 2),
    ("TTFT p50", "ttft_ms_p50", False, None),
    ("ITL p50", "itl_ms_p50", False, None),
    ("TPOT p50", "tpot_ms_p50", False, None),
    ("E2E p50", "e2e_ms_p50", False, None),
    ("out tok", "output_tokens_mean", None, 0),
]


def _ratio(ref: float | None, other: float | None, higher_better: bool) -> float | None:
    if ref is None or other is None:
        return None
    num, den = (ref, other) if higher_better else (other, ref)
    return num / den if den else None


def comparison(runs: list[dict]) -> list[dict]:
    """Per concurrency and baseline: ratios with the first server as the reference, oriented so that
    > 1 means the first server is better (throughput: ref / other; latency: other / ref)."""
    ref = runs[0]
    by_c = {lv["concurrency"]: lv for lv in ref.get("levels", [])}
    rows = []
    for other in runs[1:]:
        for lv in other.get("levels", []):
            mine = by_c.get(lv["concurrency"])
            if mine is None:
                continue
            row = {"concurrency": lv["concurrency"], "reference": ref["name"], "other": other["name"]}
            for _, key, hb, _ in _CMP:
                if hb is not None:
                    row[key] = _ratio(mine.get(key), lv.get(key), hb)
            rows.append(row)
    return rows


def format_comparison(runs: list[dict]) -> str:
    if sum(bool(r.get("levels")) for r in runs) < 2:
        return ""
    ref = runs[0]["name"]
    w = max(12, *(len(r["name"]) for r in runs), *(len(f"{ref}/{r['name']}") for r in runs[1:])) + 1
    lines = [
        f"Side by side (ratio rows: {ref} vs each other server; > 1 means {ref} is better: "
        "throughput ours/theirs, latency theirs/ours; times in ms)",
        "  " + "C".rjust(4) + "  " + "server".ljust(w) + "".join(h.rjust(11) for h, _, _, _ in _CMP),
    ]
    ratios = comparison(runs)
    concurrencies: list[int] = []
    for r in runs:
        for lv in r.get("levels", []):
            if lv["concurrency"] not in concurrencies:
                concurrencies.append(lv["concurrency"])
    for c in concurrencies:
        for r in runs:
            lv = next((x for x in r.get("levels", []) if x["concurrency"] == c), None)
            cells = "".join((_fmt(lv.get(k), d) if lv else "-").rjust(11) for _, k, _, d in _CMP)
            lines.append("  " + str(c).rjust(4) + "  " + r["name"].ljust(w) + cells)
        for row in ratios:
            if row["concurrency"] != c:
                continue
            cells = "".join(
                (f"{row[k]:.2f}x" if row.get(k) is not None else ("" if hb is None else "-")).rjust(11)
                for _, k, hb, _ in _CMP
            )
            lines.append(("  " + "".rjust(4) + "  " + f"{ref}/{row['other']}".ljust(w) + cells).rstrip())
    return "\n".join(lines)


def write_json(path: str, doc: dict) -> None:
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")


# ------------------------------------------------------------------------------------------ plot


def write_plot(path: str, runs: list[dict], title: str = "") -> bool:
    """Output tokens/s and TTFT (p50 solid, p99 dotted) against concurrency, one line per server.
    Returns False (and writes nothing) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return False
    fig, (ax_tp, ax_ttft) = plt.subplots(1, 2, figsize=(11, 4.2))
    all_c: set[int] = set()
    for i, run in enumerate(runs):
        levels = [lv for lv in run.get("levels", []) if lv["ok"]]
        if not levels:
            continue
        color = f"C{i}"
        cs = [lv["concurrency"] for lv in levels]
        all_c.update(cs)
        ax_tp.plot(cs, [lv["output_tok_s"] for lv in levels], "o-", color=color, label=run["name"])
        p50 = [(c, lv["ttft_ms_p50"]) for c, lv in zip(cs, levels) if lv["ttft_ms_p50"] is not None]
        p99 = [(c, lv["ttft_ms_p99"]) for c, lv in zip(cs, levels) if lv["ttft_ms_p99"] is not None]
        if p50:
            ax_ttft.plot(*zip(*p50), "o-", color=color, label=f"{run['name']} p50")
        if p99:
            ax_ttft.plot(*zip(*p99), "o:", color=color, alpha=0.6, label=f"{run['name']} p99")
    for ax in (ax_tp, ax_ttft):
        if all_c and max(all_c) / max(1, min(all_c)) >= 4:
            ax.set_xscale("log", base=2)
        if all_c:
            ax.set_xticks(sorted(all_c))
            ax.set_xticklabels([str(c) for c in sorted(all_c)])
        ax.set_xlabel("concurrency (requests in flight)")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    ax_tp.set_ylabel("output tokens / s")
    ax_tp.set_ylim(bottom=0)
    ax_tp.set_title("Throughput")
    ax_ttft.set_ylabel("time to first token (ms)")
    ax_ttft.set_yscale("log")
    plain = FuncFormatter(lambda v, _pos: f"{v:g}")
    # Minor ticks: label only 2x and 5x of each decade, or wide ranges print a smear of numbers.
    sparse = FuncFormatter(lambda v, _pos: f"{v:g}" if v > 0 and f"{v:.0e}"[0] in "25" else "")
    ax_ttft.yaxis.set_major_formatter(plain)
    ax_ttft.yaxis.set_minor_formatter(sparse)
    ax_ttft.set_title("TTFT")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
