"""The AVX2 integer-dot decode kernel against references, for every format with integer codes.

Two references: the float64 matmul of the GGUF weights (the kernel quantizes the activation to int8 per
32 columns, so only close), and the same algorithm in NumPy (dequantized weights @ dequantized int8
activation), which it must match to float rounding.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from localllm.kernels import avx2
from localllm.kernels.quantized import matmul_reference
from localllm.kernels.repacked import R, repack
from localllm.quants import FORMATS, _load_all, dequantize_reference
from test_quants import _quantized

_load_all()
FMTS = sorted((f for f in FORMATS.values() if f.codes), key=lambda f: f.type_id)
needs_avx2 = pytest.mark.skipif(not avx2.AVAILABLE, reason="the CPU has no AVX2")


def quantize_activation_reference(x):
    """x float32 (K,) -> x_hat float64 (K,): int8 per 32 columns, d = amax/127 (the kernel's algorithm)."""
    xb = x.astype(np.float32).reshape(-1, 32)
    amax = np.abs(xb).max(axis=1, keepdims=True)
    d = amax / np.float32(127.0)
    inv = np.where(amax > 0, np.float32(127.0) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    xq = np.rint(xb * inv)
    assert np.abs(xq).max() <= 127
    return (xq.astype(np.float64) * d.astype(np.float64)).reshape(-1)


def _run(fmt, raw, x):
    pm = repack(fmt, raw)
    lay = avx2.build_layout(pm.q, pm.gs, pm.nibbles)
    assert lay is not None
    out = np.full(raw.shape[0], np.nan, np.float32)
    avx2.matvec_int8dot(lay.kind, lay.q, pm.scale, pm.offset, x, out)
    return lay, out


@needs_avx2
@pytest.mark.parametrize("fmt", FMTS, ids=[f.name for f in FMTS])
@pytest.mark.parametrize("n_rows,n_cols", [(R * 2, 512), (R * 3 + 5, 256), (7, 768)])
def test_int8dot_matches_references(fmt, n_rows, n_cols):
    raw = _quantized(fmt, n_rows, n_cols, seed=n_rows + n_cols)
    rng = np.random.default_rng(n_rows)
    x = rng.standard_normal(n_cols).astype(np.float32)
    x[:32] *= 20                      # blocks of very different magnitudes
    x[32:64] = 0                      # an all-zero block (d = 0)
    lay, out = _run(fmt, raw, x)
    w = dequantize_reference(fmt, raw).astype(np.float64).reshape(n_rows, n_cols)
    same = w @ quantize_activation_reference(x)
    scale = np.abs(same).max()
    np.testing.assert_allclose(out, same, rtol=0, atol=2e-6 * scale)
    ref = matmul_reference(fmt.type_id, raw, x[None])[0]
    assert np.abs(out - ref).max() < 1e-2 * np.abs(ref).max()


@needs_avx2
@pytest.mark.parametrize("fmt", FMTS, ids=[f.name for f in FMTS])
def test_tiled_matmul_matches_references(fmt, monkeypatch):
    """The prefill kernel (TT rows a tile, T_CHUNK rows a pass, the rows left over one at a time), with the
    scales in the form packing gives them (float16 bits for the legacy formats, two levels for the
    K-quants, float32 for Q3_K): each row as the NumPy reference to float rounding, and as the decode
    kernel gives it."""
    from localllm.kernels import vnni
    from localllm.kernels.repacked import matmul_packed
    monkeypatch.setattr(vnni, "ENABLED", False)
    n_rows, n_cols = R * 2 + 5, 512
    raw = _quantized(fmt, n_rows, n_cols, seed=fmt.type_id + 11)
    pm = repack(fmt, raw)
    lay = pm.int8dot()
    assert not lay.vnni
    form = "two" if pm.scale.ndim == 4 else pm.scale.dtype.name
    assert form == {"Q3_K": "float32"}.get(fmt.name, "two" if fmt.factors is not None else "uint16")
    w = dequantize_reference(fmt, raw).astype(np.float64).reshape(n_rows, n_cols)
    rng = np.random.default_rng(5)
    for t_n in (2, avx2.TT, avx2.TT + 3, avx2.T_CHUNK + avx2.TT + 1):
        x = rng.standard_normal((t_n, n_cols)).astype(np.float32)
        x[0, :32] *= 30                     # blocks of very different magnitudes
        x[-1, 64:96] = 0                    # an all-zero block (d = 0)
        out = np.full((t_n, n_rows), np.nan, np.float32)
        matmul_packed(pm, x, out)
        want = np.stack([w @ quantize_activation_reference(r) for r in x])
        np.testing.assert_allclose(out, want, rtol=0, atol=2e-6 * np.abs(want).max())
        one = np.empty(n_rows, np.float32)
        avx2.matvec_int8dot(lay.kind, lay.q, pm.scale, pm.offset, x[-1], one)
        np.testing.assert_allclose(out[-1], one, rtol=0, atol=1e-6 * np.abs(one).max())


@pytest.mark.parametrize("fmt", FMTS, ids=[f.name for f in FMTS])
def test_dequantize_int8dot_matches_reference(fmt):
    """The prefill path's weights from the int8-dot layout (the only copy of the codes when it is on), every
    mode and both scale-group widths: the reference's to float rounding (1 ulp)."""
    n_rows, n_cols = R * 3 + 5, 512
    raw = _quantized(fmt, n_rows, n_cols, seed=7)
    pm = repack(fmt, raw)
    lay = avx2.build_layout(pm.q, pm.gs, pm.nibbles)
    w = np.full((n_rows, n_cols), np.nan, np.float32)
    avx2.dequantize_int8dot(lay.kind, lay.q, pm.scale, pm.offset, w)
    ref = dequantize_reference(fmt, raw).reshape(n_rows, n_cols)
    np.testing.assert_allclose(w, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())
    rows = np.full((R * 2, n_cols), np.nan, np.float32)    # a slice of row groups, as layers.Linear takes
    avx2.dequantize_int8dot(lay.kind, lay.q[1:3], pm.scale[1:3], pm.offset[1:3], rows)
    np.testing.assert_array_equal(rows, w[R:3 * R])


def test_modes_per_format():
    want = {"Q4_0": avx2.NIBBLES, "Q4_1": avx2.NIBBLES, "Q4_K": avx2.NIBBLES, "Q3_K": avx2.NIBBLES,
            "Q2_K": avx2.NIBBLES, "Q5_0": avx2.NIB5, "Q5_1": avx2.NIB5, "Q5_K": avx2.NIB5,
            "Q6_K": avx2.NIB6, "Q8_0": avx2.S8}
    for fmt in FMTS:
        pm = repack(fmt, _quantized(fmt, R, 256, seed=2))
        lay = avx2.build_layout(pm.q, pm.gs, pm.nibbles)
        assert lay.mode == want[fmt.name], fmt.name
        assert avx2.kind_mode_lo(lay.kind) == (lay.mode, lay.lo)


@needs_avx2
def test_extreme_codes_do_not_saturate():
    """Codes at both ends of their range times |x_q| = 127 everywhere: the int16 sums must not clip."""
    for mode, lo, hi in [(avx2.S8, -128, 127), (avx2.NIB6, -32, 31), (avx2.NIB5, -16, 15)]:
        q = np.empty((1, 64, R), np.int8)
        q[:, 0::2], q[:, 1::2] = lo, hi
        q[:, :, 1::2] = lo                 # rows all at the extreme low code
        scale = np.ones((1, 2, R), np.float32)
        offset = np.zeros((1, 0, R), np.float32)
        lay = avx2.build_layout(q.view(np.uint8), 32, False)
        assert lay.mode == mode
        w = q[0].T.astype(np.float64)      # (R, 64)
        for x in (np.full(64, 1.0, np.float32), np.full(64, -1.0, np.float32),
                  np.where(np.arange(64) % 2, -1.0, 1.0).astype(np.float32)):
            out = np.empty(R, np.float32)
            avx2.matvec_int8dot(lay.kind, lay.q, scale, offset, x, out)
            np.testing.assert_allclose(out, w @ quantize_activation_reference(x), rtol=1e-6)


@pytest.mark.parametrize("setting", ["float", "avx2"])
def test_kernel_selected_by_env(setting):
    code = "from localllm.kernels import avx2; print(avx2.ENABLED)"
    env = dict(os.environ, LOCALLLM_KERNEL=setting)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert res.stdout.strip() == str(setting == "avx2" and avx2.AVAILABLE)


def test_kernel_on_by_default_where_avx2():
    code = "from localllm.kernels import avx2; print(avx2.ENABLED)"
    env = {k: v for k, v in os.environ.items() if k != "LOCALLLM_KERNEL"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert res.stdout.strip() == str(avx2.AVAILABLE)


@needs_avx2
@pytest.mark.parametrize("kernel", ["float", "avx2", "vnni"])
def test_decode_path_each_kernel(tmp_path, monkeypatch, kernel):
    """A tiny model decoded one token at a time with each kernel matches its batched logits (the int8
    activation moves them by ~1e-2 of their scale, the float kernels by float rounding only)."""
    import localllm
    from localllm.kernels import vnni
    from tinymodel import write_tiny_llama
    if kernel == "vnni" and not vnni.AVAILABLE:
        pytest.skip("the CPU has no AVX-512 VNNI")
    enabled = kernel != "float"
    monkeypatch.setattr(avx2, "ENABLED", enabled)
    monkeypatch.setattr(vnni, "ENABLED", kernel == "vnni")
    path = write_tiny_llama(tmp_path / "tiny.gguf", n_layer=2, qtype="Q4_0")
    llm = localllm.load(path, n_ctx=64)
    ids = [int(i) for i in np.random.default_rng(0).integers(0, 200, 12)]
    full = llm.logits(ids)
    from localllm.kernels.decode import KIND
    kinds = llm.model._fused.mt[:, KIND]
    assert (kinds >= avx2.KIND_BASE).any() == enabled
    assert any(avx2.kind_is_vnni(int(k)) for k in kinds) == (kernel == "vnni")
    llm.cache.reset()
    llm._ids = []
    step = [llm._eval(ids[:1])] + [llm._eval_next(t) for t in ids[1:]]
    tol = 3e-2 if enabled else 1e-4
    np.testing.assert_allclose(np.stack(step), full, atol=tol * np.abs(full).max())


@pytest.mark.slow   # compiles every kernel afresh (~50 s)
def test_without_avx2_everything_runs_on_the_float_kernels(tmp_path):
    """A CPU without AVX2 (simulated: llvmlite reports none, so Numba compiles without it too) compiles the stub and decodes on the
    float kernels, whatever LOCALLLM_KERNEL says."""
    from tinymodel import write_tiny_llama
    path = write_tiny_llama(tmp_path / "tiny.gguf", n_layer=1, qtype="Q4_0")
    code = (
        "import llvmlite.binding as b\n"
        "features = b.get_host_cpu_features()\n"
        "features['avx2'] = False\n"
        "b.get_host_cpu_features = lambda: features\n"
        "import numpy as np, localllm\n"
        "from localllm.kernels import avx2\n"
        "assert not avx2.AVAILABLE and not avx2.ENABLED\n"
        f"llm = localllm.load({str(path)!r}, n_ctx=32)\n"
        "full = llm.logits([3, 5, 7])\n"
        "llm.cache.reset(); llm._ids = []\n"
        "step = np.stack([llm._eval([3]), llm._eval_next(5), llm._eval_next(7)])\n"
        "assert np.abs(step - full).max() <= 1e-4 * np.abs(full).max()\n"
        "print('ok')\n")
    env = dict(os.environ, LOCALLLM_KERNEL="avx2", NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]


def _linear(fmt, n_rows, n_cols, seed):
    from localllm.layers import Linear
    lin = Linear.__new__(Linear)
    lin.name, lin.type_id, lin.n_out, lin.n_in, lin.bias, lin._fmt = f"w{seed}", fmt.type_id, n_rows, n_cols, None, fmt
    lin.packed = repack(fmt, _quantized(fmt, n_rows, n_cols, seed=seed))
    return lin


@needs_avx2
def test_fuse_keeps_matrices_of_different_modes_apart(monkeypatch):
    """Qwen2.5 and Gemma 3 have Q5_0 q and k with a Q8_0 v: stacked, all three would take the 8-bit
    mode; apart, q and k keep 5 bits a weight. Matrices of one mode are still stacked."""
    from localllm.layers import fuse
    monkeypatch.setattr(avx2, "ENABLED", True)
    q5, q8 = FORMATS[6], FORMATS[8]                           # Q5_0, Q8_0
    assert (q5.name, q8.name) == ("Q5_0", "Q8_0")
    q, k, v = _linear(q5, 2 * R, 256, 1), _linear(q5, R, 256, 2), _linear(q8, R, 256, 3)
    assert fuse([q, k, v]) is None
    assert avx2.code_mode(q.packed.q, False)[0] == avx2.NIB5 and avx2.code_mode(v.packed.q, False)[0] == avx2.S8
    qk = fuse([q, k])
    assert qk is not None and qk.packed.int8dot().mode == avx2.NIB5
    x = np.random.default_rng(0).standard_normal(256).astype(np.float32)
    want = np.concatenate([dequantize_reference(q5, _quantized(q5, n, 256, seed=s)).reshape(n, 256) @ x
                           for n, s in ((2 * R, 1), (R, 2))])
    got = np.empty(3 * R, np.float32)
    dot = qk.packed.int8dot()
    avx2.matvec_int8dot(dot.kind, dot.q, qk.packed.scale, qk.packed.offset, x, got)
    assert np.abs(got - want).max() < 1e-2 * np.abs(want).max()
