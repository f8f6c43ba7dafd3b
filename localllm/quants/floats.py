"""Float formats: F32, F16, BF16 (block size 1)."""
from __future__ import annotations

import numpy as np
from numba import njit

from . import QuantFormat, register
from ..kernels.entry import lean_caches

# float16 bits -> float32, exact for every value (NaN/inf included); numba freezes it as a constant.
F16_TO_F32 = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)


@njit(cache=True, inline="always")
def f16_at(raw, i):
    """The float16 stored little-endian at raw[i:i+2], as float32."""
    return F16_TO_F32[np.int64(raw[i]) | (np.int64(raw[i + 1]) << 8)]


@njit(cache=True)
def dequantize_row_f32(raw, out):
    src = raw.view(np.float32)
    for i in range(out.shape[0]):
        out[i] = src[i]


@njit(cache=True)
def dequantize_row_f16(raw, out):
    src = raw.view(np.uint16)
    for i in range(out.shape[0]):
        out[i] = F16_TO_F32[src[i]]


@njit(cache=True)
def dequantize_row_bf16(raw, out):
    src = raw.view(np.uint16)
    bits = out.view(np.uint32)
    for i in range(out.shape[0]):
        bits[i] = np.uint32(src[i]) << np.uint32(16)


def _ref_f32(blocks):
    return blocks.view(np.float32).reshape(-1, 1)


def _ref_f16(blocks):
    return blocks.view(np.float16).astype(np.float32).reshape(-1, 1)


def _ref_bf16(blocks):
    return (blocks.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(-1, 1)


F32 = register(QuantFormat("F32", 0, 1, 4, dequantize_row_f32, _ref_f32))
F16 = register(QuantFormat("F16", 1, 1, 2, dequantize_row_f16, _ref_f16))
BF16 = register(QuantFormat("BF16", 30, 1, 2, dequantize_row_bf16, _ref_bf16))


lean_caches(globals())
