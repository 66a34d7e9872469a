"""Extra context for fill-in-the-middle: a ring of chunks from files the user recently opened, edited
or saved (as llama.vscode keeps), and a workspace watcher that keeps chunks of files changed on disk by
other tools (git checkout, formatters, generators) fresh.

The ring is shared between the LSP event loop and the watcher's thread, hence the lock.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pathspec
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger(__name__)

# Near-duplicate chunks (same lines, a few edits apart) waste the context window.
SIMILARITY_LIMIT = 0.9


@dataclass(frozen=True)
class Chunk:
    filename: str
    start_line: int
    text: str


def _similarity(a: str, b: str) -> float:
    """Jaccard similarity of the two chunks' line sets."""
    lines_a, lines_b = set(a.splitlines()), set(b.splitlines())
    if not lines_a and not lines_b:
        return 1.0
    return len(lines_a & lines_b) / len(lines_a | lines_b)


def chunk_around(text: str, line: int, chunk_lines: int) -> tuple[int, str]:
    """(start line, text) of a `chunk_lines`-line window of `text` centred on `line`."""
    lines = text.splitlines(keepends=True)
    start = max(0, min(line - chunk_lines // 2, len(lines) - chunk_lines))
    return start, "".join(lines[start : start + chunk_lines])


class ChunkRing:
    """The most recent chunks, oldest dropped first; at most one chunk per region of a file."""

    def __init__(self, max_chunks: int = 16, chunk_lines: int = 64) -> None:
        self._lock = threading.Lock()
        self._chunks: deque[Chunk] = deque()
        self.max_chunks = max_chunks
        self.chunk_lines = chunk_lines

    def configure(self, max_chunks: int, chunk_lines: int) -> None:
        with self._lock:
            self.max_chunks = max_chunks
            self.chunk_lines = chunk_lines
            while len(self._chunks) > max_chunks:
                self._chunks.popleft()

    def add(self, filename: str, text: str, line: int = 0) -> None:
        """Remember the chunk of `text` around `line`, replacing overlapping or near-identical ones."""
        start, chunk_text = chunk_around(text, line, self.chunk_lines)
        if not chunk_text.strip() or self.max_chunks == 0:
            return
        chunk = Chunk(filename, start, chunk_text)
        with self._lock:
            self._chunks = deque(
                existing for existing in self._chunks if not self._replaces(chunk, existing, self.chunk_lines)
            )
            self._chunks.append(chunk)
            while len(self._chunks) > self.max_chunks:
                self._chunks.popleft()

    @staticmethod
    def _replaces(new: Chunk, old: Chunk, chunk_lines: int) -> bool:
        if new.filename == old.filename and abs(new.start_line - old.start_line) < chunk_lines:
            return True
        return _similarity(new.text, old.text) > SIMILARITY_LIMIT

    def remove_file(self, filename: str) -> None:
        with self._lock:
            self._chunks = deque(chunk for chunk in self._chunks if chunk.filename != filename)

    def chunks(self) -> list[Chunk]:
        with self._lock:
            return list(self._chunks)

    def extra(self, exclude: str | None = None, max_chars: int = 8000) -> list[tuple[str, str]]:
        """(filename, text) pairs for the infill request, newest first, within `max_chars`.

        Chunks of the file being edited are left out: its prefix and suffix windows already cover it.
        """
        selected: list[tuple[str, str]] = []
        used = 0
        for chunk in reversed(self.chunks()):
            if chunk.filename == exclude:
                continue
            if used + len(chunk.text) > max_chars:
                break
            selected.append((chunk.filename, chunk.text))
            used += len(chunk.text)
        return selected


class IgnoreRules:
    """.gitignore rules of one workspace folder (root file plus nested ones), and .git itself."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._specs: dict[Path, pathspec.GitIgnoreSpec] = {}
        for folder, dirs, files in os.walk(root):
            here = Path(folder)
            if ".gitignore" in files:
                self.reload(here / ".gitignore")
            # Do not descend into ignored trees (node_modules, build output): they can be huge.
            dirs[:] = [name for name in dirs if not self.ignored(here / name, is_dir=True)]

    def reload(self, gitignore: Path) -> None:
        try:
            lines = gitignore.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            self._specs.pop(gitignore.parent, None)
            return
        self._specs[gitignore.parent] = pathspec.GitIgnoreSpec.from_lines(lines)

    def ignored(self, path: Path, is_dir: bool = False) -> bool:
        try:
            relative = path.relative_to(self.root)
        except ValueError:
            return True
        if ".git" in relative.parts:
            return True
        for base, spec in self._specs.items():
            try:
                inner = path.relative_to(base)
            except ValueError:
                continue
            # A pattern may name any parent directory ("build/"), so test each ancestor too.
            parts = inner.parts
            for depth in range(1, len(parts) + 1):
                candidate = "/".join(parts[:depth]) + ("/" if depth < len(parts) or is_dir else "")
                if spec.match_file(candidate):
                    return True
        return False


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: WorkspaceWatcher, rules: IgnoreRules) -> None:
        self.watcher = watcher
        self.rules = rules

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        if event.event_type in ("created", "modified", "closed"):
            self.watcher.file_changed(self.rules, Path(str(event.src_path)))
        elif event.event_type == "moved":
            self.watcher.file_removed(self.rules, Path(str(event.src_path)))
            self.watcher.file_changed(self.rules, Path(str(event.dest_path)))
        elif event.event_type == "deleted":
            self.watcher.file_removed(self.rules, Path(str(event.src_path)))


class WorkspaceWatcher:
    """Watches workspace folders; files changed on disk refresh their chunk in the ring.

    Files the editor has open are skipped (`is_open`): the editor's own edits are fresher than disk.
    """

    def __init__(
        self,
        ring: ChunkRing,
        max_file_bytes: int = 256_000,
        is_open: Callable[[Path], bool] = lambda path: False,
        on_update: Callable[[Path], None] | None = None,
    ) -> None:
        self.ring = ring
        self.max_file_bytes = max_file_bytes
        self.is_open = is_open
        self.on_update = on_update
        self._observer: Observer | None = None  # type: ignore[valid-type]
        self._lock = threading.Lock()  # start/stop may come from several worker threads
        self.roots: list[Path] = []
        self.skipped: list[Path] = []

    def start(self, roots: Iterable[Path]) -> None:
        """Watch these folders (replacing earlier ones). Blocking: walks the trees; call it off the event loop."""
        with self._lock:
            self._stop()
            candidates = [root.resolve() for root in roots if root.is_dir()]
            # An editor opened in $HOME or / would make us walk and watch the whole disk.
            self.skipped = [root for root in candidates if root in (Path.home().resolve(), Path(root.anchor))]
            roots = [root for root in candidates if root not in self.skipped]
            if not roots:
                return
            observer = Observer()
            observer.daemon = True
            for root in roots:
                observer.schedule(_Handler(self, IgnoreRules(root)), str(root), recursive=True)
            try:
                observer.start()  # returns once every folder has its inotify watch
            except OSError:
                observer.stop()  # releases the watches of the folders before the one that failed
                raise
            self._observer = observer
            # Published only now: a folder reported as watched sees every change made after the report.
            self.roots = roots

    def stop(self) -> None:
        with self._lock:
            self._stop()

    def _stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
        self.roots = []

    def file_changed(self, rules: IgnoreRules, path: Path) -> None:
        if path.name == ".gitignore":
            rules.reload(path)
            return
        if rules.ignored(path) or self.is_open(path):
            return
        try:
            size = path.stat().st_size
            if size == 0 or size > self.max_file_bytes:
                return
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            return  # vanished meanwhile, unreadable, or binary: nothing useful for the model
        self.ring.add(path.relative_to(rules.root).as_posix(), text)
        log.debug("context chunk refreshed from disk: %s", path)
        if self.on_update is not None:
            self.on_update(path)

    def file_removed(self, rules: IgnoreRules, path: Path) -> None:
        if path.name != ".gitignore" and not rules.ignored(path):
            self.ring.remove_file(path.relative_to(rules.root).as_posix())
