"""Transformer ops against plain NumPy."""
import numpy as np
import pytest
from numba import njit

from localllm.kernels.ops import (attend_partial, attention, attention_prefill, attention_serial, attention_split,
                                  attention_split_serial, gelu_tanh_mul, gelu_tanh_mul_rows, merge_partials, rmsnorm,
                                  rope, rope_tables, silu_mul, silu_mul_rows, split_range)
from localllm.kernels.simd import axpy32x2, dots2x4, exp_f32, f32_to_half, half_to_f32


@njit(fastmath=True, error_model="numpy")
def _exp_all(x, out):
    for i in range(x.size):
        out[i] = exp_f32(x[i])


def test_exp_f32_against_numpy():
    x = np.concatenate([np.linspace(-87, 88, 400_001), [0.0, -0.0, 1e-30, -1e-30]]).astype(np.float32)
    out = np.empty_like(x)
    _exp_all(x, out)
    ref = np.exp(x.astype(np.float64))
    assert np.max(np.abs(out - ref) / ref) < 2e-7
    # outside [-87, 88] it clamps: finite, positive and normal, never inf, NaN or a denormal
    far = np.array([-1e30, -200.0, -88.0, 89.0, 1e30], np.float32)
    out = np.empty_like(far)
    _exp_all(far, out)
    assert np.all(np.isfinite(out)) and np.all(out >= np.finfo(np.float32).tiny)
    np.testing.assert_allclose(out, np.exp(np.clip(far.astype(np.float64), -87, 88)), rtol=2e-7)


def _attention_ref(q, kc, vc, pos0, scale, window):
    t_n, hq, hd = q.shape
    group = hq // kc.shape[0]
    out = np.zeros((t_n, hq, vc.shape[2]))
    for t in range(t_n):
        p = pos0 + t
        lo = 0 if window <= 0 else max(0, p - window + 1)
        for h in range(hq):
            s = kc[h // group, lo:p + 1] @ q[t, h] * scale
            w = np.exp(s - s.max())
            out[t, h] = (w / w.sum()) @ vc[h // group, lo:p + 1]
    return out


@pytest.mark.parametrize("pos0,t_n,window", [(0, 1, 0), (5, 1, 0), (0, 20, 0), (7, 33, 0), (7, 33, 8), (0, 40, 16),
                                             (5, 200, 0), (3, 260, 50), (130, 9, 0), (64, 64, 0), (250, 70, 30),
                                             (0, 3, 0), (100, 5, 2)])
def test_attention_kernels(pos0, t_n, window):
    """Every attention kernel against NumPy. For attention_prefill: partial tiles (t_n not a multiple of
    its 16 tokens, or of 4 where short batches shrink them), key blocks wholly visible and cut by the
    causal edge or the window, windows shorter than a tile, key counts on and off the 64-key blocks."""
    rng = np.random.default_rng(pos0 + t_n)
    hq, hkv, hd, n_ctx = 6, 2, 16, 320
    q = rng.standard_normal((t_n, hq, hd)).astype(np.float32)
    kc = rng.standard_normal((hkv, n_ctx, hd)).astype(np.float32)
    vc = rng.standard_normal((hkv, n_ctx, hd)).astype(np.float32)
    ref = _attention_ref(q, kc, vc, pos0, 0.25, window)
    for fn in (attention, attention_serial, attention_prefill):
        out = np.empty((t_n, hq, hd), np.float32)
        fn(q, kc, vc, pos0, np.float32(0.25), window, out)
        np.testing.assert_allclose(out, ref, atol=1e-5)


@njit
def _dots2x4(q, qat, qstride, k, kat, kstride, n, out, oat, ostride):
    dots2x4(q, qat, qstride, k, kat, kstride, n, out, oat, ostride)


@njit
def _axpy32x2(w, wat, wstride, v, vat, vstride, n, acc, aat, astride):
    axpy32x2(w, wat, wstride, v, vat, vstride, n, acc, aat, astride)


@pytest.mark.parametrize("half", [False, True], ids=["float32", "float16-bits"])
def test_two_head_kernels_against_numpy(half):
    """dots2x4 (two heads x four keys' dot products) and axpy32x2 (two heads' weighted sums of value rows,
    32 columns), at offsets and strides inside larger arrays, over float32 and float16-bit keys/values;
    what they must not touch stays as it was."""
    rng = np.random.default_rng(3)
    hd, n_keys = 72, 11
    q = rng.standard_normal(5 * hd).astype(np.float32)
    k = rng.standard_normal(n_keys * hd + 16).astype(np.float32)
    kc = k.astype(np.float16).view(np.uint16) if half else k
    kf = k.astype(np.float16).astype(np.float32) if half else k
    out = np.full(3 * 20, 7.0, np.float32)
    _dots2x4(q, hd, 2 * hd, kc, 3 * hd + 8, hd, 64, out, 5, 20)   # heads 1 and 3, keys 3..6, 64 of 72 dims
    want = np.full(60, 7.0)
    for h, qh in enumerate((1, 3)):
        for i in range(4):
            want[5 + 20 * h + i] = q[qh * hd:qh * hd + 64] @ kf[(3 + i) * hd + 8:(3 + i) * hd + 72]
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)

    w = rng.standard_normal(2 * 40).astype(np.float32)
    v = rng.standard_normal(9 * 48 + 8).astype(np.float32)
    vc = v.astype(np.float16).view(np.uint16) if half else v
    vf = v.astype(np.float16).astype(np.float32) if half else v
    acc = rng.standard_normal(2 * 50).astype(np.float32)
    before = acc.copy()
    _axpy32x2(w, 3, 40, vc, 8, 48, 9, acc, 10, 50)      # rows j = 0..8 of v from element 8, 48 apart
    want = before.astype(np.float64)
    for h in range(2):
        for j in range(9):
            want[10 + 50 * h:42 + 50 * h] += w[3 + 40 * h + j] * vf[8 + 48 * j:40 + 48 * j]
    np.testing.assert_allclose(acc, want, rtol=1e-5, atol=1e-5)


@njit
def _widen(h, out):
    for i in range(h.size):
        out[i] = half_to_f32(h[i])


@njit
def _narrow(x, out):
    for i in range(x.size):
        out[i] = f32_to_half(x[i])


def test_float16_bits_as_numpy_has_them():
    """The KV cache's float16 (uint16 bits): every finite half widens to its exact value, and float32
    rounds to the half NumPy's astype gives (nearest, ties to even; subnormals; overflow to inf), so
    keys written by decode and by prefill (NumPy) are the same bits."""
    h = np.arange(1 << 16, dtype=np.uint16)
    finite = (h & 0x7C00) != 0x7C00
    out = np.empty(h.size, np.float32)
    _widen(h, out)
    assert np.array_equal(out[finite], h[finite].view(np.float16).astype(np.float32))
    vals = h[finite].view(np.float16).astype(np.float64)
    vals = np.sort(vals[vals >= 0])
    ties = (vals[:-1] + vals[1:]) / 2                         # exactly halfway between neighbours
    rng = np.random.default_rng(0)
    x = np.concatenate([ties, vals, -ties, rng.standard_normal(200_000) * 10.0 ** rng.integers(-9, 6, 200_000),
                        [65504, 65519.99, 65520, 1e6, -1e6, np.inf, -np.inf, 0.0, -0.0, 1e-8, 3e-8]]).astype(np.float32)
    got = np.empty(x.size, np.uint16)
    _narrow(x, got)
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).view(np.uint16)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("half", [False, True], ids=["float32-cache", "float16-cache"])
@pytest.mark.parametrize("hq,hkv,hd", [(6, 2, 64), (4, 1, 256), (9, 3, 80), (14, 2, 64), (4, 2, 72)])
def test_attention_head_sizes(hq, hkv, hd, half):
    """The vector paths (eight keys a dot product pass, 64 value columns in registers: head sizes that
    are multiples of 8 / 64) and the plain loops (80: a multiple of 8, not of 64; 72, not of 16:
    attention_prefill's plain value loop), over key counts that
    are and are not multiples of 8 and of the 64-key block; over a float32 cache and over the model's
    float16 one (uint16 bits, widened in the kernels)."""
    rng = np.random.default_rng(hd + hq)
    n_ctx = 200
    kc = rng.standard_normal((hkv, n_ctx, hd)).astype(np.float32)
    vc = rng.standard_normal((hkv, n_ctx, hd)).astype(np.float32)
    if half:
        kc, vc = kc.astype(np.float16), vc.astype(np.float16)
    for pos0, t_n, window in [(0, 1, 0), (6, 1, 0), (70, 1, 0), (150, 1, 0), (150, 1, 67), (3, 20, 0), (100, 37, 0),
                              (120, 40, 67)]:
        q = rng.standard_normal((t_n, hq, hd)).astype(np.float32)
        ref = _attention_ref(q, kc.astype(np.float32), vc.astype(np.float32), pos0, 0.125, window)
        for fn in (attention, attention_serial, attention_prefill):
            out = np.empty((t_n, hq, hd), np.float32)
            cache = (kc.view(np.uint16), vc.view(np.uint16)) if half else (kc, vc)
            fn(q, *cache, pos0, np.float32(0.125), window, out)
            np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("parts", [1, 2, 3, 5])
@pytest.mark.parametrize("pos0,window", [(40, 0), (199, 0), (199, 50), (12, 0)])
def test_attention_by_key_range(parts, pos0, window):
    """Split-K decode attention: parts over disjoint key ranges (split_range) joined by merge_partials
    give the attention over all the keys; attention_split (threads) and attention_split_serial agree to
    the bit (the decode paths rely on it)."""
    rng = np.random.default_rng(parts * 1000 + pos0)
    hq, hkv, hd, n_ctx = 6, 2, 64, 200
    q = rng.standard_normal((1, hq, hd)).astype(np.float32)
    kc = rng.standard_normal((hkv, n_ctx, hd)).astype(np.float32)
    vc = rng.standard_normal((hkv, n_ctx, hd)).astype(np.float32)
    ref = _attention_ref(q, kc, vc, pos0, 0.125, window)
    start = 0 if window <= 0 else pos0 - window + 1
    bounds = [split_range(pos0, window, p, parts) for p in range(parts)]
    assert bounds[0][0] == start and bounds[-1][1] == pos0 + 1
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))     # disjoint, in order, covering all
    out = np.empty((1, hq, hd), np.float32)
    attention_split(q, kc, vc, pos0, np.float32(0.125), window, out, parts)
    np.testing.assert_allclose(out, ref, atol=2e-6)
    serial = np.empty_like(out)
    attention_split_serial(q, kc, vc, pos0, np.float32(0.125), window, serial, parts)
    assert np.array_equal(out, serial)
    # the parts themselves: highest score, weight sum and weighted values of their own keys
    group = hq // hkv
    m, l = np.empty((parts, hq), np.float32), np.empty((parts, hq), np.float32)
    acc = np.empty((parts, hq, hd), np.float32)
    s = np.empty((group, n_ctx), np.float32)
    assert all(j1 > j0 for j0, j1 in bounds)
    for p, (j0, j1) in enumerate(bounds):
        for kvh in range(hkv):
            attend_partial(q, kc, vc, kvh, kvh * group, (kvh + 1) * group, j0, j1, np.float32(0.125), s, m[p], l[p],
                           acc[p])
        for h in range(hq):
            sc = kc[h // group, j0:j1].astype(np.float64) @ q[0, h] * 0.125
            w = np.exp(sc - sc.max())
            assert m[p, h] == pytest.approx(sc.max(), abs=1e-5)
            assert l[p, h] == pytest.approx(w.sum(), rel=1e-5)
            np.testing.assert_allclose(acc[p, h], w @ vc[h // group, j0:j1], rtol=1e-5, atol=1e-5)
    joined = np.empty((hq, hd), np.float32)
    merge_partials(m, l, acc, joined)
    np.testing.assert_allclose(joined, ref[0], atol=2e-6)


def test_rmsnorm_and_activations():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 40)).astype(np.float32)
    w = rng.standard_normal(40).astype(np.float32)
    out = np.empty_like(x)
    rmsnorm(x, w, 1e-5, out)
    np.testing.assert_allclose(out, x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5) * w, rtol=1e-5)
    g, u = x, x[::-1].copy()
    for fn in (silu_mul, silu_mul_rows):
        fn(g, u, out)
        np.testing.assert_allclose(out, g / (1 + np.exp(-g)) * u, rtol=1e-5, atol=1e-6)
    gelu = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g ** 3)))
    for fn in (gelu_tanh_mul, gelu_tanh_mul_rows):
        fn(g, u, out)
        np.testing.assert_allclose(out, gelu * u, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("neox", [False, True])
def test_rope(neox):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 8)).astype(np.float32)
    cos, sin = rope_tables(16, 8, 10000.0, np.ones(4), 1.0)
    y = x.copy()
    rope(y, 5, cos, sin, neox)
    ang = np.arange(5, 9)[:, None, None] * 10000.0 ** (-np.arange(0, 8, 2) / 8)
    a, b = (x[..., :4], x[..., 4:]) if neox else (x[..., 0::2], x[..., 1::2])
    ra, rb = a * np.cos(ang) - b * np.sin(ang), a * np.sin(ang) + b * np.cos(ang)
    ya, yb = (y[..., :4], y[..., 4:]) if neox else (y[..., 0::2], y[..., 1::2])
    np.testing.assert_allclose(ya, ra, atol=1e-5)
    np.testing.assert_allclose(yb, rb, atol=1e-5)


@pytest.mark.parametrize("n_pos,n_rot,base,scale", [(4096, 256, 1e6, 0.125), (4096, 256, 1e4, 1.0), (200, 64, 1e6, 1.0),
                                                   (64, 8, 500.0, 1.0), (65, 8, 500.0, 1.0), (1, 2, 1e4, 1.0)])
def test_rope_tables_against_numpy(n_pos, n_rot, base, scale):
    """The angle-sum tables equal cos/sin of each angle in float64, to float32 rounding, at every
    position (the offsets' table, the multiples of ROPE_STEP and partial last steps) and frequency."""
    rng = np.random.default_rng(n_pos + n_rot)
    factors = rng.uniform(0.5, 4.0, n_rot // 2)
    cos, sin = rope_tables(n_pos, n_rot, base, factors, scale)
    ang = (np.arange(n_pos)[:, None] * scale) * (base ** (-2.0 * np.arange(n_rot // 2) / n_rot) / factors)
    assert cos.dtype == sin.dtype == np.float32 and cos.shape == sin.shape == (n_pos, n_rot // 2)
    np.testing.assert_allclose(cos, np.cos(ang), rtol=0, atol=1.2e-7)
    np.testing.assert_allclose(sin, np.sin(ang), rtol=0, atol=1.2e-7)


_FALLBACK = """
import numpy as np
from localllm.kernels import simd
from localllm.kernels.ops import attention_serial
assert not simd.F16C
rng = np.random.default_rng(1)
q = rng.standard_normal((1, 4, 64)).astype(np.float32)
kc, vc = (rng.standard_normal((2, 80, 64)).astype(np.float16) for _ in range(2))
kc[0, 3, :8] = np.float16(3e-6)                      # subnormal halves
out = np.empty((1, 4, 64), np.float32)
attention_serial(q, kc.view(np.uint16), vc.view(np.uint16), 70, np.float32(0.125), 0, out)
np.save(__import__("sys").argv[1], out)
"""


def test_float16_cache_without_hardware_conversion(tmp_path):
    """LOCALLLM_F16C=0 (what a CPU without F16C gets): the integer widening of float16 in the vector
    kernels, in a fresh process (the switch is compiled in, and keys the kernel cache)."""
    import subprocess
    import sys

    out = tmp_path / "out.npy"
    env = {**__import__("os").environ, "LOCALLLM_F16C": "0"}
    r = subprocess.run([sys.executable, "-c", _FALLBACK, str(out)], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rng = np.random.default_rng(1)
    q = rng.standard_normal((1, 4, 64)).astype(np.float32)
    kc, vc = (rng.standard_normal((2, 80, 64)).astype(np.float16) for _ in range(2))
    kc[0, 3, :8] = np.float16(3e-6)
    ref = _attention_ref(q, kc.astype(np.float32), vc.astype(np.float32), 70, 0.125, 0)
    np.testing.assert_allclose(np.load(out), ref, atol=2e-6)
