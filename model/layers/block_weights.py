"""Run a GGUF model's Q4_1 / Q8_0 Linear weights through the exact block kernels (model/kernels).

Each Linear whose weight comes whole from block-quantized GGUF tensors (the fused qkv and gate_up
are their shards' block rows stacked) gets a `BlockQuantLinear` forward: it streams the blocks and
rebuilds every weight in registers (Q4_1 `d*q + m`, Q8_0 `d*q`, both exact in fp32), so it multiplies
by exactly the weights the float32 path loaded. That is checked here, bit for bit, for every weight
before it is used; a weight that does not match keeps the float32 path. Each output is summed in
one fixed order whatever the batch, so batching still never changes a row. Without a compiler (the
kernels cannot be built) nothing changes and one log line says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from ..kernels.build import load_quant_kernels
from ..kernels.quant_linear import BlockQuantLinear
from .cpu_linear import replace_linear_forwards

log = logging.getLogger("kvserve.engine")

# fused module -> the HF shards stacked into it, in order
_FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def use_block_weights(
    model: nn.Module, blocks: Callable[[], Iterator[tuple[str, int, np.ndarray]]], tied_embedding: bool
) -> int:
    """Give each fully block-quantized Linear the kernel forward; returns how many were switched."""
    kernels = load_quant_kernels()
    if kernels is None:
        return 0
    raw = {name: (qtype, rows) for name, qtype, rows in blocks()}
    built: dict[int, BlockQuantLinear] = {}
    mismatched = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or module.weight.dtype != torch.float32:
            continue
        parts = _sources(name, tied_embedding)
        found = [raw.get(p) for p in parts]
        if not found or any(f is None for f in found) or len({f[0] for f in found}) != 1:  # type: ignore[index]
            continue
        rows = np.concatenate([f[1] for f in found], axis=0) if len(found) > 1 else found[0][1]  # type: ignore[index]
        linear = BlockQuantLinear(rows, found[0][0], module.out_features, module.in_features, module.bias, kernels)  # type: ignore[index]
        if not torch.equal(linear.rebuilt_weight(), module.weight.detach()):
            mismatched.append(name)
            continue
        built[id(module)] = linear
    if mismatched:
        log.warning(
            "block kernels: %d weight(s) do not rebuild exactly, kept in float32: %s",
            len(mismatched),
            ", ".join(mismatched[:3]),
        )
    targets = [m for m in model.modules() if id(m) in built]
    replace_linear_forwards(model, targets, lambda m: built[id(m)])
    if targets:
        log.info("block kernels (%s): %d Linear weights run from their Q4_1/Q8_0 blocks", kernels.isa, len(targets))
    return len(targets)


def _sources(module_name: str, tied_embedding: bool) -> list[str]:
    """The HF weight names whose rows make up this module's weight."""
    if module_name == "lm_head":
        return ["model.embed_tokens.weight" if tied_embedding else "lm_head.weight"]
    parent, _, leaf = module_name.rpartition(".")
    if leaf in _FUSED:
        return [f"{parent}.{shard}.weight" for shard in _FUSED[leaf]]
    return [f"{module_name}.weight"]
