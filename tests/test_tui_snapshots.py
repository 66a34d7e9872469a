"""Snapshot tests (pytest-textual-snapshot) of the chat app's main screens.

Deterministic by construction: a fixed conversation store, no daemon connection (status "offline"),
no timings, and the input's cursor blink off. Update after an intended UI change with
`.venv/bin/pytest tests/test_tui_snapshots.py --snapshot-update` and review the SVGs in the report.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from localspec.tui.app import ChatApp
from localspec.tui.connection import Connection
from localspec.tui.store import ChatSettings, ConversationStore
from localspec.tui.widgets.prompt_input import PromptInput

SIZE = (110, 34)
REPLY = (
    "Use slicing, which returns a new list:\n\n"
    "```python\nnumbers = [1, 2, 3]\nprint(numbers[::-1])\n```\n\n"
    "or `list.reverse()` to reverse **in place**."
)


def fixed_store(path: Path) -> ConversationStore:
    ticks = iter(range(1000))
    store = ConversationStore(path, clock=lambda: 1_700_000_000.0 + next(ticks))
    older = store.create_conversation("Shell one-liners")
    store.add_message(older.id, "user", "Count lines in all .py files")
    cut = store.add_message(
        older.id, "assistant", "Try `find . -name '*.py' | xargs wc -l`, which", "streaming"
    )
    cut.status = "cancelled"
    store.update_message(cut)
    conv = store.create_conversation(
        "Reverse a list in Python",
        "You are a concise Python tutor.",
        ChatSettings(0.2, 0.9, 256, "draft", 42),
    )
    store.add_message(conv.id, "user", "How do I reverse a list?")
    reply = store.add_message(conv.id, "assistant", REPLY)
    # Alternate drafted / target runs so the origin colouring is visible.
    reply.origin = [[i % 2, 7] for i in range(len(REPLY) // 7 + 1)]
    store.update_message(reply)
    return store


@pytest.fixture
def app(tmp_path: Path) -> ChatApp:
    return ChatApp(Connection(autostart=False), fixed_store(tmp_path / "c.sqlite3"), connect_on_start=False)


async def _steady(pilot: Pilot[Any]) -> None:
    pilot.app.query_one(PromptInput).cursor_blink = False
    await pilot.pause()


def test_main_screen(snap_compare: Callable[..., bool], app: ChatApp) -> None:
    assert snap_compare(app, terminal_size=SIZE, run_before=_steady)


def test_origin_colours(snap_compare: Callable[..., bool], app: ChatApp) -> None:
    assert snap_compare(app, press=["f3"], terminal_size=SIZE, run_before=_steady)


def test_help_screen(snap_compare: Callable[..., bool], app: ChatApp) -> None:
    assert snap_compare(app, press=["f1"], terminal_size=SIZE, run_before=_steady)


def test_settings_screen(snap_compare: Callable[..., bool], app: ChatApp) -> None:
    assert snap_compare(app, press=["f4"], terminal_size=SIZE, run_before=_steady)


def test_delete_confirmation(snap_compare: Callable[..., bool], app: ChatApp) -> None:
    assert snap_compare(app, press=["f8"], terminal_size=SIZE, run_before=_steady)


def test_older_conversation_with_cancelled_reply(snap_compare: Callable[..., bool], app: ChatApp) -> None:
    # Down to the second conversation in the sidebar list and open it.
    assert snap_compare(app, press=["ctrl+f", "tab", "down", "enter"], terminal_size=SIZE, run_before=_steady)
