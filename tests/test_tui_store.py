"""Conversation store: persistence, search, settings, and recovery of a reply cut off by a kill."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from localspec.tui.store import DEFAULT_TITLE, ChatSettings, ConversationStore


def test_store_lives_under_the_user_data_dir(localspec_home: Path) -> None:
    store = ConversationStore()
    assert store.path.parent == localspec_home / "data"
    assert store.path.exists()


def test_conversations_and_messages_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    store = ConversationStore(path)
    conv = store.create_conversation()
    store.add_message(conv.id, "user", "hello")
    reply = store.add_message(conv.id, "assistant", "hi", status="streaming")
    reply.content, reply.status, reply.origin = "hi there", "complete", [[1, 3], [0, 5]]
    reply.stats = {"acceptance": 0.5}
    store.update_message(reply)
    store.rename_conversation(conv.id, "  Greetings  ")
    store.close()

    reopened = ConversationStore(path)
    [again] = reopened.list_conversations()
    assert again.title == "Greetings"
    messages = reopened.messages(conv.id)
    assert [(m.role, m.content, m.status) for m in messages] == [
        ("user", "hello", "complete"),
        ("assistant", "hi there", "complete"),
    ]
    assert messages[1].origin == [[1, 3], [0, 5]]
    assert messages[1].stats == {"acceptance": 0.5}
    assert reopened.recovered == 0


def test_blank_rename_keeps_a_title(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "c.sqlite3")
    conv = store.create_conversation("x")
    store.rename_conversation(conv.id, "   ")
    assert store.get_conversation(conv.id).title == DEFAULT_TITLE


def test_most_recently_used_conversation_comes_first(tmp_path: Path) -> None:
    ticks = iter(range(100))
    store = ConversationStore(tmp_path / "c.sqlite3", clock=lambda: float(next(ticks)))
    old = store.create_conversation("old")
    new = store.create_conversation("new")
    assert [c.id for c in store.list_conversations()] == [new.id, old.id]
    store.add_message(old.id, "user", "bump")
    assert [c.id for c in store.list_conversations()] == [old.id, new.id]


def test_search_matches_titles_and_message_text_literally(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "c.sqlite3")
    a = store.create_conversation("Rust lifetimes")
    b = store.create_conversation("Shopping")
    store.add_message(b.id, "user", "How to parse 100% of a CSV_file in Python?")
    assert [c.id for c in store.list_conversations("rust")] == [a.id]
    assert [c.id for c in store.list_conversations("PYTHON")] == [b.id]
    assert [c.id for c in store.list_conversations("100%")] == [b.id]
    assert store.list_conversations("csv%file") == []  # % is literal, not a wildcard
    assert len(store.list_conversations("  ")) == 2


def test_delete_removes_the_conversation_and_its_messages(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "c.sqlite3")
    conv = store.create_conversation()
    store.add_message(conv.id, "user", "secret")
    store.delete_conversation(conv.id)
    assert store.get_conversation(conv.id) is None
    assert store.messages(conv.id) == []
    assert store.list_conversations("secret") == []


def test_settings_and_system_prompt_are_per_conversation(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "c.sqlite3")
    a = store.create_conversation()
    b = store.create_conversation()
    store.update_conversation_settings(a.id, "You are terse.", ChatSettings(0.0, 0.5, 64, "ngram", 7))
    got = store.get_conversation(a.id)
    assert got is not None
    assert got.system_prompt == "You are terse."
    assert got.settings == ChatSettings(0.0, 0.5, 64, "ngram", 7)
    assert store.get_conversation(b.id).settings == ChatSettings()


def test_a_reply_streaming_when_the_process_is_killed_is_kept_as_interrupted(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    # A separate process writes part of a reply the way the app does, then dies without closing anything.
    script = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from localspec.tui.store import ConversationStore
        store = ConversationStore(Path({str(path)!r}))
        conv = store.create_conversation("killed")
        store.add_message(conv.id, "user", "question")
        reply = store.add_message(conv.id, "assistant", "", status="streaming")
        reply.content = "partial answer"
        store.update_message(reply)
        os._exit(9)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], timeout=30)
    assert result.returncode == 9
    store = ConversationStore(path)
    assert store.recovered == 1
    [conv] = store.list_conversations()
    messages = store.messages(conv.id)
    assert [(m.content, m.status) for m in messages] == [
        ("question", "complete"),
        ("partial answer", "interrupted"),
    ]
