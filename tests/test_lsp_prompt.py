"""Prompt windows around the cursor, language detection, line mode and the settings model."""

from __future__ import annotations

from typing import Any

import pytest

from localspec.errors import ConfigError
from localspec.lsp.daemon_link import DaemonLink
from localspec.lsp.prompt import build_prompt, prefix_window, suffix_window, wants_single_line, warm_windows
from localspec.lsp.settings import LspSettings

LINES = "".join(f"line{i}\n" for i in range(10))


def test_prefix_window_keeps_whole_lines_before_the_cursor_line() -> None:
    offset = LINES.index("line5") + 2
    assert prefix_window(LINES, offset, max_lines=2, max_chars=1000) == "line3\nline4\nli"
    assert prefix_window(LINES, offset, max_lines=100, max_chars=1000) == LINES[:offset]


def test_prefix_window_drops_oldest_lines_to_fit_the_character_cap() -> None:
    offset = LINES.index("line5") + 2
    assert prefix_window(LINES, offset, max_lines=100, max_chars=14) == "line3\nline4\nli"
    assert prefix_window(LINES, offset, max_lines=100, max_chars=13) == "line4\nli"
    # Anchored windows drop a whole step of lines at a time.
    assert prefix_window(LINES, offset, max_lines=0, max_chars=14, step=4) == "line4\nli"
    # A single line longer than the cap is cut inside the line.
    long_line = "x" * 50
    assert prefix_window(long_line, 50, max_lines=10, max_chars=8) == "x" * 8


def test_suffix_window_takes_rest_of_line_and_following_lines() -> None:
    offset = LINES.index("line5") + 2
    assert suffix_window(LINES, offset, max_lines=2, max_chars=1000) == "ne5\nline6\nline7\n"
    assert suffix_window(LINES, offset, max_lines=2, max_chars=10) == "ne5\nline6\n"
    assert suffix_window(LINES, len(LINES), max_lines=2, max_chars=10) == ""


def test_single_line_when_code_follows_the_cursor() -> None:
    text = "print(x)\n"
    assert wants_single_line(text, text.index("x"), "auto")
    assert not wants_single_line(text, text.index("\n"), "auto")
    assert not wants_single_line(text, text.index("x"), "multi")
    assert wants_single_line(text, text.index("\n"), "single")


def test_prefix_windows_start_on_a_multiple_of_the_step_so_nearby_cursors_share_them() -> None:
    text = "".join(f"line{i}\n" for i in range(40))
    starts = {}
    for line in range(40):
        window = prefix_window(text, text.index(f"line{line}\n"), max_lines=8, max_chars=10_000, step=4)
        starts[line] = window.splitlines()[0] if window else None
        shown = window.count("\n")
        assert shown == line if line < 8 else 8 <= shown < 12
    assert starts[12] == starts[15] == "line4" and starts[16] == "line8"


def test_warm_windows_cover_the_start_of_every_cursors_prompt() -> None:
    text = "".join(f"line{i}\n" for i in range(100))
    settings = LspSettings.from_options({"prefixLines": 8, "windowStepLines": 4, "suffixLines": 0})
    windows = warm_windows(text, settings)
    for line in range(100):
        offset = text.index(f"line{line}\n")
        prompt = build_prompt(text, offset, "a.py", settings)
        assert any(window.startswith(prompt.prefix) for window in windows), line
    assert len(windows) == 24  # one per anchor: lines 0, 4, ..., 92 (the cursor at the very end starts at 92)


def test_build_prompt_uses_settings() -> None:
    settings = LspSettings.from_options(
        {"prefixLines": 1, "suffixLines": 0, "lineMode": "single", "windowStepLines": 1}
    )
    prompt = build_prompt(LINES, LINES.index("line5"), "a.py", settings, [("b.py", "x = 1\n")])
    assert (prompt.prefix, prompt.suffix) == ("line4\n", "line5\n")
    assert prompt.single_line and prompt.extra == [("b.py", "x = 1\n")]
    # One-line suggestions see fewer lines after the cursor (they are evaluated anew at every jump).
    settings = LspSettings.from_options({"suffixLines": 4, "singleLineSuffixLines": 1, "lineMode": "single"})
    assert build_prompt(LINES, LINES.index("line5"), "a.py", settings).suffix == "line5\nline6\n"
    multi = LspSettings.from_options({"suffixLines": 4, "singleLineSuffixLines": 1, "lineMode": "multi"})
    assert (
        build_prompt(LINES, LINES.index("line5"), "a.py", multi).suffix
        == "line5\nline6\nline7\nline8\nline9\n"
    )


def test_suggestions_see_fewer_lines_after_the_cursor_where_prompts_are_measured_slow() -> None:
    at = LINES.index("line5")
    auto = LspSettings.from_options({"lineMode": "single"})
    assert build_prompt(LINES, at, "a.py", auto).suffix == "line5\nline6\nline7\n"
    assert build_prompt(LINES, at, "a.py", auto, slow_prompts=True).suffix == "line5\nline6\n"
    chosen = LspSettings.from_options({"lineMode": "single", "singleLineSuffixLines": 2})
    assert build_prompt(LINES, at, "a.py", chosen, slow_prompts=True).suffix == "line5\nline6\nline7\n"
    # Blocks too: 16 lines after the cursor's, 4 where prompts are slow.
    multi = LspSettings.from_options({"lineMode": "multi"})
    assert build_prompt(LINES, 0, "a.py", multi).suffix == LINES  # (all 10: fewer than 16)
    assert (
        build_prompt(LINES, 0, "a.py", multi, slow_prompts=True).suffix
        == "line0\nline1\nline2\nline3\nline4\n"
    )
    # The daemon link measures: a CPU's ~20 ms a prompt token is slow, a GPU's fraction of one is not, and
    # suggestions with a few new prompt tokens say nothing (they cost about one pass however many there are).
    link = DaemonLink()
    assert not link.slow_prompts

    def final(cached: int, seconds: float) -> dict[str, Any]:  # a stream's last chunk, as the daemon sends it
        usage = {"prompt_tokens": 900, "prompt_tokens_details": {"cached_tokens": cached}}
        return {"usage": usage, "speculative": {"prompt_seconds": seconds}}

    link._note_prompt_cost(final(897, 0.5))
    assert link.prompt_ms_per_token is None
    link._note_prompt_cost(final(880, 0.4))
    assert link.prompt_ms_per_token == pytest.approx(20.0) and link.slow_prompts
    for _ in range(10):
        link._note_prompt_cost(final(880, 0.006))
    assert not link.slow_prompts


def test_settings_accept_camel_case_snake_case_and_a_localspec_section() -> None:
    settings = LspSettings.from_options({"localspec": {"maxTokens": 12, "debounce_ms": 5, "unknown": 1}})
    assert (settings.max_tokens, settings.debounce_ms, settings.enable) == (12, 5, True)
    updated = LspSettings.from_options({"enable": False}, base=settings)
    assert (updated.max_tokens, updated.enable) == (12, False)
    assert LspSettings.from_options(None) == LspSettings()
    assert updated.as_options()["maxTokens"] == 12


def test_invalid_settings_name_the_field() -> None:
    with pytest.raises(ConfigError, match="max_tokens"):
        LspSettings.from_options({"maxTokens": 0})
