"""Ids -> bytes -> text, as llama.cpp's token_to_piece does, and a streaming detokenizer."""
from __future__ import annotations

import codecs
from typing import TYPE_CHECKING

from .bpe import CHAR_TO_BYTE
from .spm import SPACE
from .vocab import TokenAttr, Vocab

if TYPE_CHECKING:
    from .tokenizer import Tokenizer


def token_piece(vocab: Vocab, token_id: int) -> bytes:
    """The bytes a token renders to with special tokens shown (llama.cpp token_to_piece, special=True)."""
    text, attr = vocab.tokens[token_id], vocab.attrs[token_id]
    if attr & (TokenAttr.UNKNOWN | TokenAttr.CONTROL | TokenAttr.USER_DEFINED):
        return text.encode("utf-8")
    byte_level = vocab.model == "gpt2"
    if attr & TokenAttr.NORMAL:
        return _byte_level_bytes(text) if byte_level else text.replace(SPACE, " ").encode("utf-8")
    if attr & TokenAttr.BYTE:
        return bytes([_byte_token_value(text, byte_level)])
    return b""  # unused and undefined tokens render as nothing


def _byte_level_bytes(text: str) -> bytes:
    try:
        return bytes(CHAR_TO_BYTE[c] for c in text)
    except KeyError:  # not a byte-level character: llama.cpp writes a marker per character
        out = bytearray()
        for c in text:
            if c in CHAR_TO_BYTE:
                out.append(CHAR_TO_BYTE[c])
            else:
                out += b"[UNK_BYTE_0x" + c.encode("utf-8").hex().encode() + text.encode("utf-8") + b"]"
        return bytes(out)


def _byte_token_value(text: str, byte_level: bool) -> int:
    if byte_level:
        return CHAR_TO_BYTE[text[0]] if text and text[0] in CHAR_TO_BYTE else 0
    return int(text[3:5], 16)  # "<0xAB>"


class StreamingDetokenizer:
    """Turns ids into text one at a time, never emitting part of a UTF-8 character.

    >>> det = StreamingDetokenizer(tok)
    >>> "".join(det.add(i) for i in ids) + det.flush() == tok.decode(ids)
    """

    def __init__(self, tokenizer: "Tokenizer", skip_special: bool = False):
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._first = True

    def add(self, token_id: int) -> str:
        """Text completed by this token (possibly empty)."""
        piece = self.tokenizer.token_bytes(token_id, skip_special=self.skip_special)
        if self._first:
            piece = self.tokenizer.strip_prefix_space(piece)
            self._first = False
        return self._decoder.decode(piece)

    def flush(self) -> str:
        """Whatever is left; an incomplete trailing character becomes U+FFFD."""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        self._first = True
        return text
