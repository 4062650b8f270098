"""GGUF metadata (`{arch}.*` keys, plus a `rope_freqs.weight` tensor) -> ModelConfig."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..config import ModelConfig
from ..errors import ModelLoadError
from .gguf_dequant import can_dequantize
from .gguf_reader import GGUFHeader, read_tensor

_ARCHITECTURES = ("llama", "qwen2", "qwen3")


def model_config(header: GGUFHeader, vocab_rows: int) -> ModelConfig:
    """The ModelConfig of a GGUF header; `vocab_rows` is the embedding's row count."""
    fields, path = header.fields, header.path
    arch = fields.get("general.architecture")
    if arch not in _ARCHITECTURES:
        raise ModelLoadError(f"{path}: unsupported architecture {arch!r} (supported: {', '.join(_ARCHITECTURES)})")

    def get(key: str, default: Any = None, required: bool = False) -> Any:
        value = fields.get(f"{arch}.{key}", default)
        if required and value is None:
            raise ModelLoadError(f"{path}: metadata lacks {arch}.{key}")
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ModelLoadError(f"{path}: metadata {arch}.{key} should be a number, not {_describe(value)}")
        return value

    hidden = int(get("embedding_length", required=True))
    heads = int(get("attention.head_count", required=True))
    if heads < 1 or hidden < 1:
        raise ModelLoadError(f"{path}: invalid embedding_length/head_count ({hidden}/{heads})")
    layers = int(get("block_count", required=True))
    if not 0 < layers <= len(header.tensors):
        raise ModelLoadError(f"{path}: {arch}.block_count={layers} does not fit {len(header.tensors)} tensors")
    head_dim = int(get("attention.key_length") or (arch == "llama" and get("rope.dimension_count")) or 0)
    kv_heads = int(get("attention.head_count_kv") or heads)
    if not head_dim and hidden % heads:
        raise ModelLoadError(f"{path}: {arch}.embedding_length {hidden} is not a multiple of head_count {heads}")
    if kv_heads < 1 or heads % kv_heads:
        raise ModelLoadError(
            f"{path}: {arch}.attention.head_count {heads} is not a multiple of head_count_kv {kv_heads}"
        )
    head_dim = head_dim or hidden // heads
    tensors = header.tensors
    return ModelConfig(
        architecture=arch,
        vocab_size=vocab_rows,
        hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length", required=True)),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        rope_scaling=_rope_scaling(header, arch, head_dim),
        max_position_embeddings=int(get("context_length", 2048)),
        tie_word_embeddings="output.weight" not in tensors,
        attention_bias="blk.0.attn_q.bias" in tensors,
        qk_norm="blk.0.attn_q_norm.weight" in tensors,
        extra={"gguf_name": fields.get("general.name"), "gguf_file_type": fields.get("general.file_type")},
    )


def _describe(value: Any) -> str:
    """A metadata value in a few words, for messages (a vocabulary-sized list would flood the log)."""
    if isinstance(value, (list, np.ndarray)):
        return f"an array of {len(value)} values"
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _rope_scaling(header: GGUFHeader, arch: str, head_dim: int) -> dict[str, Any] | None:
    """HF `rope_scaling` from `{arch}.rope.scaling.*`, or Llama 3's from a `rope_freqs.weight` tensor."""
    fields = header.fields
    kind = fields.get(f"{arch}.rope.scaling.type")
    factor = fields.get(f"{arch}.rope.scaling.factor") or fields.get(f"{arch}.rope.scale_linear")
    if kind == "linear" or (kind is None and factor and factor != 1.0):
        return {"rope_type": "linear", "factor": float(factor)}
    if kind == "yarn":
        original = fields.get(f"{arch}.rope.scaling.original_context_length")
        scaling: dict[str, Any] = {"rope_type": "yarn", "factor": float(factor or 1.0)}
        if original:
            scaling["original_max_position_embeddings"] = int(original)
        return scaling
    if kind not in (None, "none"):
        raise ModelLoadError(f"{header.path}: unsupported rope scaling type {kind!r}")
    info = header.tensors.get("rope_freqs.weight")
    if info is None:
        return None
    if not can_dequantize(info.qtype):
        raise ModelLoadError(f"{header.path}: rope_freqs.weight uses {info.qtype.name}, which kvserve cannot read")
    with open(header.path, "rb") as f:
        freqs = read_tensor(f, info).reshape(-1)
    theta = float(fields.get(f"{arch}.rope.freq_base", 10000.0))
    return _llama3_scaling(freqs, head_dim, theta, header.path)


def llama3_freq_factors(
    head_dim: int, theta: float, factor: float, low: float, high: float, original: int
) -> np.ndarray:
    """The per-frequency divisors llama.cpp stores as `rope_freqs.weight` for Llama 3 rope scaling."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / inv_freq
    smooth = (original / wavelen - low) / (high - low)
    mid = 1.0 / ((1 - smooth) / factor + smooth)
    return np.where(wavelen < original / high, 1.0, np.where(wavelen > original / low, factor, mid))


def _llama3_scaling(freqs: np.ndarray, head_dim: int, theta: float, path: str) -> dict[str, Any] | None:
    """Recover Llama 3 rope parameters from stored frequency factors (Meta's low/high/original values)."""
    if freqs.shape != (head_dim // 2,):
        raise ModelLoadError(f"{path}: rope_freqs.weight has shape {freqs.shape}, expected ({head_dim // 2},)")
    factor = float(freqs.max())
    if np.allclose(freqs, 1.0):
        return None
    low, high, original = 1.0, 4.0, 8192
    if not np.allclose(llama3_freq_factors(head_dim, theta, factor, low, high, original), freqs, rtol=1e-4):
        raise ModelLoadError(f"{path}: rope_freqs.weight does not match Llama 3 rope scaling; unsupported")
    return {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": original,
    }


__all__ = ["llama3_freq_factors", "model_config"]
