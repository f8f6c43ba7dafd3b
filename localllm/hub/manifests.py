"""Model manifests: the data files in the top-level `models/` folder (shipped as `localllm/_models`)."""
from __future__ import annotations

import json
from pathlib import Path

_PKG = Path(__file__).resolve().parent.parent


def manifest_dir() -> Path:
    """Where the manifests are: inside the installed package, or the source tree's `models/`."""
    for cand in (_PKG / "_models", _PKG.parent / "models"):
        if cand.is_dir():
            return cand
    raise FileNotFoundError("localllm's model manifests are missing from this installation")


def load_manifests() -> dict[str, dict]:
    """Every manifest by its canonical name."""
    out = {}
    for f in sorted(manifest_dir().glob("*.json")):
        m = json.loads(f.read_text())
        out[m["name"]] = m
    return out


def find_manifest(name: str) -> dict | None:
    """The manifest whose name or alias is `name` (case-insensitive), else None."""
    key = name.strip().lower()
    for m in load_manifests().values():
        if key == m["name"].lower() or key in (a.lower() for a in m.get("aliases", ())):
            return m
    return None
