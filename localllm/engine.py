"""The LLM object behind the Python API, the CLI and the TUI: one loaded model, its tokenizer,
chat template and KV cache."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from . import chat_template
from ._runtime import trim_heap
from .errors import ContextOverflowError, InvalidTokenError, LocalLLMError, ModelNotFoundError
from .generate import Chunk, stream_generate
from .ggufio import GGUFFile
from .prompt_cache import MIN_TOKENS as PROMPT_MIN, PromptCache, cache_dir as prompt_cache_dir
from .sampling import SamplingParams

DEFAULT_CTX = 4096   # like Ollama: a context that fits any laptop; n_ctx raises it up to the model's
N_BATCH = 512        # prompt tokens per forward pass


def resolve_model_path(model: str | os.PathLike) -> Path:
    """A path to a GGUF file, or a model name from the store (pulled by `localllm pull`)."""
    path = Path(os.fspath(model)).expanduser()
    if path.is_file():
        return path
    if path.suffix == ".gguf" or os.sep in str(model):
        raise ModelNotFoundError(f"{model}: no such model file")
    try:
        from .hub.store import resolve_local
    except ImportError:
        raise ModelNotFoundError(f"{model}: no such model file") from None
    return resolve_local(str(model))


def _common_len(a: list[int], b: list[int]) -> int:
    """How many ids a and b share from the start."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class LLM:
    """A loaded model. `localllm.load(path)` makes one."""

    def __init__(self, model: str | os.PathLike, n_ctx: int | None = None, n_threads: int | None = None,
                 n_batch: int = N_BATCH, prompt_cache: bool = True):
        from . import arch
        from .threads import set_threads
        from .tokenizer import Tokenizer
        from .tokenizer.index import cache_dir as tokenizer_cache_dir

        t0 = time.perf_counter()
        self.path = resolve_model_path(model)
        self.gguf = GGUFFile(self.path)
        self.metadata = self.gguf.metadata
        self.arch = self.gguf.architecture
        self.n_ctx_train = int(self.gguf.arch_key("context_length", DEFAULT_CTX))
        self.n_ctx = int(n_ctx) if n_ctx else min(DEFAULT_CTX, self.n_ctx_train)
        if self.n_ctx < 8:
            raise ValueError(f"n_ctx={n_ctx} is too small")
        self.n_threads = set_threads(n_threads)
        self.n_batch = n_batch
        self.tokenizer = Tokenizer.from_metadata(self.metadata, tokenizer_cache_dir(self.path))
        self.model = arch.load_model(self.gguf, self.n_ctx)
        self.n_vocab = self.model.n_vocab
        self.cache = self.model.make_cache(self.n_ctx)
        self.gguf.release_pages()
        trim_heap()
        self._ids: list[int] = []        # tokens whose keys/values are in the cache
        root = prompt_cache_dir(self.path, n_batch) if prompt_cache else None
        self._prompts = PromptCache(root) if root is not None else None    # prompts kept on disk
        self.load_s = time.perf_counter() - t0

    @property
    def name(self) -> str:
        return self.metadata.get("general.name") or self.path.stem

    # -- tokens -------------------------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        return self.tokenizer.encode(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids])

    # -- evaluation ---------------------------------------------------------------------------
    def _check_fits(self, n: int) -> None:
        if n >= self.n_ctx:
            raise ContextOverflowError(
                f"the prompt is {n} tokens but the context holds {self.n_ctx} (with room for at least one "
                f"new token); shorten it or load with a larger n_ctx (this model was trained for "
                f"{self.n_ctx_train})")

    def _check_ids(self, ids: list[int]) -> None:
        """Token ids given to the API must index the model's embedding (an id past it would read
        memory that is not the model's)."""
        bad = [i for i in ids if not 0 <= i < self.n_vocab]
        if bad:
            verb = "is" if len(bad) == 1 else "are"
            raise InvalidTokenError(f"token id {bad[0]} is outside this model's vocabulary "
                                    f"(ids 0..{self.n_vocab - 1}); {len(bad)} of the {len(ids)} ids given "
                                    f"{verb} out of range")

    def _forward(self, ids: list[int], pos0: int, all_logits: bool) -> np.ndarray:
        outs = []
        for s in range(0, len(ids), self.n_batch):
            chunk = np.asarray(ids[s:s + self.n_batch], np.int64)
            last = s + self.n_batch >= len(ids)
            if all_logits or last:
                outs.append(self.model.forward(chunk, pos0 + s, self.cache, all_logits=all_logits))
            else:
                self.model.forward(chunk, pos0 + s, self.cache, all_logits=False)
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def _eval(self, ids: list[int], prefix: int = 0) -> np.ndarray:
        """Next-token logits (n_vocab,) after `ids`, reusing the cached common prefix. A chat prompt's
        first `prefix` tokens (template opening, system prompt: see prompt_cache), when a new
        conversation starts, are evaluated on their own from position 0 or read from the prompt cache."""
        self._check_fits(len(ids))
        n = _common_len(self._ids, ids)
        if PROMPT_MIN <= prefix < len(ids) and n < PROMPT_MIN:     # a new conversation
            head = list(ids[:prefix])
            if self._prompts is None or not self._prompts.restore(head, self.cache):
                self._forward(head, 0, all_logits=False)
                if self._prompts is not None:
                    self._prompts.save(head, self.cache)
            n = prefix
        n = min(n, len(ids) - 1)           # always recompute the last position for its logits
        logits = self._forward(list(ids[n:]), n, all_logits=False)[-1]
        self._ids = list(ids)
        return logits

    def _eval_next(self, token: int) -> np.ndarray:
        pos = len(self._ids)
        logits = self.model.forward(np.array([token], np.int64), pos, self.cache)[0]
        self._ids.append(token)
        return logits

    def logits(self, ids) -> np.ndarray:
        """float32 (len(ids), n_vocab): next-token logits at every position of `ids`, fresh context."""
        ids = [int(i) for i in ids]
        if not ids:
            return np.zeros((0, self.n_vocab), np.float32)
        self._check_ids(ids)
        if len(ids) > self.n_ctx:
            raise ContextOverflowError(f"{len(ids)} tokens do not fit in the context of {self.n_ctx}; "
                                       f"load with a larger n_ctx (this model was trained for {self.n_ctx_train})")
        out = self._forward(ids, 0, all_logits=True)
        self._ids = ids
        return out

    # -- generation ---------------------------------------------------------------------------
    def stream(self, prompt: str | list[int], max_tokens: int = 128, temperature: float = 0.8,
               top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0,
               seed: int | None = None, stop: list[str] | str | None = None, prefix: int = 0) -> Iterator[Chunk]:
        """Chunks of generated text (raw prompt, no chat template; special tokens in it are parsed).
        prefix: how many of the prompt ids are a chat prompt's reusable start (chat_split)."""
        if isinstance(prompt, list):
            ids = [int(i) for i in prompt]
            self._check_ids(ids)
        else:
            ids = self.tokenize(prompt, add_special=True, parse_special=True)
        params = SamplingParams(temperature, top_k, top_p, min_p, repeat_penalty, seed=seed)
        return stream_generate(self, ids, params, max_tokens, [stop] if isinstance(stop, str) else stop, prefix)

    def generate(self, prompt: str | list[int], **kwargs) -> str:
        """The generated text for a raw prompt (see `stream` for the options)."""
        return "".join(c.text for c in self.stream(prompt, **kwargs))

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        tok = self.tokenizer
        return chat_template.render(
            chat_template.template_for(self.metadata), messages, add_generation_prompt,
            bos_token=tok.token_text(tok.bos_id) if tok.bos_id is not None else "",
            eos_token=tok.token_text(tok.eos_id) if tok.eos_id is not None else "")

    def chat_ids(self, messages: list[dict]) -> list[int]:
        """Prompt ids for a conversation: the rendered template, without a doubled BOS."""
        ids = self.tokenize(self.apply_chat_template(messages), add_special=True, parse_special=True)
        bos = self.tokenizer.bos_id
        if len(ids) > 1 and ids[0] == bos and ids[1] == bos:
            ids = ids[1:]
        return ids

    def chat_split(self, messages: list[dict]) -> tuple[list[int], int]:
        """chat_ids(messages) and how many of them come before the last user message's text (the
        template opening, system prompt and earlier turns: what a new question shares with the last)."""
        ids = self.chat_ids(messages)
        last = messages[-1] if messages else None
        if not (isinstance(last, dict) and last.get("role") == "user" and isinstance(last.get("content"), str)
                and last["content"]):
            return ids, 0
        try:
            blank = self.chat_ids([*messages[:-1], {**last, "content": ""}])
        except LocalLLMError:              # a template that refuses an empty message: no split
            return ids, 0
        return ids, _common_len(blank, ids)

    def chat(self, messages: list[dict], stream: bool = False, **kwargs):
        """Reply to `messages` ([{"role": "user", "content": ...}]); a string, or chunks if stream."""
        ids, prefix = self.chat_split(messages)
        chunks = self.stream(ids, prefix=prefix, **kwargs)
        return chunks if stream else "".join(c.text for c in chunks)
