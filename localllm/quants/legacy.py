"""The 32-weight block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (llama.cpp's ggml-common.h layouts).

Q4_0 {f16 d; u8 qs[16]}          x = (q - 8) * d        low nibbles are weights 0..15, high 16..31
Q4_1 {f16 d, m; u8 qs[16]}       x = q * d + m
Q5_0 {f16 d; u32 qh; u8 qs[16]}  x = (q | hbit << 4) - 16) * d, hbit j = bit j of qh
Q5_1 {f16 d, m; u32 qh; u8 qs[16]}
Q8_0 {f16 d; i8 qs[32]}          x = q * d
"""
from __future__ import annotations

import numpy as np
from numba import njit

from . import QuantFormat, register
from .floats import f16_at
from ..kernels.entry import lean_caches


@njit(cache=True)
def dequantize_row_q4_0(raw, out):
    for b in range(raw.shape[0] // 18):
        o, y = b * 18, b * 32
        d = f16_at(raw, o)
        for j in range(16):
            q = raw[o + 2 + j]
            out[y + j] = np.float32(np.int32(q & 15) - 8) * d
            out[y + j + 16] = np.float32(np.int32(q >> 4) - 8) * d


@njit(cache=True)
def dequantize_row_q4_1(raw, out):
    for b in range(raw.shape[0] // 20):
        o, y = b * 20, b * 32
        d, m = f16_at(raw, o), f16_at(raw, o + 2)
        for j in range(16):
            q = raw[o + 4 + j]
            out[y + j] = np.float32(q & 15) * d + m
            out[y + j + 16] = np.float32(q >> 4) * d + m


@njit(cache=True, inline="always")
def _qh_at(raw, i):
    return (np.uint32(raw[i]) | (np.uint32(raw[i + 1]) << np.uint32(8))
            | (np.uint32(raw[i + 2]) << np.uint32(16)) | (np.uint32(raw[i + 3]) << np.uint32(24)))


@njit(cache=True)
def dequantize_row_q5_0(raw, out):
    for b in range(raw.shape[0] // 22):
        o, y = b * 22, b * 32
        d = f16_at(raw, o)
        qh = _qh_at(raw, o + 2)
        for j in range(16):
            q = np.int32(raw[o + 6 + j])
            h0 = np.int32((qh >> np.uint32(j)) & np.uint32(1)) << 4
            h1 = np.int32((qh >> np.uint32(j + 16)) & np.uint32(1)) << 4
            out[y + j] = np.float32(((q & 15) | h0) - 16) * d
            out[y + j + 16] = np.float32(((q >> 4) | h1) - 16) * d


@njit(cache=True)
def dequantize_row_q5_1(raw, out):
    for b in range(raw.shape[0] // 24):
        o, y = b * 24, b * 32
        d, m = f16_at(raw, o), f16_at(raw, o + 2)
        qh = _qh_at(raw, o + 4)
        for j in range(16):
            q = np.int32(raw[o + 8 + j])
            h0 = np.int32((qh >> np.uint32(j)) & np.uint32(1)) << 4
            h1 = np.int32((qh >> np.uint32(j + 16)) & np.uint32(1)) << 4
            out[y + j] = np.float32((q & 15) | h0) * d + m
            out[y + j + 16] = np.float32((q >> 4) | h1) * d + m


@njit(cache=True)
def dequantize_row_q8_0(raw, out):
    qs = raw.view(np.int8)
    for b in range(raw.shape[0] // 34):
        o, y = b * 34, b * 32
        d = f16_at(raw, o)
        for j in range(32):
            out[y + j] = np.float32(qs[o + 2 + j]) * d


# NumPy references, written from the layouts above.
def _scales(blocks, at):
    return blocks[:, at:at + 2].copy().view(np.float16).astype(np.float32)


def _nibbles(qs):
    return np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.float32)


def _high_bits(blocks, at):
    qh = blocks[:, at:at + 4].copy().view(np.uint32)
    return ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.float32) * 16


def _ref_q4_0(blocks):
    return (_nibbles(blocks[:, 2:]) - 8) * _scales(blocks, 0)


def _ref_q4_1(blocks):
    return _nibbles(blocks[:, 4:]) * _scales(blocks, 0) + _scales(blocks, 2)


def _ref_q5_0(blocks):
    return (_nibbles(blocks[:, 6:]) + _high_bits(blocks, 2) - 16) * _scales(blocks, 0)


def _ref_q5_1(blocks):
    return (_nibbles(blocks[:, 8:]) + _high_bits(blocks, 4)) * _scales(blocks, 0) + _scales(blocks, 2)


def _ref_q8_0(blocks):
    return blocks[:, 2:].view(np.int8).astype(np.float32) * _scales(blocks, 0)


def _codes(q, scale, offset=None):
    zero = np.zeros_like(scale) if offset is None else offset
    return q.astype(np.int8), scale, zero


def _codes_q4_0(blocks):
    return _codes(_nibbles(blocks[:, 2:]) - 8, _scales(blocks, 0))


def _codes_q4_1(blocks):
    return _codes(_nibbles(blocks[:, 4:]), _scales(blocks, 0), _scales(blocks, 2))


def _codes_q5_0(blocks):
    return _codes(_nibbles(blocks[:, 6:]) + _high_bits(blocks, 2) - 16, _scales(blocks, 0))


def _codes_q5_1(blocks):
    return _codes(_nibbles(blocks[:, 8:]) + _high_bits(blocks, 4), _scales(blocks, 0), _scales(blocks, 2))


def _codes_q8_0(blocks):
    return _codes(blocks[:, 2:].view(np.int8), _scales(blocks, 0))


Q4_0 = register(QuantFormat("Q4_0", 2, 32, 18, dequantize_row_q4_0, _ref_q4_0, _codes_q4_0, (-8, 7)))
Q4_1 = register(QuantFormat("Q4_1", 3, 32, 20, dequantize_row_q4_1, _ref_q4_1, _codes_q4_1, (0, 15)))
Q5_0 = register(QuantFormat("Q5_0", 6, 32, 22, dequantize_row_q5_0, _ref_q5_0, _codes_q5_0, (-16, 15)))
Q5_1 = register(QuantFormat("Q5_1", 7, 32, 24, dequantize_row_q5_1, _ref_q5_1, _codes_q5_1, (0, 31)))
Q8_0 = register(QuantFormat("Q8_0", 8, 32, 34, dequantize_row_q8_0, _ref_q8_0, _codes_q8_0, (-128, 127)))


lean_caches(globals())
