"""Tokenizers read from GGUF metadata, producing the same ids as llama.cpp.

`gpt2` models use byte-level BPE with llama.cpp's pre-tokenizer for `tokenizer.ggml.pre`; `llama` models
use SentencePiece-style score merges with byte fallback.
"""
from .detokenize import StreamingDetokenizer
from .tokenizer import Tokenizer
from .vocab import UnsupportedTokenizerError

__all__ = ["Tokenizer", "StreamingDetokenizer", "UnsupportedTokenizerError"]
