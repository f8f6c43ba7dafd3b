"""The chat's widgets: the message box with history, the two kinds of message, and the status bar."""
from __future__ import annotations

import asyncio
from typing import Callable

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Markdown, Static, TextArea


class ChatInput(TextArea):
    """Multi-line message box: Enter sends, Shift+Enter / Ctrl+J (or Alt+Enter) start a new line,
    Up on the first line and Down on the last walk through the messages sent before."""

    NEWLINE_KEYS = ("shift+enter", "ctrl+j", "alt+enter")

    class Submitted(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, **kwargs) -> None:
        super().__init__(soft_wrap=True, show_line_numbers=False, tab_behavior="focus", **kwargs)
        self.sent: list[str] = []
        self._hist_index: int | None = None     # None: editing a new message
        self._draft = ""

    def remember(self, text: str) -> None:
        if text and (not self.sent or self.sent[-1] != text):
            self.sent.append(text)
        self._hist_index = None
        self._draft = ""

    def _show(self, text: str) -> None:
        self.load_text(text)
        self.move_cursor(self.document.end)

    def history_previous(self) -> bool:
        if not self.sent or self._hist_index == 0:
            return False
        if self._hist_index is None:
            self._draft = self.text
            self._hist_index = len(self.sent) - 1
        else:
            self._hist_index -= 1
        self._show(self.sent[self._hist_index])
        return True

    def history_next(self) -> bool:
        if self._hist_index is None:
            return False
        self._hist_index += 1
        if self._hist_index >= len(self.sent):
            self._hist_index = None
            self._show(self._draft)
        else:
            self._show(self.sent[self._hist_index])
        return True

    async def _on_key(self, event: events.Key) -> None:
        key = event.key
        row = self.cursor_location[0]
        handled = False
        if key == "enter":
            self.post_message(self.Submitted(self.text))
            handled = True
        elif key in self.NEWLINE_KEYS:
            start, end = self.selection
            self._replace_via_keyboard("\n", start, end)
            handled = True
        elif key == "up" and row == 0 and not self.selected_text:
            handled = self.history_previous()
        elif key == "down" and row == self.document.line_count - 1 and not self.selected_text:
            handled = self.history_next()
        if handled:
            event.stop()
            event.prevent_default()
            return
        await super()._on_key(event)


class UserMessage(Static):
    """A message the user sent (plain text, shown as typed)."""

    def __init__(self, text: str, queued: bool = False) -> None:
        super().__init__(Text(text), classes="-queued" if queued else "")
        if queued:
            self.border_subtitle = "queued"

    def mark_sent(self) -> None:
        self.remove_class("-queued")
        self.border_subtitle = ""


class AssistantMessage(Vertical):
    """A reply, rendered as Markdown as it streams in. Text arrives through `feed` (cheap, any rate) and
    reaches the screen through `flush`, which the app calls on a timer so the Markdown is re-parsed at
    most every ~50 ms however fast tokens come."""

    def __init__(self) -> None:
        super().__init__()
        self._pending: list[str] = []
        self._lock = asyncio.Lock()
        self.text = ""

    def compose(self) -> ComposeResult:
        yield Markdown("", classes="body")
        yield Static("…", classes="meta")

    @property
    def body(self) -> Markdown:
        return self.query_one(".body", Markdown)

    def feed(self, text: str) -> None:
        if text:
            self._pending.append(text)
            self.text += text

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    async def flush(self, wait: bool = False) -> None:
        """Push pending text into the Markdown widget. Without `wait`, a flush still running wins and
        the text waits for the next tick (that is the throttle)."""
        if self._lock.locked() and not wait:
            return
        async with self._lock:
            if not self._pending:
                return
            text = "".join(self._pending)
            self._pending.clear()
            await self.body.append(text)

    def set_meta(self, text: str, *classes: str) -> None:
        meta = self.query_one(".meta", Static)
        meta.update(Text(text))
        for c in classes:
            self.add_class(c)


def human_bytes(n: int | None) -> str:
    if not n:
        return "?"
    return f"{n / (1 << 30):.1f} GB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MB"


def process_rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


class StatusBar(Horizontal):
    """One line: model · state on the left (cut short when narrow); on the right, always whole, time to
    first token · tokens/s · context used/size · resident memory."""

    def __init__(self, memory_probe: Callable[[], int] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.memory_probe = memory_probe or process_rss
        self.model = "no model"
        self.state = ""
        self.ttft_s: float | None = None
        self.tps: float | None = None
        self.ctx_used = 0
        self.n_ctx = 0
        self.rss: int | None = None

    def compose(self) -> ComposeResult:
        yield Static("", id="status-model")
        yield Static("", id="status-stats")

    def on_mount(self) -> None:
        self.sample_memory()

    def sample_memory(self) -> None:
        try:
            self.rss = self.memory_probe()
        except (OSError, ImportError):
            self.rss = None
        self.show()

    def set(self, **values) -> None:
        for k, v in values.items():
            setattr(self, k, v)
        self.show()

    def model_text(self) -> Text:
        t = Text(no_wrap=True, overflow="ellipsis")
        name = self.model if len(self.model) <= 22 else self.model[:21] + "…"   # leave room for the state
        t.append(f" {name}", style="bold")
        if self.state:
            t.append(f" · {self.state}", style="italic")
        return t

    def stats_text(self) -> str:
        ttft = "–" if self.ttft_s is None else f"{self.ttft_s:.1f}s" if self.ttft_s >= 10 else f"{self.ttft_s:.2f}s"
        return " │ ".join([
            f"ttft {ttft}",
            f"{self.tps:.1f} tok/s" if self.tps is not None else "– tok/s",
            f"ctx {self.ctx_used}/{self.n_ctx}" if self.n_ctx else "ctx –",
            human_bytes(self.rss),
        ]) + " "

    @property
    def text(self) -> str:
        return f"{self.model_text().plain} │ {self.stats_text()}"

    def show(self) -> None:
        if not self.is_mounted or not self.children:
            return
        self.query_one("#status-model", Static).update(self.model_text())
        self.query_one("#status-stats", Static).update(Text(self.stats_text(), no_wrap=True))
