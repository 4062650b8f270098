"""Architecture name -> model class."""

from __future__ import annotations

from torch import nn

from ..config import ModelConfig
from .llama import LlamaForCausalLM

_MODELS: dict[str, type[nn.Module]] = {
    "llama": LlamaForCausalLM,
    "mistral": LlamaForCausalLM,
    "qwen2": LlamaForCausalLM,
    "qwen3": LlamaForCausalLM,
}


def model_class(cfg: ModelConfig) -> type[nn.Module]:
    try:
        return _MODELS[cfg.architecture]
    except KeyError:
        raise ValueError(f"unsupported architecture {cfg.architecture!r}") from None
