"""Transformer ops in Numba, each with a NumPy reference in tests/test_ops.py.

Shapes: T tokens in the batch, H heads, hd head size, D model width. The elementwise ops are serial:
on these 2-core VMs waking the thread pool costs 10-50 µs, more than the op itself.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .entry import entry_point, lean_caches
from .simd import axpy32x2, axpy64, dots2x4, dots8, exp_f32, kv_value, max_f32, mm4x16


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


ROPE_STEP = 64   # rope_tables: positions p = a + b with a a multiple of this, b below it


@entry_point
@njit(cache=True, fastmath=True)
def rope_tables(n_pos, n_rot, base, freq_factors, scale):
    """cos, sin (n_pos, n_rot // 2) for positions 0..n_pos-1: angle p * scale * base^(-2i/n_rot) / factor_i.
    In float64 by the angle sum, p = a + b: cos and sin of the a's (multiples of ROPE_STEP) and of the
    b's, then cos(a+b) = cos a cos b - sin a sin b, sin(a+b) = sin a cos b + cos a sin b (error ~1e-16,
    far below float32's rounding). Direct cos/sin of every angle took 33 ms of a fresh process's start
    for Gemma 3's two 4096 x 128 tables; this evaluates 1/32 of them."""
    half = n_rot // 2
    cos = np.empty((n_pos, half), np.float32)
    sin = np.empty((n_pos, half), np.float32)
    step = ROPE_STEP
    inv = np.empty(half)
    for i in range(half):
        inv[i] = scale * (base ** (-2.0 * i / n_rot) / freq_factors[i])
    cb, sb = np.empty((step, half)), np.empty((step, half))     # (b, i) the offsets' angles
    for b in range(step):
        for i in range(half):
            cb[b, i] = math.cos(b * inv[i])
            sb[b, i] = math.sin(b * inv[i])
    ca, sa = np.empty(half), np.empty(half)
    for a in range(0, n_pos, step):
        for i in range(half):
            ca[i] = math.cos(a * inv[i])
            sa[i] = math.sin(a * inv[i])
        for b in range(min(step, n_pos - a)):
            for i in range(half):
                cos[a + b, i] = ca[i] * cb[b, i] - sa[i] * sb[b, i]
                sin[a + b, i] = sa[i] * cb[b, i] + ca[i] * sb[b, i]
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


KEY_BLOCK = 64   # keys (and values) a pass takes at once, used by every query head of the group while cached


@njit(cache=True, fastmath=True, error_model="numpy", inline="always")
def _scores(q, k_cache, t, kvh, h0, h1, j0, j1, s):
    """s[g, j - j0] (H', >= n) = q[t, h0 + g] . k_cache[kvh, j] for keys j = j0..j1-1 and query heads
    h0..h1-1, unscaled. Where the head size is a multiple of 8: two heads x four keys a pass (dots2x4,
    each key widened once for both), a head left over eight keys a pass (dots8)."""
    hd, n_ctx, ss = q.shape[2], k_cache.shape[1], s.shape[1]
    qbase, kbase = (t * q.shape[1] + h0) * hd, (kvh * n_ctx + j0) * hd
    n, ng = j1 - j0, h1 - h0
    for b0 in range(0, n, KEY_BLOCK):
        b1 = min(n, b0 + KEY_BLOCK)
        g0 = 0
        if hd % 8 == 0:
            while g0 + 2 <= ng:
                j = b0
                while j + 4 <= b1:
                    dots2x4(q, qbase + g0 * hd, hd, k_cache, kbase + j * hd, hd, hd, s, g0 * ss + j, ss)
                    j += 4
                for g in range(g0, g0 + 2):
                    for jj in range(j, b1):
                        a = np.float32(0.0)
                        for d in range(hd):
                            a += q[t, h0 + g, d] * kv_value(k_cache[kvh, j0 + jj, d])
                        s[g, jj] = a
                g0 += 2
        for g in range(g0, ng):
            j = b0
            if hd % 8 == 0:
                while j + 8 <= b1:
                    dots8(q, qbase + g * hd, k_cache, kbase + j * hd, hd, hd, s, g * ss + j)
                    j += 8
            for jj in range(j, b1):
                a = np.float32(0.0)
                for d in range(hd):
                    a += q[t, h0 + g, d] * kv_value(k_cache[kvh, j0 + jj, d])
                s[g, jj] = a


@njit(cache=True, fastmath=True, error_model="numpy", inline="always")
def _weights(s, ng, n, scale, m, l, a0):
    """In place: rows g < ng of s (first n columns) -> exp(scale * s - m), with m[a0 + g] the row's
    highest scaled score and l[a0 + g] the sum of its weights."""
    for g in range(ng):
        best = s[g, 0] * scale      # not -inf: fastmath code may assume there are no infinities
        for j in range(1, n):
            best = max(best, s[g, j] * scale)
        total = np.float32(0.0)
        for j in range(n):
            e = exp_f32(s[g, j] * scale - best)
            s[g, j] = e
            total += e
        m[a0 + g] = best
        l[a0 + g] = total


@njit(cache=True, fastmath=True, error_model="numpy", inline="always")
def _values(s, ng, v_cache, kvh, j0, j1, acc, a0):
    """acc[a0 + g] (hd_v,) = sum_j s[g, j - j0] * v_cache[kvh, j] over j = j0..j1-1, for g < ng. Where hd_v
    is a multiple of 32: two heads x 32 columns a pass in registers (axpy32x2, each value widened once for
    both); a head left over 64 columns a pass (axpy64) where hd_v is a multiple of 64."""
    hd_v, n_ctx, ss = v_cache.shape[2], v_cache.shape[1], s.shape[1]
    vbase = (kvh * n_ctx + j0) * hd_v
    n = j1 - j0
    for g in range(ng):
        for d in range(hd_v):
            acc[a0 + g, d] = 0.0
    pairs = ng // 2 * 2 if hd_v % 32 == 0 else 0
    for b0 in range(0, n, KEY_BLOCK):
        b1 = min(n, b0 + KEY_BLOCK)
        for g in range(0, pairs, 2):
            for c in range(0, hd_v, 32):
                axpy32x2(s, g * ss + b0, ss, v_cache, vbase + b0 * hd_v + c, hd_v, b1 - b0, acc,
                         (a0 + g) * hd_v + c, hd_v)
        for g in range(pairs, ng):
            if hd_v % 64 == 0:
                for c in range(0, hd_v, 64):
                    axpy64(s, g * ss + b0, v_cache, vbase + b0 * hd_v + c, hd_v, b1 - b0, acc, (a0 + g) * hd_v + c)
            else:
                for j in range(b0, b1):
                    w = s[g, j]
                    for d in range(hd_v):
                        acc[a0 + g, d] += w * kv_value(v_cache[kvh, j0 + j, d])


@njit(cache=True, fastmath=True, error_model="numpy", inline="always")
def _attend_heads(q, k_cache, v_cache, pos0, scale, window, out, t, kvh, h0, h1):
    """Queries of token t, heads h0..h1-1 (all reading KV head kvh), over their visible cache positions,
    into out[t, h0:h1]. Each block of keys and values is read once for all of those heads."""
    hd_v = v_cache.shape[2]
    p = pos0 + t
    start = 0 if window <= 0 else max(0, p - window + 1)
    n, ng = p + 1 - start, h1 - h0
    s = np.empty((ng, n), np.float32)       # (heads, n) scores, then weights
    m, l = np.empty(ng, np.float32), np.empty(ng, np.float32)
    acc = np.empty((ng, hd_v), np.float32)
    _scores(q, k_cache, t, kvh, h0, h1, start, p + 1, s)
    _weights(s, ng, n, scale, m, l, 0)
    _values(s, ng, v_cache, kvh, start, p + 1, acc, 0)
    for g in range(ng):
        inv = np.float32(1.0) / l[g]
        for d in range(hd_v):
            out[t, h0 + g, d] = acc[g, d] * inv


@njit(cache=True, fastmath=True, error_model="numpy")
def attend_partial(q, k_cache, v_cache, kvh, h0, h1, j0, j1, scale, s, m, l, acc):
    """Attention of query heads h0..h1-1 of q (1, H, hd) (all reading KV head kvh) over the keys j0..j1-1
    only (j1 > j0), unnormalised: m[h] the highest scaled score, l[h] = sum_j exp(score_j - m[h]) and
    acc[h] (hd_v,) the values weighted so. merge_partials joins such parts over disjoint key ranges (each
    thread of a decode step takes a range: split-K attention, as flash-decoding). s: scratch
    (>= h1 - h0, >= j1 - j0); m, l (H,); acc (H, hd_v)."""
    _scores(q, k_cache, 0, kvh, h0, h1, j0, j1, s)
    _weights(s, h1 - h0, j1 - j0, scale, m, l, h0)
    _values(s, h1 - h0, v_cache, kvh, j0, j1, acc, h0)


@njit(cache=True, fastmath=True, error_model="numpy")
def merge_partials(m, l, acc, out):
    """out (H, hd_v) = softmax-weighted values from attend_partial's parts m, l (P, H) and acc (P, H, hd_v)."""
    n_parts, n_heads = m.shape
    for h in range(n_heads):
        best = m[0, h]
        for i in range(1, n_parts):
            best = max(best, m[i, h])
        total = np.float32(0.0)
        for i in range(n_parts):
            total += exp_f32(m[i, h] - best) * l[i, h]
        for d in range(acc.shape[2]):
            out[h, d] = 0.0
        for i in range(n_parts):
            w = exp_f32(m[i, h] - best) / total
            for d in range(acc.shape[2]):
                out[h, d] += w * acc[i, h, d]


@njit(cache=True, inline="always")
def split_range(pos0, window, p, parts):
    """Keys [j0, j1) of part p of `parts` equal ranges of those a query at pos0 sees (split-K decode)."""
    start = 0 if window <= 0 else max(0, pos0 - window + 1)
    n = pos0 + 1 - start
    return start + p * n // parts, start + (p + 1) * n // parts


@njit(cache=True, fastmath=True, error_model="numpy", inline="always")
def _split_part(q, k_cache, v_cache, pos0, scale, window, p, parts, m, l, acc):
    hkv = k_cache.shape[0]
    group = q.shape[1] // hkv
    j0, j1 = split_range(pos0, window, p, parts)
    s = np.empty((group, j1 - j0), np.float32)
    for kvh in range(hkv):
        attend_partial(q, k_cache, v_cache, kvh, kvh * group, (kvh + 1) * group, j0, j1, scale, s, m[p], l[p],
                       acc[p])


@njit(cache=True, inline="always")
def split_parts(parts, hq, hd_v):
    """Empty m, l (parts, Hq) and acc (parts, Hq, hd_v) for attend_partial's parts."""
    return (np.empty((parts, hq), np.float32), np.empty((parts, hq), np.float32),
            np.empty((parts, hq, hd_v), np.float32))


@njit(cache=True, parallel=True, fastmath=True, error_model="numpy")
def attention_split(q, k_cache, v_cache, pos0, scale, window, out, parts):
    """Decode attention of one token (q (1, Hq, hd) at pos0) by key range: `parts` ranges (split_range)
    across the threads, each for every head, then joined (merge_partials): the same sums as
    decode_token_pooled's split-K attention with nt = parts, so the two decode paths agree to the bit."""
    m, l, acc = split_parts(parts, q.shape[1], v_cache.shape[2])
    for p in prange(parts):
        _split_part(q, k_cache, v_cache, pos0, scale, window, p, parts, m, l, acc)
    merge_partials(m, l, acc, out[0])


@njit(cache=True, fastmath=True, error_model="numpy")
def attention_split_serial(q, k_cache, v_cache, pos0, scale, window, out, parts):
    """`attention_split` on the calling thread (short contexts: cheaper than waking the pool)."""
    m, l, acc = split_parts(parts, q.shape[1], v_cache.shape[2])
    for p in range(parts):
        _split_part(q, k_cache, v_cache, pos0, scale, window, p, parts, m, l, acc)
    merge_partials(m, l, acc, out[0])


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


PREFILL_ROWS = 16   # tokens a work item of attention_prefill takes (x group query heads: a multiple of 16)


@njit(cache=True, fastmath=True, error_model="numpy", inline="always")
def _attend_tile(q, k_cache, v_cache, pos0, scale, window, out, kvh, t0, t1, qt, qpos, kb, st, m, l, bm, acc):
    """Tokens t0..t1-1, every query head reading KV head kvh (nq = (t1 - t0) x group queries, padded to
    npad, a multiple of 16): flash attention over their visible keys by blocks of KEY_BLOCK keys, with an
    online softmax (m, l, acc) per query. Both products of a block run as 4 x 16 register blocks
    (mm4x16): st (keys, queries) = kb (keys, hd) @ qt (hd, queries), the block's keys widened to float32
    once for all the queries; then acc (queries, hd_v) += st^T @ V, V read from the cache as it is.
    Scratch: qt (hd, npad), qpos (npad,) int64, kb (KEY_BLOCK, hd), st (KEY_BLOCK, npad), m, l, bm (npad,),
    acc (npad, hd_v)."""
    hq, hd, hd_v, n_ctx = q.shape[1], q.shape[2], v_cache.shape[2], v_cache.shape[1]
    group = hq // k_cache.shape[0]
    h0, nq, npad = kvh * group, (t1 - t0) * group, qt.shape[1]
    reach = window if window > 0 else n_ctx + 1      # a query at p sees keys p - reach < j <= p
    for i in range(npad):
        r = min(i // group, t1 - t0 - 1)
        qpos[i] = pos0 + t0 + r
        m[i] = np.float32(-1e30)    # not -inf: fastmath code may assume there are no infinities
        l[i] = 0.0
        for d in range(hd_v):
            acc[i, d] = 0.0
    for d in range(hd):
        for i in range(npad):
            qt[d, i] = q[t0 + i // group, h0 + i % group, d] * scale if i < nq else np.float32(0.0)
    j_start = 0 if window <= 0 else max(0, pos0 + t0 - window + 1)    # the first key any of them sees
    j_end = pos0 + t1
    for b0 in range(j_start, j_end, KEY_BLOCK):
        nb = min(j_end - b0, KEY_BLOCK)
        nb4 = (nb + 3) // 4 * 4
        for j in range(nb):
            for d in range(hd):
                kb[j, d] = kv_value(k_cache[kvh, b0 + j, d])
        for j in range(nb, nb4):
            for d in range(hd):
                kb[j, d] = 0.0
        for c0 in range(0, npad, 16):          # 16 queries' columns of qt stay in L1 while the keys pass
            for j0 in range(0, nb4, 4):
                mm4x16(kb, j0 * hd, hd, 1, qt, c0, npad, hd, st, j0 * npad + c0, npad, 0)
        inside = b0 + nb - 1 <= pos0 + t0 and b0 > pos0 + t1 - 1 - reach   # every query sees every key
        for i in range(npad):
            bm[i] = m[i]
        for j in range(nb):
            if inside:
                for i in range(npad):
                    bm[i] = max_f32(bm[i], st[j, i])
            else:
                for i in range(npad):
                    seen = qpos[i] - reach < b0 + j <= qpos[i]
                    bm[i] = max_f32(bm[i], st[j, i] if seen else np.float32(-1e30))
        for i in range(npad):
            if bm[i] > m[i]:                 # a new highest score: rescale what was summed so far
                c = exp_f32(m[i] - bm[i])
                m[i] = bm[i]
                l[i] *= c
                for d in range(hd_v):
                    acc[i, d] *= c
        for j in range(nb):
            if inside:
                for i in range(npad):
                    e = exp_f32(st[j, i] - m[i])
                    st[j, i] = e
                    l[i] += e
            else:
                for i in range(npad):
                    seen = qpos[i] - reach < b0 + j <= qpos[i]
                    e = exp_f32(st[j, i] - m[i]) if seen else np.float32(0.0)
                    st[j, i] = e
                    l[i] += e
        vbase = (kvh * n_ctx + b0) * hd_v
        if hd_v % 16 == 0:
            for c0 in range(0, hd_v, 16):      # 16 value columns of the block stay in L1 for all queries
                for i0 in range(0, npad, 4):
                    mm4x16(st, i0, 1, npad, v_cache, vbase + c0, hd_v, nb, acc, i0 * hd_v + c0, hd_v, 1)
        else:
            for j in range(nb):
                for i in range(nq):
                    w = st[j, i]
                    for d in range(hd_v):
                        acc[i, d] += w * kv_value(v_cache[kvh, b0 + j, d])
    for i in range(nq):
        inv = np.float32(1.0) / l[i]
        for d in range(hd_v):
            out[t0 + i // group, h0 + i % group, d] = acc[i, d] * inv


@entry_point
@njit(cache=True, parallel=True, fastmath=True, error_model="numpy")
def attention_prefill(q, k_cache, v_cache, pos0, scale, window, out):
    """`attention` for a prefill batch: work items of PREFILL_ROWS tokens x one KV head (_attend_tile),
    each block of the cache widened once and used from L1/L2 by all the item's queries. Items are ordered
    so that each thread's share pairs early tokens (fewer keys) with late ones."""
    t_n = q.shape[0]
    hkv, hd, hd_v = k_cache.shape[0], k_cache.shape[2], v_cache.shape[2]
    group = q.shape[1] // hkv
    rows = PREFILL_ROWS
    while rows > 4 and (t_n + rows - 1) // rows * hkv < 4:    # short batches: enough items for the threads
        rows //= 2
    n_tiles = (t_n + rows - 1) // rows
    sc = np.float32(scale)
    for u in prange(n_tiles * hkv):
        kvh, i = u % hkv, u // hkv
        tile = i // 2 if i % 2 == 0 else n_tiles - 1 - i // 2
        t0 = tile * rows
        t1 = min(t_n, t0 + rows)
        npad = ((t1 - t0) * group + 15) // 16 * 16
        qt = np.empty((hd, npad), np.float32)
        qpos = np.empty(npad, np.int64)
        kb = np.empty((KEY_BLOCK, hd), np.float32)
        st = np.empty((KEY_BLOCK, npad), np.float32)
        m, l, bm = np.empty(npad, np.float32), np.empty(npad, np.float32), np.empty(npad, np.float32)
        acc = np.empty((npad, hd_v), np.float32)
        _attend_tile(q, k_cache, v_cache, pos0, sc, window, out, kvh, t0, t1, qt, qpos, kb, st, m, l, bm, acc)


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


PREFILL_MIN_T = 8   # from this many new tokens on, attention runs by tiles of tokens (attention_prefill)


def attend(q, k_cache, v_cache, pos0, scale, window, out):
    """Causal attention of q (T, Hq, hd) over the cache: per token for decode and short batches, by
    tiles of tokens for prefill batches."""
    if q.shape[0] >= PREFILL_MIN_T:
        attention_prefill(q, k_cache, v_cache, pos0, scale, window, out)
    else:
        attention(q, k_cache, v_cache, pos0, scale, window, out)


lean_caches(globals())
