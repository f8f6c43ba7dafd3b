"""Every registered format: fast dequantize bit-exact with gguf.quants, kernels close to their reference."""
import gguf
import numpy as np
import pytest

from localllm.errors import UnsupportedTensorTypeError
from localllm.kernels.quantized import dequantize_rows, gather_rows, matmul_small, matmul_reference, matvec
from localllm.quants import FORMATS, _load_all, dequantize_reference, get_format

_load_all()
FMTS = sorted(FORMATS.values(), key=lambda f: f.type_id)
IDS = [f.name for f in FMTS]


def _quantized(fmt, n_rows, n_cols, seed=0):
    """Valid rows of `fmt`: gguf's quantizer where it has one (not for K-quants), else random blocks
    with finite scales (test_kquants' generator)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_rows, n_cols)).astype(np.float32)
    try:
        q = gguf.quants.quantize(x, gguf.GGMLQuantizationType(fmt.type_id))
    except NotImplementedError:
        from test_kquants import _random_blocks
        q = _random_blocks(fmt.name, n_rows * n_cols // fmt.block_size, seed)
    return np.ascontiguousarray(q).view(np.uint8).reshape(n_rows, -1)


@pytest.mark.parametrize("fmt", FMTS, ids=IDS)
def test_dequantize_random_bytes_bit_exact(fmt):
    rng = np.random.default_rng(fmt.type_id)
    raw = rng.integers(0, 256, (32, fmt.row_bytes(512)), dtype=np.uint8)
    want = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(fmt.type_id))
    out = np.empty((32, 512), np.float32)
    dequantize_rows(fmt.type_id, raw, out)
    with np.errstate(invalid="ignore", over="ignore"):
        ref = dequantize_reference(fmt, raw)
    assert np.array_equal(out, want, equal_nan=True)
    assert np.array_equal(ref, want, equal_nan=True)


@pytest.mark.parametrize("fmt", FMTS, ids=IDS)
def test_dequantize_quantized_floats_bit_exact(fmt):
    raw = _quantized(fmt, 16, 768)
    want = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(fmt.type_id))
    out = np.empty((16, 768), np.float32)
    dequantize_rows(fmt.type_id, raw, out)
    assert np.isfinite(out).all() and np.array_equal(out, want)


@pytest.mark.parametrize("fmt", FMTS, ids=IDS)
def test_matvec_and_matmul_match_reference(fmt):
    n_rows, n_cols = 70, 512  # 70: not a multiple of the rows each thread takes
    raw = _quantized(fmt, n_rows, n_cols, seed=1)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, n_cols)).astype(np.float32)
    ref = matmul_reference(fmt.type_id, raw, x)
    out = np.empty(n_rows, np.float32)
    matvec(fmt.type_id, raw, x[0], out)
    np.testing.assert_allclose(out, ref[0], rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    outm = np.empty((5, n_rows), np.float32)
    matmul_small(fmt.type_id, raw, x, outm)
    np.testing.assert_allclose(outm, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_gather_rows_is_embedding_lookup():
    fmt = get_format(8)
    raw = _quantized(fmt, 10, 64)
    ids = np.array([3, 0, 9, 3], np.int64)
    out = np.empty((4, 64), np.float32)
    gather_rows(8, raw, ids, out)
    assert np.array_equal(out, dequantize_reference(fmt, raw)[ids])


def test_unknown_type_is_a_clear_error():
    with pytest.raises(UnsupportedTensorTypeError, match="IQ2_XXS.*supported"):
        get_format(16, "blk.0.attn_q.weight")


@pytest.mark.parametrize("fmt", [f for f in FMTS if f.codes], ids=[f.name for f in FMTS if f.codes])
def test_codes_rebuild_the_weights_bit_exact(fmt):
    raw = _quantized(fmt, 8, 512, seed=3)
    blocks = raw.reshape(-1, fmt.type_size)
    q, scale, offset = fmt.codes(blocks)
    assert q.dtype == np.int8 and q.shape == (blocks.shape[0], fmt.block_size)
    n, groups = scale.shape
    w = scale[:, :, None] * q.reshape(n, groups, -1).astype(np.float32) + offset[:, :, None]
    assert np.array_equal(w.reshape(8, 512), gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(fmt.type_id)))
