"""Faults on real processes: a daemon SIGKILLed mid-stream, model files that vanish or rot, a full disk, no inotify.

Each test breaks something the way the world does (kill -9, rm, truncate, a file-size limit that makes the
kernel refuse writes, every inotify instance taken) and checks what the user sees: a clear error, the partial
reply kept, the old model still serving, nothing saved earlier lost.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import RunningDaemon, TinyModels, start_daemon, stop_daemon, tiny_serve_args
from system_limits import inotify_instances_used_up
from waiting import wait_until

from localspec.client import AsyncDaemonClient, DaemonClient, discover
from localspec.config import update_config_file
from localspec.errors import DaemonUnavailableError

CHAT = [{"role": "user", "content": "Tell me everything."}]


def _serve_args(pair: tuple[Path, Path]) -> list[str]:
    # A context this long lets a reply stream for seconds, so the kill lands while the daemon still generates.
    return ["--target", str(pair[0]), "--draft", str(pair[1]), "--n-ctx", "16384", "--threads", "1"]


@pytest.fixture
def endless_daemon(endless_pair: tuple[Path, Path], localspec_home: Path) -> Iterator[RunningDaemon]:
    running = start_daemon(localspec_home, _serve_args(endless_pair))
    try:
        yield running
    finally:
        stop_daemon(running.process)


def _sigkill(daemon: RunningDaemon) -> None:
    daemon.process.send_signal(signal.SIGKILL)
    daemon.process.wait(timeout=10)  # reap it, as a supervising shell would


def _health(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/health", timeout=10).json()


# ---- daemon killed mid-stream ----


def test_sigkill_mid_stream_raises_a_clear_error_and_a_restarted_daemon_serves(
    endless_daemon: RunningDaemon, endless_pair: tuple[Path, Path], localspec_home: Path
) -> None:
    client = DaemonClient()
    stream = client.stream_chat(CHAT, max_tokens=16000)
    first = next(stream)
    assert first["choices"][0]["delta"] is not None
    _sigkill(endless_daemon)
    with pytest.raises(DaemonUnavailableError, match="closed the connection mid-reply"):
        for _chunk in stream:
            pass
    with pytest.raises(DaemonUnavailableError, match="localspec serve"):
        client.health()
    client.close()
    # The killed daemon could not remove daemon.json; a stale file must count as "no daemon".
    assert (localspec_home / "state" / "daemon.json").exists()
    assert discover() is None

    restarted = start_daemon(localspec_home, _serve_args(endless_pair))
    try:
        with DaemonClient() as again:
            assert again.url == restarted.url
            answer = again.chat(CHAT, max_tokens=8)
            assert answer["choices"][0]["finish_reason"] == "length"
            assert answer["usage"]["completion_tokens"] == 8
    finally:
        stop_daemon(restarted.process)


async def test_async_client_sigkill_mid_stream_raises_daemon_unavailable(
    endless_daemon: RunningDaemon,
) -> None:
    async with AsyncDaemonClient() as client:
        stream = client.stream_chat(CHAT, max_tokens=16000)
        received = 0
        with pytest.raises(DaemonUnavailableError, match="closed the connection mid-reply"):
            async with stream:
                async for _chunk in stream:
                    received += 1
                    if received == 1:
                        _sigkill(endless_daemon)
        assert received >= 1


async def test_tui_keeps_the_partial_reply_and_the_message_when_the_daemon_is_killed(
    endless_daemon: RunningDaemon, endless_pair: tuple[Path, Path], localspec_home: Path, tmp_path: Path
) -> None:
    from test_tui_app import SIZE, make_app, reply_views, send, wait_for

    from localspec.tui.store import ChatSettings
    from localspec.tui.widgets.notice import Notice
    from localspec.tui.widgets.prompt_input import PromptInput
    from localspec.tui.widgets.status_bar import StatusBar

    app = make_app(tmp_path / "c.sqlite3", ChatSettings(temperature=0.0, top_p=1.0, max_tokens=16000, seed=0))
    async with app.run_test(size=SIZE) as pilot:
        status = app.query_one(StatusBar)
        await wait_for(pilot, lambda: status.state == "ready")
        await send(pilot, "a question worth keeping")
        await wait_for(
            pilot, lambda: bool(reply_views(app)) and len(reply_views(app)[0].message.content) > 20
        )
        _sigkill(endless_daemon)
        notice = app.query_one(Notice)
        await wait_for(pilot, lambda: notice.display and not app.generating, 60)
        assert "closed the connection mid-reply" in notice.text
        assert status.state == "offline"
        [reply] = reply_views(app)
        shown = reply.message.content
        assert shown and reply.message.status == "error"
        user, stored = app.store.messages(app.conversation.id)
        assert user.content == "a question worth keeping"
        assert stored.content == shown and stored.status == "error"

        # A restarted daemon serves again after ctrl+r (in a new conversation: the cut-off reply is long).
        killed_conversation = app.conversation.id
        restarted = start_daemon(localspec_home, _serve_args(endless_pair))
        try:
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: status.state == "ready")
            await pilot.press("ctrl+n")
            app.conversation.settings = ChatSettings(temperature=0.0, max_tokens=8)
            await send(pilot, "again")
            await wait_for(pilot, lambda: len(reply_views(app)) == 1 and not app.generating)
            assert reply_views(app)[0].message.status == "complete"
            assert app.query_one(PromptInput).text == ""
            assert app.store.messages(killed_conversation)[1].content == shown
        finally:
            stop_daemon(restarted.process)


# ---- model files that vanish or rot ----


def _complete(daemon: RunningDaemon, **body: Any) -> httpx.Response:
    return httpx.post(
        f"{daemon.url}/v1/completions",
        json={"prompt": "hello", "max_tokens": 8, **body},
        headers=daemon.headers,
        timeout=30,
    )


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_model_file_damaged_while_loaded_keeps_serving_and_a_reload_reports_it(
    tiny_models: TinyModels, tmp_path: Path, damage: str
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    target = models / "target.gguf"
    target.write_bytes(tiny_models.target.read_bytes())
    home = tmp_path / "home"
    config_file = home / "config" / "config.toml"
    config_file.parent.mkdir(parents=True)
    update_config_file({"target": str(target), "draft": "none"}, config_file)
    running = start_daemon(home, ["--threads", "1"])
    try:
        before = _complete(running)
        assert before.status_code == 200
        if damage == "delete":
            target.unlink()
        else:
            with target.open("r+b") as handle:
                handle.truncate(4096)
        # llama.cpp read the weights at load time: the running model keeps answering, identically.
        after = _complete(running)
        assert after.status_code == 200
        assert after.json()["choices"][0]["text"] == before.json()["choices"][0]["text"]

        # A reload (here: another n_ctx, so the settings differ) must read the file again and fail cleanly.
        update_config_file({"n_ctx": 1024}, config_file)
        wait_until(lambda: bool(_health(running.url)["errors"]))
        health = _health(running.url)
        assert health["status"] == "ok" and health["models"]["target"] == "tiny-target"
        message = health["errors"][0]["message"]
        assert "target.gguf" in message and "keep serving" in message
        assert _complete(running).json()["choices"][0]["text"] == before.json()["choices"][0]["text"]
    finally:
        stop_daemon(running.process)


def test_draft_file_deleted_before_a_reload_keeps_the_old_pair(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    draft = tmp_path / "draft.gguf"
    draft.write_bytes(tiny_models.draft_similar.read_bytes())
    home = tmp_path / "home"
    config_file = home / "config" / "config.toml"
    config_file.parent.mkdir(parents=True)
    update_config_file({"target": str(tiny_models.target), "draft": str(draft)}, config_file)
    running = start_daemon(home, ["--threads", "1"])
    try:
        draft.unlink()
        update_config_file({"n_ctx": 1024}, config_file)
        wait_until(lambda: bool(_health(running.url)["errors"]))
        health = _health(running.url)
        assert health["models"] == {"target": "tiny-target", "draft": "tiny-draft-similar"}
        assert "draft.gguf" in health["errors"][0]["message"]
        answer = _complete(running, speculative="draft")
        assert answer.status_code == 200 and answer.json()["speculative"]["drafted"] > 0
    finally:
        stop_daemon(running.process)


# ---- a full disk while saving a conversation ----

# Runs in a child process: the file-size limit then applies to this store alone. SIGXFSZ is ignored so the
# kernel's refusal arrives as an EFBIG error from write(), as it would on a full disk (ENOSPC).
_FULL_DISK = """
import resource, signal, sys
sys.path.insert(0, {tests!r})
from localspec.tui.store import ConversationStore
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
store = ConversationStore(__import__("pathlib").Path({path!r}))
[conv] = store.list_conversations()
limit = {limit}
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
failures = []
for attempt in (
    lambda: store.add_message(conv.id, "user", "x" * 4_000_000),
    lambda: store.create_conversation("too big " + "y" * 4_000_000),
    lambda: store.update_message(store.messages(conv.id)[-1].__class__(
        store.messages(conv.id)[-1].id, conv.id, "assistant", "z" * 4_000_000)),
):
    try:
        attempt()
    except Exception as exc:
        failures.append(type(exc).__name__ + ": " + str(exc))
print("\\n".join(failures))
"""


def _file_sizes(path: Path) -> int:
    return max(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def test_a_full_disk_while_saving_loses_nothing_saved_before(tmp_path: Path) -> None:
    from localspec.tui.store import ConversationStore

    path = tmp_path / "c.sqlite3"
    store = ConversationStore(path)
    conv = store.create_conversation("kept")
    store.add_message(conv.id, "user", "question " * 200)
    reply = store.add_message(conv.id, "assistant", "answer " * 200)
    store.close()
    before = [(m.role, m.content, m.status) for m in ConversationStore(path).messages(conv.id)]

    script = _FULL_DISK.format(
        tests=str(Path(__file__).parent), path=str(path), limit=_file_sizes(path) + 8192
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    failures = result.stdout.strip().splitlines()
    assert len(failures) == 3, result.stdout  # every oversized write failed ...
    assert all("full" in f or "I/O" in f or "too large" in f.lower() for f in failures), failures

    # ... and the database is intact, with exactly what was saved before the disk filled.
    reopened = ConversationStore(path)
    assert reopened._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert [c.title for c in reopened.list_conversations()] == ["kept"]
    assert [(m.role, m.content, m.status) for m in reopened.messages(conv.id)] == before
    assert reopened.messages(conv.id)[-1].id == reply.id


def test_tui_reports_a_full_disk_and_keeps_the_typed_message(daemon: RunningDaemon, tmp_path: Path) -> None:
    """The app's process hits the file-size limit while sending: an error, not a hung or crashed app."""
    script = _TUI_FULL_DISK.format(tests=str(Path(__file__).parent), path=str(tmp_path / "c.sqlite3"))
    env = {**os.environ, "LOCALSPEC_HOME": str(daemon.home)}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["generating"] is False
    assert report["prompt"].startswith("big message")
    assert "disk" in report["notice"].lower() or "full" in report["notice"].lower(), report["notice"]
    assert report["saved"] == [["user", "first"], ["assistant", report["first_reply"]]]
    assert "Could not save" in report["new_conversation_notice"] and report["same_conversation"]


_TUI_FULL_DISK = """
import asyncio, json, resource, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_tui_app import SIZE, make_app, reply_views, send, wait_for
from localspec.tui.store import ConversationStore
from localspec.tui.widgets.notice import Notice
from localspec.tui.widgets.prompt_input import PromptInput

async def main():
    path = Path({path!r})
    app = make_app(path)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.connection.connected)
        await send(pilot, "first")
        await wait_for(pilot, lambda: bool(reply_views(app)) and not app.generating)
        first_reply = reply_views(app)[0].message.content
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        limit = max(p.stat().st_size for p in path.parent.glob(path.name + "*")) + 8192
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        await send(pilot, "big message " + "w" * 2_000_000)
        notice = app.query_one(Notice)
        await wait_for(pilot, lambda: notice.display and not app.generating, 30)
        report = dict(
            generating=app.generating,
            prompt=app.query_one(PromptInput).text[:40],
            notice=notice.text,
            first_reply=first_reply,
        )
        # Not even a small write fits now: a new conversation is refused with the same notice, no crash.
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit - 8192, resource.RLIM_INFINITY))
        await pilot.press("ctrl+l")
        conversation = app.conversation.id
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: notice.display, 30)
        report["new_conversation_notice"] = notice.text
        report["same_conversation"] = app.conversation.id == conversation and app.is_running
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    app.store.close()
    store = ConversationStore(path)
    [conv] = store.list_conversations()
    report["saved"] = [[m.role, m.content] for m in store.messages(conv.id)]
    print(json.dumps(report))

asyncio.run(main())
"""


# ---- no inotify instance left ----


def test_a_daemon_started_with_no_inotify_left_serves_without_watching_its_config(
    tiny_models: TinyModels, localspec_home: Path
) -> None:
    with inotify_instances_used_up():
        running = start_daemon(localspec_home, tiny_serve_args(tiny_models))
    try:
        assert _health(running.url)["status"] == "ok"
        completion = _complete(running)
        assert completion.status_code == 200, completion.text
        log = (localspec_home / "log" / "daemon.log").read_text()
        assert "not watching" in log and "config.toml" in log and "inotify" in log
    finally:
        stop_daemon(running.process)
