"""Whole-token decode in one compiled call: every layer of a model (llama family, Gemma 3) for one token.

Per-op Python dispatch cost 0.3-1 µs per call and ~15 calls per layer; here the layer loop runs in
Numba. Where every matrix has an integer-dot kind, decode_token_pooled runs the whole token in one
parallel region whose threads split each product and meet at a spinning barrier (sync.py):
Qwen2.5-0.5B 16 ms a token against 19-23 ms for decode_token, which starts a region per matrix
product (and for attention over long contexts), each launch 3-150 µs on these VMs. q/k/v and gate/up
run as one stacked matrix where their formats allow. The repacked matrices (kernels/repacked.py) of
the whole model live in three flat byte buffers (codes, scales, offsets: float32, or float16 where the
kind says so, each matrix's part 64-byte aligned) with a table of where each one starts and its shape,
indexed layer * 7 + slot; a slot whose matrix is part of a stacked one is empty. (Numba's typed lists
held them first, but building one compiled its methods in every process: 2.2 s of each load.)
"""
from __future__ import annotations

import math
import mmap
import os
import shutil
from pathlib import Path

import numpy as np
from numba import get_num_threads, njit, prange, types
from numba.extending import overload

from .ops import (attend_heads, attend_partial, attention, attention_serial, attention_split, attention_split_serial,
                  gelu_tanh_mul, merge_partials, rmsnorm, rope, silu_mul, split_parts, split_range)
from .quantized import dequantize_row
from .avx2 import (KIND_BASE, SCALE16_BIT, TWO_LEVEL_BIT, VNNI_BIT, kind_is_scale16, kind_is_two_level, kind_is_vnni,
                   kind_mode_lo, matrix_variant, matvec_int8dot, matvec_int8dot_groups, quantize_activation)
from .repacked import packed_matmul
from .vnni import matmul_vnni, matvec_vnni_groups
from .simd import kv_element
from .sync import STATE_LEN, arrive, atomic_cas, atomic_load, barrier
from . import entry
from .entry import entry_point, lean_caches

Q, K, V, O, GATE, UP, DOWN = range(7)   # slots; Q holds q|k|v and GATE gate|up when stacked
PARALLEL_ATTENTION_FROM = 512           # cache length from which decode attention uses the pool
SPLIT_FROM = 32     # visible keys from which pooled decode splits attention by key range (split-K)
POOLED = os.environ.get("LOCALLLM_POOLED", "1") != "0"   # decode_token_pooled where it applies (0: never)


# columns of the matrix table
Q_AT, GROUPS, COLS, ROWS, S_AT, N_GROUPS, O_AT, O_GROUPS, KIND, B_AT, B_LEN, PLANE, VARIANT = range(13)
# (N_GROUPS, O_GROUPS: of a two-level kind the super-blocks; PLANE its planes' rows, 4 + groups a super-block;
# VARIANT: avx2.variant_of of an integer-dot kind, the kind itself otherwise)
SLOTS = 6         # variants a pooled decoder is compiled for (_make_pooled's s0..s5; a model has 2-4)
NONE, ANY = -1, -2   # slot values: unused; every variant, chosen at run time


@njit(cache=True, inline="always")
def _cols(a, j0, j1):
    """Columns j0..j1-1 of a (1, n) array as a contiguous (1, j1 - j0) view: a[:, j0:j1] would type as a
    strided array, and the kernels that take it (SiLU over the gate, say) would compile without SIMD."""
    return a[0, j0:j1].reshape((1, j1 - j0))


@njit(cache=True, inline="always")
def _codes(i, mt, qbuf):
    """Matrix i's codes (G, ..., 32) in the codes buffer."""
    g, r = mt[i, GROUPS], mt[i, ROWS]
    return qbuf[mt[i, Q_AT]:mt[i, Q_AT] + g * mt[i, COLS] * r].reshape((g, mt[i, COLS], r))


@njit(cache=True, inline="always")
def _scales16(i, mt, sbuf, obuf):
    """Matrix i's scales and offsets as float16 bits (uint16, (G, groups, 32))."""
    g, r, sa, ns, oa, no = mt[i, GROUPS], mt[i, ROWS], mt[i, S_AT], mt[i, N_GROUPS], mt[i, O_AT], mt[i, O_GROUPS]
    return (sbuf[sa:sa + 2 * g * ns * r].view(np.uint16).reshape((g, ns, r)),
            obuf[oa:oa + 2 * g * no * r].view(np.uint16).reshape((g, no, r)))


@njit(cache=True, inline="always")
def _scales32(i, mt, sbuf, obuf):
    """Matrix i's scales and offsets as float32 ((G, groups, 32))."""
    g, r, sa, ns, oa, no = mt[i, GROUPS], mt[i, ROWS], mt[i, S_AT], mt[i, N_GROUPS], mt[i, O_AT], mt[i, O_GROUPS]
    return (sbuf[sa:sa + 4 * g * ns * r].view(np.float32).reshape((g, ns, r)),
            obuf[oa:oa + 4 * g * no * r].view(np.float32).reshape((g, no, r)))


@njit(cache=True, inline="always")
def _scales2l(i, mt, sbuf, obuf):
    """Matrix i's two-level scales and offsets (int8 (G, n_super, PLANE, 32), repacked.two_level)."""
    g, r, sa, ns, oa, no, p = (mt[i, GROUPS], mt[i, ROWS], mt[i, S_AT], mt[i, N_GROUPS], mt[i, O_AT],
                               mt[i, O_GROUPS], mt[i, PLANE])
    return (sbuf[sa:sa + g * ns * p * r].view(np.int8).reshape((g, ns, p, r)),
            obuf[oa:oa + g * no * p * r].view(np.int8).reshape((g, no, p, r)))


@njit(cache=True, inline="always")
def _add_bias(i, mt, bbuf, out, j0, j1):
    """out[0, j] += b_i[j] for the columns j0..j1-1 that matrix i has a bias for."""
    for j in range(j0, min(j1, mt[i, B_LEN])):
        out[0, j] += bbuf[mt[i, B_AT] + j]


@njit(cache=True, inline="always")
def _dot_matmul(kind, q, sc, of, x, out):
    """out = x_hat @ W.T for an integer-dot kind whose scales are float16 bits or two-level (which
    packed_matmul does not take): the VNNI kernel, or the AVX2 one a row at a time (decode's one row)."""
    if kind_is_vnni(kind):
        matmul_vnni(kind, q, sc, of, x, out)
    else:
        for t in range(x.shape[0]):
            matvec_int8dot(kind, q, sc, of, x[t], out[t])


@njit(cache=True)
def _linear(i, mt, qbuf, sbuf, obuf, bbuf, x, out):
    """out = x @ W_i.T (+ b_i) for matrix i of the table."""
    q = _codes(i, mt, qbuf)
    kind = mt[i, KIND]
    if kind_is_scale16(kind):          # float16 scales and offsets
        sc, of = _scales16(i, mt, sbuf, obuf)
        _dot_matmul(kind, q, sc, of, x, out)
    elif kind_is_two_level(kind):      # two-level ones
        sc2, of2 = _scales2l(i, mt, sbuf, obuf)
        _dot_matmul(kind, q, sc2, of2, x, out)
    else:
        sc, of = _scales32(i, mt, sbuf, obuf)
        packed_matmul(mt[i, KIND], q, sc, of, x, out)
    _add_bias(i, mt, bbuf, out, 0, out.shape[1])


@njit(cache=True)
def _embed(token, emb_raw, emb_type, emb_scale, x):
    """x (1, D) = the token's embedding row, times emb_scale (emb_type a constant: only its dequantizer
    compiled)."""
    dequantize_row(emb_type, emb_raw[token], x[0])
    if emb_scale != 1.0:
        for j in range(x.shape[1]):
            x[0, j] *= emb_scale


def _embed_as(et, token, emb_raw, emb_type, emb_scale, x):
    """_embed, compiled for embeddings of ggml type et alone (a constant), or for emb_type's (any; et ANY)."""


@overload(_embed_as, prefer_literal=True, inline="always")
def _ol_embed_as(et, token, emb_raw, emb_type, emb_scale, x):
    if isinstance(et, types.IntegerLiteral) and et.literal_value != ANY:
        def one(et, token, emb_raw, emb_type, emb_scale, x):
            _embed(token, emb_raw, et, emb_scale, x)
        return one

    def any_(et, token, emb_raw, emb_type, emb_scale, x):
        _embed(token, emb_raw, emb_type, emb_scale, x)
    return any_


@njit(cache=True)
def _add_residual(x, y, norm, layer, eps, scratch):
    """x += y, or x += rmsnorm(y) * norm[layer] where the model has that norm (norm (n_layer, D), else
    (0, 0)); scratch (1, D) takes the normed y and may be y itself."""
    if norm.shape[0] > 0:
        rmsnorm(y, norm[layer], eps, scratch)
        y = scratch
    for j in range(x.shape[1]):
        x[0, j] += y[0, j]


@njit(cache=True)
def _softcap(logits, softcap, j0, j1):
    for j in range(j0, j1):
        logits[0, j] = np.float32(math.tanh(logits[0, j] / softcap)) * softcap


@entry_point
@njit(cache=True)
def decode_token(token, pos, emb_raw, emb_type, emb_scale, mt, qbuf, sbuf, obuf, bbuf, attn_norm, q_norm,
                 k_norm, post_attn_norm, ffn_norm, post_ffw_norm, out_norm, head, kc, vc, cos, sin,
                 cos_local, sin_local, windows, neox, eps, n_head, n_kv, head_dim, n_ff, gelu,
                 attn_scale, softcap, logits, parts, split_from):
    """Logits (1, n_vocab) of `token` at position `pos` through every layer; writes its keys and
    values into kc/vc (n_layer, n_kv, n_ctx, head_dim).

    The llama family and Gemma 3 differ only in data: emb_scale (sqrt(D) for Gemma), q_norm/k_norm
    (n_layer, head_dim) and post_attn_norm/post_ffw_norm (n_layer, D), or (0, 0) when absent;
    windows (n_layer,) > 0 for sliding-window layers, which use the cos_local/sin_local RoPE tables;
    gelu (GELU-tanh, else SiLU) gate; softcap > 0 for final-logit softcapping. head: index of the
    output matrix in the lists. From split_from visible keys on, attention runs by key range in `parts`
    parts (ops.attention_split), as decode_token_pooled's does with that many threads.
    """
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
    a = np.empty((1, n_ff), np.float32)                    # (1, F) the gated activation
    _embed(token, emb_raw, emb_type, emb_scale, x)
    for layer in range(n_layer):
        base = layer * 7
        rmsnorm(x, attn_norm[layer], eps, h)
        if mt[base + K, GROUPS] == 0:                         # stacked q|k|v
            _linear(base + Q, mt, qbuf, sbuf, obuf, bbuf, h, qkv)
        else:
            _linear(base + Q, mt, qbuf, sbuf, obuf, bbuf, h, _cols(qkv, 0, nq))
            _linear(base + K, mt, qbuf, sbuf, obuf, bbuf, h, _cols(qkv, nq, nq + nk))
            _linear(base + V, mt, qbuf, sbuf, obuf, bbuf, h, _cols(qkv, nq + nk, nq + 2 * nk))
        q3.reshape(nq)[:] = qkv[0, :nq]
        k3.reshape(nk)[:] = qkv[0, nq:nq + nk]
        if q_norm.shape[0] > 0:
            rmsnorm(q3.reshape(n_head, head_dim), q_norm[layer], eps, q3.reshape(n_head, head_dim))
            rmsnorm(k3.reshape(n_kv, head_dim), k_norm[layer], eps, k3.reshape(n_kv, head_dim))
        window = windows[layer]
        if window > 0:
            rope(q3, pos, cos_local, sin_local, neox)
            rope(k3, pos, cos_local, sin_local, neox)
        else:
            rope(q3, pos, cos, sin, neox)
            rope(k3, pos, cos, sin, neox)
        _store_kv(qkv, k3, kc, vc, layer, 0, n_kv, pos, nq, nk)
        j0, j1 = split_range(pos, window, 0, 1)
        wide = j1 - j0 >= PARALLEL_ATTENTION_FROM           # worth waking the pool for
        if parts > 1 and j1 - j0 >= max(split_from, 8 * parts):
            if wide:
                attention_split(q3, kc[layer], vc[layer], pos, attn_scale, window, att, parts)
            else:
                attention_split_serial(q3, kc[layer], vc[layer], pos, attn_scale, window, att, parts)
        elif wide:
            attention(q3, kc[layer], vc[layer], pos, attn_scale, window, att)
        else:
            attention_serial(q3, kc[layer], vc[layer], pos, attn_scale, window, att)
        _linear(base + O, mt, qbuf, sbuf, obuf, bbuf, att.reshape(1, nq), tmp)
        _add_residual(x, tmp, post_attn_norm, layer, eps, tmp)
        rmsnorm(x, ffn_norm[layer], eps, h)
        if mt[base + UP, GROUPS] == 0:                        # stacked gate|up
            _linear(base + GATE, mt, qbuf, sbuf, obuf, bbuf, h, gu)
        else:
            _linear(base + GATE, mt, qbuf, sbuf, obuf, bbuf, h, _cols(gu, 0, n_ff))
            _linear(base + UP, mt, qbuf, sbuf, obuf, bbuf, h, _cols(gu, n_ff, 2 * n_ff))
        if gelu:           # into a buffer of its own, as in decode_token_pooled: the same SIMD code, same sums
            gelu_tanh_mul(_cols(gu, 0, n_ff), _cols(gu, n_ff, 2 * n_ff), a)
        else:
            silu_mul(_cols(gu, 0, n_ff), _cols(gu, n_ff, 2 * n_ff), a)
        _linear(base + DOWN, mt, qbuf, sbuf, obuf, bbuf, a, tmp)
        _add_residual(x, tmp, post_ffw_norm, layer, eps, tmp)
    rmsnorm(x, out_norm, eps, h)
    _linear(head, mt, qbuf, sbuf, obuf, bbuf, h, logits)
    if softcap > 0:
        _softcap(logits, softcap, 0, logits.shape[1])


def _dot_groups(v, kind, q, sc, of, xq, xd, xqs, out, g0, g1):
    """Rows of row groups g0..g1-1 of out (1, n) for one quantized activation row (1, ...), by the
    integer-dot kernel of the matrix's kind (VNNI or AVX2), serially; v its variant (a constant: that
    kernel alone is compiled)."""


@overload(_dot_groups, prefer_literal=True, inline="always")
def _ol_dot_groups(v, kind, q, sc, of, xq, xd, xqs, out, g0, g1):
    vnni_bit = v.literal_value & VNNI_BIT if isinstance(v, types.IntegerLiteral) else None

    def by_vnni(v, kind, q, sc, of, xq, xd, xqs, out, g0, g1):
        matvec_vnni_groups(kind, q, sc, of, xq, xd, xqs, out, g0, g1)

    def by_avx2(v, kind, q, sc, of, xq, xd, xqs, out, g0, g1):
        matvec_int8dot_groups(v, kind_mode_lo(kind)[1], q, sc, of, xq[0], xd[0], xqs[0], out[0], g0, g1)

    def either(v, kind, q, sc, of, xq, xd, xqs, out, g0, g1):
        if kind_is_vnni(kind):
            matvec_vnni_groups(kind, q, sc, of, xq, xd, xqs, out, g0, g1)
        else:
            matvec_int8dot_groups(v, kind_mode_lo(kind)[1], q, sc, of, xq[0], xd[0], xqs[0], out[0], g0, g1)
    return either if vnni_bit is None else by_vnni if vnni_bit else by_avx2


def _slot(k, i, mt, qbuf, sbuf, obuf, bbuf, xq, xd, xqs, out, g0, g1):
    """Rows of row groups g0..g1-1 of out = x_hat @ W_i.T (+ b_i), x_hat given by quantize_rows' outputs
    for one row (1, ...), for a matrix of variant k (a constant): compiled for that variant alone; for
    k = ANY (or a run-time k) for any, chosen at run time; NONE: nothing."""


@overload(_slot, prefer_literal=True, inline="always")
def _ol_slot(k, i, mt, qbuf, sbuf, obuf, bbuf, xq, xd, xqs, out, g0, g1):
    kv = k.literal_value if isinstance(k, types.IntegerLiteral) else ANY
    if kv == NONE:
        def nothing(k, i, mt, qbuf, sbuf, obuf, bbuf, xq, xd, xqs, out, g0, g1):
            pass
        return nothing
    if kv == ANY:
        def any_(k, i, mt, qbuf, sbuf, obuf, bbuf, xq, xd, xqs, out, g0, g1):
            kind, q, v = mt[i, KIND], _codes(i, mt, qbuf), mt[i, VARIANT]
            if kind_is_scale16(kind):          # float16 scales and offsets
                sc, of = _scales16(i, mt, sbuf, obuf)
                _dot_groups(v, kind, q, sc, of, xq, xd, xqs, out, g0, g1)
            elif kind_is_two_level(kind):      # two-level ones
                sc2, of2 = _scales2l(i, mt, sbuf, obuf)
                _dot_groups(v, kind, q, sc2, of2, xq, xd, xqs, out, g0, g1)
            else:
                sc, of = _scales32(i, mt, sbuf, obuf)
                _dot_groups(v, kind, q, sc, of, xq, xd, xqs, out, g0, g1)
            _add_bias(i, mt, bbuf, out, g0 * mt[i, ROWS], g1 * mt[i, ROWS])
        return any_
    scales = _scales16 if kv & SCALE16_BIT else _scales2l if kv & TWO_LEVEL_BIT else _scales32

    def one(k, i, mt, qbuf, sbuf, obuf, bbuf, xq, xd, xqs, out, g0, g1):
        sc, of = scales(i, mt, sbuf, obuf)
        _dot_groups(k, mt[i, KIND], _codes(i, mt, qbuf), sc, of, xq, xd, xqs, out, g0, g1)
        _add_bias(i, mt, bbuf, out, g0 * mt[i, ROWS], g1 * mt[i, ROWS])
    return one


@njit(cache=True, inline="always")
def _groups_share(i, mt, qbuf, sbuf, obuf, bbuf, xq, xd, xqs, out, g0, g1, s0, s1, s2, s3, s4, s5):
    """_slot for matrix i, by the slot of its variant among s0..s5 (constants: the model's variants, NONE
    for the unused; s0 = ANY: any variant)."""
    v = mt[i, VARIANT]
    if s0 == ANY or v == s0:
        _slot(s0, i, mt, qbuf, sbuf, obuf, bbuf, xq, xd, xqs, out, g0, g1)
    elif v == s1:
        _slot(s1, i, mt, qbuf, sbuf, obuf, bbuf, xq, xd, xqs, out, g0, g1)
    elif v == s2:
        _slot(s2, i, mt, qbuf, sbuf, obuf, bbuf, xq, xd, xqs, out, g0, g1)
    elif v == s3:
        _slot(s3, i, mt, qbuf, sbuf, obuf, bbuf, xq, xd, xqs, out, g0, g1)
    elif v == s4:
        _slot(s4, i, mt, qbuf, sbuf, obuf, bbuf, xq, xd, xqs, out, g0, g1)
    elif v == s5:
        _slot(s5, i, mt, qbuf, sbuf, obuf, bbuf, xq, xd, xqs, out, g0, g1)


@njit(cache=True)
def _linear_share(i, mt, qbuf, sbuf, obuf, bbuf, xq, xd, xqs, out, nt, state, s0, s1, s2, s3, s4, s5):
    """This thread's share of out = x_hat @ W_i.T (+ b_i) (s0..s5: the variants compiled for, as in
    _groups_share), taken from the matrix's counter in state (slot
    STATE_LEN + 8 i, the next row group) in runs of 1/nt of the groups left (guided scheduling): long
    contiguous runs first, single row groups at the end, so a thread the machine slows down takes fewer
    and the others wait at the barrier for at most one group. (Runs of 1/8 of a thread's share, fixed,
    left up to a run of idle time at each of a token's ~120 barriers: in one process, alternating,
    guided runs took SmolLM2 5.3 ms a token against 6.4, Gemma 3 13.6 against 14.7, Qwen2.5 23.2
    against 25.6.) Each row group's arithmetic is the same whichever thread does it."""
    g = mt[i, GROUPS]
    slot = STATE_LEN + 8 * i
    while True:
        g0 = atomic_load(state, slot)
        if g0 >= g:
            return
        g1 = min(g, g0 + max(1, (g - g0) // nt))
        if atomic_cas(state, slot, g0, g1):
            _groups_share(i, mt, qbuf, sbuf, obuf, bbuf, xq, xd, xqs, out, g0, g1, s0, s1, s2, s3, s4, s5)


@njit(cache=True)
def _quantize(x, n, xq, xd, xqs):
    """The first n columns of x (1, >= n) quantized into the front of the 1-D buffers; (1, ...) views."""
    q, d, s = xq[:n].reshape((1, n)), xd[:n // 32].reshape((1, n // 32)), xqs[:n // 16].reshape((1, n // 16))
    quantize_activation(x[0, :n], q[0], d[0], s[0])
    return q, d, s


@njit(cache=True, inline="always")
def _rotated(qkv, q3, k3, h0, h1, k0, k1, q_norm, k_norm, layer, eps, pos, cos, sin, neox):
    """Query heads h0..h1-1 and key heads k0..k1-1 of qkv (1, q | k | v) into q3 (1, H, hd) and k3
    (1, Hkv, hd), normed (where the model has q/k norms) and rotated for position pos."""
    head_dim = q3.shape[2]
    nq = q3.shape[1] * head_dim
    for hh in range(h0, h1):
        q3[0, hh, :] = qkv[0, hh * head_dim:(hh + 1) * head_dim]
    for kvh in range(k0, k1):
        k3[0, kvh, :] = qkv[0, nq + kvh * head_dim:nq + (kvh + 1) * head_dim]
    qh, kh = q3[:, h0:h1], k3[:, k0:k1]
    if q_norm.shape[0] > 0:
        rmsnorm(qh[0], q_norm[layer], eps, qh[0])
        rmsnorm(kh[0], k_norm[layer], eps, kh[0])
    rope(qh, pos, cos, sin, neox)
    rope(kh, pos, cos, sin, neox)


@njit(cache=True, inline="always")
def _store_kv(qkv, k3, kc, vc, layer, k0, k1, pos, nq, nk):
    """The cache rows of position pos for KV heads k0..k1-1: the rotated keys of k3, the values of qkv
    (as float16 bits in the model's cache, simd.f32_to_half)."""
    head_dim = k3.shape[2]
    for kvh in range(k0, k1):
        for j in range(head_dim):
            kc[layer, kvh, pos, j] = kv_element(kc, k3[0, kvh, j])
            vc[layer, kvh, pos, j] = kv_element(vc, qkv[0, nq + nk + kvh * head_dim + j])


_POOLED: dict = {}


def pooled_decoder(slots: tuple, emb_type: int):
    """decode_token_pooled compiled for the matrix variants in slots (SLOTS ints: a model's variants, NONE
    after them; or ANY first, for any) and token embeddings of ggml type emb_type; memoized. These are
    the closure's constants, so each model's set has its own entry in Numba's cache, and only the kernels
    they need are compiled (avx2.rows_v; one row dequantizer where dequantize_row_any holds 13): SmolLM2's
    decoder holds 2 of the 24 row kernels."""
    key = (*slots, emb_type)
    fn = _POOLED.get(key)
    if fn is None:
        fn = _POOLED[key] = _make_pooled(*key)
    return fn


def _make_pooled(s0, s1, s2, s3, s4, s5, et):
    @entry_point
    @njit(cache=True, parallel=True)
    def decode_token_pooled(token, pos, emb_raw, emb_type, emb_scale, mt, qbuf, sbuf, obuf, bbuf, attn_norm, q_norm,
                            k_norm, post_attn_norm, ffn_norm, post_ffw_norm, out_norm, head, kc, vc, cos, sin,
                            cos_local, sin_local, windows, neox, eps, n_head, n_kv, head_dim, n_ff, gelu,
                            attn_scale, softcap, logits, state, nt, split_from):
        """decode_token (same arguments and results) in one parallel region of nt threads, one iteration
        each, meeting at sync.barrier after each matrix product (5 a layer) instead of starting a region for
        each: the threads take runs of each matrix's row groups from a counter until none are left, shorter
        as fewer are left (_linear_share). All matrices must be of integer-dot kinds (VNNI or AVX2).

        Each thread keeps its own copy of the residual stream and computes what every thread needs (norms,
        the activations' int8 quantization, the gate) itself, rather than wait for one to share it.
        Attention over fewer than split_from visible keys splits by KV head (and slices of its query heads
        when there are fewer KV heads than threads), each thread writing the cache rows of the KV heads it
        attends with; from split_from keys on, by key range (split-K, ops.attend_partial): every thread takes
        1/nt of the keys for all heads, and after the barrier joins the nt parts for itself. The key range
        balances any head count (SmolLM2's 3 KV heads on 2 threads left one thread 2/3 of the work) and
        reads each cached key once (Gemma 3's one KV head was read by both threads); at 4096 keys on a Zen 3
        it took SmolLM2's decode from 18.1 to 15.8 ms a token and Gemma 3's from 19.5 to 18.1 (in one process,
        alternating), and it costs nothing at 40 keys. state: int64 (sync.STATE_LEN + 8 * n_matrices,) zeros:
        the barrier's, then a counter per matrix. Returns False, having done nothing, when the threads did
        not run side by side (sync.arrive).
        """
        n_layer, d = attn_norm.shape
        nq, nk = n_head * head_dim, n_kv * head_dim
        group = n_head // n_kv
        split = min(group, max(1, -(-nt // n_kv)))              # query-head slices per KV head
        n_items = n_kv * split
        kmax = max(d, nq, n_ff)
        qkv = np.empty((1, nq + 2 * nk), np.float32)            # (1, q | k | v), shared
        q3 = np.empty((1, n_head, head_dim), np.float32)        # rotated queries, shared (disjoint heads)
        att = np.empty((1, n_head, head_dim), np.float32)       # shared
        tmp = np.empty((1, d), np.float32)                      # o / down outputs, shared
        gu = np.empty((1, 2 * n_ff), np.float32)                # (1, gate | up), shared
        part_m, part_l, part_acc = split_parts(nt, n_head, head_dim)   # split-K attention's parts, a row a thread
        ok = np.zeros(nt, np.bool_)
        for tid in prange(nt):
            ok[tid] = arrive(state, nt)
            if not ok[tid]:
                continue
            x = np.empty((1, d), np.float32)                    # this thread's residual stream
            h = np.empty((1, d), np.float32)
            t2 = np.empty((1, d), np.float32)                   # the normed o / down output
            k3 = np.empty((1, n_kv, head_dim), np.float32)
            q_own = np.empty((1, n_head, head_dim), np.float32)   # split-K: all the rotated queries, and
            att_own = np.empty((1, n_head, head_dim), np.float32)  # the joined attention output
            s = np.empty((group, kc.shape[2]), np.float32)        # scores of a KV head's query heads
            a = np.empty((1, n_ff), np.float32)
            xq, xd, xqs = np.empty(kmax, np.int8), np.empty(kmax // 32, np.float32), np.empty(kmax // 16, np.int32)
            _embed_as(et, token, emb_raw, emb_type, emb_scale, x)
            for layer in range(n_layer):
                base = layer * 7
                rmsnorm(x, attn_norm[layer], eps, h)
                aq, ad, aqs = _quantize(h, d, xq, xd, xqs)
                if mt[base + K, GROUPS] == 0:                     # stacked q|k|v
                    _linear_share(base + Q, mt, qbuf, sbuf, obuf, bbuf, aq, ad, aqs, qkv,
                                  nt, state, s0, s1, s2, s3, s4, s5)
                else:
                    _linear_share(base + Q, mt, qbuf, sbuf, obuf, bbuf, aq, ad, aqs, _cols(qkv, 0, nq),
                                  nt, state, s0, s1, s2, s3, s4, s5)
                    _linear_share(base + K, mt, qbuf, sbuf, obuf, bbuf, aq, ad, aqs, _cols(qkv, nq, nq + nk),
                                  nt, state, s0, s1, s2, s3, s4, s5)
                    _linear_share(base + V, mt, qbuf, sbuf, obuf, bbuf, aq, ad, aqs, _cols(qkv, nq + nk, nq + 2 * nk),
                                  nt, state, s0, s1, s2, s3, s4, s5)
                barrier(state, nt)
                window = windows[layer]
                lcos, lsin = (cos_local, sin_local) if window > 0 else (cos, sin)
                j0, j1 = split_range(pos, window, 0, 1)        # the visible keys
                if j1 - j0 >= max(split_from, 8 * nt):
                    # split-K: every thread takes a range of the visible keys for all heads; their parts are
                    # joined after the barrier (each thread joins all of them for itself)
                    _rotated(qkv, q_own, k3, 0, n_head, 0, n_kv, q_norm, k_norm, layer, eps, pos, lcos, lsin, neox)
                    if tid == nt - 1:        # the range holding this position: it writes the new cache rows
                        _store_kv(qkv, k3, kc, vc, layer, 0, n_kv, pos, nq, nk)
                    j0, j1 = split_range(pos, window, tid, nt)
                    for kvh in range(n_kv):
                        attend_partial(q_own, kc[layer], vc[layer], kvh, kvh * group, (kvh + 1) * group, j0, j1,
                                       attn_scale, s, part_m[tid], part_l[tid], part_acc[tid])
                    barrier(state, nt)
                    merge_partials(part_m, part_l, part_acc, att_own[0])
                    aq, ad, aqs = _quantize(att_own.reshape(1, nq), nq, xq, xd, xqs)
                else:
                    # by KV head (and slices of its query heads), each thread writing the cache rows it reads
                    for item in range(tid * n_items // nt, (tid + 1) * n_items // nt):
                        kvh, c = item // split, item % split
                        h0 = kvh * group + c * group // split
                        h1 = kvh * group + (c + 1) * group // split
                        _rotated(qkv, q3, k3, h0, h1, kvh, kvh + 1, q_norm, k_norm, layer, eps, pos, lcos, lsin, neox)
                        _store_kv(qkv, k3, kc, vc, layer, kvh, kvh + 1, pos, nq, nk)
                        attend_heads(q3, kc[layer], vc[layer], pos, attn_scale, window, att, 0, kvh, h0, h1)
                    barrier(state, nt)
                    aq, ad, aqs = _quantize(att.reshape(1, nq), nq, xq, xd, xqs)
                _linear_share(base + O, mt, qbuf, sbuf, obuf, bbuf, aq, ad, aqs, tmp, nt, state, s0, s1, s2, s3, s4, s5)
                barrier(state, nt)
                _add_residual(x, tmp, post_attn_norm, layer, eps, t2)
                rmsnorm(x, ffn_norm[layer], eps, h)
                aq, ad, aqs = _quantize(h, d, xq, xd, xqs)
                if mt[base + UP, GROUPS] == 0:                    # stacked gate|up
                    _linear_share(base + GATE, mt, qbuf, sbuf, obuf, bbuf, aq, ad, aqs, gu,
                                  nt, state, s0, s1, s2, s3, s4, s5)
                else:
                    _linear_share(base + GATE, mt, qbuf, sbuf, obuf, bbuf, aq, ad, aqs, _cols(gu, 0, n_ff),
                                  nt, state, s0, s1, s2, s3, s4, s5)
                    _linear_share(base + UP, mt, qbuf, sbuf, obuf, bbuf, aq, ad, aqs, _cols(gu, n_ff, 2 * n_ff),
                                  nt, state, s0, s1, s2, s3, s4, s5)
                barrier(state, nt)
                if gelu:
                    gelu_tanh_mul(_cols(gu, 0, n_ff), _cols(gu, n_ff, 2 * n_ff), a)
                else:
                    silu_mul(_cols(gu, 0, n_ff), _cols(gu, n_ff, 2 * n_ff), a)
                aq, ad, aqs = _quantize(a, n_ff, xq, xd, xqs)
                _linear_share(base + DOWN, mt, qbuf, sbuf, obuf, bbuf, aq, ad, aqs, tmp,
                              nt, state, s0, s1, s2, s3, s4, s5)
                barrier(state, nt)
                _add_residual(x, tmp, post_ffw_norm, layer, eps, t2)
            rmsnorm(x, out_norm, eps, h)
            aq, ad, aqs = _quantize(h, d, xq, xd, xqs)
            _linear_share(head, mt, qbuf, sbuf, obuf, bbuf, aq, ad, aqs, logits, nt, state, s0, s1, s2, s3, s4, s5)
            if softcap > 0:
                barrier(state, nt)
                n_vocab = logits.shape[1]
                _softcap(logits, softcap, tid * n_vocab // nt, (tid + 1) * n_vocab // nt)
        for tid in range(nt):                # (not ok.all(): its cached code imports numba.np.arraymath)
            if not ok[tid]:
                return False
        return True
    return decode_token_pooled


def pack_buffers(linears):
    """(table, codes, scales, offsets, biases) for a sequence of packed Linear layers (None: an empty
    slot), or None when any is not repacked (then the per-op path runs). The layers' packed arrays are
    rebound to views of the buffers, so the weights are held once."""
    from ..layers import rebind_parts

    if any(lin is not None and lin.packed is None for lin in linears):
        return None
    mt = np.zeros((len(linears), 13), np.int64)
    sizes = np.zeros(4, np.int64)       # running lengths of q, scale and offset (bytes, aligned), bias
    for i, lin in enumerate(linears):
        if lin is None:
            continue
        pm = lin.packed
        pm.int8dot()                        # build the integer-dot layout (avx2.py) where that kernel is on
        g, x, r = pm.codes.shape
        mt[i] = (sizes[0], g, x, r, sizes[1], pm.scale.shape[1], sizes[2], pm.offset.shape[1],
                 pm.kind, sizes[3], 0 if lin.bias is None else lin.bias.size,
                 pm.scale.shape[2] if pm.scale.ndim == 4 else 0,
                 matrix_variant(pm.kind, pm.scale, pm.offset, pm.n_cols) if pm.kind >= KIND_BASE else pm.kind)
        sizes += (_aligned(pm.codes.nbytes), _aligned(pm.scale.nbytes), _aligned(pm.offset.nbytes), mt[i, B_LEN])
    qbuf, sbuf, obuf = (np.zeros(n, np.uint8) for n in sizes[:3])
    bbuf = np.empty(sizes[3], np.float32)
    for i, lin in enumerate(linears):
        if lin is None:
            continue
        pm, (qa, g, x, r, sa, ng, oa, ong, _, ba, bl, _, _) = lin.packed, mt[i]
        qv = qbuf[qa:qa + pm.codes.size].reshape(pm.codes.shape)
        qv[...] = pm.codes
        if pm.dot is None:
            pm.q = qv.view(pm.q.dtype)
        else:                               # the integer-dot layout, the matrix's only copy of its codes
            pm.dot.q = qv
        for name, buf, at in (("scale", sbuf, sa), ("offset", obuf, oa)):
            arr = getattr(pm, name)
            view = buf[at:at + arr.nbytes].view(arr.dtype).reshape(arr.shape)
            view[...] = arr
            setattr(pm, name, view)
        if bl:
            bbuf[ba:ba + bl] = lin.bias
            lin.bias = bbuf[ba:ba + bl]
        rebind_parts(lin)
    return mt, qbuf, sbuf, obuf, bbuf


NONE2 = np.zeros((0, 0), np.float32)


def _aligned(nbytes: int, to: int = 64) -> int:
    return -(-nbytes // to) * to


BUFFERS = ("mt", "q", "scale", "offset", "bias")
_KEYED_SOURCES = ("quants/__init__.py", "quants/floats.py", "quants/legacy.py", "quants/kquants.py",
                  "kernels/repacked.py", "kernels/avx2.py", "kernels/vnni.py", "kernels/decode.py", "layers.py")


def pack_cache_dir(model_path) -> Path | None:
    """Where the repacked buffers of a model file are kept between runs (None: LOCALLLM_PACK_CACHE=0).
    Keyed on the file (path, size, mtime), the code that packs, and the kernel choice."""
    if os.environ.get("LOCALLLM_PACK_CACHE", "1") == "0":
        return None
    from ..hub.store import file_cache_dir
    from . import avx2, vnni
    from .repacked import R

    pkg = Path(__file__).resolve().parent.parent
    return file_cache_dir("packed", model_path, f"{avx2.ENABLED}|{vnni.ENABLED}|{avx2.SCALE16}|{avx2.TWO_LEVEL}|{R}",
                          (pkg / rel for rel in _KEYED_SOURCES))


def _save(cache: Path, bufs) -> None:
    """Write the buffers beside `cache`, then rename: a half-written cache is never used."""
    tmp = cache.with_name(f"{cache.name}.tmp{os.getpid()}")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        for name, arr in zip(BUFFERS, bufs):
            np.save(tmp / f"{name}.npy", arr)
        os.replace(tmp, cache)
    except OSError:          # disk full, read-only home, another process won the rename: run without it
        shutil.rmtree(tmp, ignore_errors=True)


def _load(cache: Path):
    """The cached buffers, memory-mapped (copy-on-write, so they type like ordinary arrays in Numba), their
    pages mapped in the background (prefault)."""
    try:
        bufs = tuple(np.asarray(np.load(cache / f"{name}.npy", mmap_mode="c")) for name in BUFFERS)
    except (OSError, ValueError):
        return None
    if os.environ.get("LOCALLLM_PREFAULT", "1") != "0":
        prefault(bufs)
    return bufs


def prefault(arrays):
    """Map the pages of memory-mapped arrays into this process on a background thread (Linux 5.14+:
    madvise MADV_POPULATE_READ, called through ctypes, which lets go of the GIL) while the load goes on;
    the first token would otherwise take those page faults itself (Qwen2.5's 394 MB: ~85 ms). Returns
    the thread, or None where there is nothing to do."""
    import ctypes
    import sys
    import threading

    if sys.platform != "linux":
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    advice = getattr(mmap, "MADV_POPULATE_READ", 22)
    spans = []
    for a in arrays:
        if a.nbytes:
            at = a.ctypes.data // mmap.PAGESIZE * mmap.PAGESIZE
            spans.append((at, a.ctypes.data + a.nbytes - at))

    def run():
        for at, n in spans:
            if madvise(at, n, advice) != 0:    # an older kernel (EINVAL): the faults come as before
                return
    thread = threading.Thread(target=run, name="localllm-prefault", daemon=True)
    thread.start()
    return thread


def _kind_bits(fn, kind: int):
    """fn(kind) for one of avx2's kind decoders, run as plain Python: calling the compiled one from Python
    would load it from Numba's cache (~2 ms each in a fresh process)."""
    return fn.py_func(kind)


def _packed_from(bufs, i: int, n_rows: int, n_cols: int):
    """The PackedMatrix of table row i, as views of the buffers."""
    from . import avx2
    from .repacked import PackedMatrix

    mt, qbuf, sbuf, obuf, _ = bufs
    qa, g, x, r, sa, ng, oa, ong, kind = (int(v) for v in mt[i, :9])
    plane = int(mt[i, PLANE])
    q = qbuf[qa:qa + g * x * r].reshape(g, x, r)
    if plane:                       # two-level: ng, ong count super-blocks
        scale = sbuf[sa:sa + g * ng * plane * r].view(np.int8).reshape(g, ng, plane, r)
        offset = obuf[oa:oa + g * ong * plane * r].view(np.int8).reshape(g, ong, plane, r)
        ng *= plane - 4
    else:
        dt = np.dtype(np.uint16 if _kind_bits(avx2.kind_is_scale16, kind) else np.float32)
        scale = sbuf[sa:sa + g * ng * r * dt.itemsize].view(dt).reshape(g, ng, r)
        offset = obuf[oa:oa + g * ong * r * dt.itemsize].view(dt).reshape(g, ong, r)
    if kind >= avx2.KIND_BASE:
        mode, lo = _kind_bits(avx2.kind_mode_lo, kind)
        dot = avx2.Int8DotLayout(mode, lo, q, *(bool(_kind_bits(f, kind)) for f in (
            avx2.kind_is_vnni, avx2.kind_is_scale16, avx2.kind_is_two_level)))
        return PackedMatrix(n_rows, n_cols, n_cols // ng, mode == avx2.NIBBLES, None, scale, offset, dot, True)
    return PackedMatrix(n_rows, n_cols, n_cols // ng, kind == 1, q if kind == 1 else q.view(np.int8), scale, offset)


def _attach(layers, output, bufs):
    """Give every Linear its packed matrix from cached buffers (no repacking); the slot list as built."""
    from ..layers import stacked
    from .repacked import R, PackedMatrix

    mt = bufs[0]

    def one(i, lin):
        lin.packed = _packed_from(bufs, i, lin.n_out, lin.n_in)
        return lin

    def group(i, parts):
        for p in parts:   # placeholders sized in row groups; `stacked` points them into the fused matrix
            p.packed = PackedMatrix(p.n_out, p.n_in, 0, False, None, np.empty((-(-p.n_out // R), 0, 0)), None)
        return stacked(parts, _packed_from(bufs, i, sum(p.n_out for p in parts), parts[0].n_in))

    mats = []
    for li, L in enumerate(layers):
        base = li * 7
        if mt[base + K, GROUPS] == 0:
            mats += [group(base + Q, [L.wq, L.wk, L.wv]), None, None]
        else:
            mats += [one(base + Q, L.wq), one(base + K, L.wk), one(base + V, L.wv)]
        mats.append(one(base + O, L.wo))
        if mt[base + UP, GROUPS] == 0:
            mats += [group(base + GATE, [L.gate, L.up]), None]
        else:
            mats += [one(base + GATE, L.gate), one(base + UP, L.up)]
        mats.append(one(base + DOWN, L.down))
    one(len(mats), output)
    return mats


class FusedDecoder:
    """The arrays `decode_token` needs, built once from a model's layers (None: not possible). With a
    `cache` directory the repacked buffers are saved there, and memory-mapped instead of rebuilt on the
    next load of the same file (load time: the repacking; memory: the weights page in from the cache)."""

    @classmethod
    def build(cls, layers, output, attn_norm="attn_norm", ffn_norm="ffn_norm", q_norm=None, k_norm=None,
              post_attn_norm=None, post_ffw_norm=None, cache: Path | None = None):
        from ..layers import fuse

        bufs = _load(cache) if cache is not None and (cache / "mt.npy").exists() else None
        if bufs is not None and len(bufs[0]) == len(layers) * 7 + 1:
            mats = _attach(layers, output, bufs)
        else:
            mats = []
            for L in layers:   # stacked q|k|v and gate|up where the formats allow (one kernel launch each)
                qkv, gu = fuse([L.wq, L.wk, L.wv]), fuse([L.gate, L.up])
                mats += [qkv, None, None] if qkv else [L.wq, L.wk, L.wv]
                mats += [L.wo] + ([gu, None] if gu else [L.gate, L.up]) + [L.down]
            bufs = pack_buffers(mats + [output])
            if bufs is None:
                return None
            if cache is not None:
                _save(cache, bufs)
        self = cls()
        self.mt, self.qbuf, self.sbuf, self.obuf, self.bbuf = bufs
        self.head = len(mats)
        stack = lambda name: np.stack([getattr(L, name) for L in layers]) if name else NONE2
        self.attn_norm, self.ffn_norm = stack(attn_norm), stack(ffn_norm)          # (n_layer, D)
        self.q_norm, self.k_norm = stack(q_norm), stack(k_norm)                    # (n_layer, hd) or (0, 0)
        self.post_attn_norm, self.post_ffw_norm = stack(post_attn_norm), stack(post_ffw_norm)
        used = self.mt[self.mt[:, GROUPS] > 0, KIND]
        self.pooled = POOLED and bool((used >= KIND_BASE).all())   # integer-dot kinds (VNNI or AVX2)
        self._state = np.zeros(STATE_LEN + 8 * len(self.mt), np.int64)   # barrier, then a counter a matrix
        self._pool_failures = 0
        self.split_from = SPLIT_FROM
        variants = sorted({int(v) for v in self.mt[self.mt[:, GROUPS] > 0, VARIANT]})
        if len(variants) > SLOTS or not entry.SPECIALIZE:      # (SLOTS lowered by a test: still six slots)
            variants = [ANY]
        self.pooled_fn = None       # pooled_decoder's, once the embedding's type is known (decode)
        self._slots = (*variants, *[NONE] * (6 - len(variants)))
        return self

    def decode(self, *args) -> None:
        """decode_token(*args): in one region of the pool (decode_token_pooled, compiled for this model's
        matrix variants) where every matrix has an integer-dot kind, else one region per product. Three
        regions whose threads did not run side by side turn the pooled form off for this model."""
        nt = get_num_threads()
        if self.pooled:
            if self.pooled_fn is None:
                self.pooled_fn = pooled_decoder(self._slots, int(args[3]) if entry.SPECIALIZE else ANY)  # emb_type
            self._state[:] = 0
            if self.pooled_fn(*args, self._state, nt, self.split_from):
                return
            self._pool_failures += 1
            self.pooled = self._pool_failures < 3
        decode_token(*args, nt, self.split_from)


lean_caches(globals())
