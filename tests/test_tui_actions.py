"""Pilot tests of the chat app's actions that need no daemon: sidebar, delete, rename, settings,
copy code, origin colours, help and command palette. The store is the fixed one of the snapshot tests."""

from __future__ import annotations

from pathlib import Path

from test_tui_app import wait_for
from test_tui_snapshots import REPLY, fixed_store
from textual.command import CommandList, CommandPalette
from textual.widgets import Input, OptionList, Select, Static, TextArea

from localspec.tui.app import ChatApp
from localspec.tui.connection import Connection
from localspec.tui.screens.confirm import ConfirmScreen
from localspec.tui.screens.help import HelpScreen
from localspec.tui.screens.settings import SettingsScreen
from localspec.tui.store import ChatSettings
from localspec.tui.widgets.chat_view import ChatView
from localspec.tui.widgets.message import MessageView
from localspec.tui.widgets.notice import Notice
from localspec.tui.widgets.prompt_input import PromptInput

SIZE = (110, 34)


def offline_app(tmp_path: Path) -> ChatApp:
    return ChatApp(Connection(autostart=False), fixed_store(tmp_path / "c.sqlite3"), connect_on_start=False)


async def test_copy_last_code_block(tmp_path: Path) -> None:
    app = offline_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f5")
        assert app.clipboard == "numbers = [1, 2, 3]\nprint(numbers[::-1])\n"


async def test_delete_asks_first_and_then_removes_the_conversation(tmp_path: Path) -> None:
    app = offline_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        assert app.conversation is not None
        doomed = app.conversation.id
        await pilot.press("f8")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        assert app.store.get_conversation(doomed) is not None
        await pilot.press("f8", "y")
        await pilot.pause()
        assert app.store.get_conversation(doomed) is None
        assert app.conversation.title == "Shell one-liners"
        assert [c.title for c in app.store.list_conversations()] == ["Shell one-liners"]


async def test_rename_from_the_dialog_takes_any_text_literally(tmp_path: Path) -> None:
    app = offline_app(tmp_path)
    title = "[b]Lists[/b"  # not markup: shown as typed
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2")
        app.screen.query_one(Input).value = title
        await pilot.press("enter")
        assert app.conversation is not None
        assert app.store.get_conversation(app.conversation.id).title == title
        options = app.query_one("#conversations", OptionList)
        assert str(options.get_option_at_index(0).prompt) == title
        await pilot.press("f2", "escape")  # cancel keeps the title
        assert app.store.get_conversation(app.conversation.id).title == title
        await pilot.press("f8")  # the confirmation shows it too, without choking on the brackets
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")


async def test_settings_are_saved_for_the_open_conversation_only(tmp_path: Path) -> None:
    app = offline_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        assert app.conversation is not None
        await pilot.press("f4")
        screen = app.screen
        assert isinstance(screen, SettingsScreen)
        screen.query_one("#system-prompt", TextArea).load_text("Answer in French.")
        screen.query_one("#temperature", Input).value = "9"
        await pilot.press("ctrl+s")
        assert app.screen is screen  # invalid: stays open with the reason
        assert "between 0 and 2" in str(screen.query_one("#settings-error", Static).render())
        screen.query_one("#temperature", Input).value = "0"
        screen.query_one("#seed", Input).value = ""
        screen.query_one("#speculative", Select).value = "ngram"
        await pilot.press("ctrl+s")
        assert not isinstance(app.screen, SettingsScreen)
        saved = app.store.get_conversation(app.conversation.id)
        assert saved is not None
        assert saved.system_prompt == "Answer in French."
        assert saved.settings == ChatSettings(0.0, 0.9, 256, "ngram", None)
        header = str(app.query_one("#conversation-header", Static).render())
        assert "temp 0 · top_p 0.9 · max 256 · spec ngram · system prompt" in header
        other = next(c for c in app.store.list_conversations() if c.id != saved.id)
        assert other.system_prompt == "" and other.settings == ChatSettings()


async def test_origin_toggle_colours_replies_by_their_stored_origin(tmp_path: Path) -> None:
    app = offline_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        [reply] = [v for v in app.query_one(ChatView).query(MessageView) if v.message.role == "assistant"]
        origin = reply.query_one(".message-origin", Static)
        assert not origin.display
        await pilot.press("f3")
        assert origin.display and not reply.query_one(".message-body").display
        text = origin.render()
        assert str(text) == REPLY
        # Runs alternate target (0) / drafted (1) every 7 characters in the fixed store.
        drafted = {span.start for span in text.spans if span.style}
        assert drafted == set(range(7, len(REPLY), 14))
        await pilot.press("ctrl+o")
        assert not origin.display


async def test_help_lists_every_binding_and_the_newline_key(tmp_path: Path) -> None:
    app = offline_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        keys = {key for key, _ in app.screen.rows}
        assert {
            "enter",
            "shift+enter / ctrl+j",
            "esc",
            "ctrl+n",
            "f2",
            "f8",
            "f4",
            "f5",
            "f3 / ctrl+o",
        } <= keys
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_command_palette_runs_an_action(tmp_path: Path) -> None:
    app = offline_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        before = len(app.store.list_conversations())
        await pilot.press("ctrl+p", *"new conversation")

        def palette_found_only_the_command() -> bool:  # its search runs in a worker after each key
            if not isinstance(app.screen, CommandPalette):
                return False
            results = app.screen.query_one(CommandList)
            return results.option_count == 1 and "New conversation" in str(
                results.get_option_at_index(0).prompt
            )

        await wait_for(pilot, palette_found_only_the_command)
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(app.store.list_conversations()) == before + 1)
        assert app.conversation is not None and app.conversation.title == "New conversation"


async def test_shift_enter_and_ctrl_j_insert_newlines_enter_sends(
    tmp_path: Path, localspec_home: Path
) -> None:
    app = offline_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        prompt = app.query_one(PromptInput)
        prompt.focus()
        await pilot.press("a", "shift+enter", "b", "ctrl+j", "c")
        assert prompt.text == "a\nb\nc"
        # Enter sends: with no daemon (autostart off) the send fails, says so, and hands the text back.
        await pilot.press("enter")
        await pilot.pause()
        notice = app.query_one(Notice)
        await wait_for(pilot, lambda: notice.display and not app.generating)
        assert "No localspec daemon is running" in notice.text
        assert prompt.text == "a\nb\nc"
