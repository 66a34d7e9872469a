"""The warm-up shown in the editor as LSP work-done progress ("localspec: warming open files, 12 of 40 windows"),
where the client says it can show one (`window.workDoneProgress`: VS Code's status bar, Neovim's fidget.nvim).

Each stretch of warming (from the first queued window until the queue is empty, or what is left waits for room in
the daemon's cache) is one progress: a token the client accepts (`window/workDoneProgress/create`), then begin,
reports at most every REPORT_EVERY_S, and an end that says how it went.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.lsp.server import LanguageServer

log = logging.getLogger(__name__)

TITLE = "localspec: warming open files"
REPORT_EVERY_S = 0.5
# A client that never answers the create request gets no progress from that stretch.
CREATE_TIMEOUT_S = 10.0

_serial = itertools.count(1)


class WarmProgress:
    """Feeds the editor's progress display from the warmer's counts (`Warmer.observer`)."""

    def __init__(self, server: LanguageServer) -> None:
        self._server = server
        self._run: _Run | None = None

    def update(self, warmed: int, left: int) -> None:
        """`warmed` windows done in this stretch, `left` still queued."""
        window = self._server.client_capabilities.window
        if window is None or not window.work_done_progress:
            return
        if self._run is None:
            self._run = _Run(self._server, f"localspec/warm-up/{next(_serial)}")
        self._run.update(warmed, left)

    def finish(self, message: str) -> None:
        if self._run is not None:
            self._run.end(message)
            self._run = None


class _Run:
    """One stretch's progress: its token, created with the client before anything is sent with it."""

    def __init__(self, server: LanguageServer, token: str) -> None:
        self._progress = server.work_done_progress
        self._token = token
        self._counts = (0, 0)
        self._ready = False  # the client accepted the token and was sent its begin
        self._end_message: str | None = None
        self._last_report = 0.0
        self._report_handle: asyncio.TimerHandle | None = None
        # Held here: the event loop keeps only a weak reference to a task.
        self._task = asyncio.get_running_loop().create_task(self._begin())

    def _message(self) -> tuple[str, int]:
        warmed, left = self._counts
        total = warmed + left
        return f"{warmed} of {total} windows", (100 * warmed // total if total else 0)

    async def _begin(self) -> None:
        try:
            async with asyncio.timeout(CREATE_TIMEOUT_S):
                await self._progress.create_async(self._token)
        except (JsonRpcException, TimeoutError) as exc:
            log.info("the editor declined a progress token: %s", exc)
            return
        message, percentage = self._message()
        self._progress.begin(
            self._token, types.WorkDoneProgressBegin(title=TITLE, message=message, percentage=percentage)
        )
        self._ready = True
        self._last_report = time.monotonic()
        if self._end_message is not None:
            self._end()

    def update(self, warmed: int, left: int) -> None:
        self._counts = (warmed, left)
        if self._ready and self._report_handle is None:
            delay = max(0.0, self._last_report + REPORT_EVERY_S - time.monotonic())
            self._report_handle = asyncio.get_running_loop().call_later(delay, self._report)

    def _report(self) -> None:
        self._report_handle = None
        self._last_report = time.monotonic()
        message, percentage = self._message()
        self._progress.report(
            self._token, types.WorkDoneProgressReport(message=message, percentage=percentage)
        )

    def end(self, message: str) -> None:
        self._end_message = message
        if self._ready:
            self._end()

    def _end(self) -> None:
        if self._report_handle is not None:
            self._report_handle.cancel()
        self._progress.end(self._token, types.WorkDoneProgressEnd(message=self._end_message))
