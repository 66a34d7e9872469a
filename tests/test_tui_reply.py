"""Stream-chunk parsing, origin runs, live stats and code-block extraction used by the chat UI."""

from __future__ import annotations

from localspec.tui.reply import (
    LiveStats,
    ReplyDelta,
    ReplyDone,
    add_origin,
    chat_messages,
    code_blocks,
    origin_spans,
    parse_chunk,
    request_options,
)
from localspec.tui.screens.settings import parse_settings
from localspec.tui.store import ChatSettings, Conversation, Message


def test_parse_chunk_reads_delta_step_and_final_summary() -> None:
    chunk = {
        "choices": [{"index": 0, "delta": {"content": "abcdef"}, "finish_reason": None}],
        "speculative_step": {"drafted": 4, "accepted": 3, "source": "draft", "drafted_chars": 4},
    }
    assert parse_chunk(chunk) == [ReplyDelta("abcdef", 4, 4, 3, "draft")]
    final = {
        "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
        "usage": {"completion_tokens": 9},
        "speculative": {"acceptance": 0.75, "tokens_per_second": 12.5, "mean_accepted_length": 2.0},
    }
    assert parse_chunk(final) == [ReplyDone("length", final["usage"], final["speculative"])]


def test_drafted_chars_never_exceed_the_delta() -> None:
    chunk = {"choices": [{"delta": {"content": "ab"}}], "speculative_step": {"drafted_chars": 9}}
    [delta] = parse_chunk(chunk)
    assert isinstance(delta, ReplyDelta) and delta.drafted_chars == 2


def test_origin_runs_merge_and_split_text_back() -> None:
    runs: list[list[int]] = []
    add_origin(runs, 3, 5)  # "abc" drafted, "de" target
    add_origin(runs, 0, 2)  # "fg" target
    add_origin(runs, 2, 2)  # "hi" drafted
    assert runs == [[1, 3], [0, 4], [1, 2]]
    assert origin_spans("abcdefghi", runs) == [("abc", True), ("defg", False), ("hi", True)]
    assert origin_spans("abcdefghiXYZ", runs)[-1] == ("XYZ", False)
    assert origin_spans("ab", runs) == [("ab", True)]


def test_live_stats_follow_steps_then_the_final_summary() -> None:
    live = LiveStats()
    live.add(ReplyDelta("x", drafted=4, accepted=3))
    live.add(ReplyDelta("y", drafted=4, accepted=1))
    assert live.acceptance == 0.5
    assert live.mean_accepted_length == 3.0  # (3+1 + 1+1) tokens over 2 passes
    live.finish(ReplyDone("stop", {"completion_tokens": 6}, {"acceptance": 0.4, "tokens_per_second": 99.0}))
    assert live.acceptance == 0.4
    assert live.tokens_per_second == 99.0
    assert live.summary()["accepted"] == 4


def test_code_blocks_finds_closed_and_unclosed_fences() -> None:
    text = "intro\n```python\nprint(1)\n```\nmid\n~~~\nraw\n~~~\n```sh\nls -la\n"
    assert code_blocks(text) == ["print(1)\n", "raw\n", "ls -la\n"]
    assert code_blocks("no code") == []


def test_request_carries_system_prompt_history_and_settings() -> None:
    conv = Conversation("abc123", "t", "Be brief.", ChatSettings(0.0, 0.9, 32, "ngram", 5))
    history = [
        Message(1, "abc123", "user", "hi"),
        Message(2, "abc123", "assistant", ""),  # a cancelled empty reply is not sent back
        Message(3, "abc123", "user", "again"),
    ]
    assert chat_messages(conv, history) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "user", "content": "again"},
    ]
    options = request_options(conv.settings, conv.id)
    assert options["temperature"] == 0.0 and options["max_tokens"] == 32
    assert options["speculative"] == "ngram" and options["seed"] == 5
    assert options["slot"].startswith("chat-")


def test_settings_form_validation_names_the_field() -> None:
    assert parse_settings("0", "1", "16", "", "") == ChatSettings(0.0, 1.0, 16, None, None)
    for args, word in [
        (("hot", "1", "16", "", ""), "Temperature"),
        (("3", "1", "16", "", ""), "Temperature"),
        (("0", "0", "16", "", ""), "top_p"),
        (("0", "1", "0", "", ""), "Max tokens"),
        (("0", "1", "16", "x", ""), "Seed"),
    ]:
        try:
            parse_settings(*args)
        except ValueError as exc:
            assert word in str(exc)
        else:
            raise AssertionError(f"{args} should be rejected")


def test_final_chunk_closes_the_reply_without_counting_a_step() -> None:
    final = {
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "speculative_step": {"drafted": 0, "accepted": 0, "source": "none", "drafted_chars": 0},
        "usage": {"completion_tokens": 1},
        "speculative": {"acceptance": 0.0},
    }
    assert [type(e) for e in parse_chunk(final)] == [ReplyDone]
