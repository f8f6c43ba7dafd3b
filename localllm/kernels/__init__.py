"""Numba kernels: quantized linear algebra (quantized.py) and transformer ops (ops.py)."""
import sys


def _numba_arraymath_without_scipy_linalg() -> None:
    """Import numba.np.arraymath with scipy.linalg hidden.

    The first Numba function a process loads (from the on-disk cache too) imports Numba's NumPy
    implementations, and arraymath's import-time BLAS probe imports scipy.linalg when SciPy is installed:
    0.26 s of a 1 s start-up, for a probe that only picks np.correlate / np.convolve's inner product. Hidden,
    those two use a plain loop (same results); np.dot and numba's linalg still import SciPy when compiled.
    """
    if "numba.np.arraymath" in sys.modules or "scipy.linalg" in sys.modules:
        return
    sys.modules["scipy.linalg"] = None     # `import scipy.linalg...` raises ImportError while this stands
    try:
        import numba.np.arraymath  # noqa: F401
    finally:
        if sys.modules.get("scipy.linalg", 0) is None:
            del sys.modules["scipy.linalg"]


_numba_arraymath_without_scipy_linalg()
