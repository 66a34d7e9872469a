"""Warming open files: the daemon evaluates, in the background, the prompt every cursor of a stretch of lines
shares, so that jumping anywhere in a file the server has seen costs only the code after the cursor.

A prompt is the extra context, the file's name, then the prefix window (which starts on a multiple of
`window_step_lines`, see prompt.window_anchor). For the daemon's cache to serve a later suggestion, everything
before the cursor must be the same text: so each file's extra context is frozen when the file is opened (and
refreshed at most every CONTEXT_REFRESH_S), rather than changing with every chunk the ring takes in. A refreshed
context is warmed first and used once every window of the file is warmed with it: until then suggestions keep
the old one, whose windows the daemon holds (a cold prompt is slow on a CPU). Warm-up requests are prefills
(`max_tokens: 0`): the daemon runs them when nothing else runs and keeps their KV in its prompt cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from localspec.errors import DaemonUnavailableError, LocalspecError
from localspec.lsp.prompt import InfillPrompt, warm_windows
from localspec.lsp.settings import LspSettings

log = logging.getLogger(__name__)

# After an edit, wait for the typing to pause this long before warming the windows it changed.
REWARM_DELAY_S = 2.0
# A file's frozen extra context is taken anew (and the file warmed again) when older than this.
CONTEXT_REFRESH_S = 600.0
PREFILL_TIMEOUT_S = 600.0


class PrefillBackend(Protocol):
    async def prefill(self, prompt: InfillPrompt, timeout: float) -> None: ...


@dataclass(frozen=True)
class _Window:
    uri: str
    filename: str
    index: int  # the window's place in its file (its anchor's order)
    prefix: str
    context: tuple[tuple[str, str], ...]  # the extra context it is warmed with


class Warmer:
    def __init__(
        self,
        backend: PrefillBackend,
        settings: Callable[[], LspSettings],
        ring_context: Callable[[str], list[tuple[str, str]]],
    ) -> None:
        self.backend = backend
        self._settings = settings
        self._ring_context = ring_context
        self._contexts: dict[str, tuple[float, list[tuple[str, str]]]] = {}  # filename -> (frozen at, extra)
        self._candidates: dict[
            str, tuple[tuple[str, str], ...]
        ] = {}  # filename -> a newer context being warmed
        self._queue: list[_Window] = []
        self._warmed: dict[str, set[int]] = {}  # uri -> hashes of the windows (with their context) evaluated
        self._task: asyncio.Task[None] | None = None
        self._rewarm: dict[str, asyncio.TimerHandle] = {}
        self._current: _Window | None = None  # the window being evaluated
        self.warmed = 0
        self.failed = 0

    # ---- the context every prompt of a file shares ----

    def context(self, filename: str) -> list[tuple[str, str]]:
        """The file's extra context: the ring's chunks of other files as they were when it was frozen."""
        frozen = self._contexts.get(filename)
        if frozen is None:
            frozen = self._contexts[filename] = (time.monotonic(), self._ring_now(filename))
        return frozen[1]

    def _ring_now(self, filename: str) -> list[tuple[str, str]]:
        # Oldest chunk first: the order the chunks arrived in does not change as newer ones are added.
        return list(reversed(self._ring_context(filename)))

    def context_is_stale(self, filename: str) -> bool:
        frozen = self._contexts.get(filename)
        return frozen is None or time.monotonic() - frozen[0] > CONTEXT_REFRESH_S

    # ---- what to warm ----

    def opened(self, uri: str, filename: str, text: str) -> None:
        """A file was opened (or its context is stale): take its context anew and warm what that changes. A
        changed context replaces the current one once the file is warmed with it (at once where nothing is
        warmed)."""
        # An unchanged context keeps its windows' keys, so only windows not evaluated yet are warmed.
        new, current = self._ring_now(filename), self._contexts.get(filename)
        self._candidates.pop(filename, None)
        if current is None or new == current[1] or not self._warming_on(text):
            self._contexts[filename] = (time.monotonic(), new)
        else:
            self._contexts[filename] = (time.monotonic(), current[1])
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
        for index, prefix in enumerate(warm_windows(text, self._settings())):
            if _key(prefix, context) not in done:
                self._queue.append(_Window(uri, filename, index, prefix, context))
        self._promote_when_warm(filename)
        self._resume()

    def _promote_when_warm(self, filename: str) -> None:
        """Use the file's newer context once no window waits to be warmed with it."""
        candidate = self._candidates.get(filename)
        if candidate is None:
            return
        windows = [*self._queue, *([self._current] if self._current is not None else [])]
        if not any(w.filename == filename and w.context == candidate for w in windows):
            self._contexts[filename] = (time.monotonic(), list(self._candidates.pop(filename)))

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
        down when it stopped)."""
        step = max(1, self._settings().window_step_lines)
        here = line // step
        self._queue.sort(key=lambda window: (window.uri != uri, abs(window.index - here)))
        self._resume()

    def forget(self, uri: str) -> None:
        self._queue = [window for window in self._queue if window.uri != uri]
        self._warmed.pop(uri, None)
        pending = self._rewarm.pop(uri, None)
        if pending is not None:
            pending.cancel()

    @property
    def pending(self) -> int:
        """Windows queued or being evaluated."""
        return len(self._queue) + (1 if self._current is not None else 0)

    def stop(self) -> None:
        self._queue.clear()
        if self._task is not None:
            self._task.cancel()
        for handle in self._rewarm.values():
            handle.cancel()
        self._rewarm.clear()

    # ---- the worker: one prefill at a time, so the daemon's queue never fills with them ----

    async def _work(self) -> None:
        while self._queue:
            window = self._current = self._queue.pop(0)
            prompt = InfillPrompt(
                prefix=window.prefix,
                suffix="",
                filename=window.filename,
                single_line=False,
                extra=list(window.context),
            )
            try:
                await self.backend.prefill(prompt, PREFILL_TIMEOUT_S)
            except DaemonUnavailableError:
                self._queue.insert(0, window)  # the next schedule (an open, an edit) resumes
                break
            except (LocalspecError, TimeoutError) as exc:
                self.failed += 1
                log.info("warming %s failed: %s", window.filename, exc)
                continue
            finally:
                self._current = None
                self._promote_when_warm(window.filename)
            self._warmed.setdefault(window.uri, set()).add(_key(window.prefix, window.context))
            self.warmed += 1


def _key(prefix: str, context: tuple[tuple[str, str], ...]) -> int:
    return hash((prefix, context))
