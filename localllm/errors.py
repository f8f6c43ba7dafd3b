"""Errors a user can cause. Each says what went wrong and what to do next."""


class LocalLLMError(Exception):
    """Base class of every error localllm raises on bad input or environment."""


class GGUFError(LocalLLMError):
    """The file is not a readable GGUF model (not GGUF, truncated, corrupt)."""


class UnsupportedArchitectureError(LocalLLMError):
    """The GGUF's `general.architecture` has no module in localllm.arch."""


class UnsupportedTensorTypeError(LocalLLMError):
    """A tensor uses a quantization format with no registered kernels."""


class ContextOverflowError(LocalLLMError):
    """A prompt (plus generation) does not fit in the context window."""


class InvalidTokenError(LocalLLMError, ValueError):
    """A token id outside the model's vocabulary (ids given to the API directly)."""


class ChatTemplateError(LocalLLMError):
    """The model's chat template is missing or failed to render."""


class ModelNotFoundError(LocalLLMError):
    """A model name or path that resolves to nothing."""


class DownloadError(LocalLLMError):
    """A model download failed (network, checksum, disk)."""
