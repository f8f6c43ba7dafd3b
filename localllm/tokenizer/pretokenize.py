"""BPE pre-tokenizers: text -> words, split exactly as llama.cpp's unicode_regex_split does.

llama.cpp does not run the tokenizer.json regexes as written. It runs hand-written splitters for the
GPT-2, Llama-3 and Qwen2 patterns and std::regex for the rest, both over Unicode categories from its own
table. The regexes here run over a "collapsed" copy of the text, as llama.cpp's std::regex path does:
ASCII stays as is and every other character becomes one code for its class, so `\\p{L}`, `\\s` and
friends mean what they mean in llama.cpp, whatever Python's Unicode version says.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import regex

# Collapsed codes for non-ASCII characters (the bytes llama.cpp uses).
_OTHER, _NUMBER, _LETTER, _PUNCT, _MARK, _SYMBOL = "\xd0", "\xd1", "\xd2", "\xd3", "\xd4", "\xd5"
_SPACE = "\x0b"   # every non-ASCII whitespace character

# Character-class bodies over the collapsed alphabet.
WS = "\\t\\n\\x0b\\x0c\\r "                       # \s: llama.cpp's whitespace set, collapsed
L = "A-Za-z" + _LETTER                              # \p{L}
N = "0-9" + _NUMBER                                 # \p{N}
M = _MARK                                           # \p{M}
P = "\\x21-\\x23\\x25-\\x2a\\x2c-\\x2f\\x3a\\x3b\\x3f\\x40\\x5b-\\x5d\\x5f\\x7b\\x7d" + _PUNCT  # \p{P}
_CONTRACTIONS_CASED = "'s|'t|'re|'ve|'m|'ll|'d"
_CONTRACTIONS_ANY_CASE = "'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]"

# llama.cpp's custom splitters, as regexes. Each ends in `.` because the splitters never leave a
# character unassigned; `\s+(?!\S)|\s+` is how they treat whitespace runs.
GPT2 = (f"{_CONTRACTIONS_CASED}| ?[{L}]+| ?[{N}]+| ?[^{WS}{L}{N}]+|[{WS}]+(?![^{WS}])|[{WS}]+|.")


def _llama3_style(numbers: str, letters: str = L, not_other: str = f"{L}{N}") -> str:
    return (f"{_CONTRACTIONS_ANY_CASE}|[^\\r\\n{L}{N}]?[{letters}]+|[{N}]{numbers}"
            f"| ?[^{WS}{not_other}]+[\\r\\n]*|[{WS}]*[\\r\\n]+|[{WS}]+(?![^{WS}])|[{WS}]+|.")


LLAMA3 = _llama3_style("{1,3}")
QWEN2 = _llama3_style("")
QWEN35 = _llama3_style("", letters=f"{L}{M}", not_other=f"{L}{M}{N}")

# std::regex stages: matches and the text between them both become words.
DIGIT = f"[{N}]"
DIGITS = f"[{N}]+"
THREE_DIGITS = "[0-9][0-9][0-9]"
DEFAULT_PUNCT = f"[{P}\\$\\+<=>\\^~\\|]+"
FALCON_PUNCT = f"[{P}\\$\\+<=>\\^~\\|`]+"


@dataclass(frozen=True)
class PreTokenizerSpec:
    stages: tuple[str, ...]
    ignore_merges: bool = False     # a word that is itself a token skips the merges (llama.cpp flag)


_GPT2 = PreTokenizerSpec((GPT2,))
_LLAMA3 = PreTokenizerSpec((LLAMA3,), ignore_merges=True)
_STARCODER = PreTokenizerSpec((DIGIT, GPT2))
_QWEN2 = PreTokenizerSpec((QWEN2,))

# tokenizer.ggml.pre -> splitter, following llama-vocab.cpp's name table
PRE_TOKENIZERS: dict[str, PreTokenizerSpec] = {
    "default": PreTokenizerSpec((DEFAULT_PUNCT, GPT2, DIGITS, THREE_DIGITS)),
    **dict.fromkeys(("gpt-2", "gpt2", "phi-2", "gigachat", "a.x-4.0", "mellum", "mpt", "olmo", "jais",
                     "exaone4"), _GPT2),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
                     "lfm2", "jina-v5-nano"), _LLAMA3),
    **dict.fromkeys(("dbrx", "smaug-bpe"), PreTokenizerSpec((LLAMA3,))),
    **dict.fromkeys(("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"),
                    _STARCODER),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "stablelm2", "megrez"), _QWEN2),
    "qwen35": PreTokenizerSpec((QWEN35,)),
    "falcon": PreTokenizerSpec((FALCON_PUNCT, GPT2, THREE_DIGITS)),
}


_IS_SPACE = regex.compile(r"\s")
_CATEGORIES = [(regex.compile(r"\p{N}"), _NUMBER), (regex.compile(r"\p{L}"), _LETTER),
               (regex.compile(r"\p{P}"), _PUNCT), (regex.compile(r"\p{M}"), _MARK),
               (regex.compile(r"\p{S}"), _SYMBOL)]
_COLLAPSE: dict[int, str] = {}     # codepoint >= 128 -> its collapsed code, filled on demand


def _collapsed_code(ch: str) -> str:
    # The `regex` module tracks current Unicode, as llama.cpp's table (generated with it) does.
    if _IS_SPACE.match(ch):
        return _SPACE
    for pattern, code in _CATEGORIES:
        if pattern.match(ch):
            return code
    return _OTHER


def collapse(text: str) -> str:
    """The text with every non-ASCII character replaced by the code of its class (same length)."""
    if text.isascii():
        return text
    for ch in set(text):
        if ord(ch) >= 128 and ord(ch) not in _COLLAPSE:
            _COLLAPSE[ord(ch)] = _collapsed_code(ch)
    return text.translate(_COLLAPSE)


class PreTokenizer:
    """Splits text into words with a sequence of regex stages, each refining the previous words."""

    def __init__(self, spec: PreTokenizerSpec):
        self.spec = spec
        self._stages = [re.compile(stage, re.DOTALL) for stage in spec.stages]

    def split(self, text: str) -> list[str]:
        collapsed = collapse(text)
        spans = [(0, len(text))]
        for stage in self._stages:
            refined = []
            for start, end in spans:
                prev = start
                for m in stage.finditer(collapsed, start, end):
                    a, b = m.span()
                    if a == b:
                        continue
                    if a > prev:
                        refined.append((prev, a))
                    refined.append((a, b))
                    prev = b
                if prev < end:
                    refined.append((prev, end))
            spans = refined
        return [text[a:b] for a, b in spans]
