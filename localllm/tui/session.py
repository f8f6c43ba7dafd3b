"""The chat as data, free of any UI: sampling settings, the turns of a conversation, the rule that keeps
a conversation inside the context window, and saving to Markdown / JSON.

Kept apart from textual so the rules can be read (and tested) on their own.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

from ..errors import ContextOverflowError, LocalLLMError

DEFAULT_REPLY_RESERVE = 512   # tokens kept free for a reply when max_tokens is unset (at most n_ctx / 4)


class CommandError(LocalLLMError):
    """A /command or setting the user typed that can't be applied (the message says how to fix it)."""


# -- sampling settings ---------------------------------------------------------------------------
@dataclass
class Settings:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int | None = None     # None: until the model stops or the context is full

    def sampling_kwargs(self) -> dict:
        return dict(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
                    repeat_penalty=self.repeat_penalty, seed=self.seed)

    def describe(self) -> str:
        return "  ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))

    def with_value(self, name: str, value: str) -> "Settings":
        """A copy with `name` set from the text `value`; CommandError when either is invalid."""
        key = _ALIASES.get(name.lower().replace("-", "_"), name.lower().replace("-", "_"))
        if key not in _PARSERS:
            raise CommandError(f"unknown setting '{name}'; settings are: {', '.join(SETTING_NAMES)}")
        try:
            parsed = _PARSERS[key](value.strip())
        except ValueError as e:
            raise CommandError(f"{key}: {e}") from None
        return replace(self, **{key: parsed})


def _float_in(lo: float, hi: float | None) -> Callable[[str], float]:
    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise ValueError(f"'{s}' is not a number") from None
        if v < lo or (hi is not None and v > hi):
            raise ValueError(f"{v} is out of range ({lo} to {hi if hi is not None else 'any'})")
        return v
    return parse


def _int_min(lo: int, none_words: tuple[str, ...] = ()) -> Callable[[str], int | None]:
    def parse(s: str) -> int | None:
        if s.lower() in none_words:
            return None
        try:
            v = int(s)
        except ValueError:
            extra = f" or {'/'.join(none_words)}" if none_words else ""
            raise ValueError(f"'{s}' is not a whole number{extra}") from None
        if v < lo:
            if none_words:     # like Ollama's num_predict -1: no limit
                return None
            raise ValueError(f"{v} is below {lo}")
        return v
    return parse


_PARSERS: dict[str, Callable[[str], object]] = {
    "temperature": _float_in(0.0, None),
    "top_k": _int_min(0),
    "top_p": _float_in(0.0, 1.0),
    "min_p": _float_in(0.0, 1.0),
    "repeat_penalty": _float_in(0.0, None),
    "seed": _int_min(0, ("none", "random", "off")),
    "max_tokens": _int_min(1, ("none", "off", "unlimited")),
}
SETTING_NAMES = list(_PARSERS)
_ALIASES = {"temp": "temperature", "num_predict": "max_tokens", "n": "max_tokens", "topk": "top_k",
            "topp": "top_p", "minp": "min_p", "repeat": "repeat_penalty"}


# -- the conversation ----------------------------------------------------------------------------
@dataclass
class Turn:
    role: str                      # "user" | "assistant"
    content: str
    in_context: bool = True        # False once dropped to fit the context window
    stopped: bool = False          # an assistant reply cut short by the user
    stats: dict = field(default_factory=dict)   # tokens and timings of an assistant reply


@dataclass
class Conversation:
    system: str | None = None
    turns: list[Turn] = field(default_factory=list)

    def messages(self, extra: list[Turn] = ()) -> list[dict]:
        """The chat messages the model sees: the system prompt, then the turns still in context."""
        out = [{"role": "system", "content": self.system}] if self.system else []
        out += [{"role": t.role, "content": t.content} for t in list(self.turns) + list(extra) if t.in_context]
        return out

    def last_answer(self) -> str | None:
        return next((t.content for t in reversed(self.turns) if t.role == "assistant" and t.content), None)


@dataclass
class Fit:
    messages: list[dict]      # what to send
    dropped: int              # how many of the oldest messages had to go
    prompt_tokens: int


def fit_context(system: str | None, history: list[dict], count: Callable[[list[dict]], int], n_ctx: int,
                reserve: int) -> Fit:
    """Drop the oldest user/assistant messages (never the system prompt) until the prompt plus `reserve`
    tokens for the reply fit in `n_ctx`. The kept part always starts at a user message. Raises
    ContextOverflowError when even the last message alone doesn't fit."""
    head = [{"role": "system", "content": system}] if system else []
    start = 0
    while True:
        msgs = head + history[start:]
        n = count(msgs)
        if n + reserve <= n_ctx:
            return Fit(msgs, start, n)
        if start >= len(history) - 1:
            what = "your message" + (" and the system prompt" if system else "")
            raise ContextOverflowError(
                f"{what} take {n} tokens; with {reserve} kept for the reply that is more than the context "
                f"of {n_ctx}. Shorten it, lower max_tokens (/set max_tokens N), or restart with a larger "
                f"context (--ctx)")
        start += 1
        while start < len(history) - 1 and history[start]["role"] != "user":
            start += 1


def reply_reserve(max_tokens: int | None, n_ctx: int) -> int:
    return max_tokens if max_tokens else min(DEFAULT_REPLY_RESERVE, max(1, n_ctx // 4))


# -- saving --------------------------------------------------------------------------------------
def default_save_path(now: float | None = None) -> Path:
    return Path(time.strftime("chat-%Y%m%d-%H%M%S.md", time.localtime(now)))


def to_json(conv: Conversation, model: str | None, settings: Settings) -> str:
    doc = {
        "model": model,
        "settings": asdict(settings),
        "system": conv.system,
        "messages": [
            {"role": t.role, "content": t.content,
             **({"stopped": True} if t.stopped else {}),
             **({"in_context": False} if not t.in_context else {})}
            for t in conv.turns],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def to_markdown(conv: Conversation, model: str | None) -> str:
    out = [f"# Chat with {model or 'a local model'}", ""]
    if conv.system:
        out += ["## System", "", conv.system, ""]
    for t in conv.turns:
        out += ["## You" if t.role == "user" else "## Assistant", ""]
        body = t.content.rstrip()
        if sum(line.lstrip().startswith("```") for line in body.splitlines()) % 2:
            body += "\n```"          # a reply stopped inside a code block: close it
        out += [body, ""]
        if t.stopped:
            out += ["*(stopped)*", ""]
    return "\n".join(out).rstrip() + "\n"


def save(conv: Conversation, path: str | Path, model: str | None, settings: Settings) -> Path:
    """Write the conversation to `path`: JSON for a .json name, Markdown otherwise."""
    path = Path(path).expanduser()
    text = to_json(conv, model, settings) if path.suffix.lower() == ".json" else to_markdown(conv, model)
    try:
        if path.parent != Path("."):
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise CommandError(f"could not save to {path}: {e.strerror or e}") from None
    return path
