"""Transformer ops in Numba, each with a NumPy reference in tests/test_ops.py.

Shapes: T tokens in the batch, H heads, hd head size, D model width. The elementwise ops are serial:
on these 2-core VMs waking the thread pool costs 10-50 µs, more than the op itself.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .entry import entry_point, lean_caches
from .simd import exp_f32


@njit(cache=True, fastmath=True)
def rmsnorm(x, w, eps, out):
    """out (N, D) = x (N, D) / rms(x) * w (D,). Sum of squares in float64, as ggml does."""
    n, d = x.shape
    for i in prange(n):
        ss = 0.0
        for j in range(d):
            ss += np.float64(x[i, j]) * np.float64(x[i, j])
        scale = np.float32(1.0 / math.sqrt(ss / d + eps))
        for j in range(d):
            out[i, j] = x[i, j] * scale * w[j]


@entry_point
@njit(cache=True)
def rope_tables(n_pos, n_rot, base, freq_factors, scale):
    """cos, sin (n_pos, n_rot // 2) for positions 0..n_pos-1: angle p * scale * base^(-2i/n_rot) / factor_i."""
    half = n_rot // 2
    cos = np.empty((n_pos, half), np.float32)
    sin = np.empty((n_pos, half), np.float32)
    for i in range(half):
        inv = base ** (-2.0 * i / n_rot) / freq_factors[i]
        for p in range(n_pos):
            a = p * scale * inv
            cos[p, i] = math.cos(a)
            sin[p, i] = math.sin(a)
    return cos, sin


@njit(cache=True, fastmath=True)
def rope(x, pos0, cos, sin, neox):
    """Rotate x (T, H, hd) in place for positions pos0..pos0+T-1 over its first n_rot = 2*cos.shape[1] dims.

    neox=False pairs (2i, 2i+1) (llama.cpp's NORM mode); neox=True pairs (i, i + n_rot/2).
    """
    t_n, h_n = x.shape[0], x.shape[1]
    half = cos.shape[1]
    for th in prange(t_n * h_n):
        t, h = th // h_n, th % h_n
        p = pos0 + t
        for i in range(half):
            if neox:
                a, b = i, i + half
            else:
                a, b = 2 * i, 2 * i + 1
            x0, x1 = x[t, h, a], x[t, h, b]
            c, s = cos[p, i], sin[p, i]
            x[t, h, a] = x0 * c - x1 * s
            x[t, h, b] = x0 * s + x1 * c


@njit(cache=True, fastmath=True, error_model="numpy", inline="always")
def _attend_heads(q, k_cache, v_cache, pos0, scale, window, out, t, kvh, h0, h1):
    """Queries of token t, heads h0..h1-1 (all reading KV head kvh), over their visible cache positions,
    into out[t, h0:h1]. Each key and value row is read once for all of those heads."""
    hd, hd_v = q.shape[2], v_cache.shape[2]
    p = pos0 + t
    start = 0 if window <= 0 else max(0, p - window + 1)
    n = p + 1 - start
    s = np.empty((h1 - h0, n), np.float32)   # (heads, n) scores, then weights
    acc = np.empty(hd_v, np.float32)
    for j in range(n):
        for g in range(h1 - h0):
            a = np.float32(0.0)
            for d in range(hd):
                a += q[t, h0 + g, d] * k_cache[kvh, start + j, d]
            s[g, j] = a * scale
    for g in range(h1 - h0):
        best = s[g, 0]      # not -inf: fastmath code may assume there are no infinities
        for j in range(1, n):
            best = max(best, s[g, j])
        total = np.float32(0.0)
        for j in range(n):
            e = exp_f32(s[g, j] - best)
            s[g, j] = e
            total += e
        inv = np.float32(1.0) / total
        acc[:] = 0.0
        for j in range(n):
            w = s[g, j] * inv
            for d in range(hd_v):
                acc[d] += w * v_cache[kvh, start + j, d]
        for d in range(hd_v):
            out[t, h0 + g, d] = acc[d]


@njit(cache=True, parallel=True, fastmath=True, error_model="numpy")
def attention(q, k_cache, v_cache, pos0, scale, window, out):
    """Causal grouped-query attention of T new tokens at positions pos0.. over the cache.

    q (T, Hq, hd); k_cache (Hkv, n_ctx, hd) and v_cache (Hkv, n_ctx, hd_v) already hold positions
    0..pos0+T-1; out (T, Hq, hd_v). window > 0 limits each query to its last `window` positions.
    Work items are (token, KV head, slice of its query heads): the group is sliced only when there
    are too few (token, KV head) pairs to keep the threads busy (decode, few KV heads).
    """
    t_n, hq_n = q.shape[0], q.shape[1]
    hkv = k_cache.shape[0]
    group = hq_n // hkv
    split = min(group, max(1, 8 // (t_n * hkv)))
    for u in prange(t_n * hkv * split):
        t, r = u // (hkv * split), u % (hkv * split)
        kvh, c = r // split, r % split
        h0 = kvh * group
        _attend_heads(q, k_cache, v_cache, pos0, scale, window, out, t, kvh,
                      h0 + c * group // split, h0 + (c + 1) * group // split)


@njit(cache=True, fastmath=True, error_model="numpy")
def attend_heads(q, k_cache, v_cache, pos0, scale, window, out, t, kvh, h0, h1):
    """_attend_heads compiled on its own (an inlined copy would take its caller's float flags)."""
    _attend_heads(q, k_cache, v_cache, pos0, scale, window, out, t, kvh, h0, h1)


@njit(cache=True, fastmath=True, error_model="numpy")
def attention_serial(q, k_cache, v_cache, pos0, scale, window, out):
    """`attention` on the calling thread: for decode over a short context, cheaper than waking the pool."""
    t_n, hq_n = q.shape[0], q.shape[1]
    hkv = k_cache.shape[0]
    group = hq_n // hkv
    for t in range(t_n):
        for kvh in range(hkv):
            _attend_heads(q, k_cache, v_cache, pos0, scale, window, out, t, kvh, kvh * group, (kvh + 1) * group)


@njit(cache=True, fastmath=True, error_model="numpy", inline="always")
def _silu_mul_row(gate, up, out, i):
    for j in range(gate.shape[1]):
        g = gate[i, j]
        out[i, j] = g / (np.float32(1.0) + exp_f32(-g)) * up[i, j]


@njit(cache=True, fastmath=True, error_model="numpy", inline="always")
def _gelu_tanh_mul_row(gate, up, out, i):
    # 0.5 g (1 + tanh(u)) = g / (1 + exp(-2u)): one exp instead of a tanh (exp_f32 clamps its argument,
    # so fastmath code never meets an infinity)
    c = np.float32(2.0 * math.sqrt(2.0 / math.pi))
    for j in range(gate.shape[1]):
        g = gate[i, j]
        out[i, j] = g / (np.float32(1.0) + exp_f32(-c * (g + np.float32(0.044715) * g * g * g))) * up[i, j]


@njit(cache=True, fastmath=True, error_model="numpy")
def silu_mul(gate, up, out):
    """out (T, F) = silu(gate) * up, on the calling thread (decode)."""
    for i in range(gate.shape[0]):
        _silu_mul_row(gate, up, out, i)


@njit(cache=True, fastmath=True, error_model="numpy")
def gelu_tanh_mul(gate, up, out):
    """out (T, F) = gelu_tanh(gate) * up (GELU with the tanh approximation, as ggml_gelu), serial."""
    for i in range(gate.shape[0]):
        _gelu_tanh_mul_row(gate, up, out, i)


@entry_point
@njit(cache=True, parallel=True, fastmath=True, error_model="numpy")
def silu_mul_rows(gate, up, out):
    """`silu_mul` with rows split across threads (prefill batches)."""
    for i in prange(gate.shape[0]):
        _silu_mul_row(gate, up, out, i)


@entry_point
@njit(cache=True, parallel=True, fastmath=True, error_model="numpy")
def gelu_tanh_mul_rows(gate, up, out):
    """`gelu_tanh_mul` with rows split across threads (prefill batches)."""
    for i in prange(gate.shape[0]):
        _gelu_tanh_mul_row(gate, up, out, i)


BLAS_ATTENTION_MIN_T = 16   # from this many new tokens on, attention runs as per-KV-head BLAS matmuls


@njit(cache=True, fastmath=True, inline="always")
def _softmax_causal_row(s, i, t_n, pos0, start, window, scale):
    p = pos0 + i % t_n
    n = s.shape[1]
    lo = 0 if window <= 0 else max(0, p - window + 1 - start)
    hi = p - start + 1                      # keys [lo, hi) are visible
    s[i, lo] *= scale
    best = s[i, lo]         # not -inf: fastmath code may assume no infinities
    for j in range(lo + 1, hi):
        s[i, j] *= scale
        best = max(best, s[i, j])
    total = np.float32(0.0)
    for j in range(lo, hi):
        e = exp_f32(s[i, j] - best)
        s[i, j] = e
        total += e
    inv = np.float32(1.0) / total
    for j in range(n):
        s[i, j] = s[i, j] * inv if lo <= j < hi else np.float32(0.0)


@njit(cache=True, parallel=True, fastmath=True)
def softmax_causal(s, t_n, pos0, start, window, scale):
    """In place: s (rows, n) scores of query rows (row % t_n = token t at position pos0 + t) over key
    positions start..start+n-1 -> scale, mask (causal, and the sliding window when > 0), softmax."""
    for i in prange(s.shape[0]):
        _softmax_causal_row(s, i, t_n, pos0, start, window, scale)


@njit(cache=True, fastmath=True, nogil=True)
def softmax_causal_serial(s, t_n, pos0, start, window, scale):
    """`softmax_causal` in the calling thread, without the GIL (attention_blas runs it in a thread pool)."""
    for i in range(s.shape[0]):
        _softmax_causal_row(s, i, t_n, pos0, start, window, scale)


_attention_pools: dict = {}     # thread count -> ThreadPoolExecutor


def _pool():
    """Python threads for attention_blas: BLAS runs single-threaded beside Numba's pool (threads.py), so
    the heads and row chunks of a prefill's attention are spread over threads of our own instead."""
    import numba
    n = numba.get_num_threads()
    if n not in _attention_pools:
        from concurrent.futures import ThreadPoolExecutor
        _attention_pools[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="localllm-attn")
    return _attention_pools[n]


ATTENTION_ROW_CHUNKS = 4    # query-row chunks per KV head (later chunks see more keys; 4 balances 2 threads)


def attention_blas(q, k_cache, v_cache, pos0, scale, window, out):
    """The same as `attention`, for a prefill batch: per KV head and chunk of query rows, one
    (group*rows, hd) @ (hd, keys) matmul over the keys those rows can see, a masked softmax, then @ V;
    the (head, chunk) pieces run in a small thread pool. q (T, Hq, hd); out (T, Hq, hd_v)."""
    t_n, hq_n, hd = q.shape
    hkv = k_cache.shape[0]
    group = hq_n // hkv
    n_chunks = max(1, min(ATTENTION_ROW_CHUNKS, t_n // 64))
    bounds = [t_n * c // n_chunks for c in range(n_chunks + 1)]
    sc = np.float32(scale)

    def piece(h, t0, t1):
        p0 = pos0 + t0
        end = pos0 + t1                                          # keys before this are visible to some row
        start = 0 if window <= 0 else max(0, p0 - window + 1)    # earliest key any of these rows sees
        qh = q[t0:t1, h * group:(h + 1) * group].transpose(1, 0, 2).reshape(group * (t1 - t0), hd)
        s = qh @ k_cache[h, start:end].T                                                   # (group*rows, keys)
        softmax_causal_serial(s, t1 - t0, p0, start, window, sc)
        o = s @ v_cache[h, start:end]                                                      # (group*rows, hd_v)
        out[t0:t1, h * group:(h + 1) * group] = o.reshape(group, t1 - t0, -1).transpose(1, 0, 2)

    jobs = [(h, bounds[c], bounds[c + 1]) for h in range(hkv) for c in range(n_chunks)]
    if len(jobs) == 1:
        piece(*jobs[0])
        return
    for f in [_pool().submit(piece, *j) for j in jobs]:
        f.result()


def attend(q, k_cache, v_cache, pos0, scale, window, out):
    """Causal attention of q (T, Hq, hd) over the cache: the Numba kernel for decode and short
    batches, BLAS matmuls for prefill batches."""
    if q.shape[0] >= BLAS_ATTENTION_MIN_T:
        attention_blas(q, k_cache, v_cache, pos0, scale, window, out)
    else:
        attention(q, k_cache, v_cache, pos0, scale, window, out)


lean_caches(globals())
