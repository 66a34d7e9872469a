"""Per-conversation system prompt and sampling settings."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, TextArea

from localspec.tui.store import ChatSettings

SPECULATIVE_CHOICES = [
    ("daemon default", ""),
    ("adaptive (draft model or n-gram, whichever pays)", "adaptive"),
    ("draft model", "draft"),
    ("n-gram lookup", "ngram"),
    ("none (target alone)", "none"),
]


def parse_settings(
    temperature: str, top_p: str, max_tokens: str, seed: str, speculative: str
) -> ChatSettings:
    """Validate the form's text fields; ValueError messages name the field and the allowed range."""
    try:
        temp = float(temperature)
    except ValueError:
        raise ValueError("Temperature must be a number such as 0.7 (0 = deterministic).") from None
    if not 0.0 <= temp <= 2.0:
        raise ValueError("Temperature must be between 0 and 2.")
    try:
        nucleus = float(top_p)
    except ValueError:
        raise ValueError("top_p must be a number between 0 and 1.") from None
    if not 0.0 < nucleus <= 1.0:
        raise ValueError("top_p must be above 0 and at most 1.")
    try:
        tokens = int(max_tokens)
    except ValueError:
        raise ValueError("Max tokens must be a whole number such as 1024.") from None
    if tokens < 1:
        raise ValueError("Max tokens must be at least 1.")
    seed_value: int | None = None
    if seed.strip():
        try:
            seed_value = int(seed)
        except ValueError:
            raise ValueError("Seed must be a whole number, or empty for a random seed.") from None
    return ChatSettings(temp, nucleus, tokens, speculative or None, seed_value)


class SettingsScreen(ModalScreen[tuple[str, ChatSettings] | None]):
    """Dismisses with (system_prompt, settings) on save, None on cancel."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", show=False),
        Binding("ctrl+s", "save", "Save", show=False),
    ]

    def __init__(self, title: str, system_prompt: str, settings: ChatSettings) -> None:
        super().__init__(classes="dialog-screen")
        self.conversation_title = title
        self.system_prompt = system_prompt
        self.settings = settings

    def compose(self) -> ComposeResult:
        s = self.settings
        with VerticalScroll(classes="dialog settings"):
            yield Label(f"Settings of “{self.conversation_title}”", classes="dialog-question", markup=False)
            yield Label("System prompt")
            yield TextArea(self.system_prompt, id="system-prompt", soft_wrap=True, tab_behavior="focus")
            with Horizontal(classes="fields"):
                yield Label("Temperature")
                yield Input(str(s.temperature), id="temperature")
                yield Label("top_p")
                yield Input(str(s.top_p), id="top-p")
            with Horizontal(classes="fields"):
                yield Label("Max tokens")
                yield Input(str(s.max_tokens), id="max-tokens")
                yield Label("Seed")
                yield Input("" if s.seed is None else str(s.seed), id="seed", placeholder="random")
            yield Label("Speculative decoding")
            yield Select(SPECULATIVE_CHOICES, value=s.speculative or "", allow_blank=False, id="speculative")
            yield Label("", id="settings-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save (ctrl+s)", variant="primary", id="save")
                yield Button("Cancel (esc)", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        else:
            self.action_cancel()

    def action_save(self) -> None:
        speculative = self.query_one("#speculative", Select).value
        try:
            settings = parse_settings(
                self.query_one("#temperature", Input).value,
                self.query_one("#top-p", Input).value,
                self.query_one("#max-tokens", Input).value,
                self.query_one("#seed", Input).value,
                speculative if isinstance(speculative, str) else "",
            )
        except ValueError as exc:
            self.query_one("#settings-error", Label).update(str(exc))
            return
        self.dismiss((self.query_one("#system-prompt", TextArea).text, settings))

    def action_cancel(self) -> None:
        self.dismiss(None)
