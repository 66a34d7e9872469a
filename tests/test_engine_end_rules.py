"""Infill end rules: where a code completion ends, and that streaming them gives the same text."""

from __future__ import annotations

import pytest

from localspec.engine.end_rules import EndCutter, EndRule
from localspec.engine.text_stream import TextStream


def _run(pieces: list[str], single_line: bool, suffix: str = "") -> tuple[str, str, bool]:
    stopper = EndCutter(single_line, suffix)
    streamed = ""
    for piece in pieces:
        streamed += stopper.feed(piece)
        if stopper.done:
            break
    streamed += stopper.flush()
    return stopper.final_text, streamed, stopper.done


@pytest.mark.parametrize(
    ("text", "expected", "cut"),
    [
        ("a + b\n    return c\n", "a + b", True),
        ("\n    x = 1\ny = 2", "\n    x = 1", True),  # a leading newline is not the end: nothing shown yet
        ("   \n\n  ", "   \n\n  ", False),
        ("no newline at all", "no newline at all", False),
    ],
)
def test_single_line_ends_at_the_first_newline_after_content(text: str, expected: str, cut: bool) -> None:
    for pieces in ([text], list(text)):  # whole, and one character at a time
        final, streamed, done = _run(pieces, single_line=True)
        assert final == expected and streamed == expected and done is cut


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x = 1\ny = 2\n\nz = 3\n", "x = 1\ny = 2"),  # blank line after a complete statement
        ("def f(\n\n    a):\n    pass\n\nrest", "def f(\n\n    a):\n    pass"),  # open paren: keep going
        ("if a:\n\n    b()\n\nc()", "if a:\n\n    b()"),  # a colon continues the statement
        ("x = [\n    1,\n\n    2]\n\nend", "x = [\n    1,\n\n    2]"),
        ("    return a\nprint(add(1, 2))\nmore", "    return a"),  # re-typing the suffix's first line
    ],
)
def test_multi_line_ends_at_a_blank_line_after_a_complete_statement(text: str, expected: str) -> None:
    for pieces in ([text], list(text), [text[i : i + 3] for i in range(0, len(text), 3)]):
        final, streamed, done = _run(pieces, single_line=False, suffix="\nprint(add(1, 2))\n")
        assert final == expected and streamed == expected and done


def test_multi_line_without_a_cut_releases_everything_at_the_end() -> None:
    final, streamed, done = _run(list("a = 1\nb = 2\n"), single_line=False)
    assert (final, streamed, done) == ("a = 1\nb = 2\n", "a = 1\nb = 2\n", False)


def test_streaming_holds_back_only_what_a_later_cut_could_remove() -> None:
    stopper = EndCutter(single_line=False, suffix="return total\n")
    assert stopper.feed("total = 0\n") == "total = 0"  # the newline may become part of a blank-line cut
    assert stopper.feed("ret") == ""  # could be the start of the suffix's first line
    assert stopper.feed("urn x\n") == "\nreturn x"  # it was not
    assert stopper.feed("return total\n") == ""  # it is: cut before it
    assert stopper.done and stopper.final_text == "total = 0\nreturn x"


def test_the_text_stream_applies_the_rule_after_stop_strings() -> None:
    stream = TextStream(["STOP"], EndRule("block"))
    assert stream.push(b"x = 1\n") == "x = 1"  # the newline is held: it may be the start of a blank-line cut
    assert not stream.stopped
    assert stream.push(b"STOP") == "\n"  # a stop string ended it: what the rule held back is final
    assert stream.stopped and stream.text == "x = 1\n"
    single = TextStream([], EndRule("single_line"))
    assert single.push(b"  a") == "  a" and single.push(b"b\nc") == "b"
    assert single.stopped and single.text == "  ab" and single.finish() == ""
