"""Kernels called only from Python load from Numba's on-disk cache without their LLVM bitcode.

Numba caches a compiled function as its machine code plus the LLVM bitcode of the whole library (kept so
another jitted function could inline it), and every load parses that bitcode: 0.42 s for the 3 MB of
`decode_token`, 0.07 s for `matmul_vnni`, most of a fresh process's first token (measured 2026-12-03,
SmolLM2: 1.3 s of cache loads before the second token). A function that no jitted code calls needs none
of it: the machine code is what runs. `entry_point` gives such a dispatcher a cache that stores, in
place of the bitcode, a one-line module defining just the Python wrapper's symbol (which Numba looks up
by name). Were a jitted function ever to call an entry point, its compile would fail loudly
("Symbol ... not linked properly"), never run a stub.
"""
from __future__ import annotations

from numba.core.caching import CompileResultCacheImpl, FunctionCache


def _stub_bitcode(symbol: str) -> bytes:
    import llvmlite.binding as ll

    return ll.parse_assembly(f'define linkonce_odr void @"{symbol}"() {{\n  unreachable\n}}\n').as_bitcode()


class _EntryImpl(CompileResultCacheImpl):
    def reduce(self, cres):
        (name, kind, data), *rest = cres._reduce()
        if kind == "object":
            data = (data[0], _stub_bitcode(cres.fndesc.llvm_cpython_wrapper_name))
        return ((name, kind, data), *rest)


class _EntryCache(FunctionCache):
    _impl_class = _EntryImpl


def entry_point(dispatcher):
    """Mark a `@njit(cache=True)` dispatcher as called from Python only (see the module docstring)."""
    if isinstance(getattr(dispatcher, "_cache", None), FunctionCache):
        dispatcher._cache = _EntryCache(dispatcher.py_func)
    return dispatcher
