"""`ChatApp`: the terminal chat. The UI thread only renders and reacts; the model lives in the engine
thread (worker.py) and talks back through `EngineEvent` messages."""
from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Any, Callable

from rich.text import Text
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import Footer, Static

from . import commands
from .session import Conversation, CommandError, Settings, Turn, default_save_path, reply_reserve, save
from .widgets import AssistantMessage, ChatInput, StatusBar, UserMessage
from .worker import EngineWorker, Finished, Loaded, LoadFailed, Refused, Started, Token

FLUSH_INTERVAL_S = 0.05      # how often streamed text is re-rendered as Markdown


class EngineEvent(Message):
    """An event from the engine thread (worker.Loaded, Token, Finished, ...)."""

    def __init__(self, event: Any) -> None:
        super().__init__()
        self.event = event


class ChatApp(App):
    CSS_PATH = "chat.tcss"
    TITLE = "localllm"
    BINDINGS = [
        Binding("escape", "stop", "Stop"),
        Binding("f1", "help", "Help"),
        Binding("ctrl+n", "new_chat", "New"),
        Binding("ctrl+l", "clear", "Clear", show=False),
        Binding("f2", "system_prompt", "System", show=False),
        Binding("f3", "settings", "Settings"),
        Binding("ctrl+o", "switch_model", "Model"),
        Binding("ctrl+r", "copy_answer", "Copy", show=False),
        Binding("ctrl+s", "save", "Save"),
        Binding("ctrl+t", "toggle_theme", "Theme", show=False),
    ]

    def __init__(self, model: str | os.PathLike | None = None, *, llm=None, system: str | None = None,
                 settings: Settings | None = None, n_ctx: int | None = None, n_threads: int | None = None,
                 memory_probe: Callable[[], int] | None = None, notices: list[str] = ()) -> None:
        super().__init__()
        self.model_arg = os.fspath(model) if model is not None else None
        self.n_ctx, self.n_threads = n_ctx, n_threads
        self.initial_system = system or None
        self.initial_settings = settings or Settings()
        self.settings = self.initial_settings
        self.conv = Conversation(self.initial_system)
        self.llm = llm
        self.memory_probe = memory_probe
        self.notices = list(notices)
        self.worker: EngineWorker | None = None
        self.loading: str | None = None            # the model being loaded
        self.reply: AssistantMessage | None = None  # the reply being written
        self.reply_turn: Turn | None = None
        self.user_turn: Turn | None = None
        self.reply_id = 0
        self.queue: deque[tuple[str, UserMessage]] = deque()
        self.when_idle: list[Callable[[], Any]] = []   # run once the current reply has stopped

    # -- layout --------------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        with VerticalScroll(id="conversation"):
            yield Static(self._welcome_text(), id="welcome")
        yield ChatInput(id="input", placeholder="Message (Enter sends, Shift+Enter/Ctrl+J new line, /? help)")
        yield StatusBar(self.memory_probe, id="status")
        yield Footer()

    def _welcome_text(self) -> Text:
        name = self.llm.name if self.llm is not None else (Path(self.model_arg).name if self.model_arg else "—")
        t = Text()
        t.append(f"Chat with {name}.", style="bold")
        t.append(" Enter sends · Shift+Enter or Ctrl+J: new line · Esc stops a reply · "
                 "/? lists commands · F1 keys · Ctrl+Q quits")
        if self.conv.system:
            t.append(f"\nSystem: {self.conv.system}", style="italic")
        return t

    @property
    def conversation(self) -> VerticalScroll:
        return self.query_one("#conversation", VerticalScroll)

    @property
    def status(self) -> StatusBar:
        return self.query_one("#status", StatusBar)

    @property
    def input(self) -> ChatInput:
        return self.query_one("#input", ChatInput)

    @property
    def generating(self) -> bool:
        return self.reply is not None

    @property
    def busy(self) -> bool:
        return self.generating or self.loading is not None

    def on_mount(self) -> None:
        self.worker = EngineWorker(lambda ev: self.post_message(EngineEvent(ev)), self.llm)
        self.input.focus()
        self.set_interval(1.0, self.status.sample_memory)
        self._flush_timer = self.set_interval(FLUSH_INTERVAL_S, self._flush_reply)
        if self.llm is not None:
            self._show_model()
        elif self.model_arg:
            self.load_model(self.model_arg)
        else:
            self.status.set(model="no model", state="/load MODEL or Ctrl+O")
        for n in self.notices:
            self.notify(n, severity="warning")

    def on_unmount(self) -> None:
        if self.worker is not None:
            self.worker.shutdown(timeout=3.0)

    def _show_model(self) -> None:
        self.status.set(model=self.llm.name, n_ctx=self.llm.n_ctx, state="")
        self.query_one("#welcome", Static).update(self._welcome_text())

    # -- input -----------------------------------------------------------------------------------------
    @on(ChatInput.Submitted)
    def _submitted(self, event: ChatInput.Submitted) -> None:
        text = event.text
        if not text.strip():
            return
        self.input.remember(text.strip())
        self.input.clear()
        self.submit(text)

    def submit(self, text: str) -> None:
        """Handle a line the user entered: a /command, or a message to send (or to queue)."""
        try:
            cmd = commands.parse(text)
        except CommandError as e:
            self.notify(str(e), severity="error")
            return
        if cmd is not None:
            self.run_command(cmd)
            return
        text = commands.unescape(text)
        if self.busy:
            widget = UserMessage(text, queued=True)
            self.conversation.mount(widget)
            self.conversation.scroll_end(animate=False)
            self.queue.append((text, widget))
            self.notify("Queued: it is sent when the current reply is done (Esc stops the reply).")
            return
        self._send(text, None)

    def _send(self, text: str, widget: UserMessage | None) -> None:
        if widget is None:
            widget = UserMessage(text)
            self.conversation.mount(widget)
        else:
            widget.mark_sent()
        history = self.conv.messages()
        if self.conv.system:
            history = history[1:]                # fit_context puts the system prompt back
        turn = Turn("user", text)
        widget.turn = turn
        self.conv.turns.append(turn)
        history.append({"role": "user", "content": text})
        self.user_turn, self.user_widget = turn, widget
        self.reply_turn = Turn("assistant", "")
        self.reply = AssistantMessage()
        self.reply_id += 1
        self.conversation.mount(self.reply)
        self.conversation.scroll_end(animate=False)
        self.status.set(state="waiting…", ttft_s=None, tps=None)
        self.worker.generate(self.reply_id, self.conv.system, history, self.settings)

    def _next_in_queue(self) -> None:
        callbacks, self.when_idle = self.when_idle, []
        for cb in callbacks:
            cb()
        if self.queue and not self.busy:
            text, widget = self.queue.popleft()
            self._send(text, widget)

    # -- engine events ---------------------------------------------------------------------------------
    @on(EngineEvent)
    async def _engine_event(self, message: EngineEvent) -> None:
        ev = message.event
        if isinstance(ev, (Started, Token, Refused, Finished)) and ev.reply_id != self.reply_id:
            return     # a reply that was abandoned (its widget is gone)
        if isinstance(ev, Token):
            self.reply.feed(ev.text)
            self.reply_turn.content += ev.text
            self._show_stats(ev.chunk, "writing…")
        elif isinstance(ev, Started):
            self._started(ev)
        elif isinstance(ev, Finished):
            await self._finished(ev)
        elif isinstance(ev, Refused):
            self._refused(ev)
        elif isinstance(ev, Loaded):
            self._loaded(ev)
        elif isinstance(ev, LoadFailed):
            self._load_failed(ev)

    def _started(self, ev: Started) -> None:
        self.status.set(ctx_used=ev.prompt_tokens, state="prompt…")
        if not ev.dropped:
            return
        kept = [t for t in self.conv.turns if t.in_context]
        for t in kept[:ev.dropped]:
            t.in_context = False
        dropped_ids = {id(t) for t in kept[:ev.dropped]}
        for w in self.conversation.query("UserMessage, AssistantMessage"):
            if id(getattr(w, "turn", None)) in dropped_ids:
                w.add_class("-dropped")
        self.notify(f"The conversation no longer fits the context of {self.llm_n_ctx} tokens: left out the "
                    f"{ev.dropped} oldest message{'s' if ev.dropped != 1 else ''} (dimmed). The rule: the "
                    f"oldest messages go first, the system prompt always stays, and room is kept for a "
                    f"reply of {reply_reserve(self.settings.max_tokens, self.llm_n_ctx)} tokens.",
                    severity="warning", timeout=10)

    @property
    def llm_n_ctx(self) -> int:
        return self.status.n_ctx

    def _show_stats(self, chunk, state: str) -> None:
        if chunk is None:
            self.status.set(state=state)
            return
        self.status.set(state=state, ttft_s=chunk.ttft_s,
                        tps=chunk.decode_tps if chunk.completion_tokens > 1 else None,
                        ctx_used=chunk.prompt_tokens + chunk.completion_tokens)

    async def _finished(self, ev: Finished) -> None:
        reply, turn = self.reply, self.reply_turn
        await self._flush_reply(force=True)
        chunk = ev.chunk
        n = chunk.completion_tokens if chunk is not None else 0
        rate = f" · {chunk.decode_tps:.1f} tok/s" if chunk is not None and n > 1 else ""
        if ev.reason == "stopped":
            turn.stopped = True
            reply.set_meta(f"■ stopped by you after {n} token{'s' if n != 1 else ''}", "-stopped")
        elif ev.reason == "error":
            reply.set_meta(f"✖ failed: {ev.error}", "-error")
            self.notify(f"Generation failed: {ev.error}", severity="error", timeout=10)
        elif ev.reason == "length":
            reply.set_meta(f"{n} tokens{rate} · cut at the token limit", "-length")
        else:
            reply.set_meta(f"{n} tokens{rate}")
        if turn.content:
            turn.stats = {"completion_tokens": n, "finish_reason": ev.reason}
            reply.turn = turn
            self.conv.turns.append(turn)
        self.reply = self.reply_turn = None
        self._show_stats(chunk, "")
        self._next_in_queue()

    def _refused(self, ev: Refused) -> None:
        self.reply.remove()
        self.user_turn.in_context = False
        self.user_widget.add_class("-refused")
        self.user_widget.border_subtitle = "not sent"
        self.reply = self.reply_turn = None
        self.status.set(state="")
        self.notify(f"Not sent: {ev.error}", severity="error", timeout=12)
        self._next_in_queue()

    async def _flush_reply(self, force: bool = False) -> None:
        reply = self.reply
        if reply is None or not reply.has_pending:
            return
        view = self.conversation
        at_end = view.scroll_y >= view.max_scroll_y - 1
        await reply.flush(wait=force)
        if at_end:
            view.scroll_end(animate=False)

    # -- models ------------------------------------------------------------------------------------------
    def load_model(self, model: str) -> None:
        self.loading = model
        self.status.set(model=Path(model).name, state="loading…", ttft_s=None, tps=None, ctx_used=0, n_ctx=0)
        self.conversation.loading = True
        self.worker.load(model, self.n_ctx, self.n_threads)

    def _loaded(self, ev: Loaded) -> None:
        self.loading = None
        self.conversation.loading = False
        self.llm = ev.llm
        self._show_model()
        self.notify(f"Loaded {ev.llm.name} ({ev.llm.arch}, context {ev.llm.n_ctx}) in {ev.load_s:.1f} s")
        self._next_in_queue()

    def _load_failed(self, ev: LoadFailed) -> None:
        self.loading = None
        self.conversation.loading = False
        if self.llm is not None:
            self._show_model()
            keep = f"; still using {self.llm.name}"
        else:
            self.status.set(model="no model", state="/load MODEL or Ctrl+O")
            keep = ""
        self.notify(f"Could not load {ev.model}: {ev.error}{keep}", severity="error", timeout=12)
        self._next_in_queue()

    # -- commands --------------------------------------------------------------------------------------
    def run_command(self, cmd: commands.Command) -> None:
        try:
            getattr(self, f"cmd_{cmd.name}")(cmd.arg)
        except CommandError as e:
            self.notify(str(e), severity="error")

    def cmd_clear(self, arg: str = "") -> None:
        self._when_stopped(self._clear)

    def cmd_new(self, arg: str = "") -> None:
        def new() -> None:
            self.conv.system = self.initial_system
            self.settings = self.initial_settings
            self._clear()
            self.notify("New chat.")
        self._when_stopped(new)

    def cmd_system(self, arg: str) -> None:
        if not arg:
            self.action_system_prompt()
            return
        self.set_system(arg)

    def set_system(self, text: str | None) -> None:
        self.conv.system = text or None
        self.query_one("#welcome", Static).update(self._welcome_text())
        self.notify("System prompt set." if text else "System prompt removed.")

    def cmd_set(self, arg: str) -> None:
        if not arg:
            self.action_settings()
            return
        name, value = commands.parse_set(arg)
        if name.lower() == "system":
            self.set_system(value)
            return
        self.settings = self.settings.with_value(name, value)
        self.notify(f"Settings: {self.settings.describe()}")

    def cmd_show(self, arg: str = "") -> None:
        model = f"{self.llm.name} ({self.llm.arch}, context {self.llm.n_ctx})" if self.llm else "none"
        self.notify(f"Model: {model}\nSettings: {self.settings.describe()}\n"
                    f"System prompt: {self.conv.system or '(none)'}", timeout=10)

    def cmd_save(self, arg: str = "") -> None:
        path = save(self.conv, arg or default_save_path(), self.llm.name if self.llm else None, self.settings)
        self.notify(f"Saved the conversation to {path}")

    def cmd_load(self, arg: str) -> None:
        if not arg:
            self.action_switch_model()
            return
        self._when_stopped(lambda: self.load_model(arg))

    def cmd_copy(self, arg: str = "") -> None:
        self.action_copy_answer()

    def cmd_theme(self, arg: str = "") -> None:
        self.action_toggle_theme()

    def cmd_help(self, arg: str = "") -> None:
        self.action_help()

    def cmd_bye(self, arg: str = "") -> None:
        self.exit()

    def _when_stopped(self, fn: Callable[[], Any]) -> None:
        """Run `fn` now, or once the reply in progress has stopped (it is stopped first)."""
        if self.generating:
            self.when_idle.append(fn)
            self.worker.cancel(self.reply_id)
        else:
            fn()

    def _clear(self) -> None:
        for _, w in self.queue:
            w.remove()
        self.queue.clear()
        self.conv.turns.clear()
        for w in self.conversation.query("UserMessage, AssistantMessage"):
            w.remove()
        self.query_one("#welcome", Static).update(self._welcome_text())
        self.status.set(ctx_used=0, ttft_s=None, tps=None)

    # -- actions (keys) ----------------------------------------------------------------------------------
    def action_stop(self) -> None:
        if self.generating:
            self.worker.cancel(self.reply_id)
            self.status.set(state="stopping…")

    def action_help(self) -> None:
        from .screens import HelpScreen

        self.push_screen(HelpScreen())

    def action_new_chat(self) -> None:
        self.cmd_new()

    def action_clear(self) -> None:
        self.cmd_clear()

    def action_system_prompt(self) -> None:
        from .screens import SystemPromptScreen

        def done(text: str | None) -> None:
            if text is not None:
                self.set_system(text)
        self.push_screen(SystemPromptScreen(self.conv.system), done)

    def action_settings(self) -> None:
        from .screens import SettingsScreen

        def done(new: Settings | None) -> None:
            if new is not None and new != self.settings:
                self.settings = new
                self.notify(f"Settings: {new.describe()}")
        self.push_screen(SettingsScreen(self.settings), done)

    def action_switch_model(self) -> None:
        from .screens import ModelPickerScreen

        def done(model: str | None) -> None:
            if model:
                self.cmd_load(model)
        self.push_screen(ModelPickerScreen(self.llm.name if self.llm else None), done)

    def action_copy_answer(self) -> None:
        answer = self.conv.last_answer()
        if self.generating and self.reply_turn.content:
            answer = self.reply_turn.content
        if not answer:
            self.notify("No answer to copy yet.", severity="warning")
            return
        self.copy_to_clipboard(answer)
        self.notify(f"Copied the last answer ({len(answer)} characters).")

    def action_save(self) -> None:
        self.run_command(commands.Command("save", ""))

    def action_toggle_theme(self) -> None:
        self.theme = "textual-light" if self.current_theme.dark else "textual-dark"
