"""The scrolling list of messages of the open conversation."""

from __future__ import annotations

from textual.containers import VerticalScroll
from textual.widgets import Static

from localspec.tui.store import Message
from localspec.tui.widgets.message import MessageView

EMPTY_HINT = "Type a message below and press Enter. F1 shows every key."


class ChatView(VerticalScroll):
    def on_mount(self) -> None:
        # Stay pinned to the bottom while replies stream, until the user scrolls up.
        self.anchor()

    async def show(self, messages: list[Message], *, show_origin: bool) -> None:
        await self.remove_children()
        if not messages:
            await self.mount(Static(EMPTY_HINT, classes="empty-hint"))
            return
        await self.mount_all([MessageView(m, show_origin=show_origin) for m in messages])
        self.scroll_end(animate=False)

    async def add(self, message: Message, *, show_origin: bool) -> MessageView:
        await self.query(".empty-hint").remove()
        view = MessageView(message, show_origin=show_origin)
        await self.mount(view)
        self.scroll_end(animate=False)
        return view

    async def remove_message(self, message_id: int) -> None:
        for view in self.query(MessageView):
            if view.message.id == message_id:
                await view.remove()
        if not self.query(MessageView):
            await self.mount(Static(EMPTY_HINT, classes="empty-hint"))

    def set_show_origin(self, show: bool) -> None:
        for view in self.query(MessageView):
            view.set_show_origin(show)

    def messages(self) -> list[Message]:
        return [view.message for view in self.query(MessageView)]
