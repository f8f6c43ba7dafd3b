"""The `localllm` command: help and import cost, pull/list/show/rm/run, and errors as one line."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
import types
from dataclasses import dataclass

import pytest
from hubserver import Q4, REPO, hub_env, make_gguf, put_in_hf_cache, tiny_ggufs  # noqa: F401
from typer.testing import CliRunner

import localllm
from localllm import cli
from localllm.cli import app
from localllm.errors import GGUFError

runner = CliRunner()


def _sub(args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "localllm", *args], capture_output=True, text=True,
                          env=env, stdin=subprocess.DEVNULL, timeout=120, **kw)


# a fake engine with the interface of localllm.engine -------------------------------------------------
@dataclass
class Chunk:
    text: str
    token: int | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 7
    completion_tokens: int = 0
    ttft_s: float = 0.01
    prompt_tps: float = 700.0
    decode_tps: float = 50.0


class FakeLLM:
    n_ctx, arch, metadata = 256, "llama", {}

    def __init__(self, path, n_ctx=None, n_threads=None):
        self.path, self.n_ctx_arg, self.n_threads = path, n_ctx, n_threads
        self.calls = []

    def _chunks(self, words):
        for i, w in enumerate(words):
            yield Chunk(text=w, token=i, completion_tokens=i + 1,
                        finish_reason="stop" if i == len(words) - 1 else None)

    def chat(self, messages, stream=True, **kw):
        self.calls.append(("chat", [dict(m) for m in messages], kw))
        return self._chunks(["Hello", " from", " tiny", "."])

    def stream(self, prompt, **kw):
        self.calls.append(("stream", prompt, kw))
        return self._chunks([" raw", " text"])


@pytest.fixture
def fake_engine(monkeypatch):
    loaded = []

    def load(path, n_ctx=None, n_threads=None):
        llm = FakeLLM(path, n_ctx, n_threads)
        loaded.append(llm)
        return llm

    monkeypatch.setattr(localllm, "load", load)
    return loaded


# help, version, import cost -------------------------------------------------------------------------------
def test_help_is_fast_and_rich():
    """The target is 0.5 s. CPU time is what the command costs; wall time also counts the machine's
    load (2 busy cores can double it), so both bounds are generous."""
    _sub(["--help"])                                      # warm the bytecode cache
    cpu, wall = min(_timed(["--help"]) for _ in range(3))
    r = _sub(["--help"])
    assert r.returncode == 0 and "pull" in r.stdout and "Examples" in r.stdout
    assert cpu < 1.0, f"`localllm --help` used {cpu:.2f}s of CPU (target 0.5s)"
    assert wall < 5.0, f"`localllm --help` took {wall:.2f}s"


def _timed(args) -> tuple[float, float]:
    import resource
    r0, t = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    _sub(args)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime, time.perf_counter() - t


@pytest.mark.parametrize("args, heavy, message", [
    (["rm", "no-such-model"], ("pydantic", "numba", "textual"), "not in the model store"),
    (["run", "missing.gguf", "hi"], ("pydantic", "rich.progress", "huggingface_hub"), "no such file"),
])
def test_a_command_with_arguments_loads_nothing_heavy(args, heavy, message):
    """Parsing a command's arguments imports no validation framework (typer 0.29 routes each argument
    through a pydantic TypeAdapter: ~0.1 s before `localllm run` starts loading its model), and `run`
    of a file that needs no download sets up no progress bars."""
    code = (f"import sys; sys.argv = ['localllm', *{args!r}]; from localllm.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            f"print([m for m in {heavy!r} if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
    assert message in r.stderr


def test_importing_the_cli_loads_nothing_heavy():
    code = ("import sys, localllm.cli; heavy = [m for m in ('numba', 'numpy', 'textual', 'localllm.engine', "
            "'huggingface_hub', 'localllm.hub.pull', 'gguf') if m in sys.modules]; print(heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_version():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.strip() == f"localllm {localllm.__version__}"
    assert _sub(["--version"]).stdout.strip() == f"localllm {localllm.__version__}"


# pull / list / show / rm ------------------------------------------------------------------------------------
def test_pull_list_show_rm(hub_env):
    r = runner.invoke(app, ["pull", "tiny"])
    assert r.exit_code == 0, r.output
    assert "free disk" in r.stderr and "ready" in r.stderr

    r = runner.invoke(app, ["list"])
    assert r.exit_code == 0
    header, row = r.stdout.splitlines()
    assert header.split() == ["NAME", "ARCH", "PARAMS", "QUANT", "SIZE", "MODIFIED"]
    assert row.split()[:5] == ["tiny:test", "llama", "271K", "Q8_0", "1.1"] and row.endswith("just now")

    r = runner.invoke(app, ["show", "tiny"])
    assert r.exit_code == 0, r.output
    for needle in ("architecture        llama", "context length      256", "embedding length    64",
                   "quantization        Q8_0", "license             apache-2.0", "F32                 3",
                   "Q8_0                2", "{% for m in messages %}"):
        assert needle in r.stdout, (needle, r.stdout)

    info = json.loads(runner.invoke(app, ["show", "tiny:test", "--json"]).stdout)
    assert info["architecture"] == "llama" and info["tensor_types"] == {"F32": 3, "Q8_0": 2, "F16": 1}
    assert info["parameters"] == 270784 and info["chat_template"].startswith("{% for")

    r = runner.invoke(app, ["rm", "tiny"])
    assert r.exit_code == 0 and "deleted 'tiny:test'" in r.stdout
    r = runner.invoke(app, ["list"])
    assert r.exit_code == 0 and r.stdout == "" and "No models yet" in r.stderr


def test_rm_deletes_what_was_derived_from_the_model(hub_env, tmp_path):
    """The repacked weights, prompt entries and tokenizer tables of a deleted model go with it; those of
    a model still there stay, and so do a shared blob's while another name points at it."""
    from localllm.hub.store import CACHE_KINDS, Store, file_cache_dir

    assert runner.invoke(app, ["pull", "tiny"]).exit_code == 0
    assert runner.invoke(app, ["pull", "hf.co/test/Tiny-GGUF"]).exit_code == 0     # the same bytes
    blob = Store().path_of(Store().get("tiny:test"))
    other = make_gguf(tmp_path / "other.gguf")
    src = tmp_path / "code.py"
    src.write_text("x = 1")
    mine, kept = [], []
    for kind in CACHE_KINDS:
        for model, into in ((blob, mine), (other, kept)):
            folder = file_cache_dir(kind, model, "", [src])
            folder.mkdir(parents=True)
            (folder / "data.bin").write_bytes(b"\0" * 1000)
            into.append(folder)
    r = runner.invoke(app, ["rm", "tiny"])
    assert r.exit_code == 0 and r.stdout.strip() == "deleted 'tiny:test'"      # the blob is still named
    assert all(f.is_dir() for f in mine + kept)
    r = runner.invoke(app, ["rm", "hf.co/test/Tiny-GGUF"])
    assert r.exit_code == 0 and "deleted 'hf.co/test/Tiny-GGUF'" in r.stdout and "freed" in r.stdout, r.stdout
    assert not any(f.exists() or f.with_name(f.name + ".json").exists() for f in mine)
    assert all(f.is_dir() and f.with_name(f.name + ".json").is_file() for f in kept)


def test_list_show_rm_in_a_subprocess(hub_env):
    env = hub_env.environ()
    r = _sub(["pull", "hf.co/test/Tiny-GGUF:Q8_0"], env=env)
    assert r.returncode == 0, r.stderr
    r = _sub(["list"], env=env)
    assert r.returncode == 0 and "hf.co/test/Tiny-GGUF:Q8_0" in r.stdout and "Q8_0" in r.stdout
    r = _sub(["show", "hf.co/test/Tiny-GGUF:Q8_0", "--json"], env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["name"] == "Tiny Q8"
    r = _sub(["rm", "hf.co/test/tiny-gguf:q8_0"], env=env)
    assert r.returncode == 0 and "deleted" in r.stdout
    assert _sub(["list", "--json"], env=env).stdout.strip() == "[]"


def test_show_a_local_file(tmp_path, hub_env):
    p = make_gguf(tmp_path / "local.gguf", name="Local One")
    r = runner.invoke(app, ["show", str(p)])
    assert r.exit_code == 0 and "Local One" in r.stdout and str(p) in r.stdout


# errors: one line, exit 1, no traceback unless --debug ----------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["pull", "tinny"], "unknown model 'tinny'; did you mean 'tiny:test'?"),
    (["show", "tiny"], "'tiny:test' is not downloaded; run `localllm pull tiny:test`"),
    (["rm", "tiny"], "'tiny:test' is not in the model store"),
    (["pull", "hf.co/test/Nope-GGUF"], "hf.co/test/Nope-GGUF: not found on the hub"),
    (["pull", "hf.co/test/Tiny-GGUF:Q2_K"], "has no Q2_K file; available: Q4_K_M, Q8_0"),
    (["run", "tiny", "hi", "--max-tokens", "0"], None),       # a usage error from typer: exit 2
])
def test_errors_are_one_line(hub_env, args, message):
    r = runner.invoke(app, args)
    assert r.exception is None or isinstance(r.exception, SystemExit)
    if message is None:
        assert r.exit_code == 2
        return
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: ") and message in r.stderr.replace("\n", " ")
    assert "Traceback" not in r.output


def test_checksum_mismatch_from_the_cli(hub_env):
    hub_env.hub.repos[REPO][Q4].serve = hub_env.data[:-1] + bytes([hub_env.data[-1] ^ 1])
    r = runner.invoke(app, ["pull", "tiny"])
    assert r.exit_code == 1 and "checksum mismatch" in r.stderr and "removed" in r.stderr


def test_offline_with_nothing_cached_in_a_subprocess(hub_env):
    env = {**hub_env.environ(), "HF_HUB_OFFLINE": "1"}
    r = _sub(["run", "tiny", "hello"], env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "Error: tiny:test is not downloaded and HF_HUB_OFFLINE is set; unset HF_HUB_OFFLINE and run "
        "`localllm pull tiny:test`"]


def test_debug_shows_the_traceback(hub_env):
    r = _sub(["--debug", "show", "nosuchmodel"], env=hub_env.environ())
    assert r.returncode != 0 and "Traceback" in r.stderr and "ModelNotFoundError" in r.stderr
    r = _sub(["show", "nosuchmodel"], env=hub_env.environ())
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_corrupt_gguf_is_one_line(tmp_path, hub_env):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(make_gguf(tmp_path / "ok.gguf").read_bytes()[:200])
    r = runner.invoke(app, ["show", str(bad)])
    assert r.exit_code == 1 and "truncated GGUF header" in r.stderr and "Traceback" not in r.output


# run -------------------------------------------------------------------------------------------------------
def test_run_pulls_then_streams_the_answer(hub_env, fake_engine):
    r = runner.invoke(app, ["run", "tiny", "Why", "is", "the", "sky", "blue?", "--system", "Be brief",
                            "--temperature", "0", "--top-k", "5", "--top-p", "0.9", "--min-p", "0.1",
                            "--seed", "42", "--max-tokens", "16", "--ctx", "128", "--threads", "2"])
    assert r.exit_code == 0, r.output
    assert r.stdout == "Hello from tiny.\n"
    (llm,) = fake_engine
    assert llm.path.endswith(f"sha256-{hub_env.sha256}") and (llm.n_ctx_arg, llm.n_threads) == (128, 2)
    kind, messages, kw = llm.calls[0]
    assert kind == "chat" and messages == [{"role": "system", "content": "Be brief"},
                                           {"role": "user", "content": "Why is the sky blue?"}]
    assert kw == dict(temperature=0.0, top_k=5, top_p=0.9, min_p=0.1, seed=42, max_tokens=16)
    assert "eval rate" not in r.stderr


def test_run_reads_a_piped_prompt_and_reports_verbose_stats(hub_env, fake_engine):
    runner.invoke(app, ["pull", "tiny"])
    r = runner.invoke(app, ["run", "tiny", "--verbose"], input="Summarize: the sky is blue.\n")
    assert r.exit_code == 0 and r.stdout == "Hello from tiny.\n"
    assert fake_engine[0].calls[0][1][-1]["content"] == "Summarize: the sky is blue.\n"
    for key in ("total duration:", "load duration:", "prompt eval count:    7 token(s)",
                "prompt eval rate:     700.00 tokens/s", "eval count:           4 token(s)",
                "eval rate:            50.00 tokens/s", "time to first token:", "resident memory:"):
        assert key in r.stderr, (key, r.stderr)
    # an argument and piped text together: the text follows the instruction
    r = runner.invoke(app, ["run", "tiny", "Summarize"], input="some text")
    assert fake_engine[1].calls[0][1][-1]["content"] == "Summarize\n\nsome text"


def test_run_raw_skips_the_chat_template(hub_env, fake_engine):
    r = runner.invoke(app, ["run", "tiny", "Once upon a time", "--raw", "-n", "2"])
    assert r.exit_code == 0 and r.stdout == " raw text\n"
    assert fake_engine[0].calls == [("stream", "Once upon a time", {"max_tokens": 2})]
    runner.invoke(app, ["run", "tiny", "Once", "--raw"])       # no limit given: up to the context's end
    assert fake_engine[1].calls == [("stream", "Once", {"max_tokens": FakeLLM.n_ctx})]


def test_run_a_local_file_in_place(tmp_path, hub_env, fake_engine):
    p = make_gguf(tmp_path / "here.gguf")
    r = runner.invoke(app, ["run", str(p), "hi"])
    assert r.exit_code == 0 and fake_engine[0].path == str(p.resolve())
    assert not (hub_env.home / "models").exists()


def test_run_without_a_prompt_or_terminal_is_an_error(hub_env, fake_engine):
    runner.invoke(app, ["pull", "tiny"])
    r = runner.invoke(app, ["run", "tiny"], input="")
    assert r.exit_code == 1 and "no prompt" in r.stderr


def test_run_engine_errors_are_one_line(hub_env, monkeypatch):
    def load(path, **kw):
        raise GGUFError(f"{path}: unsupported architecture 'mamba'; see `localllm show`")

    monkeypatch.setattr(localllm, "load", load)
    runner.invoke(app, ["pull", "tiny"])
    r = runner.invoke(app, ["run", "tiny", "hi"])
    assert r.exit_code == 1 and "unsupported architecture 'mamba'" in r.stderr and "Traceback" not in r.output


def test_run_chat_loop_without_the_tui(hub_env, fake_engine, monkeypatch):
    monkeypatch.setattr(cli, "_stdin_is_tty", lambda: True)
    monkeypatch.setattr(cli, "_has_tui", lambda: False)
    runner.invoke(app, ["pull", "tiny"])
    r = runner.invoke(app, ["run", "tiny", "--system", "Be kind"],
                      input='hi\n/?\n/clear\n"""two\nlines"""\n/bye\nnever sent\n')
    assert r.exit_code == 0, r.output
    calls = fake_engine[0].calls
    assert len(calls) == 2
    assert calls[0][1] == [{"role": "system", "content": "Be kind"}, {"role": "user", "content": "hi"}]
    assert calls[1][1] == [{"role": "system", "content": "Be kind"}, {"role": "user", "content": "two\nlines"}]
    assert r.stdout.count("Hello from tiny.") == 2 and "/bye" in r.stderr


def test_run_chat_uses_the_tui_when_there(hub_env, monkeypatch):
    seen = {}
    tui = types.ModuleType("localllm.tui")
    tui.run_chat = lambda model_path, **opts: seen.update(path=model_path, **opts)
    monkeypatch.setitem(sys.modules, "localllm.tui", tui)
    monkeypatch.setattr(cli, "_stdin_is_tty", lambda: True)
    monkeypatch.setattr(cli, "_has_tui", lambda: True)
    r = runner.invoke(app, ["run", "tiny", "--temperature", "0.2", "--ctx", "64"])
    assert r.exit_code == 0, r.output
    assert seen == {"path": str(hub_env.home / "models" / "blobs" / f"sha256-{hub_env.sha256}"),
                    "temperature": 0.2, "n_ctx": 64}


def test_run_raw_chat_uses_the_line_loop(hub_env, fake_engine, monkeypatch):
    monkeypatch.setattr(cli, "_stdin_is_tty", lambda: True)
    monkeypatch.setattr(cli, "_has_tui", lambda: True)     # there, but it has no raw mode
    r = runner.invoke(app, ["run", "tiny", "--raw"], input="Once upon\n")
    assert r.exit_code == 0 and fake_engine[0].calls[0][:2] == ("stream", "Once upon")


# the real engine -------------------------------------------------------------------------------------------
def test_real_run_smollm2(smollm2_path, tmp_path, monkeypatch):
    """`localllm run smollm2 ...` end to end, offline: the model comes from a (fake) HF cache."""
    from localllm.hub.manifests import find_manifest

    m = find_manifest("smollm2")
    put_in_hf_cache(tmp_path / "hf", m["hf"]["repo"], m["hf"]["file"], smollm2_path.read_bytes())
    env = {**dict(__import__("os").environ), "LOCALLLM_HOME": str(tmp_path / "home"),
           "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("LOCALLLM_MANIFESTS", None)
    # llama.cpp's greedy answer to this chat prompt (tests/fixtures/ref_smollm2.npz) names Mount Everest
    r = _sub(["run", "smollm2", "What is the tallest mountain in the world? Explain briefly.", "--temperature", "0",
              "--max-tokens", "16", "--verbose"], env=env)
    assert r.returncode == 0, r.stderr
    assert "Everest" in r.stdout
    assert "eval rate:" in r.stderr


def test_chat_loop_survives_a_context_overflow(hub_env, fake_engine, monkeypatch):
    from localllm.errors import ContextOverflowError

    monkeypatch.setattr(cli, "_stdin_is_tty", lambda: True)
    monkeypatch.setattr(cli, "_has_tui", lambda: False)
    runner.invoke(app, ["pull", "tiny"])
    real_chat = FakeLLM.chat

    def chat(self, messages, stream=True, **kw):
        if "long" in messages[-1]["content"]:
            raise ContextOverflowError("the prompt (300 tokens) does not fit in the context (256)")
        return real_chat(self, messages, stream, **kw)

    monkeypatch.setattr(FakeLLM, "chat", chat)
    r = runner.invoke(app, ["run", "tiny"], input="a long one\nshort\n")
    assert r.exit_code == 0 and "does not fit" in r.stderr and "/clear" in r.stderr
    assert r.stdout.count("Hello from tiny.") == 1
    assert fake_engine[0].calls[-1][1] == [{"role": "user", "content": "short"}]   # the failed turn is gone


def test_shell_completion_of_model_names(hub_env):
    env = {**hub_env.environ(), "_LOCALLLM_COMPLETE": "complete_bash", "COMP_WORDS": "localllm run ti",
           "COMP_CWORD": "2"}
    r = subprocess.run([sys.executable, "-m", "localllm"], capture_output=True, text=True, env=env, timeout=60)
    assert r.stdout.split() == ["tiny", "tiny:test"]


def test_bench_command_json(tmp_path):
    """`localllm bench --json` prints the llama-bench figures for a model file."""
    import json
    import sys
    import subprocess

    from tinymodel import write_tiny_llama

    path = write_tiny_llama(tmp_path / "tiny.gguf")
    out = subprocess.run([sys.executable, "-m", "localllm", "bench", str(path), "-r", "1", "-p", "16", "-n", "4",
                          "--no-cold-start", "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["pp16"] > 0 and res["tg4"] > 0 and res["threads"] >= 1


def test_a_first_run_says_once_that_it_compiles(capsys):
    from numba import njit
    from numba.core import event

    from localllm import cli

    listener = cli._say_when_compiling()
    try:
        njit(lambda x: x + 1)(1)
        njit(lambda x: x * 2)(1)
    finally:
        event.unregister("numba:compile", listener)
    err = capsys.readouterr().err
    assert err.count("compiling the kernels") == 1 and "first run only" in err
