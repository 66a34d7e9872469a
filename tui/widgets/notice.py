"""A line above the input for errors that need the user's action (daemon down, context full)."""

from __future__ import annotations

from textual.markup import escape
from textual.widgets import Static


class Notice(Static):
    text = ""

    def show_error(self, message: str) -> None:
        self.text = message
        self.update(f"{escape(message)}\n[dim](ctrl+r reconnects · ctrl+l dismisses)[/]")
        self.display = True

    def dismiss(self) -> None:
        self.text = ""
        self.update("")
        self.display = False
