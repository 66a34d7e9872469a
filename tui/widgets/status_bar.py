"""Bottom line: daemon state, model pair and the speculative stats of the current/last reply."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from localspec.tui.widgets.message import DRAFTED_STYLE


class StatusBar(Widget):
    state: reactive[str] = reactive("offline")
    models: reactive[str] = reactive("")
    tokens_per_second: reactive[float | None] = reactive(None)
    acceptance: reactive[float | None] = reactive(None)
    mean_accepted_length: reactive[float | None] = reactive(None)
    show_origin: reactive[bool] = reactive(False)

    def clear_stats(self) -> None:
        self.tokens_per_second = self.acceptance = self.mean_accepted_length = None

    def render(self) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(f" {self.state} ", style="reverse")
        # Live numbers first: on a narrow terminal the long model names are what gets cut.
        if self.tokens_per_second is not None:
            text.append(f" {self.tokens_per_second:.1f} tok/s │")
        if self.acceptance is not None:
            text.append(f" accept {self.acceptance:.0%} │")
        if self.mean_accepted_length is not None:
            text.append(f" {self.mean_accepted_length:.2f} tok/pass │")
        if self.show_origin:
            text.append(" ")
            text.append("drafted", style=DRAFTED_STYLE)
            text.append(" / target │")
        if self.models:
            text.append(f" {self.models}")
        return text
