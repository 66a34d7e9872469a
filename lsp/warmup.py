"""Warming open files: the daemon evaluates, in the background, the prompt every cursor of a stretch of lines
shares, so that jumping anywhere in a file the server has seen costs only the code after the cursor.

A prompt is the extra context, the file's name, then the prefix window (which starts on a multiple of
`window_step_lines`, see prompt.window_anchor). For the daemon's cache to serve a later suggestion, everything
before the cursor must be the same text: so each file's extra context is frozen when the file is opened (and
refreshed at most every CONTEXT_REFRESH_S), rather than changing with every chunk the ring takes in. A refreshed
context is warmed first and used once every window of the file is warmed with it: until then suggestions keep
the old one, whose windows the daemon holds (a cold prompt is slow on a CPU). Warm-up requests are prefills
(`max_tokens: 0`): the daemon runs them when nothing else runs and keeps their KV in its prompt cache.

Where the prompt cache cannot hold every window (a 14B target's KV, many files, a small machine), warming on
would push out the cache's least recently used copies: the first windows warmed, the nearest to the cursor. So
the windows nearest the cursor are warmed only while they fill at most ROOM_SHARE of the cache (each prefill's
answer says what its copy took), and the rest wait until the cursor moves near them. A daemon whose answers name
another cache (it restarted, or loaded other models) holds none of them: the open files are warmed again.

While a suggestion is in flight no warm-up prefill is sent (`suggesting`): the first window warmed after the
cursor moves is the cursor's own, whose prompt the suggestion evaluates anyway, and a prefill sent ahead of the
suggestion would hold it up for a pass (docs/BENCHMARKS.md, the thirtieth lease).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from localspec.errors import DaemonUnavailableError, LocalspecError
from localspec.lsp.prompt import InfillPrompt, warm_windows, window_anchor
from localspec.lsp.settings import LspSettings

log = logging.getLogger(__name__)

# After an edit, wait for the typing to pause this long before warming the windows it changed.
REWARM_DELAY_S = 2.0
# A file's frozen extra context is taken anew (and the file warmed again) when older than both this and its warm-up
# time divided by REFRESH_WORK_SHARE: re-warming whole files then takes at most that share of the time (a big file
# takes minutes on a CPU, where a refresh every CONTEXT_REFRESH_S would keep the daemon busy for good).
CONTEXT_REFRESH_S = 600.0
REFRESH_WORK_SHARE = 0.1
PREFILL_TIMEOUT_S = 600.0
# The windows nearest the cursor are warmed while they take at most this share of the daemon's prompt cache; the
# rest is left to the suggestions' own copies.
ROOM_SHARE = 0.8


@dataclass(frozen=True)
class CacheRoom:
    """What a prefill's copy took of the daemon's prompt cache (its answer's `prompt_cache`, docs/API.md), and
    which cache that is."""

    id: str
    kept: bool
    copy_bytes: int
    max_bytes: int


class WarmUpObserver(Protocol):
    """Told how a stretch of warming goes (the editor's progress display, `warm_progress`)."""

    def update(self, warmed: int, left: int) -> None: ...

    def finish(self, message: str) -> None: ...


class PrefillBackend(Protocol):
    async def prefill(self, prompt: InfillPrompt, timeout: float) -> CacheRoom | None:
        """Evaluate `prompt` into the daemon's cache; None where the daemon does not say what the copy took."""
        ...


@dataclass(frozen=True)
class _Window:
    uri: str
    filename: str
    index: int  # the window's place in its file (its anchor's order)
    prefix: str
    context: tuple[tuple[str, str], ...]  # the extra context it is warmed with
    key: int  # names it (with its context) among the warmed windows: `_key`


class Warmer:
    def __init__(
        self,
        backend: PrefillBackend,
        settings: Callable[[], LspSettings],
        ring_context: Callable[[str], list[tuple[str, str]]],
        observer: WarmUpObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.observer = observer
        self._clock = clock
        self._settings = settings
        self._ring_context = ring_context
        self._contexts: dict[str, tuple[float, list[tuple[str, str]]]] = {}  # filename -> (frozen at, extra)
        self._candidates: dict[
            str, tuple[tuple[str, str], ...]
        ] = {}  # filename -> a newer context being warmed
        self._queue: list[_Window] = []
        self._windows: dict[
            str, dict[int, _Window]
        ] = {}  # uri -> its text's windows by key, as last scheduled
        self._warmed: dict[str, set[int]] = {}  # uri -> keys of the windows (with their context) evaluated
        # Windows the daemon's cache is taken to hold, least recently warmed first, with their copies' bytes.
        self._kept: dict[tuple[str, int], tuple[_Window, int]] = {}
        self._room: CacheRoom | None = None  # the last prefill's answer
        self._focus: tuple[str, int] | None = None  # (uri, window index) of the last suggestion
        self._task: asyncio.Task[None] | None = None
        self._rewarm: dict[str, asyncio.TimerHandle] = {}
        self._current: _Window | None = None  # the window being evaluated
        self._prefill_seconds = 0.0  # the warmed windows' time, for a file's warm-up cost
        self._suggestions = 0  # suggestions in flight (`suggesting`)
        self._no_suggestion = asyncio.Event()
        self._no_suggestion.set()
        self.warmed = 0
        self.failed = 0

    # ---- the context every prompt of a file shares ----

    def context(self, filename: str) -> list[tuple[str, str]]:
        """The file's extra context: the ring's chunks of other files as they were when it was frozen."""
        frozen = self._contexts.get(filename)
        if frozen is None:
            frozen = self._contexts[filename] = (self._clock(), self._ring_now(filename))
        return frozen[1]

    def _ring_now(self, filename: str) -> list[tuple[str, str]]:
        # Oldest chunk first: the order the chunks arrived in does not change as newer ones are added.
        return list(reversed(self._ring_context(filename)))

    def context_is_stale(self, filename: str) -> bool:
        frozen = self._contexts.get(filename)
        if frozen is None:
            return True
        return self._clock() - frozen[0] > max(
            CONTEXT_REFRESH_S, self.warm_up_seconds(filename) / REFRESH_WORK_SHARE
        )

    def warm_up_seconds(self, filename: str) -> float:
        """What warming every window of the file takes, at the mean time of the windows warmed so far."""
        if not self.warmed:
            return 0.0
        windows = sum(
            1
            for windows in self._windows.values()
            for window in windows.values()
            if window.filename == filename
        )
        return windows * self._prefill_seconds / self.warmed

    # ---- what to warm ----

    def opened(self, uri: str, filename: str, text: str) -> None:
        """A file was opened (or its context is stale): take its context anew and warm what that changes. A
        changed context replaces the current one once the file is warmed with it (at once where nothing is
        warmed)."""
        # An unchanged context keeps its windows' keys, so only windows not evaluated yet are warmed.
        new, current = self._ring_now(filename), self._contexts.get(filename)
        self._candidates.pop(filename, None)
        if current is None or new == current[1] or not self._warming_on(text):
            self._contexts[filename] = (self._clock(), new)
        else:
            self._contexts[filename] = (self._clock(), current[1])
            self._candidates[filename] = tuple(new)
        self.schedule(uri, filename, text)

    def _warming_on(self, text: str) -> bool:
        settings = self._settings()
        return settings.enable and settings.warm_files and text.count("\n") <= settings.warm_max_lines

    def schedule(self, uri: str, filename: str, text: str) -> None:
        """Queue the windows of `text` not evaluated yet (an edit changes only the windows that contain it)."""
        if not self._warming_on(text):
            return
        self._queue = [window for window in self._queue if window.uri != uri]
        done = self._warmed.setdefault(uri, set())
        candidate = self._candidates.get(filename)
        context = tuple(self.context(filename)) if candidate is None else candidate
        windows = self._windows[uri] = {}
        for index, prefix in enumerate(warm_windows(text, self._settings())):
            key = _key(prefix, context)
            window = windows[key] = _Window(uri, filename, index, prefix, context, key)
            if key not in done:
                self._queue.append(window)
        self._sort()
        self._promote_when_warm(filename)
        self._resume()

    def _promote_when_warm(self, filename: str) -> None:
        """Use the file's newer context once no window waits to be warmed with it."""
        candidate = self._candidates.get(filename)
        if candidate is None:
            return
        windows = [*self._queue, *([self._current] if self._current is not None else [])]
        if not any(w.filename == filename and w.context == candidate for w in windows):
            self._contexts[filename] = (self._clock(), list(self._candidates.pop(filename)))

    def _resume(self) -> None:
        if self._queue and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._work())

    def changed(self, uri: str, filename: str, text: Callable[[], str]) -> None:
        """The document was edited: warm what changed once the typing pauses."""
        pending = self._rewarm.pop(uri, None)
        if pending is not None:
            pending.cancel()
        loop = asyncio.get_running_loop()
        self._rewarm[uri] = loop.call_later(REWARM_DELAY_S, lambda: self.schedule(uri, filename, text()))

    def focus(self, uri: str, line: int) -> None:
        """The user is at `line`: warm that file's windows nearest to it first (and resume warming if the daemon was
        down when it stopped, or the cache had no room for the windows near the cursor's last place)."""
        settings = self._settings()
        step = max(1, settings.window_step_lines)
        self._focus = (uri, window_anchor(line, settings.prefix_lines, step) // step)
        self._sort()
        self._resume()

    @contextlib.contextmanager
    def suggesting(self) -> Iterator[None]:
        """A suggestion is in flight: warming sends no prefill until it (and any other in flight) is done."""
        self._suggestions += 1
        self._no_suggestion.clear()
        try:
            yield
        finally:
            self._suggestions -= 1
            if not self._suggestions:
                self._no_suggestion.set()

    def _nearness(self, window: _Window) -> tuple[bool, int]:
        """Lower is nearer the cursor: its file first, then by distance in windows (all alike before a cursor)."""
        if self._focus is None:
            return (False, 0)
        uri, here = self._focus
        return (window.uri != uri, abs(window.index - here))

    def _sort(self) -> None:
        self._queue.sort(key=self._nearness)

    def _has_room(self, window: _Window) -> bool:
        """Whether the daemon's cache holds `window` beside the warm windows at least as near the cursor, within
        ROOM_SHARE of it (estimating its copy as the last one)."""
        room = self._room
        if room is None:  # no prefill answered yet, or the daemon does not say
            return True
        if room.max_bytes <= 0:
            return False
        nearness = self._nearness(window)
        nearer = sum(
            size
            for (uri, key), (kept, size) in self._kept.items()
            if self._is_warm(uri, key) and self._nearness(kept) <= nearness
        )
        return nearer + room.copy_bytes <= ROOM_SHARE * room.max_bytes

    def _note_room(self, window: _Window, room: CacheRoom | None) -> None:
        """Record what the prefill of `window` took; windows the cache has likely dropped since (least recently
        warmed first) count as cold again, and go back in the queue."""
        if room is None:
            return
        self._room = room
        if not room.kept:
            return
        entry = (window.uri, window.key)
        self._kept.pop(entry, None)
        self._kept[entry] = (window, room.copy_bytes)
        held = sum(size for _, size in self._kept.values())
        while held > room.max_bytes:
            (uri, key), (_, size) = next(iter(self._kept.items()))
            del self._kept[(uri, key)]
            held -= size
            if self._is_warm(uri, key):
                self._warmed[uri].discard(key)
                self._queue.append(self._windows[uri][key])
        self._sort()

    def _is_warm(self, uri: str, key: int) -> bool:
        """Whether the window `key` is one of the file's windows now (not of an older text), evaluated."""
        return key in self._warmed.get(uri, ()) and key in self._windows.get(uri, {})

    def cache_replaced(self) -> None:
        """The daemon's prompt cache is a new, empty one (a restarted daemon, another model): nothing is warm any
        more. The caller schedules the open files again."""
        self._warmed.clear()
        self._kept.clear()
        self._room = None

    def forget(self, uri: str) -> None:
        self._queue = [window for window in self._queue if window.uri != uri]
        self._warmed.pop(uri, None)
        self._windows.pop(uri, None)
        pending = self._rewarm.pop(uri, None)
        if pending is not None:
            pending.cancel()

    @property
    def pending(self) -> int:
        """Windows queued or being evaluated (not those waiting for room in the cache)."""
        return len(self._queue) - self.waiting + (1 if self._current is not None else 0)

    @property
    def waiting(self) -> int:
        """Windows left cold until the cursor comes near them: the cache has no room for them now."""
        return len(self._queue) if self._queue and not self._has_room(self._queue[0]) else 0

    def stop(self) -> None:
        self._queue.clear()
        if self._task is not None:
            self._task.cancel()
        for handle in self._rewarm.values():
            handle.cancel()
        self._rewarm.clear()

    # ---- the worker: one prefill at a time, so the daemon's queue never fills with them ----

    async def _work(self) -> None:
        done, stopped = 0, ""
        observer = self.observer if self._queue and self._has_room(self._queue[0]) else None
        if observer is not None:  # (shown only where something is warmed)
            observer.update(0, self.pending)
        while True:
            await self._no_suggestion.wait()
            if not (self._queue and self._has_room(self._queue[0])):
                break
            window = self._current = self._queue.pop(0)
            prompt = InfillPrompt(
                prefix=window.prefix,
                suffix="",
                filename=window.filename,
                single_line=False,
                extra=list(window.context),
            )
            started = self._clock()
            try:
                room = await self.backend.prefill(prompt, PREFILL_TIMEOUT_S)
            except DaemonUnavailableError:
                self._queue.insert(0, window)  # the next schedule (an open, an edit) resumes
                stopped = "; stopped: the daemon is not running"
                break
            except (LocalspecError, TimeoutError) as exc:
                self.failed += 1
                log.info("warming %s failed: %s", window.filename, exc)
                continue
            finally:
                self._current = None
                self._promote_when_warm(window.filename)
            self._warmed.setdefault(window.uri, set()).add(window.key)
            self.warmed += 1
            self._prefill_seconds += self._clock() - started
            self._note_room(window, room)
            done += 1
            if observer is not None:
                observer.update(done, self.pending)
        if observer is not None:
            if self.waiting and not stopped:
                stopped = f"; {self.waiting} wait for the cursor (the daemon's prompt cache is full)"
            observer.finish(f"{done} windows warmed{stopped}")


def _key(prefix: str, context: tuple[tuple[str, str], ...]) -> int:
    return hash((prefix, context))
