"""localllm against llama.cpp on the same CPU: pp512 / tg128 as llama-bench defines them, side by side.

    python benchmarks/compare.py MODEL.gguf [MODEL2.gguf ...] [--threads 2] [--reps 3] [--json]

Each engine runs in a fresh process per model, so load time and peak RSS belong to that model alone.
llama.cpp runs through llama-cpp-python in another interpreter (--llama-python, default
/work/refenv/bin/python), driven through its C API exactly as llama-bench drives llama_decode; when that
interpreter cannot import llama_cpp, only localllm is measured. See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:      # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

DEFAULT_LLAMA_PYTHON = "/work/refenv/bin/python"

_LOCALLLM = """
import json, sys
from localllm.bench import run_bench
cfg = json.loads(sys.argv[1])
print(json.dumps(run_bench(cfg["model"], n_threads=cfg["threads"], reps=cfg["reps"], n_prompt=cfg["n_prompt"],
                           n_gen=cfg["n_gen"], cold_start=cfg["cold_start"], n_depth=cfg["n_depth"])))
"""

# The same in paired mode: loaded once, then one timed repetition per request on stdin (_Worker).
_LOCALLLM_SERVE = """
import json, sys
from localllm.bench import BenchSession
cfg = json.loads(sys.argv[1])
s = BenchSession(cfg["model"], n_threads=cfg["threads"], n_prompt=cfg["n_prompt"], n_gen=cfg["n_gen"],
                 seed=cfg["seed"], n_depth=cfg["n_depth"])
print(cfg["reply"] + json.dumps(s.info), flush=True)
for line in sys.stdin:
    cmd = line.strip()
    reply = (s.finish(cfg["cold_start"]) if cmd == "end" else {"cold_start_s": s.cold_start()} if cmd == "cold"
             else {"rate": s.rate(cmd)})
    print(cfg["reply"] + json.dumps(reply), flush=True)
    if cmd == "end":
        break
"""

# Runs in the llama-cpp-python interpreter: test_prompt / test_gen of llama-bench.cpp, in Python over ctypes.
_LLAMA_CPP = r"""
import json, os, random, resource, statistics, subprocess, sys, time
cfg = json.loads(sys.argv[1])
REPLY = cfg.get("reply", "")
import llama_cpp as C
from llama_cpp import Llama

n_prompt, n_gen, n_batch, threads, depth = cfg["n_prompt"], cfg["n_gen"], 512, cfg["threads"], cfg["n_depth"]
t0 = time.perf_counter()
fa = bool(cfg.get("flash_attn"))
llm = Llama(model_path=cfg["model"], n_ctx=depth + max(n_prompt + n_gen, 16), n_batch=n_batch, n_ubatch=n_batch,
            n_threads=threads, n_threads_batch=threads, verbose=False, flash_attn=fa)
load_s = time.perf_counter() - t0
ctx = llm._ctx.ctx
vocab = C.llama_model_get_vocab(llm._model.model)
n_vocab = C.llama_vocab_n_tokens(vocab)
bos = C.llama_vocab_bos(vocab) if C.llama_vocab_get_add_bos(vocab) else None
mem = C.llama_get_memory(ctx)
rng = random.Random(cfg["seed"])

def decode(tokens):
    arr = (C.llama_token * len(tokens))(*tokens)
    rc = C.llama_decode(ctx, C.llama_batch_get_one(arr, len(tokens)))
    if rc != 0:
        raise RuntimeError(f"llama_decode failed ({rc})")

def first():
    return bos if bos is not None else rng.randrange(n_vocab)

def test_prompt(n):
    tokens = [first()] + [rng.randrange(n_vocab) for _ in range(n - 1)]
    for s in range(0, n, n_batch):
        decode(tokens[s:s + n_batch])
    C.llama_synchronize(ctx)

def test_gen(n):
    token = first() if not depth else rng.randrange(n_vocab)
    for _ in range(n):
        decode([token])
        C.llama_synchronize(ctx)
        token = rng.randrange(n_vocab)

if depth:     # the context of the tests with depth, filled once; each test rewinds to it (llama-bench -d)
    C.llama_memory_clear(mem, False)
    test_prompt(depth)

def timed(fn, n):
    if depth:
        C.llama_memory_seq_rm(mem, -1, depth, -1)
    else:
        C.llama_memory_clear(mem, False)
    t = time.perf_counter()
    fn(n)
    return n / (time.perf_counter() - t)

def mean_sd(rates):
    return statistics.fmean(rates), (statistics.stdev(rates) if len(rates) > 1 else 0.0)

warm = set()

def rate(kind):    # one timed repetition of "pp" or "tg", an untimed warm-up before the first of each kind
    fn, n = (test_prompt, n_prompt) if kind == "pp" else (test_gen, n_gen)
    if kind not in warm:
        timed(fn, n if kind == "pp" else 1)
        warm.add(kind)
    return timed(fn, n)

def cold_start():
    # time to first token of a short chat prompt in a fresh process, as localllm.bench.cold_start_s: the
    # second of two launches the first time, later one launch each (bytecode cache allowed, as there)
    code = ("import os, sys; from llama_cpp import Llama; "
            f"llm = Llama(sys.argv[1], n_threads={threads}, n_threads_batch={threads}, verbose=False, "
            f"flash_attn={fa}); "
            "next(llm.create_chat_completion([{'role': 'user', 'content': 'Why is the sky blue?'}], "
            "max_tokens=1, temperature=0, stream=True)); print('first token', flush=True); os._exit(0)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for _ in range(1 if "cold" in warm else 2):
        t = time.perf_counter()
        with subprocess.Popen([sys.executable, "-c", code, cfg["model"]], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, env=env) as p:
            line = p.stdout.readline()
            secs = time.perf_counter() - t if line else None
    warm.add("cold")
    return secs

def finish():
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "cold_start_s": cold_start() if cfg["cold_start"] else None}

out = {"llama_cpp_version": C.__version__, "threads": threads, "load_s": load_s, "n_depth": depth}
if cfg.get("serve"):      # paired mode: one repetition per request on stdin (compare.py's _Worker)
    print(REPLY + json.dumps(out), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        reply = finish() if cmd == "end" else {"cold_start_s": cold_start()} if cmd == "cold" else {"rate": rate(cmd)}
        print(REPLY + json.dumps(reply), flush=True)
        if cmd == "end":
            break
    sys.exit(0)
for kind, n in (("pp", n_prompt), ("tg", n_gen)):
    if n:
        rates = [rate(kind) for _ in range(cfg["reps"])]
        out[f"{kind}{n}"], out[f"{kind}{n}_sd"] = mean_sd(rates)
        out[f"{kind}{n}_samples"] = rates
out.update(finish())
print(json.dumps(out))
"""


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bytes_per_token(path: str | os.PathLike) -> tuple[int, int]:
    """(bytes of weights one decode step reads, bytes of all tensors).

    Every weight matrix is read once per token, except the token-embedding table, of which only the
    token's row is read, unless the output head is tied to it (no output.weight), when the head reads it
    all. The growing KV cache is left out (a few MB over tg128 for these models).
    """
    from localllm.ggufio import GGUFFile

    gf = GGUFFile(path)
    total = sum(t.n_bytes for t in gf.tensors.values())
    emb = gf.tensors.get("token_embd.weight")
    read = total
    if emb is not None and "output.weight" in gf.tensors:
        read -= emb.n_bytes - emb.n_bytes // emb.shape[0]
    return read, total


def _engine_env() -> dict:
    from localllm._runtime import SET_HERE   # localllm's own thread-pool settings must not reach llama.cpp

    env = {k: v for k, v in os.environ.items() if k not in SET_HERE}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return env


def _run_json(python: str, script: str, cfg: dict) -> dict:
    proc = subprocess.run([python, "-c", script, json.dumps(cfg)], capture_output=True, text=True,
                          env=_engine_env())
    if proc.returncode != 0:
        raise RuntimeError(f"{python} failed ({proc.returncode}):\n{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


REPLY = "@@reply "     # marks a worker's answers on its stdout (a library may print there too)


class _Worker:
    """An engine's benchmark script in serve mode (paired runs): it loads the model once, answers with
    its load figures, then runs one timed repetition per request ("pp", "tg") and its end figures
    (peak RSS, cold start) on "end"."""

    def __init__(self, python: str, script: str, cfg: dict):
        self._err = tempfile.TemporaryFile("w+")
        self._proc = subprocess.Popen([python, "-c", script, json.dumps({**cfg, "serve": True, "reply": REPLY})],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, text=True,
                                      env=_engine_env())
        self._python = python
        self.info = self._reply()

    def _reply(self) -> dict:
        for line in self._proc.stdout:
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY):])
        rc = self._proc.wait()
        self._err.seek(0)
        raise RuntimeError(f"{self._python} failed ({rc}):\n{self._err.read().strip()[-2000:]}")

    def ask(self, request: str) -> dict:
        self._proc.stdin.write(request + "\n")
        self._proc.stdin.flush()
        return self._reply()

    def cpu_s(self) -> float | None:
        """CPU seconds the worker has used (Linux: /proc; None elsewhere)."""
        try:
            fields = open(f"/proc/{self._proc.pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._err.close()


def has_llama_cpp(python: str) -> str | None:
    """llama-cpp-python's version in that interpreter, or None when it cannot import it."""
    try:
        proc = subprocess.run([python, "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                              capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _turns(rep: int, n: int):
    """The order in which n engines run repetition rep: forwards, then backwards, alternating."""
    return range(n) if rep % 2 == 0 else reversed(range(n))


def _merge_rounds(results: list[dict], tests: list[str]) -> dict:
    """One engine's results of several rounds as one: rates over every round's samples, and the median
    round's load time, cold start and peak RSS."""
    from localllm.bench import put_rates

    merged = dict(results[0])
    for test in tests:
        samples = [x for r in results for x in r.get(test + "_samples", [])]
        if samples:
            put_rates(merged, test, samples)
    for key in ("load_s", "cold_start_s", "peak_rss_mb"):
        values = [r[key] for r in results if r.get(key) is not None]
        if values:
            merged[key] = statistics.median(values)
    return merged


def measure_bandwidth(threads: int) -> float:
    """Bytes/s that `threads` threads read from memory (localllm.bench.read_bandwidth), in a fresh process
    of this interpreter so that the 1 GiB buffer is gone before the engines load."""
    code = f"from localllm.bench import read_bandwidth; print(read_bandwidth({int(threads)}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def compare_model(path: str, args, llama_python: str | None) -> dict:
    cfg = {"model": str(path), "threads": args.threads, "reps": args.reps, "n_prompt": args.n_prompt,
           "n_gen": args.n_gen, "cold_start": not args.no_cold_start, "seed": 0, "n_depth": args.n_depth,
           "flash_attn": args.llama_flash_attn == "on"}
    read, total = bytes_per_token(path)
    # bytes/s: --bandwidth (GB/s), or measured just before this model's tests
    bandwidth = args.bandwidth * 1e9 if args.bandwidth else measure_bandwidth(args.threads)
    entry = {"model": str(path), "bytes_per_token": read, "tensor_bytes": total,
             "bandwidth_gbs": bandwidth / 1e9, "decode_limit_tps": bandwidth / read}
    if args.paired:
        return _compare_paired(entry, cfg, args, llama_python)
    ours, theirs = [], []
    for r in range(args.rounds):
        # alternate which engine goes first, so that a slow minute does not always fall on the same one
        for engine in (("localllm", "llama_cpp")[i] for i in _turns(r, 2)):
            if engine == "localllm":
                ours.append(_run_json(sys.executable, _LOCALLLM, cfg))
            elif llama_python and "llama_cpp_error" not in entry:
                try:
                    theirs.append(_run_json(llama_python, _LLAMA_CPP, cfg))
                except RuntimeError as e:   # an architecture llama.cpp's build lacks should not stop the rest
                    entry["llama_cpp_error"] = str(e)
    tests = [f"pp{args.n_prompt}", f"tg{args.n_gen}"]
    entry["localllm"] = _merge_rounds(ours, tests)
    entry["llama_cpp"] = _merge_rounds(theirs, tests) if theirs else None
    if len(ours) > 1 and len(theirs) == len(ours):
        entry["round_ratios"] = {t: [a[t] / b[t] for a, b in zip(ours, theirs)] for t in tests
                                 if all(t in a and b.get(t) for a, b in zip(ours, theirs))}
    return entry


def _compare_paired(entry: dict, cfg: dict, args, llama_python: str | None) -> dict:
    """Both engines loaded side by side in worker processes; each of the `reps` repetitions of a test runs
    on one engine, then at once on the other (the order alternating), and each pair gives a ratio. The
    engines so meet the same spells of a shared machine, which swing the rates of runs minutes apart.
    Cold starts are paired the same way, args.cold_reps of them (the median kept)."""
    from localllm.bench import put_rates

    tests = [(kind, f"{kind}{n}") for kind, n in (("pp", args.n_prompt), ("tg", args.n_gen)) if n > 0]
    cold_reps = args.cold_reps if cfg["cold_start"] else 0
    cfg = dict(cfg, cold_start=False)        # asked for one at a time below, not at "end"
    workers = [_Worker(sys.executable, _LOCALLLM_SERVE, cfg)]
    try:
        if llama_python:
            try:
                workers.append(_Worker(llama_python, _LLAMA_CPP, cfg))
            except RuntimeError as e:   # an architecture llama.cpp's build lacks should not stop the rest
                entry["llama_cpp_error"] = str(e)
        results = [dict(w.info, reps=args.reps, idle_cpu_s=0.0) for w in workers]
        for kind, test in tests:
            samples = [[] for _ in workers]
            for rep in range(args.reps):
                for i in _turns(rep, len(workers)):
                    waiting = [(j, w, w.cpu_s()) for j, w in enumerate(workers) if j != i]
                    samples[i].append(workers[i].ask(kind)["rate"])
                    for j, w, before in waiting:     # what the waiting engine used meanwhile (should be ~0)
                        if before is not None:
                            results[j]["idle_cpu_s"] += w.cpu_s() - before
            for r, rates in zip(results, samples):
                put_rates(r, test, rates)
        colds = [[] for _ in workers]
        for rep in range(cold_reps):
            for i in _turns(rep, len(workers)):
                colds[i].append(workers[i].ask("cold")["cold_start_s"])
        for r, w, c in zip(results, workers, colds):
            r.update(w.ask("end"))
            if c:
                r["cold_start_samples"] = c
                r["cold_start_s"] = statistics.median(c) if None not in c else None
    finally:
        for w in workers:
            w.close()
    entry["localllm"] = results[0]
    entry["llama_cpp"] = results[1] if len(results) > 1 else None
    if len(results) > 1:
        entry["pair_ratios"] = {test: [a / b for a, b in zip(results[0][test + "_samples"], results[1][test + "_samples"])]
                                for _, test in tests}
    return entry


def _tps(r: dict | None, test: str) -> str:
    if not r or test not in r:
        return "n/a"
    return f"{r[test]:.2f} ± {r.get(test + '_sd', 0.0):.2f}"


def _pct(r: dict | None, test: str, limit: float) -> str:
    # The bandwidth limit bounds decode only; prefill is compute-bound.
    return f"{100 * r[test] / limit:.0f} %" if test.startswith("tg") and r and test in r else ""


def _secs(r: dict | None, key: str) -> str:
    return "n/a" if not r or r.get(key) is None else f"{r[key]:.2f} s"


def _cold_label(r: dict) -> str:
    n = len(r.get("cold_start_samples") or [])
    return f" (median of {n} launches each, alternating; range)" if n > 1 else ""


def _cold(r: dict | None) -> str:
    """The cold start, with the range of several (paired runs keep their median)."""
    c = (r or {}).get("cold_start_samples") or []
    if len(c) < 2 or None in c:
        return _secs(r, "cold_start_s")
    return f"{r['cold_start_s']:.2f} s ({min(c):.2f}-{max(c):.2f})"


def format_report(report: dict) -> str:
    from localllm.bench import format_table, markdown_table, test_label

    bw = report.get("bandwidth_gbs")
    lines = [f"# localllm vs llama.cpp, {report['date']}",
             f"CPU: {report['cpu']}; threads: {report['threads']}; reps: {report['reps']}; "
             + ("paired repetitions; " if report.get("paired") else f"rounds: {report.get('rounds', 1)}; ") +
             f"llama-cpp-python: {report['llama_cpp_version'] or 'not available'} "
             f"(flash attention {report.get('llama_flash_attn', 'off')}); " +
             (f"decode limit at {bw:.3g} GB/s" if bw else f"decode limit at the memory bandwidth measured "
              f"before each model ({report['threads']} threads reading 1 GiB)"), ""]
    for m in report["models"]:
        ours, ref = m["localllm"], m["llama_cpp"]
        lines += [f"## {Path(m['model']).name}", "", format_table(ours), ""]
        rows = []
        for test in (f"pp{report['n_prompt']}", f"tg{report['n_gen']}"):
            if test not in ours:
                continue
            per_round = m.get("pair_ratios", m.get("round_ratios", {})).get(test)
            if per_round:                         # several rounds or pairs: the median of their ratios
                ratio = f"{statistics.median(per_round):.2f}x"
            else:
                ratio = f"{ours[test] / ref[test]:.2f}x" if ref and ref.get(test) else "n/a"
            limit = m["decode_limit_tps"]
            rows.append([test_label(test, report.get("n_depth", 0)), _tps(ours, test), _tps(ref, test), ratio,
                         _pct(ours, test, limit), _pct(ref, test, limit)])
        header = ["test", "localllm t/s", "llama.cpp t/s", "localllm / llama.cpp", "localllm % of limit",
                  "llama.cpp % of limit"]
        lines.append(markdown_table(header, rows, right=set(header[1:])))
        lines += ["",
                  f"decode limit: {m.get('bandwidth_gbs', bw):.3g} GB/s"
                  f"{' (measured)' if not bw else ''} / {m['bytes_per_token'] / 1e6:.1f} MB read per token = "
                  f"{m['decode_limit_tps']:.0f} t/s (the GGUF's bytes; localllm's repacked weights: "
                  f"{ours.get('decode_weight_bytes', 0) / 1e6:.1f} MB)",
                  f"load: localllm {_secs(ours, 'load_s')}, llama.cpp {_secs(ref, 'load_s')}; "
                  f"cold start to first token{_cold_label(ours)}: localllm {_cold(ours)}, llama.cpp {_cold(ref)}; "
                  f"peak RSS: localllm {ours['peak_rss_mb']:.0f} MiB, "
                  f"llama.cpp {'n/a' if not ref else format(ref['peak_rss_mb'], '.0f') + ' MiB'}"]
        for test, per_pair in m.get("pair_ratios", {}).items():
            lines.append(f"{test} ratio per pair (both engines loaded side by side, one repetition each in turn): "
                         + ", ".join(f"{x:.2f}x" for x in per_pair) + f"; median {statistics.median(per_pair):.2f}x")
        if m.get("pair_ratios"):
            lines.append(f"CPU time of the waiting engine during the other's repetitions: localllm "
                         f"{ours['idle_cpu_s']:.2f} s, llama.cpp {ref['idle_cpu_s']:.2f} s")
        for test, per_round in m.get("round_ratios", {}).items():
            lines.append(f"{test} ratio per round (each engine in its own fresh process, the order alternating): "
                         + ", ".join(f"{x:.2f}x" for x in per_round) + f"; median {statistics.median(per_round):.2f}x")
        if m.get("llama_cpp_error"):
            lines.append(f"llama.cpp failed: {m['llama_cpp_error'].splitlines()[-1]}")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="GGUF files")
    p.add_argument("--threads", type=int, default=None, help="threads for both engines (default: localllm's)")
    p.add_argument("--reps", type=int, default=5, help="repetitions after one warm-up (default 5)")
    p.add_argument("--n-prompt", type=int, default=512, help="prompt tokens for pp (default 512)")
    p.add_argument("--n-gen", type=int, default=128, help="decode steps for tg (default 128)")
    p.add_argument("--n-depth", type=int, default=0,
                   help="run both tests after this many cached positions, as llama-bench -d (default 0)")
    p.add_argument("--llama-python", default=DEFAULT_LLAMA_PYTHON,
                   help=f"interpreter with llama-cpp-python (default {DEFAULT_LLAMA_PYTHON})")
    p.add_argument("--bandwidth", type=float, default=None,
                   help="memory bandwidth in GB/s for the decode limit (default: measured before each model, "
                        "--threads threads reading 1 GiB)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the pair this many times, alternating which goes first; ratios are then the "
                        "median of the rounds' (default 1)")
    p.add_argument("--paired", action="store_true",
                   help="load both engines side by side and run each repetition on one, then the other (the "
                        "order alternating); ratios are the median of the pairs' (not with --rounds)")
    p.add_argument("--llama-flash-attn", choices=("off", "on"), default="off",
                   help="llama.cpp's flash attention: off is llama-bench's and llama-cpp-python's default; on "
                        "is what llama.cpp's own default (auto) picks on a CPU, as in llama-cli (default off)")
    p.add_argument("--no-cold-start", action="store_true", help="skip the fresh-process cold-start timing")
    p.add_argument("--cold-reps", type=int, default=5,
                   help="with --paired: timed cold starts of each engine, alternating; the median is kept "
                        "(default 5; other runs time one per round)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if args.paired and args.rounds > 1:
        p.error("--paired and --rounds do not combine: --paired pairs every repetition (raise --reps)")
    if args.n_depth < 0:
        p.error("--n-depth must be at least 0")
    if args.bandwidth is not None and not args.bandwidth > 0:
        p.error("--bandwidth must be a positive number of GB/s")
    if args.cold_reps < 1:
        p.error("--cold-reps must be at least 1")
    if args.threads is None:
        from localllm.threads import default_threads
        args.threads = default_threads()
    for path in args.models:
        if not Path(path).is_file():
            p.error(f"{path}: no such file")

    version = has_llama_cpp(args.llama_python)
    if version is None:
        print(f"note: {args.llama_python} cannot import llama_cpp; measuring localllm only", file=sys.stderr)
    report = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "cpu": cpu_model(),
              "n_cpus": os.cpu_count(), "threads": args.threads, "reps": args.reps, "rounds": args.rounds,
              "paired": args.paired,
              "n_prompt": args.n_prompt, "n_depth": args.n_depth,
              "n_gen": args.n_gen, "bandwidth_gbs": args.bandwidth,
              "llama_cpp_version": version,
              "llama_flash_attn": args.llama_flash_attn,
              "python": platform.python_version(), "models": []}
    for path in args.models:
        print(f"benchmarking {Path(path).name} ...", file=sys.stderr)
        report["models"].append(compare_model(path, args, args.llama_python if version else None))
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
