"""How many threads to use: the physical cores this process may run on (affinity and cgroup aware)."""
from __future__ import annotations

import os


def _cgroup_cpus() -> float | None:
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def default_threads() -> int:
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:
        allowed = os.cpu_count() or 1
    n = allowed
    try:
        import psutil
        physical = psutil.cpu_count(logical=False)
        logical = psutil.cpu_count(logical=True)
        if physical and logical and logical > physical:  # SMT: one thread per core is faster for matvec
            n = max(1, allowed * physical // logical)
    except Exception:
        pass
    quota = _cgroup_cpus()
    if quota:
        n = min(n, max(1, int(quota)))
    return max(1, n)


def set_threads(n: int | None) -> int:
    """Set Numba's thread count (None: default_threads()); returns the count in force.

    Where the integer-dot kernels (VNNI or AVX2) run prefill, BLAS is left only the attention products,
    and its pool is limited to one thread: OpenBLAS workers spin for a while after each call, and on the
    same cores as Numba's pool they halved the speed of every matrix product after them (Qwen2.5 pp512:
    165 -> 302 t/s on Zen 4 with VNNI, 100 -> 150 t/s on Zen 3 with AVX2).
    """
    import numba

    from .kernels import avx2

    n = default_threads() if n is None else int(n)
    n = max(1, min(n, numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    if avx2.ENABLED:
        limit_blas_threads(1)
    return n


def limit_blas_threads(n: int) -> None:
    """Limit the BLAS libraries loaded in this process to n threads (threadpoolctl), for good."""
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=n, user_api="blas")
    except Exception:      # no threadpoolctl, or a BLAS it cannot drive: leave BLAS as it is
        pass
