"""Shape-adaptive float32 matmuls for the CPU (measured with /tmp-free microbenchmarks, see
docs/PERFORMANCE.md): for the largest projections MKL's x @ W^T is slow at both ends of the batch
range. With one token (memory-bound) a pre-transposed [in, out] copy reads the weight faster; with many
tokens oneDNN's prepacked weight layout wins. Both copies are made once at load time.
"""
from __future__ import annotations

import torch
from torch import nn

LARGE_BATCH = 8  # rows from which the oneDNN packed weight is used


class CpuLinearAccel:
    """Wraps an nn.Linear (no bias) in place: `forward` picks the fastest layout for the row count."""

    def __init__(self, linear: nn.Linear) -> None:
        weight = linear.weight.detach()
        self.weight_t = weight.t().contiguous()  # [in, out]
        self.weight_packed = weight.to_mkldnn()
        # The parameter becomes a view of the transposed copy: same values, no third copy in memory
        # (a tied embedding shares it and still gathers its rows correctly).
        linear.weight.data = self.weight_t.t()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] >= LARGE_BATCH:
            return torch._C._nn.mkldnn_linear(x.to_mkldnn(), self.weight_packed, None).to_dense()
        return torch.mm(x, self.weight_t)


def accelerate_cpu_linears(model: nn.Module, names: tuple[str, ...]) -> None:
    """Replace the forward of the named fp32, bias-free Linear modules on the CPU."""
    if not torch.backends.mkldnn.is_available():
        return
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.endswith(names) and module.bias is None:
            if module.weight.device.type == "cpu" and module.weight.dtype == torch.float32:
                module.forward = CpuLinearAccel(module)
