"""Matrix kernels straight on quantized rows, dispatched on the ggml type id.

Numba cannot cache a kernel that takes a function as an argument (it recompiles every process), so
the per-format row dequantizers are reached through one compiled switch, `dequantize_row_any`. A new
format adds one branch here and registers its traits in its own module.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..quants.floats import dequantize_row_bf16, dequantize_row_f16, dequantize_row_f32
from ..quants.legacy import (dequantize_row_q4_0, dequantize_row_q4_1, dequantize_row_q5_0,
                             dequantize_row_q5_1, dequantize_row_q8_0)
from ..quants.kquants import (dequantize_row_q2_k, dequantize_row_q3_k, dequantize_row_q4_k,
                              dequantize_row_q5_k, dequantize_row_q6_k)
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


@entry_point
@njit(cache=True, parallel=True)
def dequantize_rows(type_id, w, out):
    """w uint8 (n_rows, row_bytes) -> out float32 (n_rows, n_cols)."""
    for r in prange(w.shape[0]):
        dequantize_row_any(type_id, w[r], out[r])


@entry_point
@njit(cache=True)
def gather_rows(type_id, w, ids, out):
    """Embedding lookup: out[i] = dequantized row ids[i] of w; out float32 (len(ids), n_cols)."""
    for i in range(ids.shape[0]):
        dequantize_row_any(type_id, w[ids[i]], out[i])


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
