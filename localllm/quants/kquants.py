"""K-quant formats Q2_K..Q6_K: 256-weight super-blocks split into 16- or 32-weight sub-blocks.

Block layouts (bytes, in file order), as ggml's block_q*_K structs:
- Q2_K  (84): scales[16] (lo nibble scale, hi nibble min), qs[64] (2-bit), d f16, dmin f16
- Q3_K (110): hmask[32] (3rd bit), qs[64] (low 2 bits), scales[12] (16 x 6-bit, offset 32), d f16
- Q4_K (144): d f16, dmin f16, scales[12] (8 x 6-bit scale + 8 x 6-bit min), qs[128] (4-bit)
- Q5_K (176): d f16, dmin f16, scales[12] (as Q4_K), qh[32] (5th bit), qs[128] (low 4 bits)
- Q6_K (210): ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] int8, d f16

Every value is computed in float32 in the same order as ggml (`(d * sc) * q - (dmin * m)`) and without
fastmath, so the kernels are bit-exact with `gguf.quants.dequantize` and llama.cpp.

The kernels write each sub-block with an inner loop whose trip count is a run-time value (`n16`/`n32`
derived from the array shapes): a literal `range(32)` is fully unrolled before the loop vectoriser
runs and Numba keeps the SLP vectoriser off, so it would stay scalar (notes/numba-kernels.md).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from . import QuantFormat, register
from .floats import F16_TO_F32, f16_at
from ..kernels.entry import lean_caches

QK_K = 256

Q2_K_SIZE, Q3_K_SIZE, Q4_K_SIZE, Q5_K_SIZE, Q6_K_SIZE = 84, 110, 144, 176, 210


# ---------------------------------------------------------------------------------------------
# Numba kernels: raw uint8 (n_blocks * type_size,) -> out float32 (n_blocks * 256,)
# ---------------------------------------------------------------------------------------------

@njit(cache=True, inline="always")
def _sub_len(out, nb, parts):
    # QK_K // parts, but read from the shapes so LLVM sees a run-time trip count and vectorises.
    return out.shape[0] // (nb * parts) if nb > 0 else 0


@njit(cache=True)
def dequantize_row_q2_k(raw, out):
    nb = raw.shape[0] // Q2_K_SIZE
    n32 = _sub_len(out, nb, 8)
    n16 = n32 >> 1
    for b in range(nb):
        p = b * Q2_K_SIZE
        o = b * QK_K
        # Two passes over the block (hot in L1): the 2-bit codes as floats in 32-long runs, then the
        # 16 (scale, min) pairs; measured ~15% faster than one pass of 16-long runs.
        for half in range(2):
            qp = p + 16 + 32 * half
            for j in range(4):
                shift = 2 * j
                y0 = o + 128 * half + 32 * j
                for l in range(n32):
                    out[y0 + l] = np.float32((raw[qp + l] >> shift) & 3)
        d = f16_at(raw, p + 80)
        dmin = f16_at(raw, p + 82)
        for g in range(16):
            sc = raw[p + g]
            dl = d * np.float32(sc & 15)
            ml = dmin * np.float32(sc >> 4)
            y0 = o + 16 * g
            for l in range(n16):
                out[y0 + l] = dl * out[y0 + l] - ml


@njit(cache=True, inline="always")
def _q3_k_scale(raw, s, k):
    # 16 six-bit scales: low nibbles in bytes 0..7 (k and k+8 share a byte), high 2 bits in bytes 8..11.
    lo = (raw[s + (k & 7)] >> (4 * (k >> 3))) & 15
    hi = (raw[s + 8 + (k & 3)] >> (2 * (k >> 2))) & 3
    return np.int32(lo | (hi << 4)) - 32


@njit(cache=True)
def dequantize_row_q3_k(raw, out):
    nb = raw.shape[0] // Q3_K_SIZE
    n16 = _sub_len(out, nb, 16)
    for b in range(nb):
        p = b * Q3_K_SIZE
        o = b * QK_K
        d = f16_at(raw, p + 108)
        for half in range(2):
            qp = p + 32 + 32 * half
            for j in range(4):
                shift = 2 * j
                hshift = 4 * half + j
                for k in range(2):
                    dl = d * np.float32(_q3_k_scale(raw, p + 96, 8 * half + 2 * j + k))
                    q0 = qp + 16 * k
                    h0 = p + 16 * k
                    y0 = o + 128 * half + 32 * j + 16 * k
                    for l in range(n16):
                        # the high bit set means no offset: q = low2 - 4 * (1 - hbit)
                        q = np.int32((raw[q0 + l] >> shift) & 3) \
                            - 4 + 4 * np.int32((raw[h0 + l] >> hshift) & 1)
                        out[y0 + l] = dl * np.float32(q)


@njit(cache=True, inline="always")
def _k4_scale_min(raw, s, j):
    # 8 six-bit (scale, min) pairs in 12 bytes; pairs 4..7 keep their top 2 bits in bytes 0..7.
    if j < 4:
        return raw[s + j] & 63, raw[s + j + 4] & 63
    sc = (raw[s + j + 4] & 15) | ((raw[s + j - 4] >> 6) << 4)
    m = (raw[s + j + 4] >> 4) | ((raw[s + j] >> 6) << 4)
    return sc, m


@njit(cache=True)
def dequantize_row_q4_k(raw, out):
    nb = raw.shape[0] // Q4_K_SIZE
    n32 = _sub_len(out, nb, 8)
    for b in range(nb):
        p = b * Q4_K_SIZE
        o = b * QK_K
        d = f16_at(raw, p)
        dmin = f16_at(raw, p + 2)
        for j in range(4):
            sc1, m1 = _k4_scale_min(raw, p + 4, 2 * j)
            sc2, m2 = _k4_scale_min(raw, p + 4, 2 * j + 1)
            d1 = d * np.float32(sc1)
            mn1 = dmin * np.float32(m1)
            d2 = d * np.float32(sc2)
            mn2 = dmin * np.float32(m2)
            q0 = p + 16 + 32 * j
            y0 = o + 64 * j
            for l in range(n32):
                q = raw[q0 + l]
                out[y0 + l] = d1 * np.float32(q & 15) - mn1
                out[y0 + 32 + l] = d2 * np.float32(q >> 4) - mn2


@njit(cache=True)
def dequantize_row_q5_k(raw, out):
    nb = raw.shape[0] // Q5_K_SIZE
    n32 = _sub_len(out, nb, 8)
    for b in range(nb):
        p = b * Q5_K_SIZE
        o = b * QK_K
        d = f16_at(raw, p)
        dmin = f16_at(raw, p + 2)
        for j in range(4):
            sc1, m1 = _k4_scale_min(raw, p + 4, 2 * j)
            sc2, m2 = _k4_scale_min(raw, p + 4, 2 * j + 1)
            d1 = d * np.float32(sc1)
            mn1 = dmin * np.float32(m1)
            d2 = d * np.float32(sc2)
            mn2 = dmin * np.float32(m2)
            h0 = p + 16
            q0 = p + 48 + 32 * j
            y0 = o + 64 * j
            # uint8 masks and selects (not variable shifts in int64) keep the loop in narrow lanes
            b1 = np.uint8(1 << (2 * j))
            b2 = np.uint8(2 << (2 * j))
            for l in range(n32):
                q = raw[q0 + l]
                h = raw[h0 + l]
                out[y0 + l] = d1 * np.float32((q & np.uint8(15)) + (np.uint8(16) if h & b1 else np.uint8(0))) - mn1
                out[y0 + 32 + l] = d2 * np.float32((q >> np.uint8(4)) + (np.uint8(16) if h & b2 else np.uint8(0))) - mn2


@njit(cache=True)
def dequantize_row_q6_k(raw, out):
    nb = raw.shape[0] // Q6_K_SIZE
    n16 = _sub_len(out, nb, 16)
    for b in range(nb):
        p = b * Q6_K_SIZE
        o = b * QK_K
        d = f16_at(raw, p + 208)
        for half in range(2):
            ql = p + 64 * half
            qh = p + 128 + 32 * half
            sp = p + 192 + 8 * half
            y = o + 128 * half
            for k in range(2):
                # sub-block k of each of the four 32-weight quarters of this half
                d1 = d * np.float32(np.int8(raw[sp + k]))
                d2 = d * np.float32(np.int8(raw[sp + k + 2]))
                d3 = d * np.float32(np.int8(raw[sp + k + 4]))
                d4 = d * np.float32(np.int8(raw[sp + k + 6]))
                a0 = ql + 16 * k
                h0 = qh + 16 * k
                y0 = y + 16 * k
                for l in range(n16):
                    lo = raw[a0 + l]
                    hi = raw[a0 + 32 + l]
                    h = raw[h0 + l]
                    out[y0 + l] = d1 * np.float32(np.int32((lo & 15) | ((h & 3) << 4)) - 32)
                    out[y0 + 32 + l] = d2 * np.float32(np.int32((hi & 15) | (((h >> 2) & 3) << 4)) - 32)
                    out[y0 + 64 + l] = d3 * np.float32(np.int32((lo >> 4) | (((h >> 4) & 3) << 4)) - 32)
                    out[y0 + 96 + l] = d4 * np.float32(np.int32((hi >> 4) | ((h >> 6) << 4)) - 32)


# ---------------------------------------------------------------------------------------------
# NumPy references: uint8 (n_blocks, type_size) -> float32 (n_blocks, 256)
# ---------------------------------------------------------------------------------------------

def _ref_f16(blocks: np.ndarray, at: int) -> np.ndarray:
    """The f16 at byte `at` of every block, as float32 (n_blocks, 1)."""
    bits = blocks[:, at].astype(np.uint16) | (blocks[:, at + 1].astype(np.uint16) << np.uint16(8))
    return F16_TO_F32[bits][:, None]


def _crumbs(packed: np.ndarray, group: int) -> np.ndarray:
    """2-bit fields of (n, g*group) bytes -> (n, g, 4, group): field k of each byte is bits 2k..2k+1."""
    n = packed.shape[0]
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8)[:, None]
    return (packed.reshape(n, -1, 1, group) >> shifts) & np.uint8(3)


def _bits(packed: np.ndarray, planes: int) -> np.ndarray:
    """Bit planes of (n, 32) bytes -> (n, planes, 32): plane k is bit k of each byte."""
    shifts = np.arange(planes, dtype=np.uint8)[:, None]
    return (packed[:, None, :] >> shifts) & np.uint8(1)


def _nibbles(packed: np.ndarray, group: int) -> np.ndarray:
    """(n, g*group) bytes -> (n, g, 2, group): low nibbles, then high nibbles, of each group."""
    n = packed.shape[0]
    g = packed.reshape(n, -1, 1, group)
    return np.concatenate([g & np.uint8(15), g >> np.uint8(4)], axis=2)


def _k4_scales_mins(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K 12-byte scale field -> (scales, mins), each float32 (n, 8)."""
    a, b, c = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    sc = np.concatenate([a & 63, (c & 15) | ((a >> 6) << 4)], axis=1)
    mn = np.concatenate([b & 63, (c >> 4) | ((b >> 6) << 4)], axis=1)
    return sc.astype(np.float32), mn.astype(np.float32)


def codes_q2_k(blocks: np.ndarray):
    n = blocks.shape[0]
    sc = blocks[:, 0:16]
    q = _crumbs(blocks[:, 16:80], 32).reshape(n, 16, 16)
    dl = _ref_f16(blocks, 80) * (sc & 15).astype(np.float32)
    ml = _ref_f16(blocks, 82) * (sc >> 4).astype(np.float32)
    return q.reshape(n, QK_K).astype(np.int8), dl, -ml


def _q3_scales(blocks: np.ndarray) -> np.ndarray:
    """Q3_K's 16 six-bit scales of every block, int16 (n, 16) in -32..31."""
    n = blocks.shape[0]
    packed = blocks[:, 96:108]
    lo = np.concatenate([packed[:, 0:8] & 15, packed[:, 0:8] >> 4], axis=1)      # (n, 16)
    hi = _crumbs(packed[:, 8:12], 4).reshape(n, 16)                              # (n, 16)
    return (lo | (hi << 4)).astype(np.int16) - 32


def codes_q3_k(blocks: np.ndarray):
    n = blocks.shape[0]
    sc = _q3_scales(blocks)
    low2 = _crumbs(blocks[:, 32:96], 32).astype(np.int16)                         # (n, 2, 4, 32)
    hbit = _bits(blocks[:, 0:32], 8).reshape(n, 2, 4, 32).astype(np.int16)
    q = (low2 - 4 * (1 - hbit)).reshape(n, QK_K)
    dl = _ref_f16(blocks, 108) * sc.astype(np.float32)
    return q.astype(np.int8), dl, np.zeros_like(dl)


def codes_q4_k(blocks: np.ndarray):
    n = blocks.shape[0]
    sc, mn = _k4_scales_mins(blocks[:, 4:16])
    q = _nibbles(blocks[:, 16:144], 32).reshape(n, QK_K)
    return q.astype(np.int8), _ref_f16(blocks, 0) * sc, -(_ref_f16(blocks, 2) * mn)


def codes_q5_k(blocks: np.ndarray):
    n = blocks.shape[0]
    sc, mn = _k4_scales_mins(blocks[:, 4:16])
    low = _nibbles(blocks[:, 48:176], 32).reshape(n, 8, 32)
    high = _bits(blocks[:, 16:48], 8)                                            # (n, 8, 32)
    q = (low | (high << 4)).reshape(n, QK_K)
    return q.astype(np.int8), _ref_f16(blocks, 0) * sc, -(_ref_f16(blocks, 2) * mn)


def codes_q6_k(blocks: np.ndarray):
    n = blocks.shape[0]
    low = _nibbles(blocks[:, 0:128], 64).reshape(n, 2, 128)     # per half: ql[0:64] lo, then hi nibbles
    high = _crumbs(blocks[:, 128:192], 32).reshape(n, 2, 128)   # per half: 2-bit field k -> quarter k
    q = ((low | (high << 4)).astype(np.int16) - 32).reshape(n, QK_K)
    dl = _ref_f16(blocks, 208) * blocks[:, 192:208].view(np.int8).astype(np.float32)
    return q.astype(np.int8), dl, np.zeros_like(dl)


def factors_q2_k(blocks: np.ndarray):
    sc = blocks[:, 0:16]
    return (_ref_f16(blocks, 80), (sc & 15).astype(np.int8), -_ref_f16(blocks, 82), (sc >> 4).astype(np.int8))


def factors_q3_k(blocks: np.ndarray):
    sc = _q3_scales(blocks).astype(np.int8)
    d = _ref_f16(blocks, 108)
    return d, sc, np.zeros_like(d), np.zeros_like(sc)


def _factors_k4(blocks: np.ndarray):
    sc, mn = _k4_scales_mins(blocks[:, 4:16])
    return _ref_f16(blocks, 0), sc.astype(np.int8), -_ref_f16(blocks, 2), mn.astype(np.int8)


def factors_q6_k(blocks: np.ndarray):
    sc = blocks[:, 192:208].view(np.int8).copy()
    d = _ref_f16(blocks, 208)
    return d, sc, np.zeros_like(d), np.zeros_like(sc)


def _reference_from(codes):
    """weights = scale * q + offset per group, computed as ggml does ((d*sc)*q - dmin*m)."""
    def reference(blocks: np.ndarray) -> np.ndarray:
        q, scale, offset = codes(blocks)
        n, groups = scale.shape
        q = q.reshape(n, groups, -1).astype(np.float32)
        return (scale[:, :, None] * q + offset[:, :, None]).reshape(n, QK_K)
    return reference


reference_q2_k, reference_q3_k, reference_q4_k, reference_q5_k, reference_q6_k = (
    _reference_from(c) for c in (codes_q2_k, codes_q3_k, codes_q4_k, codes_q5_k, codes_q6_k))


Q2_K = register(QuantFormat("Q2_K", 10, QK_K, Q2_K_SIZE, dequantize_row_q2_k, reference_q2_k, codes_q2_k, (0, 3),
                           factors_q2_k))
Q3_K = register(QuantFormat("Q3_K", 11, QK_K, Q3_K_SIZE, dequantize_row_q3_k, reference_q3_k, codes_q3_k, (-4, 3),
                           factors_q3_k))
Q4_K = register(QuantFormat("Q4_K", 12, QK_K, Q4_K_SIZE, dequantize_row_q4_k, reference_q4_k, codes_q4_k, (0, 15),
                           _factors_k4))
Q5_K = register(QuantFormat("Q5_K", 13, QK_K, Q5_K_SIZE, dequantize_row_q5_k, reference_q5_k, codes_q5_k, (0, 31),
                           _factors_k4))
Q6_K = register(QuantFormat("Q6_K", 14, QK_K, Q6_K_SIZE, dequantize_row_q6_k, reference_q6_k, codes_q6_k, (-32, 31),
                           factors_q6_k))


lean_caches(globals())
