"""Position arithmetic between LSP positions (line + code units) and offsets into a Python string.

LSP counts columns in UTF-16 code units unless the client negotiated another encoding, while Python
indexes code points; every conversion lives here. Positions outside the document are clamped, never
raised on: editors send stale positions while the user types faster than the server answers.
"""

from __future__ import annotations

import bisect
import re
from typing import Literal

from lsprotocol import types

PositionEncoding = Literal["utf-8", "utf-16", "utf-32"]


def _units(char: str, encoding: PositionEncoding) -> int:
    if encoding == "utf-32":
        return 1
    if encoding == "utf-16":
        return 2 if ord(char) > 0xFFFF else 1
    return len(char.encode("utf-8", errors="surrogatepass"))


def code_units(text: str, encoding: PositionEncoding = "utf-16") -> int:
    """Length of `text` in the client's code units."""
    if encoding == "utf-32":
        return len(text)
    return sum(_units(char, encoding) for char in text)


# LSP line terminators; other Unicode separators (form feed, U+2028) are ordinary characters.
_NEWLINE = re.compile(r"\r\n|\r|\n")


def _lines(text: str) -> list[tuple[int, int]]:
    """(start, content end) offsets of every line, terminators excluded."""
    lines = []
    start = 0
    for match in _NEWLINE.finditer(text):
        lines.append((start, match.start()))
        start = match.end()
    lines.append((start, len(text)))
    return lines


def _line_span(text: str, line: int) -> tuple[int, int] | None:
    """(start, content end) of line `line`, or None past the last line. Every request converts a position or two
    in files of thousands of lines: text with "\n" endings only is split in C, up to that line alone."""
    if "\r" in text:
        lines = _lines(text)
        return lines[line] if line < len(lines) else None
    parts = text.split("\n", line)
    if len(parts) <= line:
        return None
    start = len(text) - len(parts[-1])
    end = text.find("\n", start)
    return start, len(text) if end == -1 else end


def offset_at(text: str, position: types.Position, encoding: PositionEncoding = "utf-16") -> int:
    """Offset into `text` for an LSP position.

    A line past the end maps to the end of the document; a column past the end of its line maps to
    the line's end; a column inside a surrogate pair (or a UTF-8 sequence) maps to that character's start.
    """
    span = _line_span(text, max(position.line, 0))
    if span is None:
        return len(text)
    offset, end = span
    remaining = position.character
    while offset < end and remaining > 0:
        width = _units(text[offset], encoding)
        if width > remaining:
            break
        remaining -= width
        offset += 1
    return offset


def position_at(text: str, offset: int, encoding: PositionEncoding = "utf-16") -> types.Position:
    """LSP position of an offset into `text` (clamped to the document; inside a CRLF counts as its end)."""
    offset = max(0, min(offset, len(text)))
    if "\r" in text:
        lines = _lines(text)
        line = bisect.bisect_right([start for start, _ in lines], offset) - 1
        start, end = lines[line]
    else:  # "\n" endings only: counted in C
        line = text.count("\n", 0, offset)
        start = text.rfind("\n", 0, offset) + 1
        end = offset
    return types.Position(line=line, character=code_units(text[start : min(offset, end)], encoding))


def end_position(
    start: types.Position, inserted: str, encoding: PositionEncoding = "utf-16"
) -> types.Position:
    """Where the cursor lands after inserting `inserted` at `start`."""
    lines = _lines(inserted)
    if len(lines) == 1:
        return types.Position(line=start.line, character=start.character + code_units(inserted, encoding))
    last_start, _ = lines[-1]
    return types.Position(
        line=start.line + len(lines) - 1, character=code_units(inserted[last_start:], encoding)
    )


def word_start(text: str, offset: int) -> int:
    """Start offset of the identifier that ends at `offset` (equal to `offset` if there is none).

    Classic completion replaces this word, so the editor's own filtering matches what was typed.
    """
    start = offset
    while start > 0 and (text[start - 1].isalnum() or text[start - 1] == "_"):
        start -= 1
    return start
