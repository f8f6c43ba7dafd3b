"""Token samplers: a callable built once from the sampling settings, applied to one logits row.

Order as in llama.cpp's default chain: repetition penalty, top-k, top-p, min-p, temperature, draw.
temperature <= 0 is greedy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40             # <= 0: off
    top_p: float = 0.95         # >= 1: off
    min_p: float = 0.05         # <= 0: off
    repeat_penalty: float = 1.0  # 1: off
    repeat_last_n: int = 64
    seed: int | None = None


class Sampler:
    def __init__(self, params: SamplingParams):
        self.p = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray, history: list[int] | None = None) -> int:
        """Next token id from logits (n_vocab,); history: the tokens so far (for the penalty)."""
        p = self.p
        logits = np.asarray(logits, np.float32)
        if p.repeat_penalty != 1.0 and history:
            logits = logits.copy()
            recent = np.unique(np.asarray(history[-p.repeat_last_n:], np.int64))
            vals = logits[recent]
            logits[recent] = np.where(vals > 0, vals / p.repeat_penalty, vals * p.repeat_penalty)
        if p.temperature <= 0:
            return int(np.argmax(logits))
        n = logits.shape[0]
        k = p.top_k if 0 < p.top_k < n else n
        if k < n:
            cand = np.argpartition(-logits, k - 1)[:k]
        else:
            cand = np.arange(n)
        cand = cand[np.argsort(-logits[cand], kind="stable")]   # candidates, best first
        z = logits[cand].astype(np.float64)
        probs = np.exp(z - z[0])
        probs /= probs.sum()
        keep = len(cand)
        if p.top_p < 1.0:
            keep = min(keep, int(np.searchsorted(np.cumsum(probs), p.top_p) + 1))
        if p.min_p > 0.0:
            keep = min(keep, max(1, int(np.count_nonzero(probs[:keep] >= p.min_p * probs[0]))))
        z = z[:keep] / p.temperature
        w = np.exp(z - z[0])
        return int(cand[self.rng.choice(keep, p=w / w.sum())])
