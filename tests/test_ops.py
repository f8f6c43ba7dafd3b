"""Transformer ops against plain NumPy."""
import numpy as np
import pytest
from numba import njit

from localllm.kernels.ops import (attention, attention_blas, attention_serial, gelu_tanh_mul, gelu_tanh_mul_rows,
                                  rmsnorm, rope, rope_tables, silu_mul, silu_mul_rows)
from localllm.kernels.simd import exp_f32


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
                                             (5, 200, 0), (3, 260, 50)])   # the last two: row chunks in threads
def test_attention_kernels(pos0, t_n, window):
    rng = np.random.default_rng(pos0 + t_n)
    hq, hkv, hd, n_ctx = 6, 2, 16, 320
    q = rng.standard_normal((t_n, hq, hd)).astype(np.float32)
    kc = rng.standard_normal((hkv, n_ctx, hd)).astype(np.float32)
    vc = rng.standard_normal((hkv, n_ctx, hd)).astype(np.float32)
    ref = _attention_ref(q, kc, vc, pos0, 0.25, window)
    for fn in (attention, attention_serial, attention_blas):
        out = np.empty((t_n, hq, hd), np.float32)
        fn(q, kc, vc, pos0, np.float32(0.25), window, out)
        np.testing.assert_allclose(out, ref, atol=1e-5)


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
