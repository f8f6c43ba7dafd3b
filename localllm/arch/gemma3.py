"""Gemma 3 (text): interleaved sliding-window / global attention, q/k RMSNorm, sandwich norms, GeGLU.

Per layer, with n = rmsnorm(x):
    x += post_attn_norm(Wo·attn(rope(qnorm(Wq·n)), rope(knorm(Wk·n)), Wv·n))
    x += post_ffw_norm(Wdown·(gelu_tanh(Wgate·n') * Wup·n'))
Embeddings are scaled by sqrt(n_embd); the head is tied to the token embedding.

As llama.cpp sets it for gemma3: five sliding-window ("local") layers, then one global layer
(layer i is global when i % 6 == 5). Local layers use RoPE base 10000 (rope.freq_base_swa if present)
without scaling; global layers use rope.freq_base and any linear rope.scaling. A file without
attention.sliding_window has only global layers. llama.cpp's converter already stores Gemma's RMSNorm
weights as (1 + w), so the norms here are plain. The KV cache keeps every position for every layer;
sliding-window layers just attend to the last `sliding_window` of them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..cache import KVCache
from ..errors import GGUFError
from ..kernels.decode import FusedDecoder, pack_cache_dir
from ..kernels.ops import attend, gelu_tanh_mul_rows, rmsnorm, rope, rope_tables
from ..layers import Embedding, Linear, vector
from .llama import tensor

SWA_PATTERN = 6              # every 6th layer is global (llama.cpp: set_swa_pattern(6))


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
    rope_base: float          # global layers
    rope_base_local: float    # sliding-window layers
    rope_scale: float         # global layers: positions are multiplied by this (1 / linear factor)
    norm_eps: float
    n_ctx_train: int
    sliding_window: int       # 0: no sliding-window layers
    attn_scale: float         # applied to q·k
    final_softcap: float      # 0: none

    @classmethod
    def from_gguf(cls, gf) -> "ModelArgs":
        arch = gf.architecture

        def need(key):
            v = gf.arch_key(key)
            if v is None:
                raise GGUFError(f"{gf.path}: metadata key {arch}.{key} is missing")
            return v

        n_layer = int(need("block_count"))
        n_embd, n_head = int(need("embedding_length")), int(need("attention.head_count"))
        head_dim = int(gf.arch_key("attention.key_length", n_embd // n_head))
        factor = gf.arch_key("rope.scaling.factor")
        linear = gf.arch_key("rope.scaling.type") == "linear" and factor
        # Gemma's query_pre_attn_scalar is not in the GGUF; llama.cpp uses head_dim except for the
        # 27B (62 layers), whose scalar is n_embd / n_head.
        scalar = n_embd / n_head if n_layer == 62 else head_dim
        return cls(
            arch=arch,
            n_layer=n_layer,
            n_embd=n_embd,
            n_ff=int(need("feed_forward_length")),
            n_head=n_head,
            n_kv_head=int(gf.arch_key("attention.head_count_kv", n_head)),
            head_dim=head_dim,
            n_rot=int(gf.arch_key("rope.dimension_count", head_dim)),
            rope_base=float(gf.arch_key("rope.freq_base", 10000.0)),
            rope_base_local=float(gf.arch_key("rope.freq_base_swa", 10000.0)),
            rope_scale=1.0 / float(factor) if linear else 1.0,
            norm_eps=float(gf.arch_key("attention.layer_norm_rms_epsilon", 1e-6)),
            n_ctx_train=int(gf.arch_key("context_length", 32768)),
            sliding_window=int(gf.arch_key("attention.sliding_window", 0) or 0),
            attn_scale=1.0 / math.sqrt(scalar),
            final_softcap=float(gf.arch_key("final_logit_softcapping", 0.0) or 0.0),
        )

    def is_local(self, i: int) -> bool:
        return self.sliding_window > 0 and i % SWA_PATTERN < SWA_PATTERN - 1


class Layer:
    def __init__(self, gf, i: int):
        p = f"blk.{i}."
        self.attn_norm = vector(tensor(gf, p + "attn_norm.weight"))
        self.wq = Linear(tensor(gf, p + "attn_q.weight"))
        self.wk = Linear(tensor(gf, p + "attn_k.weight"))
        self.wv = Linear(tensor(gf, p + "attn_v.weight"))
        self.q_norm = vector(tensor(gf, p + "attn_q_norm.weight"))      # (head_dim,)
        self.k_norm = vector(tensor(gf, p + "attn_k_norm.weight"))      # (head_dim,)
        self.wo = Linear(tensor(gf, p + "attn_output.weight"))
        self.post_attn_norm = vector(tensor(gf, p + "post_attention_norm.weight"))
        self.ffn_norm = vector(tensor(gf, p + "ffn_norm.weight"))
        self.gate = Linear(tensor(gf, p + "ffn_gate.weight"))
        self.up = Linear(tensor(gf, p + "ffn_up.weight"))
        self.down = Linear(tensor(gf, p + "ffn_down.weight"))
        self.post_ffw_norm = vector(tensor(gf, p + "post_ffw_norm.weight"))


class Model:
    def __init__(self, args: ModelArgs, gf, n_ctx: int):
        self.args = args
        self.embed = Embedding(tensor(gf, "token_embd.weight"))
        self.n_vocab = self.embed.n_vocab
        self.embed_scale = np.float32(math.sqrt(args.n_embd))
        self.layers = [Layer(gf, i) for i in range(args.n_layer)]
        self.norm = vector(tensor(gf, "output_norm.weight"))
        self.output = Linear(tensor(gf, "output.weight", True) or tensor(gf, "token_embd.weight"))
        ones = np.ones(args.n_rot // 2)
        # cos, sin (n_ctx, n_rot/2) for each kind of layer
        self.rope_global = rope_tables(n_ctx, args.n_rot, args.rope_base, ones, args.rope_scale)
        self.rope_local = rope_tables(n_ctx, args.n_rot, args.rope_base_local, ones, 1.0)
        self._fused = FusedDecoder.build(self.layers, self.output, q_norm="q_norm", k_norm="k_norm",
                                         post_attn_norm="post_attn_norm", post_ffw_norm="post_ffw_norm",
                                         cache=pack_cache_dir(gf.path))
        self._windows = np.array([args.sliding_window if args.is_local(i) else 0 for i in range(args.n_layer)],
                                 np.int64)

    def make_cache(self, n_ctx: int) -> KVCache:
        a = self.args
        return KVCache(a.n_layer, a.n_kv_head, n_ctx, a.head_dim, a.head_dim)

    def forward(self, ids: np.ndarray, pos0: int, cache: KVCache, all_logits: bool = False) -> np.ndarray:
        """Logits (T or 1, n_vocab) after feeding ids (T,) at positions pos0..; fills the cache."""
        a = self.args
        t = len(ids)
        if t == 1 and self._fused is not None:   # whole-token decode in one compiled call
            f = self._fused
            logits = np.empty((1, self.n_vocab), np.float32)
            (cos, sin), (cos_l, sin_l) = self.rope_global, self.rope_local
            f.decode(int(ids[0]), pos0, self.embed.raw, self.embed.type_id, self.embed_scale, f.mt, f.qbuf,
                     f.sbuf, f.obuf, f.bbuf, f.attn_norm, f.q_norm, f.k_norm, f.post_attn_norm,
                     f.ffn_norm, f.post_ffw_norm, self.norm, f.head, cache.k, cache.v, cos, sin, cos_l,
                     sin_l, self._windows, True, a.norm_eps, a.n_head, a.n_kv_head, a.head_dim, a.n_ff,
                     True, np.float32(a.attn_scale), float(a.final_softcap), logits)
            cache.n_tokens = pos0 + 1
            return logits
        x = self.embed(ids)                                      # (T, D)
        x *= self.embed_scale
        h = np.empty_like(x)                                     # (T, D)
        att = np.empty((t, a.n_head, a.head_dim), np.float32)    # (T, Hq, hd)
        for i, L in enumerate(self.layers):
            local = a.is_local(i)
            cos, sin = self.rope_local if local else self.rope_global
            rmsnorm(x, L.attn_norm, a.norm_eps, h)
            q = L.wq(h)                                          # (T, Hq*hd)
            k = L.wk(h)                                          # (T, Hkv*hd)
            v = L.wv(h).reshape(t, a.n_kv_head, a.head_dim)
            rmsnorm(q.reshape(-1, a.head_dim), L.q_norm, a.norm_eps, q.reshape(-1, a.head_dim))
            rmsnorm(k.reshape(-1, a.head_dim), L.k_norm, a.norm_eps, k.reshape(-1, a.head_dim))
            q = q.reshape(t, a.n_head, a.head_dim)
            k = k.reshape(t, a.n_kv_head, a.head_dim)
            rope(q, pos0, cos, sin, True)
            rope(k, pos0, cos, sin, True)
            cache.store(i, pos0, k, v)
            attend(q, cache.k[i], cache.v[i], pos0, a.attn_scale, a.sliding_window if local else 0, att)
            o = L.wo(att.reshape(t, -1))                         # (T, D)
            rmsnorm(o, L.post_attn_norm, a.norm_eps, o)
            x += o
            rmsnorm(x, L.ffn_norm, a.norm_eps, h)
            g = L.gate(h)                                        # (T, F)
            gelu_tanh_mul_rows(g, L.up(h), g)
            f = L.down(g)                                        # (T, D)
            rmsnorm(f, L.post_ffw_norm, a.norm_eps, f)
            x += f
        cache.n_tokens = pos0 + t
        if not all_logits:
            x = x[-1:]
        rmsnorm(x, self.norm, a.norm_eps, x)
        logits = self.output(x)
        if a.final_softcap > 0:
            logits = np.tanh(logits / a.final_softcap) * a.final_softcap
        return logits
