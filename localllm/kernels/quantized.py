"""Matrix kernels straight on quantized rows, dispatched on the ggml type id.

Numba cannot cache a kernel that takes a function as an argument (it recompiles every process), so
the per-format row dequantizers are reached through one compiled switch, `dequantize_row_any`. A new
format adds one branch here and registers its traits in its own module.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ..quants import FORMATS, _load_all
from ..quants.floats import dequantize_row_bf16, dequantize_row_f16, dequantize_row_f32
from ..quants.legacy import (dequantize_row_q4_0, dequantize_row_q4_1, dequantize_row_q5_0,
                             dequantize_row_q5_1, dequantize_row_q8_0)
from ..quants.kquants import (dequantize_row_q2_k, dequantize_row_q3_k, dequantize_row_q4_k,
                              dequantize_row_q5_k, dequantize_row_q6_k)
from . import entry
from .entry import entry_point, lean_caches

ROWS_PER_TASK = 16  # rows one thread handles per step: enough work to amortise the row buffer


@njit(cache=True)
def dequantize_row_any(type_id, raw, out):
    """raw uint8 (row_bytes,) of ggml type `type_id` -> out float32 (n_cols,)."""
    if type_id == 0:
        dequantize_row_f32(raw, out)
    elif type_id == 1:
        dequantize_row_f16(raw, out)
    elif type_id == 30:
        dequantize_row_bf16(raw, out)
    elif type_id == 2:
        dequantize_row_q4_0(raw, out)
    elif type_id == 3:
        dequantize_row_q4_1(raw, out)
    elif type_id == 6:
        dequantize_row_q5_0(raw, out)
    elif type_id == 7:
        dequantize_row_q5_1(raw, out)
    elif type_id == 8:
        dequantize_row_q8_0(raw, out)
    elif type_id == 10:
        dequantize_row_q2_k(raw, out)
    elif type_id == 11:
        dequantize_row_q3_k(raw, out)
    elif type_id == 12:
        dequantize_row_q4_k(raw, out)
    elif type_id == 13:
        dequantize_row_q5_k(raw, out)
    elif type_id == 14:
        dequantize_row_q6_k(raw, out)
    else:
        raise ValueError("ggml type has no kernel")


def dequantize_row(type_id, raw, out):
    """dequantize_row_any, compiled for that type's dequantizer alone where type_id is a compile-time
    constant (Numba prunes no branch on a constant's value: the switch would compile all 13)."""


@overload(dequantize_row, prefer_literal=True)
def _ol_dequantize_row(type_id, raw, out):
    if not isinstance(type_id, types.IntegerLiteral):
        def any_(type_id, raw, out):
            dequantize_row_any(type_id, raw, out)
        return any_
    _load_all()
    fmt = FORMATS.get(type_id.literal_value)        # the registry's kernel for that type
    if fmt is None:
        def unknown(type_id, raw, out):
            raise ValueError("ggml type has no kernel")
        return unknown
    kernel = fmt.dequantize_row

    def one(type_id, raw, out):
        kernel(raw, out)
    return one


_BY_TYPE: dict = {}


def _of_type(make, type_id: int):
    """make(type_id), memoized: the entry point compiled for one ggml type."""
    fn = _BY_TYPE.get((make, type_id))
    if fn is None:
        fn = _BY_TYPE[make, type_id] = make(type_id)
    return fn


def dequantize_rows(type_id: int, w: np.ndarray, out: np.ndarray) -> None:
    """w uint8 (n_rows, row_bytes) of ggml type type_id -> out float32 (n_rows, n_cols)."""
    if entry.SPECIALIZE:
        _of_type(_rows_of, type_id)(w, out)
    else:
        _dequantize_rows_any(type_id, w, out)


def gather_rows(type_id: int, w: np.ndarray, ids: np.ndarray, out: np.ndarray) -> None:
    """Embedding lookup: out[i] = dequantized row ids[i] of w (ggml type type_id); out float32
    (len(ids), n_cols)."""
    if entry.SPECIALIZE:
        _of_type(_gather_of, type_id)(w, ids, out)
    else:
        _gather_rows_any(type_id, w, ids, out)


@entry_point
@njit(cache=True, parallel=True)
def _dequantize_rows_any(type_id, w, out):
    for r in prange(w.shape[0]):
        dequantize_row_any(type_id, w[r], out[r])


@entry_point
@njit(cache=True)
def _gather_rows_any(type_id, w, ids, out):
    for i in range(ids.shape[0]):
        dequantize_row_any(type_id, w[ids[i]], out[i])


# Compiled for one ggml type each, the closure's constant (its own entry in Numba's cache), so that
# dequantize_row compiles that format's dequantizer alone, where a run-time type_id compiles all 13
# (~13 s of a first run).

def _rows_of(type_id: int):
    @entry_point
    @njit(cache=True, parallel=True)
    def dequantize_rows_of(w, out):
        for r in prange(w.shape[0]):
            dequantize_row(type_id, w[r], out[r])
    return dequantize_rows_of


def _gather_of(type_id: int):
    @entry_point
    @njit(cache=True)
    def gather_rows_of(w, ids, out):
        for i in range(ids.shape[0]):
            dequantize_row(type_id, w[ids[i]], out[i])
    return gather_rows_of


@entry_point
@njit(cache=True, parallel=True, fastmath=True)
def matvec(type_id, w, x, out):
    """out (n_rows,) = W (n_rows, n_cols, quantized rows) @ x (n_cols,)."""
    n_rows, n_cols = w.shape[0], x.shape[0]
    n_tasks = (n_rows + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    for task in prange(n_tasks):
        buf = np.empty(n_cols, np.float32)  # (n_cols,) one dequantized row
        for r in range(task * ROWS_PER_TASK, min(n_rows, (task + 1) * ROWS_PER_TASK)):
            dequantize_row_any(type_id, w[r], buf)
            acc = np.float32(0.0)
            for k in range(n_cols):
                acc += buf[k] * x[k]
            out[r] = acc


@entry_point
@njit(cache=True, parallel=True, fastmath=True)
def matmul_small(type_id, w, x, out):
    """out (T, n_rows) = x (T, n_cols) @ W.T for a few rows of activations (T small): each weight row
    is dequantized once and used for all T."""
    n_rows, n_cols, n_tok = w.shape[0], x.shape[1], x.shape[0]
    n_tasks = (n_rows + ROWS_PER_TASK - 1) // ROWS_PER_TASK
    for task in prange(n_tasks):
        buf = np.empty(n_cols, np.float32)
        for r in range(task * ROWS_PER_TASK, min(n_rows, (task + 1) * ROWS_PER_TASK)):
            dequantize_row_any(type_id, w[r], buf)
            for t in range(n_tok):
                acc = np.float32(0.0)
                for k in range(n_cols):
                    acc += buf[k] * x[t, k]
                out[t, r] = acc


def matmul_reference(type_id: int, w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Plain NumPy: dequantize with the format's reference, then x @ W.T in float64."""
    from ..quants import dequantize_reference, get_format

    wf = dequantize_reference(get_format(type_id), w).astype(np.float64)
    return (np.atleast_2d(x).astype(np.float64) @ wf.T).astype(np.float32)


lean_caches(globals())
