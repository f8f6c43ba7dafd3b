"""Weights as the model code sees them: quantized matrices, repacked once at load (kernels/repacked.py,
kernels/avx2.py) or, with LOCALLLM_REPACK=0, used as views of the mapped file."""
from __future__ import annotations

import os

import numpy as np

from .ggufio import TensorInfo
from .threads import before_blas
from .kernels.quantized import dequantize_rows, gather_rows, matmul_small, matvec
from .kernels import avx2
from .kernels.avx2 import dequantize_int8dot
from .kernels.repacked import R as PACK_ROWS, dequantize_packed, matmul_packed, repack
from .quants import get_format

REPACK = os.environ.get("LOCALLLM_REPACK", "1") != "0"   # 0: run on the GGUF blocks as stored

SMALL_BATCH = 8            # up to this many rows of activations: kernels straight on quantized rows
DEQUANT_CHUNK = 1 << 24    # floats dequantized at a time for the BLAS path (64 MB)

_scratch = np.empty(0, np.float32)


def _scratch_f32(n: int) -> np.ndarray:
    """A reusable float32 buffer of at least n elements (grown once, kept)."""
    global _scratch
    if _scratch.size < n:
        _scratch = np.empty(n, np.float32)
    return _scratch[:n]


def raw_rows(t: TensorInfo) -> np.ndarray:
    """The tensor as uint8 (n_rows, row_bytes) without copying."""
    n_rows = int(np.prod(t.shape[:-1])) if len(t.shape) > 1 else 1
    return t.data.reshape(-1).view(np.uint8).reshape(n_rows, -1)


class Linear:
    """y = x @ W.T (+ b). W (n_out, n_in) in any registered format."""

    def __init__(self, weight: TensorInfo, bias: TensorInfo | None = None):
        fmt = get_format(weight.type_id, weight.name)
        self.name = weight.name
        self.type_id = fmt.type_id
        self.n_out, self.n_in = weight.shape[0], weight.shape[-1]
        if self.n_in % fmt.block_size:
            from .errors import GGUFError
            raise GGUFError(f"tensor {weight.name!r}: {self.n_in} columns is not a multiple of the "
                            f"{fmt.name} block size {fmt.block_size}")
        self.bias = None if bias is None else np.asarray(bias.data, np.float32).reshape(-1)  # (n_out,)
        will_pack = REPACK and fmt.codes is not None
        self._fmt, self._source = fmt, raw_rows(weight) if will_pack else None
        self._packed = None                                     # repacked on first use (or from the cache)
        self.raw = None if will_pack else raw_rows(weight)      # uint8 (n_out, row_bytes)

    @property
    def packed(self):
        """The repacked matrix (kernels/repacked.py), made on first use; None when it is run as stored."""
        if self._packed is None and self._source is not None:
            self._packed, self._source = repack(self._fmt, self._source), None
        return self._packed

    @packed.setter
    def packed(self, pm) -> None:
        self._packed, self._source = pm, None

    def _dequantize(self, r0: int, r1: int, out: np.ndarray) -> None:
        """Rows r0..r1 of W as float32 into out (r1 - r0, n_in)."""
        if self.packed is None:
            dequantize_rows(self.type_id, self.raw[r0:r1], out)
            return
        pm, g0 = self.packed, r0 // PACK_ROWS
        g1 = -(-r1 // PACK_ROWS)
        if pm.q is None:                 # the int8-dot layout holds the only copy of the codes
            scale, offset = pm.scales_f32(g0, g1)
            dequantize_int8dot(pm.dot.kind, pm.dot.q[g0:g1], scale, offset, out)
            return
        dequantize_packed(pm.q[g0:g1], pm.scale[g0:g1], pm.offset[g0:g1], pm.nibbles, out)

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """x float32 (T, n_in) -> (T, n_out)."""
        t = x.shape[0]
        if out is None:
            out = np.empty((t, self.n_out), np.float32)
        pm = self.packed
        if pm is not None and (t <= SMALL_BATCH or pm.dot is not None):
            matmul_packed(pm, x, out)     # the integer-dot kernels beat dequantize + sgemm at any batch size
        elif t == 1:
            matvec(self.type_id, self.raw, x[0], out[0])
        elif t <= SMALL_BATCH:
            matmul_small(self.type_id, self.raw, x, out)
        else:
            before_blas()
            rows = max(PACK_ROWS, min(self.n_out, DEQUANT_CHUNK // self.n_in) // PACK_ROWS * PACK_ROWS)
            for r0 in range(0, self.n_out, rows):
                r1 = min(self.n_out, r0 + rows)
                wf = _scratch_f32((r1 - r0) * self.n_in).reshape(r1 - r0, self.n_in)
                self._dequantize(r0, r1, wf)
                np.matmul(x, wf.T, out=out[:, r0:r1])
        if self.bias is not None:
            out += self.bias
        return out


class Embedding:
    """Token embedding table (n_vocab, D), looked up row by row."""

    def __init__(self, weight: TensorInfo):
        fmt = get_format(weight.type_id, weight.name)
        self.type_id = fmt.type_id
        self.n_vocab, self.dim = weight.shape[0], weight.shape[-1]
        self.raw = raw_rows(weight)                       # uint8 (n_vocab, row_bytes)

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        out = np.empty((len(ids), self.dim), np.float32)  # (T, D)
        gather_rows(self.type_id, self.raw, np.asarray(ids, np.int64), out)
        return out


def vector(t: TensorInfo) -> np.ndarray:
    """A small F32 tensor (norm weights, biases) as float32."""
    if t.type_name == "F32":
        return np.asarray(t.data, np.float32).reshape(-1)
    fmt = get_format(t.type_id, t.name)
    out = np.empty((1, t.n_elements), np.float32)
    dequantize_rows(fmt.type_id, raw_rows(t).reshape(1, -1), out)
    return out[0]


def fuse(linears: list[Linear]) -> Linear | None:
    """One Linear computing the given ones stacked (x @ [W1; W2; ...].T), sharing their memory: the
    parts are rebound to views of the fused arrays. None when their packed forms cannot be stacked."""
    from .kernels.repacked import PackedMatrix

    pms = [lin.packed for lin in linears]
    if any(p is None for p in pms):
        return None
    first = pms[0]
    same = all(p.nibbles == first.nibbles and p.gs == first.gs and p.n_cols == first.n_cols
               and p.offset.shape[1] == first.offset.shape[1] for p in pms)
    if not same or any(p.n_rows % PACK_ROWS for p in pms[:-1]):
        return None
    if avx2.ENABLED and len({avx2.code_mode(p.q, p.nibbles)[0] for p in pms if p.q is not None}) > 1:
        return None     # a stack takes its widest parts' mode: Q5_0 q|k with a Q8_0 v would read 8 bits a weight
    dots = [p.dot for p in pms]
    if any(p.q is None for p in pms):      # codes already in the int8-dot layout: stack those (one kind)
        if any(d is None or d.kind != dots[0].kind for d in dots):
            return None
        q = None
        dot = dots[0].like(np.concatenate([d.q for d in dots]))
    else:
        q, dot = np.concatenate([p.q for p in pms]), None
    scale = np.concatenate([p.scale for p in pms])
    offset = np.concatenate([p.offset for p in pms])
    factors = (tuple(np.concatenate(f) for f in zip(*(p.factors for p in pms)))
               if all(p.factors is not None for p in pms) else None)
    return stacked(linears, PackedMatrix(sum(p.n_rows for p in pms), first.n_cols, first.gs, first.nibbles, q,
                                         scale, offset, dot, dot is not None, factors))


def stacked(linears: list[Linear], packed) -> Linear:
    """The Linear computing `linears` stacked, holding `packed`; the parts are rebound to slices of it."""
    fused = Linear.__new__(Linear)
    fused.name = "+".join(lin.name for lin in linears)
    fused.type_id = linears[0].type_id
    fused.n_in = linears[0].n_in
    fused.n_out = sum(lin.n_out for lin in linears)
    fused.raw = None
    fused._fmt = linears[0]._fmt
    fused.packed = packed
    biases = [lin.bias if lin.bias is not None else np.zeros(lin.n_out, np.float32) for lin in linears]
    fused.bias = np.concatenate(biases) if any(lin.bias is not None for lin in linears) else None
    fused.parts = linears
    rebind_parts(fused)
    return fused


def rebind_parts(fused: Linear) -> None:
    """Point the packed arrays of a fused Linear's parts at their slices of the fused arrays (the codes:
    of its int8-dot layout where it has one, with the fused matrix's kind; the parts then hold no other)."""
    pm, g0 = fused.packed, 0
    for lin in getattr(fused, "parts", ()):
        p = lin.packed
        g1 = g0 + p.scale.shape[0]
        p.scale, p.offset = pm.scale[g0:g1], pm.offset[g0:g1]
        if pm.dot is not None:
            p.q, p.dot, p.dot_built = None, pm.dot.like(pm.dot.q[g0:g1]), True
        else:
            p.q = pm.q[g0:g1]
        g0 = g1
