"""The cost of structured outputs: decode throughput with 0%, 50% and 100% of the rows constrained.

    python -m bench.structured                          # default model, batch 1 and 32, 128 tokens
    python -m bench.structured --batch 1 32 --max-tokens 128 --repeats 2 --json out.json

One engine (the default model, fp32 on CPU) runs the same prompts with a share of the rows under a
JSON-schema constraint (an array of objects that cannot end within `--max-tokens`, so every row
generates exactly that many tokens; ignore_eos, greedy). The free rows of a batch are the same
requests either way, so the difference is the grammar's cost: the per-step mask fill (llguidance,
one parallel call for the batch), the mask application on the logits and the matcher updates.
Reported: output tokens per second of wall time, prefill included, and the ratio to 0% constrained.
At batch 1 only 0% and 100% exist.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

from .offline import make_prompts

SCHEMA = {
    "type": "array",
    "minItems": 200,  # never complete within the benchmark's tokens: every row runs to max_tokens
    "items": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "city": {"type": "string", "maxLength": 24},
            "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
        },
        "required": ["name", "age", "city", "tags"],
        "additionalProperties": False,
    },
}


def run(llm, batch: int, share: float, max_tokens: int) -> dict:
    from model import SamplingParams, StructuredOutputs

    constrained = round(batch * share)
    free = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    json_rows = SamplingParams(
        temperature=0, max_tokens=max_tokens, ignore_eos=True, structured_outputs=StructuredOutputs(json=SCHEMA)
    )
    params = [json_rows] * constrained + [free] * (batch - constrained)
    prompts = make_prompts(batch)
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params)
    dt = time.perf_counter() - t0
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {
        "batch": batch,
        "constrained": constrained,
        "output_tokens": tokens,
        "seconds": dt,
        "tokens_per_s": tokens / dt,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=1, help="runs of each case; the best is reported")
    ap.add_argument("--json", default=None, help="write results here")
    args = ap.parse_args()

    from model import LLM, SamplingParams, StructuredOutputs

    llm = LLM(device="cpu", dtype="float32", max_num_seqs=max(args.batch))
    warm = SamplingParams(temperature=0, max_tokens=8, structured_outputs=StructuredOutputs(json=SCHEMA))
    llm.generate(make_prompts(2, seed=99), warm)  # builds llguidance's tokenizer view and caches the grammar
    rows = []
    for batch in args.batch:
        shares = (0.0, 1.0) if batch == 1 else (0.0, 0.5, 1.0)
        base = None
        for share in shares:
            best = max(
                (run(llm, batch, share, args.max_tokens) for _ in range(args.repeats)), key=lambda r: r["tokens_per_s"]
            )
            base = base or best["tokens_per_s"]
            best["ratio_to_free"] = best["tokens_per_s"] / base
            rows.append(best)
            print(json.dumps(best), flush=True)
    print(f"\n{'batch':>5} {'constrained':>11} {'tok/s':>8} {'vs 0%':>6}")
    for r in rows:
        print(f"{r['batch']:>5} {r['constrained']:>11} {r['tokens_per_s']:>8.1f} {r['ratio_to_free']:>6.2f}")
    if args.json:
        meta = {
            "command": "python -m bench.structured "
            + " ".join(
                f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                for k, v in vars(args).items()
                if v is not None and k != "json"
            ),
            "cpu": platform.processor() or platform.machine(),
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
