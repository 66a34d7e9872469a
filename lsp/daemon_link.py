"""The language server's connection to the daemon, through `localspec.client` only.

Each suggestion is one streamed `POST /v1/infill`; leaving the stream early (a newer request, or
`$/cancelRequest` cancelling the asyncio task) closes the HTTP connection and the daemon cancels the
generation. When no daemon answers, `start_in_background` runs `client.ensure_daemon` in a thread so
the editor is never blocked while models load.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import httpx

from localspec.client import AsyncDaemonClient, Health, discover, ensure_daemon
from localspec.errors import DaemonUnavailableError, LocalspecError
from localspec.lsp.prompt import InfillPrompt

log = logging.getLogger(__name__)

# Connecting to a local daemon is instant or refused; never let an editor wait on it.
CONNECT_TIMEOUT_S = 2.0
START_TIMEOUT_S = 300.0


class DaemonLink:
    def __init__(self, report: Callable[[str, bool], None] | None = None) -> None:
        # report(message, is_warning) runs on the event loop (start-up results come from a thread).
        self.report = report or (lambda message, warning: None)
        self._client: AsyncDaemonClient | None = None
        self._start_thread: threading.Thread | None = None
        self.status = "unknown"
        self.last_error: str | None = None
        self.last_speculative: dict[str, Any] | None = None

    def _current_client(self, timeout: float) -> AsyncDaemonClient:
        """A client for the daemon recorded now; a restarted daemon (new port) gets a new client."""
        info = discover()
        if info is None:
            self.status = "starting" if self.starting else "down"
            raise DaemonUnavailableError("No localspec daemon is running.")
        if self._client is not None and self._client.url == info.url.rstrip("/"):
            return self._client
        if self._client is not None:
            stale = self._client
            asyncio.get_running_loop().create_task(stale.aclose())
        self._client = AsyncDaemonClient(info.url, timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT_S))
        self.status = "unknown"  # a new daemon: check it has loaded its models before waiting on it
        return self._client

    async def _ready_client(self, timeout: float) -> AsyncDaemonClient:
        """The client, once the daemon has its models loaded.

        The daemon listens before its models are loaded and queues requests meanwhile; asking /health
        first (until it is ready once) lets the editor get an empty answer now instead of waiting.
        """
        client = self._current_client(timeout)
        if self.status == "ok":
            return client
        try:
            health = Health.parse(client.url, await asyncio.wait_for(client.health(), CONNECT_TIMEOUT_S))
        except TimeoutError:
            raise DaemonUnavailableError(f"The daemon at {client.url} does not answer /health.") from None
        if not health.ready:
            self.status = health.status
            raise health.not_ready()
        self.status = "ok"
        return client

    async def infill(self, prompt: InfillPrompt, max_tokens: int, temperature: float, timeout: float) -> str:
        """The daemon's completion for this prompt (streamed; cancelling the caller cancels it)."""
        client = await self._ready_client(timeout)
        params: dict[str, Any] = {
            "extra": [{"filename": name, "text": text} for name, text in prompt.extra],
            "filename": prompt.filename,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "single_line": prompt.single_line,
        }
        parts: list[str] = []
        try:
            async with asyncio.timeout(timeout):
                async with client.stream_infill(prompt.prefix, prompt.suffix, **params) as stream:
                    async for chunk in stream:
                        parts.append(str(chunk.get("content") or ""))
                    if stream.final is not None:
                        self.last_speculative = stream.final.get("speculative")
        except TimeoutError:
            raise LocalspecError(
                f"The daemon did not finish a suggestion within {timeout:g}s; lower maxTokens or raise "
                "requestTimeoutS."
            ) from None
        except httpx.HTTPError as exc:  # the connection broke mid-stream
            self.status = "down"
            self.last_error = str(exc)
            raise DaemonUnavailableError(f"The daemon connection failed: {exc}") from exc
        except DaemonUnavailableError as exc:
            self.status = "down"
            self.last_error = str(exc)
            raise
        self.status = "ok"
        return "".join(parts)

    @property
    def starting(self) -> bool:
        return self._start_thread is not None and self._start_thread.is_alive()

    def start_in_background(self) -> bool:
        """Start `localspec serve` (or wait for one that is starting) without blocking; True if under way."""
        if self.starting:
            return True
        loop = asyncio.get_running_loop()
        self.status = "starting"

        def run() -> None:
            try:
                ensure_daemon(autostart=True, timeout=START_TIMEOUT_S).close()
            except LocalspecError as exc:
                loop.call_soon_threadsafe(self._started, str(exc))
            except Exception as exc:  # a thread must not die silently: tell the editor
                loop.call_soon_threadsafe(self._started, f"{type(exc).__name__}: {exc}")
            else:
                loop.call_soon_threadsafe(self._started, None)

        self._start_thread = threading.Thread(target=run, name="localspec-daemon-start", daemon=True)
        self._start_thread.start()
        return True

    def _started(self, error: str | None) -> None:
        if error is None:
            self.status = "ok"
            self.last_error = None
            self.report("localspec: the daemon is up; suggestions are on their way.", False)
        else:
            self.status = "error"
            self.last_error = error
            self.report(f"localspec: could not start the daemon: {error}", True)

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
        }

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
