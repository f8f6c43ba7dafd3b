"""The KV cache: preallocated once per model load, filled position by position."""
from __future__ import annotations

import numpy as np


class KVCache:
    """Keys and values of every layer for positions 0..n_tokens-1.

    k: (n_layer, n_kv_head, n_ctx, head_dim_k) float32; v: (n_layer, n_kv_head, n_ctx, head_dim_v).
    np.zeros maps lazily, so memory is touched only as the context fills.
    """

    def __init__(self, n_layer: int, n_kv_head: int, n_ctx: int, head_dim_k: int, head_dim_v: int):
        self.n_ctx = n_ctx
        self.k = np.zeros((n_layer, n_kv_head, n_ctx, head_dim_k), np.float32)
        self.v = np.zeros((n_layer, n_kv_head, n_ctx, head_dim_v), np.float32)
        self.n_tokens = 0

    def store(self, layer: int, pos0: int, k: np.ndarray, v: np.ndarray) -> None:
        """Write k (T, n_kv_head, hd_k) and v (T, n_kv_head, hd_v) at positions pos0..pos0+T-1."""
        t = k.shape[0]
        self.k[layer, :, pos0:pos0 + t] = k.transpose(1, 0, 2)
        self.v[layer, :, pos0:pos0 + t] = v.transpose(1, 0, 2)

    def reset(self, n_tokens: int = 0) -> None:
        """Forget positions n_tokens.. (they are overwritten on the next store)."""
        self.n_tokens = n_tokens
