"""Which models the chat can switch to. The only place the TUI touches the model store (localllm.hub):
when the store is missing or unreadable, only paths to .gguf files work."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelNotFoundError


@dataclass(frozen=True)
class LocalModel:
    name: str
    path: Path
    size: int = 0


def local_models() -> list[LocalModel]:
    """The models already in the store (nothing is downloaded from here)."""
    try:
        from ..hub.store import Store
    except ImportError:
        return []
    try:
        store = Store()
        return [LocalModel(r.name, store.path_of(r), r.size) for r in store.list()]
    except (OSError, ValueError):
        return []


def resolve(model: str | os.PathLike) -> Path:
    """A GGUF path for `model`: an existing file, else a name already in the store."""
    path = Path(os.fspath(model)).expanduser()
    if path.is_file():
        return path
    for m in local_models():
        if m.name.lower() == str(model).lower():
            return m.path
    try:
        from ..hub.pull import model_path
    except ImportError:
        raise ModelNotFoundError(f"{model}: no such model file") from None
    try:
        found, _ = model_path(str(model), pull_missing=False)
    except (OSError, ValueError) as e:    # a store that can't answer: the name just isn't usable here
        raise ModelNotFoundError(f"{model}: not a model file and not in the store ({e}); "
                                 f"`localllm pull {model}` downloads it") from None
    return found
