"""Start-up: checkpoint -> model on its device, KV-cache tensors and the runtime facts.

Everything here runs once, before the first request; the engine keeps only what it returns.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from ..config import EngineConfig
from ..layers.block_weights import use_block_weights
from ..layers.cpu_linear import accelerate_cpu_linears
from ..layers.fp16_weights import use_fp16_weights
from ..loader import Checkpoint, load_checkpoint
from ..models.materialize import materialize
from ..models.registry import model_class
from .runtime import (
    RuntimeInfo,
    kv_budget_bytes,
    kv_bytes_per_token,
    num_threads_default,
    release_free_heap_memory,
    resolve_device,
    resolve_dtype,
)

log = logging.getLogger("kvserve.engine")


@dataclass
class BuiltEngine:
    checkpoint: Checkpoint
    model: torch.nn.Module
    kv_caches: list[torch.Tensor]
    runtime: RuntimeInfo


def build(config: EngineConfig) -> BuiltEngine:
    """Load the checkpoint, build the model and size the KV pool (ValueError on a bad combination)."""
    t0 = time.monotonic()
    ckpt = load_checkpoint(config.model)
    device = resolve_device(config.device)
    if device.type == "cpu":  # before resolve_dtype: its bf16-vs-fp32 measurement runs on these threads
        torch.set_num_threads(config.num_threads or num_threads_default())
    dtype = resolve_dtype(config.dtype, device)
    if config.quantization == "fp16" and (device.type != "cpu" or dtype != torch.float32):
        raise ValueError(
            "quantization 'fp16' (float16 weights, float32 math) runs on the CPU in float32: "
            f"use device cpu and dtype float32 or auto, not {device.type} / {str(dtype).removeprefix('torch.')}"
        )
    model = build_model(ckpt, device, dtype, config.quantization, config.block_kernels)
    release_free_heap_memory()

    cfg = ckpt.config
    if config.max_model_len and config.max_model_len > cfg.max_position_embeddings:
        raise ValueError(
            f"max_model_len {config.max_model_len} exceeds the model's limit of {cfg.max_position_embeddings} tokens"
        )
    max_len = min(config.max_model_len or cfg.max_position_embeddings, cfg.max_position_embeddings)
    per_token = kv_bytes_per_token(cfg, dtype)
    num_blocks = kv_budget_bytes(config, device) // (per_token * config.block_size)
    blocks_per_seq = -(-max_len // config.block_size)
    if num_blocks < blocks_per_seq:
        raise ValueError(
            f"the KV cache budget holds {num_blocks * config.block_size} tokens, less than one sequence of "
            f"max_model_len={max_len}; raise kv_cache_memory or lower max_model_len"
        )
    kv_caches = [
        torch.zeros(2, num_blocks, config.block_size, cfg.num_key_value_heads, cfg.head_dim, dtype=dtype, device=device)
        for _ in range(cfg.num_hidden_layers)
    ]
    runtime = RuntimeInfo(
        device=device,
        dtype=dtype,
        num_blocks=num_blocks,
        block_size=config.block_size,
        max_model_len=max_len,
        vocab_size=cfg.vocab_size,
        eos_token_ids=tuple(ckpt.eos_token_ids),
        served_name=ckpt.default_name,
        model_path=ckpt.path,
        architecture=cfg.architecture,
    )
    log.info(
        "loaded %s (%s) on %s in %s%s: %d KV blocks of %d tokens, max_model_len %d, %.1fs",
        ckpt.default_name,
        cfg.architecture,
        device,
        str(dtype).removeprefix("torch."),
        " with float16 weights" if config.quantization == "fp16" else "",
        num_blocks,
        config.block_size,
        max_len,
        time.monotonic() - t0,
    )
    return BuiltEngine(ckpt, model, kv_caches, runtime)


def build_model(
    ckpt: Checkpoint, device: torch.device, dtype: torch.dtype, quantization: str | None, block_kernels: bool = True
) -> torch.nn.Module:
    with torch.device("meta"):
        model = model_class(ckpt.config)(ckpt.config)
    model = materialize(model, device, dtype)  # the rotary buffer was computed on the CPU, not meta
    model.load_weights(ckpt.weights())
    if quantization == "fp16":
        use_fp16_weights(model)
    elif device.type == "cpu" and dtype == torch.float32:
        if block_kernels and ckpt.quantized_blocks is not None:
            use_block_weights(model, ckpt.quantized_blocks, ckpt.config.tie_word_embeddings)
        accelerate_cpu_linears(model)  # every Linear the block kernels did not take
    return model.eval()
