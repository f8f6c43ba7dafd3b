"""What a model name means: a manifest name or alias, `hf.co/USER/REPO[:QUANT]`, or a local `.gguf` path."""
from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelNotFoundError
from .manifests import default_manifest, find_manifest, load_manifests

DEFAULT_QUANT = "Q4_K_M"
_HF_PREFIXES = ("https://huggingface.co/", "http://huggingface.co/", "huggingface.co/", "hf.co/")
_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class LocalRef:
    path: Path

    @property
    def name(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class ManifestRef:
    manifest: dict

    @property
    def name(self) -> str:
        return self.manifest["name"]


@dataclass(frozen=True)
class HFRef:
    repo: str
    quant: str | None     # None: Q4_K_M, or the only GGUF of the repo; may also be an exact file name

    @property
    def name(self) -> str:
        return f"hf.co/{self.repo}" + (f":{self.quant}" if self.quant else "")


ModelRef = LocalRef | ManifestRef | HFRef


def _looks_like_path(name: str) -> bool:
    return (name.lower().endswith(".gguf") or name.startswith((".", "~"))
            or (os.sep in name and not name.lower().startswith(_HF_PREFIXES)))


def parse_hf(name: str) -> HFRef | None:
    low = name.lower()
    for p in _HF_PREFIXES:
        if low.startswith(p):
            rest = name[len(p):].strip("/")
            break
    else:
        return None
    repo, _, quant = rest.partition(":")
    repo = repo.removesuffix("/")
    if not _REPO_RE.match(repo):
        raise ModelNotFoundError(f"'{name}': expected hf.co/USER/REPO or hf.co/USER/REPO:QUANT "
                                 f"(e.g. hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M)")
    if quant and not quant.lower().endswith(".gguf"):
        quant = quant.upper()
    return HFRef(repo=repo, quant=quant or None)


def resolve(name: str | None, known: list[str] = ()) -> ModelRef:
    """Turn what the user typed into a reference. `known` adds names (from the store) for suggestions.

    Raises ModelNotFoundError with close names for anything unrecognised.
    """
    if name is None or not name.strip():
        m = default_manifest()
        if m is None:
            raise ModelNotFoundError("no model named and no default model in the manifests")
        return ManifestRef(m)
    name = name.strip()
    if (hf := parse_hf(name)) is not None:
        return hf
    m = find_manifest(name)
    if m is not None:
        return ManifestRef(m)
    p = Path(name).expanduser()
    if p.is_file() or _looks_like_path(name):
        if not p.is_file():
            raise ModelNotFoundError(f"{name}: no such file")
        return LocalRef(p.resolve())
    for k in known:  # a name only the store knows (an hf.co name typed in another case, say)
        if k.lower() == name.lower():
            return resolve(k)
    raise ModelNotFoundError(unknown_message(name, known))


def unknown_message(name: str, known: list[str] = ()) -> str:
    canonical = {}  # every name or alias -> the name to suggest (a manifest's own name)
    for m in load_manifests().values():
        for n in (m["name"], *m.get("aliases", ())):
            canonical[n.lower()] = m["name"]
    for k in known:
        canonical.setdefault(k.lower(), k)
    low = name.lower()
    close = difflib.get_close_matches(low, list(canonical), n=6, cutoff=0.5)
    if len(low) >= 3:  # "smol" should find "smollm2" even where difflib's ratio is low
        close += [c for c in canonical if c.startswith(low)]
    suggest = list(dict.fromkeys(canonical[c] for c in close))[:3]
    msg = f"unknown model '{name}'"
    if suggest:
        msg += "; did you mean " + " or ".join(f"'{c}'" for c in suggest) + "?"
    else:
        msg += f"; known models: {', '.join(sorted(load_manifests()))}"
    return msg + " (or use hf.co/USER/REPO[:QUANT], or a path to a .gguf file)"


_SPLIT_RE = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.IGNORECASE)


def quant_pattern(quant: str) -> re.Pattern:
    """`Q4_K_M` inside a file name, not as part of a longer tag (Q4_K does not match Q4_K_M)."""
    return re.compile(rf"(?<![A-Za-z0-9]){re.escape(quant)}(?![A-Za-z0-9_])", re.IGNORECASE)


def pick_gguf(repo: str, files: list[str], quant: str | None) -> str:
    """The GGUF of `files` that carries `quant` (default Q4_K_M; a repo with one GGUF needs none)."""
    ggufs = [f for f in files if f.lower().endswith(".gguf") and "mmproj" not in f.lower()]
    singles = [f for f in ggufs if not _SPLIT_RE.search(f)]
    if not ggufs:
        raise ModelNotFoundError(f"hf.co/{repo} has no .gguf files; pick a repository of GGUF models "
                                 f"(their names usually end in -GGUF)")
    if quant and quant.lower().endswith(".gguf"):
        for f in ggufs:
            if f.lower() == quant.lower() or f.rsplit("/", 1)[-1].lower() == quant.lower():
                return f
        raise ModelNotFoundError(f"hf.co/{repo} has no file {quant}; it has: {', '.join(sorted(ggufs))}")
    want = quant or DEFAULT_QUANT
    pat = quant_pattern(want)
    hits = sorted((f for f in singles if pat.search(f.rsplit("/", 1)[-1])), key=lambda f: (f.count("/"), len(f)))
    if hits:
        return hits[0]
    if quant is None and len(singles) == 1:
        return singles[0]
    if any(pat.search(f) for f in ggufs):
        raise ModelNotFoundError(f"hf.co/{repo}:{want} is split into several files, which localllm "
                                 f"does not load yet; pick a smaller quantization")
    available = sorted({q for f in singles for q in _quant_tags(f)}) or sorted(singles)
    raise ModelNotFoundError(f"hf.co/{repo} has no {want} file; available: {', '.join(available)} "
                             f"(use hf.co/{repo}:QUANT)")


_TAG_RE = re.compile(r"(?<![A-Za-z0-9])(I?Q\d_[A-Z0-9_]+?|Q\d_\d|F16|BF16|F32|Q8_0)(?=[.-]|\.gguf$)",
                     re.IGNORECASE)


def _quant_tags(fname: str) -> list[str]:
    base = fname.rsplit("/", 1)[-1]
    return [m.upper() for m in _TAG_RE.findall(base)]
