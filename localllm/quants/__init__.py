"""Quantization formats: a registry of per-type traits, so model code never branches on the format.

Each format module registers a `QuantFormat` with
- `dequantize_row(raw, out)`: Numba kernel, raw uint8 (row_bytes,) -> out float32 (n_cols,);
  bit-exact with `gguf.quants.dequantize` (no fastmath: contraction into FMA would change rounding);
- `reference(blocks)`: plain NumPy, uint8 (n_blocks, type_size) -> float32 (n_blocks, block_size);
- `codes(blocks)` (optional): the integer form, for repacking at load: (q int8 (n_blocks, block_size),
  scale float32 (n_blocks, n_groups), offset float32 (n_blocks, n_groups)) with
  weight = scale * q + offset per group of block_size // n_groups weights.
- `factors(blocks)` (optional, K-quants): those scales and offsets as the file holds them, two levels:
  (d float32 (n_blocks, 1), sc int8 (n_blocks, n_groups), dm float32 (n_blocks, 1), m int8 (n_blocks,
  n_groups)) with scale == d * sc and offset == dm * m exactly (float32 products).
Kernels (localllm.kernels.quantized) dispatch on `type_id` through `dequantize_row_any`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import UnsupportedTensorTypeError


@dataclass(frozen=True)
class QuantFormat:
    name: str                 # ggml name: "Q4_0", "Q6_K", "F16", ...
    type_id: int              # ggml type id (gguf.GGMLQuantizationType)
    block_size: int           # weights per block
    type_size: int            # bytes per block
    dequantize_row: Callable  # numba: (raw uint8 (row_bytes,), out float32 (n_cols,)) -> None
    reference: Callable       # numpy: uint8 (n_blocks, type_size) -> float32 (n_blocks, block_size)
    codes: Callable | None = None  # numpy: blocks -> (q int8, scale, offset), see above
    code_range: tuple = (-128, 127)  # smallest and largest q that `codes` returns
    factors: Callable | None = None  # numpy: blocks -> (d, sc, dm, m), see above

    def row_bytes(self, n_cols: int) -> int:
        return n_cols // self.block_size * self.type_size


FORMATS: dict[int, QuantFormat] = {}


def register(fmt: QuantFormat) -> QuantFormat:
    FORMATS[fmt.type_id] = fmt
    return fmt


def get_format(type_id: int, tensor_name: str = "?") -> QuantFormat:
    _load_all()
    try:
        return FORMATS[type_id]
    except KeyError:
        names = ", ".join(sorted(f.name for f in FORMATS.values()))
        raise UnsupportedTensorTypeError(
            f"tensor {tensor_name!r} uses ggml type {_type_name(type_id)}, which localllm cannot run yet "
            f"(supported: {names})") from None


def _type_name(type_id: int) -> str:
    from ..ggufio import ggml_type

    known = ggml_type(type_id)
    return known[0] if known is not None else str(type_id)


def dequantize_reference(fmt: QuantFormat, raw: np.ndarray) -> np.ndarray:
    """Reference dequantization of raw rows uint8 (..., row_bytes) -> float32 (..., n_cols)."""
    lead = raw.shape[:-1]
    blocks = np.ascontiguousarray(raw).reshape(-1, fmt.type_size)
    return fmt.reference(blocks).reshape(*lead, -1)


_loaded = False


def _load_all() -> None:
    global _loaded
    if not _loaded:
        from . import floats, kquants, legacy  # noqa: F401  (each registers its formats)
        _loaded = True
