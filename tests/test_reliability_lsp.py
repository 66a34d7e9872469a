"""The language server under abuse: a storm of superseded and cancelled completions, a daemon killed
mid-suggestion, and requests no editor should send (positions outside the text, unknown documents, offsets
inside a surrogate pair, enormous files). A real LSP client (pytest-lsp) talks to `localspec lsp` over stdio,
which talks to a real daemon on tiny models.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import test_lsp_server as lsp
from conftest import RunningDaemon, start_daemon, stop_daemon
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pytest_lsp import LanguageClient
from test_reliability_load import RSS_BOUND_MB, rss_mb, stats, wait_quiet

start_lsp = lsp.start_lsp  # the fixture: `localspec lsp` processes with a workspace folder
DOC = lsp.DOC
CURSOR = lsp.CURSOR
# Every request generates (no cache, no pre-compute, no debounce) and would run for long: only a cancel ends it.
STORM = {"debounceMs": 0, "maxTokens": 1500, "precompute": False, "cacheSize": 0}


def _write_config(home: Path, pair: tuple[Path, Path]) -> None:
    """Models in config.toml, so a daemon the language server starts by itself serves the same pair."""
    (home / "config").mkdir(parents=True, exist_ok=True)
    (home / "config" / "config.toml").write_text(
        f'[models]\ntarget = "{pair[0]}"\ndraft = "{pair[1]}"\n'
        "[engine]\nn_ctx = 2048\nthreads = 1\n[server]\nport = 0\n",
        encoding="utf-8",
    )


@pytest.fixture
def endless_daemon(endless_pair: tuple[Path, Path], localspec_home: Path) -> Any:
    _write_config(localspec_home, endless_pair)
    running = start_daemon(localspec_home, [])
    try:
        yield running
    finally:
        stop_daemon(running.process)


def _configure(client: LanguageClient, **settings: Any) -> None:
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"localspec": settings})
    )


async def lsp_storm(
    client: LanguageClient, uri: str, total: int, seed: int = 0, cancel_share: float = 0.25
) -> dict[str, int]:
    """`total` inline requests, one per keystroke, none awaited before the next: each supersedes the one
    before, and a share is cancelled outright with $/cancelRequest. Returns how each ended."""
    random.seed(seed)
    line, column = CURSOR.line, CURSOR.character
    pending: list[asyncio.Future[Any]] = []
    for i in range(total):
        lsp.type_text(client, uri, i + 2, types.Position(line=line, character=column), "x")
        column += 1
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=line, character=column),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
        )
        request_id = f"storm-{i}"
        future = asyncio.ensure_future(
            client.protocol.send_request_async(
                types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id=request_id
            )
        )
        cancel = random.random() < cancel_share
        # Let some requests reach the daemon and start generating before the next keystroke.
        await asyncio.sleep(random.choice((0, 0, 0.005, 0.02)))
        if cancel:
            client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=request_id))
        pending.append(future)
    outcome = {"empty": 0, "suggested": 0, "cancelled": 0}
    for answer in pending:
        try:
            result = await asyncio.wait_for(answer, 60)
        except JsonRpcException:
            outcome["cancelled"] += 1
            continue
        outcome["suggested" if result and result.items else "empty"] += 1
    return outcome


def cut_off(counters: dict[str, Any], outcome: dict[str, int], total: int) -> int:
    """How many of the storm's `total` requests were superseded or cancelled, counting those cancelled before the
    server took them up (they never reach the suggester, nor the daemon); checks that none failed."""
    never_started = total - counters["requests"]
    assert 0 <= never_started <= outcome["cancelled"] and counters["errors"] == 0, (outcome, counters)
    return int(counters["superseded"] + counters["cancelled"] + never_started)


async def test_lsp_cancellation_storm_leaves_the_daemon_clean(
    endless_daemon: RunningDaemon, start_lsp: lsp.StartLsp, tmp_path: Path
) -> None:
    client = await start_lsp(endless_daemon.home, STORM)
    uri = lsp.open_document(client, tmp_path, "main.py", DOC)
    baseline = wait_quiet(endless_daemon)
    rss_before = rss_mb(endless_daemon)

    outcome = await lsp_storm(client, uri, 120, seed=3)

    # Nearly every request was superseded or cancelled (a single-line suggestion may finish between two
    # keystrokes); none failed.
    assert outcome["suggested"] <= 5 and sum(outcome.values()) == 120, outcome
    assert outcome["cancelled"] >= 10, outcome
    counters = (await lsp.stats(client))["suggestions"]
    assert cut_off(counters, outcome, 120) >= 115, counters
    after = wait_quiet(endless_daemon)
    assert not any(slot["busy"] for slot in after["engine"]["slots"])
    assert after["errors"] == baseline["errors"]
    assert (await lsp.stats(client))["in_flight"] == 0
    received = sum(after["requests"].values()) - sum(baseline["requests"].values())
    assert received >= 10 and after["finish_reasons"].get("cancelled", 0) >= received - 5, after
    assert rss_mb(endless_daemon) - rss_before < RSS_BOUND_MB

    # The next request answers normally: exactly what the daemon answers for the same text.
    _configure(client, debounceMs=0, maxTokens=16, precompute=False, cacheSize=0)
    text = DOC[: lsp.CURSOR_OFFSET] + "x" * 120 + DOC[lsp.CURSOR_OFFSET :]
    offset = lsp.CURSOR_OFFSET + 120
    expected = await lsp.daemon_infill(endless_daemon, text[:offset], text[offset:], single_line=True)
    items = await lsp.inline(client, uri, types.Position(line=CURSOR.line, character=CURSOR.character + 120))
    assert [item.insert_text for item in items] == [expected]


async def test_daemon_killed_mid_suggestion_answers_empty_and_is_restarted(
    endless_daemon: RunningDaemon, start_lsp: lsp.StartLsp, tmp_path: Path
) -> None:
    client = await start_lsp(endless_daemon.home, {**STORM, "maxTokens": 2048})
    uri = lsp.open_document(client, tmp_path, "main.py", DOC)
    request = lsp.inline_request(client, uri, CURSOR)
    deadline = time.monotonic() + lsp.TIMEOUT
    while stats(endless_daemon)["active"] == 0:
        assert time.monotonic() < deadline, "the suggestion never started generating"
        await asyncio.sleep(0.01)
    endless_daemon.process.send_signal(signal.SIGKILL)
    endless_daemon.process.wait(timeout=10)

    started = time.monotonic()
    result = await asyncio.wait_for(request, lsp.TIMEOUT)
    assert list(result.items) == [] and time.monotonic() - started < 5
    try:
        _configure(client, debounceMs=0, maxTokens=8, precompute=False, cacheSize=0)

        async def suggesting() -> bool:
            return bool(await lsp.inline(client, uri, CURSOR))

        assert await lsp.wait_until(suggesting, timeout=60), "the language server never restarted the daemon"
        warnings = [m.message for m in client.log_messages if m.type == types.MessageType.Warning]
        assert any("daemon" in message for message in warnings), warnings
        described = (await lsp.stats(client))["daemon"]
        assert described["status"] == "ok" and described["url"] != endless_daemon.url
    finally:
        lsp.stop_started_daemon(endless_daemon.home)


# ---- requests no editor should send ----

EMOJI_DOC = 'x = "😀😀"\ny = \n'


async def _inline_raw(client: LanguageClient, params: dict[str, Any]) -> Any:
    """Send params as raw JSON, as a buggy editor could (the test client's typed requests would refuse to
    serialize them): a plain JSON-RPC message, with a future for its answer registered by hand."""
    protocol = client.protocol
    msg_id = f"raw-{random.randrange(1 << 30)}"
    answer: Future[Any] = Future()
    protocol._request_futures[msg_id] = answer
    message = {"jsonrpc": "2.0", "id": msg_id, "method": types.TEXT_DOCUMENT_INLINE_COMPLETION}
    protocol._send_data({**message, "params": params})
    return await asyncio.wait_for(asyncio.wrap_future(answer), lsp.TIMEOUT)


async def test_bad_positions_and_unknown_documents_are_answered_not_crashed_on(
    endless_daemon: RunningDaemon, start_lsp: lsp.StartLsp, tmp_path: Path
) -> None:
    client = await start_lsp(endless_daemon.home, {**STORM, "maxTokens": 4})
    uri = lsp.open_document(client, tmp_path, "emoji.py", EMOJI_DOC)

    # Inside a surrogate pair (the first emoji is UTF-16 units 5-6): answered at that character's start.
    items = await lsp.inline(client, uri, types.Position(line=0, character=6))
    assert all(item.range is None or item.range.start.character in (5, 6) for item in items)
    for line, character in ((0, 10_000), (10_000, 0), (2**31 - 1, 2**31 - 1)):
        items = await lsp.inline(client, uri, types.Position(line=line, character=character))
        for item in items:
            assert item.range is not None and item.range.start.line <= 2

    # Documents the server never saw: missing on disk, not UTF-8, a folder, another scheme.
    binary = tmp_path / "project" / "blob.py"
    binary.write_bytes(b"\xff\xfe\x00garbage\x80")
    for unknown in (
        (tmp_path / "project" / "missing.py").as_uri(),
        binary.as_uri(),
        (tmp_path / "project").as_uri(),
        "untitled:Untitled-1",
        "not a uri at all",
    ):
        items = await lsp.inline(client, unknown, types.Position(line=0, character=0))
        assert isinstance(items, list), unknown
    # A closed document is forgotten like any other.
    client.text_document_did_close(
        types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=uri))
    )
    assert isinstance(await lsp.inline(client, uri, types.Position(line=0, character=0)), list)

    # Edits with ranges outside the document or inside a surrogate pair do not take the server down.
    other = lsp.open_document(client, tmp_path, "edits.py", EMOJI_DOC)
    for version, (start, end) in enumerate(((0, 6), (50, 50), (0, 10_000))):
        client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=other, version=version + 2),
                content_changes=[
                    types.TextDocumentContentChangePartial(
                        range=types.Range(
                            start=types.Position(line=start if start == 50 else 0, character=start),
                            end=types.Position(line=end if end == 50 else 0, character=end),
                        ),
                        text="z",
                    )
                ],
            )
        )
    assert isinstance(await lsp.inline(client, other, types.Position(line=1, character=4)), list)
    assert (await lsp.stats(client))["suggestions"]["errors"] == 0

    # Negative or non-integer positions, missing fields: an error answer for that request (an editor must
    # not wait forever for it), and the server carries on.
    context = {"triggerKind": 1}
    for params in (
        {"textDocument": {"uri": other}, "position": {"line": -1, "character": 0}, "context": context},
        {"textDocument": {"uri": other}, "position": {"line": 0, "character": -5}, "context": context},
        {"textDocument": {"uri": other}, "position": {"line": "1", "character": None}, "context": context},
        {"textDocument": {"uri": other}, "context": context},
    ):
        with pytest.raises(JsonRpcException, match="nvalid"):
            await _inline_raw(client, params)
    assert isinstance(await lsp.inline(client, other, types.Position(line=1, character=4)), list)


async def test_enormous_files_are_answered_quickly(
    endless_daemon: RunningDaemon, start_lsp: lsp.StartLsp, tmp_path: Path
) -> None:
    client = await start_lsp(endless_daemon.home, {**STORM, "maxTokens": 4})
    line = "value = compute(value, 12345)  # a line of ordinary code\n"
    huge = line * 100_000  # ~5.8 MB, 100k lines
    uri = lsp.open_document(client, tmp_path, "huge.py", huge)
    for position in (
        types.Position(line=50_000, character=8),
        types.Position(line=100_000, character=0),
        types.Position(line=0, character=0),
    ):
        started = time.monotonic()
        items = await lsp.inline(client, uri, position)
        assert len(items) <= 1  # (an empty suggestion is a valid answer)
        assert time.monotonic() - started < 10, "the prompt window must not grow with the file"
    # Typing in it stays cheap (incremental changes), and one huge line is windowed too.
    lsp.type_text(client, uri, 2, types.Position(line=50_000, character=0), "# edit\n")
    one_line = "x" * 2_000_000
    other = lsp.open_document(client, tmp_path, "minified.js", one_line)
    items = await lsp.inline(client, other, types.Position(line=0, character=1_000_000))
    assert isinstance(items, list)
    served = stats(endless_daemon)
    suggestions = [r for r in served["recent"] if r["kind"] == "infill"]
    assert len(suggestions) == 4 and served["errors"] == 0  # each request reached the daemon
    assert max(r["prompt_tokens"] for r in served["recent"]) < 2048
    # A file longer than warmMaxLines is not warmed; the one-line file is, in one window.
    assert served["requests"].get("prefill", 0) <= 1
