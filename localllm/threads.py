"""How many threads to use: the physical cores this process may run on (affinity and cgroup aware)."""
from __future__ import annotations

import os


def _cgroup_cpus() -> float | None:
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


SYS_CPU = "/sys/devices/system/cpu"


def _physical_cores(cpus: set[int]) -> int | None:
    """The physical cores among logical CPUs `cpus`, from Linux's topology files (SMT siblings share a
    core); None where they cannot be read. (psutil answers this too, but importing it took 47 ms of a
    fresh process's start, and it counts the whole machine's cores, not the ones this process may use.)"""
    cores = set()
    for c in cpus:
        for name in ("core_cpus_list", "thread_siblings_list"):     # the second on kernels before 5.7
            try:
                with open(f"{SYS_CPU}/cpu{c}/topology/{name}") as f:
                    cores.add(f.read().strip())
                break
            except OSError:
                pass
        else:
            return None
    return len(cores) or None


def default_threads() -> int:
    """One thread per physical core this process may run on (SMT siblings share one: matvec runs no
    faster on both), within the cgroup's CPU quota."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:
        cpus = set(range(os.cpu_count() or 1))
    n = _physical_cores(cpus)
    if n is None:
        n = len(cpus)
        try:
            import psutil
            physical, logical = psutil.cpu_count(logical=False), psutil.cpu_count(logical=True)
            if physical and logical and logical > physical:
                n = max(1, n * physical // logical)
        except Exception:
            pass
    quota = _cgroup_cpus()
    if quota:
        n = min(n, max(1, int(quota)))
    return max(1, n)


def set_threads(n: int | None) -> int:
    """Set Numba's thread count (None: default_threads()); returns the count in force."""
    import numba

    n = default_threads() if n is None else int(n)
    n = max(1, min(n, numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    return n


_blas_ready = False


def before_blas() -> None:
    """Called before localllm's first BLAS product (float-format matrices in prefill). Where the
    integer-dot kernels (VNNI or AVX2) run the other products, BLAS's pool is limited to one thread:
    OpenBLAS workers spin for a while after each call, and on the same cores as Numba's pool they halved
    the speed of every matrix product after them (Qwen2.5 pp512: 165 -> 302 t/s on Zen 4 with VNNI, 100 ->
    150 t/s on Zen 3 with AVX2). Done here rather than at load, as models of quantized matrices never call
    BLAS, and threadpoolctl took 8-12 ms of a fresh process's start."""
    global _blas_ready
    if not _blas_ready:
        _blas_ready = True
        from .kernels import avx2
        if avx2.ENABLED:
            limit_blas_threads(1)


def limit_blas_threads(n: int) -> None:
    """Limit the BLAS libraries loaded in this process to n threads (threadpoolctl), for good."""
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=n, user_api="blas")
    except Exception:      # no threadpoolctl, or a BLAS it cannot drive: leave BLAS as it is
        pass
