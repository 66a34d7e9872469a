"""The language server's warm-up queue, with a daemon stand-in that records the prefills it is asked for."""

from __future__ import annotations

import asyncio

from localspec.lsp.prompt import InfillPrompt
from localspec.lsp.settings import LspSettings
from localspec.lsp.warmup import Warmer

TEXT = "".join(f"line{i}\n" for i in range(40))
SETTINGS = LspSettings(prefix_lines=8, window_step_lines=8)


class RecordingDaemon:
    """Answers every prefill at once and keeps its prompt (the language server's side is under test)."""

    def __init__(self) -> None:
        self.prompts: list[InfillPrompt] = []

    async def prefill(self, prompt: InfillPrompt, timeout: float) -> None:
        self.prompts.append(prompt)
        await asyncio.sleep(0)


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
