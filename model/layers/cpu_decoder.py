"""The fused CPU decoder: a Llama-family forward pass through the C++ kernels of model/kernels, fp32, exact.

Where every Linear of the decoder layers runs from its GGUF blocks (model/layers/block_weights.py), the
runner calls this instead of `LlamaForCausalLM.forward`. A decode-only step (the steady state of
generation) is one C++ call for all layers (`DecoderPlan.decode`: no Python, no aten dispatch between the
ops, attention reading K/V in place through the block table instead of gathering a padded copy). A step
with prefill chunks runs the same kernels layer by layer from Python, with torch's SDPA for the chunks'
attention; its decode rows take the same kernels in the same order, so a token's bits never depend on
what else is in the step. Not used for Qwen3's per-head q/k norms, other dtypes or devices.
"""

from __future__ import annotations

import logging
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.quant_linear import BlockQuantLinear
from .backends.sdpa import prefill_chunk
from .paged_kv import AttentionMetadata

log = logging.getLogger("kvserve.engine")

_LAYER_LINEARS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")


def _block_linear(module: nn.Module) -> BlockQuantLinear | None:
    forward = vars(module).get("forward")
    return forward if isinstance(forward, BlockQuantLinear) and forward.quantized else None


class CpuDecoder:
    """`__call__` has the signature and result of `LlamaForCausalLM.forward`."""

    def __init__(self, model: nn.Module, kernels: ModuleType, linears: list[tuple[BlockQuantLinear, ...]]) -> None:
        cfg = model.config
        self.kernels = kernels
        self.embed = model.model.embed_tokens.weight
        self.rotary = model.model.rotary
        self.final_norm = model.model.norm.weight.detach()
        self.lm_head = model.lm_head
        self.eps = float(cfg.rms_norm_eps)
        self.heads, self.kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_size, self.kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        self.scale = self.head_dim**-0.5
        self.plan = kernels.DecoderPlan(self.heads, self.kv_heads, self.head_dim, self.eps, self.scale)
        self.layers = []
        for layer, lins in zip(model.model.layers, linears):
            norms = (layer.input_layernorm.weight.detach(), layer.post_attention_layernorm.weight.detach())
            native = [kernels.Linear(lin.packed, int(lin.qtype), lin.out_features, lin.bias) for lin in lins]
            self.plan.add_layer(*norms, *native)
            self.layers.append((*norms, *lins))

    @classmethod
    def build(cls, model: nn.Module) -> CpuDecoder | None:
        """The fused decoder for this model, or None (logged) where it does not apply."""
        cfg = getattr(model, "config", None)
        if cfg is None or not hasattr(model, "model") or getattr(cfg, "qk_norm", False):
            return None
        if (
            model.model.embed_tokens.weight.device.type != "cpu"
            or model.model.embed_tokens.weight.dtype != torch.float32
        ):
            return None
        linears = []
        for layer in model.model.layers:
            found = tuple(_block_linear(layer.get_submodule(name)) for name in _LAYER_LINEARS)
            if any(lin is None for lin in found):
                return None
            linears.append(found)
        kernels = linears[0][0].kernels
        if not hasattr(kernels, "DecoderPlan"):
            return None
        log.info("fused CPU decoder (%s): %d layers, decode steps in one native call", kernels.isa, len(linears))
        return cls(model, kernels, linears)

    def __call__(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        meta: AttentionMetadata,
        attn_fn: object,
        logits_indices: torch.Tensor,
        hidden_rows: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        del attn_fn  # attention is this decoder's own
        k = self.kernels
        x = F.embedding(input_ids, self.embed)
        cos, sin = (t.reshape(t.shape[0], -1) for t in self.rotary.cos_sin(positions, torch.float32))
        if not meta.prefills:
            tables, lens = meta.decode_block_tables, meta.decode_context_lens
            x = self.plan.decode(x, kv_caches, cos, sin, meta.slot_mapping, tables, lens)
        else:
            for layer, cache in zip(self.layers, kv_caches):
                x = self._layer(x, layer, cache, cos, sin, meta)
        logits = self.lm_head(k.rms_norm(x[logits_indices].contiguous(), self.final_norm, self.eps)).float()
        if hidden_rows is None:
            return logits
        return logits, k.rms_norm(x[hidden_rows].contiguous(), self.final_norm, self.eps)

    def _layer(self, x, layer, cache, cos, sin, meta: AttentionMetadata) -> torch.Tensor:
        """One layer, op for op what DecoderPlan.decode does, with the prefill chunks' attention added."""
        k = self.kernels
        input_norm, post_norm, qkv_proj, o_proj, gate_up, down = layer
        qkv = self._gemm(qkv_proj, k.rms_norm(x, input_norm, self.eps))
        k.rotary_(qkv, cos, sin, self.heads + self.kv_heads, self.head_dim)
        k.write_kv(cache, qkv, meta.slot_mapping, self.q_size, self.kv_size)
        x = self._gemm(o_proj, self._attention(qkv, cache, meta), x)
        h = self._gemm(gate_up, k.rms_norm(x, post_norm, self.eps))
        return self._gemm(down, k.silu_mul(h), x)

    def _gemm(self, lin: BlockQuantLinear, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return self.kernels.gemm(x, lin.packed, int(lin.qtype), lin.out_features, lin.bias, residual)

    def _attention(self, qkv: torch.Tensor, cache: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        out = torch.empty(qkv.shape[0], self.q_size, dtype=qkv.dtype)
        n = meta.num_decode
        if n:
            tables, lens = meta.decode_block_tables, meta.decode_context_lens
            out[:n] = self.kernels.decode_attention(qkv, cache, tables, lens, self.heads, self.scale)
        q_end, k_end = self.q_size, self.q_size + self.kv_size
        for chunk in meta.prefills:
            rows = qkv[chunk.q_start : chunk.q_start + chunk.q_len]
            q = rows[:, :q_end].unflatten(1, (self.heads, self.head_dim))
            k_new = rows[:, q_end:k_end].unflatten(1, (self.kv_heads, self.head_dim))
            v_new = rows[:, k_end:].unflatten(1, (self.kv_heads, self.head_dim))
            res = prefill_chunk(q, k_new, v_new, cache, chunk, self.scale)
            out[chunk.q_start : chunk.q_start + chunk.q_len] = res.reshape(chunk.q_len, self.q_size)
        return out
