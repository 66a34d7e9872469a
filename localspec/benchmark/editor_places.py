"""Which files and places the editor benchmark visits: source files found under the folders named, the longest of
them, and seeded random lines inside indented blocks, far enough apart that each jump leaves the last window."""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from pathlib import Path

from localspec.errors import InvalidRequestError

SOURCE_EXTENSIONS = {
    ".py": "python",
    ".js": "javascript",
    ".jsx": "javascriptreact",
    ".ts": "typescript",
    ".tsx": "typescriptreact",
    ".go": "go",
    ".rs": "rust",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".hpp": "cpp",
    ".java": "java",
    ".kt": "kotlin",
    ".rb": "ruby",
    ".php": "php",
    ".cs": "csharp",
    ".swift": "swift",
    ".scala": "scala",
    ".lua": "lua",
    ".sh": "shellscript",
}
SKIP_DIRS = {
    "node_modules",
    "vendor",
    "third_party",
    "build",
    "dist",
    "target",
    "__pycache__",
    "site-packages",
}
MIN_GAP = 40  # lines between a place and the previous place in the same file
CLOSING_ONLY = set(")]};, \t")


def find_sources(sources: Iterable[Path]) -> list[Path]:
    """Source files named, or found in folders named (by extension; hidden and vendored folders skipped)."""
    found: list[Path] = []
    for source in sources:
        if source.is_file():
            found.append(source.resolve())
        elif source.is_dir():
            for folder, dirs, files in os.walk(source):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS)
                found += [Path(folder, name).resolve() for name in sorted(files) if _is_source(name)]
        else:
            raise InvalidRequestError(f"{source}: no such file or folder.")
    return list(dict.fromkeys(found))


def _is_source(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix in SOURCE_EXTENSIONS


def choose_files(paths: list[Path], count: int, min_lines: int) -> list[tuple[Path, str]]:
    """The `count` longest readable files of at least `min_lines` lines (longest first, then by path)."""
    texts = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        lines = text.count("\n") + 1
        if lines >= min_lines:
            texts.append((-lines, str(path), path, text))
    if not texts:
        raise InvalidRequestError(
            f"No source file of at least {min_lines} lines among {len(paths)} found; name bigger files or lower "
            "--min-lines."
        )
    return [(path, text) for _, _, path, text in sorted(texts)[:count]]


def is_place(lines: list[str], index: int) -> bool:
    """A line worth jumping to: inside an indented block, not blank, not the first line, not only closers."""
    if index <= 0 or index >= len(lines):
        return False
    line = lines[index]
    stripped = line.strip()
    return bool(stripped) and line[0] in " \t" and not set(stripped) <= CLOSING_ONLY


class PlacePicker:
    """Seeded random places in one file, each `gap` lines or more from the previous one, never the same twice."""

    def __init__(self, lines: list[str], rng: random.Random, gap: int = MIN_GAP) -> None:
        self.candidates = [i for i in range(len(lines)) if is_place(lines, i)]
        self.rng = rng
        self.gap = gap
        self.previous: int | None = None

    def next(self) -> int | None:
        previous = self.previous
        allowed = [i for i in self.candidates if previous is None or abs(i - previous) >= self.gap]
        if not allowed:
            return None
        place = self.rng.choice(allowed)
        self.candidates.remove(place)
        self.previous = place
        return place
