"""The terminal chat (`localllm run MODEL` without a prompt): a textual app over the engine.

    from localllm.tui import run_chat
    run_chat("model.gguf", system="Be brief.", temperature=0.2)

textual is imported only when the chat starts (`ChatApp` is loaded on first use), so importing this
package stays cheap.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["run_chat", "ChatApp"]


def run_chat(model: str | Path, *, system: str | None = None, temperature: float = 0.8, top_k: int = 40,
             top_p: float = 0.95, min_p: float = 0.05, seed: int | None = None, max_tokens: int | None = None,
             n_ctx: int | None = None, n_threads: int | None = None, repeat_penalty: float = 1.0,
             raw: bool = False, verbose: bool = False) -> None:
    """Chat with `model` (a .gguf path or a name in the store) in the terminal until the user quits.

    The model loads in the background while the window is already up; load errors show in the window.
    `raw` is not available in the chat (the chat template is always used); `verbose` changes nothing,
    as the status bar always shows timings and memory."""
    from .app import ChatApp
    from .session import Settings

    settings = Settings(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                        repeat_penalty=repeat_penalty, seed=seed, max_tokens=max_tokens)
    notices = ["--raw is ignored in the chat: messages always go through the chat template"] if raw else []
    ChatApp(os.fspath(model), system=system, settings=settings, n_ctx=n_ctx, n_threads=n_threads,
            notices=notices).run()


def __getattr__(name: str):
    if name == "ChatApp":
        from .app import ChatApp

        return ChatApp
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
