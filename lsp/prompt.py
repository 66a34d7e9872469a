"""What the model sees for one suggestion: prefix and suffix windows around the cursor, the file's
name, extra chunks from other files, and whether to stop at the end of the line.

The windows are chosen in lines and characters; fitting them into the model's context (in tokens) is the
engine's job (`localspec/engine/prompts.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from localspec.lsp.settings import LspSettings


@dataclass(frozen=True)
class InfillPrompt:
    prefix: str
    suffix: str
    filename: str
    single_line: bool
    extra: list[tuple[str, str]] = field(default_factory=list)


def prefix_window(text: str, offset: int, max_lines: int, max_chars: int) -> str:
    """Up to `max_lines` whole lines before the cursor's line, plus the cursor line up to the cursor;
    when longer than `max_chars`, the oldest lines go first (a partial line only if one line is too long)."""
    line_start = text.rfind("\n", 0, offset) + 1
    start = line_start
    for _ in range(max_lines):
        if start == 0:
            break
        start = text.rfind("\n", 0, start - 1) + 1
    window = text[start:offset]
    if len(window) > max_chars:
        cut = len(window) - max_chars
        newline = window.find("\n", cut)
        # Keep whole lines where possible: a window starting mid-line confuses the model's indentation.
        window = window[newline + 1 :] if newline != -1 and newline < len(window) - 1 else window[cut:]
    return window


def suffix_window(text: str, offset: int, max_lines: int, max_chars: int) -> str:
    """The rest of the cursor's line plus up to `max_lines` following lines, capped at `max_chars`."""
    end = text.find("\n", offset)
    end = len(text) if end == -1 else end + 1
    for _ in range(max_lines):
        if end >= len(text):
            break
        next_newline = text.find("\n", end)
        end = len(text) if next_newline == -1 else next_newline + 1
    window = text[offset:end]
    if len(window) > max_chars:
        cut = window.rfind("\n", 0, max_chars)
        window = window[: cut + 1] if cut > 0 else window[:max_chars]
    return window


def wants_single_line(text: str, offset: int, line_mode: str) -> bool:
    """In "auto" mode, code after the cursor on its line means the user is editing inside a line."""
    if line_mode != "auto":
        return line_mode == "single"
    line_end = text.find("\n", offset)
    rest = text[offset : len(text) if line_end == -1 else line_end]
    return bool(rest.strip())


def build_prompt(
    text: str,
    offset: int,
    filename: str,
    settings: LspSettings,
    extra: list[tuple[str, str]] | None = None,
) -> InfillPrompt:
    return InfillPrompt(
        prefix=prefix_window(text, offset, settings.prefix_lines, settings.prefix_max_chars),
        suffix=suffix_window(text, offset, settings.suffix_lines, settings.suffix_max_chars),
        filename=filename,
        single_line=wants_single_line(text, offset, settings.line_mode),
        extra=list(extra or []),
    )
