"""The ring of context chunks and the workspace watcher that refreshes it from disk (real inotify events)."""

from __future__ import annotations

import ctypes
import errno
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from watchdog.observers import inotify_c
from watchdog.observers.api import EventEmitter

from localspec.lsp.context_chunks import ChunkRing, IgnoreRules, WorkspaceWatcher, chunk_around


def numbered(prefix: str, count: int) -> str:
    return "".join(f"{prefix} {i}\n" for i in range(count))


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_chunk_around_centres_on_the_line_and_stays_inside_the_file() -> None:
    text = numbered("l", 100)
    assert chunk_around(text, 50, 10) == (45, "".join(f"l {i}\n" for i in range(45, 55)))
    assert chunk_around(text, 0, 10)[0] == 0
    assert chunk_around(text, 99, 10)[0] == 90


def test_ring_drops_oldest_and_replaces_same_region_and_near_duplicates() -> None:
    ring = ChunkRing(max_chunks=3, chunk_lines=10)
    for name in ("a.py", "b.py", "c.py", "d.py"):
        ring.add(name, numbered(name, 20))
    assert [c.filename for c in ring.chunks()] == ["b.py", "c.py", "d.py"]
    # The same region of b.py again: replaced, and now the newest.
    ring.add("b.py", numbered("b.py", 20) + "more\n", line=2)
    assert [c.filename for c in ring.chunks()] == ["c.py", "d.py", "b.py"]
    # Identical text under another name replaces d.py's chunk.
    ring.add("copy.py", numbered("d.py", 20)[: len(numbered("d.py", 10))])
    assert [c.filename for c in ring.chunks()] == ["c.py", "b.py", "copy.py"]
    ring.remove_file("c.py")
    assert [c.filename for c in ring.chunks()] == ["b.py", "copy.py"]


def test_extra_is_newest_first_excludes_current_file_and_respects_the_budget() -> None:
    ring = ChunkRing(max_chunks=8, chunk_lines=4)
    ring.add("a.py", numbered("a", 4))
    ring.add("b.py", numbered("b", 4))
    ring.add("c.py", numbered("c", 4))
    assert [name for name, _ in ring.extra(exclude="c.py")] == ["b.py", "a.py"]
    assert [name for name, _ in ring.extra(max_chars=len(numbered("c", 4)) * 2)] == ["c.py", "b.py"]


def test_gitignore_rules_cover_nested_files_and_directories(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("build/\n*.log\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".gitignore").write_text("secret.py\n")
    rules = IgnoreRules(tmp_path)
    assert rules.ignored(tmp_path / "build" / "out.py")
    assert rules.ignored(tmp_path / "x" / "run.log")
    assert rules.ignored(tmp_path / "sub" / "secret.py")
    assert rules.ignored(tmp_path / ".git" / "config")
    assert not rules.ignored(tmp_path / "secret.py")
    assert not rules.ignored(tmp_path / "src" / "main.py")


def test_watcher_refreshes_chunks_of_files_changed_on_disk(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("ignored/\n")
    (tmp_path / "ignored").mkdir()
    ring = ChunkRing(max_chunks=8, chunk_lines=16)
    watcher = WorkspaceWatcher(ring, max_file_bytes=1000, is_open=lambda path: path.name == "open.py")
    watcher.start([tmp_path])
    try:
        (tmp_path / "pkg").mkdir()
        (tmp_path / "pkg" / "gen.py").write_text("def generated():\n    return 1\n")
        assert wait_for(lambda: any(c.filename == "pkg/gen.py" for c in ring.chunks()))
        (tmp_path / "pkg" / "gen.py").write_text("def regenerated():\n    return 2\n")
        assert wait_for(lambda: any("regenerated" in c.text for c in ring.chunks()))
        assert sum(c.filename == "pkg/gen.py" for c in ring.chunks()) == 1

        (tmp_path / "ignored" / "skip.py").write_text("ignored = True\n")
        (tmp_path / "open.py").write_text("the editor owns this one\n")
        (tmp_path / "big.py").write_text("x = 1\n" * 500)
        (tmp_path / "blob.bin").write_bytes(b"\xff\xfe\x00binary")
        # Written last: once it is seen, the events above were processed.
        (tmp_path / "late.py").write_text("late = True\n")
        assert wait_for(lambda: any(c.filename == "late.py" for c in ring.chunks()))
        names = {c.filename for c in ring.chunks()}
        assert names == {"pkg/gen.py", "late.py"}

        (tmp_path / "pkg" / "gen.py").unlink()
        assert wait_for(lambda: all(c.filename != "pkg/gen.py" for c in ring.chunks()))
    finally:
        watcher.stop()


def test_ignored_directories_are_not_walked_for_nested_rules(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("node_modules/\n")
    (tmp_path / "node_modules" / "pkg").mkdir(parents=True)
    # A rule inside an ignored tree must not apply (git never reads it either).
    (tmp_path / "node_modules" / "pkg" / ".gitignore").write_text("*.py\n")
    rules = IgnoreRules(tmp_path)
    assert rules.ignored(tmp_path / "node_modules" / "pkg" / "index.js")
    assert not rules.ignored(tmp_path / "node_modules.py")


def test_watcher_refuses_to_watch_the_home_directory() -> None:
    watcher = WorkspaceWatcher(ChunkRing())
    watcher.start([Path.home()])
    try:
        assert watcher.roots == [] and watcher.skipped == [Path.home().resolve()]
    finally:
        watcher.stop()


def test_a_folder_that_cannot_be_watched_releases_the_folders_watched_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    add_watch = inotify_c.inotify_add_watch

    def add_watch_out_of_watches(fd: int, path: bytes, mask: int) -> int:
        """The kernel's answer once the user's inotify watches (fs.inotify.max_user_watches) are used up."""
        if path.startswith(bytes(second)):
            ctypes.set_errno(errno.ENOSPC)
            return -1
        return add_watch(fd, path, mask)

    monkeypatch.setattr(inotify_c, "inotify_add_watch", add_watch_out_of_watches)
    emitters_before = set(emitter_threads())
    watcher = WorkspaceWatcher(ChunkRing())
    with pytest.raises(OSError, match="watch limit"):
        watcher.start([first, second])
    assert watcher.roots == []
    assert set(emitter_threads()) == emitters_before  # the first folder's watch was stopped, not left running
    watcher.stop()


def emitter_threads() -> list[threading.Thread]:
    return [
        thread for thread in threading.enumerate() if isinstance(thread, EventEmitter) and thread.is_alive()
    ]
