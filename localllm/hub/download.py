"""Talking to the Hugging Face Hub: where it is, what a repo holds, and resumable, verified downloads.

The requests go through huggingface_hub's shared session (`get_session`, `build_hf_headers`: its auth
token, user agent and offline guard) but not through `hf_hub_download`, so that this module owns the
three properties the store relies on: a download resumes from its `.partial` file with an HTTP Range
request, the sha256 is checked while the bytes stream past, and the file only gets its final name once
verified. Settings are read when called, not at import, so HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE set
by a test or a wrapper take effect.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from ..errors import DownloadError, ModelNotFoundError

_CHUNK = 1 << 20
_TRUE = {"1", "on", "yes", "true"}


class HubUnreachableError(DownloadError):
    """The hub did not answer (no network, DNS, refused, timed out, 5xx): a mirror may help."""


class ChecksumMismatchError(DownloadError):
    """The bytes received are not the file that was asked for."""


class DownloadInterruptedError(DownloadError):
    """The connection dropped more often than we retry; the partial file stays for the next try."""


class DiskSpaceError(DownloadError):
    """Not enough free disk for the download."""


class Reporter:
    """Where pull reports to; the CLI draws these with rich, tests and the Python API ignore them."""

    def info(self, msg: str) -> None: ...
    def warn(self, msg: str) -> None: ...
    def start(self, description: str, total: int | None, completed: int = 0) -> None: ...
    def advance(self, n: int) -> None: ...
    def stop(self) -> None: ...


# settings ----------------------------------------------------------------------------------------
def hub_endpoint() -> str:
    from huggingface_hub import constants
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def is_offline() -> bool:
    from huggingface_hub import constants
    env = os.environ.get("HF_HUB_OFFLINE")
    if env is not None:
        return env.strip().lower() in _TRUE
    return bool(constants.HF_HUB_OFFLINE)


def hf_cache_dir() -> Path:
    """huggingface_hub's cache (HF_HUB_CACHE, else HF_HOME/hub, else its default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants
    return Path(constants.HF_HUB_CACHE)


def download_retries() -> int:
    """How many times a dropped connection is resumed within one pull (LOCALLLM_DOWNLOAD_RETRIES)."""
    try:
        return max(0, int(os.environ.get("LOCALLLM_DOWNLOAD_RETRIES", "5")))
    except ValueError:
        return 5


def file_url(repo: str, filename: str, revision: str = "main") -> str:
    return f"{hub_endpoint()}/{repo}/resolve/{quote(revision, safe='')}/{quote(filename)}"


def _headers() -> dict:
    from huggingface_hub.utils import build_hf_headers
    h = build_hf_headers(library_name="localllm")
    h["Accept-Encoding"] = "identity"   # sizes and ranges count bytes on disk
    return h


def _httpx():
    """The HTTP client huggingface_hub's session is built on: httpx2 (huggingface_hub 2.x) or httpx (1.x);
    both have the same API."""
    try:
        import httpx2
        return httpx2
    except ImportError:
        import httpx
        return httpx


def _timeout():
    return _httpx().Timeout(connect=10.0, read=60.0, write=60.0, pool=10.0)


def _session():
    from huggingface_hub import get_session
    return get_session()


def _raise_for_status(r, what: str) -> None:
    """Map the hub's answers to errors that say what to do."""
    code = r.status_code
    if code < 400:
        return
    if code >= 500 or code in (408, 429):
        raise HubUnreachableError(f"{what}: the hub answered {code} ({hub_endpoint()}); try again later")
    err = r.headers.get("X-Error-Code", "")
    if err == "GatedRepo":
        raise DownloadError(f"{what}: the repository is gated; accept its terms on the hub, then set "
                            f"HF_TOKEN to a token of that account")
    if code == 404 or err in ("RepoNotFound", "EntryNotFound", "RevisionNotFound"):
        # the hub answers 401 for a repo that doesn't exist (or is private) to anonymous requests
        hint = "; if it is private, set HF_TOKEN" if code == 401 else ""
        raise ModelNotFoundError(f"{what}: not found on the hub ({hub_endpoint()}); check the name{hint}")
    if code in (401, 403):
        raise DownloadError(f"{what}: access denied ({code}); if the repository is gated or private, "
                            f"accept its terms on the hub and set HF_TOKEN")
    raise DownloadError(f"{what}: the hub answered {code}")


def _network_error(e: Exception, what: str) -> DownloadError:
    return HubUnreachableError(f"{what}: cannot reach {hub_endpoint()} ({type(e).__name__}: {e or 'no answer'})")


# listing -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int | None
    sha256: str | None      # the LFS object id, which is the file's sha256


def list_repo_files(repo: str, revision: str = "main") -> list[RemoteFile]:
    """Every file of a model repo (the hub's tree API, as HfApi.list_repo_tree uses it), with LFS sha256."""
    http = _httpx()
    what = f"hf.co/{repo}"
    url = f"{hub_endpoint()}/api/models/{repo}/tree/{quote(revision, safe='')}"
    params = {"recursive": "true", "expand": "false"}
    out: list[RemoteFile] = []
    try:
        while url:
            r = _session().get(url, params=params, headers=_headers(), timeout=_timeout())
            _raise_for_status(r, what)
            for e in r.json():
                if e.get("type") != "file":
                    continue
                lfs = e.get("lfs") or {}
                out.append(RemoteFile(path=e["path"], size=lfs.get("size", e.get("size")), sha256=lfs.get("oid")))
            url, params = r.links.get("next", {}).get("url"), None
    except http.TransportError as e:
        raise _network_error(e, what) from e
    except ValueError as e:
        raise DownloadError(f"{what}: the hub sent an unreadable file list ({e})") from e
    return out


def cached_repo_files(repo: str, revision: str = "main") -> dict[str, Path]:
    """Files of `repo` already in huggingface_hub's cache (relative name -> path), without the network."""
    base = hf_cache_dir() / ("models--" + repo.replace("/", "--"))
    ref = base / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snap = base / "snapshots" / commit
    if not snap.is_dir():
        return {}
    return {str(p.relative_to(snap)).replace(os.sep, "/"): p for p in snap.rglob("*") if p.is_file()}


def find_in_hf_cache(repo: str, filename: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache
    try:
        hit = try_to_load_from_cache(repo, filename, cache_dir=str(hf_cache_dir()))
    except Exception:  # a malformed cache is a cache miss
        return None
    return Path(hit) if isinstance(hit, str) and os.path.isfile(hit) else None


# downloading -------------------------------------------------------------------------------------
def sha256_of(path: Path, h=None) -> "hashlib._Hash":
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK * 8):
            h.update(chunk)
    return h


def download(url: str, dest: Path, partial: Path, *, what: str, size: int | None, sha256: str | None,
             reporter: Reporter | None = None, retries: int | None = None) -> tuple[str, str | None]:
    """GET `url` into `dest`, resuming `partial` if it exists; returns (sha256, X-Repo-Commit).

    Bytes are appended to `partial` and hashed as they arrive; a dropped connection is resumed with
    `Range: bytes=<have>-` up to `retries` times, then left for the next call. The file is renamed to
    `dest` only when its size and sha256 match; a mismatch deletes it.
    """
    reporter = reporter or Reporter()
    try:
        return _download(url, dest, partial, what, size, sha256, reporter,
                         download_retries() if retries is None else retries)
    finally:
        reporter.stop()     # also on Ctrl-C: the progress display must give the terminal back


def _download(url, dest, partial, what, size, sha256, reporter, retries):
    http = _httpx()

    partial.parent.mkdir(parents=True, exist_ok=True)
    have = partial.stat().st_size if partial.exists() else 0
    if size is not None and have > size:
        partial.unlink()
        have = 0
    h = sha256_of(partial) if have else hashlib.sha256()
    revision = None
    attempt = 0
    started = False
    while True:
        headers = _headers()
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            with _session().stream("GET", url, headers=headers, timeout=_timeout()) as r:
                revision = r.headers.get("X-Repo-Commit") or revision
                if r.status_code == 416 and have:   # nothing past what we have: done, or a stale partial
                    if size is not None and have == size:
                        break
                    partial.unlink()
                    have, h = 0, hashlib.sha256()
                    continue
                _raise_for_status(r, what)
                mode = "ab"
                if have and r.status_code != 206:    # the server ignored Range: start over
                    have, h, mode = 0, hashlib.sha256(), "wb"
                if size is None:
                    n = r.headers.get("Content-Length")
                    size = have + int(n) if n and n.isdigit() else None
                if not started:
                    reporter.start(what, size, have)
                    started = True
                elif have == 0:
                    reporter.start(what, size, 0)
                with open(partial, mode) as f:
                    for chunk in r.iter_bytes():   # as received: a chunk_size would buffer, and lose on a cut
                        f.write(chunk)
                        h.update(chunk)
                        have += len(chunk)
                        reporter.advance(len(chunk))
            if size is not None and have < size:
                raise http.RemoteProtocolError(f"connection closed at {have} of {size} bytes")
            break
        except http.TransportError as e:
            if not started:   # no answer at all: the hub is unreachable (a mirror may help)
                raise _network_error(e, what) from e
            if attempt >= retries:
                reporter.stop()
                raise DownloadInterruptedError(
                    f"{what}: download interrupted at {_human(have)} of {_human(size)} ({type(e).__name__}); "
                    f"run the same command again to resume") from e
            attempt += 1
            reporter.warn(f"connection lost at {_human(have)}; resuming (try {attempt} of {retries})")
            time.sleep(min(0.25 * 2 ** attempt, 8.0))
            have = partial.stat().st_size if partial.exists() else 0
        except OSError as e:
            reporter.stop()
            raise _disk_error(e, what, partial) from e
    reporter.stop()
    got = h.hexdigest()
    if (size is not None and have != size) or (sha256 and got != sha256.lower()):
        partial.unlink(missing_ok=True)
        detail = (f"size {have} != {size}" if size is not None and have != size
                  else f"sha256 {got[:12]}… != {sha256[:12]}…")
        raise ChecksumMismatchError(f"{what}: checksum mismatch ({detail}); the file was removed, "
                                    f"run the pull again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(partial, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(partial, dest)
    return got, revision


def _disk_error(e: OSError, what: str, where: Path) -> DownloadError:
    import errno
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return DiskSpaceError(f"{what}: disk full while writing {where.parent}; free some space "
                              f"(`localllm rm` unused models) or set LOCALLLM_HOME to a bigger disk, "
                              f"then pull again to resume")
    return DownloadError(f"{what}: cannot write {where} ({e.strerror or e})")


def _human(n: int | None) -> str:
    """Decimal units, as the progress bar and `localllm list` show them."""
    from .info import human_bytes
    return human_bytes(n)
