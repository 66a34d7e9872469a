"""`localspec chat`: open the terminal chat UI (imports Textual only when run)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "chat",
        help="terminal chat UI (starts the daemon if needed)",
        description="Chat with the local model in the terminal; conversations live in the user data dir.",
    )
    parser.add_argument(
        "--no-autostart",
        action="store_true",
        help="do not start the daemon when none is running (show an error instead)",
    )
    parser.add_argument(
        "--store", type=Path, help="conversation database (default: <data dir>/conversations.sqlite3)"
    )
    parser.set_defaults(func=_chat)


def _chat(args: argparse.Namespace) -> int:
    from localspec.tui.app import ChatApp
    from localspec.tui.connection import Connection
    from localspec.tui.store import ConversationStore

    app = ChatApp(Connection(autostart=not args.no_autostart), ConversationStore(args.store))
    app.run()
    return 0
