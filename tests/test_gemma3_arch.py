"""The gemma3 module on tiny synthetic GGUFs: a plain NumPy forward agrees, and the KV cache changes nothing.

Six layers, so both kinds occur (layers 0-4 slide over a small window, layer 5 is global), and prompts
longer than the window, so the window matters.
"""
from pathlib import Path

import gguf
import numpy as np
import pytest

import localllm  # noqa: F401  (sets the OpenMP wait policy before numba starts its pool)
from localllm.arch import load_model
from localllm.ggufio import GGUFFile
from localllm.layers import raw_rows
from localllm.quants import dequantize_reference, get_format
from conftest import logit_tol

N_VOCAB = 96


def write_tiny_gemma3(path: Path, qtype: str = "Q8_0", n_layer: int = 6, n_embd: int = 64, n_head: int = 4,
                      n_kv_head: int = 2, head_dim: int = 32, n_ff: int = 96, window: int = 4,
                      rope_factor: float | None = None, softcap: float | None = None, seed: int = 0) -> Path:
    """A gemma3-shaped model with random weights; n_head * head_dim != n_embd, as in Gemma."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_block_count(n_layer)
    w.add_context_length(256)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv_head)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1e6)
    if window:
        w.add_sliding_window(window)
    if rope_factor:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope_factor)
    if softcap:
        w.add_final_logit_softcapping(softcap)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"<t{i}>" for i in range(N_VOCAB)])
    qt = gguf.GGMLQuantizationType[qtype]

    def mat(name, rows, cols, scale=0.15):
        x = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
        if qt == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, x)
        else:
            q = gguf.quants.quantize(x, qt)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qt)

    def vec(name, n):  # Gemma norm weights as llama.cpp stores them: 1 + w
        w.add_tensor(name, (1.0 + 0.3 * rng.standard_normal(n)).astype(np.float32))

    mat("token_embd.weight", N_VOCAB, n_embd, 0.3)
    for i in range(n_layer):
        p = f"blk.{i}."
        vec(p + "attn_norm.weight", n_embd)
        mat(p + "attn_q.weight", n_head * head_dim, n_embd)
        mat(p + "attn_k.weight", n_kv_head * head_dim, n_embd)
        mat(p + "attn_v.weight", n_kv_head * head_dim, n_embd)
        vec(p + "attn_q_norm.weight", head_dim)
        vec(p + "attn_k_norm.weight", head_dim)
        mat(p + "attn_output.weight", n_embd, n_head * head_dim)
        vec(p + "post_attention_norm.weight", n_embd)
        vec(p + "ffn_norm.weight", n_embd)
        mat(p + "ffn_gate.weight", n_ff, n_embd)
        mat(p + "ffn_up.weight", n_ff, n_embd)
        mat(p + "ffn_down.weight", n_embd, n_ff)
        vec(p + "post_ffw_norm.weight", n_embd)
    vec("output_norm.weight", n_embd)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


def _weights(gf):
    """Every tensor dequantized with the NumPy reference: name -> float64 array in NumPy shape."""
    return {name: dequantize_reference(get_format(t.type_id), raw_rows(t)).reshape(t.shape).astype(np.float64)
            for name, t in gf.tensors.items()}


def _rope_neox(x, pos, base):
    """x (T, H, hd) rotated for (possibly scaled) positions pos (T,), pairing dims i and i + hd/2."""
    hd = x.shape[-1]
    ang = pos[:, None, None] * base ** (-np.arange(0, hd, 2) / hd)   # (T, 1, hd/2)
    c, s = np.cos(ang), np.sin(ang)
    a, b = x[..., :hd // 2], x[..., hd // 2:]
    return np.concatenate([a * c - b * s, a * s + b * c], axis=-1)


def reference_forward(path, ids):
    """Logits (T, n_vocab) of a gemma3 GGUF, written straight from the equations in float64."""
    gf = GGUFFile(path)
    W = _weights(gf)
    key = gf.arch_key
    n_head, n_kv, hd = key("attention.head_count"), key("attention.head_count_kv"), key("attention.key_length")
    eps, window = key("attention.layer_norm_rms_epsilon"), key("attention.sliding_window", 0)
    scale = 1.0 / key("rope.scaling.factor", 1.0)
    norm = lambda x, w: x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w
    x = W["token_embd.weight"][ids] * np.sqrt(key("embedding_length"))
    t = len(ids)
    pos = np.arange(t, dtype=np.float64)
    causal = pos[None, :] <= pos[:, None]                            # (query, key)
    for i in range(key("block_count")):
        p = f"blk.{i}."
        local = window > 0 and i % 6 != 5
        mask = causal & (pos[:, None] - pos[None, :] < window) if local else causal
        base, ps = (10000.0, pos) if local else (key("rope.freq_base"), pos * scale)
        h = norm(x, W[p + "attn_norm.weight"])
        q = norm((h @ W[p + "attn_q.weight"].T).reshape(t, n_head, hd), W[p + "attn_q_norm.weight"])
        k = norm((h @ W[p + "attn_k.weight"].T).reshape(t, n_kv, hd), W[p + "attn_k_norm.weight"])
        v = (h @ W[p + "attn_v.weight"].T).reshape(t, n_kv, hd)
        q, k = _rope_neox(q, ps, base), _rope_neox(k, ps, base)
        rep = n_head // n_kv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        s = np.where(mask, np.einsum("thd,shd->hts", q, k) / np.sqrt(hd), -np.inf)
        pr = np.exp(s - s.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        att = np.einsum("hts,shd->thd", pr, v).reshape(t, n_head * hd)
        x = x + norm(att @ W[p + "attn_output.weight"].T, W[p + "post_attention_norm.weight"])
        h = norm(x, W[p + "ffn_norm.weight"])
        g, u = h @ W[p + "ffn_gate.weight"].T, h @ W[p + "ffn_up.weight"].T
        gelu = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g ** 3)))
        x = x + norm((gelu * u) @ W[p + "ffn_down.weight"].T, W[p + "post_ffw_norm.weight"])
    logits = norm(x, W["output_norm.weight"]) @ W["token_embd.weight"].T
    cap = key("final_logit_softcapping")
    return np.tanh(logits / cap) * cap if cap else logits


def _ids(n, seed=1):
    return np.random.default_rng(seed).integers(0, N_VOCAB, n)


@pytest.mark.parametrize("qtype,window,rope_factor,softcap", [
    ("Q8_0", 4, None, None),
    ("F32", 3, 4.0, 10.0),      # linear RoPE scaling on the global layer; final logit softcap
    ("Q8_0", 0, None, None),    # no attention.sliding_window: every layer is global
])
def test_matches_numpy_reference(tmp_path, qtype, window, rope_factor, softcap, kernel):
    path = write_tiny_gemma3(tmp_path / "tiny.gguf", qtype=qtype, window=window, rope_factor=rope_factor,
                             softcap=softcap)
    model = load_model(GGUFFile(path), 64)
    ids = _ids(14)
    ours = model.forward(ids, 0, model.make_cache(64), all_logits=True)
    ref = reference_forward(path, ids)
    assert ours.shape == ref.shape == (len(ids), N_VOCAB)
    np.testing.assert_allclose(ours, ref, atol=logit_tol(kernel, 1e-3) * np.abs(ref).max())
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


def test_window_matters(tmp_path):
    """The reference itself must tell the window apart, or the tests above would not check it."""
    a = reference_forward(write_tiny_gemma3(tmp_path / "w4.gguf", window=4), _ids(14))
    b = reference_forward(write_tiny_gemma3(tmp_path / "w64.gguf", window=64), _ids(14))
    np.testing.assert_allclose(a[:4], b[:4], rtol=1e-9, atol=1e-9)   # inside the window: identical
    assert np.abs(a[4:] - b[4:]).max() > 1e-2 * np.abs(a).max()


def test_layer_kinds(tmp_path):
    args = load_model(GGUFFile(write_tiny_gemma3(tmp_path / "tiny.gguf", n_layer=12)), 16).args
    assert [args.is_local(i) for i in range(12)] == [True] * 5 + [False] + [True] * 5 + [False]
    assert args.sliding_window == 4 and args.rope_base_local == 10000.0 and args.rope_base == 1e6
    assert args.attn_scale == pytest.approx(32 ** -0.5)


def test_cache_vs_no_cache_default_kernel(tmp_path):
    """The default kernel (int8-dot where AVX2 is): one token at a time within the activation quantization
    of the batched logits, same tokens picked."""
    path = write_tiny_gemma3(tmp_path / "tiny.gguf")
    model = load_model(GGUFFile(path), 64)
    ids = _ids(19)
    full = model.forward(ids, 0, model.make_cache(64), all_logits=True)
    cache = model.make_cache(64)
    step = np.stack([model.forward(ids[j:j + 1], j, cache)[0] for j in range(len(ids))])
    np.testing.assert_allclose(step, full, atol=3e-2 * np.abs(full).max())
    assert (step.argmax(-1) == full.argmax(-1)).all()


def test_cache_vs_no_cache(tmp_path, float_kernels):
    path = write_tiny_gemma3(tmp_path / "tiny.gguf")
    model = load_model(GGUFFile(path), 64)
    ids = _ids(19)
    full = model.forward(ids, 0, model.make_cache(64), all_logits=True)   # one batch of 19: dequantize + BLAS
    tol = 1e-4 * np.abs(full).max()
    cache = model.make_cache(64)
    step = [model.forward(ids[j:j + 1], j, cache)[0] for j in range(len(ids))]   # one token at a time
    np.testing.assert_allclose(np.stack(step), full, atol=tol)
    assert cache.n_tokens == len(ids)
    cache = model.make_cache(64)
    chunks, pos = [], 0
    for n in (3, 5, 2, 9):                                               # chunks straddling the window
        chunks.append(model.forward(ids[pos:pos + n], pos, cache, all_logits=True))
        pos += n
    np.testing.assert_allclose(np.concatenate(chunks), full, atol=tol)
    last = model.forward(ids[:7], 0, model.make_cache(64))               # last-position logits only
    np.testing.assert_allclose(last, full[6:7], atol=tol)
