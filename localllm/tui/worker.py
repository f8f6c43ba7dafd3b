"""The engine thread: one thread owns the model, loads it and generates with it, one job at a time.

The engine is not thread-safe, so nothing else touches the `LLM`: the UI submits jobs and gets events
back through `post` (which must be safe to call from another thread; textual's `post_message` is).
Stopping a reply is cooperative: the job's `cancel` event is checked after every token, then the
chunk generator is closed, which leaves the KV cache reusable for the next turn's common prefix.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import ContextOverflowError, LocalLLMError
from .session import Settings, fit_context, reply_reserve


# -- events posted to the UI ---------------------------------------------------------------------
@dataclass
class Loaded:
    llm: Any
    load_s: float


@dataclass
class LoadFailed:
    model: str
    error: str


@dataclass
class Started:
    reply_id: int
    dropped: int            # oldest messages left out to fit the context
    prompt_tokens: int


@dataclass
class Refused:
    reply_id: int
    error: str


@dataclass
class Token:
    reply_id: int
    text: str
    chunk: Any              # localllm.generate.Chunk (timings, token counts)


@dataclass
class Finished:
    reply_id: int
    reason: str             # "stop" | "length" | "stopped" (by the user) | "error"
    chunk: Any = None       # the last chunk seen, for the final statistics
    error: str | None = None


# -- jobs ------------------------------------------------------------------------------------------
@dataclass
class _Load:
    model: str
    n_ctx: int | None
    n_threads: int | None


@dataclass
class _Generate:
    reply_id: int
    system: str | None
    history: list[dict]     # the conversation so far, ending with the new user message
    settings: Settings
    cancel: threading.Event = field(default_factory=threading.Event)


_SHUTDOWN = object()


class EngineWorker:
    def __init__(self, post: Callable[[object], Any], llm=None):
        self.post = post
        self.llm = llm
        self._jobs: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._pending: dict[int, _Generate] = {}     # reply_id -> job, queued or running
        self._thread = threading.Thread(target=self._run, name="localllm-engine", daemon=True)
        self._thread.start()

    # -- called from the UI thread -----------------------------------------------------------------
    def load(self, model: str | os.PathLike, n_ctx: int | None = None, n_threads: int | None = None) -> None:
        self._jobs.put(_Load(os.fspath(model), n_ctx, n_threads))

    def generate(self, reply_id: int, system: str | None, history: list[dict], settings: Settings) -> None:
        job = _Generate(reply_id, system, [dict(m) for m in history], settings)
        with self._lock:
            self._pending[reply_id] = job
        self._jobs.put(job)

    def cancel(self, reply_id: int | None = None) -> None:
        """Stop reply `reply_id` (every pending reply when None); its Finished event says "stopped"."""
        with self._lock:
            jobs = list(self._pending.values()) if reply_id is None else [self._pending.get(reply_id)]
        for job in jobs:
            if job is not None:
                job.cancel.set()

    def shutdown(self, timeout: float = 5.0) -> None:
        self.cancel()
        self._jobs.put(_SHUTDOWN)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- the engine thread -------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _SHUTDOWN:
                return
            try:
                if isinstance(job, _Load):
                    self._load(job)
                else:
                    self._generate(job)
            except Exception as e:  # noqa: BLE001 -- a bug must reach the user, not kill the thread silently
                if isinstance(job, _Load):
                    self.post(LoadFailed(job.model, f"{type(e).__name__}: {e}"))
                else:
                    self.post(Finished(job.reply_id, "error", error=f"{type(e).__name__}: {e}"))
            finally:
                if isinstance(job, _Generate):
                    with self._lock:
                        self._pending.pop(job.reply_id, None)

    def _load(self, job: _Load) -> None:
        import localllm

        from .models import resolve

        try:
            path = resolve(job.model)
            t0 = time.perf_counter()
            llm = localllm.load(path, n_ctx=job.n_ctx, n_threads=job.n_threads)
        except (LocalLLMError, OSError, ValueError, MemoryError) as e:
            self.post(LoadFailed(job.model, str(e) or type(e).__name__))
            return
        self.llm = llm     # the previous model goes only once the new one is ready
        self.post(Loaded(llm, time.perf_counter() - t0))

    def _generate(self, job: _Generate) -> None:
        if job.cancel.is_set():
            self.post(Finished(job.reply_id, "stopped"))
            return
        llm = self.llm
        if llm is None:
            self.post(Refused(job.reply_id, "no model is loaded: /load MODEL (or Ctrl+O) picks one"))
            return
        s = job.settings
        last_ids: dict = {}                # 0: the prompt ids that fit, 1: their chat prefix

        def count(messages: list[dict]) -> int:
            ids, prefix = llm.chat_split(messages)
            last_ids[0], last_ids[1] = ids, prefix
            return len(ids)

        try:
            fit = fit_context(job.system, job.history, count, llm.n_ctx, reply_reserve(s.max_tokens, llm.n_ctx))
        except (ContextOverflowError, LocalLLMError) as e:
            self.post(Refused(job.reply_id, str(e)))
            return
        ids = last_ids[0]
        self.post(Started(job.reply_id, fit.dropped, len(ids)))
        max_tokens = s.max_tokens or max(1, llm.n_ctx - len(ids))
        chunks = llm.stream(ids, max_tokens=max_tokens, prefix=last_ids[1], **s.sampling_kwargs())
        last = None
        try:
            for chunk in chunks:
                if job.cancel.is_set():
                    self.post(Finished(job.reply_id, "stopped", last))
                    return
                last = chunk
                if chunk.finish_reason:
                    if chunk.text:
                        self.post(Token(job.reply_id, chunk.text, chunk))
                    self.post(Finished(job.reply_id, chunk.finish_reason, chunk))
                    return
                self.post(Token(job.reply_id, chunk.text, chunk))
            self.post(Finished(job.reply_id, "stop", last))
        except LocalLLMError as e:
            self.post(Finished(job.reply_id, "error", last, error=str(e)))
        finally:
            chunks.close()
