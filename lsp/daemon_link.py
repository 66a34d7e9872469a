"""The language server's connection to the daemon, through `localspec.client` only.

Each suggestion is one `POST /v1/infill` answered with one JSON body (the editor shows a suggestion whole, and a
stream's events only lengthen the round trip: docs/BENCHMARKS.md); dropping the request (a newer one, or
`$/cancelRequest` cancelling the asyncio task) closes the HTTP connection and the daemon cancels the
generation. A suggestion never waits for a daemon to start or load: when none is ready it fails at once,
and `start_in_background` runs `client.aconnect` in a task so the editor is never blocked while models load.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from localspec.client import AsyncDaemonClient, aconnect, discover, discovery_stamp
from localspec.errors import DaemonUnavailableError, LocalspecError
from localspec.lsp.prompt import InfillPrompt
from localspec.lsp.warmup import CacheRoom

log = logging.getLogger(__name__)

START_TIMEOUT_S = 300.0
# A suggestion's prompt cost is measured where it evaluated at least this many new tokens (fewer cost about one
# pass whatever their number, on a GPU). At SLOW_PROMPT_MS_PER_TOKEN or more (a CPU, not a GPU), suggestions see
# fewer lines after the cursor (`prompt.suffix_lines`); docs/BENCHMARKS.md, "Editor latency", has the figures.
MIN_MEASURED_PROMPT_TOKENS = 8
SLOW_PROMPT_MS_PER_TOKEN = 5.0


class DaemonLink:
    def __init__(self, report: Callable[[str, bool], None] | None = None) -> None:
        # report(message, is_warning) tells the editor how a background start went.
        self.report = report or (lambda message, warning: None)
        self._client: AsyncDaemonClient | None = None
        self._looking: asyncio.Task[AsyncDaemonClient] | None = None
        self._start_task: asyncio.Task[None] | None = None
        self.status = "unknown"
        self.last_error: str | None = None
        self.last_speculative: dict[str, Any] | None = None
        self.prompt_ms_per_token: float | None = None  # measured on suggestions, a moving average
        self.cache_id: str | None = None  # the daemon's prompt cache, as its last answer named it
        self.on_new_cache: Callable[[], None] = lambda: None
        # The daemon record's stamp when the client in use was last found to match it (see `_ready_client`).
        self._found_at: tuple[int, int, int] | None = None

    async def _ready_client(self) -> AsyncDaemonClient:
        """The client, once the daemon recorded now has its models loaded; a restarted daemon gets a new one.

        The daemon listens before its models are loaded and queues requests meanwhile; looking first (until
        it is ready once) lets the editor get an empty answer now instead of waiting. Requests share one look,
        which a request cancelled meanwhile (the user typed on) does not cancel. While the record is unchanged
        and the last request went well, it is not read again (a daemon gone without removing it fails the
        request, which sets the status).
        """
        stamp = discovery_stamp()
        client = self._client
        if client is not None and self.status == "ok" and stamp is not None and stamp == self._found_at:
            return client
        info = discover()
        if info is None:
            self.status = "starting" if self.starting else "down"
            raise DaemonUnavailableError("No localspec daemon is running.")
        if client is not None and client.url == info.url.rstrip("/") and self.status == "ok":
            self._found_at = stamp
            return client
        if self._looking is None or self._looking.done():
            self._looking = asyncio.get_running_loop().create_task(self._look())
            # Retrieve a failure nobody waited for, so asyncio does not report it as lost.
            self._looking.add_done_callback(lambda task: task.cancelled() or task.exception())
        return await asyncio.shield(self._looking)

    async def _look(self) -> AsyncDaemonClient:
        try:
            client = await aconnect(autostart=False, timeout=0)
        except DaemonUnavailableError:
            self.status = "starting" if self.starting else "not ready"
            raise
        return await self._adopt(client)

    async def _adopt(self, client: AsyncDaemonClient) -> AsyncDaemonClient:
        """Use `client` from now on, unless the one in use already talks to the same daemon (a suggestion may
        be waiting on it)."""
        current, self.status = self._client, "ok"
        if current is not None and current.url == client.url:
            await client.aclose()
            return current
        self._client = client
        if current is not None:
            await current.aclose()
        return client

    async def infill(self, prompt: InfillPrompt, max_tokens: int, temperature: float, timeout: float) -> str:
        """The daemon's completion for this prompt (cancelling the caller cancels it)."""
        client = await self._ready_client()
        params: dict[str, Any] = {
            **_context_params(prompt),
            "max_tokens": max_tokens,
            "temperature": temperature,
            "single_line": prompt.single_line,
        }
        try:
            async with asyncio.timeout(timeout):
                answer = await client.infill(prompt.prefix, prompt.suffix, **params)
        except TimeoutError:
            raise LocalspecError(
                f"The daemon did not finish a suggestion within {timeout:g}s; lower maxTokens or raise "
                "requestTimeoutS."
            ) from None
        except DaemonUnavailableError as exc:  # it stopped, or the connection broke
            self.status = "down"
            self.last_error = str(exc)
            raise
        self.status = "ok"
        self.last_speculative = answer.get("speculative")
        self._note_prompt_cost(answer)
        self._note_cache(answer)
        return str(answer.get("content") or "")

    async def prefill(self, prompt: InfillPrompt, timeout: float) -> CacheRoom | None:
        """Have the daemon evaluate this prompt into its cache, generating nothing (a warm-up); what its copy took
        of the cache, where the daemon says (a remote backend does not)."""
        client = await self._ready_client()
        params: dict[str, Any] = {**_context_params(prompt), "max_tokens": 0}
        async with asyncio.timeout(timeout):
            answer = await client.infill(prompt.prefix, prompt.suffix, **params)
        return self._note_cache(answer)

    def _note_cache(self, answer: dict[str, Any]) -> CacheRoom | None:
        """The answer's prompt-cache report (None where the daemon gives none: a remote backend); a cache other
        than the one the last answer named (a restarted daemon, another model) is reported (`on_new_cache`)."""
        room = answer.get("prompt_cache")
        if not isinstance(room, dict):
            return None
        parsed = CacheRoom(
            str(room["id"]), bool(room["kept"]), int(room["copy_bytes"]), int(room["max_bytes"])
        )
        known, self.cache_id = self.cache_id, parsed.id
        if known is not None and known != parsed.id:
            self.on_new_cache()
        return parsed

    def _note_prompt_cost(self, answer: dict[str, Any]) -> None:
        """Average the milliseconds a new prompt token cost, over suggestions with enough of them to tell (from
        the answer's `usage` and `speculative.prompt_seconds`)."""
        usage = answer.get("usage") or {}
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        seconds = (answer.get("speculative") or {}).get("prompt_seconds")
        if usage.get("prompt_tokens") is None or cached is None or not seconds:
            return  # (a remote backend may not say)
        new = int(usage["prompt_tokens"]) - int(cached)
        if new < MIN_MEASURED_PROMPT_TOKENS:
            return
        ms = seconds * 1000 / new
        old = self.prompt_ms_per_token
        self.prompt_ms_per_token = ms if old is None else 0.7 * old + 0.3 * ms

    @property
    def slow_prompts(self) -> bool:
        """Whether prompt tokens were measured to cost enough that fewer lines after the cursor pay (a CPU)."""
        cost = self.prompt_ms_per_token
        return cost is not None and cost >= SLOW_PROMPT_MS_PER_TOKEN

    @property
    def starting(self) -> bool:
        return self._start_task is not None and not self._start_task.done()

    def start_in_background(self) -> bool:
        """Start `localspec serve` (or wait for one that is starting) without blocking; True if under way."""
        if not self.starting:
            self.status = "starting"
            self._start_task = asyncio.get_running_loop().create_task(self._start())
        return True

    async def _start(self) -> None:
        try:
            client = await aconnect(autostart=True, timeout=START_TIMEOUT_S)
        except Exception as exc:  # a failed start must not fail silently: tell the editor
            self.status = "error"
            self.last_error = str(exc) if isinstance(exc, LocalspecError) else f"{type(exc).__name__}: {exc}"
            self.report(f"localspec: could not start the daemon: {self.last_error}", True)
            return
        await self._adopt(client)
        self.last_error = None
        self.report("localspec: the daemon is up; suggestions are on their way.", False)

    def warm_up(self, autostart: bool) -> None:
        """At editor start: if no daemon runs, start loading one now rather than at the first keystroke."""
        if autostart and discover() is None:
            self.start_in_background()

    def describe(self) -> dict[str, Any]:
        info = discover()
        return {
            "url": info.url if info else None,
            "status": self.status,
            "last_error": self.last_error,
            "last_speculative": self.last_speculative,
            "prompt_ms_per_token": self.prompt_ms_per_token,
            "slow_prompts": self.slow_prompts,
        }

    async def aclose(self) -> None:
        for task in (self._start_task, self._looking):
            if task is not None:
                task.cancel()
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _context_params(prompt: InfillPrompt) -> dict[str, Any]:
    """The request fields that place the prompt: its file's name and the extra files."""
    return {
        "extra": [{"filename": name, "text": text} for name, text in prompt.extra],
        "filename": prompt.filename,
    }
