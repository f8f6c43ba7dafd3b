"""Whole-token decode in one compiled call: every layer of a llama-family model for one token.

Per-op Python dispatch cost 0.3-1 µs per call and ~15 calls per layer; here the layer loop runs in
Numba and only the parallel kernels' own launches remain. Matrices are the repacked ones
(kernels/repacked.py), passed as typed lists indexed layer * 7 + [q, k, v, o, gate, up, down].
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit
from numba.typed import List

from .ops import attention, rmsnorm, rope, silu_mul
from .quantized import dequantize_row_any
from .repacked import group_sums, matmul_int8, matmul_nibbles

Q, K, V, O, GATE, UP, DOWN = range(7)


@njit(cache=True)
def packed_matmul(nibbles, q, scale, offset, x, out):
    """out (T, n_rows) = x (T, K) @ W.T for a repacked W; q is viewed as int8 for the int8 kind."""
    ng = scale.shape[1]
    xsum = np.empty((x.shape[0], ng if offset.shape[1] > 0 else 0), np.float32)
    if offset.shape[1] > 0:
        group_sums(x, x.shape[1] // ng, xsum)
    if nibbles:
        matmul_nibbles(q, scale, offset, x, xsum, out)
    else:
        matmul_int8(q.view(np.int8), scale, offset, x, xsum, out)


@njit(cache=True)
def _linear(i, qs, ss, os_, kinds, biases, x, out):
    packed_matmul(kinds[i] == 1, qs[i], ss[i], os_[i], x, out)
    b = biases[i]
    for j in range(b.shape[0]):
        out[0, j] += b[j]


@njit(cache=True)
def decode_llama(token, pos, emb_raw, emb_type, qs, ss, os_, kinds, biases, attn_norm, ffn_norm,
                 out_norm, head, kc, vc, cos, sin, neox, eps, n_head, n_kv, head_dim, logits):
    """Logits (1, n_vocab) of `token` at position `pos`; writes its keys/values into kc/vc
    (n_layer, n_kv, n_ctx, head_dim). head: index of the output matrix in the lists."""
    n_layer, d = attn_norm.shape
    n_ff = qs[GATE].shape[0] * qs[GATE].shape[2]
    x = np.empty((1, d), np.float32)                       # (1, D) residual stream
    h = np.empty((1, d), np.float32)                       # (1, D) normed
    qv = np.empty((1, n_head * head_dim), np.float32)
    kv = np.empty((1, n_kv * head_dim), np.float32)
    vv = np.empty((1, n_kv * head_dim), np.float32)
    att = np.empty((1, n_head, head_dim), np.float32)
    tmp = np.empty((1, d), np.float32)
    g = np.empty((1, n_ff), np.float32)
    u = np.empty((1, n_ff), np.float32)
    dequantize_row_any(emb_type, emb_raw[token], x[0])
    scale = np.float32(1.0 / math.sqrt(head_dim))
    for layer in range(n_layer):
        base = layer * 7
        rmsnorm(x, attn_norm[layer], eps, h)
        _linear(base + Q, qs, ss, os_, kinds, biases, h, qv)
        _linear(base + K, qs, ss, os_, kinds, biases, h, kv)
        _linear(base + V, qs, ss, os_, kinds, biases, h, vv)
        q3 = qv.reshape(1, n_head, head_dim)
        k3 = kv.reshape(1, n_kv, head_dim)
        rope(q3, pos, cos, sin, neox)
        rope(k3, pos, cos, sin, neox)
        for hh in range(n_kv):
            for j in range(head_dim):
                kc[layer, hh, pos, j] = k3[0, hh, j]
                vc[layer, hh, pos, j] = vv[0, hh * head_dim + j]
        attention(q3, kc[layer], vc[layer], pos, scale, 0, att)
        _linear(base + O, qs, ss, os_, kinds, biases, att.reshape(1, n_head * head_dim), tmp)
        for j in range(d):
            x[0, j] += tmp[0, j]
        rmsnorm(x, ffn_norm[layer], eps, h)
        _linear(base + GATE, qs, ss, os_, kinds, biases, h, g)
        _linear(base + UP, qs, ss, os_, kinds, biases, h, u)
        silu_mul(g, u, g)
        _linear(base + DOWN, qs, ss, os_, kinds, biases, g, tmp)
        for j in range(d):
            x[0, j] += tmp[0, j]
    rmsnorm(x, out_norm, eps, h)
    _linear(head, qs, ss, os_, kinds, biases, h, logits)


def pack_lists(linears):
    """Typed lists (q as uint8, scale, offset, bias) and kinds for a sequence of packed Linear layers,
    or None when any of them is not repacked (then the per-op path runs)."""
    if any(lin.packed is None for lin in linears):
        return None
    qs, ss, os_, bs = List(), List(), List(), List()
    kinds = np.zeros(len(linears), np.int64)
    for i, lin in enumerate(linears):
        pm = lin.packed
        qs.append(pm.q.view(np.uint8))
        ss.append(pm.scale)
        os_.append(pm.offset)
        bs.append(lin.bias if lin.bias is not None else np.zeros(0, np.float32))
        kinds[i] = 1 if pm.nibbles else 0
    return qs, ss, os_, kinds, bs
