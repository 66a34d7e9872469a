"""Conversations in SQLite under the user data dir.

WAL mode and a commit after every streamed chunk batch mean a reply survives the app being killed
mid-stream: on the next start the row is still there, marked "interrupted".
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from localspec import locations
from localspec.errors import LocalspecError

Role = Literal["system", "user", "assistant"]
# "streaming" only while a reply is arriving; a row still "streaming" at start-up was cut off by a kill.
MessageStatus = Literal["complete", "streaming", "cancelled", "error", "interrupted"]
DEFAULT_TITLE = "New conversation"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    system_prompt TEXT NOT NULL DEFAULT '',
    settings TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    content TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT 'complete',
    origin TEXT NOT NULL DEFAULT '[]',
    stats TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, id);
"""


class StoreError(LocalspecError):
    """The conversation database cannot be opened or written."""


@dataclass
class ChatSettings:
    """Per-conversation sampling settings sent with every request."""

    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 1024
    # None = the daemon's configured speculative mode.
    speculative: str | None = None
    seed: int | None = None

    @classmethod
    def from_json(cls, text: str) -> ChatSettings:
        known = {f for f in cls.__dataclass_fields__}
        data = json.loads(text or "{}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@dataclass
class Conversation:
    id: str
    title: str
    system_prompt: str = ""
    settings: ChatSettings = field(default_factory=ChatSettings)
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass
class Message:
    id: int
    conversation_id: str
    role: Role
    content: str
    status: MessageStatus = "complete"
    # Run-length origin of the reply text: [[drafted, n_chars], ...], drafted=1 for accepted-draft text.
    origin: list[list[int]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0


def default_path() -> Path:
    return locations.data_dir() / "conversations.sqlite3"


class ConversationStore:
    """Small synchronous store; every write commits (SQLite is fast enough at chat speeds)."""

    def __init__(self, path: Path | None = None, *, clock: Any = time.time) -> None:
        self.path = path or default_path()
        self._clock = clock
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(
                f"Cannot open the conversation store {self.path} ({exc}). "
                "Check the folder is writable, or move the file aside to start fresh."
            ) from exc
        self.recovered = self._recover_interrupted()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _writing(self) -> Iterator[None]:
        # Every write is one SQLite transaction: when it fails (disk full, read-only folder) it rolls back
        # whole, so what was saved before stays intact; callers get a StoreError that says what to do.
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(
                f"Could not save to the conversation store {self.path} ({exc}). Free some disk space "
                "(or check the folder is writable) and try again; everything saved earlier is kept."
            ) from exc

    def _recover_interrupted(self) -> int:
        cursor = self._db.execute("UPDATE messages SET status='interrupted' WHERE status='streaming'")
        return cursor.rowcount

    # conversations

    def create_conversation(
        self, title: str = DEFAULT_TITLE, system_prompt: str = "", settings: ChatSettings | None = None
    ) -> Conversation:
        with self._writing():
            now = self._clock()
            conv = Conversation(uuid.uuid4().hex, title, system_prompt, settings or ChatSettings(), now, now)
            self._db.execute(
                "INSERT INTO conversations VALUES (?, ?, ?, ?, ?, ?)",
                (conv.id, conv.title, conv.system_prompt, conv.settings.to_json(), now, now),
            )
            return conv

    def get_conversation(self, conversation_id: str) -> Conversation | None:
        row = self._db.execute("SELECT * FROM conversations WHERE id=?", (conversation_id,)).fetchone()
        return _conversation(row) if row else None

    def list_conversations(self, search: str = "") -> list[Conversation]:
        """Most recently updated first; `search` matches titles and message text (case-insensitive)."""
        if not search.strip():
            rows = self._db.execute("SELECT * FROM conversations ORDER BY updated_at DESC, rowid DESC")
        else:
            pattern = f"%{_escape_like(search.strip())}%"
            rows = self._db.execute(
                "SELECT * FROM conversations c WHERE c.title LIKE ?1 ESCAPE '\\' OR EXISTS ("
                " SELECT 1 FROM messages m WHERE m.conversation_id = c.id AND m.content LIKE ?1 ESCAPE '\\')"
                " ORDER BY updated_at DESC, rowid DESC",
                (pattern,),
            )
        return [_conversation(row) for row in rows]

    def rename_conversation(self, conversation_id: str, title: str) -> None:
        with self._writing():
            self._db.execute(
                "UPDATE conversations SET title=? WHERE id=?",
                (title.strip() or DEFAULT_TITLE, conversation_id),
            )

    def update_conversation_settings(
        self, conversation_id: str, system_prompt: str, settings: ChatSettings
    ) -> None:
        with self._writing():
            self._db.execute(
                "UPDATE conversations SET system_prompt=?, settings=? WHERE id=?",
                (system_prompt, settings.to_json(), conversation_id),
            )

    def delete_conversation(self, conversation_id: str) -> None:
        with self._writing():
            self._db.execute("DELETE FROM conversations WHERE id=?", (conversation_id,))

    # messages

    def add_message(
        self, conversation_id: str, role: Role, content: str, status: MessageStatus = "complete"
    ) -> Message:
        with self._writing():
            now = self._clock()
            cursor = self._db.execute(
                "INSERT INTO messages (conversation_id, role, content, status, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (conversation_id, role, content, status, now),
            )
            self._db.execute("UPDATE conversations SET updated_at=? WHERE id=?", (now, conversation_id))
            assert cursor.lastrowid is not None
        return Message(cursor.lastrowid, conversation_id, role, content, status, created_at=now)

    def update_message(self, message: Message) -> None:
        """Persist a message's current content, status, origin runs and stats (one commit)."""
        with self._writing():
            self._db.execute(
                "UPDATE messages SET content=?, status=?, origin=?, stats=? WHERE id=?",
                (
                    message.content,
                    message.status,
                    json.dumps(message.origin),
                    json.dumps(message.stats),
                    message.id,
                ),
            )

    def delete_message(self, message_id: int) -> None:
        with self._writing():
            self._db.execute("DELETE FROM messages WHERE id=?", (message_id,))

    def messages(self, conversation_id: str) -> list[Message]:
        rows = self._db.execute(
            "SELECT * FROM messages WHERE conversation_id=? ORDER BY id", (conversation_id,)
        )
        return [
            Message(
                row["id"],
                row["conversation_id"],
                row["role"],
                row["content"],
                row["status"],
                json.loads(row["origin"]),
                json.loads(row["stats"]),
                row["created_at"],
            )
            for row in rows
        ]


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _conversation(row: sqlite3.Row) -> Conversation:
    return Conversation(
        row["id"],
        row["title"],
        row["system_prompt"],
        ChatSettings.from_json(row["settings"]),
        row["created_at"],
        row["updated_at"],
    )
