"""The llama module on tiny synthetic GGUFs: a plain NumPy forward agrees, and the KV cache changes nothing."""
import os
import re
import sys

import numpy as np
import pytest

import localllm
from localllm.ggufio import GGUFFile
from localllm.layers import raw_rows
from localllm.quants import dequantize_reference, get_format
from conftest import logit_tol
from tinymodel import write_tiny_llama


def _weights(gf):
    """Every tensor dequantized with the NumPy reference: name -> float64 array in NumPy shape."""
    return {name: dequantize_reference(get_format(t.type_id), raw_rows(t)).reshape(t.shape).astype(np.float64)
            for name, t in gf.tensors.items()}


def _rope(x, pos, base, neox):
    """x (T, H, hd) rotated for positions pos (T,)."""
    hd = x.shape[-1]
    inv = base ** (-np.arange(0, hd, 2) / hd)                 # (hd/2,)
    ang = pos[:, None, None] * inv[None, None, :]              # (T, 1, hd/2)
    c, s = np.cos(ang), np.sin(ang)
    if neox:
        a, b = x[..., :hd // 2], x[..., hd // 2:]
        return np.concatenate([a * c - b * s, a * s + b * c], axis=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    y = np.empty_like(x)
    y[..., 0::2], y[..., 1::2] = a * c - b * s, a * s + b * c
    return y


def reference_forward(path, ids, neox=False):
    """Logits (T, n_vocab) of a llama-shaped GGUF, written straight from the equations in float64."""
    gf = GGUFFile(path)
    W = _weights(gf)
    n_head, n_kv = gf.arch_key("attention.head_count"), gf.arch_key("attention.head_count_kv")
    eps, base = gf.arch_key("attention.layer_norm_rms_epsilon"), gf.arch_key("rope.freq_base")
    norm = lambda x, w: x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w
    x = W["token_embd.weight"][ids]
    t, d = x.shape
    hd = d // n_head
    pos = np.arange(t, dtype=np.float64)
    mask = np.triu(np.full((t, t), -np.inf), 1)
    for i in range(gf.arch_key("block_count")):
        p = f"blk.{i}."
        h = norm(x, W[p + "attn_norm.weight"])
        lin = lambda n, v: v @ W[p + n + ".weight"].T + W.get(p + n + ".bias", 0)
        q = _rope(lin("attn_q", h).reshape(t, n_head, hd), pos, base, neox)
        k = _rope(lin("attn_k", h).reshape(t, n_kv, hd), pos, base, neox)
        v = lin("attn_v", h).reshape(t, n_kv, hd)
        rep = n_head // n_kv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask
        pr = np.exp(s - s.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        att = np.einsum("hts,shd->thd", pr, v).reshape(t, d)
        x = x + att @ W[p + "attn_output.weight"].T
        h = norm(x, W[p + "ffn_norm.weight"])
        g, u = h @ W[p + "ffn_gate.weight"].T, h @ W[p + "ffn_up.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ W[p + "ffn_down.weight"].T
    x = norm(x, W["output_norm.weight"])
    return x @ W.get("output.weight", W["token_embd.weight"]).T


@pytest.mark.parametrize("arch,qtype,tied,biases", [
    ("llama", "Q8_0", True, False),
    ("llama", "Q4_1", False, False),
    ("qwen2", "Q5_0", False, True),
    ("llama", "F32", True, False),
])
def test_matches_numpy_reference(tmp_path, arch, qtype, tied, biases, kernel):
    path = write_tiny_llama(tmp_path / "tiny.gguf", arch=arch, qtype=qtype, tied=tied, biases=biases)
    llm = localllm.load(path, n_ctx=64)
    ids = list(range(3, 40, 2))
    ours = llm.logits(ids)
    ref = reference_forward(path, ids, neox=(arch == "qwen2"))
    assert ours.shape == ref.shape == (len(ids), llm.n_vocab)
    np.testing.assert_allclose(ours, ref, atol=logit_tol(kernel, 2e-3) * np.abs(ref).max())
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


def test_cache_vs_no_cache_default_kernel(tmp_path):
    """With the default kernel (int8-dot where AVX2 is) one-token and small-batch logits stay within the
    activation quantization of the batched ones, and pick the same tokens."""
    path = write_tiny_llama(tmp_path / "tiny.gguf", n_layer=3)
    ids = [int(i) for i in np.random.default_rng(0).integers(0, 260, 23)]
    full = localllm.load(path, n_ctx=64).logits(ids)
    llm = localllm.load(path, n_ctx=64, n_batch=5)
    tol = 3e-2 * np.abs(full).max()
    chunked = llm.logits(ids)
    llm.cache.reset()
    llm._ids = []
    step = np.stack([llm._eval(ids[:1])] + [llm._eval_next(t) for t in ids[1:]])
    for got in (chunked, step):
        np.testing.assert_allclose(got, full, atol=tol)
        assert (got.argmax(-1) == full.argmax(-1)).all()


def test_cache_vs_no_cache(tmp_path, float_kernels):
    path = write_tiny_llama(tmp_path / "tiny.gguf", n_layer=3)
    ids = [int(i) for i in np.random.default_rng(0).integers(0, 260, 23)]
    full = localllm.load(path, n_ctx=64).logits(ids)  # one batch of 23: the dequantize + BLAS path
    llm = localllm.load(path, n_ctx=64, n_batch=5)   # chunks of 5: kernels on quantized rows
    np.testing.assert_allclose(llm.logits(ids), full, atol=1e-4 * np.abs(full).max())
    step = []
    llm.cache.reset()
    llm._ids = []
    step.append(llm._eval(ids[:1]))
    for t in ids[1:]:
        step.append(llm._eval_next(t))               # one token at a time through the cache
    np.testing.assert_allclose(np.stack(step), full, atol=1e-4 * np.abs(full).max())
    # prefix reuse: evaluating a longer prompt recomputes only the new tokens
    last = llm._eval(ids + [5, 6])
    np.testing.assert_allclose(last, llm.logits(ids + [5, 6])[-1], atol=1e-4 * np.abs(full).max())


def test_repacked_weights_are_cached_on_disk(tmp_path, monkeypatch):
    """The second load of a file maps the cached buffers instead of repacking, and computes the same."""
    import localllm.kernels.repacked as repacked

    monkeypatch.setenv("LOCALLLM_HOME", str(tmp_path / "home"))
    path = write_tiny_llama(tmp_path / "tiny.gguf", qtype="Q4_1", biases=True, arch="qwen2")
    ids = list(range(3, 30))
    first = localllm.load(path, n_ctx=64)
    want_all, want_step = first.logits(ids), first._eval_next(7)
    assert list((tmp_path / "home" / "packed").glob("*/q.npy"))

    def no_repack(*a, **k):
        raise AssertionError("repacked although the cache holds this file")

    monkeypatch.setattr(repacked, "repack", no_repack)
    monkeypatch.setattr(localllm.layers, "repack", no_repack)
    again = localllm.load(path, n_ctx=64)
    np.testing.assert_array_equal(again.logits(ids), want_all)
    np.testing.assert_array_equal(again._eval_next(7), want_step)


@pytest.mark.skipif(sys.platform != "linux", reason="MADV_POPULATE_READ is Linux's")
def test_cached_weights_are_mapped_in_the_background(tmp_path):
    """kernels.decode.prefault maps a memory-mapped buffer's pages into the process on a thread of its own,
    so the first token does not take the page faults: the mapping's resident size goes from ~0 to all of it."""
    from localllm.kernels.decode import prefault

    f = tmp_path / "w.npy"
    np.save(f, np.full(8 << 20, 7, np.uint8))               # 8 MB, in the page cache after writing
    a = np.load(f, mmap_mode="c")

    def resident_kb():
        lines = open("/proc/self/smaps").read().splitlines()
        at = next(i for i, line in enumerate(lines) if line.endswith(str(f)))
        return next(int(line.split()[1]) for line in lines[at + 1:] if line.startswith("Rss:"))

    assert resident_kb() < 1024
    thread = prefault([a])
    assert thread is not None
    thread.join(timeout=30)
    if resident_kb() < 1024 and tuple(int(x) for x in re.findall(r"\d+", os.uname().release)[:2]) < (5, 14):
        pytest.skip("kernel without MADV_POPULATE_READ")
    assert resident_kb() >= 8 << 10
    assert a[-1] == 7 and a.sum() == 7 * (8 << 20)
