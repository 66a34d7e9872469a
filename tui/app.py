"""`localspec chat`: the Textual app. It talks to the daemon only through `localspec.tui.connection`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import ClassVar

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Input
from textual.worker import Worker

from localspec.errors import DaemonUnavailableError
from localspec.tui.commands import COMMANDS, ChatCommands
from localspec.tui.connection import Connection, describe_error
from localspec.tui.reply import (
    LiveStats,
    ReplyDelta,
    add_origin,
    chat_messages,
    code_blocks,
    parse_chunk,
    request_options,
)
from localspec.tui.screens.confirm import ConfirmScreen
from localspec.tui.screens.help import HelpScreen
from localspec.tui.screens.settings import SettingsScreen
from localspec.tui.screens.text_prompt import TextPromptScreen
from localspec.tui.store import (
    DEFAULT_TITLE,
    ChatSettings,
    Conversation,
    ConversationStore,
    Message,
    StoreError,
)
from localspec.tui.widgets.chat_view import ChatView
from localspec.tui.widgets.conversation_header import ConversationHeader
from localspec.tui.widgets.notice import Notice
from localspec.tui.widgets.prompt_input import PromptInput
from localspec.tui.widgets.sidebar import Sidebar
from localspec.tui.widgets.status_bar import StatusBar

# Streamed text is written to the store at most this often (and at the end), so a kill loses < 0.25 s.
PERSIST_INTERVAL_S = 0.25
TITLE_CHARS = 48


class ChatApp(App[None]):
    CSS_PATH = "chat.tcss"
    TITLE = "localspec chat"
    COMMANDS: ClassVar = App.COMMANDS | {ChatCommands}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel_reply", "Cancel reply", show=False),
        Binding("f1", "help", "Keys"),
        Binding("ctrl+n", "new_conversation", "New", priority=True),
        Binding("f2", "rename_conversation", "Rename"),
        Binding("f8", "delete_conversation", "Delete"),
        Binding("ctrl+f", "search", "Search", priority=True),
        Binding("f4", "settings", "Settings"),
        Binding("f3,ctrl+o", "toggle_origin", "Origin colours"),
        Binding("f5", "copy_code", "Copy code"),
        Binding("ctrl+r", "reconnect", "Reconnect", show=False, priority=True),
        Binding("ctrl+l", "dismiss_notice", "Dismiss error", show=False),
        Binding("ctrl+b", "toggle_sidebar", "Toggle sidebar", show=False),
    ]

    def __init__(
        self,
        connection: Connection | None = None,
        store: ConversationStore | None = None,
        *,
        connect_on_start: bool = True,
    ) -> None:
        super().__init__()
        self.connection = connection or Connection()
        self.store = store or ConversationStore()
        self.connect_on_start = connect_on_start
        self.conversation: Conversation | None = None
        self.show_origin = False
        self.generating = False
        self._reply_worker: Worker[None] | None = None
        self._connect_worker: Worker[bool] | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            yield Sidebar(id="sidebar")
            with Vertical(id="chat"):
                yield ConversationHeader(id="conversation-header")
                yield ChatView(id="messages")
                yield Notice("", id="notice")
                yield PromptInput(id="prompt")
        yield StatusBar(id="status")
        yield Footer()

    async def on_mount(self) -> None:
        self.query_one(Notice).dismiss()
        conversations = self.store.list_conversations()
        self.conversation = conversations[0] if conversations else self.store.create_conversation()
        await self._show_conversation()
        if self.store.recovered:
            self.notify(
                f"{self.store.recovered} reply(ies) were cut off when the app stopped; kept as interrupted."
            )
        self.query_one(PromptInput).focus()
        if self.connect_on_start:
            self.connect()

    # daemon connection

    def connect(self) -> Worker[bool]:
        """Start connecting unless a connection attempt is already under way."""
        if self._connect_worker is None or self._connect_worker.is_finished:
            self._connect_worker = self._connect()
        return self._connect_worker

    @work(exclusive=True, group="connect", exit_on_error=False)
    async def _connect(self) -> bool:
        """Find or start the daemon and wait until its models are loaded, with progress in the status bar."""
        status = self.query_one(StatusBar)
        status.state = "connecting"

        def progress(message: str) -> None:
            status.state = message

        try:
            models = await self.connection.connect(progress)
        except Exception as exc:  # any failure is shown in the app; the app itself keeps running
            status.state = "offline"
            self.query_one(Notice).show_error(describe_error(exc))
            return False
        status.state = "ready"
        status.models = models
        self.query_one(Notice).dismiss()
        return True

    async def _ensure_connected(self) -> bool:
        if self.connection.connected:
            return True
        worker = self.connect()
        await worker.wait()
        return bool(worker.result)

    # conversations

    async def _show_conversation(self) -> None:
        assert self.conversation is not None
        self.sub_title = self.conversation.title
        self.query_one(ConversationHeader).show(self.conversation)
        await self.query_one(ChatView).show(
            self.store.messages(self.conversation.id), show_origin=self.show_origin
        )
        self._refresh_sidebar()

    def _refresh_sidebar(self) -> None:
        query = self.query_one("#search", Input).value
        current = self.conversation.id if self.conversation else None
        self.query_one(Sidebar).show(self.store.list_conversations(query), current)

    async def open_conversation(self, conversation_id: str) -> None:
        if self.generating:
            self.notify(
                "A reply is still streaming: wait, or press Esc to cancel it first.", severity="warning"
            )
            return
        conversation = self.store.get_conversation(conversation_id)
        if conversation is None:
            return
        self.conversation = conversation
        await self._show_conversation()
        self.query_one(StatusBar).clear_stats()

    @on(Sidebar.Selected)
    async def _on_sidebar_selected(self, event: Sidebar.Selected) -> None:
        await self.open_conversation(event.conversation_id)
        self.query_one(PromptInput).focus()

    @on(Sidebar.SearchChanged)
    def _on_search_changed(self, event: Sidebar.SearchChanged) -> None:
        self._refresh_sidebar()

    async def action_new_conversation(self) -> None:
        if self.generating:
            self.notify(
                "A reply is still streaming: wait, or press Esc to cancel it first.", severity="warning"
            )
            return
        with self._saving():
            self.conversation = self.store.create_conversation()
            self.query_one("#search", Input).value = ""
            await self._show_conversation()
            self.query_one(StatusBar).clear_stats()
        self.query_one(PromptInput).focus()

    def action_rename_conversation(self) -> None:
        conversation = self.conversation
        if conversation is None:
            return

        def rename(title: str | None) -> None:
            if title is not None and title.strip():
                with self._saving():
                    self.store.rename_conversation(conversation.id, title)
                    conversation.title = title.strip()
                    self.sub_title = conversation.title
                    self.query_one(ConversationHeader).show(conversation)
                    self._refresh_sidebar()

        self.push_screen(TextPromptScreen("Rename conversation", conversation.title), rename)

    def action_delete_conversation(self) -> None:
        conversation = self.conversation
        if conversation is None:
            return
        if self.generating:
            self.notify(
                "Cancel the reply in flight (Esc) before deleting its conversation.", severity="warning"
            )
            return

        async def delete(confirmed: bool | None) -> None:
            if not confirmed:
                return
            with self._saving():
                self.store.delete_conversation(conversation.id)
                remaining = self.store.list_conversations()
                self.conversation = remaining[0] if remaining else self.store.create_conversation()
                await self._show_conversation()

        self.push_screen(
            ConfirmScreen(f"Delete “{conversation.title}” and all its messages?", "Delete"), delete
        )

    def action_search(self) -> None:
        self.query_one(Sidebar).display = True
        self.query_one(Sidebar).focus_search()

    def action_toggle_sidebar(self) -> None:
        sidebar = self.query_one(Sidebar)
        sidebar.display = not sidebar.display

    def action_settings(self) -> None:
        conversation = self.conversation
        if conversation is None:
            return

        def save(result: tuple[str, ChatSettings] | None) -> None:
            if result is None:
                return
            system_prompt, settings = result
            with self._saving():
                self.store.update_conversation_settings(conversation.id, system_prompt, settings)
                conversation.system_prompt = system_prompt
                conversation.settings = settings
                self.query_one(ConversationHeader).show(conversation)
                self.notify("Settings saved for this conversation.")

        self.push_screen(
            SettingsScreen(conversation.title, conversation.system_prompt, conversation.settings), save
        )

    @contextlib.contextmanager
    def _saving(self) -> Iterator[None]:
        """Run a store write; when it fails (a full disk), say so and leave the screen as it was."""
        try:
            yield
        except StoreError as exc:
            self.query_one(Notice).show_error(str(exc))

    def action_toggle_origin(self) -> None:
        self.show_origin = not self.show_origin
        self.query_one(ChatView).set_show_origin(self.show_origin)
        self.query_one(StatusBar).show_origin = self.show_origin

    def action_copy_code(self) -> None:
        for message in reversed(self.query_one(ChatView).messages()):
            if message.role == "assistant" and (blocks := code_blocks(message.content)):
                self.copy_to_clipboard(blocks[-1])
                self.notify(f"Copied the last code block ({len(blocks[-1].splitlines())} lines).")
                return
        self.notify("No code block in this conversation's replies yet.", severity="warning")

    def action_help(self) -> None:
        explanations = {action: help_text for _, action, help_text in COMMANDS}
        self.push_screen(HelpScreen([b for b in self.BINDINGS if isinstance(b, Binding)], explanations))

    def action_reconnect(self) -> None:
        self.connection.reset()
        self.connect()

    def action_dismiss_notice(self) -> None:
        self.query_one(Notice).dismiss()

    async def action_quit(self) -> None:
        # Let a reply in flight end as "cancelled" (saved, and the daemon told to stop) before exiting.
        worker = self._reply_worker
        if worker is not None and self.generating:
            worker.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(worker.wait(), timeout=5)
        self.exit()

    def action_cancel_reply(self) -> None:
        if self._reply_worker is not None and self.generating:
            self._reply_worker.cancel()

    # sending and streaming

    @on(PromptInput.Submitted)
    def _on_submitted(self, event: PromptInput.Submitted) -> None:
        text = event.text.strip()
        if not text:
            return
        if self.generating:
            self.notify("A reply is still streaming: wait, or press Esc to cancel it.", severity="warning")
            return
        self.query_one(PromptInput).clear()
        self.query_one(Notice).dismiss()
        self.generating = True
        self._reply_worker = self._reply(text)

    @work(exclusive=True, group="reply", exit_on_error=False)
    async def _reply(self, text: str) -> None:
        conversation = self.conversation
        assert conversation is not None
        chat = self.query_one(ChatView)
        status = self.query_one(StatusBar)
        try:
            user = self.store.add_message(conversation.id, "user", text)
        except StoreError as exc:
            # Nothing was sent or saved: give the text back and say why (a full disk, usually).
            self._give_back(text)
            self.query_one(Notice).show_error(str(exc))
            self.generating = False
            return
        await chat.add(user, show_origin=self.show_origin)
        try:
            reply = self.store.add_message(conversation.id, "assistant", "", status="streaming")
        except StoreError as exc:
            with contextlib.suppress(StoreError):
                self.store.delete_message(user.id)
            await chat.remove_message(user.id)
            self._give_back(text)
            self.query_one(Notice).show_error(str(exc))
            self.generating = False
            return
        view = await chat.add(reply, show_origin=self.show_origin)
        view.start_stream()
        live = LiveStats()
        status.clear_stats()
        finish_reason = "stop"
        finished = False
        failure: str | None = None
        save_failure: str | None = None  # the reply keeps streaming on screen when saving it fails
        last_persist = time.monotonic()
        try:
            if not await self._ensure_connected():
                raise _NotConnected
            status.state = "generating"
            messages = chat_messages(conversation, self.store.messages(conversation.id)[:-1])
            options = request_options(conversation.settings, conversation.id)
            async for chunk in self.connection.stream_chat(messages, options):
                for event in parse_chunk(chunk):
                    if isinstance(event, ReplyDelta):
                        live.add(event)
                        if event.text:
                            reply.content += event.text
                            add_origin(reply.origin, event.drafted_chars, len(event.text))
                            await view.append(event.text)
                    else:
                        live.finish(event)
                        finish_reason = event.finish_reason
                        finished = True
                self._show_stats(live)
                if time.monotonic() - last_persist >= PERSIST_INTERVAL_S:
                    last_persist = time.monotonic()
                    try:
                        self.store.update_message(reply)
                    except StoreError as exc:
                        save_failure = str(exc)
            if not finished:
                raise DaemonUnavailableError(
                    "The daemon ended the reply early (it stopped or restarted). Send again, or press ctrl+r."
                )
        except asyncio.CancelledError:
            finish_reason = "cancelled"
        except _NotConnected:
            failure = ""  # the connect worker already explained
        except Exception as exc:  # daemon errors and anything unexpected: shown, never a crash
            failure = describe_error(exc)
        finally:
            # Persist before touching widgets: when the app quits mid-reply this still runs.
            reply.stats = live.summary()
            reply.status = "cancelled" if finish_reason == "cancelled" else "complete"
            undo = failure is not None and not reply.content
            if failure is not None and not undo:
                reply.status = "error"
            try:
                self.store.update_message(reply)
            except StoreError as exc:
                save_failure = str(exc)
            await view.stop_stream()
            if undo:
                # Nothing came back: undo the turn and give the typed text back, so nothing is lost.
                await self._undo_turn(user, reply, text)
            else:
                view.refresh_header()
                with contextlib.suppress(StoreError):  # a title is not worth a second error
                    self._auto_title(conversation, text)
            if failure or save_failure:
                self.query_one(Notice).show_error(" ".join(m for m in (failure, save_failure) if m))
            if not undo:
                self._show_stats(live)
            status.state = "ready" if self.connection.connected else "offline"
            self.generating = False
            self._refresh_sidebar()

    async def _undo_turn(self, user: Message, reply: Message, text: str) -> None:
        chat = self.query_one(ChatView)
        for message in (reply, user):
            with contextlib.suppress(StoreError):  # at worst an empty turn stays in the store
                self.store.delete_message(message.id)
            await chat.remove_message(message.id)
        self._give_back(text)

    def _give_back(self, text: str) -> None:
        """Put a message that was not sent back into the input, before anything typed since."""
        prompt = self.query_one(PromptInput)
        typed_since = prompt.text.strip()
        prompt.load_text(f"{text}\n{typed_since}" if typed_since else text)
        prompt.move_cursor(prompt.document.end)

    def _show_stats(self, live: LiveStats) -> None:
        status = self.query_one(StatusBar)
        status.tokens_per_second = live.tokens_per_second
        # No drafts at all (no draft model, nothing to look up): an acceptance rate would mislead.
        status.acceptance = live.acceptance if live.drafted_total else None
        status.mean_accepted_length = live.mean_accepted_length

    def _auto_title(self, conversation: Conversation, text: str) -> None:
        if conversation.title != DEFAULT_TITLE:
            return
        first_line = text.strip().splitlines()[0]
        title = first_line if len(first_line) <= TITLE_CHARS else first_line[: TITLE_CHARS - 1] + "…"
        self.store.rename_conversation(conversation.id, title)
        conversation.title = title
        self.sub_title = title
        self.query_one(ConversationHeader).show(conversation)
        self._refresh_sidebar()

    async def on_unmount(self) -> None:
        await self.connection.aclose()


class _NotConnected(Exception):
    pass
