"""One line above the messages: the open conversation's title and the settings its requests use."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from localspec.tui.store import Conversation


def settings_summary(conversation: Conversation) -> str:
    s = conversation.settings
    parts = [f"temp {s.temperature:g}", f"top_p {s.top_p:g}", f"max {s.max_tokens}"]
    parts.append(f"spec {s.speculative or 'default'}")
    if s.seed is not None:
        parts.append(f"seed {s.seed}")
    if conversation.system_prompt.strip():
        parts.append("system prompt")
    return " · ".join(parts)


class ConversationHeader(Static):
    def show(self, conversation: Conversation) -> None:
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(conversation.title, style="bold")
        text.append(f"  {settings_summary(conversation)}", style="dim")
        self.update(text)
