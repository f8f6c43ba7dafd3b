"""The `localllm` command: pull, run, list, show and rm models, the way `ollama` does.

Kept thin on purpose: importing this module pulls in typer only. The model store (localllm.hub), the
engine (numba, numpy) and the chat TUI (textual) are imported inside the commands that use them, so
`localllm --help` and shell completion answer at once.
"""
from __future__ import annotations

import functools
import os
import sys
import time
from typing import Annotated, List, Optional

import typer

from . import __version__
from .errors import LocalLLMError

_EXAMPLES = """[bold]Examples[/bold]

  localllm run smollm2 "Why is the sky blue?"   [dim]# pulls it first if needed[/dim]

  echo "Explain this log" | localllm run qwen2.5-coder:0.5b

  localllm run smollm2                          [dim]# chat[/dim]

  localllm pull hf.co/USER/REPO-GGUF:Q8_0       [dim]# any GGUF repo[/dim]

  localllm run ./model.gguf "Hello"             [dim]# runs in place[/dim]

  localllm list · localllm show smollm2 · localllm rm smollm2

Models live in $LOCALLLM_HOME (default: the user cache dir). HF_ENDPOINT, HF_HOME, HF_TOKEN and HF_HUB_OFFLINE work as in huggingface_hub."""

app = typer.Typer(
    name="localllm",
    help="Run GGUF language models on your CPU: [bold]pull[/bold] them by name, [bold]run[/bold] them "
         "in the terminal.",
    epilog=_EXAMPLES,
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_debug = os.environ.get("LOCALLLM_DEBUG", "").lower() in ("1", "true", "yes", "on")


# errors: one line on stderr, non-zero exit; --debug re-raises for the traceback -----------------------
def _stderr():
    from rich.console import Console
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _fail(msg: str, code: int = 1):
    from rich.markup import escape
    _stderr().print(f"[bold red]Error:[/bold red] {escape(msg)}")
    raise typer.Exit(code)


def _friendly(fn):
    """Turn the errors a user can cause into one line and an exit status (never a traceback)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            if _debug:
                raise
            sys.stderr.write("\ninterrupted\n")
            raise typer.Exit(130)
        except LocalLLMError as e:
            if _debug:
                raise
            _fail(str(e))
        except OSError as e:
            if _debug:
                raise
            _fail(f"{e.strerror or e}" + (f": {e.filename}" if getattr(e, "filename", None) else ""))
    return wrapper


def _version(value: bool):
    if value:
        typer.echo(f"localllm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[Optional[bool], typer.Option("--version", "-V", callback=_version, is_eager=True,
                                                     help="Show the version and exit.")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
):
    global _debug
    _debug = _debug or debug


def _complete_model(incomplete: str) -> list[str]:
    """Shell completion: manifest names and aliases, and what the store holds."""
    try:
        from .hub.manifests import load_manifests
        from .hub.store import Store
        names = [n for m in load_manifests().values() for n in (m["name"], *m.get("aliases", ()))]
        names += Store().names()
    except Exception:
        return []
    return sorted({n for n in names if n.lower().startswith(incomplete.lower())})


ModelArg = Annotated[str, typer.Argument(help="Model: a name (smollm2, qwen2.5-coder:0.5b, gemma3:270m), "
                                              "hf.co/USER/REPO[:QUANT], or a path to a .gguf file.",
                                         autocompletion=_complete_model, show_default=False)]


# progress on stderr -----------------------------------------------------------------------------------
def _reporter():
    """The download reporter for pull/run; rich's progress bars are imported only once there is
    something to say (`localllm run` of a model already here never needs them: ~35 ms)."""
    from .hub.download import Reporter

    class RichReporter(Reporter):
        progress = None
        task = None
        console = None

        def _console(self):
            if self.console is None:
                self.console = _stderr()
            return self.console

        def info(self, msg):
            from rich.markup import escape
            self._console().print(escape(msg))

        def warn(self, msg):
            from rich.markup import escape
            self._console().print(f"[yellow]warning:[/yellow] {escape(msg)}")

        def start(self, description, total, completed=0):
            from rich.markup import escape
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                       TransferSpeedColumn)

            self.stop()
            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                                     TransferSpeedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                     console=self._console())
            self.progress.start()
            self.task = self.progress.add_task(escape(description), total=total, completed=completed)

        def advance(self, n):
            if self.progress is not None:
                self.progress.advance(self.task, n)

        def stop(self):
            if self.progress is not None:
                self.progress.stop()
                self.progress = None

    return RichReporter()


# pull -------------------------------------------------------------------------------------------------
@app.command()
@_friendly
def pull(name: ModelArg):
    """Download a model into the store (resumable, checksum-verified)."""
    from .hub.info import human_bytes
    from .hub.pull import pull as do_pull
    from .hub.store import Store

    store = Store()
    rec = do_pull(name, store, _reporter())
    typer.echo(f"{rec.name}: {human_bytes(rec.size)} · {rec.blob[:19]} · ready", err=True)


# run --------------------------------------------------------------------------------------------------
@app.command(context_settings={"allow_interspersed_args": True})
@_friendly
def run(
    name: Annotated[Optional[str], typer.Argument(help="Model (see `localllm pull --help`); default: smollm2.",
                                                  autocompletion=_complete_model, show_default=False)] = None,
    prompt: Annotated[Optional[List[str]], typer.Argument(
        help="The prompt. Without one, the prompt is read from piped stdin, or a chat starts.",
        show_default=False)] = None,
    system: Annotated[Optional[str], typer.Option("--system", "-s", help="System message.")] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", "-t", min=0.0,
                                                         help="Sampling temperature (0: greedy).")] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", min=0, help="Sample from the k likeliest tokens.")] = None,
    top_p: Annotated[Optional[float], typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling.")] = None,
    min_p: Annotated[Optional[float], typer.Option("--min-p", min=0.0, max=1.0, help="Min-p sampling.")] = None,
    repeat_penalty: Annotated[Optional[float], typer.Option("--repeat-penalty", min=0.0,
                                                            help="Penalty on repeated tokens.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed, for repeatable output.")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(
        "--max-tokens", "-n", min=1, show_default=False,
        help="Stop after this many tokens [default: when the model stops or the context is full].")] = None,
    ctx: Annotated[Optional[int], typer.Option("--ctx", "-c", min=16, help="Context window (tokens).")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads.")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Send the prompt as is, without the chat template.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Print timings and memory to stderr.")] = False,
):
    """Run a model: answer PROMPT and exit, or chat when no prompt is given (pulls the model if needed)."""
    t0 = time.perf_counter()
    text = " ".join(prompt) if prompt else None
    if not _stdin_is_tty():
        piped = sys.stdin.read()
        if piped.strip():
            text = f"{text}\n\n{piped}" if text else piped
    from .hub.pull import model_path
    from .hub.store import Store

    path, ref = model_path(name, Store(), _reporter())
    sampling = {k: v for k, v in dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                      repeat_penalty=repeat_penalty, seed=seed,
                                      max_tokens=max_tokens).items() if v is not None}
    if raw and system:
        _stderr().print("[yellow]warning:[/yellow] --system is ignored with --raw (no chat template)")
    if text is None:
        if not _stdin_is_tty():
            _fail("no prompt: give one after the model name, or pipe it on stdin")
        if _has_tui() and not raw:   # the TUI always chats through the template: --raw gets the line loop
            from .tui import run_chat
            opts = dict(system=system, n_ctx=ctx, n_threads=threads, **sampling)
            opts = {k: v for k, v in opts.items() if v is not None}
            if verbose:
                opts["verbose"] = True
            run_chat(str(path), **opts)
            return
        llm, load_s = _load(path, ref.name, ctx, threads)
        sampling.setdefault("max_tokens", _until_full(llm))
        _chat_loop(llm, ref.name, system, raw, sampling, verbose, load_s)
        return
    llm, load_s = _load(path, ref.name, ctx, threads)
    sampling.setdefault("max_tokens", _until_full(llm))
    if raw:
        chunks = llm.stream(text, **sampling)
    else:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        chunks = llm.chat(messages, stream=True, **sampling)
    _, last = _stream_out(chunks)
    if verbose:
        _print_stats(last, time.perf_counter() - t0, load_s)


def _stdin_is_tty() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, AttributeError):
        return False


def _has_tui() -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec("localllm.tui") is not None
    except (ImportError, ValueError):
        return False


def _say_when_compiling():
    """On a terminal, say once why a first run waits: Numba compiling the kernels of this model's formats
    (a minute or two on a small machine; cached for every later run). Returns the registered listener."""
    from numba.core import event

    class _Once(event.Listener):
        said = False

        def on_start(self, ev):
            if not self.said:
                self.said = True
                _stderr().print("[dim]compiling the kernels for this model's formats (first run only, "
                                "a minute or two)…[/dim]")

        def on_end(self, ev):
            pass

    listener = _Once()
    event.register("numba:compile", listener)
    return listener


def _load(path, label: str, ctx, threads):
    import localllm

    t = time.perf_counter()
    if sys.stderr.isatty():
        _say_when_compiling()
        with _stderr().status(f"loading {label}…"):
            llm = localllm.load(str(path), n_ctx=ctx, n_threads=threads)
    else:
        llm = localllm.load(str(path), n_ctx=ctx, n_threads=threads)
    return llm, time.perf_counter() - t


def _until_full(llm) -> int:
    """No token limit of our own, as `ollama run`: the engine stops at the end of the context."""
    return int(getattr(llm, "n_ctx", 0) or 4096)


def _stream_out(chunks) -> tuple[str, object]:
    """Write each chunk's text to stdout as it comes; returns (the whole text, the last chunk)."""
    out, last = [], None
    try:
        for chunk in chunks:
            last = chunk
            if chunk.text:
                out.append(chunk.text)
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
    finally:
        if out and not out[-1].endswith("\n"):
            sys.stdout.write("\n")
        sys.stdout.flush()
    return "".join(out), last


def _duration(s: float) -> str:
    return f"{s:.3f}s" if s >= 1 else f"{s * 1000:.1f}ms"


def _print_stats(last, total_s: float, load_s: float) -> None:
    """`ollama run --verbose`'s summary, on stderr."""
    def get(attr, default=0):
        v = getattr(last, attr, None) if last is not None else None
        return default if v is None else v

    n_prompt, prompt_tps = get("prompt_tokens"), get("prompt_tps", 0.0)
    n_eval, eval_tps = get("completion_tokens"), get("decode_tps", 0.0)
    lines = [
        ("total duration", _duration(total_s)),
        ("load duration", _duration(load_s)),
        ("prompt eval count", f"{n_prompt} token(s)"),
        ("prompt eval duration", _duration(n_prompt / prompt_tps) if prompt_tps else "-"),
        ("prompt eval rate", f"{prompt_tps:.2f} tokens/s"),
        ("eval count", f"{n_eval} token(s)"),
        ("eval duration", _duration(n_eval / eval_tps) if eval_tps else "-"),
        ("eval rate", f"{eval_tps:.2f} tokens/s"),
        ("time to first token", _duration(get("ttft_s", 0.0))),
    ]
    try:
        import psutil
        from .hub.info import human_bytes
        lines.append(("resident memory", human_bytes(psutil.Process().memory_info().rss)))
    except ImportError:
        pass
    for k, v in lines:
        sys.stderr.write(f"{k + ':':<22}{v}\n")
    sys.stderr.flush()


_CHAT_HELP = """Commands:
  /bye        leave (or Ctrl-D)
  /clear      forget the conversation
  /? /help    this help
  \"\"\"         start and end a multi-line message"""


def _chat_loop(llm, label: str, system, raw: bool, sampling: dict, verbose: bool, load_s: float) -> None:
    """A line-based chat, for when the TUI isn't there: `>>> ` prompts, /bye to quit."""
    sys.stderr.write(f"{label} is ready. Type /? for help, /bye to leave.\n")
    base = [{"role": "system", "content": system}] if system and not raw else []
    history = list(base)
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            sys.stdout.write("\n")
            return
        except KeyboardInterrupt:
            sys.stdout.write("\nUse Ctrl-D or /bye to leave.\n")
            continue
        msg = line.strip()
        if msg.startswith('"""'):
            msg = _read_multiline(msg[3:])
        if not msg:
            continue
        if msg in ("/bye", "/exit", "/quit"):
            return
        if msg == "/clear":
            history = list(base)
            sys.stderr.write("Cleared the conversation.\n")
            continue
        if msg in ("/?", "/help"):
            sys.stderr.write(_CHAT_HELP + "\n")
            continue
        if msg.startswith("/"):
            sys.stderr.write(f"Unknown command {msg.split()[0]}; /? lists them.\n")
            continue
        t0 = time.perf_counter()
        history.append({"role": "user", "content": msg})
        try:
            chunks = llm.stream(msg, **sampling) if raw else llm.chat(history, stream=True, **sampling)
            reply, last = _stream_out(chunks)
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            history.pop()
            continue
        except LocalLLMError as e:   # e.g. the conversation outgrew the context: say so, keep chatting
            history.pop()
            sys.stderr.write(f"Error: {e}\n(/clear starts a new conversation; --ctx sets a larger context)\n")
            continue
        history.append({"role": "assistant", "content": reply})
        if verbose:
            _print_stats(last, time.perf_counter() - t0, load_s)
            load_s = 0.0


def _read_multiline(first: str) -> str:
    """The rest of a triple-quoted message, up to the line that ends with three quotes."""
    if first.rstrip().endswith('"""'):
        return first.rstrip()[:-3].strip()
    lines = [first]
    while True:
        try:
            nxt = input("... ")
        except EOFError:
            break
        if nxt.rstrip().endswith('"""'):
            lines.append(nxt.rstrip()[:-3])
            break
        lines.append(nxt)
    return "\n".join(lines).strip()


# list / show / rm -------------------------------------------------------------------------------------
def _ago(ts: float) -> str:
    s = max(0, time.time() - ts)
    for unit, n in (("year", 365 * 86400), ("month", 30 * 86400), ("week", 7 * 86400), ("day", 86400),
                    ("hour", 3600), ("minute", 60)):
        if s >= n:
            k = int(s // n)
            return f"{k} {unit}{'s' if k > 1 else ''} ago"
    return "just now"


@app.command("list")
@_friendly
def list_models(
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
):
    """List the models in the store."""
    import json

    from .hub.info import human_bytes, human_params
    from .hub.store import Store

    recs = Store().list()
    if json_out:
        typer.echo(json.dumps([{**r.to_json(), "path": str(Store().path_of(r))} for r in recs], indent=1))
        return
    if not recs:
        typer.echo("No models yet. Try: localllm pull smollm2", err=True)
        return
    rows = [("NAME", "ARCH", "PARAMS", "QUANT", "SIZE", "MODIFIED")]
    for r in recs:
        rows.append((r.name, r.info.get("architecture") or "?", human_params(r.info.get("parameters")),
                     r.info.get("quantization") or "?", human_bytes(r.size), _ago(r.pulled_at)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("    ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


@app.command("ls", hidden=True)
def _ls(json_out: Annotated[bool, typer.Option("--json")] = False):
    list_models(json_out)


@app.command()
@_friendly
def show(
    name: ModelArg,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
):
    """Show a model's architecture, size, context, quantization mix, chat template and license."""
    import json

    from .hub.info import human_bytes, human_params, summarize
    from .hub.pull import model_path
    from .hub.store import Store

    store = Store()
    path, ref = model_path(name, store, pull_missing=False)
    info = summarize(path)
    info = {"model": ref.name, "path": str(path), **info}
    if json_out:
        typer.echo(json.dumps(info, indent=1))
        return

    def row(k, v):
        if v is not None:
            typer.echo(f"    {k:<20}{v}")

    typer.echo("  Model")
    row("name", info["name"])
    row("architecture", info["architecture"])
    row("parameters", human_params(info["parameters"]))
    row("context length", info["context_length"])
    row("embedding length", info["embedding_length"])
    row("layers", info["block_count"])
    row("quantization", info["quantization"])
    row("license", info["license"])
    row("file", f"{path} ({human_bytes(info['file_size'])})")
    typer.echo("\n  Quantization mix (tensors per type)")
    for t, n in info["tensor_types"].items():
        row(t, n)
    typer.echo("\n  Chat template")
    tmpl = info["chat_template"]
    if tmpl:
        for line in tmpl.strip("\n").splitlines():
            typer.echo(f"    {line}")
    else:
        typer.echo("    (none: use `localllm run --raw`)")


@app.command()
@_friendly
def rm(names: Annotated[List[str], typer.Argument(help="Models to delete from the store.",
                                                  autocompletion=_complete_model, show_default=False)]):
    """Delete models from the store (a file shared by several names stays until the last goes)."""
    from .hub.info import human_bytes
    from .hub.names import LocalRef
    from .hub.pull import resolve_name
    from .hub.store import Store

    store = Store()
    for name in names:
        try:
            ref = resolve_name(name, store)
        except LocalLLMError:
            ref = None     # an unknown name may still be a record (a manifest since removed)
        if isinstance(ref, LocalRef):
            raise LocalLLMError(f"{name} is a file outside the store; localllm does not delete it")
        _, freed = store.remove(ref.name if ref else name)
        typer.echo(f"deleted '{ref.name if ref else name}'" + (f" ({human_bytes(freed)} freed)" if freed else ""))

@app.command()
@_friendly
def bench(
    names: Annotated[List[str], typer.Argument(help="Models: names from the store or GGUF paths.",
                                               autocompletion=_complete_model, show_default=False)],
    threads: Annotated[Optional[int], typer.Option("--threads", "-t", min=1,
                                                   help="Threads (default: the physical cores available).")] = None,
    reps: Annotated[int, typer.Option("--reps", "-r", min=1, help="Repetitions after one warm-up.")] = 5,
    n_prompt: Annotated[int, typer.Option("--n-prompt", "-p", min=0, help="Prompt tokens of the pp test.")] = 512,
    n_gen: Annotated[int, typer.Option("--n-gen", "-n", min=0, help="Decode steps of the tg test.")] = 128,
    n_depth: Annotated[int, typer.Option("--n-depth", "-d", min=0,
                                         help="Run both tests after this many cached positions.")] = 0,
    cold_start: Annotated[bool, typer.Option("--cold-start/--no-cold-start",
                                             help="Also time a fresh process to its first token.")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
):
    """Measure prompt (pp) and generation (tg) speed as llama-bench does: mean ± sd tokens/s."""
    import json

    from .bench import format_summary, format_table, run_bench
    from .hub.pull import model_path
    from .hub.store import Store

    store = Store()
    results = []
    for name in names:
        path, _ = model_path(name, store, pull_missing=False)
        results.append(run_bench(path, n_threads=threads, reps=reps, n_prompt=n_prompt, n_gen=n_gen,
                                 cold_start=cold_start, n_depth=n_depth))
    if json_out:
        typer.echo(json.dumps(results if len(results) > 1 else results[0], indent=2))
        return
    typer.echo(format_table(results))
    for r in results:
        typer.echo(format_summary(r))



def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (`localllm`, `python -m localllm`)."""
    code: int | str | None = 0
    try:
        app(args=argv, prog_name="localllm")
    except LocalLLMError as e:   # raised outside a command (e.g. during completion)
        if _debug:
            raise
        sys.stderr.write(f"Error: {e}\n")
        code = 1
    except SystemExit as e:
        code = e.code
    if "localllm.engine" in sys.modules and isinstance(code, (int, type(None))):
        # A model was loaded: skip the interpreter's teardown of Numba/LLVM objects and the mapped
        # weights, 0.2-0.3 s after the answer is out; all output is flushed and every file closed.
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code or 0)
    sys.exit(code)
