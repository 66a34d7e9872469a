"""One chat message: a role header and a Markdown body, or origin-coloured text when that toggle is on."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, Markdown, Static
from textual.widgets.markdown import MarkdownStream

from localspec.tui.reply import origin_spans
from localspec.tui.store import Message

# Accepted-draft text stands out; the target's own tokens stay plain (the legend is in the status bar).
DRAFTED_STYLE = "bold #4ec9b0"
TARGET_STYLE = ""

_STATUS_MARKS = {
    "cancelled": "[cancelled]",
    "interrupted": "[interrupted: the app stopped mid-reply]",
    "error": "[failed]",
    "streaming": "…",
}


class MessageView(Vertical):
    """Shows a stored message; while a reply streams, text arrives through `append`."""

    def __init__(self, message: Message, *, show_origin: bool = False) -> None:
        super().__init__(classes=f"message {message.role}")
        self.message = message
        self.show_origin = show_origin
        self._stream: MarkdownStream | None = None

    def compose(self) -> ComposeResult:
        yield Label(self._header_text(), classes="message-header", markup=False)
        yield Markdown(self.message.content, classes="message-body")
        yield Static("", classes="message-origin")

    def on_mount(self) -> None:
        self._apply_origin_mode()

    def _header_text(self) -> str:
        role = {"user": "You", "assistant": "Assistant", "system": "System"}[self.message.role]
        mark = _STATUS_MARKS.get(self.message.status, "")
        return f"{role} {mark}".strip()

    def refresh_header(self) -> None:
        self.query_one(".message-header", Label).update(self._header_text())
        self.set_class(self.message.status in ("cancelled", "interrupted", "error"), "-incomplete")

    def set_show_origin(self, show: bool) -> None:
        self.show_origin = show
        self._apply_origin_mode()

    def _apply_origin_mode(self) -> None:
        colour = self.show_origin and self.message.role == "assistant"
        self.query_one(".message-body", Markdown).display = not colour
        origin = self.query_one(".message-origin", Static)
        origin.display = colour
        if colour:
            origin.update(self._origin_text())
        self.refresh_header()

    def _origin_text(self) -> Text:
        text = Text()
        for piece, drafted in origin_spans(self.message.content, self.message.origin):
            text.append(piece, style=DRAFTED_STYLE if drafted else TARGET_STYLE)
        return text

    def start_stream(self) -> None:
        self._stream = Markdown.get_stream(self.query_one(".message-body", Markdown))

    async def append(self, text: str) -> None:
        """Show `text` (already added to `self.message.content` by the caller)."""
        if self._stream is not None:
            await self._stream.write(text)
        if self.show_origin:
            self.query_one(".message-origin", Static).update(self._origin_text())

    async def stop_stream(self) -> None:
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        self.refresh_header()
