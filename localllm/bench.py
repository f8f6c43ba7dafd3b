"""Throughput measured the way llama-bench measures it, so the figures compare one to one.

pp<N>: one batched prefill of N random token ids into an empty cache (BOS first when the model adds one).
tg<N>: N single-token decode steps starting at position 0 of an empty cache, a random token each step.
Each test runs once as a warm-up, then `reps` times; t/s is the mean ± sample sd over the repetitions
(llama-bench averages per-repetition t/s, not total tokens over total time).
"""
from __future__ import annotations

import functools
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

_COLD_START = ("import os, sys, localllm; llm = localllm.load(sys.argv[1], n_threads={threads}); "
               "q = 'Why is the sky blue?'; "
               "from localllm.chat_template import template_for; "
               "next(llm.chat([{{'role': 'user', 'content': q}}], stream=True, max_tokens=1, temperature=0) "
               "if template_for(llm.metadata) else llm.stream(q, max_tokens=1, temperature=0)); "
               "print('first token', flush=True); os._exit(0)")


def _n_vocab(llm) -> int:
    # Ids that are both real tokens and embedding rows (some files pad the embedding).
    return min(llm.n_vocab, llm.tokenizer.vocab_size)


def _prompt_ids(llm, n: int, rng: np.random.Generator) -> list[int]:
    ids = rng.integers(0, _n_vocab(llm), n).tolist()
    tok = llm.tokenizer
    if n and tok.add_bos and tok.bos_id is not None:
        ids[0] = tok.bos_id
    return ids


def _reset(llm, n_depth: int = 0) -> None:
    """Forget every position from n_depth on (the context a test with depth starts from stays)."""
    llm.cache.reset(n_depth)
    llm._ids = []


def fill_depth(llm, n_depth: int, rng: np.random.Generator) -> None:
    """Prefill n_depth random tokens, untimed: the context that tests with depth start from (llama-bench's
    -d). Each test then rewinds the cache to it, as llama-bench's removal of the later positions does."""
    _reset(llm)
    if n_depth:
        llm._forward(_prompt_ids(llm, n_depth, rng), 0, all_logits=False)


def time_prompt(llm, ids: list[int], n_depth: int = 0) -> float:
    """Seconds for one prefill of `ids` after n_depth cached positions (fill_depth), in chunks of
    llm.n_batch like llama_decode."""
    _reset(llm, n_depth)
    t0 = time.perf_counter()
    llm._forward(ids, n_depth, all_logits=False)
    return time.perf_counter() - t0


def time_gen(llm, n: int, rng: np.random.Generator, n_depth: int = 0) -> float:
    """Seconds for n single-token decode steps from position n_depth (fill_depth; 0: an empty cache)."""
    _reset(llm, n_depth)
    first = _prompt_ids(llm, 1, rng)[0] if n_depth == 0 else int(rng.integers(0, _n_vocab(llm)))
    tokens = [first] + rng.integers(0, _n_vocab(llm), n - 1).tolist()
    forward, cache = llm.model.forward, llm.cache
    t0 = time.perf_counter()
    for pos, token in enumerate(tokens, n_depth):
        forward(np.array([token], np.int64), pos, cache)
    return time.perf_counter() - t0


def decode_weight_bytes(llm) -> int:
    """Bytes of repacked weights one decode step reads (every matrix of the decode table), 0 when the
    model decodes without it."""
    f = getattr(llm.model, "_fused", None)
    return 0 if f is None else int(f.qbuf.nbytes + f.sbuf.nbytes + f.obuf.nbytes)


def put_rates(result: dict, test: str, rates: list[float]) -> None:
    """A test's samples (result["pp512_samples"]), their mean (result["pp512"]) and sample sd."""
    result[test + "_samples"] = rates
    result[test] = statistics.fmean(rates)
    result[test + "_sd"] = statistics.stdev(rates) if len(rates) > 1 else 0.0


@functools.lru_cache(maxsize=1)
def _read_kernel():
    """sum(a) over float32 a in compiled code that releases the GIL (a plain vectorized read: one
    core streams 40+ GB/s with it on Zen 5, against ~10 with a prange reduction)."""
    from numba import njit

    @njit(cache=True, nogil=True, fastmath=True)
    def read_sum(a):
        s = np.float32(0.0)
        for i in range(a.shape[0]):
            s += a[i]
        return s
    return read_sum


def read_parts(parts: list[np.ndarray]) -> tuple[float, list[float]]:
    """Reads each float32 array of `parts` in a thread of its own, all at once: (seconds, their sums)."""
    import threading

    kernel = _read_kernel()
    sums = [0.0] * len(parts)

    def one(i):
        sums[i] = float(kernel(parts[i]))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(parts))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, sums


def read_bandwidth(n_threads: int, n_bytes: int = 1 << 30, reps: int = 5) -> float:
    """Memory read bandwidth in bytes/s: n_threads threads each summing its own contiguous part of a
    float32 buffer of n_bytes (far larger than any L3), the best of `reps` passes after an untimed one.
    What decode can at most stream; compare.py divides it by a model's bytes per token."""
    a = np.ones(max(n_threads, n_bytes // 4), np.float32)
    parts = np.array_split(a, n_threads)
    read_parts(parts)
    return a.nbytes / min(read_parts(parts)[0] for _ in range(reps))


def cold_start_s(model_path: str | os.PathLike, n_threads: int | None = None) -> float:
    """Time to first token in a fresh process: `python -c` that imports localllm, loads the model and
    streams the reply to a short chat prompt, timed from the start of the process until it reports the
    first token (what a user waits for on `localllm run MODEL "..."`).

    It includes interpreter start-up, imports and loading Numba's cached kernels (the JIT cache is warm
    once anything has run in this environment), not the process's exit. The first launch leaves the chat
    template's opening (and the model's default system prompt) in the prompt cache, which the second
    reads; the question's own tokens are evaluated in both (see localllm.prompt_cache). The second of two launches is
    timed, with Python's bytecode cache allowed (PYTHONDONTWRITEBYTECODE dropped from the child's
    environment): an installed package has its .pyc files, and compiling localllm's sources on every
    start would add ~0.1 s that no user pays.
    """
    return _time_to_first_line(_cold_start_cmd(model_path, n_threads), warm_up=True)


def _cold_start_cmd(model_path, n_threads) -> list[str]:
    return [sys.executable, "-c", _COLD_START.format(threads=repr(n_threads)), os.fspath(model_path)]


def _time_to_first_line(cmd: list[str], warm_up: bool = False) -> float:
    """Seconds from starting `cmd` until it prints its first line (after one untimed launch if warm_up);
    raises RuntimeError if it fails."""
    if warm_up:
        _time_to_first_line(cmd)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    t0 = time.perf_counter()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as p:
        line = p.stdout.readline()
        t = time.perf_counter() - t0
        _, err = p.communicate()
    if p.returncode != 0 or not line:
        why = err.strip().splitlines()[-1] if err.strip() else f"exit status {p.returncode}"
        raise RuntimeError(f"cold-start process failed: {why}")
    return t


def _peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS; mapped weights count once they are touched.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def model_desc(gf) -> str:
    """llama-bench's model column: architecture, parameter count, file type ("llama 135M Q4_1")."""
    import gguf

    n = gf.n_params()
    size = f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"
    ftype = gf.metadata.get("general.file_type")
    try:
        name = gguf.LlamaFileType(int(ftype)).name.removeprefix("MOSTLY_") if ftype is not None else "?"
    except ValueError:
        name = f"type {ftype}"
    return f"{gf.architecture} {size} {name}"


class BenchSession:
    """A loaded model and its two tests, one timed repetition at a time: what run_bench runs, and what
    benchmarks/compare.py's paired mode asks of each engine in turn. n_depth > 0: both tests run after
    that many cached positions (llama-bench's "pp512 @ d4096"), filled once here."""

    def __init__(self, model_path: str | os.PathLike, n_threads: int | None = None, n_prompt: int = 512,
                 n_gen: int = 128, n_ctx: int | None = None, seed: int = 0, n_depth: int = 0):
        import localllm

        if n_depth < 0:
            raise ValueError("n_depth must be at least 0")
        self.n_prompt, self.n_gen, self.n_depth, self.n_threads = n_prompt, n_gen, n_depth, n_threads
        llm = self.llm = localllm.load(model_path, n_ctx=n_ctx or n_depth + max(n_prompt + n_gen, 16),
                                       n_threads=n_threads)
        need = n_depth + max(n_prompt, n_gen)
        if need > llm.n_ctx:
            raise ValueError(f"the tests need {need} positions but n_ctx is {llm.n_ctx}")
        self.rng = np.random.default_rng(seed)
        self.info = {
            "model": llm.name,
            "model_desc": model_desc(llm.gguf),
            "path": str(llm.path),
            "file_size": llm.gguf.file_size,
            "n_params": llm.gguf.n_params(),
            "backend": "CPU",
            "threads": llm.n_threads,
            "n_ctx": llm.n_ctx,
            "n_batch": llm.n_batch,
            "load_s": llm.load_s,
            "decode_weight_bytes": decode_weight_bytes(llm),
            "n_depth": n_depth,
        }
        if n_depth and (n_prompt > 0 or n_gen > 0):
            fill_depth(llm, n_depth, self.rng)
        self._warm: set[str] = set()

    def rate(self, test: str) -> float:
        """Tokens/s of one timed repetition of "pp" or "tg"; the first of each kind runs after an untimed
        warm-up (JIT dispatch, page faults on the weights; tg's is a single token, as llama-bench's)."""
        llm, rng, depth = self.llm, self.rng, self.n_depth
        if test == "pp":
            if test not in self._warm:
                time_prompt(llm, _prompt_ids(llm, self.n_prompt, rng), depth)
            rate = self.n_prompt / time_prompt(llm, _prompt_ids(llm, self.n_prompt, rng), depth)
        elif test == "tg":
            if test not in self._warm:
                time_gen(llm, 1, rng, depth)
            rate = self.n_gen / time_gen(llm, self.n_gen, rng, depth)
        else:
            raise ValueError(f"unknown test {test!r} (pp or tg)")
        self._warm.add(test)
        return rate

    def cold_start(self) -> float:
        """One fresh process's time to its first token (see cold_start_s); the first call launches one
        untimed before it, later calls only the timed one."""
        t = _time_to_first_line(_cold_start_cmd(self.llm.path, self.n_threads), warm_up="cold" not in self._warm)
        self._warm.add("cold")
        return t

    def finish(self, cold_start: bool = True) -> dict:
        """This process's peak RSS and, if asked, the cold start of a fresh process (cold_start)."""
        _reset(self.llm)
        return {"peak_rss_mb": _peak_rss_mb(), "cold_start_s": self.cold_start() if cold_start else None}


def run_bench(model_path: str | os.PathLike, n_threads: int | None = None, reps: int = 5, n_prompt: int = 512,
              n_gen: int = 128, n_ctx: int | None = None, cold_start: bool = True, seed: int = 0,
              n_depth: int = 0) -> dict:
    """Load the model and measure pp<n_prompt> and tg<n_gen> t/s (mean and sd over `reps`), plus load
    time, cold start (a fresh process, see cold_start_s) and this process's peak RSS. n_depth > 0: both
    tests run after that many cached positions (llama-bench's "pp512 @ d4096")."""
    if reps < 1:
        raise ValueError("reps must be at least 1")
    s = BenchSession(model_path, n_threads, n_prompt, n_gen, n_ctx, seed, n_depth)
    out = dict(s.info, reps=reps)
    for kind, n in (("pp", n_prompt), ("tg", n_gen)):
        if n > 0:
            put_rates(out, f"{kind}{n}", [s.rate(kind) for _ in range(reps)])
    out.update(s.finish(cold_start))
    return out


def _size(n_bytes: int) -> str:
    return f"{n_bytes / (1 << 30):.2f} GiB" if n_bytes >= 1 << 30 else f"{n_bytes / (1 << 20):.2f} MiB"


def _params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def _tests(result: dict) -> list[str]:
    return [k for k in result if (k.startswith("pp") or k.startswith("tg")) and k[2:].isdigit()]


def test_label(test: str, n_depth: int = 0) -> str:
    """A test's name as llama-bench prints it: "tg128", or "tg128 @ d4096" after 4096 cached positions."""
    return f"{test} @ d{n_depth}" if n_depth else test


def markdown_table(header: list[str], rows: list[list[str]], right: set[str] = frozenset(),
                   min_widths: dict[str, int] | None = None) -> str:
    """A markdown table with padded columns; columns named in `right` are right-aligned."""
    min_widths = min_widths or {}
    widths = [max([len(h), min_widths.get(h, 0)] + [len(row[i]) for row in rows]) for i, h in enumerate(header)]

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if h in right else c.ljust(w)
                                 for c, w, h in zip(cells, widths, header)) + " |"

    rule = "| " + " | ".join(("-" * (w - 1) + ":") if h in right else "-" * w
                             for w, h in zip(widths, header)) + " |"
    return "\n".join([line(header), rule] + [line(row) for row in rows])


def format_table(results: dict | list[dict]) -> str:
    """llama-bench's markdown table, one row per model and test: model | size | params | backend |
    threads | test | t/s (mean ± sd)."""
    if isinstance(results, dict):
        results = [results]
    rows = []
    for r in results:
        for test in _tests(r):
            rows.append([r.get("model_desc") or r["model"], _size(r["file_size"]), _params(r.get("n_params", 0)),
                         r.get("backend", "CPU"), str(r["threads"]), test_label(test, r.get("n_depth", 0)),
                         f"{r[test]:.2f} ± {r.get(test + '_sd', 0.0):.2f}"])
    return markdown_table(["model", "size", "params", "backend", "threads", "test", "t/s"], rows,
                          right={"size", "params", "threads", "test", "t/s"},
                          min_widths={"model": 30, "test": 15, "t/s": 20})   # llama-bench's widths


def format_summary(result: dict) -> str:
    """The figures the table leaves out: load, cold start, peak RSS."""
    cold = result.get("cold_start_s")
    return (f"load {result['load_s']:.2f} s, cold start (fresh process to first token) "
            f"{'n/a' if cold is None else f'{cold:.2f} s'}, peak RSS {result['peak_rss_mb']:.0f} MiB "
            f"({Path(result['path']).name}, {result['reps']} reps)")
