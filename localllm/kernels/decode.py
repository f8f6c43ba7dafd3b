"""Whole-token decode in one compiled call: every layer of a llama-family model for one token.

Per-op Python dispatch cost 0.3-1 µs per call and ~15 calls per layer; here the layer loop runs in
Numba. Waking the thread pool costs 10-50 µs on these VMs, so only matrix products (and attention
over long contexts) run in parallel, and q/k/v and gate/up run as one stacked matrix where their
formats allow. Matrices are the repacked ones (kernels/repacked.py), passed as typed lists indexed
layer * 7 + slot; a slot whose matrix is part of a stacked one holds an empty array.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit
from numba.typed import List

from .ops import attention, attention_serial, rmsnorm, rope, silu_mul
from .quantized import dequantize_row_any
from .repacked import group_sums, matmul_int8, matmul_nibbles

Q, K, V, O, GATE, UP, DOWN = range(7)   # slots; Q holds q|k|v and GATE gate|up when stacked
PARALLEL_ATTENTION_FROM = 512           # cache length from which decode attention uses the pool


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
                 out_norm, head, kc, vc, cos, sin, neox, eps, n_head, n_kv, head_dim, n_ff, logits):
    """Logits (1, n_vocab) of `token` at position `pos`; writes its keys/values into kc/vc
    (n_layer, n_kv, n_ctx, head_dim). head: index of the output matrix in the lists."""
    n_layer, d = attn_norm.shape
    nq, nk = n_head * head_dim, n_kv * head_dim
    x = np.empty((1, d), np.float32)                       # (1, D) residual stream
    h = np.empty((1, d), np.float32)                       # (1, D) normed
    qkv = np.empty((1, nq + 2 * nk), np.float32)           # (1, q | k | v)
    q3 = np.empty((1, n_head, head_dim), np.float32)
    k3 = np.empty((1, n_kv, head_dim), np.float32)
    att = np.empty((1, n_head, head_dim), np.float32)
    tmp = np.empty((1, d), np.float32)
    gu = np.empty((1, 2 * n_ff), np.float32)               # (1, gate | up)
    g = np.empty((1, n_ff), np.float32)
    u = np.empty((1, n_ff), np.float32)
    dequantize_row_any(emb_type, emb_raw[token], x[0])
    scale = np.float32(1.0 / math.sqrt(head_dim))
    for layer in range(n_layer):
        base = layer * 7
        rmsnorm(x, attn_norm[layer], eps, h)
        if qs[base + K].size == 0:                         # stacked q|k|v
            _linear(base + Q, qs, ss, os_, kinds, biases, h, qkv)
        else:
            _linear(base + Q, qs, ss, os_, kinds, biases, h, qkv[:, :nq])
            _linear(base + K, qs, ss, os_, kinds, biases, h, qkv[:, nq:nq + nk])
            _linear(base + V, qs, ss, os_, kinds, biases, h, qkv[:, nq + nk:])
        q3.reshape(nq)[:] = qkv[0, :nq]
        k3.reshape(nk)[:] = qkv[0, nq:nq + nk]
        rope(q3, pos, cos, sin, neox)
        rope(k3, pos, cos, sin, neox)
        for hh in range(n_kv):
            for j in range(head_dim):
                kc[layer, hh, pos, j] = k3[0, hh, j]
                vc[layer, hh, pos, j] = qkv[0, nq + nk + hh * head_dim + j]
        if pos >= PARALLEL_ATTENTION_FROM:
            attention(q3, kc[layer], vc[layer], pos, scale, 0, att)
        else:
            attention_serial(q3, kc[layer], vc[layer], pos, scale, 0, att)
        _linear(base + O, qs, ss, os_, kinds, biases, att.reshape(1, nq), tmp)
        for j in range(d):
            x[0, j] += tmp[0, j]
        rmsnorm(x, ffn_norm[layer], eps, h)
        if qs[base + UP].size == 0:                        # stacked gate|up
            _linear(base + GATE, qs, ss, os_, kinds, biases, h, gu)
            g[0, :] = gu[0, :n_ff]
            u[0, :] = gu[0, n_ff:]
        else:
            _linear(base + GATE, qs, ss, os_, kinds, biases, h, g)
            _linear(base + UP, qs, ss, os_, kinds, biases, h, u)
        silu_mul(g, u, g)
        _linear(base + DOWN, qs, ss, os_, kinds, biases, g, tmp)
        for j in range(d):
            x[0, j] += tmp[0, j]
    rmsnorm(x, out_norm, eps, h)
    _linear(head, qs, ss, os_, kinds, biases, h, logits)


def pack_lists(linears):
    """Typed lists (q as uint8, scale, offset, bias) and kinds for a sequence of packed Linear layers
    (None: an empty slot), or None when any of them is not repacked (then the per-op path runs)."""
    if any(lin is not None and lin.packed is None for lin in linears):
        return None
    qs, ss, os_, bs = List(), List(), List(), List()
    kinds = np.zeros(len(linears), np.int64)
    empty3, empty1 = np.zeros((0, 0, 0), np.float32), np.zeros(0, np.float32)
    for i, lin in enumerate(linears):
        if lin is None:
            qs.append(np.zeros((0, 0, 0), np.uint8))
            ss.append(empty3)
            os_.append(empty3)
            bs.append(empty1)
            continue
        pm = lin.packed
        qs.append(pm.q.view(np.uint8))
        ss.append(pm.scale)
        os_.append(pm.offset)
        bs.append(lin.bias if lin.bias is not None else empty1)
        kinds[i] = 1 if pm.nibbles else 0
    return qs, ss, os_, kinds, bs
