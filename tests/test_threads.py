"""The default thread count: one per physical core this process may use; BLAS's beside Numba's pool."""
import os
import subprocess
import sys

import pytest

from localllm import threads
from localllm.kernels import avx2


def _topology(root, cores):
    """A fake /sys/devices/system/cpu: cores is a list of sibling lists, e.g. [[0, 1], [2, 3]]."""
    for sib in cores:
        text = ",".join(map(str, sib))
        for c in sib:
            d = root / f"cpu{c}" / "topology"
            d.mkdir(parents=True)
            (d / "core_cpus_list").write_text(text + "\n")


def test_physical_cores_counts_smt_siblings_once(tmp_path, monkeypatch):
    _topology(tmp_path, [[0, 4], [1, 5], [2, 6], [3, 7]])
    monkeypatch.setattr(threads, "SYS_CPU", str(tmp_path))
    assert threads._physical_cores(set(range(8))) == 4
    assert threads._physical_cores({0, 4}) == 1          # both siblings of one core
    assert threads._physical_cores({0, 1}) == 2
    assert threads._physical_cores({9}) is None          # no topology for that CPU


def test_default_threads_follows_affinity_and_quota(tmp_path, monkeypatch):
    _topology(tmp_path, [[0, 2], [1, 3]])
    monkeypatch.setattr(threads, "SYS_CPU", str(tmp_path))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(threads, "_cgroup_cpus", lambda: None)
    assert threads.default_threads() == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {1, 3})
    assert threads.default_threads() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(threads, "_cgroup_cpus", lambda: 1.5)
    assert threads.default_threads() == 1


def test_default_threads_without_topology_files(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "SYS_CPU", str(tmp_path / "missing"))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    monkeypatch.setattr(threads, "_cgroup_cpus", lambda: None)
    assert 1 <= threads.default_threads() <= 3


@pytest.mark.skipif(not avx2.ENABLED, reason="BLAS keeps its threads where no integer-dot kernel runs")
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="OpenBLAS runs one thread on one CPU whatever it is told")
def test_blas_limited_to_one_thread_at_its_first_product(tmp_path):
    """Where the integer-dot kernels do the quantized products, BLAS serves only float matrices, and
    before its first product its pool is limited to one thread (its spinning workers otherwise halve the
    speed of Numba's pool on the same cores); a load alone leaves it as it is (no threadpoolctl at start)."""
    from tinymodel import write_tiny_llama
    path = write_tiny_llama(tmp_path / "tiny.gguf", n_layer=1, qtype="F16")
    code = ("import localllm, sys\n"
            f"llm = localllm.load({str(path)!r}, n_ctx=64)\n"
            "loaded = 'threadpoolctl' in sys.modules\n"
            "import threadpoolctl\n"
            "blas = lambda: [i['num_threads'] for i in threadpoolctl.threadpool_info()\n"
            "                if i['user_api'] == 'blas' and 'numpy' in i['filepath']]\n"
            "print(blas(), loaded)\n"
            "llm.logits(list(range(20)))\n"                      # over SMALL_BATCH rows: the BLAS path
            "print(blas())\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    env["OPENBLAS_NUM_THREADS"] = "2"
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    before, after = res.stdout.strip().splitlines()[-2:]
    assert before == "[2] False" and after == "[1]"
