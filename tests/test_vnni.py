"""The AVX-512 VNNI kernels (decode and prefill) against references, for every format with integer codes.

The same two references as the AVX2 kernel's (test_avx2.py): the NumPy algorithm (dequantized weights @
the int8-quantized activation), matched to float rounding, and the float64 product of the GGUF weights,
matched to the activation quantization. Batch sizes cover one row (decode), whole tiles, a tile's
leftover rows and more than one pass over the matrix.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from localllm.kernels import avx2, vnni
from localllm.kernels.quantized import matmul_reference
from localllm.kernels.repacked import R, matmul_packed, packed_matmul, repack
from localllm.quants import FORMATS, _load_all, dequantize_reference
from test_avx2 import quantize_activation_reference
from test_quants import _quantized

_load_all()
FMTS = sorted((f for f in FORMATS.values() if f.codes), key=lambda f: f.type_id)
needs_vnni = pytest.mark.skipif(not vnni.AVAILABLE, reason="the CPU has no AVX-512 VNNI (or LLVM < 22)")
needs_avx2 = pytest.mark.skipif(not avx2.AVAILABLE, reason="the CPU has no AVX2")
# the integer-dot kernels that take float16 and two-level scales: each where the CPU has it
DOT_KERNELS = [pytest.param("avx2", marks=needs_avx2), pytest.param("vnni", marks=needs_vnni)]


def _layout(fmt, raw, use_vnni=True):
    pm = repack(fmt, raw)
    lay = avx2.build_layout(pm.q, pm.gs, pm.nibbles, use_vnni)
    assert lay is not None and lay.vnni == use_vnni
    return pm, lay


@needs_vnni
@pytest.mark.parametrize("fmt", FMTS, ids=[f.name for f in FMTS])
@pytest.mark.parametrize("n_rows,n_cols", [(R * 3 + 5, 512), (R, 256)])
def test_vnni_matches_references(fmt, n_rows, n_cols):
    raw = _quantized(fmt, n_rows, n_cols, seed=n_rows + n_cols)
    pm, lay = _layout(fmt, raw)
    w = dequantize_reference(fmt, raw).astype(np.float64).reshape(n_rows, n_cols)
    for t_n in (1, 3, vnni.TT * 2 + 1, vnni.TT + 5, vnni.T_CHUNK + vnni.TT + 7):
        x = np.random.default_rng(t_n).standard_normal((t_n, n_cols)).astype(np.float32)
        x[:, :32] *= 20                   # blocks of very different magnitudes
        x[:, 32:64] = 0                   # an all-zero block (d = 0)
        out = np.full((t_n, n_rows), np.nan, np.float32)
        packed_matmul(lay.kind, lay.q, pm.scale, pm.offset, x, out)
        same = np.stack([w @ quantize_activation_reference(row) for row in x])
        np.testing.assert_allclose(out, same, rtol=0, atol=2e-6 * np.abs(same).max(), err_msg=f"T={t_n}")
        ref = matmul_reference(fmt.type_id, raw, x)
        assert np.abs(out - ref).max() < 3e-2 * np.abs(ref).max()
        row = np.empty(n_rows, np.float32)     # the AVX2 kernel on the same bytes: the same arithmetic
        avx2.matvec_int8dot(avx2.encode_kind(lay.mode, lay.lo), lay.q, pm.scale, pm.offset, x[-1], row)
        np.testing.assert_allclose(out[-1], row, rtol=0, atol=1e-6 * np.abs(row).max())


if vnni.AVAILABLE:
    from numba import njit

    def _tiles_of_width(lanes, tt=2):
        """Rows 0..tt-1 against every row group, through a tile of `lanes` octets a vector."""
        group = vnni._make_group(vnni._make_tile(tt, lanes), tt)

        @njit
        def run(mode, halves, corr, q, scale, offset, has_off, xq, xd, xqs, out):
            dv, cv, xsv = np.empty(tt, np.float32), np.empty(2 * tt, np.int32), np.empty(2 * tt, np.float32)
            acc = np.empty((tt, R), np.float32)
            for g in range(q.shape[0]):
                group(mode, halves, corr, g, 0, q, scale, offset, has_off, xq, xd, xqs, dv, cv, xsv, acc)
                out[:, g * R:(g + 1) * R] = acc
        return run


@needs_vnni
@pytest.mark.parametrize("fmt", [f for f in FMTS if f.name in ("Q4_1", "Q5_0", "Q6_K", "Q8_0", "Q4_K")],
                         ids=lambda f: f.name)
def test_512_bit_tiles_equal_256_bit_tiles(fmt):
    """The kernel's 512-bit vectors (two row octets each) against its 256-bit form (one octet each, as
    before 2026-12-08): the same integer dots and the same float operations a row, so bit for bit."""
    raw = _quantized(fmt, R * 2, 512, seed=3)
    pm, lay = _layout(fmt, raw)
    x = np.random.default_rng(5).standard_normal((2, 512)).astype(np.float32)
    xq, xd, xqs = avx2.quantized(x)
    mode, lo = avx2.kind_mode_lo(lay.kind)
    halves = avx2.n_groups.py_func(pm.scale) // xd.shape[1]
    corr = vnni._corrections.py_func(mode, lo)
    outs = []
    for lanes in (1, 2):
        out = np.full((2, R * 2), np.nan, np.float32)
        _tiles_of_width(lanes)(mode, halves, corr, lay.q, pm.scale, pm.offset, pm.offset.shape[1] > 0, xq, xd, xqs,
                               out)
        outs.append(out)
    assert not np.isnan(outs[1]).any()
    np.testing.assert_array_equal(outs[0], outs[1])


@needs_vnni
def test_only_the_one_row_tile_prefetches():
    """Decode's tile (one activation row) asks for the lines vnni.PREFETCH bytes ahead of its block, one
    prefetch a 64-byte line; prefill's tiles, which read each block again for every tile
    of rows, do not."""
    for tt, want in ((1, True), (2, False)):
        run = _tiles_of_width(2, tt)
        fmt = FORMATS[8]                                  # Q8_0: 1024 bytes a block, 16 lines
        pm, lay = _layout(fmt, _quantized(fmt, R, 64, seed=1))
        xq, xd, xqs = avx2.quantized(np.ones((tt, 64), np.float32))
        run(avx2.S8, 1, -128, lay.q, pm.scale, pm.offset, False, xq, xd, xqs, np.empty((tt, R), np.float32))
        (ir,) = run.inspect_llvm().values()
        assert ("@llvm.prefetch" in ir) == want
        if want:                                          # at least a block's 16 lines (Q8_0's body)
            assert ir.count("call void @llvm.prefetch") >= 16


@needs_vnni
def test_extreme_codes_do_not_overflow():
    """Codes at both ends of their range (Q8_0's -128..127 flipped to u8) times |x_q| = 127 everywhere."""
    for mode, lo, hi in [(avx2.S8, -128, 127), (avx2.NIB6, -32, 31), (avx2.NIB5, -16, 15)]:
        q = np.empty((1, 64, R), np.int8)
        q[:, 0::2], q[:, 1::2] = lo, hi
        q[:, :, 1::2] = lo
        scale = np.ones((1, 2, R), np.float32)
        offset = np.zeros((1, 0, R), np.float32)
        lay = avx2.build_layout(q.view(np.uint8), 32, False, True)
        assert lay.mode == mode
        w = q[0].T.astype(np.float64)      # (R, 64)
        x = np.stack([np.full(64, 1.0, np.float32), np.full(64, -1.0, np.float32),
                      np.where(np.arange(64) % 2, -1.0, 1.0).astype(np.float32)] * 2)   # (6, 64)
        out = np.empty((len(x), R), np.float32)
        vnni.matmul_vnni(lay.kind, lay.q, scale, offset, x, out)
        want = np.stack([w @ quantize_activation_reference(r) for r in x])
        np.testing.assert_allclose(out, want, rtol=1e-6)


def test_kind_carries_the_kernel():
    for mode, lo in [(avx2.NIBBLES, 0), (avx2.NIB5, -16), (avx2.NIB6, -32), (avx2.S8, 0)]:
        for flag in (False, True):
            for half in (False, True):
                kind = avx2.encode_kind(mode, lo, flag, half)
                assert avx2.kind_mode_lo(kind) == (mode, lo)
                assert avx2.kind_is_vnni(kind) == flag
                assert avx2.kind_is_scale16(kind) == half
    for k in (0, 1):
        assert not avx2.kind_is_vnni(k) and not avx2.kind_is_scale16(k)


@pytest.mark.parametrize("kernel", DOT_KERNELS)
@pytest.mark.parametrize("fmt", FMTS, ids=[f.name for f in FMTS])
def test_float16_scales_only_where_exact_and_same_results(fmt, kernel, monkeypatch):
    """With LOCALLLM_SCALE16 on, an integer-dot layout (AVX2 or VNNI) keeps scales and offsets as float16
    bits exactly when float16 holds every one of them (always for the legacy formats, whose d and m are
    float16 in the file), and its dequantized rows equal the float32-scale layout's bit for bit, its products
    too with VNNI (to float32 rounding with AVX2)."""
    from localllm.layers import Linear

    raw = _quantized(fmt, R * 2, 512, seed=fmt.type_id)
    x = np.random.default_rng(0).standard_normal((vnni.TT + 3, 512)).astype(np.float32)
    got = {}
    monkeypatch.setattr(avx2, "TWO_LEVEL", False)
    monkeypatch.setattr(vnni, "ENABLED", kernel == "vnni")
    for half in (False, True):
        monkeypatch.setattr(avx2, "SCALE16", half)
        pm = repack(fmt, raw)
        f32 = (pm.scale.copy(), pm.offset.copy())
        lay = pm.int8dot()
        assert lay.vnni == (kernel == "vnni")
        exact = all(np.array_equal(a.astype(np.float16).astype(np.float32), a) for a in f32)
        assert lay.scale16 == (half and exact) == avx2.kind_is_scale16(lay.kind)
        assert pm.scale.dtype == (np.uint16 if lay.scale16 else np.float32)
        for a, b in zip(pm.scales_f32(), f32):
            np.testing.assert_array_equal(a, b)
        out = np.empty((len(x), R * 2), np.float32)
        matmul_packed(pm, x, out)
        rows = np.empty((R * 2, 512), np.float32)
        lin = Linear.__new__(Linear)
        lin.packed = pm
        lin._dequantize(0, R * 2, rows)
        got[half] = out, rows
    if fmt.name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
        assert lay.scale16
    np.testing.assert_array_equal(got[True][1], got[False][1])
    if kernel == "vnni":
        np.testing.assert_array_equal(got[True][0], got[False][0])
    else:   # the AVX2 block's fast-math multiplies may be ordered otherwise: float32 rounding apart
        scale = np.abs(got[False][0]).max()
        np.testing.assert_allclose(got[True][0], got[False][0], rtol=0, atol=1e-6 * scale)


KFMTS = [f for f in FMTS if f.factors is not None]


@pytest.mark.parametrize("kernel", DOT_KERNELS)
@pytest.mark.parametrize("fmt", KFMTS, ids=[f.name for f in KFMTS])
def test_two_level_scales(fmt, kernel, monkeypatch):
    """K-quant scales in two levels (int8 per group, float32 per super-block), for the AVX2 and the VNNI
    kernel: the factors give the codes' float32 scales and offsets exactly, the dequantized rows are the
    same bit for bit, products agree to float32 rounding (the kernel's multiplies in another order), and
    fewer bytes are kept. Q3_K's 4-bit codes fold their shift into the offsets (repack), so it keeps
    float32 scales."""
    from localllm.kernels.repacked import from_two_level
    from localllm.layers import Linear

    raw = _quantized(fmt, R * 2 + 5, 512, seed=fmt.type_id)
    blocks = raw.reshape(-1, fmt.type_size)
    _, scale, offset = fmt.codes(blocks)
    d, sc, dm, m = fmt.factors(blocks)
    np.testing.assert_array_equal(d * sc.astype(np.float32), scale)
    np.testing.assert_array_equal(dm * m.astype(np.float32), offset)
    x = np.random.default_rng(1).standard_normal((vnni.TT + 3, 512)).astype(np.float32)
    got = {}
    monkeypatch.setattr(vnni, "ENABLED", kernel == "vnni")
    for two in (False, True):
        monkeypatch.setattr(avx2, "TWO_LEVEL", two)
        pm = repack(fmt, raw)
        f32 = (pm.scale.copy(), pm.offset.copy())
        lay = pm.int8dot()
        assert lay.vnni == (kernel == "vnni")
        lo, hi = fmt.code_range
        want = two and not (hi - lo <= 15 and lo != 0)
        assert lay.two_level == want == avx2.kind_is_two_level(lay.kind) == (pm.scale.ndim == 4)
        assert pm.factors is None
        for a, b in zip(pm.scales_f32(), f32):
            np.testing.assert_array_equal(a, b)
        if want:
            assert pm.scale.nbytes * 2 < f32[0].nbytes
            np.testing.assert_array_equal(from_two_level(pm.scale, pm.scale.shape[2] - 4), f32[0])
        out = np.empty((len(x), R * 2 + 5), np.float32)
        matmul_packed(pm, x, out)
        one = np.empty((1, R * 2 + 5), np.float32)
        matmul_packed(pm, x[:1], one)
        rows = np.empty((R * 2 + 5, 512), np.float32)
        lin = Linear.__new__(Linear)
        lin.packed = pm
        lin._dequantize(0, R * 2 + 5, rows)
        got[two] = out, one, rows
    scale = np.abs(got[False][0]).max()
    np.testing.assert_allclose(got[True][0], got[False][0], rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(got[True][1], got[False][1], rtol=0, atol=1e-6 * scale)
    np.testing.assert_array_equal(got[True][2], got[False][2])
    np.testing.assert_allclose(got[True][1], x[:1] @ got[True][2].T, rtol=0, atol=0.05 * scale)


@pytest.mark.parametrize("setting,want", [("auto", True), ("avx2", False), ("float", False)])
def test_kernel_selected_by_env(setting, want):
    code = "from localllm.kernels import vnni; print(vnni.ENABLED)"
    env = dict(os.environ, LOCALLLM_KERNEL=setting)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert res.stdout.strip() == str(want and vnni.AVAILABLE)


@needs_vnni
def test_tiny_model_prefill_and_decode_on_vnni(tmp_path, monkeypatch):
    """A tiny model on the VNNI kernels: every matrix has their kind, batched prefill (the tile kernel),
    small batches and one-token decode agree with the float kernels' logits within the activation
    quantization, and pick the same tokens."""
    import localllm
    from localllm.kernels.decode import GROUPS, KIND
    from tinymodel import write_tiny_llama

    path = write_tiny_llama(tmp_path / "tiny.gguf", n_layer=2, qtype="Q4_1")
    ids = [int(i) for i in np.random.default_rng(1).integers(0, 200, 40)]
    monkeypatch.setattr(avx2, "ENABLED", False)
    want = localllm.load(path, n_ctx=64).logits(ids)
    monkeypatch.setattr(avx2, "ENABLED", True)
    monkeypatch.setattr(vnni, "ENABLED", True)
    llm = localllm.load(path, n_ctx=64, n_batch=16)
    mt = llm.model._fused.mt
    kinds = mt[mt[:, GROUPS] > 0, KIND]         # the filled slots of the decode table
    assert len(kinds) and all(avx2.kind_is_vnni(int(k)) for k in kinds)
    assert all(avx2.kind_is_scale16(int(k)) for k in kinds) == avx2.SCALE16   # Q4_1: float16 d and m
    tol = 3e-2 * np.abs(want).max()
    batched = llm.logits(ids)                 # chunks of 16: the tile kernel, TT rows at a time
    llm.cache.reset()
    llm._ids = []
    step = np.stack([llm._eval(ids[:1])] + [llm._eval_next(t) for t in ids[1:]])
    for got in (batched, step):
        np.testing.assert_allclose(got, want, atol=tol)
        assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.95
