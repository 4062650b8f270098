"""Microbenchmark of the default model's projection shapes on the CPU, the weights read from memory as
in a real step (many copies cycled, so none stays in cache): fp32 `F.linear` vs oneDNN's reordered
weight (`model/layers/cpu_linear.py`) vs fbgemm's float16 weights (`--quantization fp16`).

    python -m bench.matmul_shapes [--rows 1 32 512]

Prints microseconds per call (median of 3 rounds) and GFLOP/s.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

SHAPES = {"qkv": (960, 576), "o": (576, 576), "down": (576, 1536), "gate_up": (3072, 576), "lm_head": (49152, 576)}
CYCLE_BYTES = 256 * 1024**2  # distinct weights per kernel: far more than the L3


def _time(fn: Callable[[], torch.Tensor], calls: int) -> float:
    for _ in range(3):
        fn()
    rounds = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(rounds)


def _cycled(items: list) -> Callable[[], object]:
    state = {"i": 0}

    def next_item():
        state["i"] = (state["i"] + 1) % len(items)
        return items[state["i"]]

    return next_item


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 32])
    args = ap.parse_args()
    torch.manual_seed(0)
    for name, (n, k) in SHAPES.items():
        copies = max(2, min(64, CYCLE_BYTES // (n * k * 4)))
        weights = [torch.randn(n, k) * 0.02 for _ in range(copies)]
        reordered = [torch.ops.mkldnn._reorder_linear_weight(w, 32) for w in weights]
        fp16 = [torch.ops.quantized.linear_prepack_fp16(w, None) for w in weights]
        w_next, r_next, h_next = _cycled(weights), _cycled(reordered), _cycled(fp16)
        for rows in args.rows:
            x = torch.randn(rows, k)
            kernels = {
                "F.linear": lambda: torch.nn.functional.linear(x, w_next()),
                "reordered": lambda: torch.ops.mkldnn._linear_pointwise(x, r_next(), None, "none", [], ""),
                "fp16-weights": lambda: torch.ops.quantized.linear_dynamic_fp16(x, h_next()),
            }
            calls = max(3, min(60, int(2e9 / (2 * rows * n * k + 1e7))))
            flop = 2 * rows * n * k
            cells = []
            for label, fn in kernels.items():
                us = _time(fn, calls)
                cells.append(f"{label} {us:8.0f} us ({flop / us / 1e3:5.1f} GFLOP/s)")
            print(f"{name:8} {n:5}x{k:<5} rows {rows:4}  " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
