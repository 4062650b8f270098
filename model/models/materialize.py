"""Give a model built on the meta device real, uninitialized storage (the loader fills it).

`nn.Module.to_empty` does the same but routes through torch's reference ops, whose first use imports
sympy (about a second of start-up); plain `torch.empty` per parameter does not.
"""

from __future__ import annotations

import torch
from torch import nn


def materialize(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Floating-point parameters become `dtype` on `device`; tied parameters stay tied; real buffers move."""
    made: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            if id(param) not in made:
                param_dtype = dtype if param.is_floating_point() else param.dtype
                made[id(param)] = nn.Parameter(
                    torch.empty(param.shape, dtype=param_dtype, device=device), requires_grad=False
                )
            module._parameters[name] = made[id(param)]
        for name, buf in list(module._buffers.items()):
            if buf is None:
                continue
            module._buffers[name] = (
                torch.empty(buf.shape, dtype=buf.dtype, device=device) if buf.is_meta else buf.to(device)
            )
    return model
