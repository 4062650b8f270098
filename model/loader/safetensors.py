"""Hugging Face model directories: config.json, (sharded) safetensors, tokenizer, generation config."""

from __future__ import annotations

import json
import os
from typing import Any, Iterator

import torch
from safetensors import SafetensorError, safe_open

from ..config import ModelConfig
from ..tokenizer import Tokenizer
from .common import Checkpoint, ModelLoadError

PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "consolidated.pth")


def _read_json(path: str, required: bool = True) -> dict[str, Any]:
    if not os.path.exists(path):
        if required:
            raise ModelLoadError(f"{path}: file not found")
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return data


def _weight_files(path: str) -> list[str]:
    index = os.path.join(path, "model.safetensors.index.json")
    single = os.path.join(path, "model.safetensors")
    if os.path.exists(index):
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(f"{index}: no weight_map")
        files = sorted({os.path.join(path, os.path.basename(str(f))) for f in weight_map.values()})
    elif os.path.exists(single):
        files = [single]
    else:
        found = [f for f in PICKLE_FILES if os.path.exists(os.path.join(path, f))]
        if found:
            raise ModelLoadError(
                f"{os.path.join(path, found[0])}: pickle checkpoints are refused (they can run code); "
                "convert the model to safetensors"
            )
        raise ModelLoadError(f"{path}: no model.safetensors or model.safetensors.index.json")
    for f in files:
        if not os.path.exists(f):
            raise ModelLoadError(f"{f}: file not found (named by the shard index)")
    return files


def _check_safetensors(file: str) -> None:
    """Open the file's header now so a truncated or corrupt shard fails at load time, clearly."""
    try:
        with safe_open(file, framework="pt") as f:
            keys = list(f.keys())
            size = os.path.getsize(file)
            for key in keys:
                sl = f.get_slice(key)
                del sl
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{file}: not a valid safetensors file ({exc})") from None
    if size == 0:
        raise ModelLoadError(f"{file}: empty file")


def _iter_weights(files: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    for file in files:
        try:
            with safe_open(file, framework="pt") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"{file}: cannot read tensors ({exc})") from None


def load_hf_dir(path: str) -> Checkpoint:
    config_path = os.path.join(path, "config.json")
    raw = _read_json(config_path)
    try:
        cfg = ModelConfig.from_hf_dict(raw)
    except ValueError as exc:
        raise ModelLoadError(f"{config_path}: {exc}") from None
    files = _weight_files(path)
    for f in files:
        _check_safetensors(f)
    tokenizer = Tokenizer.from_hf_dir(path)
    gen = _read_json(os.path.join(path, "generation_config.json"), required=False)
    eos: list[int] = list(tokenizer.eos_token_ids)
    gen_eos = gen.get("eos_token_id", raw.get("eos_token_id"))
    for tok in gen_eos if isinstance(gen_eos, list) else [gen_eos]:
        if isinstance(tok, int) and tok not in eos:
            eos.append(tok)
    return Checkpoint(
        path=path,
        config=cfg,
        tokenizer=tokenizer,
        weights=lambda: _iter_weights(files),
        eos_token_ids=eos,
        default_name=os.path.basename(os.path.normpath(path)),
    )
