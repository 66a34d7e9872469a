"""localspec.client against a real daemon: discovery, sync and async streaming, cancellation, error mapping."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from conftest import RunningDaemon, start_daemon, stop_daemon

from localspec import rendezvous
from localspec.client import AsyncDaemonClient, DaemonClient, connect, discover, discovery_stamp
from localspec.errors import ContextOverflowError, DaemonUnavailableError, InvalidRequestError

MESSAGES = [{"role": "user", "content": "hello"}]


def test_discover_and_ensure_find_the_running_daemon(daemon: RunningDaemon) -> None:
    info = discover()
    assert info is not None and info.url == daemon.url and info.pid == daemon.process.pid
    with connect(autostart=False) as client:
        assert client.url == daemon.url
        assert client.token == daemon.token
        assert client.health()["status"] == "ok"


def test_the_discovery_stamp_changes_whenever_the_daemon_record_does(localspec_home: Path) -> None:
    assert discovery_stamp() is None
    rendezvous.write("127.0.0.1", 1234)
    first = discovery_stamp()
    assert first is not None and discovery_stamp() == first
    rendezvous.write("127.0.0.1", 1234)  # a restarted daemon on the same port
    second = discovery_stamp()
    assert second is not None and second != first
    rendezvous.remove()
    assert discovery_stamp() is None


def test_sync_stream_matches_the_whole_answer(daemon: RunningDaemon) -> None:
    with DaemonClient() as client:
        whole = client.chat(MESSAGES, max_tokens=24)
        with client.stream_chat(MESSAGES, max_tokens=24) as stream:
            text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in stream)
        assert text == whole["choices"][0]["message"]["content"]
        assert stream.final is not None
        # Same tokens generated (the cached prompt share differs: the second request reuses the first's KV).
        assert stream.final["usage"]["completion_tokens"] == whole["usage"]["completion_tokens"]
        infill = client.infill("x = ", "\n", max_tokens=8)
        with client.stream_infill("x = ", "\n", max_tokens=8) as infill_stream:
            assert "".join(c["content"] for c in infill_stream) == infill["content"]


async def test_async_stream_matches_the_whole_answer(daemon: RunningDaemon) -> None:
    async with AsyncDaemonClient() as client:
        whole = await client.complete("abc", max_tokens=20)
        pieces = []
        async with client.stream_complete("abc", max_tokens=20) as stream:
            async for chunk in stream:
                pieces.append(chunk["choices"][0]["text"])
        assert "".join(pieces) == whole["choices"][0]["text"]
        assert (
            stream.final is not None
            and stream.final["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
        )
        assert (await client.infill("a", "b", max_tokens=4))["usage"]["completion_tokens"] >= 1


async def test_a_stream_read_to_its_end_leaves_its_connection_open_for_the_next_request(
    daemon: RunningDaemon,
) -> None:
    # An editor streams a suggestion per keystroke: a connection dropped after each would make every request
    # connect anew. (The connection pools are the libraries' private state: no public accessor exists.)
    async with AsyncDaemonClient() as client:
        for _ in range(2):
            async with client.stream_infill("x = ", "\n", max_tokens=6) as stream:
                async for _chunk in stream:
                    pass
            assert stream.final is not None
            connector = client._http().connector
            assert connector is not None
            idle = [conn for conns in connector._conns.values() for conn in conns]
            assert len(idle) == 1 and not connector._acquired
    with DaemonClient() as sync_client:
        with sync_client.stream_infill("x = ", "\n", max_tokens=6) as sync_stream:
            for _chunk in sync_stream:
                pass
        sync_pool = sync_client._http._transport._pool  # type: ignore[attr-defined]
        assert len(sync_pool.connections) == 1 and sync_pool.connections[0].is_idle()


async def test_the_async_client_lets_go_of_an_idle_connection_before_the_daemon_closes_it(
    daemon: RunningDaemon,
) -> None:
    # Were the daemon first, a request could go out on a connection it is closing at that moment, and fail: aiohttp
    # retries only idempotent requests, and an editor's suggestions are POSTs. (aiohttp's pool setting is private.)
    from localspec.daemon.serve import KEEP_ALIVE_S

    async with AsyncDaemonClient() as client:
        await client.infill("x = ", "\n", max_tokens=2)
        connector = client._http().connector
        assert connector is not None
        assert 0 < connector._keepalive_timeout < KEEP_ALIVE_S  # type: ignore[attr-defined]


async def test_async_stream_closed_early_cancels_on_the_daemon(daemon: RunningDaemon) -> None:
    async with AsyncDaemonClient() as client:
        async with client.stream_chat(MESSAGES, max_tokens=400, slot="early") as stream:
            async for _chunk in stream:
                break
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            recent = (await client.stats())["recent"]
            if recent and recent[-1]["slot"] == "early":
                # The tiny model may also have reached its end-of-generation token first; either way it ended.
                assert recent[-1]["finish_reason"] in ("cancelled", "stop")
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the early-closed generation never finished")


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
async def test_a_request_cancelled_twice_still_stops_its_generation(
    endless_pair: tuple[Path, Path], localspec_home: Path, streamed: bool
) -> None:
    """A request is often cancelled twice (an editor's superseded by the next keystroke's then cancelled by the
    editor; a chat's Esc pressed twice). The client closes the connection after a cancel, which is how the daemon
    learns to stop; with httpx a second cancel arriving during that clean-up (a turn of the event loop later) cut
    it short, and the daemon generated on to max_tokens (encode/httpcore#1115)."""
    running = start_daemon(
        localspec_home, ["--target", str(endless_pair[0]), "--n-ctx", "2048", "--threads", "1"]
    )
    try:
        async with AsyncDaemonClient() as client, AsyncDaemonClient() as watcher:
            for turns in range(4):  # loop turns between the two cancels
                slot = f"twice-{turns}"
                started = asyncio.Event()

                async def generate(slot: str = slot, started: asyncio.Event = started) -> None:
                    prompt = "def f(x):\n    return"
                    if not streamed:
                        started.set()
                        await client.infill(prompt, max_tokens=1500, slot=slot)
                        return
                    async with client.stream_infill(prompt, max_tokens=1500, slot=slot) as stream:
                        async for _chunk in stream:
                            started.set()

                request = asyncio.ensure_future(generate())
                await started.wait()
                deadline = time.monotonic() + 30
                while (await watcher.stats())["active"] == 0:
                    assert time.monotonic() < deadline and not request.done(), "the generation never started"
                    await asyncio.sleep(0.01)
                request.cancel()
                for _ in range(turns):
                    await asyncio.sleep(0)
                request.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await request
                while (stats := await watcher.stats())["active"] or stats["recent"][-1]["slot"] != slot:
                    assert time.monotonic() < deadline, "the generation never ended"
                    await asyncio.sleep(0.01)
                record = stats["recent"][-1]
                assert record["finish_reason"] == "cancelled" and record["tokens"] < 1500, (turns, record)
    finally:
        stop_daemon(running.process)


def test_errors_map_to_the_localspec_hierarchy(daemon: RunningDaemon) -> None:
    with DaemonClient() as client:
        with pytest.raises(ContextOverflowError):
            client.complete("word " * 3000, max_tokens=4)
        with pytest.raises(InvalidRequestError, match="max_tokens"):
            client.complete("x", max_tokens=0)
        with pytest.raises(ContextOverflowError):
            client.stream_complete("word " * 3000, max_tokens=4)
    with (
        DaemonClient(daemon.url, token="wrong-token-wrong-token") as bad,
        pytest.raises(DaemonUnavailableError),
    ):
        bad.models()


async def test_the_async_client_maps_errors_as_the_sync_one_does(daemon: RunningDaemon) -> None:
    async with AsyncDaemonClient() as client:
        with pytest.raises(ContextOverflowError):
            await client.complete("word " * 3000, max_tokens=4)
        with pytest.raises(InvalidRequestError, match="max_tokens"):
            await client.complete("x", max_tokens=0)
        with pytest.raises(ContextOverflowError):
            async with client.stream_complete("word " * 3000, max_tokens=4):
                pass
    async with AsyncDaemonClient(daemon.url, token="wrong-token-wrong-token") as bad:
        with pytest.raises(DaemonUnavailableError):
            await bad.models()
    async with AsyncDaemonClient() as client:
        await client.health()  # (a connection kept for reuse, then the daemon goes)
        daemon.process.terminate()
        daemon.process.wait(timeout=15)
        with pytest.raises(DaemonUnavailableError, match="localspec serve"):
            await client.health()
        with pytest.raises(DaemonUnavailableError, match="localspec serve"):
            async with client.stream_infill("x = ", "\n", max_tokens=4):
                pass


def test_a_stopped_daemon_is_reported_as_unavailable(daemon: RunningDaemon) -> None:
    client = DaemonClient()
    daemon.process.terminate()
    daemon.process.wait(timeout=15)
    with pytest.raises(DaemonUnavailableError, match="localspec serve"):
        client.health()
    client.close()
    assert discover() is None
