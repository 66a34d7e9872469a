"""Command palette entries (ctrl+p) for the chat app's actions."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, cast

from textual.command import DiscoveryHit, Hit, Hits, Provider

if TYPE_CHECKING:
    from localspec.tui.app import ChatApp

# (palette name, app action, help line)
COMMANDS = [
    ("New conversation", "new_conversation", "Start an empty conversation"),
    ("Rename conversation", "rename_conversation", "Give the open conversation a title"),
    ("Delete conversation", "delete_conversation", "Delete the open conversation (asks first)"),
    ("Search conversations", "search", "Filter the sidebar by title or message text"),
    ("Conversation settings", "settings", "System prompt, temperature, top_p, max tokens, speculative mode"),
    ("Toggle origin colours", "toggle_origin", "Colour reply text by origin: accepted drafts vs the target"),
    ("Copy last code block", "copy_code", "Copy the last fenced code block of the replies to the clipboard"),
    ("Cancel reply", "cancel_reply", "Stop the reply in flight; the partial text is kept"),
    ("Reconnect to daemon", "reconnect", "Check the daemon again, starting it if needed"),
    ("Toggle sidebar", "toggle_sidebar", "Show or hide the conversation list"),
    ("Keys", "help", "Show every key binding"),
]


class ChatCommands(Provider):
    @property
    def _app(self) -> ChatApp:
        return cast("ChatApp", self.app)

    def _run(self, action: str) -> None:
        self._app.call_next(self._app.run_action, action)

    async def discover(self) -> Hits:
        for name, action, help_text in COMMANDS:
            yield DiscoveryHit(name, partial(self._run, action), help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, action, help_text in COMMANDS:
            if (score := matcher.match(name)) > 0:
                yield Hit(score, matcher.highlight(name), partial(self._run, action), help=help_text)
