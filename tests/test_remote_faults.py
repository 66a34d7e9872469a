"""A remote backend that is down, slow, failing or talking garbage: clear errors everywhere, nothing hangs.

The broken remotes are a real llama-server killed mid-stream, a port where nothing listens, and a loopback
server that misbehaves on purpose (tests/fault_server.py). The daemon is the real one.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import test_lsp_server as lsp
from conftest import RunningDaemon, TinyModels, start_daemon, stop_daemon
from fault_server import FaultServer
from llama_server import Served, free_port, start_llama_server
from lsprotocol import types
from waiting import wait_until

from localspec.client import DaemonClient
from localspec.errors import RemoteBackendError

CHAT = [{"role": "user", "content": "Tell me everything."}]
start_lsp = lsp.start_lsp  # the fixture: `localspec lsp` processes with a workspace folder


def _remote_args(url: str, timeout: float = 20) -> list[str]:
    return ["--backend", "remote", "--remote-url", url, "--remote-timeout", str(timeout)]


def _complete(daemon: RunningDaemon, **body: Any) -> httpx.Response:
    return httpx.post(
        f"{daemon.url}/v1/completions",
        json={"prompt": "hello", "max_tokens": 8, **body},
        headers=daemon.headers,
        timeout=30,
    )


def _error(response: httpx.Response) -> dict[str, Any]:
    return dict(response.json()["error"])


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[tuple[FaultServer, RunningDaemon]]:
    server = FaultServer("error500")
    daemon = start_daemon(tmp_path / "home", _remote_args(server.url, timeout=1))
    try:
        yield server, daemon
    finally:
        stop_daemon(daemon.process)
        server.close()


def test_a_remote_answering_500_gives_a_502_with_its_message(
    faulty: tuple[FaultServer, RunningDaemon],
) -> None:
    server, daemon = faulty
    assert httpx.get(f"{daemon.url}/health", timeout=10).json()["backend"]["kind"] == "openai"
    answer = _complete(daemon)
    assert answer.status_code == 502
    error = _error(answer)
    assert error["code"] == "remote_error"
    expected = f"The remote server at {server.url} answered /v1/completions with HTTP 500: the GPU fell over"
    assert expected in error["message"]


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("malformed", "malformed stream (a chunk that is not JSON"),
        ("garbage", "malformed stream (a line that is not server-sent events"),
        ("cut_short", "ended the stream before the generation finished"),
        ("hang", "sent nothing for 1 s"),
        ("hang_mid_stream", "sent nothing for 1 s"),
    ],
)
def test_a_broken_remote_stream_is_a_clear_error_not_a_hang(
    faulty: tuple[FaultServer, RunningDaemon], mode: str, message: str
) -> None:
    server, daemon = faulty
    server.mode = mode
    answer = _complete(daemon)
    assert answer.status_code == 502 and message in _error(answer)["message"], answer.text
    # Streaming through the client: the text that came is delivered, then the error is raised.
    texts = []
    with pytest.raises(RemoteBackendError, match=message.replace("(", r"\(")):
        for chunk in DaemonClient(daemon.url, daemon.token).stream_complete("hello", max_tokens=8):
            texts.append(chunk["choices"][0]["text"] if chunk.get("choices") else "")
    assert "".join(texts) in ("", "ok")
    stats = httpx.get(f"{daemon.url}/v1/stats", headers=daemon.headers, timeout=10).json()
    assert stats["errors"] == 2 and stats["active"] == 0


def test_a_remote_that_is_down_is_reported_and_picked_up_when_it_comes(
    llama_cpp_tools: Path, tiny_models: TinyModels, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    daemon = start_daemon(tmp_path / "home", _remote_args(url), accept_error=True)
    server: Served | None = None
    try:
        health = httpx.get(f"{daemon.url}/health", timeout=10).json()
        assert health["status"] == "error" and health["backend"]["url"] == url
        assert f"Cannot reach the remote server at {url}" in health["errors"][-1]["message"]
        answer = _complete(daemon)
        assert answer.status_code == 503 and "Cannot reach the remote server" in _error(answer)["message"]

        server = start_llama_server(llama_cpp_tools, tiny_models.target, tmp_path, port=port)
        wait_until(lambda: httpx.get(f"{daemon.url}/health", timeout=10).json()["status"] == "ok", 30)
        assert _complete(daemon).json()["usage"]["completion_tokens"] == 8
    finally:
        stop_daemon(daemon.process)
        if server is not None:
            server.stop()


@pytest.fixture
def endless_remote(
    llama_cpp_tools: Path, endless_pair: tuple[Path, Path], localspec_home: Path, tmp_path: Path
) -> Iterator[tuple[Served, RunningDaemon]]:
    server = start_llama_server(llama_cpp_tools, endless_pair[0], tmp_path, n_ctx=16384, slots=1)
    daemon = start_daemon(localspec_home, _remote_args(server.url, timeout=5))
    try:
        yield server, daemon
    finally:
        stop_daemon(daemon.process)
        server.stop()


def _kill(server: Served) -> None:
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(timeout=10)


def test_a_remote_killed_mid_stream_ends_the_stream_with_an_error_and_the_daemon_lives(
    endless_remote: tuple[Served, RunningDaemon],
) -> None:
    server, daemon = endless_remote
    client = DaemonClient(daemon.url, daemon.token)
    received = []
    with pytest.raises(RemoteBackendError, match=f"The remote server at {server.url}"):
        for chunk in client.stream_chat(CHAT, max_tokens=15000):
            received.append(chunk)
            if len(received) == 5:
                _kill(server)
    assert len(received) >= 5
    health = httpx.get(f"{daemon.url}/health", timeout=10).json()
    assert health["status"] == "ok"  # the daemon serves on; the next request says where the fault is
    answer = _complete(daemon)
    assert answer.status_code == 502 and "Cannot reach the remote server" in _error(answer)["message"]


async def test_tui_keeps_the_partial_reply_and_shows_the_remote_error(
    endless_remote: tuple[Served, RunningDaemon], tmp_path: Path
) -> None:
    from test_tui_app import SIZE, make_app, reply_views, send, wait_for

    from localspec.tui.store import ChatSettings
    from localspec.tui.widgets.notice import Notice
    from localspec.tui.widgets.status_bar import StatusBar

    server, _ = endless_remote
    app = make_app(tmp_path / "c.sqlite3", ChatSettings(temperature=0.0, top_p=1.0, max_tokens=15000, seed=0))
    async with app.run_test(size=SIZE) as pilot:
        status = app.query_one(StatusBar)
        await wait_for(pilot, lambda: status.state == "ready")
        await send(pilot, "a question worth keeping")
        await wait_for(
            pilot, lambda: bool(reply_views(app)) and len(reply_views(app)[0].message.content) > 20
        )
        _kill(server)
        notice = app.query_one(Notice)
        # (A busy CPU may leave the TUI behind the stream: it shows the error once it has rendered what came.)
        await wait_for(pilot, lambda: notice.display and not app.generating, 60)
        assert f"The remote server at {server.url}" in notice.text
        [reply] = reply_views(app)
        shown = reply.message.content
        assert shown and reply.message.status == "error"
        user, stored = app.store.messages(app.conversation.id)
        assert user.content == "a question worth keeping"
        assert stored.content == shown and stored.status == "error"


async def test_the_language_server_logs_the_remote_error_and_answers_empty(
    localspec_home: Path, start_lsp: lsp.StartLsp, tmp_path: Path
) -> None:
    server = FaultServer("error500")
    daemon = start_daemon(localspec_home, _remote_args(server.url, timeout=1))
    try:
        client = await start_lsp(
            daemon.home, {"debounceMs": 0, "maxTokens": 8, "precompute": False, "cacheSize": 0}
        )
        uri = lsp.open_document(client, tmp_path, "main.py", lsp.DOC)
        assert await lsp.inline(client, uri, lsp.CURSOR) == []
        assert server.posts == 1
        warnings = [m.message for m in client.log_messages if m.type == types.MessageType.Warning]
        assert any("HTTP 500: the GPU fell over" in message for message in warnings), warnings
    finally:
        stop_daemon(daemon.process)
        server.close()
