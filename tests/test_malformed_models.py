"""A corpus of broken model files: each is refused quickly, with one clear ModelLoadError naming it.

The corpus is built by code in a temporary folder from the tiny valid models (the Hugging Face folder
of tests/tiny_models.py and a GGUF written from it by helpers_tokenizer.write_tiny_gguf), so nothing
binary is committed. tests/test_gguf_loader.py covers minimal hand-made GGUF headers; the GGUF cases
here are edits of a whole, valid file (everything around the broken part is valid), next to broken
safetensors files, config.json files and model folders.

Every case goes through the public entry point, `LLM(path)`, and must raise ModelLoadError (nothing
else) within TIME_LIMIT_S, with a one-line message that names the broken file and matches the case's
regex; peak memory stays under 2x the input's size plus MEMORY_ALLOWANCE (the interpreter's own churn):
Python allocations with tracemalloc here, the process' peak RSS (VmHWM) in one subprocess that runs
the whole corpus. Two cases also go through `python -m app.main serve`.

Weights that are NaN or Inf are refused at load, naming the file and the tensor
(test_non_finite_weights_are_refused). Not marked slow: about 20 s on 2 cores, most of it the two CLI start-ups.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from helpers_tokenizer import gpt2_vocab_from_tokenizer_json, write_tiny_gguf

from model import LLM, ModelLoadError

REPO = Path(__file__).resolve().parent.parent
TIME_LIMIT_S = 1.0
MEMORY_ALLOWANCE = 16 * 2**20  # bytes on top of 2x the input size
ENGINE_OPTIONS = dict(device="cpu", dtype="float32", max_num_seqs=2, kv_cache_memory=4 * 2**20)


# --------------------------------------------------------------------------- GGUF files as editable parts

_SCALAR_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF value type -> bytes
U32, STRING, ARRAY, U64 = 4, 8, 9, 10
F32, F64, Q4_K = 0, 28, 12  # GGML tensor type ids


def _value_end(buf: bytes, pos: int, vtype: int) -> int:
    if vtype in _SCALAR_SIZE:
        return pos + _SCALAR_SIZE[vtype]
    if vtype == STRING:
        return pos + 8 + struct.unpack_from("<Q", buf, pos)[0]
    etype, count = struct.unpack_from("<IQ", buf, pos)
    pos += 12
    if etype in _SCALAR_SIZE:
        return pos + count * _SCALAR_SIZE[etype]
    for _ in range(count):
        pos = _value_end(buf, pos, etype)
    return pos


def _string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


@dataclass
class Gguf:
    """A GGUF file as parts to edit: metadata [key, type, raw value], tensor infos [name, dims, type,
    offset] (dims in GGUF order, fastest first; offsets relative to the data section) and the data."""

    version: int
    kvs: list[list]
    infos: list[list]
    data: bytes
    sections: dict[str, int] = field(default_factory=dict)  # where each part starts, set by to_bytes

    @classmethod
    def parse(cls, buf: bytes) -> "Gguf":
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
        pos, kvs, infos = 24, [], []
        for _ in range(n_kv):
            (n,) = struct.unpack_from("<Q", buf, pos)
            key = buf[pos + 8 : pos + 8 + n].decode()
            (vtype,) = struct.unpack_from("<I", buf, pos + 8 + n)
            start = pos + 12 + n
            pos = _value_end(buf, start, vtype)
            kvs.append([key, vtype, buf[start:pos]])
        for _ in range(n_tensors):
            (n,) = struct.unpack_from("<Q", buf, pos)
            name = buf[pos + 8 : pos + 8 + n].decode()
            (n_dims,) = struct.unpack_from("<I", buf, pos + 8 + n)
            dims = list(struct.unpack_from(f"<{n_dims}Q", buf, pos + 12 + n))
            qtype, offset = struct.unpack_from("<IQ", buf, pos + 12 + n + 8 * n_dims)
            infos.append([name, dims, qtype, offset])
            pos += 24 + n + 8 * n_dims
        return cls(version, kvs, infos, buf[-(-pos // 32) * 32 :])

    def kv(self, key: str) -> list:
        return next(entry for entry in self.kvs if entry[0] == key)

    def info(self, name: str) -> list:
        return next(entry for entry in self.infos if entry[0] == name)

    def drop_kv(self, key: str) -> None:
        self.kvs.remove(self.kv(key))

    def fill(self, name: str, value: float) -> None:
        """Overwrite an F32 tensor's data with `value`."""
        _, dims, qtype, offset = self.info(name)
        assert qtype == F32
        data = bytearray(self.data)
        data[offset : offset + 4 * math.prod(dims)] = np.full(math.prod(dims), value, np.float32).tobytes()
        self.data = bytes(data)

    def to_bytes(self, n_tensors: int | None = None, n_kv: int | None = None) -> bytes:
        counts = (len(self.infos) if n_tensors is None else n_tensors, len(self.kvs) if n_kv is None else n_kv)
        out = bytearray(b"GGUF" + struct.pack("<IQQ", self.version, *counts))
        for key, vtype, payload in self.kvs:
            self.sections[f"kv:{key}"] = len(out)
            out += _string(key) + struct.pack("<I", vtype) + payload
        self.sections["infos"] = len(out)
        for name, dims, qtype, offset in self.infos:
            out += _string(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, qtype, offset)
        out += bytes(-len(out) % 32)
        self.sections["data"] = len(out)
        return bytes(out + self.data)


def _u32(value: int) -> tuple[int, bytes]:
    return U32, struct.pack("<I", value)


# --------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Base:
    hf_dir: Path  # a valid tiny Llama folder (config.json, model.safetensors, tokenizer)
    gguf: bytes  # the same model as a valid GGUF file


@dataclass(frozen=True)
class Case:
    build: Callable[[Path, Base], tuple[Path, Path]]  # (folder, base) -> (path to load, path the message names)
    match: str  # regex the message must match


def _gguf(edit: Callable[[Gguf], bytes | None]) -> Callable[[Path, Base], tuple[Path, Path]]:
    """A case made by editing the parsed tiny GGUF (`edit` returns the file's bytes, or None: re-serialize)."""

    def build(folder: Path, base: Base) -> tuple[Path, Path]:
        g = Gguf.parse(base.gguf)
        raw = edit(g)
        path = folder / f"{folder.name}.gguf"
        path.write_bytes(g.to_bytes() if raw is None else raw)
        return path, path

    return build


def _hf(edit: Callable[[Path], Path | None]) -> Callable[[Path, Base], tuple[Path, Path]]:
    """A case made by editing a copy of the tiny HF folder; `edit` returns the file the message names
    (None: the folder)."""

    def build(folder: Path, base: Base) -> tuple[Path, Path]:
        shutil.copytree(base.hf_dir, folder, dirs_exist_ok=True)
        named = edit(folder)
        return folder, named or folder

    return build


def _file(name: str, content: bytes | None) -> Callable[[Path, Base], tuple[Path, Path]]:
    """A case that is one file (None: an empty folder) of that name."""

    def build(folder: Path, base: Base) -> tuple[Path, Path]:
        path = folder / name
        path.mkdir() if content is None else path.write_bytes(content)
        return path, path

    return build


def _load_file(build: Callable[[Path, Base], tuple[Path, Path]]) -> Callable[[Path, Base], tuple[Path, Path]]:
    """The same case, loaded by the path of the file it breaks instead of its folder."""

    def run(folder: Path, base: Base) -> tuple[Path, Path]:
        _, named = build(folder, base)
        return named, named

    return run


def _config(**changes) -> Callable[[Path], Path]:
    """Edit config.json: each keyword sets a field, None deletes it."""

    def edit(folder: Path) -> Path:
        path = folder / "config.json"
        cfg = json.loads(path.read_text())
        for key, value in changes.items():
            if value is None:
                cfg.pop(key, None)
            else:
                cfg[key] = value
        path.write_text(json.dumps(cfg))
        return path

    return edit


def _write(name: str, content: bytes | str, remove: tuple[str, ...] = ()) -> Callable[[Path], Path]:
    """Write one file of the folder (after removing `remove`)."""

    def edit(folder: Path) -> Path:
        for other in remove:
            (folder / other).unlink()
        path = folder / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    return edit


def _st_parts(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack_from("<Q", raw)
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _safetensors(
    edit: Callable[[dict, bytes], tuple[dict | bytes, bytes]], length: int | None = None
) -> Callable[[Path], Path]:
    """Edit model.safetensors: `edit(header, data)` -> (header as a dict or raw bytes, data);
    `length` overrides the header length field."""

    def run(folder: Path) -> Path:
        path = folder / "model.safetensors"
        header, data = edit(*_st_parts(path))
        body = header if isinstance(header, bytes) else json.dumps(header).encode()
        body += b" " * (-len(body) % 8)
        path.write_bytes(struct.pack("<Q", len(body) if length is None else length) + body + data)
        return path

    return run


def _retensor(name: str, **changes) -> Callable[[dict, bytes], tuple[dict, bytes]]:
    """Change one tensor entry of a safetensors header (`dtype`, `shape`, `data_offsets`); `drop=True`
    removes it and its bytes."""

    def edit(header: dict, data: bytes) -> tuple[dict, bytes]:
        header = copy.deepcopy(header)
        if changes.get("drop"):
            start, end = header.pop(name)["data_offsets"]
            for entry in header.values():  # close the hole: safetensors wants the data contiguous
                if isinstance(entry, dict) and "data_offsets" in entry and entry["data_offsets"][0] >= end:
                    entry["data_offsets"] = [o - (end - start) for o in entry["data_offsets"]]
            return header, data[:start] + data[end:]
        header[name].update(changes)
        return header, data

    return edit


def _last_tensor(header: dict) -> str:
    return max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])


def _cut(g: Gguf, where: str, extra: int) -> bytes:
    raw = g.to_bytes()
    return raw[: g.sections[where] + extra]


def _set(g: Gguf, key: str, vtype: int, payload: bytes) -> None:
    g.kv(key)[1:] = [vtype, payload]


def _infos(g: Gguf, tensor: str, **changes) -> None:
    entry = g.info(tensor)
    for i, part in enumerate(("name", "dims", "qtype", "offset")):
        if part in changes:
            entry[i] = changes[part]


EMBED, NORM, Q0 = "token_embd.weight", "output_norm.weight", "blk.0.attn_q.weight"
HEADS = "llama.attention.head_count"
_MB = 2**20
TEXT = "This is a plain text file, not a model.\n" * 20

CASES: dict[str, Case] = {
    # ---- GGUF: truncated at each section
    "gguf_cut_in_header": Case(_gguf(lambda g: g.to_bytes()[:20]), r"only 20 bytes \(empty or truncated\)"),
    "gguf_cut_in_metadata": Case(
        _gguf(lambda g: _cut(g, "kv:tokenizer.ggml.merges", 200)),
        r"metadata 'tokenizer.ggml.merges' .*runs past the end of the file \(\d+ bytes\); truncated or corrupt",
    ),
    "gguf_cut_in_tensor_infos": Case(
        _gguf(lambda g: _cut(g, "infos", 50)), r"tensor .* runs past the end of the file .*truncated or corrupt"
    ),
    "gguf_cut_at_data_start": Case(
        _gguf(lambda g: _cut(g, "data", 0)),
        r"tensor '[\w.]+' \(\d+ bytes at offset \d+\) runs past the end of the \d+-byte file; truncated",
    ),
    "gguf_cut_mid_data": Case(
        _gguf(lambda g: _cut(g, "data", len(g.data) // 2)), r"tensor '[\w.]+' .* runs past the end of the"
    ),
    # ---- GGUF: absurd counts and lengths inside a real file
    "gguf_kv_count_2e40": Case(
        _gguf(lambda g: g.to_bytes(n_kv=2**40)),
        r"header claims \d+ tensors and 1099511627776 metadata entries, more than a \d+-byte file can hold",
    ),
    "gguf_tensor_count_one_too_many": Case(
        _gguf(lambda g: g.to_bytes(n_tensors=len(g.infos) + 1)), r"not a valid GGUF file: .*(runs past|dimensions)"
    ),
    "gguf_string_length_2e50": Case(
        _gguf(lambda g: _set(g, "general.name", STRING, struct.pack("<Q", 2**50) + b"tiny")),
        r"metadata 'general.name' \(claimed length 1125899906842624\) runs past the end",
    ),
    "gguf_string_array_2e40": Case(
        _gguf(lambda g: _set(g, "tokenizer.ggml.tokens", ARRAY, struct.pack("<IQ", STRING, 2**40) + bytes(64))),
        r"metadata 'tokenizer.ggml.tokens' \(1099511627776 elements\) runs past the end",
    ),
    "gguf_int_array_2e40": Case(
        _gguf(lambda g: _set(g, "tokenizer.ggml.token_type", ARRAY, struct.pack("<IQ", 5, 2**40) + bytes(64))),
        r"metadata 'tokenizer.ggml.token_type' \(1099511627776 elements\) runs past the end",
    ),
    # ---- GGUF: tensor types, offsets and shapes
    "gguf_unknown_dtype_id": Case(
        _gguf(lambda g: _infos(g, NORM, qtype=4)), r"tensor 'output_norm.weight' has an unknown type code 4"
    ),
    "gguf_dtype_id_2e32": Case(
        _gguf(lambda g: _infos(g, NORM, qtype=2**32 - 1)), r"tensor 'output_norm.weight' has an unknown type code"
    ),
    "gguf_f32_read_as_f64": Case(
        _gguf(lambda g: _infos(g, Q0, qtype=F64)),
        r"tensor 'blk.0.attn_q.weight' \(ending at byte \d+\) overlaps tensor '[\w.]+' \(starting at byte \d+\)",
    ),
    "gguf_block_type_bad_shape": Case(
        _gguf(lambda g: _infos(g, NORM, qtype=Q4_K)),
        r"tensor 'output_norm.weight' has an invalid shape \[64\] for type Q4_K",
    ),
    "gguf_offset_past_end": Case(
        _gguf(lambda g: _infos(g, NORM, offset=len(g.data))), r"tensor 'output_norm.weight' .* runs past the end"
    ),
    "gguf_offset_2e63": Case(
        _gguf(lambda g: _infos(g, NORM, offset=2**63)), r"tensor 'output_norm.weight' .* runs past the end"
    ),
    "gguf_overlapping_offsets": Case(
        _gguf(lambda g: _infos(g, g.infos[2][0], offset=g.infos[1][3])), r"tensor '[\w.]+' .*overlaps tensor '[\w.]+'"
    ),
    "gguf_misaligned_offset": Case(
        _gguf(lambda g: _infos(g, g.infos[1][0], offset=g.infos[1][3] + 4)),
        r"tensor '[\w.]+' data offset \d+ is not a multiple of the alignment \(32\)",
    ),
    "gguf_dims_product_overflows": Case(
        _gguf(lambda g: _infos(g, EMBED, dims=[2**32, 2**32])), r"tensor 'token_embd.weight' .* runs past the end"
    ),
    "gguf_dims_2e40_elements": Case(
        _gguf(lambda g: _infos(g, NORM, dims=[2**40])), r"tensor 'output_norm.weight' .* runs past the end"
    ),
    "gguf_zero_dim": Case(
        _gguf(lambda g: _infos(g, EMBED, dims=[64, 0])), r"tensor 'token_embd.weight' has an invalid shape \[64, 0\]"
    ),
    "gguf_negative_dim": Case(
        _gguf(lambda g: _infos(g, NORM, dims=[2**64 - 1])), r"tensor 'output_norm.weight' .* runs past the end"
    ),
    "gguf_five_dims": Case(_gguf(lambda g: _infos(g, NORM, dims=[64, 1, 1, 1, 1])), r"has 5 dimensions \(at most 4\)"),
    "gguf_duplicate_tensor": Case(
        _gguf(lambda g: _infos(g, "blk.1.ffn_up.weight", name="blk.0.ffn_up.weight")),
        r"duplicate tensor 'blk.0.ffn_up.weight'",
    ),
    "gguf_missing_output_norm": Case(
        _gguf(lambda g: g.infos.remove(g.info(NORM))), r"missing 1 tensor\(s\), e.g. model.norm.weight"
    ),
    "gguf_unexpected_tensor": Case(
        _gguf(lambda g: _infos(g, NORM, name="output_norm.bias")), r"unexpected tensor 'output_norm.bias'"
    ),
    "gguf_wrong_tensor_shape": Case(
        _gguf(lambda g: _infos(g, Q0, dims=[32, 128])),
        r"'blk.0.attn_q.weight' has shape \(128, 32\), expected \(64, 64\)",
    ),
    # ---- GGUF: metadata
    "gguf_duplicate_metadata_key": Case(
        _gguf(lambda g: g.kvs.append(list(g.kv("general.architecture")))),
        r"duplicate metadata key 'general.architecture'",
    ),
    "gguf_missing_head_count": Case(_gguf(lambda g: g.drop_kv(HEADS)), r"metadata lacks llama.attention.head_count"),
    "gguf_head_count_as_string": Case(
        _gguf(lambda g: _set(g, HEADS, STRING, _string("four"))),
        r"metadata llama.attention.head_count should be a number, not str 'four'",
    ),
    "gguf_head_count_zero": Case(_gguf(lambda g: _set(g, HEADS, *_u32(0))), r"head_count \(64/0\)"),
    "gguf_heads_do_not_divide": Case(
        _gguf(lambda g: (_set(g, HEADS, *_u32(3)), g.drop_kv("llama.rope.dimension_count"))[0]),
        r"llama.embedding_length 64 is not a multiple of head_count 3",
    ),
    "gguf_embedding_length_2e40": Case(
        _gguf(lambda g: _set(g, "llama.embedding_length", U64, struct.pack("<Q", 2**40))),
        r"tensor '[\w.]+' has shape \(320, 64\), expected \(320, 1099511627776\)",
    ),
    "gguf_block_count_2e40": Case(
        _gguf(lambda g: _set(g, "llama.block_count", U64, struct.pack("<Q", 2**40))),
        r"llama.block_count=1099511627776 does not fit \d+ tensors",
    ),
    "gguf_architecture_mamba": Case(
        _gguf(lambda g: _set(g, "general.architecture", STRING, _string("mamba"))),
        r"unsupported architecture 'mamba' \(supported: llama, qwen2, qwen3\)",
    ),
    "gguf_alignment_48": Case(
        _gguf(lambda g: g.kvs.append(["general.alignment", *_u32(48)])), r"general.alignment=48 is not a power of two"
    ),
    "gguf_no_vocabulary": Case(
        _gguf(lambda g: g.drop_kv("tokenizer.ggml.tokens")), r"no vocabulary \(tokenizer.ggml.tokens\)"
    ),
    "gguf_vocabulary_of_numbers": Case(
        _gguf(lambda g: _set(g, "tokenizer.ggml.tokens", ARRAY, struct.pack("<IQ", 4, 3) + bytes(12))),
        r"no vocabulary \(tokenizer.ggml.tokens\)",
    ),
    "gguf_bos_out_of_range": Case(
        _gguf(lambda g: _set(g, "tokenizer.ggml.bos_token_id", *_u32(10**6))),
        r"tokenizer.ggml.bos_token_id=1000000 is not a token id",
    ),
    "gguf_malformed_merge": Case(
        _gguf(lambda g: _set(g, "tokenizer.ggml.merges", ARRAY, struct.pack("<IQ", STRING, 1) + _string("nospace"))),
        r"cannot build the tokenizer: malformed merge 'nospace'",
    ),
    "gguf_big_metadata_blob": Case(  # 8 MiB of uint8 metadata, then an unknown architecture: memory stays bounded
        _gguf(
            lambda g: (
                g.kvs.append(["x.blob", ARRAY, struct.pack("<IQ", 0, 8 * _MB) + bytes(8 * _MB)]),
                _set(g, "general.architecture", STRING, _string("mamba")),
            )[1]
        ),
        r"unsupported architecture 'mamba'",
    ),
    # ---- not GGUF at all
    "gguf_text_file": Case(_gguf(lambda g: TEXT.encode()), r"not a GGUF file \(magic b'This', expected b'GGUF'\)"),
    "gguf_empty_folder_named_gguf": Case(
        _file("x.gguf", None),
        r"x.gguf/config.json: file not found",  # a folder is read as a Hugging Face model folder
    ),
    # ---- safetensors
    "st_empty_file": Case(_hf(_write("model.safetensors", b"")), r"not a valid safetensors file \(.*header too small"),
    "st_text_file": Case(_hf(_write("model.safetensors", TEXT)), r"not a valid safetensors file \(.*header too large"),
    "st_header_longer_than_file": Case(
        _hf(_safetensors(lambda h, d: (h, d), length=2**40)), r"not a valid safetensors file \(.*header too large"
    ),
    "st_header_length_past_end": Case(
        _hf(_safetensors(lambda h, d: (h, d[:100]), length=10**6)),
        r"not a valid safetensors file \(.*invalid header length",
    ),
    "st_header_not_json": Case(
        _hf(_safetensors(lambda h, d: (b"{not json at all" + b"!" * 100, d))),
        r"not a valid safetensors file \(.*invalid JSON",
    ),
    "st_header_not_utf8": Case(
        _hf(_safetensors(lambda h, d: (b"\xff\xfe" * 64, d))), r"safetensors file \(.*invalid UTF-8"
    ),
    "st_header_is_a_list": Case(
        _hf(_safetensors(lambda h, d: (b"[1, 2, 3]", d))), r"safetensors file \(.*invalid JSON"
    ),
    "st_offsets_past_end": Case(
        _hf(_safetensors(lambda h, d: _retensor(_last_tensor(h), data_offsets=[0, len(d) + 4096])(h, d))),
        r"not a valid safetensors file \(.*invalid offset for tensor `model\.\S+`",
    ),
    "st_unknown_dtype": Case(
        _hf(_safetensors(_retensor("model.norm.weight", dtype="F128"))), r"safetensors file \(.*unknown variant `F128`"
    ),
    "st_shape_offset_mismatch": Case(
        _hf(_safetensors(_retensor("model.embed_tokens.weight", shape=[320, 65]))),
        r"safetensors file \(.*invalid shape, data type, or offset",
    ),
    "st_overlapping_offsets": Case(
        _hf(
            _safetensors(
                lambda h, d: _retensor(
                    "model.layers.0.input_layernorm.weight", data_offsets=h["model.norm.weight"]["data_offsets"]
                )(h, d)
            )
        ),
        r"not a valid safetensors file \(.*invalid offset for tensor",
    ),
    "st_truncated_data": Case(
        _hf(_safetensors(lambda h, d: (h, d[:-100]))), r"not a valid safetensors file \(.*not fully covered"
    ),
    "st_truncated_file_path": Case(  # the .safetensors file itself is the path given
        _load_file(_hf(_safetensors(lambda h, d: (h, d[:-100])))),
        r"not a valid safetensors file \(.*not fully covered",
    ),
    "st_missing_tensor": Case(
        _hf(_safetensors(_retensor("model.norm.weight", drop=True))),
        r"model.safetensors: lacks 1 tensor\(s\) that \S+config.json implies, e.g. model.norm.weight",
    ),
    "st_wrong_tensor_shape": Case(
        _hf(_safetensors(_retensor("model.layers.0.mlp.down_proj.weight", shape=[128, 64]))),
        r"tensor 'model.layers.0.mlp.down_proj.weight' has shape \(128, 64\), but \S+config.json implies \(64, 128\)",
    ),
    "st_second_name_for_bytes": Case(  # a second tensor over the bytes of model.norm.weight
        _hf(_safetensors(lambda h, d: ({**h, "model.extra.weight": dict(h["model.norm.weight"])}, d))),
        r"not a valid safetensors file \(.*invalid offset",
    ),
    "st_unexpected_tensor": Case(
        _hf(
            _safetensors(
                lambda h, d: (
                    {**h, "model.extra.weight": {"dtype": "F32", "shape": [4], "data_offsets": [len(d), len(d) + 16]}},
                    d + bytes(16),
                )
            )
        ),
        r"model.safetensors: unexpected tensor 'model.extra.weight' for a llama model",
    ),
    "st_index_names_missing_shard": Case(
        _hf(
            lambda folder: _write(
                "model.safetensors.index.json",
                json.dumps({"weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}}),
            )(folder).with_name("model-00002-of-00002.safetensors")
        ),
        r"model-00002-of-00002.safetensors: file not found \(named by the shard index\)",
    ),
    "st_index_not_json": Case(_hf(_write("model.safetensors.index.json", "{")), r"not valid JSON"),
    # ---- config.json
    "config_not_json": Case(_hf(_write("config.json", "{'hidden_size': 64,")), r"config.json: not valid JSON"),
    "config_is_a_list": Case(_hf(_write("config.json", "[64, 4]")), r"config.json: expected a JSON object"),
    "config_missing": Case(
        _hf(lambda folder: (folder / "config.json").unlink() or folder / "config.json"), r"config.json: file not found"
    ),
    "config_architecture_mamba": Case(
        _hf(_config(architectures=["MambaForCausalLM"], model_type="mamba")),
        r"unsupported architecture \['MambaForCausalLM'\]; supported: LlamaForCausalLM",
    ),
    "config_missing_hidden_size": Case(
        _hf(_config(hidden_size=None)), r"config.json: config.json lacks the field 'hidden_size'"
    ),
    "config_hidden_size_as_text": Case(_hf(_config(hidden_size="sixty-four")), r"invalid value.*sixty-four"),
    "config_heads_do_not_divide": Case(
        _hf(_config(num_attention_heads=3, head_dim=None)),
        r"hidden_size 64 is not a multiple of num_attention_heads 3",
    ),
    "config_kv_heads_do_not_divide": Case(
        _hf(_config(num_key_value_heads=3)), r"num_attention_heads 4 is not a multiple of num_key_value_heads 3"
    ),
    "config_hidden_size_2e40": Case(
        _hf(_config(hidden_size=2**40)),
        r"tensor 'model.embed_tokens.weight' has shape \(320, 64\), but \S+ implies \(320, 1099511627776\)",
    ),
    "config_layers_2e40": Case(
        _hf(_config(num_hidden_layers=2**40)), r"num_hidden_layers=1099511627776 does not fit the \d+ tensors found"
    ),
    "config_vocab_size_negative": Case(_hf(_config(vocab_size=-1)), r"vocab_size=-1 must be a positive number"),
    "config_remote_code": Case(
        _hf(_config(auto_map={"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"})),
        r"needs remote code \(auto_map\)",
    ),
    # ---- model folders
    "dir_without_weights": Case(
        _hf(lambda folder: (folder / "model.safetensors").unlink()), r"no model.safetensors or model.safetensors.index"
    ),
    "dir_only_pickle": Case(
        _hf(_write("pytorch_model.bin", b"\x80\x04\x95", remove=("model.safetensors",))),
        r"pickle checkpoints are refused \(they can run code\)",
    ),
    "pickle_file_path": Case(
        _file("weights.pt", b"\x80\x04\x95"),
        r"pickle checkpoints are refused",
    ),
    "dir_without_tokenizer": Case(
        _hf(lambda folder: (folder / "tokenizer.json").unlink() or folder / "tokenizer.json"),
        r"tokenizer.json: missing; kvserve needs a fast tokenizer",
    ),
    "dir_tokenizer_not_json": Case(_hf(_write("tokenizer.json", "{]")), r"not a valid tokenizers file"),
}


# --------------------------------------------------------------------------- building the corpus


@pytest.fixture(scope="module")
def base(tiny_llama_dir, tmp_path_factory) -> Base:
    from safetensors.numpy import load_file

    hf_dir = Path(tiny_llama_dir)
    folder = tmp_path_factory.mktemp("base")
    path = folder / "tiny.gguf"
    config = json.loads((hf_dir / "config.json").read_text())
    vocab = gpt2_vocab_from_tokenizer_json(str(hf_dir / "tokenizer.json")) | {"bos_id": 1, "eos_id": 2}
    write_tiny_gguf(str(path), load_file(hf_dir / "model.safetensors"), config, vocab)
    return Base(hf_dir, path.read_bytes())


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


@pytest.fixture(scope="module")
def corpus(base, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("corpus")
    built = {}
    for name, case in CASES.items():
        folder = root / name
        folder.mkdir()
        built[name] = case.build(folder, base)
    return built


def test_the_corpus_is_large_and_the_bases_load(base, tmp_path):
    assert len(CASES) >= 30
    kinds = {name.split("_")[0] for name in CASES}
    assert {"gguf", "st", "config", "dir"} <= kinds
    good = tmp_path / "good.gguf"
    good.write_bytes(Gguf.parse(base.gguf).to_bytes())  # the editor round-trips a valid file
    assert good.read_bytes() == base.gguf
    for path in (good, base.hf_dir):
        assert LLM(str(path), **ENGINE_OPTIONS).tokenizer.vocab_size == 300


# --------------------------------------------------------------------------- each case in-process


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang()


@pytest.mark.parametrize("name", sorted(CASES))
def test_refused_quickly_with_a_clear_message(corpus, name):
    path, named = corpus[name]
    budget = 2 * _size(path) + MEMORY_ALLOWANCE
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, 20)  # a hang fails the test instead of the suite
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ModelLoadError) as info:
            LLM(str(path), **ENGINE_OPTIONS)
    finally:
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    message = str(info.value)
    assert str(named) in message, f"{message!r} does not name {named}"
    assert re.search(CASES[name].match, message), f"{message!r} !~ {CASES[name].match!r}"
    assert "\n" not in message and "Traceback" not in message
    assert elapsed < TIME_LIMIT_S, f"{name}: {elapsed:.2f} s"
    assert peak < budget, f"{name}: {peak / _MB:.1f} MiB of Python allocations (budget {budget / _MB:.1f})"


# --------------------------------------------------------------------------- weights that are not numbers


@pytest.mark.parametrize("fmt, value", [("gguf", "nan"), ("gguf", "inf"), ("st", "nan"), ("st", "-inf")])
def test_non_finite_weights_are_refused(base, tmp_path, fmt, value):
    """What a user wants: one ModelLoadError at load that names the file and the tensor."""
    if fmt == "gguf":
        g = Gguf.parse(base.gguf)
        g.fill("blk.0.ffn_down.weight", float(value))
        path = named = tmp_path / f"{value}.gguf"
        path.write_bytes(g.to_bytes())
        tensor = "blk.0.ffn_down.weight|model.layers.0.mlp.down_proj.weight"
    else:
        from safetensors.torch import load_file, save_file

        path = tmp_path / value
        shutil.copytree(base.hf_dir, path)
        named = path / "model.safetensors"
        state = load_file(named)
        state["model.layers.0.mlp.down_proj.weight"].fill_(float(value))
        save_file(state, named, metadata={"format": "pt"})
        tensor = "model.layers.0.mlp.down_proj.weight"
    with pytest.raises(ModelLoadError) as info:
        LLM(str(path), **ENGINE_OPTIONS)
    message = str(info.value)
    assert str(named) in message and re.search(rf"({tensor}).*(NaN|Inf|not finite)", message, re.I), message


# --------------------------------------------------------------------------- peak RSS of the whole corpus

_RSS_SCRIPT = r"""
import ctypes, json, re, sys
from model import LLM, ModelLoadError

def status():
    return {k: int(v) * 1024 for k, v in re.findall(r"(VmHWM|VmRSS):\s+(\d+) kB", open("/proc/self/status").read())}

cases, warmup, options = json.loads(sys.stdin.read())
libc = ctypes.CDLL("libc.so.6")
def attempt(path):
    try:
        LLM(path, **options)
    except ModelLoadError:
        return "ModelLoadError"
    except Exception as exc:
        return type(exc).__name__
    return "loaded"
for path in warmup:  # imports and first-use caches, outside the measurement
    attempt(path)
growth = {}
for name, path in cases.items():
    libc.malloc_trim(0)  # give freed heap back, so an earlier case's pages do not hide this one's
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = status()["VmRSS"]
    outcome = attempt(path)
    growth[name] = [status()["VmHWM"] - before, outcome]
print(json.dumps(growth))
"""


def test_peak_rss_stays_bounded(corpus):
    """One subprocess runs the whole corpus; each case's peak RSS growth stays under 2x its input."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs /proc/self/clear_refs to reset the peak RSS")
    cases = {name: str(path) for name, (path, _) in corpus.items()}
    warmup = [cases["gguf_bos_out_of_range"], cases["dir_tokenizer_not_json"]]
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT],
        input=json.dumps([cases, warmup, ENGINE_OPTIONS]),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    growth = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (grown, outcome) in growth.items():
        budget = 2 * _size(corpus[name][0]) + MEMORY_ALLOWANCE
        assert outcome == "ModelLoadError", (name, outcome)
        assert grown < budget, f"{name}: RSS grew {grown / _MB:.1f} MiB (budget {budget / _MB:.1f})"


# --------------------------------------------------------------------------- the command line


def test_cli_refuses_a_broken_model_with_one_line(corpus):
    """`python -m app.main serve <bad>` logs one ERROR line naming the file (no traceback) and exits with 2."""
    runs = {}
    for name, extra in (("gguf_cut_mid_data", ["--log-level", "warning"]), ("config_hidden_size_2e40", [])):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        args = ["serve", str(corpus[name][0]), "--port", str(port), "--device", "cpu", *extra]
        start = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.main", *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        runs[name] = (proc, start)
    for name, (proc, start) in runs.items():
        out, err = proc.communicate(timeout=90)
        elapsed = time.monotonic() - start
        lines = [ln for ln in (out + err).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "ERROR" in ln]
        assert proc.returncode == 2, (name, proc.returncode, err[-2000:])
        assert "Traceback" not in out + err, err[-2000:]
        assert len(errors) == 1 and str(corpus[name][1]) in errors[0], lines
        assert re.search(CASES[name].match, errors[0]), errors[0]
        if name == "gguf_cut_mid_data":  # at --log-level warning that line is all it prints
            assert lines == errors, lines
        assert elapsed < 60, f"{name}: {elapsed:.1f} s"  # the start-up (imports) dominates
