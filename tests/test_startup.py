"""What keeps a fresh process quick to its first token: entry-point kernels cached without their bitcode,
the vocabulary read from the GGUF in one pass, cached kernels loaded without Numba's context refresh."""
from __future__ import annotations

import ast
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numba import njit

import localllm.kernels as kernels_pkg
from localllm.ggufio import StringArray, _Cursor
from localllm.kernels.entry import _EntryCache, _EntryImpl, entry_point


def _entry_names() -> set[str]:
    """Names of the functions decorated with @entry_point in localllm.kernels."""
    names = set()
    for path in Path(kernels_pkg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(
                    isinstance(d, ast.Name) and d.id == "entry_point" for d in node.decorator_list):
                names.add(node.name)
    return names


def _is_njit(dec: ast.expr) -> bool:
    f = dec.func if isinstance(dec, ast.Call) else dec
    return (isinstance(f, ast.Name) and f.id == "njit") or (isinstance(f, ast.Attribute) and f.attr == "njit")


def test_entry_points_are_never_called_from_jitted_code():
    """An entry point's cache holds no bitcode to link, so no @njit function may call one."""
    entries = _entry_names()
    assert {"decode_token", "decode_token_pooled", "gather_rows_of", "_matmul_vnni_py", "_packed_matmul_py",
            "matmul_int8dot_entry"} <= entries
    root = Path(kernels_pkg.__file__).parent.parent
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(_is_njit(d) for d in node.decorator_list):
                for call in ast.walk(node):
                    if isinstance(call, ast.Call):
                        f = call.func
                        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
                        assert name not in entries, f"{path.name}:{node.name} calls entry point {name}"


def test_entry_point_cache_stores_machine_code_and_a_stub():
    @njit
    def axpy(a, x, y):           # (n,) float32
        for i in range(x.shape[0]):
            y[i] += a * x[i]

    x, y = np.arange(4, dtype=np.float32), np.ones(4, np.float32)
    axpy(2.0, x, y)
    cres = next(iter(axpy.overloads.values()))
    impl = _EntryImpl(axpy.py_func)
    (name, kind, (obj, bitcode)), *_ = impl.reduce(cres)
    _, _, (_, full_bitcode) = cres._reduce()[0]
    assert kind == "object" and len(obj) > 0
    import llvmlite.binding as ll
    defined = [fn.name for fn in ll.parse_bitcode(bitcode).functions if not fn.is_declaration]
    assert defined == [cres.fndesc.llvm_cpython_wrapper_name]
    assert len(bitcode) < 4096 and len(full_bitcode) > 2 * len(bitcode)
    rebuilt = impl.rebuild(axpy.targetctx, impl.reduce(cres))   # as a later process loads it
    y2 = np.ones(4, np.float32)
    rebuilt.entry_point(2.0, x, y2)
    np.testing.assert_array_equal(y2, 1 + 2 * x)


def test_entry_point_swaps_only_a_cache():
    d = entry_point(njit(cache=True)(lambda x: x + 1))
    assert isinstance(d._cache, _EntryCache)
    plain = entry_point(njit(lambda x: x + 1))
    assert not isinstance(plain._cache, _EntryCache)


def _strings_blob(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<Q", len(s)) + s for s in items)


@pytest.mark.parametrize("items", [
    [b"hello", b"", "▁wörld".encode(), "中文".encode(), b"", b"x" * 300],        # fast path
    [b"a\x00b", b"c", b""],                                                    # NUL inside a string
    [b"ok", b"\xff\xfe", b"end"],                                             # invalid UTF-8
])
@pytest.mark.parametrize("repeat", [1, 3000])                  # and long, as a vocabulary
def test_gguf_string_arrays(items, repeat):
    items = items * repeat
    blob = b"junk" + _strings_blob(items) + b"tail"
    cur = _Cursor(memoryview(blob))
    cur.pos = 4
    out = cur._strings(len(items))
    want = [s.decode("utf-8", "replace") for s in items]
    assert blob[cur.pos:] == b"tail"
    if repeat > 1:          # a vocabulary's length: a StringArray, each item decoded as it is read
        assert isinstance(out, StringArray) and len(out) == len(want)
        for i in (0, 1, 2, len(want) // 2 + 1, -1, -len(want)):
            assert out[i] == want[i]
        assert out.empty().tolist() == [i for i, w in enumerate(want) if w == ""]
        assert out._all is None                     # nothing decoded beyond those items
        with pytest.raises(IndexError):
            out[len(want)]
        assert out[3:7] == want[3:7] and list(out) == want and want[1] in out
    else:
        assert isinstance(out, list)
    assert out == want


def test_ggml_type_table_matches_the_gguf_package():
    import gguf
    from localllm.ggufio import GGML_TYPES, ggml_type

    for qtype, (block, size) in gguf.GGML_QUANT_SIZES.items():
        assert ggml_type(qtype.value) == (qtype.name, block, size)
        if qtype.value in GGML_TYPES:
            assert GGML_TYPES[qtype.value] == (qtype.name, block, size)
    assert set(GGML_TYPES) >= {t.value for t in gguf.GGML_QUANT_SIZES if t.value <= 30}
    assert ggml_type(9999) is None


def test_gguf_string_array_overrun_is_eof():
    blob = _strings_blob([b"abc"])[:-1]
    with pytest.raises(EOFError):
        _Cursor(memoryview(blob))._strings(1)
    with pytest.raises(EOFError):
        _Cursor(memoryview(struct.pack("<Q", 1 << 60)))._strings(1)
    with pytest.raises(EOFError):                                # a prefix cut short
        _Cursor(memoryview(_strings_blob([b"abc"]) + b"\x01\x00"))._strings(2)
    with pytest.raises(EOFError):                                # a count no file could hold
        _Cursor(memoryview(_strings_blob([b"abc"])))._strings(1 << 60)
    with pytest.raises(EOFError):                                # a length that wraps around
        _Cursor(memoryview(struct.pack("<Q", (1 << 64) - 4) + b"abcd" * 4))._strings(2)


def test_every_cached_kernel_loads_without_the_context_refresh():
    import importlib
    from numba.core.dispatcher import Dispatcher
    from localllm.kernels.entry import LeanCache

    mods = [f"localllm.kernels.{p.stem}" for p in Path(kernels_pkg.__file__).parent.glob("*.py")]
    mods += [f"localllm.quants.{n}" for n in ("legacy", "floats", "kquants")]
    seen = 0
    for name in mods:
        for obj in vars(importlib.import_module(name)).values():
            if isinstance(obj, Dispatcher) and obj._cache.__class__.__name__ != "NullCache":
                assert isinstance(obj._cache, LeanCache), (name, obj.__name__)
                seen += 1
    assert seen > 40


def test_a_warm_process_never_refreshes_numba(smollm2_path):
    """With every kernel in the on-disk cache, loading a model and generating imports neither Numba's
    NumPy implementations (the context refresh: 0.2 s), SciPy (arraymath's BLAS probe: 0.26 s) nor the
    gguf package (20-50 ms; ggufio has the type table)."""
    code = ("import sys, localllm; llm = localllm.load(sys.argv[1], n_ctx=256); "
            "print(''.join(c.text for c in llm.stream('The sky is', max_tokens=3, temperature=0)) + '|', "
            "'numba.np.arraymath' in sys.modules, 'scipy.linalg' in sys.modules, 'gguf' in sys.modules)")
    runs = [subprocess.run([sys.executable, "-c", code, str(smollm2_path)], capture_output=True, text=True,
                           timeout=600, check=True).stdout.split("|") for _ in range(2)]
    assert runs[0][0] == runs[1][0] and runs[1][0].strip()     # the same text, cached or compiled
    assert runs[1][1].split() == ["False", "False", "False"]


def _package_copy(tmp_path):
    """localllm copied under tmp_path without its caches, and the environment that imports it."""
    import os
    import shutil

    shutil.copytree(Path(kernels_pkg.__file__).parent.parent, tmp_path / "localllm",
                    ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}    # caches beside the copy
    return tmp_path / "localllm", {**env, "PYTHONPATH": str(tmp_path)}


def _run(code, env, cwd, *args):
    """The words `python -c code args...` prints."""
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=600, check=True).stdout.split()


def test_a_kernel_recompiles_when_code_it_inlined_changes(tmp_path):
    """Numba checks only a cached function's own file; LeanCache's key covers every kernel source, so
    editing simd.py (which silu_mul, in ops.py, inlines) must not leave silu_mul's old code in use."""
    pkg, env = _package_copy(tmp_path)
    code = ("import numpy as np; from localllm.kernels.ops import silu_mul; "
            "g = np.array([[1.0, -2.0]], np.float32); out = np.empty_like(g); silu_mul(g, np.ones_like(g), out); "
            "print(out.tolist(), silu_mul.stats.cache_hits.get(silu_mul.signatures[0], 0))")

    def run():
        out = _run(code, env, tmp_path)
        return [float(v.strip("[],")) for v in out[:2]], int(out[2])

    silu = [1 / (1 + np.exp(-1.0)), -2 / (1 + np.exp(2.0))]
    first, second = run(), run()
    assert np.allclose(first[0], silu, rtol=1e-5) and first[1] == 0     # compiled
    assert second == (first[0], 1)                                       # from the cache
    with open(pkg / "kernels" / "simd.py", "a") as f:    # a new exp_f32, as an edit or a git pull brings
        f.write("\n\n@njit(fastmath=True, inline='always')\ndef exp_f32(x):\n    return np.float32(0.0)\n")
    third = run()
    assert third == ([1.0, -2.0], 0)                     # silu(g) = g / (1 + 0): recompiled, not stale


def test_numba_runtime_helpers_load_from_the_cache(tmp_path):
    """The first cache load writes NRT's compiled helpers beside the kernels; a later process loads them
    (compiling them is made to fail there) and both its cached kernels and new compiles work with them."""
    pkg, env = _package_copy(tmp_path)
    code = ("import sys, numpy as np; from numba import njit; from numba.core.runtime import nrtdynmod\n"
            "if sys.argv[1] == 'no-compile':\n"
            "    def refuse(ctx): raise AssertionError('NRT compiled')\n"
            "    nrtdynmod.create_nrt_module = refuse\n"
            "from localllm.kernels.ops import rope_tables\n"
            "cos, sin = rope_tables(8, 4, 10000.0, np.ones(2), 1.0)\n"
            "f = njit(lambda n: np.arange(n).astype(np.float64).sum())\n"
            "print(float(cos[3, 1]), float(sin[5, 0]), f(10))")
    want = [np.cos(3 * 0.01), np.sin(5.0), 45.0]
    outs = [_run(code, env, tmp_path, arg) for arg in ("compile", "load", "no-compile")]
    for out in outs:
        assert np.allclose([float(v) for v in out], want, rtol=1e-5)
    assert len(list((pkg / "kernels" / "__pycache__").glob("nrt-*.bin"))) == 1
