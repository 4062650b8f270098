"""Find and open a model: a HF directory, a GGUF file, or (no path) the embedded default."""

from __future__ import annotations

import os

from .common import Checkpoint, ModelLoadError


def load_checkpoint(path: str | None) -> Checkpoint:
    from .gguf import default_model_path, load_gguf
    from .safetensors import PICKLE_FILES, load_hf_dir

    if path is None:
        return load_gguf(default_model_path())
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise ModelLoadError(f"{path}: no such file or directory (kvserve loads local files only)")
    if os.path.isdir(path):
        return load_hf_dir(path)
    name = os.path.basename(path)
    if name.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt")) or name in PICKLE_FILES:
        raise ModelLoadError(f"{path}: pickle checkpoints are refused (they can run code); use safetensors or GGUF")
    if name.endswith(".safetensors"):
        return load_hf_dir(os.path.dirname(path) or ".")
    return load_gguf(path)


__all__ = ["Checkpoint", "ModelLoadError", "load_checkpoint"]
