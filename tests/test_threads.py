"""The default thread count: one per physical core this process may use."""
import os

from localllm import threads


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
