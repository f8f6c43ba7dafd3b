"""The benchmark machinery on a tiny synthetic llama GGUF: structure and plausibility, never speed."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from localllm.bench import format_summary, format_table, run_bench

N_EMBD, N_FF, N_LAYER, N_HEAD, N_KV_HEAD = 64, 128, 2, 4, 2


def _byte_tokens() -> list[str]:
    from localllm.tokenizer.bpe import BYTE_TO_CHAR
    return [BYTE_TO_CHAR[b] for b in range(256)]


def make_tiny_llama(path: Path, tied: bool = False) -> Path:
    """2 layers, 64-wide, Q8_0 matrices and F32 norms, byte-level BPE over all 256 bytes plus one merge."""
    import gguf

    rng = np.random.default_rng(0)
    tokens = _byte_tokens() + ["Hi", "<|endoftext|>"]
    n_vocab = len(tokens)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("Tiny Bench")
    w.add_context_length(256)
    w.add_embedding_length(N_EMBD)
    w.add_feed_forward_length(N_FF)
    w.add_block_count(N_LAYER)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_KV_HEAD)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([1] * (n_vocab - 1) + [3])
    w.add_token_merges(["H i"])
    w.add_bos_token_id(n_vocab - 1)
    w.add_eos_token_id(n_vocab - 1)

    def matrix(name: str, rows: int, cols: int) -> None:
        m = (rng.standard_normal((rows, cols)) * 0.1).astype(np.float32)
        w.add_tensor(name, gguf.quants.quantize(m, gguf.GGMLQuantizationType.Q8_0),
                     raw_dtype=gguf.GGMLQuantizationType.Q8_0)

    matrix("token_embd.weight", n_vocab, N_EMBD)
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, np.float32))
    if not tied:
        matrix("output.weight", n_vocab, N_EMBD)
    head_dim = N_EMBD // N_HEAD
    for i in range(N_LAYER):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(N_EMBD, np.float32))
        w.add_tensor(p + "ffn_norm.weight", np.ones(N_EMBD, np.float32))
        matrix(p + "attn_q.weight", N_EMBD, N_EMBD)
        matrix(p + "attn_k.weight", N_KV_HEAD * head_dim, N_EMBD)
        matrix(p + "attn_v.weight", N_KV_HEAD * head_dim, N_EMBD)
        matrix(p + "attn_output.weight", N_EMBD, N_EMBD)
        matrix(p + "ffn_gate.weight", N_FF, N_EMBD)
        matrix(p + "ffn_up.weight", N_FF, N_EMBD)
        matrix(p + "ffn_down.weight", N_EMBD, N_FF)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("bench") / "tiny-bench.gguf")


@pytest.fixture(scope="module")
def result(tiny_model) -> dict:
    return run_bench(tiny_model, n_threads=1, reps=2, n_prompt=16, n_gen=4)


def _compare_module():
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "compare.py"
    spec = importlib.util.spec_from_file_location("bench_compare", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_bench_structure(result, tiny_model):
    assert result["model"] == "Tiny Bench"
    assert result["model_desc"] == "llama 107K Q8_0"
    assert result["file_size"] == tiny_model.stat().st_size
    assert result["threads"] == 1 and result["reps"] == 2
    for test in ("pp16", "tg4"):
        assert result[test] > 0 and result[test + "_sd"] >= 0
        assert len(result[test + "_samples"]) == 2
        assert result[test] == pytest.approx(np.mean(result[test + "_samples"]))
    assert "pp512" not in result and "tg128" not in result
    for key in ("load_s", "cold_start_s", "peak_rss_mb"):
        assert result[key] > 0, key


def test_run_bench_skips_a_test_of_zero_tokens(tiny_model):
    r = run_bench(tiny_model, n_threads=1, reps=1, n_prompt=0, n_gen=3, cold_start=False)
    assert "tg3" in r and r["tg3_sd"] == 0.0 and not any(k.startswith("pp") for k in r)
    assert r["cold_start_s"] is None


def test_run_bench_rejects_a_context_too_small(tiny_model):
    with pytest.raises(ValueError, match="n_ctx"):
        run_bench(tiny_model, n_threads=1, reps=1, n_prompt=32, n_gen=0, n_ctx=16, cold_start=False)


def test_format_table_rows(result):
    table = format_table(result)
    lines = table.splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert cells[0] == ["model", "size", "params", "backend", "threads", "test", "t/s"]
    assert lines[1].startswith("| ---")
    assert len(lines) == 4
    assert [row[5] for row in cells[2:]] == ["pp16", "tg4"]
    assert all(row[0] == "llama 107K Q8_0" and row[3] == "CPU" and row[4] == "1" and " ± " in row[6]
               for row in cells[2:])
    assert len({len(line) for line in lines}) == 1        # columns padded alike
    assert format_table([result, result]).count("pp16") == 2
    assert "peak RSS" in format_summary(result)


def test_bytes_per_token_counts_one_embedding_row_unless_tied(tiny_model, tmp_path):
    from localllm.ggufio import GGUFFile

    compare = _compare_module()
    gf = GGUFFile(tiny_model)
    emb = gf.tensors["token_embd.weight"]
    read, total = compare.bytes_per_token(tiny_model)
    assert total == sum(t.n_bytes for t in gf.tensors.values())
    assert read == total - emb.n_bytes + emb.n_bytes // emb.shape[0]
    tied = make_tiny_llama(tmp_path / "tied.gguf", tied=True)
    read, total = compare.bytes_per_token(tied)
    assert read == total


def test_compare_report_without_llama_cpp(result, tiny_model):
    compare = _compare_module()
    read, total = compare.bytes_per_token(tiny_model)
    # the repacked weights a decode step reads, against the GGUF's (Q8_0: 36 bytes per 32 weights instead
    # of 34, rows padded to groups of 32; the norms, in the GGUF count, are not in the decode buffers)
    assert 0.9 * read <= result["decode_weight_bytes"] <= 2 * read
    report = {"date": "2025-01-01T00:00:00+00:00", "cpu": compare.cpu_model(), "threads": 1, "reps": 2,
              "n_prompt": 16, "n_gen": 4, "bandwidth_gbs": 28.0, "llama_cpp_version": None,
              "models": [{"model": str(tiny_model), "bytes_per_token": read, "tensor_bytes": total,
                          "decode_limit_tps": 28e9 / read, "localllm": result, "llama_cpp": None}]}
    text = compare.format_report(report)
    assert "CPU: " in text and "threads: 1" in text and "2025-01-01" in text
    assert "| pp16 " in text and "| tg4 " in text and "n/a" in text
    assert "% of limit" in text
    assert f"localllm's repacked weights: {result['decode_weight_bytes'] / 1e6:.1f} MB" in text


def test_read_parts_reads_every_part_in_its_own_thread():
    """The bandwidth probe's kernel sums each part (so it reads every byte), the parts at once."""
    from localllm.bench import read_bandwidth, read_parts

    a = np.random.default_rng(0).random(1 << 20).astype(np.float32)
    parts = np.array_split(a, 3)
    secs, sums = read_parts(parts)
    assert secs > 0
    np.testing.assert_allclose(sums, [p.astype(np.float64).sum() for p in parts], rtol=1e-4)
    assert 1e8 < read_bandwidth(2, n_bytes=16 << 20, reps=2) < 1e13


def test_compare_measures_the_bandwidth_unless_given(monkeypatch, tiny_model):
    """compare.py's decode limit uses the bandwidth measured just before each model's tests (a fresh
    process of the probe), or --bandwidth; the report says which."""
    compare = _compare_module()
    bw = compare.measure_bandwidth(1)
    assert 1e8 < bw < 1e13
    seen, format_report = {}, compare.format_report
    measured = iter([5e10, 4e10])
    monkeypatch.setattr(compare, "measure_bandwidth", lambda threads: seen.setdefault("threads", threads) and
                        next(measured))
    monkeypatch.setattr(compare, "has_llama_cpp", lambda python: None)
    monkeypatch.setattr(compare, "_run_json", lambda python, script, cfg: {"peak_rss_mb": 1.0})
    monkeypatch.setattr(compare, "format_report", lambda report: seen.setdefault("report", report) and "")
    compare.main([str(tiny_model), str(tiny_model), "--threads", "3", "--no-cold-start"])
    first, second = seen["report"]["models"]
    read = first["bytes_per_token"]
    assert seen["threads"] == 3 and seen["report"]["bandwidth_gbs"] is None
    assert (first["bandwidth_gbs"], second["bandwidth_gbs"]) == (50, 40)      # one measurement per model
    assert first["decode_limit_tps"] == 5e10 / read and second["decode_limit_tps"] == 4e10 / read
    text = format_report(seen["report"])
    assert "decode limit at the memory bandwidth measured before each model (3 threads reading 1 GiB)" in text
    assert f"decode limit: 50 GB/s (measured) / {read / 1e6:.1f} MB" in text
    seen.clear()
    compare.main([str(tiny_model), "--threads", "3", "--bandwidth", "20", "--no-cold-start"])
    (only,) = seen["report"]["models"]
    assert "threads" not in seen and only["decode_limit_tps"] == 20e9 / read
    text = format_report(seen["report"])
    assert "decode limit at 20 GB/s\n" in text and "decode limit: 20 GB/s / " in text
    with pytest.raises(SystemExit):
        compare.main([str(tiny_model), "--bandwidth", "0"])


def test_cold_start_times_a_second_launch_with_bytecode_cache_allowed(monkeypatch, tmp_path):
    """Python's .pyc files are what an installed package starts from, whatever the parent's setting."""
    import localllm.bench as bench

    launches = []

    class FakePopen:
        def __init__(self, cmd, env=None, **kw):
            launches.append((cmd, env))
            self.returncode = 0
            self.stdout = type("S", (), {"readline": lambda self: "first token\n"})()

        def communicate(self):
            return "", ""

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.setattr(bench.subprocess, "Popen", FakePopen)
    assert bench.cold_start_s(tmp_path / "m.gguf") >= 0
    assert len(launches) == 2 and launches[0][0] == launches[1][0]
    assert all("PYTHONDONTWRITEBYTECODE" not in env and "PATH" in env for _, env in launches)


def test_bench_session_cold_start_warms_up_once(tiny_model, monkeypatch):
    """Paired runs time several cold starts: the first launch leaves the prompt cache as a user's earlier
    run would and is not timed; every later call times one launch."""
    import localllm.bench as bench

    launches = []
    monkeypatch.setattr(bench, "_time_to_first_line",
                        lambda cmd, warm_up=False: launches.append((cmd, warm_up)) or 0.5)
    s = bench.BenchSession(tiny_model, n_threads=1, n_prompt=8, n_gen=2)
    assert s.cold_start() == 0.5 and s.cold_start() == 0.5
    assert [w for _, w in launches] == [True, False]
    assert launches[0][0][-1] == str(tiny_model) and launches[0][0] == launches[1][0]


def test_compare_rounds_alternate_and_report_the_median_ratio(tiny_model, monkeypatch):
    """--rounds N runs the pair N times, the engine that goes first alternating; the table's ratio is the
    median of the rounds' ratios and the rates pool every round's samples."""
    import argparse
    import statistics
    compare = _compare_module()
    calls = []
    ours_tg, theirs_tg = iter([100.0, 150.0, 90.0]), iter([50.0, 50.0, 60.0])

    def fake_run(python, script, cfg):
        engine = "localllm" if script is compare._LOCALLLM else "llama_cpp"
        calls.append(engine)
        tg = next(ours_tg if engine == "localllm" else theirs_tg)
        return {"pp16": 10.0, "pp16_samples": [10.0], "tg4": tg, "tg4_samples": [tg], "load_s": 0.5,
                "cold_start_s": None, "peak_rss_mb": 100.0, "threads": 1, "model_desc": "tiny",
                "file_size": 1, "n_params": 1, "reps": 1}

    monkeypatch.setattr(compare, "_run_json", fake_run)
    args = argparse.Namespace(threads=1, reps=1, n_prompt=16, n_gen=4, n_depth=0, no_cold_start=True, rounds=3,
                              bandwidth=28.0, llama_flash_attn="off", paired=False)
    entry = compare.compare_model(str(tiny_model), args, "/fake/python")
    assert calls == ["localllm", "llama_cpp", "llama_cpp", "localllm", "localllm", "llama_cpp"]
    assert entry["round_ratios"]["tg4"] == [2.0, 3.0, 1.5]
    assert entry["localllm"]["tg4"] == statistics.fmean([100.0, 150.0, 90.0])
    assert entry["localllm"]["tg4_samples"] == [100.0, 150.0, 90.0]
    report = {"date": "2025-01-01T00:00:00+00:00", "cpu": "x", "threads": 1, "reps": 1, "rounds": 3,
              "n_prompt": 16, "n_gen": 4, "bandwidth_gbs": 28.0, "llama_cpp_version": "0", "models": [entry]}
    text = compare.format_report(report)
    assert "2.00x" in text.split("| tg4")[1].split("\n")[0]          # the median, not 113.3 / 53.3
    assert "tg4 ratio per round" in text and "2.00x, 3.00x, 1.50x; median 2.00x" in text
    assert "(flash attention off)" in text


def test_compare_llama_flash_attn_reaches_llama_cpp(tiny_model, monkeypatch):
    """--llama-flash-attn on is passed to llama.cpp's benchmark and its cold-start process (Llama(...,
    flash_attn=True)), and the report's header says which setting ran."""
    import argparse
    compare = _compare_module()
    seen = []

    def fake_run(python, script, cfg):
        seen.append(cfg["flash_attn"])
        return {"pp16": 10.0, "pp16_samples": [10.0], "tg4": 5.0, "tg4_samples": [5.0], "load_s": 0.5,
                "cold_start_s": None, "peak_rss_mb": 100.0, "threads": 1, "model_desc": "tiny",
                "file_size": 1, "n_params": 1, "reps": 1}

    monkeypatch.setattr(compare, "_run_json", fake_run)
    for setting, want in (("on", True), ("off", False)):
        seen.clear()
        args = argparse.Namespace(threads=1, reps=1, n_prompt=16, n_gen=4, n_depth=0, no_cold_start=True, rounds=1,
                                  bandwidth=28.0, llama_flash_attn=setting, paired=False)
        compare.compare_model(str(tiny_model), args, "/fake/python")
        assert seen == [want, want]
    assert "flash_attn=fa)" in compare._LLAMA_CPP and "flash_attn={fa}); " in compare._LLAMA_CPP
    report = {"date": "2025-01-01T00:00:00+00:00", "cpu": "x", "threads": 1, "reps": 1, "n_prompt": 16, "n_gen": 4,
              "bandwidth_gbs": 28.0, "llama_cpp_version": "0", "llama_flash_attn": "on", "models": []}
    assert "(flash attention on)" in compare.format_report(report)


def test_run_bench_with_depth(tiny_model, monkeypatch):
    """n_depth (llama-bench's -d): the context is filled once, and every repetition of both tests starts
    from that position again; the table labels the tests "pp8 @ d20"."""
    from localllm.arch import llama

    calls = []
    forward = llama.Model.forward

    def spy(self, ids, pos0, cache, all_logits=False):
        calls.append((pos0, len(ids), cache.n_tokens))
        return forward(self, ids, pos0, cache, all_logits)

    monkeypatch.setattr(llama.Model, "forward", spy)
    r = run_bench(tiny_model, n_threads=1, reps=2, n_prompt=8, n_gen=3, cold_start=False, n_depth=20)
    assert r["n_depth"] == 20 and r["n_ctx"] >= 28
    assert calls[0] == (0, 20, 0)                                  # the fill, once
    prompts = [c for c in calls[1:] if c[1] == 8]
    assert prompts == [(20, 8, 20)] * 3                            # warm-up + 2 reps, each from position 20
    steps = [c for c in calls[1:] if c[1] == 1]
    assert [c[0] for c in steps] == [20] + [20, 21, 22] * 2        # warm-up token, then 2 reps of 3
    assert steps[0][2] == 20 and all(c[2] == c[0] for c in steps)
    rows = [line.split("|")[6].strip() for line in format_table(r).splitlines()[2:]]
    assert rows == ["pp8 @ d20", "tg3 @ d20"]
    with pytest.raises(ValueError, match="n_ctx"):
        run_bench(tiny_model, n_threads=1, reps=1, n_prompt=8, n_gen=0, n_ctx=24, cold_start=False, n_depth=20)


def test_compare_paired_alternates_each_repetition_and_reports_the_median_pair_ratio(tiny_model, monkeypatch):
    """--paired: both engines loaded once, each repetition run on one and at once on the other, the order
    alternating; each pair gives a ratio, and the table shows their median."""
    import argparse
    compare = _compare_module()
    asked = []
    rates = {("localllm", "tg"): iter([100.0, 150.0, 90.0]), ("llama_cpp", "tg"): iter([50.0, 50.0, 60.0]),
             ("localllm", "pp"): iter([40.0] * 3), ("llama_cpp", "pp"): iter([20.0] * 3)}
    colds = {"localllm": iter([0.9, 1.5, 0.8]), "llama_cpp": iter([1.2, 1.1, 2.0])}

    class FakeWorker:
        def __init__(self, python, script, cfg):
            self.engine = "localllm" if script is compare._LOCALLLM_SERVE else "llama_cpp"
            self.info = {"load_s": 0.5, "threads": 1, "model_desc": "tiny", "file_size": 1, "n_params": 1}

        def ask(self, request):
            asked.append((self.engine, request))
            if request == "end":
                return {"peak_rss_mb": 100.0, "cold_start_s": None}
            if request == "cold":
                return {"cold_start_s": next(colds[self.engine])}
            return {"rate": next(rates[self.engine, request])}

        def cpu_s(self):
            return 1.0

        def close(self):
            asked.append((self.engine, "closed"))

    monkeypatch.setattr(compare, "_Worker", FakeWorker)
    args = argparse.Namespace(threads=1, reps=3, n_prompt=16, n_gen=4, n_depth=0, no_cold_start=False, rounds=1,
                              bandwidth=28.0, llama_flash_attn="off", paired=True, cold_reps=3)
    entry = compare.compare_model(str(tiny_model), args, "/fake/python")
    tg = [a for a in asked if a[1] == "tg"]
    assert [e for e, _ in tg] == ["localllm", "llama_cpp", "llama_cpp", "localllm", "localllm", "llama_cpp"]
    cold = [a for a in asked if a[1] == "cold"]
    assert [e for e, _ in cold] == ["localllm", "llama_cpp", "llama_cpp", "localllm", "localllm", "llama_cpp"]
    assert asked[-4:] == [("localllm", "end"), ("llama_cpp", "end"), ("localllm", "closed"),
                          ("llama_cpp", "closed")]
    assert entry["localllm"]["cold_start_s"] == 0.9 and entry["llama_cpp"]["cold_start_s"] == 1.2   # medians
    assert entry["localllm"]["cold_start_samples"] == [0.9, 1.5, 0.8]
    assert entry["pair_ratios"] == {"pp16": [2.0, 2.0, 2.0], "tg4": [2.0, 3.0, 1.5]}
    assert entry["localllm"]["tg4_samples"] == [100.0, 150.0, 90.0]
    assert entry["localllm"]["idle_cpu_s"] == 0.0 and entry["llama_cpp"]["peak_rss_mb"] == 100.0
    report = {"date": "2025-01-01T00:00:00+00:00", "cpu": "x", "threads": 1, "reps": 3, "rounds": 1, "paired": True,
              "n_prompt": 16, "n_gen": 4, "bandwidth_gbs": 28.0, "llama_cpp_version": "0", "models": [entry]}
    text = compare.format_report(report)
    assert "paired repetitions" in text and "rounds:" not in text
    assert "2.00x" in text.split("| tg4")[1].split("\n")[0]          # the median pair, not 113.3 / 53.3
    assert "tg4 ratio per pair" in text and "2.00x, 3.00x, 1.50x; median 2.00x" in text
    assert ("cold start to first token (median of 3 launches each, alternating; range): localllm 0.90 s "
            "(0.80-1.50), llama.cpp 1.20 s (1.10-2.00)") in text
    with pytest.raises(SystemExit):
        compare.main([str(tiny_model), "--paired", "--rounds", "2"])


def test_compare_paired_worker_runs_localllm_one_repetition_per_request(tiny_model):
    """The localllm side of --paired for real: a worker process loads the model once, answers each "pp" /
    "tg" with one repetition's rate and "end" with its peak RSS; a bad request ends it with a clear error."""
    compare = _compare_module()
    cfg = {"model": str(tiny_model), "threads": 1, "reps": 1, "n_prompt": 16, "n_gen": 4, "cold_start": False,
           "seed": 0, "n_depth": 0, "flash_attn": False}
    w = compare._Worker(sys.executable, compare._LOCALLLM_SERVE, cfg)
    try:
        assert w.info["model"] == "Tiny Bench" and w.info["load_s"] > 0
        assert w.ask("pp")["rate"] > 0 and w.ask("tg")["rate"] > 0 and w.ask("tg")["rate"] > 0
        assert w.cpu_s() > 0
        assert 0 < w.ask("cold")["cold_start_s"] < 60
        end = w.ask("end")
        assert end["peak_rss_mb"] > 0 and end["cold_start_s"] is None
    finally:
        w.close()
    w = compare._Worker(sys.executable, compare._LOCALLLM_SERVE, cfg)
    try:
        with pytest.raises(RuntimeError, match="unknown test 'xx'"):
            w.ask("xx")
    finally:
        w.close()


FAKE_LLAMA_CPP = '''
import ctypes
__version__ = "fake"
llama_token = ctypes.c_int32
decoded = []

class _Ctx:
    ctx = "ctx"

class _Model:
    model = "model"

class Llama:
    def __init__(self, model_path, **kw):
        self._ctx, self._model = _Ctx(), _Model()
        import os
        if os.environ.get("FAKE_LLAMA_LOG"):
            with open(os.environ["FAKE_LLAMA_LOG"], "a") as f:
                f.write(model_path + "\\n")

    def create_chat_completion(self, messages, **kw):
        return iter([{"choices": [{"delta": {"content": "x"}}]}])

def llama_model_get_vocab(m): return "vocab"
def llama_vocab_n_tokens(v): return 100
def llama_vocab_bos(v): return 1
def llama_vocab_get_add_bos(v): return True
def llama_get_memory(c): return "mem"
def llama_batch_get_one(arr, n): return list(arr)[:n]
def llama_decode(c, batch):
    decoded.append(len(batch))
    return 0
def llama_synchronize(c): pass
def llama_memory_clear(m, data): pass
def llama_memory_seq_rm(m, seq, p0, p1): pass
'''


def test_compare_llama_cpp_script_serves_and_runs_in_batch(tmp_path, tiny_model):
    """llama.cpp's side of compare.py, over a stand-in llama_cpp module: the batch run (--rounds) prints its
    rates, and the serve mode (--paired) answers one repetition per request."""
    compare = _compare_module()
    (tmp_path / "llama_cpp.py").write_text(FAKE_LLAMA_CPP)
    cfg = {"model": str(tiny_model), "threads": 1, "reps": 2, "n_prompt": 16, "n_gen": 4, "cold_start": False,
           "seed": 0, "n_depth": 0, "flash_attn": False}
    import os
    import subprocess
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", compare._LLAMA_CPP, json.dumps(cfg)], capture_output=True,
                          text=True, env=env, check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["pp16_samples"]) == 2 and len(out["tg4_samples"]) == 2 and out["cold_start_s"] is None
    monkey = pytest.MonkeyPatch()
    monkey.setenv("PYTHONPATH", str(tmp_path))
    log = tmp_path / "launches.txt"
    monkey.setenv("FAKE_LLAMA_LOG", str(log))
    try:
        w = compare._Worker(sys.executable, compare._LLAMA_CPP, dict(cfg, n_depth=8))
    finally:
        monkey.undo()
    try:
        assert w.info["llama_cpp_version"] == "fake" and w.info["n_depth"] == 8
        assert w.ask("tg")["rate"] > 0 and w.ask("pp")["rate"] > 0
        assert len(log.read_text().splitlines()) == 1                  # the worker's own model
        assert w.ask("cold")["cold_start_s"] > 0                       # an untimed launch, then the timed one
        assert w.ask("cold")["cold_start_s"] > 0                       # the timed one only
        assert log.read_text().splitlines() == [str(tiny_model)] * 4
        assert w.ask("end")["peak_rss_mb"] > 0
    finally:
        w.close()
