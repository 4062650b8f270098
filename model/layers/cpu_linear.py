"""oneDNN-packed float32 weights for the largest projections on the CPU (see docs/PERFORMANCE.md).

For the lm_head and gate_up shapes MKL's `x @ W^T` is slow at both ends of the batch range; oneDNN's
prepacked weight layout is as fast as a pre-transposed copy for one row (where the read of the weight
from memory dominates) and 1.4-2x faster than `F.linear` for a batch. The packed copy replaces the
parameter, which is released unless another module shares it (a tied embedding).
"""
from __future__ import annotations

import torch
from torch import nn


class PackedCpuLinear:
    """The forward of a bias-free nn.Linear through its oneDNN-packed weight."""

    def __init__(self, linear: nn.Linear) -> None:
        self.weight_packed = linear.weight.detach().to_mkldnn()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch._C._nn.mkldnn_linear(x.to_mkldnn(), self.weight_packed, None).to_dense()


def accelerate_cpu_linears(model: nn.Module, names: tuple[str, ...]) -> None:
    """Pack the named fp32, bias-free Linear modules on the CPU; release weights nobody else uses."""
    if not torch.backends.mkldnn.is_available():
        return
    targets = [
        module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.endswith(names) and module.bias is None
        and module.weight.device.type == "cpu" and module.weight.dtype == torch.float32
    ]
    target_ids = {id(m) for m in targets}
    shared = {id(p) for m in model.modules() if id(m) not in target_ids for p in m.parameters(recurse=False)}
    for module in targets:
        module.forward = PackedCpuLinear(module)
        if id(module.weight) not in shared:
            module.weight = nn.Parameter(torch.empty(0), requires_grad=False)
