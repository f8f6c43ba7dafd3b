"""Vocabulary lookups kept on disk between runs, so a fresh process builds no dict of the whole vocabulary.

Building `token_to_id` (Gemma 3's 262k tokens, Qwen2.5's 151k) and the BPE merge ranks (151k) took
80-200 ms of every load: hashing and inserting each string. The first load of a model still builds
those dicts and also writes each as an open-addressing table: int32 slots, a power of two at least twice
the entries, each holding the value (a token id, a merge rank) or -1; a string's probe starts at the
CRC-32 of its UTF-8 bytes and moves one slot at a time. A later process reads the table (a few MB, ~1 ms)
and answers `get` by probing it and comparing the string with the text its value points at (it never
returns another string's id); the key ties a table to its file, and a checksum over the table and the
count of texts it was built for catch a truncated or corrupt file, which is then rebuilt.
Lookups cost ~0.5 µs against a dict's 0.05: fine for a prompt, and long texts are cached a word at a
time by the tokenizers.

Layout: $LOCALLLM_HOME/tokenizers/<key>/<name>.bin (a header: magic, count of texts, CRC-32 of the
body; then the body), the key covering the model file (path, size, mtime)
and this module's source. LOCALLLM_TOKENIZER_CACHE=0 turns it off.
"""
from __future__ import annotations

import os
import struct
import zlib
from array import array
from pathlib import Path
from typing import Callable

_HEADER = struct.Struct("<4sQI")     # magic, count of texts, CRC-32 of the slots
_MAGIC = b"LLTI"


def cache_dir(model_path) -> Path | None:
    """Where a model file's tables live (None: LOCALLLM_TOKENIZER_CACHE=0)."""
    if os.environ.get("LOCALLLM_TOKENIZER_CACHE", "1") == "0":
        return None
    from ..hub.store import file_cache_dir

    return file_cache_dir("tokenizers", model_path, "", [__file__])


def _key(s: str) -> int:
    return zlib.crc32(s.encode("utf-8", "surrogatepass"))


class TextIndex:
    """A read-only str -> int map over a table: `texts[value] == key` for every key it holds."""
    __slots__ = ("_texts", "_table", "_mask")

    def __init__(self, texts: list[str], table: array | memoryview):   # (2^k,) int32 slots
        self._texts, self._table, self._mask = texts, table, len(table) - 1

    def get(self, s: str, default=None):
        table, mask, texts = self._table, self._mask, self._texts
        slot = _key(s) & mask
        while (v := table[slot]) >= 0:
            if texts[v] == s:
                return v
            slot = (slot + 1) & mask
        return default

    def __contains__(self, s) -> bool:
        return isinstance(s, str) and self.get(s) is not None

    def __getitem__(self, s: str) -> int:
        v = self.get(s)
        if v is None:
            raise KeyError(s)
        return v


def table_of(mapping: dict[str, int]) -> array:
    """The open-addressing table (int32 slots) of a str -> int map."""
    n = 1 << max(4, (2 * len(mapping) - 1).bit_length())
    table, mask = array("i", [-1]) * n, n - 1
    for s, v in mapping.items():
        slot = _key(s) & mask
        while table[slot] >= 0:
            slot = (slot + 1) & mask
        table[slot] = v
    return table


def _read(path: Path, n_texts: int) -> memoryview | None:
    """The body of a file _write wrote for n_texts texts, or None (missing, foreign, damaged)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) < _HEADER.size:
        return None
    magic, count, crc = _HEADER.unpack_from(data)
    body = memoryview(data)[_HEADER.size:]
    return body if magic == _MAGIC and count == n_texts and zlib.crc32(body) == crc else None


def _write(path: Path, body: bytes, n_texts: int) -> None:
    from ..hub.store import write_cache_file

    write_cache_file(path, _HEADER.pack(_MAGIC, n_texts, zlib.crc32(body)) + body)


def _kept(folder: Path | None, name: str, n_texts: int, build, dump, load):
    """build(), kept in folder/<name>.bin as dump(built) between runs; a later run gets load(body) of
    the file, or builds (and rewrites) it where that is None or the file is missing or damaged."""
    if folder is None:
        return build()
    path = folder / f"{name}.bin"
    body = _read(path, n_texts)
    if body is not None and (kept := load(body)) is not None:
        return kept
    built = build()
    _write(path, dump(built), n_texts)
    return built


def _decoded(body: memoryview) -> str | None:
    try:
        return bytes(body).decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return None


def _index(texts: list[str], body: memoryview) -> TextIndex | None:
    n_slots = len(body) // 4
    if len(body) % 4 or n_slots < 16 or n_slots & (n_slots - 1):
        return None
    return TextIndex(texts, body.cast("i"))


def cached_text(folder: Path | None, name: str, texts: list[str], build: Callable[[], str]) -> str:
    """`build()` (a string derived from `texts`, such as SentencePiece's joins_space), kept in `folder`."""
    return _kept(folder, name, len(texts), build, lambda text: text.encode("utf-8", "surrogatepass"), _decoded)


def text_index(folder: Path | None, name: str, texts: list[str], build: Callable[[], dict[str, int]]):
    """`build()` (a dict whose values index `texts`), or the TextIndex of the table `folder` keeps of it."""
    return _kept(folder, name, len(texts), build, lambda mapping: table_of(mapping).tobytes(),
                 lambda body: _index(texts, body))
