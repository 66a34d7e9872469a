"""Conversation list with a search box."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Label, OptionList
from textual.widgets.option_list import Option, OptionDoesNotExist

from localspec.tui.store import Conversation


class Sidebar(Vertical):
    class Selected(Message):
        def __init__(self, conversation_id: str) -> None:
            super().__init__()
            self.conversation_id = conversation_id

    class SearchChanged(Message):
        def __init__(self, query: str) -> None:
            super().__init__()
            self.query = query

    def compose(self) -> ComposeResult:
        yield Label("Conversations", classes="sidebar-title")
        yield Input(placeholder="Search (ctrl+f)", id="search")
        yield OptionList(id="conversations")

    def show(self, conversations: list[Conversation], current_id: str | None) -> None:
        options = self.query_one("#conversations", OptionList)
        options.clear_options()
        options.add_options([Option(Text(conv.title), id=conv.id) for conv in conversations])
        if current_id is not None:
            try:
                options.highlighted = options.get_option_index(current_id)
            except OptionDoesNotExist:  # the current conversation is filtered out by the search
                options.highlighted = None

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.post_message(self.Selected(event.option.id))

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(self.SearchChanged(event.value))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        # Enter in the search box moves to the (filtered) list, ready to open a conversation with Enter.
        event.stop()
        options = self.query_one("#conversations", OptionList)
        if options.option_count:
            options.focus()
            if options.highlighted is None:
                options.highlighted = 0

    def focus_search(self) -> None:
        self.query_one("#search", Input).focus()

    @property
    def highlighted_id(self) -> str | None:
        options = self.query_one("#conversations", OptionList)
        if options.highlighted is None:
            return None
        return options.get_option_at_index(options.highlighted).id
