"""Kernels compiled for the matrix variants a model has (avx2.rows_v, tile_v; decode.pooled_decoder;
repacked.int8dot_entry; quantized.dequantize_row), and the run-time choice among all of them where the
variant is not a compile-time constant: the same results either way."""
import numpy as np
import pytest
from numba import njit

import localllm
from localllm.kernels import avx2, decode, entry, quantized, vnni
from localllm.kernels.repacked import R, matmul_packed, repack
from localllm.quants import FORMATS, _load_all
from test_quants import _quantized
from tinymodel import write_tiny_llama

_load_all()
FMTS = sorted((f for f in FORMATS.values() if f.codes), key=lambda f: f.type_id)
needs_avx2 = pytest.mark.skipif(not avx2.AVAILABLE, reason="the CPU has no AVX2")


@pytest.fixture(autouse=True)
def specialize(monkeypatch):
    """The per-model compiling that users get (the rest of the suite compiles every format at once)."""
    monkeypatch.setattr(entry, "SPECIALIZE", True)


def _packed(fmt, n_rows, n_cols, seed=0):
    pm = repack(fmt, _quantized(fmt, n_rows, n_cols, seed=seed))
    assert pm.int8dot() is not None
    return pm


@needs_avx2
@pytest.mark.parametrize("fmt", FMTS, ids=[f.name for f in FMTS])
def test_variant_of_a_matrix(fmt):
    pm = _packed(fmt, R, 256)
    v = avx2.matrix_variant(pm.kind, pm.scale, pm.offset, pm.n_cols)
    mode, halves, offsets = avx2.variant_parts(v)
    assert mode == pm.dot.mode
    assert halves == (2 if pm.gs == 16 else 1)
    assert offsets == (pm.offset.shape[1] > 0)
    assert (v & avx2.SCALE16_BIT != 0) == pm.dot.scale16 and (v & avx2.TWO_LEVEL_BIT != 0) == pm.dot.two_level
    assert avx2.variant_of(pm.kind, halves, offsets) == v        # the compiled one agrees
    lo_free = avx2.encode_kind(pm.dot.mode, 0, pm.dot.vnni, pm.dot.scale16, pm.dot.two_level)
    assert avx2.variant_of.py_func(lo_free, halves, offsets) == v   # the code shift is not part of it


# every mode (nibbles, 5, 6 and 8 bits), offsets or none, one half or two, float16 or two-level scales
SOME = [f for f in FMTS if f.name in ("Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q6_K")]


@needs_avx2
@pytest.mark.parametrize("fmt", SOME, ids=[f.name for f in SOME])
def test_one_variant_matches_the_run_time_choice(fmt):
    """matmul_packed's entry point, compiled for this matrix's variant alone, against matvec_int8dot,
    which chooses among every variant's kernel at run time."""
    pm = _packed(fmt, 3 * R + 5, 512, seed=7)
    if pm.dot.vnni:
        pytest.skip("the VNNI kernels choose at run time")
    x = np.random.default_rng(1).standard_normal((6, pm.n_cols)).astype(np.float32)
    got = matmul_packed(pm, x, np.empty((6, pm.n_rows), np.float32))            # 4-row tile, 2 rows alone
    one = matmul_packed(pm, x[:1], np.empty((1, pm.n_rows), np.float32))        # the decode kernel
    for t in range(6):
        want = np.empty(pm.n_rows, np.float32)
        avx2.matvec_int8dot(pm.kind, pm.codes, pm.scale, pm.offset, x[t], want)
        np.testing.assert_allclose(got[t], want, rtol=0, atol=1e-5 * np.abs(want).max())
        if t == 0:
            np.testing.assert_array_equal(one[0], want)


_V_Q4_1 = avx2.variant_of.py_func(avx2.encode_kind(avx2.NIBBLES, 0, scale16=True), 1, True)


@njit
def _tiles(n, q, xq, scale, offset, dv, cv, xsv, acc):
    for b in range(n):                            # a loop over blocks, as the prefill kernel's
        avx2.tile_v(_V_Q4_1, q, 0, xq, 0, 32, scale, 0, offset, 0, 0, dv, cv, xsv, True, acc)


@needs_avx2
def test_the_prefill_tile_kernel_is_inlined(monkeypatch):
    """tile_v's kernel goes into the loop that calls it once a block: compiled as a function of its own
    and called there, prefill ran 10-25 % slower (avx2.py, above _ol_tile_v)."""
    monkeypatch.setattr(vnni, "ENABLED", False)   # the AVX2 layout, on VNNI CPUs too
    fmt = FORMATS[3]                              # Q4_1: nibbles, offsets, float16 scales, one half
    pm = _packed(fmt, R, 256)
    assert avx2.matrix_variant(pm.kind, pm.scale, pm.offset, pm.n_cols) == _V_Q4_1
    tt = avx2.TT
    _tiles(0, pm.codes, np.zeros((tt, 256), np.int8), pm.scale, pm.offset, np.zeros(tt, np.float32),
           np.zeros(2 * tt, np.int32), np.zeros(2 * tt, np.float32), np.zeros((tt, R), np.float32))
    (ir,) = _tiles.inspect_llvm().values()
    assert "llvm.x86.avx2.pmadd.ub.sw" in ir      # the kernel's code is there
    assert "_ol_tile_v" not in ir                 # and no function of the overload's is left to call


@njit
def _gather_any(type_id, w, ids, out):
    for i in range(ids.shape[0]):                 # type_id a run-time value: the switch over all types
        quantized.dequantize_row(type_id, w[ids[i]], out[i])


@pytest.mark.parametrize("type_id", [2, 3, 8, 12, 14])
def test_rows_of_one_type_match_the_switch(type_id):
    fmt = FORMATS[type_id]
    raw = _quantized(fmt, 5, 256, seed=type_id)
    ids = np.array([4, 0, 2], np.int64)
    got, want = np.empty((3, 256), np.float32), np.empty((3, 256), np.float32)
    quantized.gather_rows(type_id, raw, ids, got)
    _gather_any(type_id, raw, ids, want)
    np.testing.assert_array_equal(got, want)
    rows = np.empty((5, 256), np.float32)
    quantized.dequantize_rows(type_id, raw, rows)
    np.testing.assert_array_equal(rows[ids], want)


def _steps(llm, ids):
    cache = llm.model.make_cache(64)
    return np.stack([llm.model.forward(np.array([t]), j, cache)[0].copy() for j, t in enumerate(ids)])


@needs_avx2
def test_pooled_decoder_is_compiled_for_the_models_variants(tmp_path):
    llm = localllm.load(write_tiny_llama(tmp_path / "tiny.gguf", qtype="Q4_1"), n_ctx=64)
    f = llm.model._fused
    ids = [5, 17, 40, 99, 3]
    got = _steps(llm, ids)
    mt = f.mt[f.mt[:, decode.GROUPS] > 0]
    variants = sorted(set(mt[:, decode.VARIANT].tolist()))
    assert f._slots == (*variants, *[decode.NONE] * (6 - len(variants)))
    fn = f.pooled_fn.py_func                      # the closure whose constants the kernels are compiled for
    consts = dict(zip(fn.__code__.co_freevars, (c.cell_contents for c in fn.__closure__)))
    assert consts == {**{f"s{j}": s for j, s in enumerate(f._slots)}, "et": llm.model.embed.type_id}
    f.pooled = False                              # decode_token: every variant, chosen at run time
    want = _steps(llm, ids)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    assert (got.argmax(-1) == want.argmax(-1)).all()


@needs_avx2
def test_more_variants_than_slots_take_the_run_time_choice(tmp_path, monkeypatch):
    """(decode by the run-time choice itself: the rest of the suite, which compiles that way)"""
    monkeypatch.setattr(decode, "SLOTS", 0)
    llm = localllm.load(write_tiny_llama(tmp_path / "tiny.gguf", qtype="Q4_1"), n_ctx=64)
    assert llm.model._fused._slots == (decode.ANY, *[decode.NONE] * 5)
