"""Turning editor requests into suggestions without ever making the editor wait.

- A cache keyed by the document's text before the cursor: typing along a shown suggestion is answered
  from it, with no new generation.
- Debounce: a generation starts only after the user paused for `debounce_ms`.
- Supersede: a newer request for the same document cancels the older generation (closing its HTTP
  request cancels it on the daemon); `$/cancelRequest` does the same through asyncio cancellation.
- Pre-compute: once a suggestion is shown, the one that follows its acceptance is generated in the
  background (as llama.vscode does), so accepting and continuing is instant too.
- Daemon down: answer nothing at once, start the daemon in the background, warn once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Protocol

from localspec.errors import DaemonUnavailableError, LocalspecError
from localspec.lsp.prompt import InfillPrompt, build_prompt
from localspec.lsp.settings import LspSettings

log = logging.getLogger(__name__)


class InfillBackend(Protocol):
    """What suggestions need from the daemon (see localspec.lsp.daemon_link)."""

    async def infill(
        self, prompt: InfillPrompt, max_tokens: int, temperature: float, timeout: float
    ) -> str: ...

    def start_in_background(self) -> bool: ...

    @property
    def slow_prompts(self) -> bool: ...


@dataclass
class SuggestionStats:
    requests: int = 0
    cache_hits: int = 0
    generations: int = 0
    superseded: int = 0
    cancelled: int = 0
    precomputed: int = 0
    joined_precompute: int = 0  # requests that waited for the follow-up already being generated
    unavailable: int = 0
    errors: int = 0
    empty: int = 0
    last_latency_ms: float = 0.0

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class _Entry:
    prefix_len: int
    prefix_hash: int
    suffix: str
    text: str


class SuggestionCache:
    """Recent suggestions per document, keyed by the full text before the cursor and the suffix window.

    A lookup also matches an entry whose prefix plus the start of its suggestion equals the new
    prefix: the user typed the first characters of what was suggested, and the rest still applies.
    """

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[str, int, int, str], _Entry] = OrderedDict()
        self._by_document: dict[str, list[_Entry]] = {}

    def put(self, uri: str, prefix: str, suffix: str, text: str) -> None:
        if self.size <= 0 or not text:
            return
        entry = _Entry(len(prefix), hash(prefix), suffix, text)
        key = (uri, entry.prefix_len, entry.prefix_hash, suffix)
        if key in self._entries:
            self._forget(uri, self._entries.pop(key))
        self._entries[key] = entry
        self._by_document.setdefault(uri, []).append(entry)
        while len(self._entries) > self.size:
            (old_uri, *_), old = self._entries.popitem(last=False)
            self._forget(old_uri, old)

    def _forget(self, uri: str, entry: _Entry) -> None:
        entries = self._by_document.get(uri, [])
        if entry in entries:
            entries.remove(entry)
        if not entries:
            self._by_document.pop(uri, None)

    def get(self, uri: str, prefix: str, suffix: str) -> str | None:
        """The rest of a cached suggestion for this cursor, or None."""
        for entry in reversed(self._by_document.get(uri, [])):
            if entry.suffix != suffix or len(prefix) < entry.prefix_len:
                continue
            typed = prefix[entry.prefix_len :]
            if len(typed) >= len(entry.text) or not entry.text.startswith(typed):
                continue
            if hash(prefix[: entry.prefix_len]) != entry.prefix_hash:
                continue
            return entry.text[len(typed) :]
        return None

    def forget_document(self, uri: str) -> None:
        for entry in self._by_document.pop(uri, []):
            self._entries.pop((uri, entry.prefix_len, entry.prefix_hash, entry.suffix), None)

    def clear(self) -> None:
        self._entries.clear()
        self._by_document.clear()

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True)
class DocumentSnapshot:
    """What one request knows about the document (copied: the document keeps changing meanwhile)."""

    uri: str
    text: str
    offset: int
    filename: str


class Suggester:
    def __init__(
        self,
        backend: InfillBackend,
        settings: Callable[[], LspSettings],
        extra_context: Callable[[str], list[tuple[str, str]]],
        warn: Callable[[str], None],
    ) -> None:
        self.backend = backend
        self._settings = settings
        self._extra_context = extra_context
        self._warn = warn
        self.cache = SuggestionCache(settings().cache_size)
        self.stats = SuggestionStats()
        self._inflight: dict[str, asyncio.Task[str | None]] = {}
        # Pre-compute tasks and the (prefix, suffix) they generate for.
        self._precomputing: dict[asyncio.Task[str | None], tuple[str, str]] = {}
        # Pre-computes about to start (see `_schedule_precompute`), by document.
        self._follow_ups: dict[str, asyncio.TimerHandle] = {}
        self._daemon_down_warned = False

    def _prompt(self, snapshot: DocumentSnapshot) -> InfillPrompt:
        settings = self._settings()
        return build_prompt(
            snapshot.text,
            snapshot.offset,
            snapshot.filename,
            settings,
            self._extra_context(snapshot.filename),
            self.backend.slow_prompts,
        )

    async def suggest(self, snapshot: DocumentSnapshot) -> str | None:
        """The suggestion to show at the cursor, or None (disabled, nothing, superseded, daemon down)."""
        settings = self._settings()
        self.stats.requests += 1
        if not settings.enable:
            return None
        started = time.perf_counter()
        prompt = self._prompt(snapshot)
        prefix = snapshot.text[: snapshot.offset]
        cached = self.cache.get(snapshot.uri, prefix, prompt.suffix)
        if cached is not None:
            self.stats.cache_hits += 1
            self.stats.last_latency_ms = (time.perf_counter() - started) * 1000
            self._schedule_precompute(snapshot, cached)
            return cached

        previous = self._inflight.get(snapshot.uri)
        if previous is not None and not previous.done():
            if self._precomputing.get(previous) == (prefix, prompt.suffix):
                # The suggestion was accepted before its follow-up was ready: wait for it, don't restart.
                self.stats.joined_precompute += 1
                return await self._wait(snapshot, previous, started, shield=True)
            previous.cancel()
            if previous not in self._precomputing:
                self.stats.superseded += 1
        task = asyncio.create_task(self._generate(snapshot.uri, prompt, prefix, debounce=True))
        self._inflight[snapshot.uri] = task
        return await self._wait(snapshot, task, started, shield=False)

    async def _wait(
        self, snapshot: DocumentSnapshot, task: asyncio.Task[str | None], started: float, shield: bool
    ) -> str | None:
        try:
            # A shared pre-compute is shielded: cancelling this request must not cancel it.
            text = await (asyncio.shield(task) if shield else task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                # The editor cancelled this request ($/cancelRequest): awaiting `task` cancelled it too.
                self.stats.cancelled += 1
                raise
            return None  # superseded by a newer request for this document
        finally:
            if not shield and self._inflight.get(snapshot.uri) is task:
                del self._inflight[snapshot.uri]
        self.stats.last_latency_ms = (time.perf_counter() - started) * 1000
        if text:
            self._schedule_precompute(snapshot, text)
        return text or None

    async def _generate(self, uri: str, prompt: InfillPrompt, prefix: str, debounce: bool) -> str | None:
        settings = self._settings()
        if debounce and settings.debounce_ms:
            await asyncio.sleep(settings.debounce_ms / 1000)
        try:
            text = await self.backend.infill(
                prompt, settings.max_tokens, settings.temperature, settings.request_timeout_s
            )
        except DaemonUnavailableError as exc:
            self._daemon_unavailable(exc)
            return None
        except LocalspecError as exc:
            self.stats.errors += 1
            self._warn(f"localspec: suggestion failed: {exc}")
            return None
        self._daemon_down_warned = False
        self.stats.generations += 1
        if not text:
            self.stats.empty += 1
        self.cache.put(uri, prefix, prompt.suffix, text)
        return text

    def _daemon_unavailable(self, exc: DaemonUnavailableError) -> None:
        self.stats.unavailable += 1
        starting = self._settings().auto_start_daemon and self.backend.start_in_background()
        if not self._daemon_down_warned:
            self._daemon_down_warned = True
            action = "starting it in the background" if starting else "run `localspec serve` to start it"
            self._warn(
                f"localspec: the daemon is not answering ({exc}); {action}. No suggestions until it is up."
            )

    def _schedule_precompute(self, snapshot: DocumentSnapshot, shown: str) -> None:
        """Generate, in the background, the suggestion for the cursor after `shown` is accepted.

        Started on the loop's next turn: the answer is sent by a callback of the request's task, and a task
        created now would run first, building its prompt and sending its HTTP request before the answer goes.
        (A timer due now, not `call_soon`: that callback is queued only when the task ends, behind a `call_soon`
        made now, while a due timer joins the queue on the next turn, behind it.)
        """
        if not self._settings().precompute:
            return
        earlier = self._follow_ups.pop(snapshot.uri, None)
        if earlier is not None:  # (the editor shows the newer suggestion)
            earlier.cancel()
        loop = asyncio.get_running_loop()
        self._follow_ups[snapshot.uri] = loop.call_later(0, self._precompute, snapshot, shown)

    def _precompute(self, snapshot: DocumentSnapshot, shown: str) -> None:
        self._follow_ups.pop(snapshot.uri, None)
        running = self._inflight.get(snapshot.uri)
        if running is not None and not running.done():
            return
        accepted = DocumentSnapshot(
            uri=snapshot.uri,
            text=snapshot.text[: snapshot.offset] + shown + snapshot.text[snapshot.offset :],
            offset=snapshot.offset + len(shown),
            filename=snapshot.filename,
        )
        prompt = self._prompt(accepted)
        prefix = accepted.text[: accepted.offset]
        if self.cache.get(accepted.uri, prefix, prompt.suffix) is not None:
            return
        task = asyncio.create_task(self._generate(accepted.uri, prompt, prefix, debounce=False))
        self._inflight[snapshot.uri] = task
        self._precomputing[task] = (prefix, prompt.suffix)
        task.add_done_callback(self._precompute_done)

    def _precompute_done(self, task: asyncio.Task[str | None]) -> None:
        self._precomputing.pop(task, None)
        if not task.cancelled() and task.exception() is None and task.result():
            self.stats.precomputed += 1
        for uri, running in list(self._inflight.items()):
            if running is task:
                del self._inflight[uri]

    def configure(self, settings: LspSettings) -> None:
        self.cache.size = settings.cache_size
        if settings.cache_size == 0 or not settings.enable:
            self.cache.clear()
        if not settings.enable:
            self.cancel_all()

    def forget(self, uri: str) -> None:
        follow_up = self._follow_ups.pop(uri, None)
        if follow_up is not None:
            follow_up.cancel()
        task = self._inflight.pop(uri, None)
        if task is not None:
            task.cancel()
        self.cache.forget_document(uri)

    def cancel_all(self) -> None:
        for follow_up in self._follow_ups.values():
            follow_up.cancel()
        self._follow_ups.clear()
        for task in list(self._inflight.values()):
            task.cancel()
        self._inflight.clear()

    def in_flight(self) -> int:
        return sum(1 for task in self._inflight.values() if not task.done())
