"""Facts derived at start-up from the user's EngineConfig and the machine: device, dtype, KV pool size."""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass

import torch

from ..config import EngineConfig, ModelConfig

log = logging.getLogger("kvserve.engine")

DEFAULT_CPU_KV_BYTES = 512 * 1024**2
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class RuntimeInfo:
    """What the engine found and decided at start-up (immutable; safe to read from any thread)."""

    device: torch.device
    dtype: torch.dtype
    num_blocks: int
    block_size: int
    max_model_len: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    served_name: str = "model"  # the model's own name (the default served name)
    model_path: str = ""
    architecture: str = ""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for, but torch sees no CUDA GPU")
    return torch.device(name)


BF16_MIN_SPEEDUP = 1.3  # bf16 must beat fp32 by this factor in the start-up measurement to be picked
AMX_FLAGS = frozenset({"amx_bf16", "amx_tile"})


def cpu_flags() -> frozenset[str]:
    """The `flags` of the first CPU in /proc/cpuinfo (empty where there is no such file or line)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def torch_sees_amx() -> bool:
    """torch's own view: its cpuinfo reports AMX-BF16 and AMX tiles, and the kernel grants the tile state.

    `torch.backends.cpu.get_cpu_capability()` stops at "AVX512" (it has no AMX value in torch 2.13), so
    this asks `torch.cpu.get_capabilities()` and `torch.cpu._init_amx()` (the arch_prctl request for
    AMX tile data that oneDNN needs; False where the kernel or the hypervisor refuses it).
    """
    get_caps = getattr(torch.cpu, "get_capabilities", None)
    init_amx = getattr(torch.cpu, "_init_amx", None)
    if get_caps is None or init_amx is None:
        return False
    try:
        caps = get_caps()
        return bool(caps.get("amx_bf16") and caps.get("amx_tile") and init_amx())
    except (RuntimeError, AttributeError, TypeError):
        return False


def cpu_amx_usable(flags: frozenset[str] | None = None, torch_view=torch_sees_amx) -> bool:
    """AMX is usable only if the CPU flags show it AND torch sees (and may use) it."""
    flags = cpu_flags() if flags is None else flags
    return AMX_FLAGS <= flags and bool(torch_view())


@dataclass(frozen=True)
class MatmulTiming:
    """Seconds per [rows x k] @ [k x n] product, fp32 the engine's way and bf16."""

    fp32_s: float
    bf16_s: float
    shape: tuple[int, int, int] = (32, 576, 1536)  # rows, k, n

    @property
    def bf16_speedup(self) -> float:
        return self.fp32_s / self.bf16_s if self.bf16_s > 0 else 0.0

    def describe(self) -> str:
        rows, k, n = self.shape
        return (
            f"bf16 matmul {self.bf16_speedup:.2f}x fp32: {self.bf16_s * 1e3:.3f} vs {self.fp32_s * 1e3:.3f} ms "
            f"per [{rows}x{k}]@[{k}x{n}]"
        )


def _fastest_calls(fns: list, rounds: int = 24, budget_s: float = 0.2) -> list[float]:
    """Best seconds per call of each zero-argument `fns[i]`, rounds interleaved so that a noisy
    neighbour slows every candidate alike; stops early once `budget_s` is spent (after 2 rounds)."""
    for fn in fns:  # warm-up: oneDNN primitives built, weights touched
        fn()
    best = [float("inf")] * len(fns)
    start = time.perf_counter()
    for r in range(rounds):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
        if r >= 1 and time.perf_counter() - start > budget_s:
            break
    return best


def measure_cpu_matmuls(rows: int = 32, k: int = 576, n: int = 1536, num_weights: int = 4) -> MatmulTiming:
    """Time one decode-batch-sized projection in fp32 (oneDNN-prepacked where the engine does that)
    and in bf16 (F.linear); each timed call runs `num_weights` distinct weights so that they stream
    from memory as in a step. Well under half a second, also where bf16 is slow."""
    from ..layers.cpu_linear import REORDER_BATCH_HINT, _pointwise_ops_available

    gen = torch.Generator().manual_seed(0)
    x32 = torch.randn(rows, k, generator=gen)
    w32 = [torch.randn(n, k, generator=gen) * 0.05 for _ in range(num_weights)]
    x16, w16 = x32.to(torch.bfloat16), [w.to(torch.bfloat16) for w in w32]
    linear = torch.nn.functional.linear
    with torch.inference_mode():
        if torch.backends.mkldnn.is_available() and _pointwise_ops_available():
            packed = [torch.ops.mkldnn._reorder_linear_weight(w, REORDER_BATCH_HINT) for w in w32]

            def fp32() -> None:
                for w in packed:
                    torch.ops.mkldnn._linear_pointwise(x32, w, None, "none", [], "")
        else:

            def fp32() -> None:
                for w in w32:
                    linear(x32, w)

        def bf16() -> None:
            for w in w16:
                linear(x16, w)

        fp32_s, bf16_s = _fastest_calls([fp32, bf16])
    return MatmulTiming(fp32_s=fp32_s / num_weights, bf16_s=bf16_s / num_weights, shape=(rows, k, n))


def choose_cpu_dtype(amx_usable: bool, measure=measure_cpu_matmuls) -> tuple[torch.dtype, str]:
    """dtype `auto` on the CPU, with the reason: fp32 unless AMX is usable and bf16 measures faster.

    Without AMX (AVX512-BF16 alone included) bf16 is slower than the prepacked fp32 path at batch 32
    and breaks batch invariance (DESIGN.md section 6), so nothing is measured there.
    """
    if not amx_usable:
        return torch.float32, "no AMX"
    timing = measure()
    if timing.bf16_speedup >= BF16_MIN_SPEEDUP:
        return torch.bfloat16, f"AMX; {timing.describe()}"
    return torch.float32, f"AMX, but {timing.describe()} < {BF16_MIN_SPEEDUP}x"


@functools.lru_cache(maxsize=1)
def _auto_cpu_dtype() -> tuple[torch.dtype, str]:
    return choose_cpu_dtype(cpu_amx_usable())  # measured once per process


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        dtype = _DTYPES[name]
        if device.type == "cpu" and dtype == torch.float16:
            log.warning("float16 on CPU is slow and less accurate than bfloat16/float32")
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    dtype, why = _auto_cpu_dtype()
    log.info("dtype auto -> %s (%s)", str(dtype).removeprefix("torch."), why)
    return dtype


def kv_bytes_per_token(cfg: ModelConfig, dtype: torch.dtype) -> int:
    elem = torch.empty((), dtype=dtype).element_size()
    return cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * elem


def kv_budget_bytes(config: EngineConfig, device: torch.device) -> int:
    if config.kv_cache_memory is not None:
        return config.kv_cache_memory
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * config.gpu_memory_utilization)
    return DEFAULT_CPU_KV_BYTES


def num_threads_default() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def release_free_heap_memory() -> None:
    """Hand freed heap pages back to the OS (glibc's malloc_trim), e.g. after loading the weights.

    Loading frees hundreds of MB of temporaries and replaced parameters in the middle of the heap,
    which glibc keeps resident otherwise; elsewhere than glibc this does nothing.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
