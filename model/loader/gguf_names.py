"""GGUF tensor names -> Hugging Face parameter names, the shapes a config implies, and q/k un-permuting."""

from __future__ import annotations

import re

import numpy as np

from ..config import ModelConfig
from ..errors import ModelLoadError
from .gguf_dequant import can_dequantize
from .gguf_reader import GGUFHeader, TensorInfo

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_IGNORED = {"rope_freqs.weight"}  # folded into the config


def hf_name(gguf_name: str) -> str | None:
    """The HF parameter name of a GGUF tensor, or None if kvserve has no use for it."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _LAYER_RE.fullmatch(gguf_name)
    if match and match.group(2) in _LAYER_NAMES:
        layer, part, kind = match.groups()
        return f"model.layers.{int(layer)}.{_LAYER_NAMES[part]}.{kind}"
    return None


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every HF parameter a checkpoint of `cfg` must have, with its shape."""
    h, d, q, kv = cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg.vocab_size, h), "model.norm.weight": (h,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, h)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q * d, h),
            p + "self_attn.k_proj.weight": (kv * d, h),
            p + "self_attn.v_proj.weight": (kv * d, h),
            p + "self_attn.o_proj.weight": (h, q * d),
            p + "mlp.gate_proj.weight": (cfg.intermediate_size, h),
            p + "mlp.up_proj.weight": (cfg.intermediate_size, h),
            p + "mlp.down_proj.weight": (h, cfg.intermediate_size),
        }
        if cfg.attention_bias:
            shapes |= {
                p + "self_attn.q_proj.bias": (q * d,),
                p + "self_attn.k_proj.bias": (kv * d,),
                p + "self_attn.v_proj.bias": (kv * d,),
            }
        if cfg.qk_norm:
            shapes |= {p + "self_attn.q_norm.weight": (d,), p + "self_attn.k_norm.weight": (d,)}
    return shapes


def map_tensors(header: GGUFHeader, cfg: ModelConfig) -> dict[str, TensorInfo]:
    """HF name -> tensor, checked: every expected tensor present with its shape, nothing unknown."""
    path, want = header.path, expected_shapes(cfg)
    mapped: dict[str, TensorInfo] = {}
    for name, info in header.tensors.items():
        target = hf_name(name)
        if target is None or target not in want:
            if name in _IGNORED:
                continue
            raise ModelLoadError(f"{path}: unexpected tensor {name!r} for a {cfg.architecture} model")
        if info.shape != want[target]:
            raise ModelLoadError(f"{path}: tensor {name!r} has shape {info.shape}, expected {want[target]}")
        if not can_dequantize(info.qtype):
            raise ModelLoadError(f"{path}: tensor {name!r} uses {info.qtype.name}, which kvserve cannot dequantize")
        mapped[target] = info
    missing = [n for n in want if n not in mapped]
    if missing:
        raise ModelLoadError(f"{path}: missing {len(missing)} tensor(s), e.g. {', '.join(missing[:3])}")
    return mapped


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (each head's rows interleaved for its RoPE layout)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


__all__ = ["expected_shapes", "hf_name", "map_tensors", "unpermute_qk"]
