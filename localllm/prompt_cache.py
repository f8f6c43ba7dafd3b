"""The keys and values of chat prompt prefixes kept on disk between runs (like llama.cpp's --prompt-cache).

Every `localllm run MODEL "..."` starts with the same tokens: the chat template's opening and the system
prompt (Qwen2.5's default one is 25 of a short question's 35 tokens). The engine evaluates a chat prompt
in two parts, that prefix (everything before the last user message's text) and the rest, and keeps the
prefix's keys and values here; a later process with the same prefix copies them from disk and evaluates
only the rest. The split is made whether or not an entry exists, and the prefix is always evaluated
alone from position 0, so a run that reads the cache computes exactly what one that does not computes:
the answer never depends on the cache.

Layout: $LOCALLLM_HOME/prompts/<key>/<entry>/{k,v}.npy, the key covering the model file (path, size,
mtime), the kernel choice and the sources of the code that computes keys and values, the entry named by
the SHA-256 of the prefix's token ids (the ids themselves are not stored); k and v are (n_layer,
n_kv_head, n_tokens, head_dim) float16 bits (uint16), as the KV cache holds them. At most
MAX_ENTRIES prefixes of at most MAX_TOKENS tokens are kept per model, the least recently used dropped
first. LOCALLLM_PROMPT_CACHE=0 turns it off.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np

MIN_TOKENS = 8         # shorter prefixes are evaluated with the rest of the prompt
MAX_TOKENS = 2048      # longer ones are not kept (Qwen2.5-0.5B: 24 KB a position)
MAX_ENTRIES = 16

_KEYED_DIRS = ("kernels", "arch", "quants")
_KEYED_FILES = ("layers.py", "cache.py")


def cache_dir(model_path, n_batch: int) -> Path | None:
    """Where the prompt entries of a model file live (None: LOCALLLM_PROMPT_CACHE=0). n_batch: a prefix
    longer than a batch is evaluated in chunks of it."""
    if os.environ.get("LOCALLLM_PROMPT_CACHE", "1") == "0":
        return None
    from .hub.store import file_cache_dir
    from .kernels import avx2, vnni

    pkg = Path(__file__).resolve().parent
    sources = sorted(f for d in _KEYED_DIRS for f in (pkg / d).glob("*.py")) + [pkg / f for f in _KEYED_FILES]
    return file_cache_dir("prompts", model_path,
                          f"{avx2.ENABLED}|{vnni.ENABLED}|{avx2.SCALE16}|{avx2.TWO_LEVEL}|{n_batch}", sources)


class PromptCache:
    """The prompt entries of one model (see the module docstring)."""

    def __init__(self, root: Path):
        self.root = root

    def restore(self, prefix: list[int], cache) -> bool:
        """Copy the keys and values kept for exactly these prefix ids into positions 0.. of the KV cache;
        False (the cache untouched) when there is no such entry or it does not fit this cache."""
        entry = self.root / _name(prefix)
        n = len(prefix)
        try:
            k = np.load(entry / "k.npy", mmap_mode="r")
            v = np.load(entry / "v.npy", mmap_mode="r")
        except (OSError, ValueError):
            return False
        L, H, _, Dk = cache.k.shape
        Dv = cache.v.shape[3]
        if k.shape != (L, H, n, Dk) or v.shape != (L, H, n, Dv) or n > cache.n_ctx:
            return False
        cache.k[:, :, :n] = k
        cache.v[:, :, :n] = v
        os.utime(entry)                     # recently used
        return True

    def save(self, prefix: list[int], cache) -> None:
        """Keep the keys and values of positions 0..len(prefix)-1, just evaluated from these ids."""
        n = len(prefix)
        if not MIN_TOKENS <= n <= MAX_TOKENS:
            return
        name = _name(prefix)
        tmp = self.root / f".{name}.tmp{os.getpid()}"
        try:
            tmp.mkdir(parents=True, exist_ok=True)
            np.save(tmp / "k.npy", cache.k[:, :, :n])
            np.save(tmp / "v.npy", cache.v[:, :, :n])
            os.replace(tmp, self.root / name)   # whole or absent
        except OSError:                     # disk full, read-only home, another process saved it first
            shutil.rmtree(tmp, ignore_errors=True)
            return
        for old in self._entries()[MAX_ENTRIES:]:
            shutil.rmtree(old, ignore_errors=True)

    def _entries(self) -> list[Path]:
        """Entries, most recently used first."""
        try:
            found = [p for p in self.root.iterdir() if not p.name.startswith(".")]
        except OSError:
            return []
        return sorted(found, key=_mtime, reverse=True)


def _name(prefix: list[int]) -> str:
    return hashlib.sha256(np.asarray(prefix, np.int64).tobytes()).hexdigest()


def _mtime(p: Path) -> int:
    try:
        return p.stat().st_mtime_ns
    except OSError:                         # removed by another process meanwhile
        return 0
