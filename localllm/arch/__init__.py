"""One module per architecture, found by `general.architecture`; aliases map llama-compatible ones."""
from __future__ import annotations

import importlib
import pkgutil

from ..errors import UnsupportedArchitectureError

# Architectures that are llama with differences carried in data (biases, RoPE mode) share its module.
ALIASES = {"qwen2": "llama", "mistral": "llama"}


def supported() -> list[str]:
    mods = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    return sorted(set(mods) | set(ALIASES))


def load_model(gf, n_ctx: int):
    """Build the model for GGUF file `gf` (a localllm.ggufio.GGUFFile)."""
    arch = gf.architecture
    name = ALIASES.get(arch, arch)
    if name.startswith("_") or name not in supported():
        raise UnsupportedArchitectureError(
            f"{gf.path}: architecture {arch!r} is not supported (supported: {', '.join(supported())})")
    module = importlib.import_module(f"{__name__}.{name}")
    return module.Model(module.ModelArgs.from_gguf(gf), gf, n_ctx)
