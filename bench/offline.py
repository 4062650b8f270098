"""Offline throughput: kvserve's `LLM.generate` vs transformers' `generate`, in one run.

    python -m bench.offline                       # default model, batch 1 and 32, fp32 and bf16
    python -m bench.offline --batch 1 8 32 --dtype float32 --max-tokens 128 --json out.json

Every sequence generates exactly `--max-tokens` tokens (kvserve: ignore_eos; transformers:
min_new_tokens), greedy. Reported: output tokens per second of wall time, including prefill.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time

import torch

WORDS = (
    "river mountain lantern copper whisper orchard velvet harbor meadow ember glacier canyon falcon "
    "thunder saffron marble quartz willow lagoon prairie cobalt tundra crimson beacon"
).split()


FP16_WEIGHTS = "float32-fp16w"  # kvserve: float16 weights, float32 math (quantization="fp16")


def make_prompts(n: int, words: int = 40, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["Write a long story about " + " ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(n)]


def bench_kvserve(dtype: str, batch: int, max_tokens: int, threads: int | None) -> dict:
    from model import LLM, SamplingParams

    quantization = "fp16" if dtype == FP16_WEIGHTS else None
    llm = LLM(
        dtype=dtype.removesuffix("-fp16w"),
        device="cpu",
        num_threads=threads,
        max_num_seqs=max(batch, 1),
        quantization=quantization,
    )
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    llm.generate(make_prompts(2, seed=99), SamplingParams(temperature=0, max_tokens=4))  # warm-up
    prompts = make_prompts(batch)
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params)
    dt = time.perf_counter() - t0
    tokens = sum(len(o.token_ids) for o in outs)
    return {
        "system": "kvserve",
        "dtype": dtype,
        "batch": batch,
        "output_tokens": tokens,
        "seconds": dt,
        "tokens_per_s": tokens / dt,
    }


def bench_transformers(dtype: str, batch: int, max_tokens: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from model.loader.gguf import default_model_path

    path = default_model_path()
    folder, name = os.path.dirname(path), os.path.basename(path)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    torch_dtype = getattr(torch, dtype.removesuffix("-fp16w"))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch_dtype).eval()

    def run(prompts: list[str], n: int):
        enc = tok(prompts, return_tensors="pt", padding=True)
        with torch.inference_mode():
            return model.generate(
                **enc, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id
            )

    run(make_prompts(2, seed=99), 4)  # warm-up
    prompts = make_prompts(batch)
    t0 = time.perf_counter()
    out = run(prompts, max_tokens)
    dt = time.perf_counter() - t0
    enc_len = tok(prompts, return_tensors="pt", padding=True)["input_ids"].shape[1]
    tokens = (out.shape[1] - enc_len) * batch
    return {
        "system": "transformers",
        "dtype": dtype,
        "batch": batch,
        "output_tokens": tokens,
        "seconds": dt,
        "tokens_per_s": tokens / dt,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument(
        "--dtype",
        nargs="+",
        default=["float32", "bfloat16"],
        choices=["float32", "bfloat16", "float16", FP16_WEIGHTS],
        help=f"{FP16_WEIGHTS}: kvserve with quantization=fp16 against transformers in float32",
    )
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None, help="torch threads for kvserve (default: all cores)")
    ap.add_argument("--no-baseline", action="store_true", help="skip transformers")
    ap.add_argument("--json", default=None, help="write results here")
    args = ap.parse_args()

    rows = []
    for dtype in args.dtype:
        for batch in args.batch:
            rows.append(bench_kvserve(dtype, batch, args.max_tokens, args.threads))
            print(json.dumps(rows[-1]), flush=True)
            if not args.no_baseline:
                rows.append(bench_transformers(dtype, batch, args.max_tokens))
                print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'dtype':9} {'batch':>5} {'kvserve tok/s':>14} {'transformers tok/s':>19} {'ratio':>6}")
    for dtype in args.dtype:
        for batch in args.batch:
            ours = next(r for r in rows if r["system"] == "kvserve" and r["dtype"] == dtype and r["batch"] == batch)
            base = next(
                (r for r in rows if r["system"] == "transformers" and r["dtype"] == dtype and r["batch"] == batch), None
            )
            ratio = f"{ours['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
            base_s = f"{base['tokens_per_s']:.1f}" if base else "-"
            print(f"{dtype:9} {batch:5d} {ours['tokens_per_s']:14.1f} {base_s:>19} {ratio:>6}")
    if args.json:
        meta = {
            "command": "python -m bench.offline " + " ".join(os.sys.argv[1:]),
            "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
        }
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
