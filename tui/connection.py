"""The app's one door to the daemon: a thin adapter over `localspec.client`.

It keeps the client's shape out of the widgets: connect (finding or starting the daemon, with progress),
stream a chat reply as OpenAI chunk dicts, and turn failures into messages that say what to do.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from localspec.errors import ContextOverflowError, DaemonUnavailableError, LocalspecError

if TYPE_CHECKING:
    from localspec.client import AsyncDaemonClient


class Connection:
    """Lazily connected: `connect()` finds the daemon (starting it when `autostart`) and reads /health."""

    def __init__(self, *, autostart: bool = True) -> None:
        self.autostart = autostart
        self.client: AsyncDaemonClient | None = None
        self.connected = False

    def reset(self) -> None:
        self.connected = False

    async def connect(self, progress: Callable[[str], None]) -> str:
        """Return the model pair's description once the daemon is healthy."""
        # The client module imports httpx; keep it out of `localspec --help`.
        from localspec.client import AsyncDaemonClient, Health, ensure_daemon

        # ensure_daemon blocks (file lock, process start, health polling): keep it off the event loop.
        found = await asyncio.to_thread(ensure_daemon, autostart=self.autostart, progress=progress)
        found.close()
        if self.client is None or self.client.url != found.url or self.client.token != found.token:
            await self.aclose()
            self.client = AsyncDaemonClient(found.url, found.token)
        health = Health.parse(self.client.url, await self.client.health())
        if not health.ready:
            raise health.not_ready()
        self.connected = True
        return health.pair()

    async def stream_chat(
        self, messages: list[dict[str, str]], options: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        """Chunks of a streamed chat completion. Cancelling the consumer closes the HTTP stream, which makes
        the daemon cancel the generation within one step."""
        if self.client is None:
            raise DaemonUnavailableError("Not connected to a localspec daemon.")
        try:
            async with self.client.stream_chat(messages, **options) as stream:
                async for chunk in stream:
                    yield chunk
        except DaemonUnavailableError:
            self.connected = False
            raise

    async def aclose(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            await client.aclose()


def describe_error(exc: BaseException) -> str:
    """One actionable paragraph for the notice line."""
    if isinstance(exc, ContextOverflowError):
        return (
            f"Context full: {exc} Start a new conversation (ctrl+n), shorten the message, "
            "or lower max tokens in the settings (F4)."
        )
    if isinstance(exc, DaemonUnavailableError):
        return f"Daemon unavailable: {exc}"
    if isinstance(exc, LocalspecError):
        return str(exc)
    return f"Connection to the daemon failed ({exc}). Check that `localspec serve` runs, then press ctrl+r."
