"""GGUF files, memory-mapped and validated; tensors are NumPy views of the map.

The header is parsed here: `gguf.GGUFReader` builds a NumPy object per string and takes 7 s (SmolLM2) to
24 s (Qwen2.5) to open a file; this takes ~0.1 s. The ggml type table is ours too (GGML_TYPES, checked
against the `gguf` package by the tests): importing that package costs a fresh process 20-50 ms.
"""
from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import GGUFError

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type_id: int        # ggml type id (GGML_TYPES, gguf.GGMLQuantizationType value)
    type_name: str      # "Q4_K", "F32", ...
    shape: tuple        # NumPy order, contiguous dimension last: (n_rows, n_cols) for a matrix
    n_elements: int
    n_bytes: int
    data: np.ndarray    # raw view of the mapped file: uint8 (n_rows, row_bytes), or float32/float16 arrays


# ggml type id -> (name, elements per block, bytes per block), as ggml.h / gguf.GGML_QUANT_SIZES have them.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8),
    28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}


def ggml_type(type_id: int) -> tuple[str, int, int] | None:
    """(name, block elements, block bytes) of a ggml type id; types newer than GGML_TYPES are looked up
    in the installed `gguf` package. None: unknown to both."""
    known = GGML_TYPES.get(type_id)
    if known is not None:
        return known
    try:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
        qtype = GGMLQuantizationType(type_id)
        return (qtype.name, *GGML_QUANT_SIZES[qtype])
    except (ImportError, ValueError, KeyError):
        return None


_SCALAR = {  # GGUFValueType -> (struct format, size)
    0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
    6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8),
}
_NP = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
       6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
_STRING, _ARRAY = 8, 9


class _Cursor:
    """Reads the GGUF header from the mapped bytes; any overrun is a truncated file."""

    def __init__(self, buf: memoryview):
        self.buf, self.pos = buf, 0

    def take(self, fmt: str, size: int):
        if self.pos + size > len(self.buf):
            raise EOFError
        v = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += size
        return v

    def string(self) -> str:
        n = self.take("<Q", 8)
        if self.pos + n > len(self.buf):
            raise EOFError
        s = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            sub, n = self.take("<I", 4), self.take("<Q", 8)
            if sub == _STRING:
                return self._strings(n)
            if sub == _ARRAY:
                return [self.value(self.take("<I", 4)) for _ in range(n)]
            dt = np.dtype(_NP[sub])
            if self.pos + n * dt.itemsize > len(self.buf):
                raise EOFError
            arr = np.frombuffer(self.buf, dt, count=n, offset=self.pos).copy()
            self.pos += n * dt.itemsize
            return arr
        if vtype not in _SCALAR:
            raise ValueError(f"unknown metadata value type {vtype}")
        v = self.take(*_SCALAR[vtype])
        return v

    def _strings(self, n: int) -> list[str] | StringArray:
        """n length-prefixed UTF-8 strings (a vocabulary: 151k for Qwen2.5). A compiled pass finds where
        each starts; arrays of LAZY_FROM strings or more come back as a StringArray, decoded as they are
        read, smaller ones as a list."""
        from .kernels.scan import string_prefixes   # Numba: loaded for the model anyway

        buf, start = self.buf, self.pos
        if n > (len(buf) - start) // 8:               # each takes 8 bytes at least: a corrupt count
            raise EOFError
        at = np.empty(n, np.int64)
        pos = string_prefixes(np.frombuffer(buf, np.uint8), start, n, at)
        if pos < 0:
            raise EOFError
        self.pos = pos
        strings = StringArray(buf, at, pos)
        return strings if n >= LAZY_FROM else list(strings)


LAZY_FROM = 1024      # strings in an array from which it is a StringArray


class StringArray(Sequence):
    """A GGUF array of strings, read-only, decoded as it is read: an item by index on its own, all of
    them (kept) when iterated, sliced or compared. A BPE tokenizer whose lookup tables come from disk
    reads a few of its 151k merges (Qwen2.5), and splitting them all took ~40 ms of a fresh load."""
    __slots__ = ("_buf", "_bounds", "_all")

    def __init__(self, buf: memoryview, at: np.ndarray, end: int):   # at: (n,) int64 length-prefix offsets
        # (n + 1,) offsets: string i is buf[b[i] + 8:b[i + 1]]; a memoryview, whose items are Python ints
        self._buf, self._bounds, self._all = buf, memoryview(np.append(at, end)), None

    def __len__(self) -> int:
        return len(self._bounds) - 1

    def __getitem__(self, i):
        if self._all is not None or isinstance(i, slice):
            return self.tolist()[i]
        n = len(self)
        if not -n <= i < n:
            raise IndexError("string index out of range")
        return self.take((i % n,))[0]

    def take(self, ids) -> list[str]:
        """The strings at ids (non-negative ints), decoded one by one (~0.4 µs each)."""
        if self._all is not None:
            return [self._all[i] for i in ids]
        buf, b = self._buf, self._bounds
        return [str(buf[b[i] + 8:b[i + 1]], "utf-8", "replace") for i in ids]

    def __iter__(self):
        return iter(self.tolist())

    def __eq__(self, other):
        return self.tolist() == (other.tolist() if isinstance(other, StringArray) else other)

    __hash__ = None

    def __repr__(self) -> str:
        return f"StringArray({len(self)} strings)"

    def empty(self) -> np.ndarray:
        """Indices of the empty strings, found without decoding any."""
        return np.flatnonzero(np.diff(np.asarray(self._bounds)) == 8)

    def tolist(self) -> list[str]:
        """Every string: copied out with one NUL between each two by a compiled pass, decoded at once and
        split there (Gemma 3's 262k tokens: ~35 ms; a Python loop took 0.2 s); strings holding NUL bytes
        or invalid UTF-8 are decoded one by one."""
        if self._all is None:
            self._all = self._decoded()
        return self._all

    def _decoded(self) -> list[str]:
        from .kernels.scan import join_strings

        n = len(self)
        if n == 0:
            return []
        bounds = np.asarray(self._bounds)
        at, end = bounds[:-1], int(bounds[-1])
        joined = np.empty(end - int(at[0]) - 7 * n - 1, np.uint8)        # (string bytes + n - 1,)
        if join_strings(np.frombuffer(self._buf, np.uint8), at, end, joined) == 0:
            try:
                return str(memoryview(joined), "utf-8").split("\0")
            except UnicodeDecodeError:
                pass
        return self.take(range(n))


class GGUFFile:
    """An opened GGUF: `metadata` (dict of plain values; arrays of LAZY_FROM strings or more as StringArray)
    and `tensors` (name -> TensorInfo, mapped views).

    Raises GGUFError, naming the file, when it is missing, not GGUF, truncated or corrupt.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise GGUFError(f"{self.path}: no such model file")
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise GGUFError(f"{self.path}: not a GGUF model file (starts with {magic!r}, expected b'GGUF')")
        with open(self.path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self._parse(memoryview(self._map), size)
        except EOFError:
            raise GGUFError(f"{self.path}: truncated GGUF header; download the file again") from None
        except (ValueError, KeyError, UnicodeDecodeError, struct.error) as e:
            raise GGUFError(f"{self.path}: corrupt GGUF ({e})") from None
        self.file_size = size

    def _parse(self, buf: memoryview, size: int) -> None:
        c = _Cursor(buf)
        c.pos = 4
        version = c.take("<I", 4)
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version}")
        n_tensors, n_kv = c.take("<Q", 8), c.take("<Q", 8)
        if n_tensors > 1 << 20 or n_kv > 1 << 20:
            raise ValueError(f"implausible counts ({n_tensors} tensors, {n_kv} metadata keys)")
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = c.string()
            self.metadata[key] = c.value(c.take("<I", 4))
        raw = []
        for _ in range(n_tensors):
            name = c.string()
            n_dims = c.take("<I", 4)
            if n_dims > 4:
                raise ValueError(f"tensor {name!r} has {n_dims} dimensions")
            dims = [c.take("<Q", 8) for _ in range(n_dims)]
            raw.append((name, dims, c.take("<I", 4), c.take("<Q", 8)))
        align = int(self.metadata.get("general.alignment", 32))
        data_start = (c.pos + align - 1) // align * align
        self.tensors: dict[str, TensorInfo] = {}
        for name, dims, type_id, offset in raw:
            qtype = ggml_type(type_id)
            tname, block, tsize = qtype if qtype is not None else (f"type {type_id}", 1, 0)
            shape = tuple(int(d) for d in reversed(dims))  # GGUF lists the fastest dimension first
            n_el = int(np.prod(dims)) if dims else 1
            n_bytes = n_el // block * tsize
            start = data_start + int(offset)
            if start + n_bytes > size:
                raise EOFError
            if qtype is None:
                data = np.frombuffer(buf, np.uint8, count=0, offset=start)
            elif tname in ("F32", "F16"):
                data = np.frombuffer(buf, np.float32 if tname == "F32" else np.float16,
                                     count=n_el, offset=start).reshape(shape)
            else:
                row = shape[-1] // block * tsize
                data = np.frombuffer(buf, np.uint8, count=n_bytes, offset=start).reshape(*shape[:-1], row)
            self.tensors[name] = TensorInfo(
                name=name, type_id=type_id, type_name=tname,
                shape=shape, n_elements=n_el, n_bytes=n_bytes, data=data)

    def release_pages(self) -> None:
        """Drop this process's mapping of pages read so far (repacked weights no longer need them);
        the file stays mapped and pages read again come back from the page cache."""
        if hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED)

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise GGUFError(f"{self.path}: GGUF has no general.architecture")
        return arch

    def arch_key(self, key: str, default: Any = None) -> Any:
        """`<arch>.<key>` from the metadata, e.g. arch_key('block_count')."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors.values())
