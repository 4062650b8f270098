"""Float16 weights with float32 math on x86 CPUs (`quantization="fp16"`), through fbgemm's fp16 GEMM.

Every Linear's weight is rounded once to float16 and packed by fbgemm; activations, accumulation and
everything else stay float32, and no activation is quantized, so a row's result never depends on the
other rows of the batch. Half the weight bytes to stream per step: measured 1.1-1.7x faster decode
than float32 on an AVX2 CPU (docs/PERFORMANCE.md), at a relative weight error of at most 2^-11.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_linear import replace_linear_forwards


def fp16_weights_supported() -> bool:
    """fbgemm (x86-64 with AVX2) is what runs the packed float16 GEMM."""
    return "fbgemm" in torch.backends.quantized.supported_engines


class PackedFp16Linear:
    """The forward of one nn.Linear, holding only fbgemm's packed float16 weight (and bias)."""

    def __init__(self, linear: nn.Linear) -> None:
        bias = linear.bias.detach().float() if linear.bias is not None else None
        self.packed = torch.ops.quantized.linear_prepack_fp16(linear.weight.detach().float(), bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic_fp16(x, self.packed)


class Fp16Embedding:
    """The forward of an nn.Embedding from a float16 table; rows come back as float32."""

    def __init__(self, embedding: nn.Embedding) -> None:
        self.table = embedding.weight.detach().half()

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.table).float()


def use_fp16_weights(model: nn.Module) -> None:
    """Swap every Linear and Embedding of a float32 CPU model for its float16-weight forward.

    The float32 parameters are released afterwards (tied embeddings included), so the model keeps
    only the float16 copies; parameters become empty placeholders and must not be read again.
    """
    if not fp16_weights_supported():
        raise ValueError("quantization 'fp16' needs torch's fbgemm engine (an x86-64 CPU with AVX2)")
    # Embeddings first: once they hold their own fp16 table, a tied lm_head weight is no longer shared.
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            module.forward = Fp16Embedding(module)
            module.weight = nn.Parameter(torch.empty(0), requires_grad=False)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    replace_linear_forwards(model, linears, PackedFp16Linear)
