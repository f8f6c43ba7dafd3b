"""The `/`-commands typed into the chat box (as in `ollama run`) and the key table the help screen shows."""
from __future__ import annotations

from dataclasses import dataclass

from .session import SETTING_NAMES, CommandError


@dataclass(frozen=True)
class Command:
    name: str        # canonical name, e.g. "set"
    arg: str         # the rest of the line, stripped


# canonical name -> (usage, what it does)
COMMANDS: dict[str, tuple[str, str]] = {
    "clear": ("/clear", "forget the conversation (the system prompt and settings stay)"),
    "new": ("/new", "new chat: forget the conversation, the system prompt and setting changes"),
    "system": ("/system [text]", "set the system prompt (no text: edit it in a dialog)"),
    "set": ("/set NAME VALUE", f"change a setting ({', '.join(SETTING_NAMES)}); /set alone: dialog"),
    "show": ("/show", "show the model, the settings and the system prompt"),
    "save": ("/save [path]", "save the conversation: .json → JSON, anything else → Markdown"),
    "load": ("/load [model]", "switch to a model from the store or a .gguf path (no name: pick one)"),
    "copy": ("/copy", "copy the last answer to the clipboard"),
    "theme": ("/theme", "switch between the light and the dark theme"),
    "help": ("/help, /?", "this help"),
    "bye": ("/bye", "quit"),
}
_ALIASES = {"?": "help", "h": "help", "exit": "bye", "quit": "bye", "q": "bye", "reset": "new",
            "model": "load", "settings": "set"}

KEYS: list[tuple[str, str]] = [
    ("Enter", "send the message"),
    ("Shift+Enter, Ctrl+J", "new line in the message"),
    ("Up / Down", "previous / next message you sent (on the first / last line)"),
    ("Esc", "stop the reply in progress (the part written so far is kept)"),
    ("Ctrl+N", "new chat"),
    ("Ctrl+L", "clear the conversation"),
    ("F2", "edit the system prompt"),
    ("F3", "sampling settings"),
    ("Ctrl+O", "switch model"),
    ("Ctrl+R", "copy the last reply (answer)"),
    ("Ctrl+S", "save the conversation (Markdown, in the current folder)"),
    ("Ctrl+T", "light / dark theme"),
    ("F1", "this help"),
    ("Ctrl+Q", "quit"),
]


def parse(text: str) -> Command | None:
    """The command in `text`, or None when it is a message. `//…` sends a message that starts with `/`."""
    s = text.strip()
    if not s.startswith("/") or s.startswith("//"):
        return None
    word, _, arg = s[1:].partition(" ")
    word = word.strip().lower()
    name = _ALIASES.get(word, word)
    if name not in COMMANDS:
        raise CommandError(f"unknown command '/{word}'; /help lists the commands "
                           f"(start a message with // to send a leading /)")
    return Command(name, arg.strip())


def unescape(text: str) -> str:
    """The message to send for `text` (a leading // stands for /)."""
    s = text.strip()
    return s[1:] if s.startswith("//") else s


def parse_set(arg: str) -> tuple[str, str]:
    """`temperature 0.2` (or Ollama's `parameter temperature 0.2`) -> (name, value)."""
    parts = arg.split(None, 1)
    if parts and parts[0].lower() == "parameter":
        parts = parts[1].split(None, 1) if len(parts) > 1 else []
    if len(parts) != 2:
        raise CommandError(f"usage: /set NAME VALUE, e.g. /set temperature 0.2 (names: {', '.join(SETTING_NAMES)})")
    return parts[0], parts[1]
