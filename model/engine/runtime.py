"""Facts derived at start-up from the user's EngineConfig and the machine: device, dtype, KV pool size."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from ..config import EngineConfig, ModelConfig

log = logging.getLogger("kvserve.engine")

DEFAULT_CPU_KV_BYTES = 512 * 1024**2
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class RuntimeInfo:
    device: torch.device
    dtype: torch.dtype
    num_blocks: int
    block_size: int
    max_model_len: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for, but torch sees no CUDA GPU")
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16 make bf16 matmuls fast; elsewhere bf16 on CPU is slower than fp32."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split())
                    return bool({"amx_bf16", "avx512_bf16"} & flags)
    except OSError:
        pass
    return False


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        dtype = _DTYPES[name]
        if device.type == "cpu" and dtype == torch.float16:
            log.warning("float16 on CPU is slow and less accurate than bfloat16/float32")
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


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
