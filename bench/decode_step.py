"""One decode step of the engine, timed: the fused CPU decoder against torch's path, in one run.

    python -m bench.decode_step                                  # batch 1 and 32, auto vs sdpa
    python -m bench.decode_step --batch 1 --backend auto sdpa --steps 50 --json out.json

For each backend and batch size: `LLM` with the default model, `batch` sequences prefilled (60-word
prompts, ~90 tokens), a few warm-up steps, then `--steps` decode steps timed one by one (`LLMEngine.step`:
scheduling, the forward pass, sampling and detokenization). Reported: median and p90 step time in ms and
the decode rate (batch / median). Quote the ratio between backends measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

from bench.offline import make_prompts


def measure(backend: str, batch: int, steps: int) -> dict:
    from model import LLM, SamplingParams

    llm = LLM(attention_backend=backend, max_num_seqs=max(batch, 1))
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=steps + 64, ignore_eos=True)
    for i, prompt in enumerate(make_prompts(batch, words=60)):
        engine.add_request(f"r{i}", prompt, params)
    while any(
        c.seq.num_computed_tokens < len(c.seq.prompt_token_ids)
        for r in engine.outputs.requests.values()
        for c in r.choices
    ):
        engine.step()  # the prefills
    for _ in range(5):
        engine.step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t0)
    times.sort()
    median = statistics.median(times)
    return {
        "backend": backend,
        "forward": type(engine.runner.forward).__name__,
        "batch": batch,
        "steps": steps,
        "median_ms": median * 1e3,
        "p90_ms": times[int(0.9 * (len(times) - 1))] * 1e3,
        "decode_tok_per_s": batch / median,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--backend", nargs="+", default=["auto", "sdpa"], choices=["auto", "sdpa", "torch_ref"])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    rows = []
    for batch in args.batch:
        for backend in args.backend:
            rows.append(measure(backend, batch, args.steps))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'batch':>5}  {'backend':<8} {'forward':<18} {'median ms':>9} {'p90 ms':>7} {'tok/s':>7}")
    for r in rows:
        print(
            f"{r['batch']:>5}  {r['backend']:<8} {r['forward']:<18} {r['median_ms']:>9.2f} {r['p90_ms']:>7.2f}"
            f" {r['decode_tok_per_s']:>7.1f}"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": platform.processor() or platform.machine(), "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
