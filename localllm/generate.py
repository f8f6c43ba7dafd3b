"""Generation as a stack of generators: `generate_step` yields token ids, `stream_generate` yields
`Chunk`s of text with timings, and the engine's `generate` joins them into a string."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

from .sampling import Sampler, SamplingParams


@dataclass
class Chunk:
    text: str                     # new text since the previous chunk (may be "")
    token: int | None             # the token that produced it (None on the closing chunk)
    finish_reason: str | None     # None while generating, then "stop" or "length"
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float                 # time to first token (prompt evaluation + first sample)
    prompt_tps: float             # prompt tokens / s
    decode_tps: float             # generated tokens / s after the first


def generate_step(llm, prompt_ids: list[int], sampler: Sampler, max_tokens: int, prefix: int = 0) -> Iterator[int]:
    """Yield sampled ids until an end-of-generation token, max_tokens, or the context is full."""
    history = list(prompt_ids)
    logits = llm._eval(prompt_ids, prefix)
    for _ in range(max_tokens):
        tok = sampler(logits, history)
        if tok in llm.tokenizer.eog_ids:
            return
        yield tok
        history.append(tok)
        if len(history) >= llm.n_ctx:
            return
        logits = llm._eval_next(tok)


def _stop_cut(text: str, stops: list[str]) -> tuple[int, bool]:
    """(how much of text is safe to emit, whether a stop string was hit)."""
    hit = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if hit >= 0:
        return hit, True
    hold = 0
    for s in stops:  # keep back a tail that may become a stop string
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                hold = max(hold, n)
                break
    return len(text) - hold, False


def stream_generate(llm, prompt_ids: list[int], params: SamplingParams, max_tokens: int,
                    stop: list[str] | None = None, prefix: int = 0) -> Iterator[Chunk]:
    from .tokenizer import StreamingDetokenizer

    llm._check_fits(len(prompt_ids))
    stops = [s for s in (stop or []) if s]
    detok = StreamingDetokenizer(llm.tokenizer)
    t0 = time.perf_counter()
    t_first = None
    n = 0
    pending = ""
    stats = lambda: dict(prompt_tokens=len(prompt_ids), completion_tokens=n,
                         ttft_s=(t_first or time.perf_counter()) - t0,
                         prompt_tps=len(prompt_ids) / max((t_first or time.perf_counter()) - t0, 1e-9),
                         decode_tps=(n - 1) / max(time.perf_counter() - t_first, 1e-9) if t_first and n > 1 else 0.0)
    finish = "stop"
    steps = generate_step(llm, prompt_ids, Sampler(params), max_tokens, prefix)
    for tok in steps:
        if t_first is None:
            t_first = time.perf_counter()
        n += 1
        pending += detok.add(tok)
        safe, hit = _stop_cut(pending, stops) if stops else (len(pending), False)
        out, pending = pending[:safe], pending[safe:]
        if hit:
            yield Chunk(out, tok, None, **stats())
            steps.close()
            yield Chunk("", None, "stop", **stats())
            return
        yield Chunk(out, tok, None, **stats())
    if n >= max_tokens or len(prompt_ids) + n >= llm.n_ctx:
        finish = "length"
    tail = pending + detok.flush()
    hit = min((i for i in (tail.find(s) for s in stops) if i >= 0), default=-1)
    if hit >= 0:
        tail, finish = tail[:hit], "stop"
    yield Chunk(tail, None, finish, **stats())
