"""Process settings that must be in place before Numba's OpenMP pool starts.

Measured on the project's 2-vCPU VMs, per parallel region of a decode step:
- libgomp's default wait (long spin, then sleep): ~3 µs idle, but ~10 ms whenever another process
  was busy (a spinning worker holds the core the calling thread needs);
- OMP_WAIT_POLICY=PASSIVE: ~20 µs under load, but 80-150 µs idle (futex wake-ups);
- GOMP_SPINCOUNT=1000 (a ~1 µs spin, then sleep): as fast as spinning when idle (decode 10 ms per
  SmolLM2 token vs 33 ms passive) and 40-60 µs per region under load.
  Longer spins measured again 2026-12-02 (tg128, 4 reps, SmolLM2 / Qwen2.5): GOMP_SPINCOUNT=20000 or
  100000 gains 0-10 % on an idle machine, within the noise, but with one busy process beside it
  20000 decodes SmolLM2 at 16 tokens/s against 67 for 1000.
Users can still set any of these themselves.
"""
import gc
import os
from contextlib import contextmanager

SET_HERE: dict[str, str] = {}   # what this module added to the environment (benchmarks keep it from llama.cpp)

if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    SET_HERE["GOMP_SPINCOUNT"] = os.environ["GOMP_SPINCOUNT"] = "1000"


def trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc keeps it after the load-time repacking: ~80 MB
    for SmolLM2). A no-op where libc has no malloc_trim."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextmanager
def collector_paused():
    """Python's cyclic garbage collector off while a model loads, and what the load left frozen after
    (gc.freeze: out of every later collection). Numba's import and the kernels' cache loads create ~110k
    long-lived objects, and the ~170 collections they set off took 97-116 ms of the ~1 s a fresh process
    needs to its first token (Qwen2.5, Gemma 3; measured 2026-12-07). Turning the collector back on
    without the freeze still cost 50-80 ms in the collections that follow; with it, 2 ms. Such a load
    leaves ~800 unreachable objects, which the freeze keeps. The model's own objects hold no reference
    cycles (a test checks), so a model dropped later is still freed. Where the load compiles kernels (a
    cold JIT cache), the compiler's garbage is large: the collector comes back on as the first compile
    starts, and nothing is frozen."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        from numba.core import event      # numba's import is the largest part of what a load allocates

        class _OnCompile(event.Listener):
            compiled = False

            def on_start(self, ev):
                self.compiled = True
                gc.enable()

            def on_end(self, ev):
                pass

        watch = _OnCompile()
        with event.install_listener("numba:compile", watch):
            yield
        if not watch.compiled:
            gc.freeze()
    finally:
        gc.enable()
