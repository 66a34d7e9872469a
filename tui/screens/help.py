"""Every key of the app, built from the live bindings so it cannot drift from them."""

from __future__ import annotations

from typing import ClassVar

from rich import box
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

INPUT_KEYS = [
    ("enter", "Send the message"),
    ("shift+enter / ctrl+j", "Insert a newline (use ctrl+j where the terminal cannot tell shift+enter)"),
    ("esc", "Cancel the reply in flight (the partial reply is kept, marked [cancelled])"),
    ("ctrl+p", "Command palette (every action below, searchable)"),
    ("ctrl+q", "Quit"),
]


def keys_table(rows: list[tuple[str, str]]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, expand=True, show_edge=False)
    table.add_column("key", style="bold", no_wrap=True)
    table.add_column("action", ratio=1)
    for key, action in rows:
        table.add_row(Text(key), Text(action))  # Text: "[cancelled]" is not markup
    return table


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,f1,q", "close", "Close", show=False)]

    def __init__(self, bindings: list[Binding], explanations: dict[str, str]) -> None:
        """`explanations` maps an action name to a sentence; bindings without one show their description."""
        super().__init__(classes="dialog-screen")
        rows = list(INPUT_KEYS)
        for binding in bindings:
            if binding.action == "cancel_reply":
                continue  # listed with the input keys
            explanation = explanations.get(binding.action, binding.description)
            rows.append((binding.key.replace(",", " / "), explanation))
        self.rows = rows

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog help"):
            yield Label("localspec chat — keys", classes="dialog-question")
            yield Static(keys_table(self.rows))
            yield Label(
                "Text colours with the origin toggle: drafted text came from accepted draft tokens "
                "(the draft model or n-gram lookup); plain text the target model produced itself.",
                classes="dialog-hint",
            )
            yield Label("Esc closes", classes="dialog-hint")

    def action_close(self) -> None:
        self.dismiss(None)
