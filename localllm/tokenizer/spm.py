"""SentencePiece BPE (GGUF tokenizer model "llama"), merging as llama.cpp's llm_tokenizer_spm_session does."""
from __future__ import annotations

import heapq
from pathlib import Path

from .index import cached_text
from .vocab import Vocab

SPACE = "\u2581"   # SentencePiece's visible space


class SPMTokenizer:
    """Encodes raw text (no special tokens in it) to ids by score-ordered bigram merges.

    llama.cpp merges over a whole text fragment. A merge can never cross a point where no vocab token
    contains the two neighbouring characters, so the text is cut before every U+2581 not preceded by a
    character that some token has right before a U+2581: the pieces (about one word each) merge
    independently, identically, and can be cached.
    """

    _CACHE_LIMIT = 200_000

    def __init__(self, vocab: Vocab, cache: Path | None = None):
        self.vocab = vocab
        self.scores = vocab.scores
        self.byte_ids = [self._byte_token(b) for b in range(256)]
        self.joins_space = set(cached_text(cache, "joins_space", vocab.tokens, lambda: "".join(sorted(
            {tok[i - 1] for tok in vocab.tokens if SPACE in tok[1:] for i in range(1, len(tok)) if tok[i] == SPACE}))))
        self._cache: dict[str, list[int]] = {}

    def _byte_token(self, byte: int) -> int | None:
        token_to_id = self.vocab.token_to_id
        token = token_to_id.get(f"<0x{byte:02X}>")
        if token is None and byte < 0x80:
            token = token_to_id.get(chr(byte))
        return token if token is not None else self.vocab.unk_id

    def encode(self, text: str) -> list[int]:
        """Ids for text whose spaces are already escaped to U+2581."""
        out: list[int] = []
        cache = self._cache
        for piece in self._independent_pieces(text):
            ids = cache.get(piece)
            if ids is None:
                if len(cache) >= self._CACHE_LIMIT:
                    cache.clear()
                ids = cache[piece] = self._encode_piece(piece)
            out.extend(ids)
        return out

    def _independent_pieces(self, text: str) -> list[str]:
        pieces, start = [], 0
        pos = text.find(SPACE, 1)
        while pos > 0:
            if text[pos - 1] not in self.joins_space:
                pieces.append(text[start:pos])
                start = pos
            pos = text.find(SPACE, pos + 1)
        pieces.append(text[start:])
        return pieces

    def _encode_piece(self, text: str) -> list[int]:
        token_to_id, scores = self.vocab.token_to_id, self.scores
        symbols = list(text)
        n = len(symbols)
        if n == 0:
            return []
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        # (-score, left, right, merged length): highest score first, then leftmost
        heap: list[tuple[float, int, int, int]] = []
        for i in range(n - 1):
            token = token_to_id.get(symbols[i] + symbols[i + 1])
            if token is not None:
                heap.append((-scores[token], i, i + 1, 2))
        heapq.heapify(heap)
        while heap:
            _, left, right, size = heapq.heappop(heap)
            left_text, right_text = symbols[left], symbols[right]
            if not left_text or not right_text or len(left_text) + len(right_text) != size:
                continue  # outdated: one side has merged since this pair was queued
            symbols[left] = left_text + right_text
            symbols[right] = ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            for a, b in ((prev[left], left), (left, nxt[left])):
                if a >= 0 and b >= 0:
                    merged = symbols[a] + symbols[b]
                    token = token_to_id.get(merged)
                    if token is not None:
                        heapq.heappush(heap, (-scores[token], a, b, len(merged)))
        out = []
        for symbol in symbols:
            if not symbol:
                continue
            token = token_to_id.get(symbol)
            if token is not None:
                out.append(token)
            else:  # characters no merge reached fall back to byte tokens
                out.extend(t for t in (self.byte_ids[b] for b in symbol.encode("utf-8")) if t is not None)
        return out
