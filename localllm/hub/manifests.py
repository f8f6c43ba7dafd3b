"""Model manifests: the data files in the top-level `models/` folder (shipped as `localllm/_models`)."""
from __future__ import annotations

import json
import os
from pathlib import Path

_PKG = Path(__file__).resolve().parent.parent


def manifest_dir() -> Path:
    """Where the manifests are: `$LOCALLLM_MANIFESTS` if set, else inside the installed package, else the
    source tree's `models/`."""
    override = os.environ.get("LOCALLLM_MANIFESTS")
    if override:
        return Path(override)
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


def all_names() -> list[str]:
    """Every name and alias the manifests answer to (for suggestions and completion)."""
    out = []
    for m in load_manifests().values():
        out.append(m["name"])
        out.extend(m.get("aliases", ()))
    return out


def default_manifest() -> dict | None:
    """The manifest marked `"default": true` (the model `localllm run` uses with no name)."""
    for m in load_manifests().values():
        if m.get("default"):
            return m
    return None
