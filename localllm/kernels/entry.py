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

Numba keys a cache entry on the function's own bytecode and checks only its own file's timestamp, yet
the machine code holds every kernel it inlined from other modules: after an edit to `avx2.py` (or a
`git pull` that brings one), `decode_token` would load its old code. A LeanCache's key adds a digest of
all the kernel and quantization sources, so any change there recompiles every kernel.

Numba's runtime (NRT), which every kernel that allocates links against, compiles its few LLVM helpers
(reference counts, atomics) in every process: 40-90 ms of the first cache load. `_init_nrt` keeps their
machine code beside the kernels' cache and loads it as Numba loads a cached kernel (~6 ms).
"""
from __future__ import annotations

import hashlib
import os
import pickle
from functools import lru_cache
from pathlib import Path

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


@lru_cache(maxsize=1)
def sources_digest() -> str:
    """sha256 of localllm/kernels/*.py and localllm/quants/*.py: the code a cached kernel may hold."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for folder in ("kernels", "quants"):
        for path in sorted((root / folder).glob("*.py")):
            h.update(f"{folder}/{path.name}\0".encode())
            h.update(path.read_bytes())
    return h.hexdigest()


CODE_SWITCHES = ("LOCALLLM_F16C",)   # environment variables that change compiled code (simd.F16C)

# Compile the integer-dot kernels, the pooled decoder and the row dequantizers for the formats a model
# has (avx2.rows_v): a first run compiles ~40 % less. LOCALLLM_SPECIALIZE=0: for every format at once,
# one compile shared by all models (the test suite's default, whose tiny models span every format).
SPECIALIZE = os.environ.get("LOCALLLM_SPECIALIZE", "1") != "0"


class LeanCache(FunctionCache):
    """Numba's cache of a function, loading without the context refresh and keyed on all the kernel
    sources (see the module docstring)."""

    def _index_key(self, sig, codegen):
        return (*super()._index_key(sig, codegen), sources_digest(), *map(os.environ.get, CODE_SWITCHES))

    def load_overload(self, sig, target_context):
        _init_nrt(target_context, self._cache_path)
        with self._guard_against_spurious_io_errors():
            return self._load_overload(sig, target_context)


def _init_nrt(ctx, folder: str) -> None:
    """rtsys.initialize(ctx), its compiled helpers read from (or written to) `folder` when it can."""
    if rtsys._init:
        return
    try:
        _init_nrt_cached(ctx, Path(folder))
    except Exception:            # another Numba's internals, an unreadable file: Numba's own way
        rtsys.initialize(ctx)


def _init_nrt_cached(ctx, folder: Path) -> None:
    import llvmlite
    import llvmlite.binding as ll
    import numba
    from numba.core import config
    from numba.core.compiler_lock import global_compiler_lock
    from numba.core.runtime import _nrt_python, nrtdynmod

    from ..hub.store import write_cache_file

    if config.NRT_STATS:
        raise RuntimeError("NRT statistics asked for: let Numba initialize")
    with global_compiler_lock:
        if rtsys._init:
            return
        codegen = ctx.codegen()
        key = repr((codegen.magic_tuple(), numba.__version__, llvmlite.__version__)).encode()
        path = folder / f"nrt-{hashlib.sha256(key).hexdigest()[:20]}.bin"
        for name, address in _nrt_python.c_helpers.items():      # as rtsys.initialize does
            ll.add_symbol(name if name.startswith("_") else f"NRT_{name}", address)
        try:
            library = codegen.unserialize_library(pickle.loads(path.read_bytes()))
        except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError):
            ir_module, library = nrtdynmod.create_nrt_module(ctx)
            library.enable_object_caching()
            library.add_ir_module(ir_module)
            library.finalize()
            write_cache_file(path, pickle.dumps(library.serialize_using_object_code()))
        rtsys._library = library
        rtsys._init = True


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
