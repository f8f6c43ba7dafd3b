"""The vocabulary as llama.cpp's llama-vocab.cpp reads it from GGUF metadata: token texts, attributes,
special ids, end-of-generation ids, and the split of raw text around special tokens."""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import LocalLLMError
from ..ggufio import StringArray
from .index import text_index


class UnsupportedTokenizerError(LocalLLMError):
    """The GGUF's tokenizer model or pre-tokenizer is not one localllm implements."""


class TokenAttr:
    """llama.cpp's llama_token_attr bits (plain ints: enum.IntFlag is 10x slower over 262k tokens)."""
    UNDEFINED = 0
    UNKNOWN = 1 << 0
    UNUSED = 1 << 1
    NORMAL = 1 << 2
    CONTROL = 1 << 3
    USER_DEFINED = 1 << 4
    BYTE = 1 << 5


# tokenizer.ggml.token_type value (the index) -> attributes; values outside it are UNDEFINED
_ATTR_OF_TYPE = np.array([TokenAttr.UNDEFINED, TokenAttr.NORMAL, TokenAttr.UNKNOWN, TokenAttr.CONTROL,
                          TokenAttr.USER_DEFINED, TokenAttr.UNUSED, TokenAttr.BYTE], np.int64)

# Token texts that llama.cpp treats as end of generation (and forces to CONTROL).
EOG_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
})
# Texts llama.cpp recognises as special roles when the GGUF does not name their ids.
_ROLE_TEXTS = {
    "eot": ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
            "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>"),
    "eom": ("<|eom_id|>",),
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
# gpt-oss renders these even when special tokens are skipped.
_ALWAYS_RENDERED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")


def texts_at(tokens: Sequence[str], ids: list[int]) -> list[str]:
    """tokens[i] for each of ids: a StringArray decodes them in one pass."""
    return tokens.take(ids) if isinstance(tokens, StringArray) else [tokens[i] for i in ids]


@dataclass
class Vocab:
    """Token table plus the flags that steer tokenization, resolved the way llama.cpp resolves them."""
    model: str                          # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str                            # tokenizer.ggml.pre ("default" when absent)
    tokens: Sequence[str]          # list, or ggufio.StringArray
    attrs: list[int]
    scores: list[float]
    token_to_id: Mapping[str, int]      # a dict, or an index.TextIndex read from the tokenizer cache
    merges: Sequence[str]          # list, or ggufio.StringArray
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    eot_id: int | None
    eom_id: int | None
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool
    eog_ids: frozenset[int]
    special_ids: list[int] = field(default_factory=list)   # CONTROL/USER_DEFINED/UNKNOWN, longest text first
    _special_finder: re.Pattern | None = field(default=None, repr=False)     # built on first use
    _special_by_text: dict[str, list[int]] = field(default_factory=dict, repr=False)
    _special_by_start: dict[str, list] = field(default_factory=dict, repr=False)   # first 2 chars -> (text, ids)

    @classmethod
    def from_metadata(cls, meta: dict, cache: Path | None = None) -> "Vocab":
        """cache: the model's folder of lookup tables (index.cache_dir), or None to build dicts."""
        model = meta.get("tokenizer.ggml.model")
        if model not in ("gpt2", "llama"):
            raise UnsupportedTokenizerError(
                f"tokenizer model {model!r} is not supported (localllm implements 'gpt2' byte-level BPE "
                f"and 'llama' SentencePiece); use a GGUF with one of those tokenizers")
        if "tokenizer.ggml.tokens" not in meta:
            raise UnsupportedTokenizerError("the GGUF has no tokenizer.ggml.tokens; re-convert the model")
        tokens = meta["tokenizer.ggml.tokens"]     # a StringArray from a GGUF: decoded as read
        empty = tokens.empty() if isinstance(tokens, StringArray) else [i for i, t in enumerate(tokens) if not t]
        if len(empty):
            tokens = list(tokens)
            for i in empty:
                tokens[i] = f"[EMPTY_{i}]"
        n = len(tokens)
        types = meta.get("tokenizer.ggml.token_type")
        if types is not None:     # attrs: int64 (n,) while flags are set, a list in the Vocab
            types = np.asarray(types[:n], np.int64)
            attrs = _ATTR_OF_TYPE[np.where((types >= 0) & (types < len(_ATTR_OF_TYPE)), types, 0)]
        else:
            attrs = np.full(n, TokenAttr.NORMAL, np.int64)
        raw_scores = meta.get("tokenizer.ggml.scores")
        scores = raw_scores[:n].tolist() if raw_scores is not None else [0.0] * n
        # the last id where a text repeats
        token_to_id = text_index(cache, "tokens", tokens, lambda: dict(zip(tokens, range(n))))

        if model == "gpt2":
            defaults = {"bos": 11, "eos": 11, "unk": None}
            add_bos, add_eos, add_space_prefix = False, False, False
            pre = meta.get("tokenizer.ggml.pre") or "default"
            if pre in ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
                       "lfm2", "jina-v5-nano", "tekken", "chameleon"):
                add_bos = True
            if "tokenizer.ggml.merges" not in meta:
                raise UnsupportedTokenizerError("the GGUF's BPE tokenizer has no tokenizer.ggml.merges")
            merges = meta["tokenizer.ggml.merges"]     # a StringArray from a GGUF: decoded as read
        else:
            defaults = {"bos": 1, "eos": 2, "unk": 0}
            add_bos, add_eos, add_space_prefix = True, False, True
            pre = "default"
            merges = []
        add_space_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", add_space_prefix))
        add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", add_bos))
        add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", add_eos))

        def special(key: str, default: int | None) -> int | None:
            value = meta.get(f"tokenizer.ggml.{key}_token_id")
            if value is not None and 0 <= int(value) < n:
                return int(value)
            return default if default is not None and 0 <= default < n else None

        ids = {role: special(role, defaults.get(role)) for role in ("bos", "eos", "unk", "eot", "eom")}
        ids.update({role: special(role, None) for role in ("fim_pre", "fim_suf", "fim_mid", "fim_pad",
                                                            "fim_rep", "fim_sep")})
        # Auto-detect roles by text, forcing those tokens to CONTROL, as llama.cpp does.
        for role, texts in _ROLE_TEXTS.items():
            if ids[role] is None:
                for text in texts:
                    if text in token_to_id:
                        ids[role] = token_to_id[text]
                        attrs[ids[role]] |= TokenAttr.CONTROL
                        break
        control = np.flatnonzero(attrs & TokenAttr.CONTROL).tolist()
        for i, text in zip(control, texts_at(tokens, control)):
            if "unused" in text:
                attrs[i] |= TokenAttr.UNUSED

        eog = {ids[r] for r in ("fim_pad", "fim_rep", "fim_sep") if ids[r] is not None}
        for text in EOG_TEXTS:
            i = token_to_id.get(text)
            if i is not None:
                eog.add(i)
                attrs[i] |= TokenAttr.CONTROL
        for text in _ALWAYS_RENDERED:
            if text in token_to_id:
                attrs[token_to_id[text]] = TokenAttr.USER_DEFINED
        eog.update(ids[r] for r in ("eos", "eot", "eom") if ids[r] is not None)
        by_text = {tokens[i]: i for i in eog}
        has_call = "<|call|>" in by_text or "<|calls|>" in by_text
        if "<|end|>" in by_text and has_call and ("<|return|>" in by_text or "<|flush|>" in by_text):
            eog.discard(by_text["<|end|>"])
            attrs[by_text["<|end|>"]] = TokenAttr.USER_DEFINED
        if "</s>" in by_text and ("<|tool_response>" in by_text or "<|plamo:eos|>" in by_text):
            eog.discard(by_text["</s>"])
            attrs[by_text["</s>"]] = TokenAttr.NORMAL

        mask = TokenAttr.CONTROL | TokenAttr.USER_DEFINED | TokenAttr.UNKNOWN
        special = np.flatnonzero(attrs & mask).tolist()
        length = {i: len(t.encode()) for i, t in zip(special, texts_at(tokens, special))}
        special_ids = sorted(special, key=lambda i: -length[i])
        return cls(model=model, pre=pre, tokens=tokens, attrs=attrs.tolist(), scores=scores, token_to_id=token_to_id,
                   merges=merges, bos_id=ids["bos"], eos_id=ids["eos"], unk_id=ids["unk"],
                   eot_id=ids["eot"], eom_id=ids["eom"], add_bos=add_bos, add_eos=add_eos,
                   add_space_prefix=add_space_prefix, eog_ids=frozenset(eog), special_ids=special_ids)

    def partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Split text into raw-text pieces and special-token ids, like llama.cpp's tokenizer_st_partition.

        Each special token, longest first, splits every remaining text piece at its leftmost
        non-overlapping occurrences. User-defined tokens always split; control and unknown tokens only
        when parse_special. Only the tokens that occur in the text are tried, so this stays fast for
        vocabularies with thousands of special tokens.
        """
        if not text:
            return []
        skip = TokenAttr.CONTROL | TokenAttr.UNKNOWN
        present = self._special_tokens_in(text)
        pieces: list[str | int] = [text]
        for special_id in self.special_ids:
            if special_id not in present or (not parse_special and self.attrs[special_id] & skip):
                continue
            needle = self.tokens[special_id]
            out: list[str | int] = []
            for piece in pieces:
                if isinstance(piece, int) or needle not in piece:
                    out.append(piece)
                    continue
                start = 0
                while (hit := piece.find(needle, start)) >= 0:
                    if hit > start:
                        out.append(piece[start:hit])
                    out.append(special_id)
                    start = hit + len(needle)
                if start < len(piece):
                    out.append(piece[start:])
            pieces = out
        return pieces

    def _special_tokens_in(self, text: str) -> set[int]:
        """Ids of special tokens occurring anywhere in text, overlapping occurrences included."""
        if not self._special_by_text:
            for i, t in zip(self.special_ids, texts_at(self.tokens, self.special_ids)):
                self._special_by_text.setdefault(t, []).append(i)
            for t, ids in self._special_by_text.items():
                self._special_by_start.setdefault(t[:2], []).append((t, ids))
        if self._special_finder is None and len(text) <= 4096:
            # A short text (a chat turn) is searched directly for the special tokens whose first two
            # characters occur in it (Gemma 3's 6.4k special tokens are mostly "<unused...>": its chat
            # prompt checks 12), against 0.16 s to compile the trie of them all (done once a
            # longer text comes). Both find every special token that occurs.
            starts = self._special_by_start
            found = set()
            for start in {text[k:k + 2] for k in range(len(text))} | set(text):   # pairs and characters
                for t, ids in starts.get(start, ()):
                    if t in text:
                        found.update(ids)
            return found
        if self._special_finder is None:
            # A zero-width lookahead over a trie finds the longest special token at every position;
            # stdlib re scans it ~50x faster than a flat alternation of thousands of literals.
            self._special_finder = re.compile("(?=(" + _trie_pattern(self._special_by_text) + "))"
                                              if self._special_by_text else "(?!)")
        found: set[int] = set()
        for longest in set(self._special_finder.findall(text)):
            # Every special token that matches where the longest one starts is a prefix of it.
            for k in range(1, len(longest) + 1):
                found.update(self._special_by_text.get(longest[:k], ()))
        return found


def _trie_pattern(words) -> str:
    """A regex matching the longest of words at a position, built as a trie so matching is linear."""
    trie: dict = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict) -> str:
        branches = [re.escape(ch) + build(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        if len(branches) == 1 and "" not in node:
            return branches[0]
        return "(?:" + "|".join(branches) + ")" + ("?" if "" in node else "")

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 4 * max(map(len, words)) + 100))
    return build(trie)
