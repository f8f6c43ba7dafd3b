"""The Tokenizer: GGUF metadata in, llama.cpp-identical ids out."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .bpe import BPETokenizer
from .detokenize import token_piece
from .spm import SPACE, SPMTokenizer
from .vocab import TokenAttr, Vocab


class Tokenizer:
    """Encodes and decodes text exactly as llama.cpp's llama_tokenize / llama_token_to_piece do."""

    def __init__(self, vocab: Vocab, cache: Path | None = None):
        self.vocab = vocab
        self._engine = BPETokenizer(vocab, cache) if vocab.model == "gpt2" else SPMTokenizer(vocab, cache)
        self._pieces: list[bytes | None] = [None] * len(vocab.tokens)
        hidden = TokenAttr.CONTROL | TokenAttr.UNKNOWN
        self._hidden = frozenset(i for i in vocab.special_ids if vocab.attrs[i] & hidden)

    @classmethod
    def from_metadata(cls, meta: dict, cache: Path | None = None) -> "Tokenizer":
        """Build from a GGUF metadata dict; raises UnsupportedTokenizerError for unknown model/pre.
        cache: the model file's folder of lookup tables (index.cache_dir), None to build dicts only."""
        vocab = Vocab.from_metadata(meta, cache)
        return cls(vocab, cache)

    @classmethod
    def from_gguf(cls, path) -> "Tokenizer":
        from ..ggufio import GGUFFile
        return cls.from_metadata(GGUFFile(path).metadata)

    # -- properties other code relies on ---------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.vocab.tokens)

    @property
    def bos_id(self) -> int | None:
        return self.vocab.bos_id

    @property
    def eos_id(self) -> int | None:
        return self.vocab.eos_id

    @property
    def add_bos(self) -> bool:
        return self.vocab.add_bos

    @property
    def add_eos(self) -> bool:
        return self.vocab.add_eos

    @property
    def eog_ids(self) -> frozenset[int]:
        return self.vocab.eog_ids

    def token_text(self, token_id: int) -> str:
        return self.vocab.tokens[token_id]

    # -- encoding ----------------------------------------------------------------------------------
    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Ids for text; add_special adds BOS/EOS per the model's flags, parse_special matches control
        tokens written in the text (user-defined tokens always match)."""
        vocab = self.vocab
        out: list[int] = []
        if add_special and vocab.add_bos and vocab.bos_id is not None:
            out.append(vocab.bos_id)
        if vocab.model == "gpt2":
            for fragment in vocab.partition(text, parse_special):
                out.extend(self._engine.encode(fragment) if isinstance(fragment, str) else (fragment,))
        else:
            prev_special = True   # SentencePiece prefixes a space to text at the start or after a special
            for fragment in vocab.partition(text, parse_special):
                if isinstance(fragment, int):
                    out.append(fragment)
                    prev_special = True
                    continue
                if vocab.add_space_prefix and prev_special:
                    fragment = " " + fragment
                out.extend(self._engine.encode(fragment.replace(" ", SPACE)))
                prev_special = False
        if add_special and vocab.add_eos and vocab.eos_id is not None:
            out.append(vocab.eos_id)
        return out

    # -- decoding ----------------------------------------------------------------------------------
    def token_bytes(self, token_id: int, skip_special: bool = False) -> bytes:
        """The raw bytes a token stands for; control tokens give their text unless skip_special."""
        if skip_special and token_id in self._hidden:
            return b""
        piece = self._pieces[token_id]
        if piece is None:
            piece = self._pieces[token_id] = token_piece(self.vocab, token_id)
        return piece

    def strip_prefix_space(self, first_piece: bytes) -> bytes:
        """Drop the space SentencePiece prefixed to the text (llama.cpp detokenize's lstrip)."""
        if self.vocab.add_space_prefix and first_piece.startswith(b" "):
            return first_piece[1:]
        return first_piece

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text for ids; invalid UTF-8 (a cut-off character) becomes U+FFFD."""
        pieces = [self.token_bytes(i, skip_special) for i in ids]
        if pieces:
            pieces[0] = self.strip_prefix_space(pieces[0])
        return b"".join(pieces).decode("utf-8", errors="replace")
