"""`localspec lsp` end to end: a real LSP client (pytest-lsp) over stdio, the real server process, a real
daemon on tiny models. Expected suggestions are what the daemon's /v1/infill returns for the same prompt."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import RunningDaemon, TinyModels, start_daemon, stop_daemon, tiny_serve_args
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pytest_lsp import ClientServerConfig, LanguageClient
from system_limits import inotify_instances_used_up

from localspec.client import AsyncDaemonClient
from localspec.lsp.prompt import build_prompt, suffix_window, warm_windows
from localspec.lsp.settings import LspSettings
from localspec.lsp.text_edits import end_position

SERVER = [sys.executable, "-m", "localspec", "lsp"]
# Deterministic and quick: no debounce, short suggestions, no background pre-compute unless a test wants it.
# No warm-up of open files either: tests that want it turn it on.
FAST = {"debounceMs": 0, "maxTokens": 16, "precompute": False, "warmFiles": False}
TIMEOUT = 60.0  # generous: CI machines are small and busy; passing runs take a second or two

CAPABILITIES = types.ClientCapabilities(
    general=types.GeneralClientCapabilities(position_encodings=[types.PositionEncodingKind.Utf16]),
    workspace=types.WorkspaceClientCapabilities(configuration=True),
    window=types.WindowClientCapabilities(work_done_progress=True),
    text_document=types.TextDocumentClientCapabilities(
        synchronization=types.TextDocumentSyncClientCapabilities(did_save=True),
        completion=types.CompletionClientCapabilities(
            completion_item=types.ClientCompletionItemOptions(label_details_support=True)
        ),
        inline_completion=types.InlineCompletionClientCapabilities(),
    ),
)

StartLsp = Callable[..., Awaitable[LanguageClient]]


def lsp_env(home: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("LOCALSPEC_")}
    env["LOCALSPEC_HOME"] = str(home)
    return env


@pytest.fixture
async def start_lsp(tmp_path: Path) -> AsyncIterator[StartLsp]:
    """Starts `localspec lsp` processes with a workspace folder; shuts them down after the test."""
    clients: list[LanguageClient] = []
    root = tmp_path / "project"
    root.mkdir()

    async def start(home: Path, options: dict[str, Any] | None = None) -> LanguageClient:
        client = await ClientServerConfig(server_command=SERVER, server_env=lsp_env(home)).start()
        assert isinstance(client, LanguageClient)
        clients.append(client)
        result = await asyncio.wait_for(
            client.initialize_session(
                types.InitializeParams(
                    capabilities=CAPABILITIES,
                    root_uri=root.as_uri(),
                    workspace_folders=[types.WorkspaceFolder(uri=root.as_uri(), name="project")],
                    initialization_options=options,
                )
            ),
            TIMEOUT,
        )
        assert result.capabilities.inline_completion_provider is not None
        assert result.capabilities.text_document_sync is not None
        return client

    yield start
    for client in clients:
        await asyncio.wait_for(client.shutdown_session(), TIMEOUT)
        await client.stop()


def open_document(client: LanguageClient, tmp_path: Path, name: str, text: str) -> str:
    uri = (tmp_path / "project" / name).as_uri()
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)
        )
    )
    return uri


def type_text(client: LanguageClient, uri: str, version: int, at: types.Position, text: str) -> None:
    """An incremental change, as editors send for a keystroke."""
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[
                types.TextDocumentContentChangePartial(range=types.Range(start=at, end=at), text=text)
            ],
        )
    )


def replace_all(client: LanguageClient, uri: str, version: int, text: str) -> None:
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[types.TextDocumentContentChangeWholeDocument(text=text)],
        )
    )


def inline_request(client: LanguageClient, uri: str, position: types.Position) -> asyncio.Future[Any]:
    """Send the request now; await the returned future for its answer."""
    return asyncio.ensure_future(
        client.text_document_inline_completion_async(
            types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(uri=uri),
                position=position,
                context=types.InlineCompletionContext(
                    trigger_kind=types.InlineCompletionTriggerKind.Automatic
                ),
            )
        )
    )


async def inline(
    client: LanguageClient, uri: str, position: types.Position
) -> list[types.InlineCompletionItem]:
    result = await asyncio.wait_for(inline_request(client, uri, position), TIMEOUT)
    if result is None:
        return []
    return list(result.items if isinstance(result, types.InlineCompletionList) else result)


async def stats(client: LanguageClient) -> dict[str, Any]:
    result = await asyncio.wait_for(
        client.workspace_execute_command_async(types.ExecuteCommandParams(command="localspec.stats")), TIMEOUT
    )
    assert isinstance(result, dict)
    return result


async def daemon_infill(daemon: RunningDaemon, prefix: str, suffix: str, **params: Any) -> str:
    """What the daemon itself answers for a prompt (the same request the language server should send)."""
    body = {"filename": "main.py", "max_tokens": 16, "temperature": 0.0, "single_line": False, "extra": []}
    async with AsyncDaemonClient(daemon.url, daemon.token) as client:
        result = await client.infill(prefix, suffix, **{**body, **params})
    return str(result["content"])


async def daemon_stats(daemon: RunningDaemon) -> dict[str, Any]:
    async with AsyncDaemonClient(daemon.url, daemon.token) as client:
        return await client.stats()


async def wait_until(
    condition: Callable[[], Awaitable[bool]], timeout: float = TIMEOUT, poll: float = 0.05
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await condition():
            return True
        await asyncio.sleep(poll)
    return await condition()


async def received(daemon: RunningDaemon) -> int:
    """Generation requests the daemon has received so far: queued, running or finished."""
    return int((await daemon_stats(daemon))["received"])


async def wait_received(daemon: RunningDaemon, count: int) -> None:
    async def arrived() -> bool:
        return await received(daemon) >= count

    assert await wait_until(arrived, poll=0.01), f"the daemon never received {count} requests"


async def flood(daemon: RunningDaemon, count: int) -> list[asyncio.Task[Any]]:
    """Queue `count` infill requests on the daemon (returns once all arrived), so the next one waits.

    Timing-free cancellation tests: a request sent after a flood is still queued on the daemon for as
    long as the flood takes, and `wait_received` tells when it has arrived there.
    """
    base = await received(daemon)
    http = httpx.AsyncClient(base_url=daemon.url, headers=daemon.headers, timeout=60)

    async def one(i: int) -> int:
        # A ~1700-token prompt sharing no cached prefix with the others: real work for each request.
        prefix = f"# job {base + i}\n" + "x = 1\n" * 280 + "def f(x):\n    return "
        response = await http.post("/v1/infill", json={"prefix": prefix, "suffix": "", "max_tokens": 16})
        return response.status_code

    requests = [asyncio.create_task(one(i)) for i in range(count)]
    await wait_received(daemon, base + count)
    return [*requests, asyncio.create_task(_close_after(http, requests))]


async def _close_after(http: httpx.AsyncClient, requests: list[asyncio.Task[Any]]) -> None:
    await asyncio.gather(*requests, return_exceptions=True)
    await http.aclose()


DOC = 'import os\n\n\ndef add(a, b):\n    \n\n\nprint("😀", add(1, 2))\n'
CURSOR = types.Position(line=4, character=4)
CURSOR_OFFSET = DOC.index("    \n") + 4


async def test_inline_completion_is_the_daemons_infill_at_the_cursor(
    daemon: RunningDaemon, start_lsp: StartLsp, tmp_path: Path
) -> None:
    expected = await daemon_infill(daemon, DOC[:CURSOR_OFFSET], DOC[CURSOR_OFFSET:])
    assert expected, "the tiny model should suggest something for this prompt"
    client = await start_lsp(daemon.home, FAST)
    uri = open_document(client, tmp_path, "main.py", DOC)

    items = await inline(client, uri, CURSOR)

    assert [item.insert_text for item in items] == [expected]
    assert items[0].range == types.Range(start=CURSOR, end=CURSOR)


async def test_classic_completion_replaces_the_typed_word_with_utf16_range(
    daemon: RunningDaemon, start_lsp: StartLsp, tmp_path: Path
) -> None:
    text = 's = "😀"; value = compu\n'
    offset = text.index("\n")
    expected = await daemon_infill(daemon, text[:offset], text[offset:])
    assert expected
    client = await start_lsp(daemon.home, FAST)
    uri = open_document(client, tmp_path, "main.py", text)
    # The emoji is two UTF-16 code units: the line is 23 units long, "compu" starts at unit 18.
    cursor = types.Position(line=0, character=23)

    result = await asyncio.wait_for(
        client.text_document_completion_async(
            types.CompletionParams(text_document=types.TextDocumentIdentifier(uri=uri), position=cursor)
        ),
        TIMEOUT,
    )

    assert isinstance(result, types.CompletionList) and result.is_incomplete
    [item] = result.items
    assert isinstance(item.text_edit, types.TextEdit)
    assert item.text_edit.range == types.Range(start=types.Position(line=0, character=18), end=cursor)
    assert item.text_edit.new_text == "compu" + expected
    assert item.filter_text == "compu" + expected
    assert item.insert_text_format == types.InsertTextFormat.PlainText
    assert item.label_details is not None and item.label_details.description == "localspec"
    assert item.label.startswith(("compu" + expected).split("\n")[0][:20])


async def test_positions_outside_the_document_are_answered_at_its_end(
    daemon: RunningDaemon, start_lsp: StartLsp, tmp_path: Path
) -> None:
    expected = await daemon_infill(daemon, DOC, "")
    client = await start_lsp(daemon.home, FAST)
    uri = open_document(client, tmp_path, "main.py", DOC)
    end = types.Position(line=8, character=0)

    items = await inline(client, uri, types.Position(line=40, character=7))

    assert [item.insert_text for item in items] == ([expected] if expected else [])
    if items:
        assert items[0].range == types.Range(start=end, end=end)


async def test_with_no_inotify_left_the_server_warns_and_suggests_without_watching(
    daemon: RunningDaemon, start_lsp: StartLsp, tmp_path: Path
) -> None:
    with inotify_instances_used_up():
        client = await start_lsp(daemon.home, FAST)

        async def warned() -> bool:
            return any(
                m.type == types.MessageType.Warning and "not watching the workspace" in m.message
                for m in client.log_messages
            )

        assert await wait_until(warned)
    assert (await stats(client))["watched_folders"] == []
    uri = open_document(client, tmp_path, "main.py", DOC)
    await inline(client, uri, CURSOR)
    assert (await stats(client))["suggestions"]["generations"] == 1


async def test_other_files_reach_the_prompt_as_extra_context(
    daemon: RunningDaemon, start_lsp: StartLsp, tmp_path: Path
) -> None:
    client = await start_lsp(daemon.home, FAST)

    async def watching() -> bool:
        return bool((await stats(client))["watched_folders"])

    assert await wait_until(watching)
    helper = "def helper(x):\n    return x * 2\n"
    open_document(client, tmp_path, "helper.py", helper)
    # Written by another tool (a formatter, git checkout): the workspace watcher picks it up.
    generated = "GENERATED = {'answer': 42}\n"
    (tmp_path / "project" / "gen").mkdir()
    (tmp_path / "project" / "gen" / "consts.py").write_text(generated, encoding="utf-8")

    async def chunk_from_disk() -> bool:
        return "gen/consts.py" in (await stats(client))["context_chunks"]

    assert await wait_until(chunk_from_disk)
    uri = open_document(client, tmp_path, "main.py", DOC)
    items = await inline(client, uri, CURSOR)

    # The prompt carries the chunks oldest first (a newer one never moves the others, so the daemon's cache of
    # the prompt's start stays valid); which of the two arrived last depends on event timing.
    texts = {"gen/consts.py": generated, "helper.py": helper}
    oldest_first = [name for name in (await stats(client))["context_chunks"] if name in texts]
    assert sorted(oldest_first) == sorted(texts)
    extra = [{"filename": name, "text": texts[name]} for name in oldest_first]
    expected = await daemon_infill(daemon, DOC[:CURSOR_OFFSET], DOC[CURSOR_OFFSET:], extra=extra)
    assert [item.insert_text for item in items] == ([expected] if expected else [])
    without_extra = await daemon_infill(daemon, DOC[:CURSOR_OFFSET], DOC[CURSOR_OFFSET:])
    assert expected != without_extra, "the extra context should change this tiny model's answer"


async def test_typing_along_a_suggestion_is_answered_from_the_cache(
    daemon: RunningDaemon, start_lsp: StartLsp, tmp_path: Path
) -> None:
    client = await start_lsp(daemon.home, FAST)
    uri = open_document(client, tmp_path, "main.py", DOC)
    [first] = await inline(client, uri, CURSOR)
    suggestion = str(first.insert_text)
    typed = suggestion[:2]
    assert len(suggestion) > 2 and typed.isprintable(), f"need printable leading text, got {suggestion!r}"

    type_text(client, uri, 2, CURSOR, typed[0])
    step1 = types.Position(line=CURSOR.line, character=CURSOR.character + 1)
    assert [item.insert_text for item in await inline(client, uri, step1)] == [suggestion[1:]]
    type_text(client, uri, 3, step1, typed[1])
    step2 = types.Position(line=CURSOR.line, character=CURSOR.character + 2)
    assert [item.insert_text for item in await inline(client, uri, step2)] == [suggestion[2:]]

    counters = (await stats(client))["suggestions"]
    assert (counters["requests"], counters["cache_hits"], counters["generations"]) == (3, 2, 1)
    assert (await daemon_stats(daemon))["requests"] == {"infill": 1}


async def test_next_suggestion_is_precomputed_after_one_is_shown(
    daemon: RunningDaemon, start_lsp: StartLsp, tmp_path: Path
) -> None:
    # A prompt whose follow-up suggestion (after accepting the first) is not empty for the tiny model.
    doc = "def mul(a, b):\n    return \n\nprint('done')\n"
    cursor, cursor_offset = types.Position(line=1, character=11), doc.index(" \n\n") + 1
    client = await start_lsp(daemon.home, {**FAST, "precompute": True})
    uri = open_document(client, tmp_path, "main.py", doc)
    [first] = await inline(client, uri, cursor)
    suggestion = str(first.insert_text)

    async def precomputed() -> bool:
        return bool((await stats(client))["suggestions"]["precomputed"])

    assert await wait_until(precomputed), "the follow-up suggestion was not pre-computed"
    accepted = doc[:cursor_offset] + suggestion + doc[cursor_offset:]
    replace_all(client, uri, 2, accepted)
    items = await inline(client, uri, end_position(cursor, suggestion))

    # Answered from the cache; showing it starts the next pre-compute in turn.
    counters = (await stats(client))["suggestions"]
    assert (counters["requests"], counters["cache_hits"]) == (2, 1) and counters["precomputed"] >= 1
    offset = cursor_offset + len(suggestion)
    expected = await daemon_infill(daemon, accepted[:offset], accepted[offset:])
    assert expected and [item.insert_text for item in items] == [expected]


async def test_accepting_before_the_precompute_finishes_waits_for_it(
    daemon: RunningDaemon, start_lsp: StartLsp, tmp_path: Path
) -> None:
    doc = "def mul(a, b):\n    return \n\nprint('done')\n"
    cursor, cursor_offset = types.Position(line=1, character=11), doc.index(" \n\n") + 1
    client = await start_lsp(daemon.home, {**FAST, "precompute": True})
    uri = open_document(client, tmp_path, "main.py", doc)
    # Queue work before and after the first request, so its pre-compute waits behind the second batch.
    backlog = await flood(daemon, 40)
    first_request = inline_request(client, uri, cursor)
    await wait_received(daemon, 41)
    backlog += await flood(daemon, 40)
    [first] = (await asyncio.wait_for(first_request, 60)).items
    suggestion = str(first.insert_text)

    accepted = doc[:cursor_offset] + suggestion + doc[cursor_offset:]
    replace_all(client, uri, 2, accepted)
    result = await asyncio.wait_for(inline_request(client, uri, end_position(cursor, suggestion)), 60)
    await asyncio.gather(*backlog)

    counters = (await stats(client))["suggestions"]
    assert (counters["joined_precompute"], counters["superseded"], counters["cache_hits"]) == (1, 0, 0)
    assert (await daemon_stats(daemon))["finish_reasons"].get("cancelled") is None
    offset = cursor_offset + len(suggestion)
    expected = await daemon_infill(daemon, accepted[:offset], accepted[offset:])
    assert expected and [item.insert_text for item in result.items] == [expected]


async def test_a_newer_request_supersedes_a_debouncing_one(
    daemon: RunningDaemon, start_lsp: StartLsp, tmp_path: Path
) -> None:
    # A debounce long enough that the newer request surely arrives while the older one still waits in it.
    client = await start_lsp(daemon.home, {**FAST, "debounceMs": 2000})
    uri = open_document(client, tmp_path, "main.py", DOC)

    older = inline_request(client, uri, CURSOR)

    async def older_is_debouncing() -> bool:
        return (await stats(client))["in_flight"] == 1

    assert await wait_until(older_is_debouncing)
    type_text(client, uri, 2, CURSOR, "r")
    newer = inline_request(client, uri, types.Position(line=CURSOR.line, character=CURSOR.character + 1))
    older_result = await asyncio.wait_for(older, TIMEOUT)
    newer_result = await asyncio.wait_for(newer, TIMEOUT)

    assert list(older_result.items) == []
    offset = CURSOR_OFFSET + 1
    edited = DOC[:CURSOR_OFFSET] + "r" + DOC[CURSOR_OFFSET:]
    expected = await daemon_infill(daemon, edited[:offset], edited[offset:])
    assert [item.insert_text for item in newer_result.items] == ([expected] if expected else [])
    counters = (await stats(client))["suggestions"]
    assert (counters["superseded"], counters["generations"]) == (1, 1)


async def test_superseding_cancels_the_generation_on_the_daemon(
    daemon: RunningDaemon, start_lsp: StartLsp, tmp_path: Path
) -> None:
    client = await start_lsp(daemon.home, FAST)
    uri = open_document(client, tmp_path, "main.py", DOC)
    backlog = await flood(daemon, 40)

    older = inline_request(client, uri, CURSOR)
    await wait_received(daemon, 41)  # the older request is now queued behind the flood on the daemon
    type_text(client, uri, 2, CURSOR, "r")
    newer = inline_request(client, uri, types.Position(line=CURSOR.line, character=CURSOR.character + 1))

    assert list((await asyncio.wait_for(older, TIMEOUT)).items) == []
    await asyncio.wait_for(newer, 60)
    await asyncio.gather(*backlog)
    counters = (await stats(client))["suggestions"]
    assert (counters["superseded"], counters["generations"]) == (1, 1)
    served = await daemon_stats(daemon)
    assert served["finish_reasons"].get("cancelled") == 1
    assert served["requests"]["infill"] == 40 + 2


async def test_cancel_request_cancels_the_generation_on_the_daemon(
    daemon: RunningDaemon, start_lsp: StartLsp, tmp_path: Path
) -> None:
    client = await start_lsp(daemon.home, FAST)
    uri = open_document(client, tmp_path, "main.py", DOC)
    backlog = await flood(daemon, 40)

    params = types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        position=CURSOR,
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
    )
    request = asyncio.ensure_future(
        client.protocol.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id="r1")
    )
    await wait_received(daemon, 41)  # the request is now queued behind the flood on the daemon
    client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="r1"))

    with pytest.raises(JsonRpcException, match="cancel"):
        await asyncio.wait_for(request, TIMEOUT)
    await asyncio.gather(*backlog)
    assert (await stats(client))["suggestions"]["cancelled"] == 1

    async def cancelled_on_daemon() -> bool:
        return (await daemon_stats(daemon))["finish_reasons"].get("cancelled") == 1

    assert await wait_until(cancelled_on_daemon, timeout=90)  # the daemon first works through the flood


async def test_configuration_changes_apply_to_the_next_request(
    daemon: RunningDaemon, start_lsp: StartLsp, tmp_path: Path
) -> None:
    client = await start_lsp(daemon.home, FAST)
    uri = open_document(client, tmp_path, "main.py", DOC)

    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"localspec": {"enable": False}})
    )
    assert await inline(client, uri, CURSOR) == []
    assert (await stats(client))["enabled"] is False

    # Pull model: an empty notification makes the server ask for the "localspec" section.
    client.set_configuration({"enable": True, "maxTokens": 5, "lineMode": "single"}, section="localspec")
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=None))

    async def reconfigured() -> bool:
        return (await stats(client))["settings"]["maxTokens"] == 5

    assert await wait_until(reconfigured)
    items = await inline(client, uri, CURSOR)
    # A one-line suggestion sees the cursor's line and two more after it (singleLineSuffixLines).
    suffix = suffix_window(DOC, CURSOR_OFFSET, max_lines=2, max_chars=10_000)
    expected = await daemon_infill(daemon, DOC[:CURSOR_OFFSET], suffix, max_tokens=5, single_line=True)
    assert [item.insert_text for item in items] == ([expected] if expected else [])
    recent = (await daemon_stats(daemon))["recent"]
    assert [entry["max_tokens"] for entry in recent] == [5, 5]

    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"maxTokens": 0}))
    assert (await stats(client))["settings"]["maxTokens"] == 5
    assert any("maxTokens" in m.message or "max_tokens" in m.message for m in client.log_messages)

    toggled = await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="localspec.toggle")
    )
    assert toggled == {"enabled": False}
    assert await inline(client, uri, CURSOR) == []


def write_config(home: Path, tiny_models: TinyModels, port: int = 0) -> None:
    config = home / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "config.toml").write_text(
        f'[models]\ntarget = "{tiny_models.target}"\ndraft = "{tiny_models.draft_similar}"\n'
        f"[engine]\nn_ctx = 2048\n[server]\nport = {port}\n",
        encoding="utf-8",
    )


def stop_started_daemon(home: Path) -> None:
    """End the daemon the language server started (its pid is in daemon.json)."""
    discovery = home / "state" / "daemon.json"
    try:
        pid = int(json.loads(discovery.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


async def test_daemon_down_answers_at_once_then_starts_it(
    tiny_models: TinyModels, localspec_home: Path, start_lsp: StartLsp, tmp_path: Path
) -> None:
    write_config(localspec_home, tiny_models)
    try:
        client = await start_lsp(localspec_home, FAST)
        uri = open_document(client, tmp_path, "main.py", DOC)

        started = time.monotonic()
        assert await inline(client, uri, CURSOR) == []
        assert time.monotonic() - started < 1.0

        async def suggesting() -> bool:
            return bool(await inline(client, uri, CURSOR))

        assert await wait_until(suggesting, timeout=60), "the auto-started daemon never answered"
        assert any(m.type == types.MessageType.Warning and "daemon" in m.message for m in client.log_messages)
        counters = (await stats(client))["suggestions"]
        assert counters["unavailable"] >= 1 and counters["generations"] >= 1
        assert (await stats(client))["daemon"]["status"] == "ok"
    finally:
        stop_started_daemon(localspec_home)


async def test_daemon_down_without_autostart_warns_and_starts_nothing(
    tiny_models: TinyModels, localspec_home: Path, start_lsp: StartLsp, tmp_path: Path
) -> None:
    write_config(localspec_home, tiny_models)
    client = await start_lsp(localspec_home, {**FAST, "autoStartDaemon": False})
    uri = open_document(client, tmp_path, "main.py", DOC)

    started = time.monotonic()
    assert await inline(client, uri, CURSOR) == []
    assert await inline(client, uri, CURSOR) == []
    assert time.monotonic() - started < 1.0

    warnings = [m.message for m in client.log_messages if m.type == types.MessageType.Warning]
    assert len(warnings) == 1 and "localspec serve" in warnings[0]
    assert not (localspec_home / "state" / "daemon.json").exists()
    assert (await stats(client))["suggestions"]["unavailable"] == 2


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to a language server listening on `port`, once it listens."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            return await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            assert time.monotonic() < deadline, "the TCP server never listened"
            await asyncio.sleep(0.05)


def _lsp_message(body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return b"Content-Length: %d\r\n\r\n" % len(data) + data


async def _read_message(stdout: asyncio.StreamReader) -> dict[str, Any]:
    header = await asyncio.wait_for(stdout.readuntil(b"\r\n\r\n"), TIMEOUT)
    length = int(header.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    return dict(json.loads(await asyncio.wait_for(stdout.readexactly(length), TIMEOUT)))


async def test_tcp_transport_serves_an_editor(localspec_home: Path) -> None:
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        *SERVER, "--tcp", f"127.0.0.1:{port}", env=lsp_env(localspec_home), stderr=asyncio.subprocess.PIPE
    )
    try:
        reader, writer = await _connect(port)
        initialize = {"capabilities": {}, "processId": None}
        writer.write(_lsp_message({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": initialize}))
        await writer.drain()
        response = await _read_message(reader)
        writer.close()
        assert response["id"] == 1
        capabilities = response["result"]["capabilities"]
        assert capabilities["inlineCompletionProvider"] is not None and "completionProvider" in capabilities
        assert sorted(capabilities["executeCommandProvider"]["commands"]) == [
            "localspec.stats",
            "localspec.toggle",
        ]
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), TIMEOUT)


NO_AUTOSTART = {"autoStartDaemon": False}


async def test_stdin_that_is_a_file_is_served_too(localspec_home: Path, tmp_path: Path) -> None:
    """Editors give a pipe, which the event loop reads; a file (as a script might give) goes through pygls's own
    threaded reader, and is answered the same."""
    script = tmp_path / "session.lsp"
    script.write_bytes(
        _lsp_message(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                # No daemon runs here, and none may be started: it would outlive the test.
                "params": {"capabilities": {}, "processId": None, "initializationOptions": NO_AUTOSTART},
            }
        )
        + _lsp_message({"jsonrpc": "2.0", "method": "initialized", "params": {}})
        + _lsp_message({"jsonrpc": "2.0", "id": 2, "method": "shutdown"})
        + _lsp_message({"jsonrpc": "2.0", "method": "exit"})
    )
    with script.open("rb") as stdin:
        process = await asyncio.create_subprocess_exec(
            *SERVER, stdin=stdin, stdout=asyncio.subprocess.PIPE, env=lsp_env(localspec_home)
        )
        out, _ = await asyncio.wait_for(process.communicate(), TIMEOUT)
    stdout = asyncio.StreamReader()
    stdout.feed_data(out)
    stdout.feed_eof()
    assert (await _answer(stdout, 1))["result"]["capabilities"]["inlineCompletionProvider"] is not None
    assert (await _answer(stdout, 2))["result"] is None


async def _answer(stdout: asyncio.StreamReader, request_id: int) -> dict[str, Any]:
    """The server's answer to `request_id`, skipping its notifications."""
    while True:
        message = await _read_message(stdout)
        if message.get("id") == request_id and "method" not in message:
            return message


@pytest.mark.parametrize("transport", ["stdio", "tcp"])
async def test_a_request_is_answered_for_the_document_as_it_was_when_it_came(
    daemon: RunningDaemon, tmp_path: Path, transport: str
) -> None:
    """A request, then an edit, in one write from the editor: the suggestion is for the text the request was made
    on (the server reads on its event loop, and must still take messages up in order)."""
    expected = await daemon_infill(daemon, DOC[:CURSOR_OFFSET], DOC[CURSOR_OFFSET:])
    uri = (tmp_path / "main.py").as_uri()
    if transport == "stdio":
        process = await asyncio.create_subprocess_exec(
            *SERVER, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=lsp_env(daemon.home)
        )
        assert process.stdin is not None and process.stdout is not None
        stdout, stdin = process.stdout, process.stdin
    else:
        port = _free_port()
        process = await asyncio.create_subprocess_exec(
            *SERVER, "--tcp", f"127.0.0.1:{port}", env=lsp_env(daemon.home), stderr=asyncio.subprocess.PIPE
        )
        stdout, stdin = await _connect(port)
    try:
        stdin.write(
            _lsp_message(
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "initialize",
                    "params": {"capabilities": {}, "processId": None, "initializationOptions": FAST},
                }
            )
        )
        await _answer(stdout, 1)
        document = {"uri": uri, "languageId": "python", "version": 1, "text": DOC}
        stdin.write(
            _lsp_message({"jsonrpc": "2.0", "method": "initialized", "params": {}})
            + _lsp_message(
                {"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": document}}
            )
        )
        position = {"line": CURSOR.line, "character": CURSOR.character}
        request = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "textDocument/inlineCompletion",
            "params": {"textDocument": {"uri": uri}, "position": position, "context": {"triggerKind": 2}},
        }
        edit = {
            "jsonrpc": "2.0",
            "method": "textDocument/didChange",
            "params": {
                "textDocument": {"uri": uri, "version": 2},
                "contentChanges": [{"text": "x = 1\n" * 20}],
            },
        }
        stdin.write(_lsp_message(request) + _lsp_message(edit))
        answer = await _answer(stdout, 2)
        items = answer["result"]["items"] if answer.get("result") else []
        assert [item["insertText"] for item in items] == [expected]
    finally:
        process.kill()
        await process.wait()


async def warm_up_progress(client: LanguageClient) -> list[list[Any]]:
    """Each warm-up progress the server showed (begin, reports, end), once every one has ended."""

    async def ended() -> bool:
        shown = client.progress_reports.values()
        return bool(shown) and all(r and isinstance(r[-1], types.WorkDoneProgressEnd) for r in shown)

    assert await wait_until(ended)
    return list(client.progress_reports.values())


def long_document(functions: int = 30) -> str:
    """A file long enough for several prompt windows."""
    body = "".join(
        f"def function_{i}(value):\n    total = value * {i}\n    return total + {i * 3}\n\n"
        for i in range(functions)
    )
    return "import math\n\n" + body


async def test_an_opened_file_is_warmed_so_a_jump_reuses_the_daemons_cache(
    daemon: RunningDaemon, start_lsp: StartLsp, tmp_path: Path
) -> None:
    client = await start_lsp(daemon.home, {**FAST, "warmFiles": True, "prefixLines": 8, "windowStepLines": 8})
    text = long_document()
    uri = open_document(client, tmp_path, "main.py", text)

    async def warmed() -> bool:
        current = await stats(client)
        return current["warming"] == 0 and current["warmed"] > 0

    assert await wait_until(warmed)
    windows = (await stats(client))["warmed"]
    assert windows == len(warm_windows(text, LspSettings(prefix_lines=8, window_step_lines=8)))
    prefills = (await daemon_stats(daemon))["requests"]["prefill"]
    assert prefills == windows
    # The editor was shown the warm-up as progress, from its start to its end.
    [shown] = await warm_up_progress(client)
    assert (
        isinstance(shown[0], types.WorkDoneProgressBegin)
        and shown[0].title == "localspec: warming open files"
    )
    assert shown[-1] == types.WorkDoneProgressEnd(message=f"{windows} windows warmed")

    # Jump to a function far down the file: the daemon evaluates only the code after the window's cached start.
    line = text.splitlines().index("def function_20(value):") + 1
    items = await inline(client, uri, types.Position(line=line, character=4))
    [jump] = [entry for entry in (await daemon_stats(daemon))["recent"] if entry["kind"] == "infill"]
    assert jump["cached_tokens"] > jump["prompt_tokens"] // 2
    assert (await daemon_stats(daemon))["engine"]["prompt_cache"]["restores"] >= 1
    # And the suggestion is what the daemon gives for the same prompt from scratch.
    offset = len("".join(text.splitlines(keepends=True)[:line])) + 4
    prompt = build_prompt(
        text, offset, "main.py", LspSettings(prefix_lines=8, window_step_lines=8, line_mode="auto")
    )
    expected = await daemon_infill(daemon, prompt.prefix, prompt.suffix, single_line=prompt.single_line)
    assert [item.insert_text for item in items] == ([expected] if expected else [])


async def test_warming_a_file_the_prompt_cache_cannot_hold_keeps_the_windows_nearest_the_cursor(
    tiny_models: TinyModels, localspec_home: Path, start_lsp: StartLsp, tmp_path: Path
) -> None:
    # 1 MiB of prompt cache holds a handful of this file's windows (about 100 kB each with the tiny models).
    (localspec_home / "config").mkdir(parents=True, exist_ok=True)
    (localspec_home / "config" / "config.toml").write_text(
        "[engine]\nprompt_cache_mb = 1\n", encoding="utf-8"
    )
    daemon = start_daemon(localspec_home, tiny_serve_args(tiny_models))
    try:
        options = {**FAST, "warmFiles": True, "prefixLines": 8, "windowStepLines": 8}
        client = await start_lsp(daemon.home, options)
        text = long_document()
        windows = len(warm_windows(text, LspSettings(prefix_lines=8, window_step_lines=8)))
        uri = open_document(client, tmp_path, "main.py", text)

        async def warmed_more_than(count: int) -> bool:
            current = await stats(client)
            return current["warming"] == 0 and current["warmed"] > count

        # The warm-up stops before its copies fill the cache: none was pushed out, the rest wait for the cursor.
        assert await wait_until(lambda: warmed_more_than(0))
        first = await stats(client)
        cache = (await daemon_stats(daemon))["engine"]["prompt_cache"]
        assert first["warm_waiting"] > 0 and first["warmed"] + first["warm_waiting"] == windows
        assert (cache["dropped"], cache["entries"]) == (0, first["warmed"])
        [shown] = await warm_up_progress(client)
        assert shown[-1] == types.WorkDoneProgressEnd(
            message=f"{first['warmed']} windows warmed; {first['warm_waiting']} wait for the cursor "
            "(the daemon's prompt cache is full)"
        )

        # A suggestion at the end of the file: the windows near it are warmed now, so a jump near there finds its
        # window in the cache (the oldest windows, at the file's start, make room).
        lines = text.splitlines()
        before = max(entry["id"] for entry in (await daemon_stats(daemon))["recent"])
        await inline(
            client, uri, types.Position(line=lines.index("def function_28(value):") + 1, character=4)
        )
        assert await wait_until(lambda: warmed_more_than(first["warmed"]))
        # The suggestion went first: the windows near it were warmed after it, not ahead of it.
        since = sorted(
            (entry["id"], entry["kind"])
            for entry in (await daemon_stats(daemon))["recent"]
            if entry["id"] > before
        )
        assert since[0][1] == "infill" and "prefill" in {kind for _, kind in since}
        await inline(
            client, uri, types.Position(line=lines.index("def function_26(value):") + 1, character=4)
        )
        *_, jump = [entry for entry in (await daemon_stats(daemon))["recent"] if entry["kind"] == "infill"]
        assert jump["cached_tokens"] > jump["prompt_tokens"] // 2
    finally:
        stop_daemon(daemon.process)


async def test_after_the_daemon_restarts_the_open_files_are_warmed_again(
    tiny_models: TinyModels, localspec_home: Path, start_lsp: StartLsp, tmp_path: Path
) -> None:
    daemon = start_daemon(localspec_home, tiny_serve_args(tiny_models))
    try:
        options = {
            **FAST,
            "warmFiles": True,
            "prefixLines": 8,
            "windowStepLines": 8,
            "autoStartDaemon": False,
        }
        client = await start_lsp(daemon.home, options)
        text = long_document(12)
        windows = len(warm_windows(text, LspSettings(prefix_lines=8, window_step_lines=8)))
        uri = open_document(client, tmp_path, "main.py", text)

        async def warmed(count: int) -> bool:
            current = await stats(client)
            return current["warming"] == 0 and current["warmed"] == count

        assert await wait_until(lambda: warmed(windows))
        stop_daemon(daemon.process)
        # A new daemon starts with an empty prompt cache: the first answer from it names another cache, and the
        # language server warms the open file again (its windows were warm only in the old daemon).
        daemon = start_daemon(localspec_home, tiny_serve_args(tiny_models))
        await inline(client, uri, types.Position(line=3, character=4))
        assert await wait_until(lambda: warmed(2 * windows))
        assert (await daemon_stats(daemon))["requests"]["prefill"] == windows
    finally:
        stop_daemon(daemon.process)


async def test_an_edit_under_a_cached_suggestion_is_never_answered_from_the_cache(
    daemon: RunningDaemon, start_lsp: StartLsp, tmp_path: Path
) -> None:
    client = await start_lsp(daemon.home, FAST)
    uri = open_document(client, tmp_path, "main.py", DOC)
    [first] = await inline(client, uri, CURSOR)
    # Change the code after the cursor (what the suggestion was made to fit), then ask at the same place.
    edited = DOC.replace('print("😀", add(1, 2))', "print(add(3, 4) * 2)")
    replace_all(client, uri, 2, edited)
    items = await inline(client, uri, CURSOR)
    current = (await stats(client))["suggestions"]
    assert current["cache_hits"] == 0 and current["generations"] == 2
    expected = await daemon_infill(daemon, edited[:CURSOR_OFFSET], edited[CURSOR_OFFSET:])
    assert [item.insert_text for item in items] == ([expected] if expected else [])
    assert first.insert_text is not None
