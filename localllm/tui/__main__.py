"""`python -m localllm.tui MODEL [--ctx N] [--system TEXT]`: the chat without the CLI around it."""
from __future__ import annotations

import argparse

from . import run_chat


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m localllm.tui", description="Chat with a GGUF model.")
    p.add_argument("model", help="a .gguf path, or a model name already in the store")
    p.add_argument("--system", "-s")
    p.add_argument("--ctx", "-c", type=int, dest="n_ctx")
    p.add_argument("--threads", type=int, dest="n_threads")
    p.add_argument("--max-tokens", "-n", type=int)
    p.add_argument("--temperature", "-t", type=float, default=0.8)
    p.add_argument("--seed", type=int)
    a = p.parse_args(argv)
    run_chat(a.model, system=a.system, n_ctx=a.n_ctx, n_threads=a.n_threads, max_tokens=a.max_tokens,
             temperature=a.temperature, seed=a.seed)


if __name__ == "__main__":
    main()
