"""The language server's warm-up queue, with a daemon stand-in that records the prefills it is asked for."""

from __future__ import annotations

import asyncio

from localspec.lsp.prompt import InfillPrompt, warm_windows
from localspec.lsp.settings import LspSettings
from localspec.lsp.warmup import CONTEXT_REFRESH_S, REFRESH_WORK_SHARE, CacheRoom, Warmer

TEXT = "".join(f"line{i}\n" for i in range(40))
SETTINGS = LspSettings(prefix_lines=8, window_step_lines=8)


class RecordingDaemon:
    """Answers every prefill at once and keeps its prompt (the language server's side is under test)."""

    def __init__(self) -> None:
        self.prompts: list[InfillPrompt] = []

    async def prefill(self, prompt: InfillPrompt, timeout: float) -> CacheRoom | None:
        self.prompts.append(prompt)
        await asyncio.sleep(0)
        return None


async def _drain(warmer: Warmer) -> None:
    while warmer.pending:
        await asyncio.sleep(0)


async def test_a_refreshed_context_is_used_only_once_the_file_is_warmed_with_it() -> None:
    ring = [("b.py", "old chunk\n")]
    daemon = RecordingDaemon()
    warmer = Warmer(daemon, lambda: SETTINGS, lambda filename: list(ring))
    warmer.opened("file:///a.py", "a.py", TEXT)
    await _drain(warmer)
    windows = len(daemon.prompts)
    assert windows > 1 and all(p.extra == [("b.py", "old chunk\n")] for p in daemon.prompts)
    assert warmer.context("a.py") == [("b.py", "old chunk\n")]

    # The ring took in a new chunk and the context went stale: the new context is warmed in the background while
    # suggestions keep the old one, whose windows the daemon holds.
    ring.insert(0, ("c.py", "new chunk\n"))
    warmer.opened("file:///a.py", "a.py", TEXT)
    assert warmer.pending == windows
    assert warmer.context("a.py") == [("b.py", "old chunk\n")]
    await _drain(warmer)
    new_context = [("b.py", "old chunk\n"), ("c.py", "new chunk\n")]  # oldest chunk first
    assert all(p.extra == new_context for p in daemon.prompts[windows:])
    assert warmer.context("a.py") == new_context

    # An unchanged context warms nothing again.
    warmer.opened("file:///a.py", "a.py", TEXT)
    assert warmer.pending == 0


class SlowDaemon(RecordingDaemon):
    """Takes `seconds` of a fake clock for each prefill (a CPU's windows take seconds each)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def prefill(self, prompt: InfillPrompt, timeout: float) -> CacheRoom | None:
        self.now += self.seconds
        return await super().prefill(prompt, timeout)


async def test_a_files_context_is_refreshed_no_more_often_than_its_warm_up_allows() -> None:
    windows = len(warm_windows(TEXT, SETTINGS))
    for seconds in (0.0, 60.0):
        daemon = SlowDaemon(seconds)
        warmer = Warmer(daemon, lambda: SETTINGS, lambda filename: [], clock=daemon.clock)
        warmer.opened("file:///a.py", "a.py", TEXT)
        await _drain(warmer)
        assert warmer.warm_up_seconds("a.py") == windows * seconds
        # Cheap windows (a GPU): refreshed every CONTEXT_REFRESH_S. Slow ones: re-warming the whole file takes at
        # most REFRESH_WORK_SHARE of the time.
        period = max(CONTEXT_REFRESH_S, windows * seconds / REFRESH_WORK_SHARE)
        assert period == (CONTEXT_REFRESH_S if seconds == 0 else 3000.0)
        daemon.now = period - 1  # (since the context was taken, at the open)
        assert not warmer.context_is_stale("a.py")
        daemon.now = period + 1
        assert warmer.context_is_stale("a.py")


async def test_without_warming_a_refreshed_context_is_used_at_once() -> None:
    ring = [("b.py", "old chunk\n")]
    daemon = RecordingDaemon()
    off = LspSettings(prefix_lines=8, window_step_lines=8, warm_files=False)
    warmer = Warmer(daemon, lambda: off, lambda filename: list(ring))
    warmer.opened("file:///a.py", "a.py", TEXT)
    ring.append(("c.py", "new chunk\n"))
    warmer.opened("file:///a.py", "a.py", TEXT)
    assert warmer.context("a.py") == [("c.py", "new chunk\n"), ("b.py", "old chunk\n")]
    assert not daemon.prompts


class SmallCache:
    """Answers each prefill as a daemon whose prompt cache holds `max_bytes`, each copy taking `copy_bytes`."""

    def __init__(self, copy_bytes: int, max_bytes: int) -> None:
        self.room = CacheRoom(id="cache", kept=max_bytes > 0, copy_bytes=copy_bytes, max_bytes=max_bytes)
        self.prompts: list[InfillPrompt] = []

    async def prefill(self, prompt: InfillPrompt, timeout: float) -> CacheRoom | None:
        self.prompts.append(prompt)
        await asyncio.sleep(0)
        return self.room


async def test_a_warm_up_the_cache_cannot_hold_warms_the_windows_nearest_the_cursor_and_leaves_the_rest() -> (
    None
):
    windows = warm_windows(TEXT, SETTINGS)
    assert len(windows) == 5
    daemon = SmallCache(copy_bytes=100, max_bytes=250)  # room for two windows within ROOM_SHARE
    warmer = Warmer(daemon, lambda: SETTINGS, lambda filename: [])
    warmer.opened("file:///a.py", "a.py", TEXT)
    await _drain(warmer)
    # Before any cursor, in file order; then the rest waits.
    assert [windows.index(p.prefix) for p in daemon.prompts] == [0, 1]
    assert (warmer.pending, warmer.waiting) == (0, 3)

    # The cursor at the end of the file: its window, then the next nearest; the oldest windows (0, then 1) are
    # taken to be pushed out of the cache by those, and wait again.
    warmer.focus("file:///a.py", 39)
    await _drain(warmer)
    assert [windows.index(p.prefix) for p in daemon.prompts] == [0, 1, 3, 2]
    assert (warmer.pending, warmer.waiting) == (0, 3)

    # Back at the start: window 0 is warmed again.
    warmer.focus("file:///a.py", 9)
    await _drain(warmer)
    assert [windows.index(p.prefix) for p in daemon.prompts][4:] == [0, 1]


async def test_with_the_daemons_prompt_cache_off_one_window_is_warmed() -> None:
    daemon = SmallCache(copy_bytes=0, max_bytes=0)
    warmer = Warmer(daemon, lambda: SETTINGS, lambda filename: [])
    warmer.opened("file:///a.py", "a.py", TEXT)
    await _drain(warmer)
    assert len(daemon.prompts) == 1 and warmer.waiting == 4


async def test_no_window_is_warmed_while_a_suggestion_is_in_flight() -> None:
    daemon = RecordingDaemon()
    warmer = Warmer(daemon, lambda: SETTINGS, lambda filename: [])
    with warmer.suggesting():
        warmer.opened("file:///a.py", "a.py", TEXT)
        for _ in range(10):  # (the worker's turns: it would send its first prefill in the first)
            await asyncio.sleep(0)
        assert not daemon.prompts and warmer.pending == len(warm_windows(TEXT, SETTINGS))
    await _drain(warmer)
    assert len(daemon.prompts) == len(warm_windows(TEXT, SETTINGS))
