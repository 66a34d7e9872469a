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


def window_anchor(line: int, max_lines: int, step: int) -> int:
    """The first line of the prefix window for a cursor on `line`: at least `max_lines` lines back, on a multiple
    of `step`. Cursors anywhere in a stretch of `step` lines share the window's start, so the model's cache of one
    such prompt serves the others (and a page warmed in advance serves them all)."""
    return max(0, (line - max_lines) // max(1, step) * max(1, step))


def _line_start_before(text: str, offset: int, lines_back: int) -> int:
    """Where the line `lines_back` lines above the one holding `offset` starts."""
    start = text.rfind("\n", 0, offset) + 1
    for _ in range(lines_back):
        if start == 0:
            break
        start = text.rfind("\n", 0, start - 1) + 1
    return start


def prefix_window(text: str, offset: int, max_lines: int, max_chars: int, step: int = 1) -> str:
    """The lines from `window_anchor` to the cursor's line, plus the cursor line up to the cursor; when longer
    than `max_chars`, the oldest lines go first, `step` lines at a time (a partial line only if one line is too
    long)."""
    line = text.count("\n", 0, offset)
    anchor = window_anchor(line, max_lines, step)
    start = _line_start_before(text, offset, line - anchor)
    while anchor + step <= line and offset - start > max_chars:
        anchor += step
        start = _line_start_before(text, offset, line - anchor)
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


def warm_windows(text: str, settings: LspSettings) -> list[str]:
    """The text before the cursor that every cursor of each window stretch shares (its anchor up to the
    stretch's last line), one per stretch, in file order: evaluating these in advance makes a jump anywhere in the
    file cost only the code after its cursor."""
    step = max(1, settings.window_step_lines)
    lines = text.splitlines(keepends=True)
    anchors = sorted({window_anchor(line, settings.prefix_lines, step) for line in range(len(lines) + 1)})
    windows = []
    for anchor in anchors:
        window = "".join(lines[anchor : anchor + settings.prefix_lines + step])
        if window.strip():
            windows.append(window[: settings.prefix_max_chars])
    return windows


def suffix_lines(settings: LspSettings, single_line: bool, slow_prompts: bool) -> int:
    """Lines after the cursor's line that the prompt shows: the setting, else a default that is smaller where
    the daemon's prompt tokens were measured to be slow (they are evaluated anew at every jump)."""
    block = settings.suffix_lines
    if block is None:
        block = 4 if slow_prompts else 16
    if not single_line:
        return block
    line = settings.single_line_suffix_lines
    if line is None:
        line = 1 if slow_prompts else 2
    return min(line, block)


def build_prompt(
    text: str,
    offset: int,
    filename: str,
    settings: LspSettings,
    extra: list[tuple[str, str]] | None = None,
    slow_prompts: bool = False,
) -> InfillPrompt:
    """The prompt for the cursor at `offset`. slow_prompts: the daemon evaluates prompt tokens slowly (see
    `suffix_lines`)."""
    single_line = wants_single_line(text, offset, settings.line_mode)
    return InfillPrompt(
        prefix=prefix_window(
            text, offset, settings.prefix_lines, settings.prefix_max_chars, settings.window_step_lines
        ),
        suffix=suffix_window(
            text, offset, suffix_lines(settings, single_line, slow_prompts), settings.suffix_max_chars
        ),
        filename=filename,
        single_line=single_line,
        extra=list(extra or []),
    )
