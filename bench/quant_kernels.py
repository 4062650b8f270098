"""The exact block-quantized kernels (`model/kernels`) vs the engine's fp32 path (oneDNN-reordered weights,
`model/layers/cpu_linear.py`) on the default model's projection shapes, weights read from memory as in a real
step (distinct copies cycled so that none stays in the L3), and a whole-model pass: 30 layers' qkv, o,
gate_up and down (Q4_1) plus the lm_head (Q8_0), every weight distinct, as one decode step reads them.

    python -m bench.quant_kernels [--rows 1 4 32] [--rounds 5]

Prints milliseconds per call (the median of calls x rounds single calls), the speed-up, and the quantized
kernel's GB/s of blocks and GFLOP/s.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from model.kernels import load_quant_kernels
from model.kernels.quant_linear import BlockQuantLinear, dequantize_blocks
from model.layers.cpu_linear import PrepackedCpuLinear

# name: (N, K, qtype) of SmolLM2-135M: hidden 576, 9 + 2*3 heads of 64, MLP 1536, vocab 49152, 30 layers
SHAPES = {
    "qkv": (960, 576, "Q4_1"),
    "o": (576, 576, "Q4_1"),
    "gate_up": (3072, 576, "Q4_1"),
    "down": (576, 1536, "Q4_1"),
    "lm_head": (49152, 576, "Q8_0"),
}
LAYERS = 30
CYCLE_BYTES = {"fp32": 256 * 1024**2, "quant": 128 * 1024**2}  # distinct weights per kernel: > the 32 MiB L3
BLOCK_BYTES = {"Q8_0": 34, "Q4_1": 20}


def random_blocks(rng: np.random.Generator, qtype: str, n: int, k: int) -> np.ndarray:
    """Random GGUF blocks [n, k/32*bytes] with fp16 scales like a trained model's (d ~ 0.003, m ~ -0.02)."""
    nb, size = k // 32, BLOCK_BYTES[qtype]
    blocks = rng.integers(0, 256, (n, nb, size), dtype=np.uint8)
    blocks[..., 0:2] = (rng.standard_normal((n, nb)) * 0.003).astype(np.float16)[..., None].view(np.uint8)
    if qtype == "Q4_1":
        blocks[..., 2:4] = (rng.standard_normal((n, nb)) * 0.02).astype(np.float16)[..., None].view(np.uint8)
    return blocks.reshape(n, nb * size)


def fp32_linear(blocks: np.ndarray, qtype: str, n: int, k: int) -> PrepackedCpuLinear:
    """The engine's fp32 path on the exactly dequantized weight."""
    linear = nn.Linear(k, n, bias=False)
    linear.weight.data = dequantize_blocks(blocks, qtype, n, k)
    return PrepackedCpuLinear(linear)


def _time(fn: Callable[[], object], calls: int, rounds: int) -> float:
    """Median ms of single calls: a co-tenant that takes a core stalls some calls for a whole time slice."""
    for _ in range(3):
        fn()
    samples = []
    for _ in range(calls * rounds):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def _cycled(fns: list[Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor) -> Callable[[], torch.Tensor]:
    state = {"i": 0}

    def call() -> torch.Tensor:
        state["i"] = (state["i"] + 1) % len(fns)
        return fns[state["i"]](x)

    return call


def bench_shapes(rows: list[int], rounds: int, rng: np.random.Generator) -> dict[tuple[str, int], tuple[float, float]]:
    """ms per call (fp32, quant) for each shape and row count, weights cycled from memory."""
    results = {}
    for name, (n, k, qtype) in SHAPES.items():
        qbytes = n * k // 32 * BLOCK_BYTES[qtype]
        n_quant = max(2, min(64, -(-CYCLE_BYTES["quant"] // qbytes)))
        n_fp32 = max(2, min(64, -(-CYCLE_BYTES["fp32"] // (n * k * 4))))
        blocks = [random_blocks(rng, qtype, n, k) for _ in range(max(n_quant, n_fp32))]
        quant = [BlockQuantLinear(b, qtype, n, k) for b in blocks[:n_quant]]
        fp32 = [fp32_linear(b, qtype, n, k) for b in blocks[:n_fp32]]
        del blocks
        for m in rows:
            x = torch.randn(m, k)
            calls = max(4, min(100, int(2e8 / (2 * m * n * k + 3e6))))
            t_fp32 = _time(_cycled(fp32, x), calls, rounds)
            t_quant = _time(_cycled(quant, x), calls, rounds)
            results[(name, m)] = (t_fp32, t_quant)
            gbs = qbytes / t_quant / 1e6
            print(
                f"{name:8} {qtype} {n:5}x{k:<5} M={m:<3} fp32 {t_fp32:8.3f} ms  quant {t_quant:8.3f} ms  "
                f"x{t_fp32 / t_quant:5.2f}  ({gbs:5.1f} GB/s of blocks, {2 * m * n * k / t_quant / 1e6:5.1f} GFLOP/s)",
                flush=True,
            )
        del quant, fp32
    return results


def bench_model(rows: list[int], rounds: int, rng: np.random.Generator) -> None:
    """One pass over a whole model's distinct weights (121 matmuls) per call: fp32 path vs quantized."""
    times: dict[tuple[str, int], float] = {}
    for kind in ("quant", "fp32"):
        fns = []
        for _ in range(LAYERS):
            for name in ("qkv", "o", "gate_up", "down"):
                n, k, qtype = SHAPES[name]
                b = random_blocks(rng, qtype, n, k)
                fns.append((k, BlockQuantLinear(b, qtype, n, k) if kind == "quant" else fp32_linear(b, qtype, n, k)))
        n, k, qtype = SHAPES["lm_head"]
        b = random_blocks(rng, qtype, n, k)
        fns.append((k, BlockQuantLinear(b, qtype, n, k) if kind == "quant" else fp32_linear(b, qtype, n, k)))
        for m in rows:
            xs = {k: torch.randn(m, k) for k in (576, 1536)}

            def step(fns=fns, xs=xs) -> None:
                for k, fn in fns:
                    fn(xs[k])

            times[(kind, m)] = _time(step, 4 if m <= 4 else 2, rounds)
        del fns
    for m in rows:
        f32, q = times[("fp32", m)], times[("quant", m)]
        print(
            f"whole model ({LAYERS} layers + lm_head), M={m:<3} fp32 {f32:8.2f} ms  quant {q:8.2f} ms  x{f32 / q:5.2f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 4, 32])
    ap.add_argument("--model-rows", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--skip-shapes", action="store_true")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kernels = load_quant_kernels()
    if kernels is None:
        raise SystemExit("the quantized kernels could not be built (see the log line above)")
    print(f"kernels: {kernels.isa}, torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    results = {} if args.skip_shapes else bench_shapes(args.rows, args.rounds, rng)
    for m in args.rows if results else []:
        f32 = sum(results[(s, m)][0] * (1 if s == "lm_head" else LAYERS) for s in SHAPES)
        q = sum(results[(s, m)][1] * (1 if s == "lm_head" else LAYERS) for s in SHAPES)
        print(
            f"sum of shapes x{LAYERS} layers + lm_head, M={m:<3} fp32 {f32:8.2f} ms  quant {q:8.2f} ms  x{f32 / q:5.2f}"
        )
    bench_model(args.model_rows, args.rounds, rng)


if __name__ == "__main__":
    main()
