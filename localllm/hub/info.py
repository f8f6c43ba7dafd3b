"""What `list` and `show` say about a GGUF, read from its header (never from its file name)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path


def summarize(path: str | Path) -> dict:
    """Architecture, size and format facts of a GGUF. Raises GGUFError on unreadable files."""
    from ..ggufio import GGUFFile

    g = GGUFFile(path)
    md = g.metadata
    arch = g.architecture
    types = Counter(t.type_name for t in g.tensors.values())
    return {
        "name": _str(md.get("general.name")),
        "architecture": arch,
        "parameters": int(g.n_params()),
        "quantization": quant_label(md.get("general.file_type"), g),
        "context_length": _int(md.get(f"{arch}.context_length")),
        "embedding_length": _int(md.get(f"{arch}.embedding_length")),
        "block_count": _int(md.get(f"{arch}.block_count")),
        "head_count": _int(md.get(f"{arch}.attention.head_count")),
        "head_count_kv": _int(md.get(f"{arch}.attention.head_count_kv")),
        "vocab_size": len(md["tokenizer.ggml.tokens"]) if "tokenizer.ggml.tokens" in md else None,
        "license": _str(md.get("general.license")),
        "tensor_types": dict(sorted(types.items(), key=lambda kv: (-kv[1], kv[0]))),
        "n_tensors": len(g.tensors),
        "chat_template": _str(md.get("tokenizer.chat_template")),
        "file_size": g.file_size,
    }


def quant_label(file_type, g) -> str:
    """The file's quantization as llama.cpp names it (general.file_type), else its dominant weight type."""
    if file_type is not None:
        try:
            from gguf import LlamaFileType
            return LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except (ValueError, ImportError):
            pass
    by_bytes = Counter()
    for t in g.tensors.values():
        if len(t.shape) >= 2:
            by_bytes[t.type_name] += t.n_bytes
    return by_bytes.most_common(1)[0][0] if by_bytes else "?"


def brief(info: dict) -> dict:
    """The part of `summarize` a store record keeps, for `list`."""
    return {k: info.get(k) for k in ("architecture", "parameters", "quantization", "context_length")}


def human_params(n: int | None) -> str:
    if not n:
        return "?"
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            v = n / div
            return f"{v:.0f}{unit}" if v >= 100 else f"{v:.1f}{unit}" if v >= 10 else f"{v:.2f}{unit}"
    return str(n)


def human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    f = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if f < 1000 or unit == "TB":
            return f"{f:.0f} {unit}" if unit == "B" or f >= 100 else f"{f:.1f} {unit}"
        f /= 1000
    return str(n)


def _int(v) -> int | None:
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def _str(v) -> str | None:
    return v if isinstance(v, str) else None
