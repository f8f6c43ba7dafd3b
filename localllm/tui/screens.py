"""Dialogs: help, system prompt, sampling settings, model picker. Each returns its result by `dismiss`."""
from __future__ import annotations

from dataclasses import fields

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Markdown, OptionList, TextArea
from textual.widgets.option_list import Option

from .commands import COMMANDS, KEYS
from .session import CommandError, Settings
from .widgets import human_bytes


def help_markdown() -> str:
    keys = "\n".join(f"| `{k}` | {v} |" for k, v in KEYS)
    cmds = "\n".join(f"| `{usage}` | {what} |" for usage, what in COMMANDS.values())
    return (f"## Keys\n\n| Key | Does |\n|---|---|\n{keys}\n\n"
            f"## Commands\n\n| Command | Does |\n|---|---|\n{cmds}\n\n"
            "A message sent while a reply is being written waits in a queue and goes next. When the "
            "conversation outgrows the context window, the oldest messages are left out (shown dimmed); "
            "the system prompt always stays.\n")


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            with VerticalScroll():
                yield Markdown(help_markdown())
            yield Label("Esc closes", classes="hint")

    async def action_dismiss(self, result=None) -> None:
        self.dismiss(None)


class SystemPromptScreen(ModalScreen["str | None"]):
    """Edit the system prompt; an empty one removes it."""

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "save", "Save", priority=True)]

    def __init__(self, current: str | None) -> None:
        super().__init__()
        self.current = current or ""

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label("System prompt (empty: none)", classes="title")
            yield TextArea(self.current, id="system-text", soft_wrap=True)
            with Horizontal(classes="buttons"):
                yield Button("Save (Ctrl+S)", variant="primary", id="save")
                yield Button("Cancel (Esc)", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.action_save() if event.button.id == "save" else self.action_cancel()

    def action_save(self) -> None:
        self.dismiss(self.query_one("#system-text", TextArea).text.strip())

    def action_cancel(self) -> None:
        self.dismiss(None)


class SettingsScreen(ModalScreen["Settings | None"]):
    """Sampling settings as a form; every value is checked by `Settings.with_value`."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Sampling settings (Enter applies, Esc cancels)", classes="title")
            for f in fields(Settings):
                value = getattr(self.settings, f.name)
                with Horizontal(classes="field"):
                    yield Label(f.name, classes="name")
                    yield Input("" if value is None else str(value), id=f"set-{f.name}",
                                placeholder="none" if f.name in ("seed", "max_tokens") else "")
            yield Label("", id="settings-error", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("Apply", variant="primary", id="apply")
                yield Button("Cancel", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.apply() if event.button.id == "apply" else self.action_cancel()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.apply()

    def apply(self) -> None:
        new = self.settings
        try:
            for f in fields(Settings):
                text = self.query_one(f"#set-{f.name}", Input).value.strip() or "none"
                new = new.with_value(f.name, text)
        except CommandError as e:
            self.query_one("#settings-error", Label).update(str(e))
            return
        self.dismiss(new)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ModelPickerScreen(ModalScreen["str | None"]):
    """Pick a model from the store, or type a path to a .gguf file."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, current: str | None = None) -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        from .models import local_models

        models = local_models()
        with Vertical(classes="dialog wide"):
            yield Label("Switch model", classes="title")
            if models:
                yield OptionList(*[Option(f"{m.name}  ({human_bytes(m.size)})", id=m.name) for m in models],
                                 id="model-list")
            else:
                yield Label("No models in the store yet (`localllm pull NAME` adds one).", classes="hint")
            yield Input(placeholder="…or a path to a .gguf file, then Enter", id="model-path")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.dismiss(event.value.strip())

    def action_cancel(self) -> None:
        self.dismiss(None)
