"""Byte-level BPE (GGUF tokenizer model "gpt2"), merging as llama.cpp's llm_tokenizer_bpe_session does."""
from __future__ import annotations

import heapq
from pathlib import Path

from .index import text_index
from .pretokenize import PRE_TOKENIZERS, PreTokenizer
from .vocab import UnsupportedTokenizerError, Vocab


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


BYTE_TO_CHAR = _bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


class BPETokenizer:
    """Encodes raw text (no special tokens in it) to ids: pre-tokenize, byte-map, merge by rank."""

    _CACHE_LIMIT = 200_000

    def __init__(self, vocab: Vocab, cache: Path | None = None):
        spec = PRE_TOKENIZERS.get(vocab.pre)
        if spec is None:
            raise UnsupportedTokenizerError(
                f"pre-tokenizer {vocab.pre!r} (tokenizer.ggml.pre) is not supported; supported: "
                f"{', '.join(sorted(PRE_TOKENIZERS))}")
        self.vocab = vocab
        self.pre_tokenizer = PreTokenizer(spec)
        # "left right" -> rank, the first rank where a merge repeats. Byte-level symbols never hold a
        # space (it maps to "Ġ"), so the merge's own text is the key: ~40 ms for Qwen2.5's 151k merges,
        # against 140-200 for splitting each into a pair.
        merges = vocab.merges
        self.ranks = text_index(cache, "merges", merges,
                                lambda: dict(zip(reversed(merges), range(len(merges) - 1, -1, -1))))
        self._cache: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        cache = self._cache
        for word in self.pre_tokenizer.split(text):
            ids = cache.get(word)
            if ids is None:
                if len(cache) >= self._CACHE_LIMIT:
                    cache.clear()
                ids = cache[word] = self._encode_word(word)
            out.extend(ids)
        return out

    def _encode_word(self, word: str) -> list[int]:
        token_to_id = self.vocab.token_to_id
        mapped = word.encode("utf-8").decode("latin-1").translate(BYTE_TO_CHAR)
        if self.pre_tokenizer.spec.ignore_merges and mapped in token_to_id:
            return [token_to_id[mapped]]
        symbols = self._merge(list(mapped))
        out = []
        for symbol in symbols:
            token = token_to_id.get(symbol)
            if token is not None:
                out.append(token)
                continue
            # llama.cpp looks each byte of the unmerged symbol up as a one-byte token text.
            for byte in symbol.encode("utf-8"):
                token = token_to_id.get(chr(byte)) if byte < 0x80 else None
                if token is not None:
                    out.append(token)
        return out

    def _merge(self, symbols: list[str]) -> list[str]:
        """Merge adjacent symbols lowest rank first, leftmost first among equal ranks."""
        n = len(symbols)
        if n < 2:
            return symbols
        ranks = self.ranks
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        heap = [(rank, i, i + 1, a + b) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))
                if (rank := ranks.get(a + " " + b)) is not None]
        heapq.heapify(heap)
        while heap:
            _, left, right, text = heapq.heappop(heap)
            if not symbols[left] or not symbols[right] or symbols[left] + symbols[right] != text:
                continue  # outdated: one side has merged since this pair was queued
            symbols[left] = text
            symbols[right] = ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            for a, b in ((prev[left], left), (left, nxt[left])):
                if a >= 0 and b >= 0:
                    rank = ranks.get(symbols[a] + " " + symbols[b])
                    if rank is not None:
                        heapq.heappush(heap, (rank, a, b, symbols[a] + symbols[b]))
        return [s for s in symbols if s]
