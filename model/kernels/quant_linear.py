"""A Linear whose weight stays in GGUF Q8_0 / Q4_1 blocks, multiplied by the exact kernel of quant_gemm.cpp.

`BlockQuantLinear(blocks, qtype, out_features, in_features, bias)(x)` equals `F.linear(x, W, bias)` with W the
blocks dequantized exactly as `model/loader/gguf_dequant.py` does (the same fp32 weights, bit for bit), up to
the order of the fp32 sums: each output is one fma chain over k = 0..K-1, so a row gives the same bits alone
or anywhere in a batch. Without the kernels (no compiler) it keeps the dequantized weight and uses F.linear.
"""

from __future__ import annotations

from types import ModuleType
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ..loader.gguf_dequant import dequantize_tensor
from .build import load_quant_kernels

SUPPORTED = (GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q4_1)
QType = Union[GGMLQuantizationType, str, int]
Blocks = Union[torch.Tensor, np.ndarray]
_DEFAULT: ModuleType = ModuleType("default")  # sentinel: load the native build


def as_qtype(qtype: QType) -> GGMLQuantizationType:
    """`GGMLQuantizationType` from the enum, its name ("Q4_1") or its value; only the supported ones."""
    q = GGMLQuantizationType[qtype.upper()] if isinstance(qtype, str) else GGMLQuantizationType(qtype)
    if q not in SUPPORTED:
        raise ValueError(f"block-quantized kernels support Q8_0 and Q4_1, not {q.name}")
    return q


def _as_uint8(blocks: Blocks, qtype: GGMLQuantizationType, out_features: int, in_features: int) -> torch.Tensor:
    block, type_size = GGML_QUANT_SIZES[qtype]
    if in_features % block:
        raise ValueError(f"in_features={in_features} is not a multiple of the block size {block}")
    t = torch.from_numpy(np.ascontiguousarray(blocks)) if isinstance(blocks, np.ndarray) else blocks
    expected = out_features * (in_features // block) * type_size
    if t.dtype != torch.uint8 or t.numel() != expected:
        raise ValueError(
            f"{qtype.name} blocks for [{out_features}, {in_features}]: {expected} uint8, got {t.dtype} x{t.numel()}"
        )
    return t.contiguous().reshape(out_features, -1)


def dequantize_blocks(blocks: Blocks, qtype: QType, out_features: int, in_features: int) -> torch.Tensor:
    """The fp32 weight [out_features, in_features] of GGUF blocks, by the loader's numpy dequantization."""
    q = as_qtype(qtype)
    raw = _as_uint8(blocks, q, out_features, in_features).numpy().reshape(-1)
    return torch.from_numpy(dequantize_tensor(raw, q, (out_features, in_features)))


class BlockQuantLinear:
    """forward(x [*, in_features]) -> [*, out_features] from Q8_0 / Q4_1 blocks [out, in/32 * block bytes]."""

    def __init__(
        self,
        blocks: Blocks,
        qtype: QType,
        out_features: int,
        in_features: int,
        bias: torch.Tensor | None = None,
        kernels: ModuleType | None = _DEFAULT,
    ) -> None:
        self.qtype = as_qtype(qtype)
        self._qtype_id = int(self.qtype)
        self.out_features, self.in_features = out_features, in_features
        raw = _as_uint8(blocks, self.qtype, out_features, in_features)
        if bias is not None and bias.shape != (out_features,):
            raise ValueError(f"bias must have shape ({out_features},), got {tuple(bias.shape)}")
        self.bias = bias.detach().to(torch.float32).contiguous() if bias is not None else None
        self.kernels = load_quant_kernels() if kernels is _DEFAULT else kernels
        self.packed: torch.Tensor | None = None
        self.weight: torch.Tensor | None = None  # the float32 fallback
        if self.kernels is not None:
            self.packed = self.kernels.pack(raw, int(self.qtype), out_features, in_features)
        else:
            self.weight = dequantize_blocks(raw, self.qtype, out_features, in_features)

    @property
    def quantized(self) -> bool:
        """Whether the kernel runs (else the float32 fallback)."""
        return self.packed is not None

    def rebuilt_weight(self) -> torch.Tensor:
        """The fp32 weight the kernel multiplies by (debug; the fallback's weight without kernels)."""
        if self.packed is None:
            assert self.weight is not None
            return self.weight
        groups = self.kernels.unpack(self.packed, self._qtype_id, self.in_features)  # [N/16, K, 16]
        return groups.transpose(1, 2).reshape(-1, self.in_features)[: self.out_features].contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        fast = x.dim() == 2 and x.shape[1] == self.in_features and x.dtype == torch.float32 and x.is_contiguous()
        if fast and self.packed is not None:
            return self.kernels.gemm(x, self.packed, self._qtype_id, self.out_features, self.bias)  # the fast path
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected {self.in_features} input features, got {x.shape[-1]}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(torch.float32).contiguous()
        if self.packed is None:
            out = F.linear(x2, self.weight, self.bias)
        else:
            out = self.kernels.gemm(x2, self.packed, self._qtype_id, self.out_features, self.bias)
        return out.reshape(*lead, self.out_features)

    forward = __call__

    def __repr__(self) -> str:
        kind = self.kernels.isa if self.packed is not None else "float32 fallback"
        return f"BlockQuantLinear({self.qtype.name}, {self.in_features} -> {self.out_features}, {kind})"


__all__ = ["BlockQuantLinear", "SUPPORTED", "as_qtype", "dequantize_blocks"]
