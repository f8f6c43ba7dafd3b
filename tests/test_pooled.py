"""Decode in one parallel region (decode_token_pooled): its barrier, its fallback, and the same results as
the region-per-product decode on every integer-dot kernel.

The same, to float rounding: both run the same kernels on the same int8 activations, and two kernels
that both come from the cache (or were both compiled in one process) agree bit for bit. A kernel compiled
in this process and one loaded from the cache differ in attention's last bits (1.5e-8 at three keys and
more), which the int8 activations of a 30-layer model carry to ~1 logit: the real models are compared
in a fresh process whose kernels both come from the cache (_pooled_and_not_from_the_cache). A race or a
wrong share moves logits by 1e-1 and more."""
import subprocess
import sys

import numba
import numpy as np
import pytest
from numba import njit, prange

import localllm
from localllm.kernels import avx2, decode, sync, vnni
from localllm.kernels.sync import arrive, barrier
from tinymodel import write_tiny_llama
from test_gemma3_arch import write_tiny_gemma3

needs_threads = pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="one CPU: no pool to share")
needs_avx2 = pytest.mark.skipif(not avx2.AVAILABLE, reason="the CPU has no AVX2")


@njit(parallel=True)
def _phases(state, nt, n, seen, bad):
    """Each thread writes its phase number, meets the others, and checks that all of them wrote it."""
    for tid in prange(nt):
        if not arrive(state, nt):
            continue
        for p in range(n):
            seen[tid] = p
            barrier(state, nt)
            for j in range(nt):
                if seen[j] != p:
                    bad[tid] += 1
            barrier(state, nt)        # nobody writes phase p + 1 before everyone has checked phase p


@needs_threads
def test_barrier_keeps_the_threads_in_step():
    nt = numba.get_num_threads()
    state = np.zeros(sync.STATE_LEN, np.int64)
    seen, bad = np.full(nt, -1, np.int64), np.zeros(nt, np.int64)
    _phases(state, nt, 20000, seen, bad)
    assert (seen == 19999).all()
    assert bad.sum() == 0
    assert state[sync.ARRIVED] == nt and state[sync.GEN] == 40000


@njit
def _arrive_alone(state, nt):
    return arrive(state, nt)


def test_arrive_gives_up_when_the_iterations_run_one_after_another():
    """One thread running every iteration in turn (as a threading layer might) must not wait forever:
    the first gives up after its time limit, and later ones see at once that the region was cancelled."""
    state = np.zeros(sync.STATE_LEN, np.int64)
    assert not _arrive_alone(state, 2)
    assert state[sync.ARRIVED] < 0
    assert not _arrive_alone(state, 2)
    state[:] = 0
    assert _arrive_alone(state, 1)


def _steps(llm, ids):
    cache = llm.model.make_cache(64)
    return np.stack([llm.model.forward(np.array([t]), j, cache)[0].copy() for j, t in enumerate(ids)])


def _assert_same(got, want):
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    assert (got.argmax(-1) == want.argmax(-1)).all()


def _pooled_and_not(llm, ids, monkeypatch):
    """Logits of ids decoded one at a time through decode_token_pooled (which must not fall back) and
    through decode_token."""
    f = llm.model._fused
    assert f.pooled
    with monkeypatch.context() as m:
        m.setattr(decode, "decode_token", lambda *a: pytest.fail("fell back to decode_token"))
        pooled = _steps(llm, ids)
    f.pooled = False
    plain = _steps(llm, ids)
    return pooled, plain


@needs_threads
@needs_avx2
@pytest.mark.parametrize("kernel", ["avx2", "vnni"])
@pytest.mark.parametrize("model", ["llama-Q4_1", "qwen2-Q5_0-biases", "llama-Q8_0-8heads", "gemma3-Q8_0"])
def test_pooled_decode_matches(tmp_path, monkeypatch, kernel, model):
    if kernel == "vnni" and not vnni.AVAILABLE:
        pytest.skip("the CPU has no AVX-512 VNNI")
    monkeypatch.setattr(vnni, "ENABLED", kernel == "vnni")
    arch, qtype = model.split("-")[:2]
    if arch == "gemma3":     # q/k norms, post norms, sliding windows, GELU, one KV head split over threads
        path = write_tiny_gemma3(tmp_path / "tiny.gguf", qtype=qtype, n_layer=3, n_kv_head=1, softcap=10.0)
    else:
        path = write_tiny_llama(tmp_path / "tiny.gguf", arch=arch, qtype=qtype, biases="biases" in model,
                                n_head=8 if "8heads" in model else 4)
    llm = localllm.load(path, n_ctx=64)
    mt = llm.model._fused.mt
    kinds = mt[mt[:, decode.GROUPS] > 0, decode.KIND]
    assert all(avx2.kind_is_vnni(int(k)) == (kernel == "vnni") for k in kinds)
    ids = [int(i) for i in np.random.default_rng(3).integers(0, llm.model.n_vocab, 20)]   # (gemma3's: 96)
    pooled, plain = _pooled_and_not(llm, ids, monkeypatch)
    _assert_same(pooled, plain)


_COMPARE = """
import sys, numpy as np, localllm
from localllm.kernels import decode
n_ids, split_from, seed = (int(a) for a in sys.argv[3:6])
llm = localllm.load(sys.argv[1], n_ctx=64)
f = llm.model._fused
assert f.pooled
if split_from:
    f.split_from = split_from
ids = [int(i) for i in np.random.default_rng(seed).integers(0, min(5000, llm.model.n_vocab), n_ids)]
def steps():
    cache = llm.model.make_cache(64)
    return np.stack([llm.model.forward(np.array([t]), j, cache)[0].copy() for j, t in enumerate(ids)])
plain_kernel = decode.decode_token
def fell_back(*a):
    raise SystemExit("fell back to decode_token")
decode.decode_token = fell_back
pooled = steps()
decode.decode_token, f.pooled = plain_kernel, False
np.save(sys.argv[2], np.stack([pooled, steps()]))
"""


def _pooled_and_not_from_the_cache(path, tmp_path, n_ids=40, split_from=0, seed=4):
    """_pooled_and_not for a real model, run in a fresh process whose two decode kernels both come from
    Numba's cache (a first process puts them there). A kernel compiled in a process and the same kernel
    loaded from the cache have been seen to differ in attention's last bit (1.5e-8 at three keys and
    more; the cached object code is byte-identical to the compiled one), and the int8 quantization of
    the activations carries that to ~1 logit: with one kernel of each kind, as in a test process that
    compiled one of them for an earlier test, the comparison would fail on every first run after a
    kernel edit. n_ids ids from seed (below 5000 and the vocabulary); split_from 0: the decoder's own
    (split-K from 32 keys)."""
    out = tmp_path / "logits.npy"
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", _COMPARE, str(path), str(out), str(n_ids), str(split_from),
                            str(seed)], capture_output=True, text=True,
                           timeout=900)
        assert r.returncode == 0, r.stderr[-2000:]
    pooled, plain = np.load(out)
    return pooled, plain


@needs_threads
@needs_avx2
@pytest.mark.parametrize("which", ["smollm2_path", "gemma3_path", "qwen2_path"])   # Q4_1; Q4_K/Q6_K/Q8_0; Q5_0 too
def test_pooled_decode_matches_on_real_models(request, tmp_path, which):
    pooled, plain = _pooled_and_not_from_the_cache(request.getfixturevalue(which), tmp_path)
    _assert_same(pooled, plain)


@needs_threads
@needs_avx2
def test_falls_back_when_the_threads_do_not_run_side_by_side(tmp_path, monkeypatch):
    path = write_tiny_llama(tmp_path / "tiny.gguf", qtype="Q4_0")
    llm = localllm.load(path, n_ctx=64)
    f = llm.model._fused
    ids = [5, 17, 40, 99, 3]
    want = _steps(llm, ids)
    calls = []
    monkeypatch.setattr(f, "pooled_fn", lambda *a: calls.append(1) or False)
    f.pooled = True
    got = _steps(llm, ids)
    _assert_same(got, want)
    assert len(calls) == 3 and not f.pooled      # three failed regions, then never again


def test_float_kinds_are_never_pooled(tmp_path, float_kernels):
    llm = localllm.load(write_tiny_llama(tmp_path / "tiny.gguf", qtype="Q4_0"), n_ctx=64)
    assert not llm.model._fused.pooled


def test_pooled_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setattr(decode, "POOLED", False)
    llm = localllm.load(write_tiny_llama(tmp_path / "tiny.gguf", qtype="Q4_0"), n_ctx=64)
    assert not llm.model._fused.pooled


@needs_threads
@needs_avx2
@pytest.mark.parametrize("model", ["llama-3kv-hd64", "llama-2kv-hd16", "gemma3-1kv"])
def test_split_k_attention_matches(tmp_path, model):
    """From split_from visible keys on, pooled decode splits attention by key range and joins the threads'
    parts, and the region-per-product decode runs the same parts (ops.attention_split): the same logits,
    over 40 positions past the switch, on head counts that do and do not divide among the threads.
    (Attention by KV head against by key range differ in rounding, which the int8 activations carry to
    ~1e-2 of the logits: the two paths must use the same split.) Run in fresh processes with both
    kernels from the cache (_pooled_and_not_from_the_cache): in this process one of them may have been
    compiled by an earlier test, which failed this comparison once after a kernel edit."""
    if model.startswith("gemma3"):     # one KV head, q/k norms; no sliding window: every layer global
        path = write_tiny_gemma3(tmp_path / "tiny.gguf", n_layer=2, n_kv_head=1, window=0)
    elif "hd64" in model:              # 64-wide heads: the value pass runs in vector registers (simd.axpy64)
        path = write_tiny_llama(tmp_path / "tiny.gguf", qtype="Q4_0", n_embd=384, n_head=6, n_kv_head=3)
    else:
        path = write_tiny_llama(tmp_path / "tiny.gguf", qtype="Q4_0")
    pooled, plain = _pooled_and_not_from_the_cache(path, tmp_path, n_ids=56, split_from=16, seed=5)
    _assert_same(pooled, plain)
