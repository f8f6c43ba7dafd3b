"""Byte scans of the GGUF header too long for a Python loop."""
from __future__ import annotations

import numpy as np
from numba import njit

from .entry import entry_point, lean_caches


@entry_point
@njit(cache=True)
def string_prefixes(buf, start, n, out):
    """Where each of n length-prefixed strings from byte `start` of buf (uint8) begins: out int64 (n,)
    gets the offset of each 8-byte little-endian length. Returns the end of the last string, or -1 when a
    prefix or string runs past the buffer (a truncated file). Qwen2.5's 151k-token vocabulary: 0.7 ms,
    where the Python loop it replaced took most of the header's 0.18 s."""
    pos, end = start, buf.shape[0]
    for i in range(n):
        if pos + 8 > end:
            return -1
        out[i] = pos
        length = np.uint64(0)
        for b in range(7, -1, -1):
            length = (length << np.uint64(8)) | np.uint64(buf[pos + b])
        if length > np.uint64(end):
            return -1
        pos += 8 + np.int64(length)
    return pos if pos <= end else -1


@entry_point
@njit(cache=True)
def join_strings(buf, at, end, out):
    """The strings string_prefixes found (at: their offsets, end: past the last) copied into out (uint8,
    their bytes plus one NUL between each two), ready to decode and split at once. Returns how many NUL
    bytes the strings themselves hold (then the split would be wrong)."""
    n, w, nuls = at.shape[0], 0, 0
    for i in range(n):
        a = at[i] + 8
        b = at[i + 1] if i + 1 < n else end
        if i > 0:
            out[w] = 0
            w += 1
        for p in range(a, b):
            c = buf[p]
            nuls += c == 0
            out[w] = c
            w += 1
    return nuls


lean_caches(globals())
