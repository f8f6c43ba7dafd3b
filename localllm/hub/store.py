"""The model store: content-addressed blobs plus small name -> blob records.

    $LOCALLLM_HOME/models/                (default: the user cache dir, e.g. ~/.cache/localllm/models)
        blobs/sha256-<hex>                every GGUF, stored once whatever names point at it
        manifests/<quoted name>.json      {"name", "blob", "size", "source", "pulled_at", "arch", ...}
        partial/<key>.partial             downloads in progress (resumed with HTTP Range)

A file only ever appears under `blobs/` complete and verified: downloads land in `partial/` and are
renamed into place; records are written to a temporary file and renamed.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from ..errors import ModelNotFoundError


def default_home() -> Path:
    """`$LOCALLLM_HOME`, else the platform's user cache dir for localllm."""
    env = os.environ.get("LOCALLLM_HOME")
    if env:
        return Path(env).expanduser()
    try:
        from platformdirs import user_cache_dir
        return Path(user_cache_dir("localllm", appauthor=False))
    except ImportError:  # platformdirs is optional: fall back to the XDG default
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "localllm"


CACHE_KINDS = ("packed", "prompts", "tokenizers")   # folders of what is derived from one model file


def file_cache_dir(kind: str, model_path, settings: str, sources) -> Path:
    """$LOCALLLM_HOME/<kind>/<key>: a folder of what is derived from one model file, the key covering the
    file (real path, size, mtime), the settings that shape what is derived, and the source files
    (paths) of the code that derives it.

    The first time a key is asked for, a note of its model file and code (<key>.json beside the folder)
    is written, and the folders it supersedes are deleted (sweep_caches): those of a model file since
    deleted or changed, and those the same file got from other code (an upgrade of localllm: the
    repacked weights alone are the model's size). The caller makes the folder itself."""
    import hashlib

    real = os.path.realpath(model_path)
    st = os.stat(real)
    code = hashlib.sha256()
    for path in sources:
        code.update(Path(path).read_bytes())
    code = code.hexdigest()[:32]
    h = hashlib.sha256(f"{real}|{st.st_size}|{st.st_mtime_ns}|{settings}|{code}".encode())
    folder = default_home() / kind / h.hexdigest()[:32]
    note = folder.with_name(folder.name + ".json")
    if not note.exists() and not folder.exists():
        sweep_caches(kinds=(kind,), model=real, code=code)
        write_cache_file(note, json.dumps({"model": real, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                           "code": code}).encode())
    return folder


def _remove_cache_entry(entry: Path) -> int:
    """Delete a cache folder (or a stray file) and its note; the bytes freed."""
    import shutil

    def size(f: Path) -> int:
        try:
            return f.lstat().st_size
        except OSError:
            return 0

    note = entry.with_name(entry.name + ".json")
    is_dir = entry.is_dir()
    files = [f for f in entry.rglob("*") if f.is_file()] if is_dir else [entry]
    freed = sum(size(f) for f in files + [note])
    if is_dir:
        shutil.rmtree(entry, ignore_errors=True)
    for f in [note] if is_dir else [entry, note]:
        try:
            f.unlink()
        except OSError:
            pass
    return freed


def sweep_caches(home: Path | None = None, kinds=CACHE_KINDS, model: str | None = None,
                 code: str | None = None, drop: str | None = None) -> int:
    """Delete derived-cache folders that nothing will use again; the bytes freed. A folder goes when its
    model file is gone or has changed (size, mtime), when it has no note (written by a localllm from
    before the notes), or, given `model` (a real path) and `code`, when it was derived from that model
    by other code; and every one derived from `drop` (a real path: a model deleted from the store).
    Folders being written (name.tmpPID) are left alone."""
    home = default_home() if home is None else Path(home)
    freed = 0
    for kind in kinds:
        root = home / kind
        try:
            entries = list(root.iterdir())
        except OSError:
            continue
        notes = {e.name[:-5] for e in entries if e.name.endswith(".json")}
        for e in entries:
            if ".tmp" in e.name:
                continue
            if e.name.endswith(".json"):
                key = e.name[:-5]
                try:
                    info = json.loads(e.read_text())
                    st = os.stat(info["model"])
                    stale = (info["model"] == drop or st.st_size != info["size"] or st.st_mtime_ns != info["mtime_ns"]
                             or (model is not None and info["model"] == model and info["code"] != code))
                except (OSError, ValueError, KeyError, TypeError):
                    stale = True
                if stale:
                    freed += _remove_cache_entry(root / key)
            elif e.name not in notes:
                freed += _remove_cache_entry(e)
    return freed


def write_cache_file(path: Path, data: bytes) -> bool:
    """Write a cache file whole or not at all (beside it, then renamed; the folder made as needed).
    False, leaving nothing behind, where it cannot be written (a read-only or full home)."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return True
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
        return False


def blob_name(sha256: str) -> str:
    return f"sha256-{sha256.lower()}"


@dataclass
class Record:
    """A name in the store and the blob it points at."""

    name: str
    blob: str                       # "sha256-<hex>"
    size: int
    source: dict = field(default_factory=dict)   # {"kind": "hf"|"pypi"|"hf-cache", "repo", "file", "revision"}
    pulled_at: float = 0.0
    info: dict = field(default_factory=dict)     # summary read from the GGUF: arch, params, quant

    @property
    def sha256(self) -> str:
        return self.blob.removeprefix("sha256-")

    def to_json(self) -> dict:
        return {"name": self.name, "blob": self.blob, "size": self.size, "source": self.source,
                "pulled_at": self.pulled_at, "info": self.info}

    @classmethod
    def from_json(cls, d: dict) -> "Record":
        return cls(name=d["name"], blob=d["blob"], size=int(d.get("size", 0)), source=d.get("source", {}),
                   pulled_at=float(d.get("pulled_at", 0.0)), info=d.get("info", {}))


class Store:
    def __init__(self, home: str | os.PathLike | None = None):
        self.home = Path(home) if home is not None else default_home()
        self.root = self.home / "models"
        self.blobs = self.root / "blobs"
        self.records = self.root / "manifests"
        self.partial = self.root / "partial"

    def ensure(self) -> None:
        for d in (self.blobs, self.records, self.partial):
            d.mkdir(parents=True, exist_ok=True)

    # blobs ---------------------------------------------------------------------------------------
    def blob_path(self, sha256_or_blob: str) -> Path:
        name = sha256_or_blob if sha256_or_blob.startswith("sha256-") else blob_name(sha256_or_blob)
        return self.blobs / name

    def has_blob(self, sha256: str) -> bool:
        return self.blob_path(sha256).is_file()   # False for a dangling link into a cleaned HF cache

    def partial_path(self, key: str) -> Path:
        return self.partial / f"{key}.partial"

    # records -------------------------------------------------------------------------------------
    def _record_file(self, name: str) -> Path:
        return self.records / (quote(name.lower(), safe="") + ".json")

    def get(self, name: str) -> Record | None:
        """The record for `name` (case-insensitive), or None; a record whose blob vanished is None."""
        f = self._record_file(name)
        if not f.is_file():
            return None
        try:
            rec = Record.from_json(json.loads(f.read_text()))
        except (ValueError, KeyError):
            return None
        return rec if self.blob_path(rec.blob).is_file() else None

    def path_of(self, rec: Record) -> Path:
        return self.blob_path(rec.blob)

    def put(self, rec: Record) -> None:
        self.ensure()
        if not rec.pulled_at:
            rec.pulled_at = time.time()
        fd, tmp = tempfile.mkstemp(dir=self.records, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(rec.to_json(), f, indent=1)
        os.replace(tmp, self._record_file(rec.name))

    def list(self) -> list[Record]:
        if not self.records.is_dir():
            return []
        out = []
        for f in sorted(self.records.glob("*.json")):
            if f.name.startswith(".tmp-"):
                continue
            try:
                rec = Record.from_json(json.loads(f.read_text()))
            except (ValueError, KeyError):
                continue
            if self.blob_path(rec.blob).is_file():
                out.append(rec)
        return sorted(out, key=lambda r: r.name)

    def names(self) -> list[str]:
        return [r.name for r in self.list()]

    def remove(self, name: str) -> tuple[Record, int]:
        """Forget `name`; delete its blob when no other name points at it, with what localllm derived
        from it (repacked weights, prompt entries, tokenizer tables). Returns the removed record and the
        bytes freed."""
        f = self._record_file(name)
        if not f.is_file():
            raise ModelNotFoundError(f"'{name}' is not in the model store; `localllm list` shows what is")
        try:
            rec = Record.from_json(json.loads(f.read_text()))
        except (ValueError, KeyError):
            f.unlink()
            raise ModelNotFoundError(f"'{name}' had an unreadable record; it has been removed") from None
        f.unlink()
        freed = 0
        if not any(r.blob == rec.blob for r in self.list()):
            blob = self.blob_path(rec.blob)
            real = os.path.realpath(blob)
            try:
                freed += blob.stat().st_size if not blob.is_symlink() else 0
            except OSError:
                pass
            blob.unlink(missing_ok=True)
            freed += sweep_caches(self.home, drop=real)
        return rec, freed


def resolve_local(name: str, pull_missing: bool = True) -> Path:
    """The file a model name stands for, for `localllm.load("smollm2")`: from the store, pulled first
    if missing (progress lines go to stderr). Raises ModelNotFoundError / DownloadError."""
    from .pull import model_path, text_reporter

    path, _ = model_path(name, Store(), text_reporter(), pull_missing=pull_missing)
    return path
