"""K-quants Q2_K..Q6_K: Numba kernel == NumPy reference == gguf.quants, bit for bit."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize, quantize

from localllm.quants import FORMATS, dequantize_reference, get_format
from localllm.quants import kquants

# name -> byte offsets of the f16 fields in a block (d, and dmin where the format has one)
F16_FIELDS = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}
NAMES = list(F16_FIELDS)


def _qtype(name: str) -> gguf.GGMLQuantizationType:
    return gguf.GGMLQuantizationType[name]


def _kernel(name: str):
    return getattr(kquants, f"dequantize_row_{name.lower()}")


def _random_blocks(name: str, n_blocks: int, seed: int) -> np.ndarray:
    """Random bytes, with each f16 scale field a finite value of either sign (incl. zero, subnormal)."""
    rng = np.random.default_rng(seed)
    fmt = get_format(_qtype(name))
    blocks = rng.integers(0, 256, (n_blocks, fmt.type_size), dtype=np.uint8)
    for at in F16_FIELDS[name]:
        vals = rng.uniform(-4.0, 4.0, n_blocks).astype(np.float16)
        special = np.array([0.0, 6e-8, -1e-5], np.float16)[:n_blocks]   # zero and subnormals
        vals[:special.size] = special
        blocks[:, at:at + 2] = vals.view(np.uint8).reshape(n_blocks, 2)
    return blocks


def _run_kernel(name: str, blocks: np.ndarray) -> np.ndarray:
    out = np.full(blocks.shape[0] * 256, np.nan, np.float32)
    _kernel(name)(np.ascontiguousarray(blocks).reshape(-1), out)
    return out.reshape(blocks.shape[0], 256)


@pytest.mark.parametrize("name", NAMES)
def test_registered_traits(name):
    fmt = get_format(_qtype(name))
    assert FORMATS[fmt.type_id] is fmt
    assert fmt.name == name
    assert (fmt.block_size, fmt.type_size) == gguf.GGML_QUANT_SIZES[_qtype(name)]
    assert fmt.dequantize_row is _kernel(name)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n_blocks", [1, 7, 64])
def test_random_blocks_bit_exact(name, n_blocks):
    blocks = _random_blocks(name, n_blocks, seed=n_blocks)
    want = dequantize(blocks.reshape(-1), _qtype(name)).reshape(n_blocks, 256)
    assert want.dtype == np.float32 and np.isfinite(want).all()

    got = _run_kernel(name, blocks)
    assert not np.isnan(got).any()
    assert np.array_equal(got, want)

    ref = get_format(_qtype(name)).reference(blocks)
    assert ref.dtype == np.float32 and ref.shape == (n_blocks, 256)
    assert np.array_equal(ref, want)


@pytest.mark.parametrize("name", NAMES)
def test_kernel_writes_only_its_row(name):
    """A row written into the middle of a larger buffer leaves its neighbours untouched."""
    blocks = _random_blocks(name, 3, seed=5)
    buf = np.full(5 * 256, -7.0, np.float32)
    _kernel(name)(blocks.reshape(-1), buf[256:4 * 256])
    assert (buf[:256] == -7.0).all() and (buf[4 * 256:] == -7.0).all()
    assert np.array_equal(buf[256:4 * 256], dequantize(blocks.reshape(-1), _qtype(name)))


# ---- round trip: gguf 0.19 has no K-quant quantizer, so the tests pack blocks themselves ----------
# (code range, sub-block size, sub-scale range, has mins) per format
KQ = {"Q2_K": ((0, 3), 16, (0, 15), True), "Q3_K": ((-4, 3), 16, (-32, 31), False),
      "Q4_K": ((0, 15), 32, (0, 63), True), "Q5_K": ((0, 31), 32, (0, 63), True),
      "Q6_K": ((-32, 31), 16, (-128, 127), False)}


def _simple_quantize(name: str, x: np.ndarray):
    """Naive K-quantization of float32 (n, 256): (codes, sub-scales, sub-mins, d, dmin), not llama.cpp's
    search, but valid blocks of the same shape as real ones."""
    (qlo, qhi), sub, (slo, shi), has_min = KQ[name]
    n = x.shape[0]
    g = x.reshape(n, -1, sub)
    if has_min:
        low = np.minimum(g.min(axis=2), 0.0)                     # value of code 0 is -dmin*m <= 0
        scale_f = (g.max(axis=2) - low) / qhi
        min_f = -low
        dmin = (min_f.max(axis=1, keepdims=True) / shi).astype(np.float16)
        dm = dmin.astype(np.float32)
        mn = np.clip(np.rint(np.divide(min_f, dm, out=np.zeros_like(min_f), where=dm > 0)), 0, shi)
    else:
        scale_f = np.abs(g).max(axis=2) / max(-qlo, qhi)
        dmin, mn = np.zeros((n, 1), np.float16), np.zeros_like(scale_f)
    d = (scale_f.max(axis=1, keepdims=True) / shi).astype(np.float16)
    df = d.astype(np.float32)
    sc = np.clip(np.rint(np.divide(scale_f, df, out=np.zeros_like(scale_f), where=df > 0)), slo, shi)
    step = (df * sc)[:, :, None]
    offset = (dmin.astype(np.float32) * mn)[:, :, None]
    codes = np.divide(g + offset, step, out=np.zeros_like(g), where=step != 0)
    codes = np.clip(np.rint(codes), qlo, qhi).astype(np.int32).reshape(n, 256)
    return codes, sc.astype(np.int32), mn.astype(np.int32), d, dmin


def _pack(name: str, codes, sc, mn, d, dmin) -> np.ndarray:
    """Blocks uint8 (n, type_size) in ggml's layout from integer codes and sub-scales."""
    n = codes.shape[0]
    u8 = lambda a: np.asarray(a).astype(np.uint8)  # noqa: E731
    f16 = lambda a: a.astype(np.float16).reshape(n, 1).view(np.uint8)  # noqa: E731

    def crumbs(c):  # (n, g, 4, 32) 2-bit fields -> (n, g*32) bytes
        return (c[:, :, 0] | c[:, :, 1] << 2 | c[:, :, 2] << 4 | c[:, :, 3] << 6).reshape(n, -1)

    def bitplanes(c):  # (n, 8, 32) bits -> (n, 32) bytes
        return sum(c[:, k] << k for k in range(8))

    def k4_scales(s, m):
        return np.concatenate([s[:, :4] | (s[:, 4:] >> 4) << 6, m[:, :4] | (m[:, 4:] >> 4) << 6,
                               (s[:, 4:] & 15) | (m[:, 4:] & 15) << 4], axis=1)

    if name == "Q2_K":
        return u8(np.concatenate([sc | mn << 4, crumbs(codes.reshape(n, 2, 4, 32)), f16(d), f16(dmin)], 1))
    if name == "Q3_K":
        u, s6 = codes + 4, sc + 32
        hmask = bitplanes((u >> 2).reshape(n, 8, 32))
        lo = (s6[:, :8] & 15) | (s6[:, 8:] & 15) << 4
        hi = sum(((s6.reshape(n, 4, 4)[:, a] >> 4) & 3) << 2 * a for a in range(4))
        return u8(np.concatenate([hmask, crumbs((u & 3).reshape(n, 2, 4, 32)), lo, hi, f16(d)], 1))
    if name in ("Q4_K", "Q5_K"):
        c = codes.reshape(n, 4, 2, 32)
        qs = ((c[:, :, 0] & 15) | (c[:, :, 1] & 15) << 4).reshape(n, 128)
        qh = [bitplanes((codes.reshape(n, 8, 32) >> 4) & 1)] if name == "Q5_K" else []
        return u8(np.concatenate([f16(d), f16(dmin), k4_scales(sc, mn), *qh, qs], 1))
    if name == "Q6_K":
        u = (codes + 32).reshape(n, 2, 4, 32)
        ql = np.concatenate([(u[:, :, 0] & 15) | (u[:, :, 2] & 15) << 4,
                             (u[:, :, 1] & 15) | (u[:, :, 3] & 15) << 4], axis=2).reshape(n, 128)
        return u8(np.concatenate([ql, crumbs(u >> 4),
                                  sc.astype(np.int8).view(np.uint8), f16(d)], 1))
    raise AssertionError(name)


@pytest.mark.parametrize("name", NAMES)
def test_quantize_round_trip(name):
    """Floats -> packed blocks -> dequantize: gguf, the kernel and the reference agree bit for bit, and
    agree with the value each code stands for, computed from the codes (the layout's meaning)."""
    rng = np.random.default_rng(42)
    n = 48
    x = (rng.standard_normal((n, 256)) * rng.uniform(0.01, 3.0, (n, 1))).astype(np.float32)
    x[0] = 0.0                                                   # an all-zero block
    x[1] = np.abs(x[1])                                          # one with no negative values
    codes, sc, mn, d, dmin = _simple_quantize(name, x)
    blocks = _pack(name, codes, sc, mn, d, dmin)
    assert blocks.shape == (n, get_format(_qtype(name)).type_size)

    sub = KQ[name][1]
    step = (d.astype(np.float32) * sc.astype(np.float32))[:, :, None]
    offset = (dmin.astype(np.float32) * mn.astype(np.float32))[:, :, None]
    expect = step * codes.reshape(n, -1, sub).astype(np.float32)
    if KQ[name][3]:
        expect = expect - offset
    expect = expect.reshape(n, 256)

    want = dequantize(blocks.reshape(-1), _qtype(name)).reshape(n, 256)
    assert np.array_equal(want, expect)
    assert np.array_equal(_run_kernel(name, blocks), want)
    assert np.array_equal(get_format(_qtype(name)).reference(blocks), want)
    err = np.abs(want - x).mean() / np.abs(x).mean()
    assert err < {"Q2_K": 0.45, "Q3_K": 0.35}.get(name, 0.15), err


@pytest.mark.parametrize("name", NAMES)
def test_gguf_quantize_round_trip(name):
    """When gguf.quants gains a quantizer for the format, its output must dequantize identically."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 1024)).astype(np.float32)
    try:
        q = quantize(x, _qtype(name))           # uint8 (4, row_bytes)
    except NotImplementedError:
        pytest.skip(f"gguf.quants {gguf.__name__} cannot quantize {name} (it only dequantizes K-quants)")
    want = dequantize(q, _qtype(name))
    fmt = get_format(_qtype(name))
    for r in range(x.shape[0]):
        out = np.empty(x.shape[1], np.float32)
        fmt.dequantize_row(q[r], out)
        assert np.array_equal(out, want[r])
    assert np.array_equal(dequantize_reference(fmt, q), want)


def _check_real_tensors(path, names_wanted: set[str]):
    from localllm.ggufio import GGUFFile

    g = GGUFFile(path)
    seen = set()
    for tname, t in g.tensors.items():
        if t.type_name not in names_wanted or t.type_name in seen:
            continue
        seen.add(t.type_name)
        fmt = get_format(t.type_id, tname)
        rows = t.data
        n_cols = rows.shape[1] // fmt.type_size * fmt.block_size
        for r in sorted({0, 1, rows.shape[0] // 2, rows.shape[0] - 1}):
            raw = np.ascontiguousarray(rows[r])
            want = dequantize(raw, _qtype(t.type_name))
            out = np.empty(n_cols, np.float32)
            fmt.dequantize_row(raw, out)
            assert np.isfinite(out).all(), (tname, r)
            assert np.array_equal(out, want), (tname, r)
            assert np.array_equal(dequantize_reference(fmt, raw), want), (tname, r)
    assert seen == names_wanted, f"{path}: no tensor of type {names_wanted - seen}"


@pytest.mark.large
def test_real_qwen2_tensors(qwen2_path):
    _check_real_tensors(qwen2_path, {"Q4_K", "Q6_K"})


@pytest.mark.large
def test_real_gemma3_tensors(gemma3_path):
    _check_real_tensors(gemma3_path, {"Q4_K", "Q6_K"})
