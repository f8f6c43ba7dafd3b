"""The KV cache: preallocated once per model load, filled position by position."""
from __future__ import annotations

import math
import mmap

import numpy as np


def lazy_zeros(shape: tuple, dtype=np.float32) -> np.ndarray:
    """Zeros whose memory is taken page by page as it is written, in 4 KB pages. (np.zeros maps lazily
    too, but with transparent huge pages the first write to each head's slice zeroed 2 MB: 0.6 s and
    ~360 MB for SmolLM2's first prompt at n_ctx 4096.)"""
    n = math.prod(shape) * np.dtype(dtype).itemsize
    buf = mmap.mmap(-1, max(n, 1))
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        buf.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(buf, dtype, count=math.prod(shape)).reshape(shape)


class KVCache:
    """Keys and values of every layer for positions 0..n_tokens-1, in float16 as llama.cpp keeps them.

    k: (n_layer, n_kv_head, n_ctx, head_dim_k) and v: (n_layer, n_kv_head, n_ctx, head_dim_v), uint16
    arrays holding float16 bits (Numba has no float16 type on the CPU; the attention kernels widen them,
    kernels/simd.py). Half of float32's bytes: decode at long contexts reads the whole cache every
    token. Memory is taken only as the context fills (lazy_zeros).
    """

    def __init__(self, n_layer: int, n_kv_head: int, n_ctx: int, head_dim_k: int, head_dim_v: int):
        self.n_ctx = n_ctx
        self.k = lazy_zeros((n_layer, n_kv_head, n_ctx, head_dim_k), np.uint16)
        self.v = lazy_zeros((n_layer, n_kv_head, n_ctx, head_dim_v), np.uint16)
        self.n_tokens = 0

    def store(self, layer: int, pos0: int, k: np.ndarray, v: np.ndarray) -> None:
        """Write k (T, n_kv_head, hd_k) and v (T, n_kv_head, hd_v), float32, at positions pos0..pos0+T-1
        (rounded to float16, to nearest even)."""
        t = k.shape[0]
        self.k[layer, :, pos0:pos0 + t] = k.transpose(1, 0, 2).astype(np.float16).view(np.uint16)
        self.v[layer, :, pos0:pos0 + t] = v.transpose(1, 0, 2).astype(np.float16).view(np.uint16)

    def reset(self, n_tokens: int = 0) -> None:
        """Forget positions n_tokens.. (they are overwritten on the next store)."""
        self.n_tokens = n_tokens
