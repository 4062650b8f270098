"""The GGUF file format: metadata, the tensor table, and reading one tensor's data.

The header (metadata and tensor table) is parsed here with a small bounds-checked reader rather
than `gguf.GGUFReader`: that one builds numpy views for every vocabulary string (about 5 s for a
49k vocabulary on this machine) and trusts the header's counts. Every length and count is checked
against the file size before use, so a corrupt or hostile file gives one `ModelLoadError` naming
the file. Tensor data is dequantized by `gguf_dequant`.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from ..errors import ModelLoadError
from .gguf_dequant import dequantize_tensor

_MAGIC = b"GGUF"
_MAX_DIMS = 4  # GGML_MAX_DIMS
_LIST_MAX = 1 << 16  # numeric metadata arrays outside tokenizer.* longer than this stay numpy arrays

# Fixed-size scalar value types: struct format (little-endian).
_SCALARS = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}


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
    fields: dict[str, Any]  # metadata: key -> str | int | float | bool | list (or np.ndarray, see _LIST_MAX)
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

    def value(self, vtype: int, what: str, depth: int = 0, compact: bool = False) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype], what)
        if vtype == GGUFValueType.STRING:
            return self.string(what)
        if vtype == GGUFValueType.ARRAY and depth < 2:
            return self.array(what, depth, compact)
        raise self.fail(f"{what} has an unknown value type {vtype}")

    def array(self, what: str, depth: int, compact: bool) -> list[Any] | np.ndarray:
        etype = self.scalar("<I", f"element type of {what}")
        count = self.scalar("<Q", f"length of {what}")
        if etype in _SCALARS:
            width = struct.calcsize(_SCALARS[etype])
            self.need(count * width, f"{what} ({count} elements)")
            out = np.frombuffer(self.buf, dtype=np.dtype(_SCALARS[etype]), count=count, offset=self.pos)
            self.pos += count * width
            # A long numeric array kvserve does not read stays numpy: as a list it takes 8x the file's bytes.
            return out.copy() if compact and count > _LIST_MAX else out.tolist()
        self.need(count * 8, f"{what} ({count} elements)")  # each string/array element takes >= 8 bytes
        if etype == GGUFValueType.STRING:
            return self.strings(count, what)
        return [self.value(etype, what, depth + 1, compact) for _ in range(count)]

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
        fields[key] = cur.value(vtype, f"metadata {key!r}", compact=not key.startswith("tokenizer."))
    infos = [_tensor_info(cur) for _ in range(n_tensors)]
    alignment = fields.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1) or alignment > 1 << 20:
        raise cur.fail(f"general.alignment={alignment!r} is not a power of two")
    data_start = -(-cur.pos // alignment) * alignment
    tensors: dict[str, TensorInfo] = {}
    for name, dims, qtype, rel in infos:
        if name in tensors:
            raise cur.fail(f"duplicate tensor {name!r}")
        if rel % alignment:
            raise ModelLoadError(
                f"{path}: tensor {name!r} data offset {rel} is not a multiple of the alignment ({alignment})"
            )
        tensors[name] = _place_tensor(path, name, dims, qtype, data_start + rel, size)
    _check_overlaps(path, tensors)
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


def _check_overlaps(path: str, tensors: dict[str, TensorInfo]) -> None:
    """Tensors may not share bytes (llama.cpp lays them out one after the other)."""
    spans = sorted((t.offset, t.offset + t.n_bytes, t.name) for t in tensors.values())
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            raise ModelLoadError(
                f"{path}: tensor {first!r} (ending at byte {end}) overlaps tensor {second!r} (starting at byte "
                f"{start}); corrupt file"
            )


def read_raw(f: Any, info: TensorInfo) -> np.ndarray:
    """One tensor's bytes as stored (uint8), from an open file."""
    raw = np.empty(info.n_bytes, dtype=np.uint8)
    f.seek(info.offset)
    if f.readinto(memoryview(raw)) != info.n_bytes:
        raise ModelLoadError(f"{f.name}: tensor {info.name!r} is truncated (the file changed while loading?)")
    return raw


def read_tensor(f: Any, info: TensorInfo) -> np.ndarray:
    """One tensor from an open file, dequantized to float32 in HF shape."""
    return dequantize_tensor(read_raw(f, info), info.qtype, info.shape)


__all__ = ["GGUFHeader", "TensorInfo", "read_header", "read_raw", "read_tensor"]
