"""Repacked row-interleaved kernels against the NumPy reference, for every format with integer codes."""
import numpy as np
import pytest

from localllm.kernels.quantized import matmul_reference
from localllm.kernels.repacked import R, dequantize_packed, matmul_packed, repack
from localllm.quants import FORMATS, _load_all, dequantize_reference
from test_quants import _quantized

_load_all()
FMTS = sorted((f for f in FORMATS.values() if f.codes), key=lambda f: f.type_id)


@pytest.mark.parametrize("fmt", FMTS, ids=[f.name for f in FMTS])
@pytest.mark.parametrize("n_rows", [R * 2, R * 3 + 5])
def test_packed_matmul_matches_reference(fmt, n_rows):
    n_cols = 512
    raw = _quantized(fmt, n_rows, n_cols, seed=n_rows)
    pm = repack(fmt, raw)
    assert pm.nibbles == (fmt.code_range[1] - fmt.code_range[0] <= 15)
    w = np.empty((n_rows, n_cols), np.float32)
    dequantize_packed(pm.q, pm.scale, pm.offset, pm.nibbles, w)
    np.testing.assert_allclose(w, dequantize_reference(fmt, raw), rtol=1e-6, atol=1e-6)
    rng = np.random.default_rng(0)
    for t in (1, 3, 40):   # 40: more than one activation tile
        x = rng.standard_normal((t, n_cols)).astype(np.float32)
        ref = matmul_reference(fmt.type_id, raw, x)
        out = np.empty((t, n_rows), np.float32)
        matmul_packed(pm, x, out)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_codes_stay_in_declared_range():
    for fmt in FMTS:
        q, _, _ = fmt.codes(_quantized(fmt, 4, 256, seed=1).reshape(-1, fmt.type_size))
        lo, hi = fmt.code_range
        assert lo <= q.min() and q.max() <= hi, fmt.name
