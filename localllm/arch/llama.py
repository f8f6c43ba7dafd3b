"""The llama family: Llama 2/3, Mistral, SmolLM, TinyLlama, and Qwen2 (q/k/v biases, NEOX RoPE).

Per layer: x += Wo·attn(rope(Wq·n), rope(Wk·n), Wv·n) with n = rmsnorm(x); x += Wdown·(silu(Wgate·n') * Wup·n').
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..cache import KVCache
from ..errors import GGUFError
from ..kernels.decode import FusedDecoder, pack_cache_dir
from ..kernels.ops import attend, rmsnorm, rope, rope_tables, silu_mul_rows
from ..layers import Embedding, Linear, vector

# llama.cpp's RoPE mode per architecture: GGUF files of these store q/k for the NEOX pairing.
NEOX_ROPE = {"qwen2", "qwen2moe", "qwen3", "phi3", "stablelm", "gptneox", "olmo2"}


@dataclass
class ModelArgs:
    arch: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_kv_head: int
    head_dim: int
    n_rot: int
    rope_base: float
    rope_scale: float       # positions are multiplied by this (1 / linear scaling factor)
    norm_eps: float
    n_ctx_train: int
    neox: bool

    @classmethod
    def from_gguf(cls, gf) -> "ModelArgs":
        arch = gf.architecture

        def need(key):
            v = gf.arch_key(key)
            if v is None:
                raise GGUFError(f"{gf.path}: metadata key {arch}.{key} is missing")
            return v

        n_embd, n_head = int(need("embedding_length")), int(need("attention.head_count"))
        head_dim = int(gf.arch_key("attention.key_length", n_embd // n_head))
        factor = gf.arch_key("rope.scaling.factor")
        linear = gf.arch_key("rope.scaling.type") == "linear" and factor
        return cls(
            arch=arch,
            n_layer=int(need("block_count")),
            n_embd=n_embd,
            n_ff=int(need("feed_forward_length")),
            n_head=n_head,
            n_kv_head=int(gf.arch_key("attention.head_count_kv", n_head)),
            head_dim=head_dim,
            n_rot=int(gf.arch_key("rope.dimension_count", head_dim)),
            rope_base=float(gf.arch_key("rope.freq_base", 10000.0)),
            rope_scale=1.0 / float(factor) if linear else 1.0,
            norm_eps=float(gf.arch_key("attention.layer_norm_rms_epsilon", 1e-5)),
            n_ctx_train=int(gf.arch_key("context_length", 2048)),
            neox=arch in NEOX_ROPE,
        )


def tensor(gf, name: str, optional: bool = False):
    t = gf.tensors.get(name)
    if t is None and not optional:
        raise GGUFError(f"{gf.path}: tensor {name!r} is missing; the file is incomplete or not a {gf.architecture} model")
    return t


class Layer:
    def __init__(self, gf, i: int):
        p = f"blk.{i}."
        self.attn_norm = vector(tensor(gf, p + "attn_norm.weight"))
        self.wq = Linear(tensor(gf, p + "attn_q.weight"), tensor(gf, p + "attn_q.bias", True))
        self.wk = Linear(tensor(gf, p + "attn_k.weight"), tensor(gf, p + "attn_k.bias", True))
        self.wv = Linear(tensor(gf, p + "attn_v.weight"), tensor(gf, p + "attn_v.bias", True))
        self.wo = Linear(tensor(gf, p + "attn_output.weight"), tensor(gf, p + "attn_output.bias", True))
        self.ffn_norm = vector(tensor(gf, p + "ffn_norm.weight"))
        self.gate = Linear(tensor(gf, p + "ffn_gate.weight"))
        self.up = Linear(tensor(gf, p + "ffn_up.weight"))
        self.down = Linear(tensor(gf, p + "ffn_down.weight"))


class Model:
    def __init__(self, args: ModelArgs, gf, n_ctx: int):
        self.args = args
        self.embed = Embedding(tensor(gf, "token_embd.weight"))
        self.n_vocab = self.embed.n_vocab
        self.layers = [Layer(gf, i) for i in range(args.n_layer)]
        self.norm = vector(tensor(gf, "output_norm.weight"))
        # No output.weight: the head is tied to the token embedding.
        self.output = Linear(tensor(gf, "output.weight", True) or tensor(gf, "token_embd.weight"))
        freqs = tensor(gf, "rope_freqs.weight", True)  # Llama 3.1+ per-dimension frequency factors
        factors = vector(freqs).astype(np.float64) if freqs else np.ones(args.n_rot // 2)
        self.cos, self.sin = rope_tables(n_ctx, args.n_rot, args.rope_base, factors, args.rope_scale)  # (n_ctx, n_rot/2)
        # whole-token decode in one call; the repacked weights are cached on disk for the next load
        self._fused = FusedDecoder.build(self.layers, self.output, cache=pack_cache_dir(gf.path))
        self._windows = np.zeros(args.n_layer, np.int64)

    def make_cache(self, n_ctx: int) -> KVCache:
        a = self.args
        return KVCache(a.n_layer, a.n_kv_head, n_ctx, a.head_dim, a.head_dim)

    def forward(self, ids: np.ndarray, pos0: int, cache: KVCache, all_logits: bool = False) -> np.ndarray:
        """Logits (T or 1, n_vocab) after feeding ids (T,) at positions pos0..; fills the cache."""
        a = self.args
        t = len(ids)
        if t == 1 and self._fused is not None:
            f = self._fused
            logits = np.empty((1, self.n_vocab), np.float32)
            f.decode(int(ids[0]), pos0, self.embed.raw, self.embed.type_id, np.float32(1.0), f.mt, f.qbuf,
                     f.sbuf, f.obuf, f.bbuf, f.attn_norm, f.q_norm, f.k_norm, f.post_attn_norm,
                     f.ffn_norm, f.post_ffw_norm, self.norm, f.head, cache.k, cache.v, self.cos,
                     self.sin, self.cos, self.sin, self._windows, a.neox, a.norm_eps, a.n_head,
                     a.n_kv_head, a.head_dim, a.n_ff, False, np.float32(1.0 / math.sqrt(a.head_dim)),
                     0.0, logits)
            cache.n_tokens = pos0 + 1
            return logits
        x = self.embed(ids)                                      # (T, D)
        h = np.empty_like(x)                                     # (T, D)
        att = np.empty((t, a.n_head, a.head_dim), np.float32)    # (T, Hq, hd)
        scale = 1.0 / math.sqrt(a.head_dim)
        for i, L in enumerate(self.layers):
            rmsnorm(x, L.attn_norm, a.norm_eps, h)
            q = L.wq(h).reshape(t, a.n_head, a.head_dim)
            k = L.wk(h).reshape(t, a.n_kv_head, a.head_dim)
            v = L.wv(h).reshape(t, a.n_kv_head, a.head_dim)
            rope(q, pos0, self.cos, self.sin, a.neox)
            rope(k, pos0, self.cos, self.sin, a.neox)
            cache.store(i, pos0, k, v)
            attend(q, cache.k[i], cache.v[i], pos0, scale, 0, att)
            x += L.wo(att.reshape(t, -1))
            rmsnorm(x, L.ffn_norm, a.norm_eps, h)
            g = L.gate(h)                                        # (T, F)
            silu_mul_rows(g, L.up(h), g)
            x += L.down(g)
        cache.n_tokens = pos0 + t
        if not all_logits:
            x = x[-1:]
        rmsnorm(x, self.norm, a.norm_eps, x)
        return self.output(x)
