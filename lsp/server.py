"""The pygls language server: registers features and hands the work to plain modules.

Handlers are async and never wait on the daemon for longer than a generation: suggestions come from
`suggestions.Suggester`, prompts from `prompt`, extra context from `context_chunks`, LSP shapes from
`items`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from cattrs import ClassValidationError, transform_error
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.uris import to_fs_path

from localspec import __version__
from localspec.errors import ConfigError
from localspec.lsp.context_chunks import ChunkRing, WorkspaceWatcher
from localspec.lsp.daemon_link import DaemonLink
from localspec.lsp.items import completion_items, inline_items
from localspec.lsp.settings import LspSettings
from localspec.lsp.suggestions import DocumentSnapshot, Suggester
from localspec.lsp.text_edits import PositionEncoding, offset_at
from localspec.lsp.warm_progress import WarmProgress
from localspec.lsp.warmup import Warmer

log = logging.getLogger(__name__)

COMMAND_TOGGLE = "localspec.toggle"
COMMAND_STATS = "localspec.stats"
# Editing the same region of a file refreshes its context chunk at most this often.
CHUNK_REFRESH_S = 1.0


class _Protocol(LanguageServerProtocol):
    """Answers a request it cannot parse (a negative position, a missing field) with a JSON-RPC error.

    pygls logs such a message and drops it, and the editor would wait for an answer forever.
    """

    def structure_message(self, data: dict[str, Any]) -> Any:
        try:
            return super().structure_message(data)
        except JsonRpcException as exc:
            if "method" in data and "id" in data:
                cause = exc.__cause__
                details = "; ".join(transform_error(cause)) if isinstance(cause, ClassValidationError) else ""
                message = f"{exc.message}: {details}" if details else exc.message
                self._send_response(data["id"], error=types.ResponseError(code=exc.code, message=message))
            raise


class LocalspecLanguageServer(LanguageServer):
    def __init__(self, link: DaemonLink | None = None) -> None:
        super().__init__(
            name="localspec",
            version=__version__,
            text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
            protocol_cls=_Protocol,
        )
        self.settings = LspSettings()
        self.ring = ChunkRing(self.settings.ring_chunks, self.settings.chunk_lines)
        self.watcher = WorkspaceWatcher(self.ring, self.settings.watch_max_file_bytes, is_open=self._is_open)
        self.link = link or DaemonLink()
        self.link.report = lambda message, warning: self.warn(message) if warning else self.info(message)
        self.warmer = Warmer(self.link, lambda: self.settings, self._ring_context, WarmProgress(self))
        self.link.on_new_cache = self._cache_replaced
        self.suggester = Suggester(self.link, lambda: self.settings, self.warmer.context, self.warn)
        self._chunk_refreshed: dict[str, float] = {}

    # --- helpers used by the handlers -------------------------------------------------------------

    def warn(self, message: str) -> None:
        log.warning("%s", message)
        self.window_log_message(types.LogMessageParams(type=types.MessageType.Warning, message=message))

    def info(self, message: str) -> None:
        self.window_log_message(types.LogMessageParams(type=types.MessageType.Info, message=message))

    @property
    def encoding(self) -> PositionEncoding:
        """The position encoding negotiated at initialize (UTF-16 unless the client offered another)."""
        value = getattr(self.workspace, "position_encoding", None) or types.PositionEncodingKind.Utf16
        name = str(getattr(value, "value", value))
        encodings: dict[str, PositionEncoding] = {"utf-8": "utf-8", "utf-32": "utf-32"}
        return encodings.get(name, "utf-16")

    def roots(self) -> list[Path]:
        folders = [to_fs_path(folder.uri) for folder in self.workspace.folders.values()]
        if not folders and self.workspace.root_uri:
            folders = [to_fs_path(self.workspace.root_uri)]
        return [Path(folder) for folder in folders if folder]

    def display_name(self, uri: str) -> str:
        """The name the model sees: relative to its workspace folder, else the bare file name."""
        path = Path(to_fs_path(uri) or uri)
        for root in self.roots():
            if path.is_relative_to(root):
                return path.relative_to(root).as_posix()
        return path.name

    def _is_open(self, path: Path) -> bool:
        return any(Path(to_fs_path(uri) or "") == path for uri in list(self.workspace.text_documents.keys()))

    def _ring_context(self, filename: str) -> list[tuple[str, str]]:
        return self.ring.extra(exclude=filename, max_chars=self.settings.extra_max_chars)

    def warm(self, uri: str, reopened: bool = False) -> None:
        """Warm the document's windows in the daemon (all of them when opened or its context is stale)."""
        name = self.display_name(uri)
        text = self.workspace.get_text_document(uri).source
        if reopened or self.warmer.context_is_stale(name):
            self.warmer.opened(uri, name, text)
        else:
            self.warmer.schedule(uri, name, text)

    def apply_settings(self, options: Any) -> None:
        try:
            new = LspSettings.from_options(options, base=self.settings)
        except ConfigError as exc:
            self.warn(str(exc))
            return
        watch_changed = (new.watch_workspace, new.watch_max_file_bytes) != (
            self.settings.watch_workspace,
            self.settings.watch_max_file_bytes,
        )
        self.settings = new
        self.ring.configure(new.ring_chunks, new.chunk_lines)
        self.suggester.configure(new)
        if watch_changed:
            self.restart_watcher()

    def restart_watcher(self) -> None:
        """(Re)start the workspace watcher in a worker thread: walking a big tree must not block the editor."""
        roots = self.roots() if self.settings.watch_workspace else []
        self.watcher.max_file_bytes = self.settings.watch_max_file_bytes
        loop = asyncio.get_running_loop()

        def restart() -> None:
            try:
                self.watcher.start(roots)
            except OSError as exc:  # inotify limits, unreadable folders
                message = f"localspec: not watching the workspace for changes on disk ({exc})."
                loop.call_soon_threadsafe(self.warn, message)
                return
            for root in self.watcher.skipped:
                message = (
                    f"localspec: not watching {root} for changes on disk (too broad a workspace folder)."
                )
                loop.call_soon_threadsafe(self.warn, message)

        loop.run_in_executor(None, restart)

    def snapshot(self, uri: str, position: types.Position) -> DocumentSnapshot | None:
        """The document as the request sees it; None for a document neither open nor readable."""
        document = self.workspace.get_text_document(uri)
        try:
            text = document.source  # pygls reads unopened documents from disk
        except (OSError, UnicodeDecodeError) as exc:
            log.info("no text for %s: %s", uri, exc)
            return None
        return DocumentSnapshot(
            uri=uri,
            text=text,
            offset=offset_at(text, position, self.encoding),
            filename=self.display_name(uri),
        )

    def _cache_replaced(self) -> None:
        """The daemon's prompt cache starts empty (it restarted, or loaded other models): warm the open files again."""
        self.warmer.cache_replaced()
        asyncio.get_running_loop().call_soon(self._warm_all)

    def _warm_all(self) -> None:
        for uri in list(self.workspace.text_documents):
            self.warm(uri)

    async def suggest(self, uri: str, position: types.Position) -> tuple[DocumentSnapshot | None, str | None]:
        """The document as the request sees it and the suggestion at the cursor (None: no document, nothing
        to suggest). The windows near the cursor are warmed next, after the suggestion (`Warmer.suggesting`); a
        file's context is refreshed once it is stale."""
        snapshot = self.snapshot(uri, position)
        if self.warmer.context_is_stale(self.display_name(uri)) and uri in self.workspace.text_documents:
            self.warm(uri)
        self.warmer.focus(uri, position.line)
        with self.warmer.suggesting():
            suggestion = await self.suggester.suggest(snapshot) if snapshot else None
        return snapshot, suggestion

    def remember_chunk(self, uri: str, line: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._chunk_refreshed.get(uri, 0.0) < CHUNK_REFRESH_S:
            return
        self._chunk_refreshed[uri] = now
        self.ring.add(self.display_name(uri), self.workspace.get_text_document(uri).source, line)

    def forget_document(self, uri: str) -> None:
        """A closed document: cancel its generation and drop its cached suggestions (its chunk stays)."""
        self.suggester.forget(uri)
        self.warmer.forget(uri)
        self._chunk_refreshed.pop(uri, None)

    def stats(self) -> dict[str, Any]:
        return {
            "enabled": self.settings.enable,
            "suggestions": self.suggester.stats.as_dict(),
            "cache_entries": len(self.suggester.cache),
            "in_flight": self.suggester.in_flight(),
            "warming": self.warmer.pending,
            "warmed": self.warmer.warmed,
            # windows left cold until the cursor comes near them (the daemon's prompt cache is full near it)
            "warm_waiting": self.warmer.waiting,
            "context_chunks": [chunk.filename for chunk in self.ring.chunks()],
            "watched_folders": [str(root) for root in self.watcher.roots],
            "daemon": self.link.describe(),
            "settings": self.settings.as_options(),
        }


server = LocalspecLanguageServer()


@server.feature(types.INITIALIZE)
def initialize(ls: LocalspecLanguageServer, params: types.InitializeParams) -> None:
    ls.apply_settings(params.initialization_options)


@server.feature(types.INITIALIZED)
def initialized(ls: LocalspecLanguageServer, params: types.InitializedParams) -> None:
    ls.restart_watcher()
    ls.link.warm_up(ls.settings.auto_start_daemon)


@server.feature(types.SHUTDOWN)
async def shutdown(ls: LocalspecLanguageServer, params: None) -> None:
    ls.suggester.cancel_all()
    ls.warmer.stop()
    ls.watcher.stop()
    await ls.link.aclose()


@server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
async def did_change_configuration(
    ls: LocalspecLanguageServer, params: types.DidChangeConfigurationParams
) -> None:
    if isinstance(params.settings, dict) and params.settings:
        ls.apply_settings(params.settings)
        return
    # Pull-model clients send an empty notification and expect us to ask.
    workspace_caps = ls.client_capabilities.workspace
    if workspace_caps is not None and workspace_caps.configuration:
        result = await ls.workspace_configuration_async(
            types.ConfigurationParams(items=[types.ConfigurationItem(section="localspec")])
        )
        if result and isinstance(result[0], dict):
            ls.apply_settings(result[0])


@server.feature(types.WORKSPACE_DID_CHANGE_WORKSPACE_FOLDERS)
def did_change_workspace_folders(
    ls: LocalspecLanguageServer, params: types.DidChangeWorkspaceFoldersParams
) -> None:
    ls.restart_watcher()


@server.feature(types.TEXT_DOCUMENT_DID_OPEN)
def did_open(ls: LocalspecLanguageServer, params: types.DidOpenTextDocumentParams) -> None:
    ls.remember_chunk(params.text_document.uri, 0, force=True)
    ls.warm(params.text_document.uri, reopened=True)


@server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
def did_change(ls: LocalspecLanguageServer, params: types.DidChangeTextDocumentParams) -> None:
    changes = params.content_changes
    line = 0
    if changes and isinstance(changes[-1], types.TextDocumentContentChangePartial):
        line = changes[-1].range.start.line
    ls.remember_chunk(params.text_document.uri, line)
    uri = params.text_document.uri
    ls.warmer.changed(uri, ls.display_name(uri), lambda: ls.workspace.get_text_document(uri).source)


@server.feature(types.TEXT_DOCUMENT_DID_SAVE)
def did_save(ls: LocalspecLanguageServer, params: types.DidSaveTextDocumentParams) -> None:
    ls.remember_chunk(params.text_document.uri, 0, force=True)


@server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: LocalspecLanguageServer, params: types.DidCloseTextDocumentParams) -> None:
    ls.forget_document(params.text_document.uri)


@server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
async def inline_completion(
    ls: LocalspecLanguageServer, params: types.InlineCompletionParams
) -> types.InlineCompletionList | None:
    snapshot, suggestion = await ls.suggest(params.text_document.uri, params.position)
    if snapshot is None or not suggestion:
        return types.InlineCompletionList(items=[])
    return inline_items(snapshot.text, snapshot.offset, suggestion, ls.encoding)


@server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions())
async def completion(ls: LocalspecLanguageServer, params: types.CompletionParams) -> types.CompletionList:
    snapshot, suggestion = await ls.suggest(params.text_document.uri, params.position)
    if snapshot is None or not suggestion:
        return types.CompletionList(is_incomplete=True, items=[])
    return completion_items(snapshot.text, snapshot.offset, suggestion, ls.encoding)


@server.command(COMMAND_TOGGLE)
def toggle(ls: LocalspecLanguageServer, *args: Any) -> dict[str, bool]:
    """Flip suggestions on/off, or set them with a boolean argument."""
    enable = args[0] if args and isinstance(args[0], bool) else not ls.settings.enable
    ls.apply_settings({"enable": enable})
    ls.info(f"localspec suggestions {'enabled' if enable else 'disabled'}.")
    return {"enabled": ls.settings.enable}


@server.command(COMMAND_STATS)
def show_stats(ls: LocalspecLanguageServer, *args: Any) -> dict[str, Any]:
    stats = ls.stats()
    s = stats["suggestions"]
    ls.window_show_message(
        types.ShowMessageParams(
            type=types.MessageType.Info,
            message=(
                f"localspec: {s['requests']} requests, {s['cache_hits']} from cache, "
                f"{s['generations']} generated, {s['superseded'] + s['cancelled']} cancelled, "
                f"last {s['last_latency_ms']:.0f} ms"
            ),
        )
    )
    return stats
