"""localllm: run GGUF language models on the CPU.

    import localllm
    llm = localllm.load("model.gguf")
    print(llm.generate("The capital of France is", max_tokens=16))
"""
from . import _runtime  # noqa: F401  (thread-pool settings, before numba loads)
from .errors import LocalLLMError

__version__ = "0.1.0"
__all__ = ["load", "LocalLLMError", "__version__"]


def load(path, n_ctx=None, n_threads=None, **kwargs):
    """Load a GGUF model (a path, or a name from the model store) and return an `LLM`."""
    with _runtime.collector_paused():
        from .engine import LLM

        return LLM(path, n_ctx=n_ctx, n_threads=n_threads, **kwargs)
