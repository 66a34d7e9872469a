"""UTF-16 (and UTF-8/32) position arithmetic, including positions outside the document."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from lsprotocol import types

from localspec.lsp.text_edits import (
    PositionEncoding,
    code_units,
    end_position,
    offset_at,
    position_at,
    word_start,
)

TEXT = "a😀b\r\nsecond line\nthird"


def pos(line: int, character: int) -> types.Position:
    return types.Position(line=line, character=character)


def test_utf16_counts_astral_characters_as_two_units() -> None:
    assert code_units("a😀b") == 4
    assert code_units("a😀b", "utf-32") == 3
    assert code_units("a😀b", "utf-8") == 6
    assert offset_at(TEXT, pos(0, 3)) == 2  # after the emoji
    assert offset_at(TEXT, pos(0, 3), "utf-32") == 3
    assert position_at(TEXT, 2) == pos(0, 3)


def test_column_inside_a_surrogate_pair_maps_to_the_character_start() -> None:
    assert offset_at(TEXT, pos(0, 2)) == 1


def test_positions_outside_the_document_are_clamped() -> None:
    assert offset_at(TEXT, pos(0, 99)) == TEXT.index("\r")  # end of line content, before CRLF
    assert offset_at(TEXT, pos(1, 99)) == TEXT.index("\nthird")
    assert offset_at(TEXT, pos(50, 0)) == len(TEXT)
    assert offset_at(TEXT, pos(2, 99)) == len(TEXT)
    assert offset_at("", pos(3, 4)) == 0
    assert position_at(TEXT, 10_000) == pos(2, 5)
    assert position_at(TEXT, -5) == pos(0, 0)


def test_line_terminators_are_the_lsp_ones() -> None:
    text = "a\rb\r\nc\nd\x0ce\u2028f"
    assert position_at(text, text.index("b")) == pos(1, 0)
    assert position_at(text, text.index("c")) == pos(2, 0)
    # Form feed and U+2028 are ordinary characters in LSP positions.
    assert position_at(text, text.index("f")) == pos(3, 4)
    assert offset_at(text, pos(3, 4)) == text.index("f")


def test_end_position_after_multiline_insert() -> None:
    assert end_position(pos(3, 4), "ab😀") == pos(3, 8)
    assert end_position(pos(3, 4), "x\n  y😀") == pos(4, 5)
    assert end_position(pos(3, 4), "x\r\ny\rzz") == pos(5, 2)


def test_word_start_finds_the_identifier_before_the_cursor() -> None:
    text = "value = self.comp"
    assert word_start(text, len(text)) == text.index("comp")
    assert word_start("x = (", 5) == 5


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=60), st.data())
def test_position_and_offset_round_trip(text: str, data: st.DataObject) -> None:
    offset = data.draw(st.integers(min_value=0, max_value=len(text)))
    # Offsets between \r and \n are not addressable positions; skip them by moving to the line end.
    if 0 < offset <= len(text) and text[offset - 1 : offset] == "\r" and text[offset : offset + 1] == "\n":
        offset -= 1
    encodings: tuple[PositionEncoding, ...] = ("utf-8", "utf-16", "utf-32")
    for encoding in encodings:
        assert offset_at(text, position_at(text, offset, encoding), encoding) == offset
