"""Hugging Face model directories: config.json, (sharded) safetensors, tokenizer, generation config."""

from __future__ import annotations

import json
import os
from typing import Any, Iterator

import torch
from safetensors import SafetensorError, safe_open

from ..config import ModelConfig
from ..tokenizer import Tokenizer
from .common import Checkpoint, ModelLoadError, check_finite
from .gguf_names import expected_shapes

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


def _check_safetensors(file: str) -> dict[str, tuple[int, ...]]:
    """Open the file's header now so a truncated or corrupt shard fails at load time, clearly.
    Returns each tensor's shape."""
    try:
        with safe_open(file, framework="pt") as f:
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
            size = os.path.getsize(file)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{file}: not a valid safetensors file ({exc})") from None
    if size == 0:
        raise ModelLoadError(f"{file}: empty file")
    return shapes


def _check_against_config(
    cfg: ModelConfig, raw: dict[str, Any], config_path: str, found: dict[str, Any], source: str
) -> None:
    """The config's sizes are sane and every weight it implies is in the files with its shape, before
    anything is allocated (a hidden_size of 2**40 would otherwise reach the allocator). `found`: name ->
    (shape, file); `source`: the weights file (or shard index), for messages."""
    sizes = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    for key in (*sizes, "num_key_value_heads", "head_dim"):
        if getattr(cfg, key) < 1:
            raise ModelLoadError(f"{config_path}: {key}={getattr(cfg, key)} must be a positive number")
    if cfg.num_hidden_layers > len(found):
        raise ModelLoadError(
            f"{config_path}: num_hidden_layers={cfg.num_hidden_layers} does not fit the {len(found)} tensors found"
        )
    if not raw.get("head_dim") and cfg.hidden_size % cfg.num_attention_heads:
        raise ModelLoadError(
            f"{config_path}: hidden_size {cfg.hidden_size} is not a multiple of num_attention_heads "
            f"{cfg.num_attention_heads} (and no head_dim is given)"
        )
    if cfg.num_attention_heads % cfg.num_key_value_heads:
        raise ModelLoadError(
            f"{config_path}: num_attention_heads {cfg.num_attention_heads} is not a multiple of "
            f"num_key_value_heads {cfg.num_key_value_heads}"
        )
    want = expected_shapes(cfg)
    for name, shape in want.items():
        if name not in found:
            missing = [n for n in want if n not in found]
            raise ModelLoadError(
                f"{source}: lacks {len(missing)} tensor(s) that {config_path} implies, e.g. {', '.join(missing[:3])}"
            )
        if found[name][0] != shape:
            raise ModelLoadError(
                f"{found[name][1]}: tensor {name!r} has shape {found[name][0]}, but {config_path} implies {shape}"
            )
    for name, (_, file) in found.items():  # biases, rotary buffers and a tied lm_head are the model's to judge
        if name not in want and not name.endswith((".bias", "rotary_emb.inv_freq", "lm_head.weight")):
            raise ModelLoadError(f"{file}: unexpected tensor {name!r} for a {cfg.architecture} model")


def _iter_weights(files: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    for file in files:
        bad: tuple[str, torch.Tensor] | None = None  # a tensor with NaN/Inf: refused outside the handler
        try:
            with safe_open(file, framework="pt") as f:
                for key in f.keys():
                    tensor = f.get_tensor(key)
                    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                        bad = (key, tensor)
                        break
                    yield key, tensor
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"{file}: cannot read tensors ({exc})") from None
        if bad is not None:
            check_finite(file, *bad)


def load_hf_dir(path: str) -> Checkpoint:
    config_path = os.path.join(path, "config.json")
    raw = _read_json(config_path)
    try:
        cfg = ModelConfig.from_hf_dict(raw)
    except ValueError as exc:
        raise ModelLoadError(f"{config_path}: {exc}") from None
    files = _weight_files(path)
    found = {name: (shape, f) for f in files for name, shape in _check_safetensors(f).items()}
    index = os.path.join(path, "model.safetensors.index.json")
    _check_against_config(cfg, raw, config_path, found, files[0] if len(files) == 1 else index)
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
