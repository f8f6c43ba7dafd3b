"""The chat TUI driven by textual's pilot: against the real SmolLM2 for streaming, stopping, commands,
saving and the context rule; against a scripted stand-in model for the layout snapshot and the keys."""
from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

pytest.importorskip("textual")

from localllm.errors import ContextOverflowError  # noqa: E402
from localllm.generate import Chunk  # noqa: E402
from localllm.tui import ChatApp  # noqa: E402
from localllm.tui.commands import parse  # noqa: E402
from localllm.tui.session import CommandError, Settings, fit_context  # noqa: E402
from localllm.tui.widgets import AssistantMessage, UserMessage  # noqa: E402

SNAPSHOTS = Path(__file__).parent / "snapshots"
SIZE = (80, 24)
FIXED_MEMORY = lambda: 256 << 20  # noqa: E731  (the status bar's memory, made deterministic)


class ScriptedLLM:
    """Stands in for `LLM` where the words must not change: a fixed reply, fixed timings."""

    name, n_ctx, arch, path = "scripted-model", 2048, "llama", Path("scripted.gguf")
    REPLY = ("Here is a loop:\n\n```python\nfor i in range(3):\n    print(i)\n```\n\n"
             "It prints **0**, **1** and **2**.")

    def __init__(self, delay: float = 0.0):
        self.delay = delay

    def chat_ids(self, messages):
        return list(range(sum(len(m["content"]) // 4 + 4 for m in messages)))

    def chat_split(self, messages):
        return self.chat_ids(messages), 0

    def stream(self, ids, max_tokens=128, prefix=0, **sampling):
        pieces = self.REPLY.split(" ")
        for i, p in enumerate(pieces[:max_tokens]):
            time.sleep(self.delay)
            yield Chunk(p if i == len(pieces) - 1 else p + " ", i, None, len(ids), i + 1, 0.125, 100.0, 25.0)
        yield Chunk("", None, "stop", len(ids), min(len(pieces), max_tokens), 0.125, 100.0, 25.0)


@pytest.fixture(scope="module")
def llm(smollm2_path):
    import localllm

    return localllm.load(smollm2_path, n_ctx=256)


def make_app(**kwargs) -> ChatApp:
    """A ChatApp that remembers every notification (toasts expire, and a slow CI box outlasts them)."""
    app = ChatApp(**kwargs)
    app.seen_notes = []
    notify = app.notify

    def remember(message, *args, **kw):
        app.seen_notes.append(str(message))
        return notify(message, *args, **kw)
    app.notify = remember
    return app


def notes(app) -> list[str]:
    return app.seen_notes


async def wait_for(pilot, cond, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out waiting for the app")
        await pilot.pause(0.05)


async def send(pilot, text: str) -> None:
    pilot.app.input.load_text(text)
    await pilot.press("enter")
    await pilot.pause()


def replies(app) -> list[AssistantMessage]:
    return list(app.query(AssistantMessage))


# -- real model ----------------------------------------------------------------------------------------
def test_streamed_reply(llm, monkeypatch):
    fed: list[str] = []
    orig = AssistantMessage.feed
    monkeypatch.setattr(AssistantMessage, "feed", lambda self, t: (fed.append(t), orig(self, t)))

    async def go():
        app = make_app(llm=llm, settings=Settings(temperature=0.0, max_tokens=8), memory_probe=FIXED_MEMORY)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press(*"Hi")
            await pilot.press("enter")
            # a short reply can start and finish between two polls: wait for its turn, then for the end
            await wait_for(pilot, lambda: len(app.conv.turns) == 2 and not app.generating and not app.busy)
            await pilot.pause(0.1)
            user, answer = app.conv.turns
            assert (user.role, user.content) == ("user", "Hi")
            assert answer.role == "assistant" and answer.content.strip()
            assert len(fed) >= 2, "the reply arrived in one piece instead of streaming"
            assert "".join(fed) == answer.content
            assert replies(app)[0].body.source == answer.content      # rendered as Markdown
            status = app.status
            assert status.ttft_s is not None and status.tps is not None
            prompt = len(llm.chat_ids([{"role": "user", "content": "Hi"}]))
            assert status.ctx_used == prompt + answer.stats["completion_tokens"]
            assert status.n_ctx == 256
            text = status.text
            assert llm.name[:12] in text and "/256" in text and "256 MB" in text
    asyncio.run(go())


def test_escape_stops_and_queued_message_follows(llm, monkeypatch):
    import time as _time

    stream = llm.stream

    def slow_stream(*args, **kwargs):   # ~25 tokens/s, so the reply is still running when we act on it
        for chunk in stream(*args, **kwargs):
            _time.sleep(0.04)
            yield chunk

    monkeypatch.setattr(llm, "stream", slow_stream)

    async def go():
        app = make_app(llm=llm, settings=Settings(temperature=0.8, seed=1, max_tokens=150))
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, "Tell me a long story about a dragon.")
            await wait_for(pilot, lambda: app.reply_turn is not None and len(app.reply_turn.content) > 5)
            await send(pilot, "Thanks!")                         # while generating: queued
            assert len(app.queue) == 1 and any("Queued" in n for n in notes(app))
            await send(pilot, "/set max_tokens 3")              # applies to the queued message
            await pilot.press("escape")
            # the queued message is sent right after the stop: wait until its reply is in, too
            await wait_for(pilot, lambda: len(app.conv.turns) == 4 and not app.busy and not app.queue)
            story, stopped, thanks, answer = app.conv.turns
            assert stopped.stopped and stopped.content            # the partial answer is kept
            assert stopped.stats["completion_tokens"] < 150
            first = replies(app)[0]
            assert first.has_class("-stopped") and "stopped" in str(first.query_one(".meta").render())
            assert thanks.content == "Thanks!" and answer.stats["completion_tokens"] <= 3
            assert not any(w.has_class("-queued") for w in app.query(UserMessage))
    asyncio.run(go())


def test_commands_set_save_clear(llm, tmp_path):
    async def go():
        app = make_app(llm=llm, system="You are terse.", settings=Settings(max_tokens=4))
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, "/set temperature 0.2")
            await send(pilot, "/set parameter top_p 0.5")       # Ollama's spelling
            await send(pilot, "/set top_k 7")
            await send(pilot, "/set seed 42")
            s = app.settings
            assert (s.temperature, s.top_p, s.top_k, s.seed, s.max_tokens) == (0.2, 0.5, 7, 42, 4)
            await send(pilot, "/set temperature hot")
            await send(pilot, "/set warmth 1")
            await send(pilot, "/frobnicate")
            assert app.settings.temperature == 0.2
            assert any("not a number" in n for n in notes(app))
            assert any("unknown setting" in n for n in notes(app))
            assert any("unknown command" in n for n in notes(app))

            await send(pilot, "Name a color.")
            await wait_for(pilot, lambda: not app.busy)
            answer = app.conv.turns[-1].content
            md, js = tmp_path / "chat.md", tmp_path / "sub" / "chat.json"
            await send(pilot, f"/save {md}")
            await send(pilot, f"/save {js}")
            text = md.read_text()
            assert "## System\n\nYou are terse." in text
            assert "## You\n\nName a color." in text and f"## Assistant\n\n{answer.strip()}" in text
            doc = json.loads(js.read_text())
            assert doc["system"] == "You are terse." and doc["settings"]["temperature"] == 0.2
            assert doc["messages"] == [{"role": "user", "content": "Name a color."},
                                       {"role": "assistant", "content": answer}]

            await send(pilot, "/clear")
            await pilot.pause(0.1)
            assert app.conv.turns == [] and not list(app.query(UserMessage)) and not replies(app)
            assert app.conv.system == "You are terse."           # /clear keeps the system prompt
    asyncio.run(go())


def test_context_overflow_drops_oldest_then_refuses(llm):
    filler = "the quick brown fox jumps over the lazy dog " * 6     # ~55 tokens

    async def go():
        app = make_app(llm=llm, system="Be brief.", settings=Settings(temperature=0.0, max_tokens=8))
        async with app.run_test(size=SIZE) as pilot:
            from localllm.tui.session import Turn
            for i in range(2):
                app.conv.turns += [Turn("user", f"{i}: {filler}"), Turn("assistant", f"ok {i}: {filler}")]
            await send(pilot, "Hi")
            await wait_for(pilot, lambda: not app.busy)
            assert any("oldest" in n and "system prompt always stays" in n for n in notes(app)), notes(app)
            kept = app.conv.messages()
            assert kept[0] == {"role": "system", "content": "Be brief."}
            assert kept[1]["role"] == "user"                        # the kept part starts at a user turn
            assert not app.conv.turns[0].in_context
            assert app.conv.turns[-2].content == "Hi" and app.conv.turns[-1].content
            assert len(llm.chat_ids(kept[:-1])) + 8 <= llm.n_ctx

            n_turns = len(app.conv.turns)
            await send(pilot, "word " * 300)                     # can't fit even alone
            await wait_for(pilot, lambda: not app.busy)
            assert any(n.startswith("Not sent:") and "context of 256" in n for n in notes(app))
            assert len(app.conv.turns) == n_turns + 1 and not app.conv.turns[-1].in_context
            assert len(replies(app)) == 1                          # no reply for the refused message
    asyncio.run(go())


# -- scripted model: layout, keys, dialogs -------------------------------------------------------------
def test_layout_snapshot():
    """The 80x24 layout after one reply. Regenerate with LOCALLLM_UPDATE_SNAPSHOTS=1 after a deliberate
    change (and look at the SVG in a browser)."""
    async def go():
        app = make_app(llm=ScriptedLLM(), system="You are terse.", memory_probe=FIXED_MEMORY)
        async with app.run_test(size=SIZE) as pilot:
            app.input.cursor_blink = False
            await send(pilot, "Show me a loop in Python")
            await wait_for(pilot, lambda: not app.busy, timeout=20)
            app.clear_notifications()
            await pilot.pause(0.2)
            return app.export_screenshot()
    svg = asyncio.run(go())
    path = SNAPSHOTS / "tui_chat_80x24.svg"
    if os.environ.get("LOCALLLM_UPDATE_SNAPSHOTS") or not path.exists():
        path.parent.mkdir(exist_ok=True)
        path.write_text(svg)
    assert svg == path.read_text(), f"the layout changed; compare with {path} (LOCALLLM_UPDATE_SNAPSHOTS=1 updates)"


def test_keys_history_theme_help_resize():
    async def go():
        app = make_app(llm=ScriptedLLM(), settings=Settings(max_tokens=2))
        async with app.run_test(size=SIZE) as pilot:
            for msg in ("one", "two"):
                await send(pilot, msg)
                await wait_for(pilot, lambda: not app.busy, timeout=20)
            await pilot.press(*"draft")
            await pilot.press("up")
            assert app.input.text == "two"
            await pilot.press("up")
            assert app.input.text == "one"
            await pilot.press("down", "down")
            assert app.input.text == "draft"
            await pilot.press("ctrl+j", *"x")                 # a new line, not a send
            assert app.input.text == "draft\nx" and len(app.conv.turns) == 4

            await pilot.press("ctrl+r")
            assert app.clipboard == app.conv.turns[-1].content

            dark = app.current_theme.dark
            await pilot.press("ctrl+t")
            assert app.current_theme.dark != dark

            await pilot.press("f1")
            assert type(app.screen).__name__ == "HelpScreen"
            await pilot.press("escape")
            assert type(app.screen).__name__ == "Screen"

            for w, h in ((60, 16), (120, 40), SIZE):
                await pilot.resize_terminal(w, h)
                await pilot.pause()
                assert app.status.size.width == w and app.input.region.bottom <= h - 2

            await send(pilot, "/load /no/such/model.gguf")
            await wait_for(pilot, lambda: not app.busy, timeout=20)
            assert any(n.startswith("Could not load") and "still using scripted-model" in n for n in notes(app))
            await send(pilot, "/bye")
        assert app.return_code == 0
    asyncio.run(go())


def test_no_color_is_honoured(monkeypatch):
    from textual.filter import Monochrome

    monkeypatch.setenv("NO_COLOR", "1")
    app = ChatApp(llm=ScriptedLLM())
    assert app.no_color and any(isinstance(f, Monochrome) for f in app._filters)


# -- rules without a UI ----------------------------------------------------------------------------------
def test_fit_context_rule():
    count = lambda msgs: sum(len(m["content"]) for m in msgs)  # noqa: E731  (1 char = 1 token)
    hist = [{"role": "user", "content": "a" * 10}, {"role": "assistant", "content": "b" * 10},
            {"role": "user", "content": "c" * 10}, {"role": "assistant", "content": "d" * 10},
            {"role": "user", "content": "e" * 10}]
    fit = fit_context("S" * 5, hist, count, n_ctx=50, reserve=10)
    assert fit.dropped == 2 and fit.messages[0]["content"] == "SSSSS" and fit.messages[1]["content"][0] == "c"
    assert fit_context(None, hist, count, n_ctx=100, reserve=10).dropped == 0
    with pytest.raises(ContextOverflowError, match="context of 20"):
        fit_context("S" * 5, hist, count, n_ctx=20, reserve=10)


def test_command_parsing():
    assert parse("hello") is None and parse("//etc is a folder") is None
    assert parse("/?").name == "help" and parse("/exit").name == "bye"
    assert parse("/set temperature 0.2").arg == "temperature 0.2"
    with pytest.raises(CommandError):
        parse("/nope")
    with pytest.raises(CommandError):
        Settings().with_value("top_p", "2")
    assert Settings().with_value("seed", "none").seed is None
    assert Settings().with_value("num_predict", "-1").max_tokens is None
