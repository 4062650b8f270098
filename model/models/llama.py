"""Llama-family decoder: Llama 2/3, SmolLM, Mistral, Qwen2 (q/k/v bias), Qwen3 (q/k RMSNorm).

Parameters keep Hugging Face names, except that q/k/v and gate/up are fused into `qkv_proj` and
`gate_up_proj`; `load_weights` maps HF names onto the fused shards. The forward pass runs over a
flat batch of tokens from many sequences; attention reads and writes the paged KV cache.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from ..config import ModelConfig
from ..layers.activation import silu_and_mul
from ..layers.attention import AttentionMetadata, write_kv
from ..layers.norm import RMSNorm
from ..layers.rotary import RotaryEmbedding, apply_rotary

AttentionFn = Callable[..., torch.Tensor]


class LlamaAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scale = self.head_dim**-0.5
        self.qkv_proj = nn.Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.attention_bias)
        # Qwen2 biases only q/k/v; Llama and Qwen3 with attention_bias also bias o_proj.
        o_bias = cfg.attention_bias and cfg.architecture != "qwen2"
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, bias=o_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(
        self,
        x: torch.Tensor,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        cache: torch.Tensor,
        meta: AttentionMetadata,
        attn_fn: AttentionFn,
    ) -> torch.Tensor:
        t = x.shape[0]
        qkv = self.qkv_proj(x)
        cos, sin = cos_sin
        if self.q_norm is None:  # rotate q and k heads together: half the small ops
            qk, v = qkv.split([self.q_size + self.kv_size, self.kv_size], dim=-1)
            qk = apply_rotary(qk.view(t, self.num_heads + self.num_kv_heads, self.head_dim), cos, sin)
            q, k = qk.split([self.num_heads, self.num_kv_heads], dim=1)
        else:
            q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
            q = self.q_norm(q.view(t, self.num_heads, self.head_dim))
            k = self.k_norm(k.view(t, self.num_kv_heads, self.head_dim))
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        v = v.view(t, self.num_kv_heads, self.head_dim)
        write_kv(cache, k, v, meta.slot_mapping)
        out = attn_fn(q, k, v, cache, meta, self.scale)
        return self.o_proj(out.reshape(t, self.q_size))


class LlamaMLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_and_mul(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(cfg)
        self.mlp = LlamaMLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos_sin, cache, meta, attn_fn) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos_sin, cache, meta, attn_fn)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        # An explicit weight skips the random init (slow on the meta device); the loader fills it.
        self.embed_tokens = nn.Embedding(
            cfg.vocab_size, cfg.hidden_size, _weight=torch.empty(cfg.vocab_size, cfg.hidden_size)
        )
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)


# HF name suffix -> (fused parameter suffix, shard index) for q/k/v and gate/up.
_FUSED = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = LlamaModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        meta: AttentionMetadata,
        attn_fn: AttentionFn,
        logits_indices: torch.Tensor,
        hidden_rows: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Flat batch in, logits [len(logits_indices), vocab] out (float32); with `hidden_rows` also the
        final-norm hidden states of those rows (float32), for embeddings."""
        x = self.model.embed_tokens(input_ids)
        cos_sin = self.model.rotary.cos_sin(positions, x.dtype)
        for layer, cache in zip(self.model.layers, kv_caches):
            x = layer(x, cos_sin, cache, meta, attn_fn)
        logits = self.lm_head(self.model.norm(x[logits_indices])).float()
        if hidden_rows is None:
            return logits
        return logits, self.model.norm(x[hidden_rows]).float()

    def _shard_slice(self, fused: str, shard: int) -> tuple[int, int]:
        cfg = self.config
        if fused == "qkv_proj":
            q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
            return [(0, q), (q, kv), (q + kv, kv)][shard]
        return (shard * cfg.intermediate_size, cfg.intermediate_size)

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors into the (partly fused) parameters; raise ValueError on a mismatch."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            if "rotary_emb.inv_freq" in name:
                continue
            if name == "lm_head.weight" and self.config.tie_word_embeddings:
                continue
            module, _, leaf = name.rpartition(".")  # e.g. model.layers.0.self_attn.q_proj, weight
            parent, _, proj = module.rpartition(".")
            if proj in _FUSED:
                fused, shard = _FUSED[proj]
                target = f"{parent}.{fused}.{leaf}"
                if target not in params:
                    raise ValueError(f"unexpected weight {name!r}")
                start, size = self._shard_slice(fused, shard)
                dest = params[target].narrow(0, start, size)
                loaded.add(f"{target}#{shard}")
            else:
                target = name
                if target not in params:
                    raise ValueError(f"unexpected weight {name!r}")
                dest = params[target]
                loaded.add(target)
            if tuple(dest.shape) != tuple(tensor.shape):
                raise ValueError(f"weight {name!r} has shape {tuple(tensor.shape)}, expected {tuple(dest.shape)}")
            dest.copy_(tensor)
        missing = []
        for pname in params:
            if pname.endswith(("qkv_proj.weight", "qkv_proj.bias")):
                missing += [f"{pname}#{i}" for i in range(3) if f"{pname}#{i}" not in loaded]
            elif pname.endswith("gate_up_proj.weight"):
                missing += [f"{pname}#{i}" for i in range(2) if f"{pname}#{i}" not in loaded]
            elif pname not in loaded and not (pname == "lm_head.weight" and self.config.tie_word_embeddings):
                missing.append(pname)
        if missing:
            raise ValueError(f"the checkpoint lacks {len(missing)} weights, e.g. {missing[:3]}")
