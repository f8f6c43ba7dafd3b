"""Matrix kernels on weights repacked once at load into a SIMD-friendly layout.

The GGUF block layouts keep the 32 weights of a block together, so a kernel that walks them has a
fixed 32-long inner loop, which Numba leaves scalar (notes/numba-kernels.md). Here `R` consecutive
rows are interleaved instead: for each column k the R codes of a row group lie side by side, and the
inner loop runs across rows, where it vectorises. Codes come from each format's `codes` trait:
weight = scale * q + offset per group of `gs` columns.

- 4-bit kinds (16 code values: Q4_0, Q4_1, Q4_K) keep two columns per byte: qn uint8 (G, K/2, R),
  column 2i in the low nibble, 2i+1 in the high one; the code minimum is folded into the offset.
- other kinds keep one int8 code per weight: q8 int8 (G, K, R).
scale, offset: float32 (G, n_groups, R). Activations stay float32; per-group sums of x apply offsets.
For the VNNI kernels the K-quants' scales go back to the file's two levels (two_level): an int8 per group
and a float32 per 256 columns instead of a float32 per group, the kernel forming d * sc (products within
~1e-8 of the float32 path's, LLVM reorders the multiplies; Qwen2.5-0.5B's decode reads 398 MB, not 415 MB).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from . import avx2, entry, vnni
from .simd import LANES, fma_int8x32, fma_nibbles32
from .entry import entry_point, lean_caches

R = LANES       # rows interleaved per group: one 32-lane vector step of the simd intrinsics
T_TILE = 32     # activation rows per pass over a row group (weights unpacked once per tile)
CHUNK_GROUPS = 16  # row groups repacked at a time


@dataclass
class PackedMatrix:
    n_rows: int
    n_cols: int
    gs: int                  # columns per scale group
    nibbles: bool            # 4-bit codes, two per byte
    q: np.ndarray | None     # uint8 (G, K/2, R) if nibbles else int8 (G, K, R); None once `dot` holds the codes
    scale: np.ndarray        # float32 (G, n_groups, R)
    offset: np.ndarray       # float32 (G, n_groups, R), or (G, 0, R) when every offset is 0
    dot: object = None       # avx2.Int8DotLayout of the codes, built on first use; then the only copy
    dot_built: bool = False
    factors: tuple | None = None   # the scales' two levels where the format has them (see repack), until int8dot

    @property
    def nbytes(self) -> int:
        codes = self.dot.nbytes if self.dot else self.q.nbytes
        return codes + self.scale.nbytes + self.offset.nbytes

    @property
    def kind(self) -> int:
        """The matrix kind the kernels dispatch on: 0 int8 codes, 1 nibbles, >= avx2.KIND_BASE the
        integer-dot layout of that kind (only once built, see int8dot)."""
        return self.dot.kind if self.dot is not None else int(self.nibbles)

    @property
    def codes(self) -> np.ndarray:
        """The codes the kernels read, as uint8 (the int8 kind is viewed back inside packed_matmul)."""
        return self.dot.q if self.dot is not None else self.q.view(np.uint8)

    def int8dot(self):
        """The integer-dot layout of this matrix (AVX2, or AVX-512 VNNI where vnni.ENABLED), or None where
        that kernel is off or does not apply.
        Built lazily, so matrices that `layers.fuse` stacks never build their own. Once built it is the
        only copy of the codes: q is dropped, and every kernel here reads the layout instead.
        Scales and offsets that float16 holds exactly (the legacy formats' d and m are float16 in the
        file) are kept as float16 bits (uint16), and the K-quants' in their two levels (`two_level`): a
        matrix streams the bytes its file holds, near enough (LOCALLLM_SCALE16=0, LOCALLLM_TWO_LEVEL=0:
        float32 instead)."""
        if not self.dot_built:
            self.dot = avx2.build_layout(self.q, self.gs, self.nibbles, vnni.ENABLED) if avx2.ENABLED else None
            self.dot_built = True
            if self.dot is not None:
                self.q = None
                if avx2.SCALE16:
                    halves = [_exact_half(a) for a in (self.scale, self.offset)]
                    if all(h is not None for h in halves):
                        self.scale, self.offset = halves
                        self.dot.scale16 = True
                if avx2.TWO_LEVEL and not self.dot.scale16 and self.factors is not None:
                    self.scale, self.offset = two_level(*self.factors, self.offset.shape[1] > 0)
                    self.dot.two_level = True
            self.factors = None
        return self.dot

    def scales_f32(self, g0: int = 0, g1: int | None = None):
        """(scale, offset) float32 of row groups g0..g1, whichever width they are stored in."""
        sl = slice(g0, g1)
        if self.scale.ndim == 4:
            return tuple(from_two_level(a[sl], self.scale.shape[2] - 4) for a in (self.scale, self.offset))
        if self.scale.dtype == np.uint16:
            return (self.scale[sl].view(np.float16).astype(np.float32),
                    self.offset[sl].view(np.float16).astype(np.float32))
        return self.scale[sl], self.offset[sl]


def _exact_half(a: np.ndarray):
    """a float32 as float16 bits (uint16) when float16 holds every value exactly, else None."""
    h = a.astype(np.float16)
    return h.view(np.uint16) if np.array_equal(h.astype(np.float32), a) else None


def two_level(sd, ssc, od, om, with_offsets: bool):
    """The factors of PackedMatrix (d float32 (G, n_super, R), sc int8 (G, n_groups, R), the same for the
    offsets) -> (scale, offset) int8 (G, n_super, 4 + groups a super-block, R): in each (G, n_super) plane
    the R float32 d as bytes (the first 4 x R), then the int8 sc of each group (R apiece). offset has
    n_super 0 when there are none."""
    def pack(d, c):
        n_grp, ns, r = d.shape
        gps = c.shape[1] // ns
        a = np.empty((n_grp, ns, 4 + gps, r), np.int8)
        a[:, :, :4] = np.ascontiguousarray(d).view(np.int8).reshape(n_grp, ns, 4, r)
        a[:, :, 4:] = c.reshape(n_grp, ns, gps, r)
        return a
    scale = pack(sd, ssc)
    offset = pack(od, om) if with_offsets else scale[:, :0]
    return scale, offset


def from_two_level(a: np.ndarray, gps: int) -> np.ndarray:
    """two_level's int8 (G, n_super, 4 + gps, R) -> the float32 (G, n_super * gps, R) it stands for."""
    n_grp, ns, _, r = a.shape
    d = np.ascontiguousarray(a[:, :, :4]).view(np.float32).reshape(n_grp, ns, 1, r)
    return (d * a[:, :, 4:].astype(np.float32)).reshape(n_grp, ns * gps, r)


def repack(fmt, raw: np.ndarray) -> PackedMatrix:
    """Quantized rows uint8 (n_rows, row_bytes) of format `fmt` (which has `codes`) -> PackedMatrix.

    Works through CHUNK_GROUPS row groups at a time so the temporaries stay small. Formats with `factors`
    (the K-quants) keep those too, for int8dot, unless the code shift was folded into the offsets.
    """
    n_rows = raw.shape[0]
    n_cols = raw.shape[1] // fmt.type_size * fmt.block_size
    lo, hi = fmt.code_range
    nibbles = hi - lo <= 15 and n_cols % 2 == 0
    n_grp = -(-n_rows // R)
    q = np.zeros((n_grp, n_cols // 2 if nibbles else n_cols, R), np.uint8 if nibbles else np.int8)
    scale = offset = None
    keep = fmt.factors is not None and not (nibbles and lo)
    factors = None
    for g0 in range(0, n_grp, CHUNK_GROUPS):
        r0, r1 = g0 * R, min(n_rows, (g0 + CHUNK_GROUPS) * R)
        cq, cs, co = fmt.codes(raw[r0:r1].reshape(-1, fmt.type_size))
        if scale is None:
            ng = n_cols // fmt.block_size * cs.shape[1]
            scale = np.zeros((n_grp, ng, R), np.float32)
            offset = np.zeros((n_grp, ng, R), np.float32)
        cq = cq.reshape(r1 - r0, n_cols)
        cs = cs.reshape(r1 - r0, -1)
        co = co.reshape(r1 - r0, -1)
        if nibbles:
            u = (cq.astype(np.int16) - lo).astype(np.uint8)
            if lo:
                co = co + cs * np.float32(lo)
            cq = u[:, 0::2] | (u[:, 1::2] << np.uint8(4))
        gs = slice(g0, g0 + -(-(r1 - r0) // R))
        _interleave_into(q[gs], cq)
        _interleave_into(scale[gs], cs)
        _interleave_into(offset[gs], co)
        if keep:
            fs = [f.reshape(r1 - r0, -1) for f in fmt.factors(raw[r0:r1].reshape(-1, fmt.type_size))]
            if factors is None:
                factors = [np.zeros((n_grp, f.shape[1], R), f.dtype) for f in fs]
            for dst, f in zip(factors, fs):
                _interleave_into(dst[gs], f)
    if not offset.any():
        offset = offset[:, :0]
    return PackedMatrix(n_rows, n_cols, n_cols // scale.shape[1], nibbles, q, scale, offset,
                        factors=None if factors is None else tuple(factors))


def _interleave_into(dst: np.ndarray, a: np.ndarray) -> None:
    """a (rows, X) -> dst (G, X, R), row g*R + r going to dst[g, :, r]; missing rows stay zero."""
    n = a.shape[0]
    full = n // R
    if full:
        dst[:full] = a[:full * R].reshape(full, R, -1).transpose(0, 2, 1)
    if n % R:
        dst[full, :, :n % R] = a[full * R:].T


@njit(cache=True, parallel=True)
def group_sums(x, gs, out):
    """out (T, K/gs) = sums of x (T, K) over each group of gs columns."""
    t_n, ng = out.shape
    for t in prange(t_n):
        for g in range(ng):
            s = np.float32(0.0)
            for k in range(g * gs, (g + 1) * gs):
                s += x[t, k]
            out[t, g] = s


@njit(cache=True, parallel=True, fastmath=True)
def matmul_nibbles(q, scale, offset, x, xsum, out):
    """out (T, n_rows) = x (T, K) @ W.T for 4-bit packed W; xsum (T, n_groups) group sums of x."""
    n_grp, half, r_n = q.shape
    ng = scale.shape[1]
    hgs = half // ng                         # bytes per scale group
    t_n, n_rows = x.shape[0], out.shape[1]
    has_off = offset.shape[1] > 0
    for g in prange(n_grp):
        w0 = np.empty(r_n, np.float32)        # (R,) unpacked column 2i
        w1 = np.empty(r_n, np.float32)        # (R,) unpacked column 2i+1
        part = np.empty((T_TILE, r_n), np.float32)
        acc = np.empty((T_TILE, r_n), np.float32)
        r0 = g * r_n
        nr = min(r_n, n_rows - r0)
        for t0 in range(0, t_n, T_TILE):
            tt = min(T_TILE, t_n - t0)
            acc[:tt] = 0.0
            for grp in range(ng):
                part[:tt] = 0.0
                for i in range(grp * hgs, (grp + 1) * hgs):
                    if tt == 1:   # decode: straight from the bytes, no unpacked copy
                        fma_nibbles32(q, (g * half + i) * r_n, part, x[t0, 2 * i], x[t0, 2 * i + 1])
                        continue
                    for r in range(r_n):
                        b = np.int32(q[g, i, r])
                        w0[r] = np.float32(np.int32(b & 15))
                        w1[r] = np.float32(np.int32(b >> 4))
                    for t in range(tt):
                        x0 = x[t0 + t, 2 * i]
                        x1 = x[t0 + t, 2 * i + 1]
                        for r in range(r_n):
                            part[t, r] += w0[r] * x0 + w1[r] * x1
                for t in range(tt):
                    for r in range(r_n):
                        acc[t, r] += scale[g, grp, r] * part[t, r]
                    if has_off:
                        xs = xsum[t0 + t, grp]
                        for r in range(r_n):
                            acc[t, r] += offset[g, grp, r] * xs
            for t in range(tt):
                for r in range(nr):
                    out[t0 + t, r0 + r] = acc[t, r]


@njit(cache=True, parallel=True, fastmath=True)
def matmul_int8(q, scale, offset, x, xsum, out):
    """out (T, n_rows) = x (T, K) @ W.T for int8 codes W; xsum (T, n_groups) group sums of x."""
    n_grp, k_n, r_n = q.shape
    ng = scale.shape[1]
    gs = k_n // ng
    t_n, n_rows = x.shape[0], out.shape[1]
    has_off = offset.shape[1] > 0
    for g in prange(n_grp):
        w = np.empty(r_n, np.float32)
        part = np.empty((T_TILE, r_n), np.float32)
        acc = np.empty((T_TILE, r_n), np.float32)
        r0 = g * r_n
        nr = min(r_n, n_rows - r0)
        for t0 in range(0, t_n, T_TILE):
            tt = min(T_TILE, t_n - t0)
            acc[:tt] = 0.0
            for grp in range(ng):
                part[:tt] = 0.0
                for k in range(grp * gs, (grp + 1) * gs):
                    if tt == 1:
                        fma_int8x32(q, (g * k_n + k) * r_n, part, x[t0, k])
                        continue
                    for r in range(r_n):
                        w[r] = np.float32(np.int32(q[g, k, r]))
                    for t in range(tt):
                        xv = x[t0 + t, k]
                        for r in range(r_n):
                            part[t, r] += w[r] * xv
                for t in range(tt):
                    for r in range(r_n):
                        acc[t, r] += scale[g, grp, r] * part[t, r]
                    if has_off:
                        xs = xsum[t0 + t, grp]
                        for r in range(r_n):
                            acc[t, r] += offset[g, grp, r] * xs
            for t in range(tt):
                for r in range(nr):
                    out[t0 + t, r0 + r] = acc[t, r]


@entry_point
@njit(cache=True, parallel=True)
def dequantize_packed(q, scale, offset, nibbles, out):
    """out (n_rows, K) float32 = the weights of a packed matrix (for the BLAS prefill path)."""
    n_grp, r_n = q.shape[0], q.shape[2]
    n_rows, k_n = out.shape
    ng = scale.shape[1]
    gs = k_n // ng
    has_off = offset.shape[1] > 0
    for g in prange(n_grp):
        for r in range(min(r_n, n_rows - g * r_n)):
            row = g * r_n + r
            for k in range(k_n):
                if nibbles:
                    b = q[g, k >> 1, r]
                    c = np.float32((b >> 4) if k & 1 else (b & 15))
                else:
                    c = np.float32(q[g, k, r])
                grp = k // gs
                w = scale[g, grp, r] * c
                if has_off:
                    w += offset[g, grp, r]
                out[row, k] = w


@njit(cache=True)
def packed_matmul(kind, q, scale, offset, x, out):
    """out (T, n_rows) = x (T, K) @ W.T for a repacked W of `kind` (PackedMatrix.kind); q uint8 codes.
    Integer-dot kinds quantize x to int8: the VNNI kernel takes every row at once, the AVX2 one runs per
    row; the float kinds one kernel."""
    if avx2.kind_is_vnni(kind):
        vnni.matmul_vnni(kind, q, scale, offset, x, out)
        return
    if kind >= avx2.KIND_BASE:
        for t in range(x.shape[0]):
            avx2.matvec_int8dot(kind, q, scale, offset, x[t], out[t])
        return
    _float_matmul(kind, q, scale, offset, x, out)


@njit(cache=True)
def _float_matmul(kind, q, scale, offset, x, out):
    """packed_matmul for the float kinds (0 int8 codes, 1 nibbles)."""
    ng = scale.shape[1]
    xsum = np.empty((x.shape[0], ng if offset.shape[1] > 0 else 0), np.float32)
    if offset.shape[1] > 0:
        group_sums(x, x.shape[1] // ng, xsum)
    if kind == 1:
        matmul_nibbles(q, scale, offset, x, xsum, out)
    else:
        matmul_int8(q.view(np.int8), scale, offset, x, xsum, out)


@entry_point
@njit(cache=True)
def _packed_matmul_py(kind, q, scale, offset, x, out):
    """`packed_matmul` as Python calls it for the float kinds (the integer-dot ones have entry points of
    their own, so that this one compiles none of their kernels)."""
    _float_matmul(kind, q, scale, offset, x, out)


@entry_point
@njit(cache=True)
def _matmul_vnni_py(kind, q, scale, offset, x, out):
    """`vnni.matmul_vnni` as Python calls it."""
    vnni.matmul_vnni(kind, q, scale, offset, x, out)


@entry_point
@njit(cache=True)
def _matmul_int8dot_py(kind, q, scale, offset, x, out):
    """The AVX2 integer-dot kernels of every variant, chosen at run time (entry.SPECIALIZE off)."""
    if x.shape[0] == 1:
        avx2.matvec_int8dot(kind, q, scale, offset, x[0], out[0])
    else:
        avx2.matmul_int8dot(kind, q, scale, offset, x, out)


_INT8DOT_ENTRIES: dict = {}


def int8dot_entry(v: int):
    """The AVX2 integer-dot product as Python calls it, compiled for matrices of variant v alone
    (avx2.variant_of; the closure's constant, so each variant has its own cache entry): the decode
    kernel for one row, the tiled one for more. Memoized."""
    fn = _INT8DOT_ENTRIES.get(v)
    if fn is None:
        @entry_point
        @njit(cache=True)
        def matmul_int8dot_entry(kind, q, scale, offset, x, out):
            if x.shape[0] == 1:
                avx2.matvec_int8dot_v(v, kind, q, scale, offset, x[0], out[0])
            else:
                avx2.matmul_int8dot_v(v, kind, q, scale, offset, x, out)
        fn = _INT8DOT_ENTRIES[v] = matmul_int8dot_entry
    return fn


def matmul_packed(pm: PackedMatrix, x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out (T, n_rows) = x (T, n_cols) @ W.T."""
    if pm.dot is not None:
        if pm.dot.vnni:
            _matmul_vnni_py(pm.kind, pm.codes, pm.scale, pm.offset, x, out)
        elif entry.SPECIALIZE:
            kind = pm.kind
            int8dot_entry(avx2.matrix_variant(kind, pm.scale, pm.offset, pm.n_cols))(
                kind, pm.codes, pm.scale, pm.offset, x, out)
        else:
            _matmul_int8dot_py(pm.kind, pm.codes, pm.scale, pm.offset, x, out)
        return out
    _packed_matmul_py(pm.kind, pm.codes, pm.scale, pm.offset, x, out)
    return out


lean_caches(globals())
