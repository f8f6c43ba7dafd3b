"""Kernels called only from Python load from Numba's on-disk cache without their LLVM bitcode.

Numba caches a compiled function as its machine code plus the LLVM bitcode of the whole library (kept so
another jitted function could inline it), and every load parses that bitcode: 0.42 s for the 3 MB of
`decode_token`, 0.07 s for `matmul_vnni`, most of a fresh process's first token (measured 2026-12-03,
SmolLM2: 1.3 s of cache loads before the second token). A function that no jitted code calls needs none
of it: the machine code is what runs. `entry_point` gives such a dispatcher a cache that stores, in
place of the bitcode, a one-line module defining just the Python wrapper's symbol (which Numba looks up
by name). Were a jitted function ever to call an entry point, its compile would fail loudly
("Symbol ... not linked properly"), never run a stub.

Every kernel module ends with `lean_caches(globals())`: before its first cache load Numba refreshes its
typing and target contexts, which imports and registers all of its NumPy, random, typed-container and
CFFI implementations (0.2 s of a fresh process). Machine code loaded from the cache needs none of that,
only Numba's runtime (NRT) set up; a compile still refreshes first, as ever (numba's compiler does it).
"""
from __future__ import annotations

from numba.core.caching import CompileResultCacheImpl, FunctionCache
from numba.core.dispatcher import Dispatcher
from numba.core.runtime import rtsys


def _stub_bitcode(symbol: str) -> bytes:
    import llvmlite.binding as ll

    return ll.parse_assembly(f'define linkonce_odr void @"{symbol}"() {{\n  unreachable\n}}\n').as_bitcode()


class _EntryImpl(CompileResultCacheImpl):
    def reduce(self, cres):
        (name, kind, data), *rest = cres._reduce()
        if kind == "object":
            data = (data[0], _stub_bitcode(cres.fndesc.llvm_cpython_wrapper_name))
        return ((name, kind, data), *rest)


class LeanCache(FunctionCache):
    """Numba's cache of a function, loading without the context refresh (see the module docstring)."""

    def load_overload(self, sig, target_context):
        rtsys.initialize(target_context)
        with self._guard_against_spurious_io_errors():
            return self._load_overload(sig, target_context)


class _EntryCache(LeanCache):
    _impl_class = _EntryImpl


def entry_point(dispatcher):
    """Mark a `@njit(cache=True)` dispatcher as called from Python only (see the module docstring)."""
    if isinstance(getattr(dispatcher, "_cache", None), FunctionCache):
        dispatcher._cache = _EntryCache(dispatcher.py_func)
    return dispatcher


def lean_caches(namespace: dict) -> None:
    """Give the cached dispatchers in a module's namespace a LeanCache (entry points keep theirs)."""
    for obj in list(namespace.values()):
        if isinstance(obj, Dispatcher) and type(obj._cache) is FunctionCache:
            obj._cache.__class__ = LeanCache
