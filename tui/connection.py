"""The app's one door to the daemon: a thin adapter over `localspec.client`.

It keeps the client's shape out of the widgets: connect (finding or starting the daemon, with progress),
stream a chat reply as OpenAI chunk dicts, and turn failures into messages that say what to do.
"""

from __future__ import annotations

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
        """Return the model pair's description once the daemon is healthy; `progress` runs on the event loop."""
        # The client module imports the HTTP libraries; keep them out of `localspec --help`.
        from localspec.client import Health, aconnect

        client = await aconnect(autostart=self.autostart, progress=progress)
        await self.aclose()
        self.client = client
        health = Health.parse(client.url, await client.health())
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
