"""What every loader returns (ModelLoadError lives in model/errors.py and is re-exported here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch

from ..config import ModelConfig
from ..errors import ModelLoadError

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer


@dataclass
class Checkpoint:
    """A model ready to be instantiated: its config, tokenizer and a way to stream its weights.

    `weights()` yields (HF parameter name, tensor) pairs, e.g. `model.layers.0.self_attn.q_proj.weight`,
    in the layout Hugging Face `transformers` uses (GGUF tensors already renamed and un-permuted).
    """

    path: str
    config: ModelConfig
    tokenizer: "Tokenizer"
    weights: Callable[[], Iterator[tuple[str, torch.Tensor]]]
    eos_token_ids: list[int] = field(default_factory=list)  # every id that ends generation
    default_name: str = "model"  # the name to serve it under by default
    # GGUF only: (HF name, GGML type id, raw blocks [rows, bytes per row]) of the block-quantized 2-D
    # weights, rows in HF order (q/k un-permuted), for the exact block kernels (model/layers/block_weights.py).
    quantized_blocks: Callable[[], Iterator[tuple[str, int, np.ndarray]]] | None = None


__all__ = ["Checkpoint", "ModelLoadError"]


def check_finite(file: str, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """The tensor, or ModelLoadError naming the file and the tensor if a float value is NaN or Inf: such a
    model would load and generate garbage (one NaN spreads through every layer)."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise ModelLoadError(f"{file}: tensor {name!r} holds NaN or Inf values (not finite); the file is corrupt")
    return tensor
