"""Pilot tests of `localspec chat` (App.run_test) against a real daemon on loopback with the small test models.

Manual smoke run in tmux (what these tests automate; run by hand against the real Qwen pair, port 0 so it does
not clash with another daemon):

    mkdir -p /tmp/ls-home/config && printf '[models]\ntarget = "%s"\ndraft = "%s"\n[server]\nport = 0\n' \
        /work/cache/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf \
        /work/cache/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf > /tmp/ls-home/config/config.toml
    tmux new-session -d -s lschat -x 120 -y 36 'LOCALSPEC_HOME=/tmp/ls-home .venv/bin/localspec chat'
    sleep 2;  tmux capture-pane -p -t lschat | tail -2   # status: "loading qwen2.5-coder-1.5b-…gguf"
    sleep 10; tmux capture-pane -p -t lschat | tail -2   # status: "ready  Qwen2.5 Coder 1.5B … + … 0.5B …"
    tmux send-keys -t lschat 'Write a Python function that reverses a string.' Enter
    sleep 10; tmux capture-pane -p -t lschat             # reply streaming under "Assistant …", tok/s, accept %
    tmux send-keys -t lschat F3; tmux capture-pane -e -p -t lschat   # -e keeps colours: drafted text in teal
    tmux send-keys -t lschat Escape                      # header becomes "Assistant [cancelled]"
    tmux send-keys -t lschat 'line one' C-j 'line two'   # two lines in the input, nothing sent
    tmux send-keys -t lschat C-q                         # quit; then start it again the same way:
    # the conversation is in the sidebar and open, with the cancelled reply kept.
    LOCALSPEC_HOME=/tmp/ls-home .venv/bin/localspec stop
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RunningDaemon, start_daemon, stop_daemon
from textual.pilot import Pilot

from localspec.tui.app import ChatApp
from localspec.tui.connection import Connection
from localspec.tui.store import ChatSettings, ConversationStore
from localspec.tui.widgets.chat_view import ChatView
from localspec.tui.widgets.message import MessageView
from localspec.tui.widgets.notice import Notice
from localspec.tui.widgets.prompt_input import PromptInput
from localspec.tui.widgets.status_bar import StatusBar

# SmolLM2 answers this with 400+ tokens (greedy), so a reply is still streaming when the test acts.
LONG_PROMPT = "Write a long story about a dragon who learns to code."
LONG_REPLY = ChatSettings(temperature=0.0, top_p=1.0, max_tokens=900, seed=0)
GREEDY = ChatSettings(temperature=0.0, top_p=1.0, max_tokens=48, seed=0)
SIZE = (100, 32)


async def wait_for(pilot: Pilot[Any], condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {condition}")
        await pilot.pause(0.02)


def make_app(path: Path, settings: ChatSettings = GREEDY, *, autostart: bool = False) -> ChatApp:
    store = ConversationStore(path)
    if not store.list_conversations():
        conv = store.create_conversation()
        store.update_conversation_settings(conv.id, "", settings)
    return ChatApp(Connection(autostart=autostart), store)


async def send(pilot: Pilot[Any], text: str) -> None:
    prompt = pilot.app.query_one(PromptInput)
    prompt.focus()
    prompt.load_text(text)
    await pilot.press("enter")


def reply_views(app: ChatApp) -> list[MessageView]:
    return [v for v in app.query_one(ChatView).query(MessageView) if v.message.role == "assistant"]


async def test_sent_message_streams_the_daemons_reply(daemon: RunningDaemon, tmp_path: Path) -> None:
    from localspec.client import DaemonClient

    app = make_app(tmp_path / "c.sqlite3")
    async with app.run_test(size=SIZE) as pilot:
        status = app.query_one(StatusBar)
        await wait_for(pilot, lambda: status.state == "ready")
        assert "tiny-target" in status.models and "tiny-draft-similar" in status.models
        await send(pilot, "Hello there")
        await wait_for(pilot, lambda: bool(reply_views(app)) and not app.generating)
        [reply] = reply_views(app)
        assert app.query_one(PromptInput).text == ""
        assert reply.message.status == "complete"
        assert reply.message.content
        # Streamed deltas add up to exactly what the daemon answers for the same request in one piece.
        assert app.conversation is not None
        with DaemonClient(daemon.url, daemon.token) as client:
            whole = client.chat(
                [{"role": "user", "content": "Hello there"}],
                temperature=0.0,
                top_p=1.0,
                max_tokens=GREEDY.max_tokens,
                seed=0,
            )
        assert reply.message.content == whole["choices"][0]["message"]["content"]
        # The Markdown widget got the streamed text; the origin runs cover it; stats reached the status bar.
        await pilot.pause()
        assert reply.query_one(".message-body").source == reply.message.content
        assert sum(n for _, n in reply.message.origin) == len(reply.message.content)
        assert status.tokens_per_second is not None and status.tokens_per_second > 0
        # The status bar ends on the daemon's summary of the reply (kept with the message).
        stats = reply.message.stats
        assert status.acceptance == (stats["acceptance"] if stats["drafted"] else None)
        assert status.mean_accepted_length is not None and status.mean_accepted_length > 0
        stored = app.store.messages(app.conversation.id)
        assert [(m.role, m.content) for m in stored] == [
            ("user", "Hello there"),
            ("assistant", reply.message.content),
        ]
        assert app.conversation.title == "Hello there"


@pytest.fixture
def smollm_daemon(localspec_home: Path, smollm2_path: Path) -> Iterator[RunningDaemon]:
    """The real SmolLM2-135M (a few hundred tok/s here): replies long and slow enough to cancel mid-way."""
    running = start_daemon(
        localspec_home, ["--target", str(smollm2_path), "--mode", "ngram", "--n-ctx", "1024"]
    )
    try:
        yield running
    finally:
        stop_daemon(running.process)


@pytest.mark.smollm
async def test_escape_cancels_the_reply_and_keeps_the_partial_text(
    smollm_daemon: RunningDaemon, tmp_path: Path
) -> None:
    app = make_app(tmp_path / "c.sqlite3", LONG_REPLY)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.query_one(StatusBar).state == "ready", timeout=60)
        await send(pilot, LONG_PROMPT)
        await wait_for(pilot, lambda: bool(reply_views(app)) and bool(reply_views(app)[0].message.content))
        started = time.monotonic()
        await pilot.press("escape")
        await wait_for(pilot, lambda: not app.generating, timeout=10)
        assert time.monotonic() - started < 5
        [reply] = reply_views(app)
        assert reply.message.status == "cancelled"
        assert "[cancelled]" in str(reply.query_one(".message-header").render())
        partial = reply.message.content
        assert partial
        first = app.conversation
        assert first is not None
        stored = app.store.messages(first.id)[-1]
        assert (stored.content, stored.status) == (partial, "cancelled")
        assert app.query_one(PromptInput).text == ""
        # Quitting (ctrl+q) mid-reply keeps what arrived, marked cancelled as well.
        await pilot.press("ctrl+n")
        await send(pilot, LONG_PROMPT)
        await wait_for(pilot, lambda: bool(reply_views(app)) and bool(reply_views(app)[0].message.content))
        assert app.generating
        await pilot.press("ctrl+q")
    assert [m.status for m in app.store.messages(first.id)] == ["complete", "cancelled"]
    assert app.conversation is not None and app.conversation.id != first.id
    quit_reply = app.store.messages(app.conversation.id)[-1]
    assert quit_reply.status == "cancelled" and quit_reply.content
    from localspec.client import DaemonClient

    # The daemon saw the closed streams and cancelled both generations (nothing left running).
    with DaemonClient(smollm_daemon.url, smollm_daemon.token) as client:
        deadline = time.monotonic() + 10
        while (stats := client.stats())["active"] and time.monotonic() < deadline:
            time.sleep(0.05)
    assert stats["finish_reasons"] == {"cancelled": 2}
    assert stats["active"] == 0


_KILLED_MID_REPLY = """
import asyncio, os, sys
sys.path.insert(0, {tests!r})
from test_tui_app import LONG_PROMPT, LONG_REPLY, make_app, reply_views, send, wait_for

async def main():
    app = make_app({path!r}, LONG_REPLY)
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: app.query_one("#status").state == "ready", timeout=60)
        await send(pilot, LONG_PROMPT)
        # Die once some of the reply is committed to the database (the app writes every 0.25 s).
        conv = app.conversation.id
        await wait_for(pilot, lambda: bool(app.store.messages(conv)[-1].content))
        assert app.generating
        print(len(reply_views(app)[0].message.content), flush=True)
        os._exit(9)  # no cleanup at all, like kill -9

asyncio.run(main())
"""


@pytest.mark.smollm
def test_a_reply_survives_the_app_being_killed_mid_stream(
    smollm_daemon: RunningDaemon, tmp_path: Path
) -> None:
    import subprocess
    import sys

    path = tmp_path / "c.sqlite3"
    script = _KILLED_MID_REPLY.format(tests=str(Path(__file__).parent), path=str(path))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 9, result.stderr[-2000:]
    shown_chars = int(result.stdout.strip().splitlines()[-1])
    store = ConversationStore(path)
    assert store.recovered == 1
    [conv] = store.list_conversations()
    user, reply = store.messages(conv.id)
    assert user.content == LONG_PROMPT
    assert reply.status == "interrupted"
    assert 0 < len(reply.content) <= shown_chars


async def test_conversations_persist_across_a_restart(daemon: RunningDaemon, tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    app = make_app(path)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.query_one(StatusBar).state == "ready")
        await send(pilot, "first conversation")
        await wait_for(pilot, lambda: bool(reply_views(app)) and not app.generating)
        first_reply = reply_views(app)[0].message.content
        await pilot.press("ctrl+n")
        assert app.store.get_conversation(app.conversation.id).title == "New conversation"
        await send(pilot, "second conversation")
        await wait_for(pilot, lambda: bool(reply_views(app)) and not app.generating)
        await pilot.press("f2")
        await pilot.press("ctrl+u", *"Renamed", "enter")
        await pilot.pause()
    app.store.close()

    again = make_app(path)
    async with again.run_test(size=SIZE) as pilot:
        await pilot.pause()
        titles = [c.title for c in again.store.list_conversations()]
        assert titles == ["Renamed", "first conversation"]
        # The most recent conversation is open; the sidebar lists both.
        assert again.conversation is not None and again.conversation.title == "Renamed"
        options = again.query_one("#conversations")
        assert options.option_count == 2
        # Open the older one from the sidebar with the keyboard.
        await pilot.press("ctrl+f", "tab", "down", "enter")
        await pilot.pause()
        assert again.conversation.title == "first conversation"
        views = again.query_one(ChatView).query(MessageView)
        assert [(v.message.role, v.message.content) for v in views] == [
            ("user", "first conversation"),
            ("assistant", first_reply),
        ]
        # Search narrows the list by message text.
        await pilot.press("ctrl+f", *"second")
        await pilot.pause()
        assert options.option_count == 1


async def test_daemon_down_shows_what_to_do_and_keeps_the_typed_text(
    localspec_home: Path, tmp_path: Path
) -> None:
    app = make_app(tmp_path / "c.sqlite3")  # no daemon, autostart off
    async with app.run_test(size=SIZE) as pilot:
        notice = app.query_one(Notice)
        await wait_for(pilot, lambda: app.query_one(StatusBar).state == "offline" and notice.display)
        assert "localspec serve" in notice.text
        await send(pilot, "a message I typed with care")
        await wait_for(pilot, lambda: not app.generating)
        await pilot.pause()
        assert app.query_one(PromptInput).text == "a message I typed with care"
        assert "localspec serve" in notice.text
        assert app.conversation is not None
        assert app.store.messages(app.conversation.id) == []
        assert reply_views(app) == []
        await pilot.press("ctrl+l")
        assert not notice.display


async def test_context_full_is_explained_and_the_message_returned(
    daemon: RunningDaemon, tmp_path: Path
) -> None:
    app = make_app(tmp_path / "c.sqlite3")
    too_long = "word " * 3000  # far beyond the daemon's 2048-token context
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.query_one(StatusBar).state == "ready")
        await send(pilot, too_long)
        notice = app.query_one(Notice)
        await wait_for(pilot, lambda: notice.display and not app.generating)
        assert notice.text.startswith("Context full")
        assert "ctrl+n" in notice.text
        assert app.query_one(PromptInput).text == too_long.strip()
        assert app.store.messages(app.conversation.id) == []
        assert app.query_one(StatusBar).state == "ready"


async def test_starts_the_daemon_when_none_runs_and_shows_progress(
    tiny_models: Any, localspec_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from localspec.client import discover, stop_daemon

    # The autostarted `localspec serve` reads its models and a free port from the environment.
    monkeypatch.setenv("LOCALSPEC_MODELS_TARGET", str(tiny_models.target))
    monkeypatch.setenv("LOCALSPEC_MODELS_DRAFT", str(tiny_models.draft_same))
    monkeypatch.setenv("LOCALSPEC_SERVER_PORT", "0")
    monkeypatch.setenv("LOCALSPEC_ENGINE_N_CTX", "512")
    assert discover() is None
    app = make_app(tmp_path / "c.sqlite3", autostart=True)
    states: list[str] = []
    try:
        async with app.run_test(size=SIZE) as pilot:
            status = app.query_one(StatusBar)
            app.watch(status, "state", lambda state: states.append(state))
            await wait_for(pilot, lambda: status.state in ("ready", "offline"), timeout=90)
            assert status.state == "ready", app.query_one(Notice).text
            assert "starting the localspec daemon" in states
            assert "tiny-target" in status.models
            await send(pilot, "hi")
            await wait_for(pilot, lambda: bool(reply_views(app)) and not app.generating)
            assert reply_views(app)[0].message.status == "complete"
    finally:
        stop_daemon()


async def test_model_load_failure_is_shown_with_the_daemons_reason(
    localspec_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from localspec.client import stop_daemon

    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF but not really a model")
    monkeypatch.setenv("LOCALSPEC_MODELS_TARGET", str(broken))
    monkeypatch.setenv("LOCALSPEC_MODELS_DRAFT", "")
    monkeypatch.setenv("LOCALSPEC_SERVER_PORT", "0")
    app = make_app(tmp_path / "c.sqlite3", autostart=True)
    try:
        async with app.run_test(size=SIZE) as pilot:
            notice = app.query_one(Notice)
            await wait_for(pilot, lambda: app.query_one(StatusBar).state == "offline" and notice.display, 90)
            assert "broken.gguf" in notice.text
            await send(pilot, "still here")
            await wait_for(pilot, lambda: not app.generating and app.query_one(StatusBar).state == "offline")
            await pilot.pause()
            assert app.query_one(PromptInput).text == "still here"
    finally:
        stop_daemon()


async def test_daemon_stopping_mid_session_is_reported_and_the_text_kept(
    daemon: RunningDaemon, tmp_path: Path
) -> None:
    app = make_app(tmp_path / "c.sqlite3")
    async with app.run_test(size=SIZE) as pilot:
        status = app.query_one(StatusBar)
        await wait_for(pilot, lambda: status.state == "ready")
        stop_daemon(daemon.process)
        await send(pilot, "are you there?")
        notice = app.query_one(Notice)
        await wait_for(pilot, lambda: notice.display and not app.generating)
        assert "No localspec daemon answers" in notice.text
        assert status.state == "offline"
        assert app.query_one(PromptInput).text == "are you there?"
        assert app.store.messages(app.conversation.id) == []
