"""Summarise the steps `localspec bench --trace-steps` kept: where each mode's target passes went.

Usage: python bench/step_traces.py RESULTS.json [MORE.json ...]   (also .json.gz, as in docs/benchmarks/traces/)
Per workload and localspec mode, a row per draft source: steps, drafts and accepted drafts per step, the share of steps
whose drafts were ready when the step began (drafted ahead), tokens per target pass, verify and drafting ms per step;
then the longest run of target-alone steps in a row and its task; then, per workload and speculative mode, how many
target passes ran cold (after a pass of another size), captured a CUDA graph (the second of their size in a row) or
replayed it (warm), and their mean ms: on a GPU the three cost very differently; with the `shape` CUDA graph key and
steps that carry their depth, the cold ones split by whether a graph of their size was kept at their KV length (one a
size, replayed only at the length it was captured at); then, for `adaptive`, the tokens per
second the chooser expected of each source it priced against what the steps it chose got, and how many were close calls
(another source within 5%); then the draft-model steps by what the step before them did (every draft taken, a draft
rejected, or no drafts): the drafts they found made ahead and their drafting time, since drafting ahead assumes every
draft is taken; then `adaptive`'s draft-model and n-gram steps by the source of the step before and what it did, with
the share of drafts taken and the tokens a second they got; then the steps after a pass of more than two tokens that ran
once (a pass of its size again captures its CUDA graph): how many kept the size, went one token short or took another,
and for `adaptive` the capture price it planned with and the replays it expected after it; last, `adaptive`'s n-gram
steps by the rate it priced them at over the target alone, with what they saved against the target alone's warm
one-token passes once the one-token passes right after them (cold, then a CUDA graph capture) are paid (with a traced
`none` run in the file); and the tokens `adaptive` expected its steps to settle beside what they settled, by source and,
for n-gram steps, by the length of the match behind the drafts (traces with `expected`): a price that missed then shows
whether the acceptance it assumed did; last, for a `--rounds` trace, each speculative mode's steps round by round
(`adaptive` plans later rounds with what it learnt in the ones before). Each run's first step is left out: its pass
also reads the prompt's last chunk (the next pass is classed against its size).
"""

from __future__ import annotations

import bisect
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterator
from itertools import pairwise, takewhile
from pathlib import Path
from typing import Any

from render_table import load, usage_error  # (this script's folder is on the path)

from localspec.engine.estimates import match_class

SUMMED = ("drafted", "accepted", "pass_tokens", "verify_ms", "draft_ms")  # step fields added up as they are


Totals = dict[tuple[str, str, str], dict[str, float]]  # per (workload, mode, source)
Longest = dict[tuple[str, str], tuple[int, str]]  # per (workload, mode): steps in a row, task
PASS_KINDS = ("cold", "capture", "warm")  # the first, second, third or later pass of a size in a row
# llama.cpp pads the KV length a pass attends over to this many cells (`llama_kv_cache::get_n_kv`), or to
# `meta.kv_pad` where a build with localspec's change was asked for more.
KV_PAD = 256


def summarise(runs: list[dict[str, Any]]) -> tuple[Totals, Longest]:
    """Step totals per (workload, mode, source); per speculative (workload, mode), the longest run of
    target-alone steps and its task."""
    totals: Totals = defaultdict(lambda: dict.fromkeys(("steps", "ready", *SUMMED), 0.0))
    longest: Longest = {}
    for run in runs:
        if run["system"] != "localspec" or "steps" not in run:
            continue
        key = (run["workload"], run["mode"])
        streak = 0
        for step in run["steps"][1:]:
            row = totals[(*key, step["source"])]
            row["steps"] += 1
            row["ready"] += step["ready"] > 0  # steps, not drafts: the table gives a share of steps
            for name in SUMMED:
                row[name] += step[name]
            streak = streak + 1 if step["source"] == "none" else 0
            if run["mode"] != "none" and streak > longest.get(key, (0, ""))[0]:
                longest[key] = (streak, run["task_id"])
    return dict(totals), longest


def speculative_runs(runs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """localspec's traced runs in a speculative mode (not the target alone)."""
    return (
        run for run in runs if run["system"] == "localspec" and run["mode"] != "none" and run.get("steps")
    )


def adaptive_runs(runs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """localspec's traced runs in `adaptive`."""
    return (run for run in speculative_runs(runs) if run["mode"] == "adaptive")


def after_passes_in_a_row(run: dict[str, Any]) -> Iterator[tuple[dict[str, Any], int, int]]:
    """Each step of `run` after its first, with the size of the target pass before it and how many passes of that
    size ran in a row up to it."""
    previous, streak = run["steps"][0]["pass_tokens"], 1
    for step in run["steps"][1:]:
        yield step, previous, streak
        streak = streak + 1 if step["pass_tokens"] == previous else 1
        previous = step["pass_tokens"]


def pass_kinds(runs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, list[float]]]:
    """Verify ms of each speculative (workload, mode)'s passes by kind (`PASS_KINDS`), runs' first steps left out."""
    kinds: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(
        lambda: {kind: [] for kind in PASS_KINDS}
    )
    for run in speculative_runs(runs):
        for step, previous, streak in after_passes_in_a_row(run):
            in_a_row = streak + 1 if step["pass_tokens"] == previous else 1
            kinds[(run["workload"], run["mode"])][PASS_KINDS[min(in_a_row, 3) - 1]].append(step["verify_ms"])
    return dict(kinds)


def cold_passes_by_graph(
    runs: list[dict[str, Any]], pad: int
) -> dict[tuple[str, str], tuple[list[float], list[float]]]:
    """Verify ms of each speculative (workload, mode)'s passes after one of another size: those whose size had a
    CUDA graph kept at their KV length (padded to `pad` cells), and the others. With the `shape` graph key llama.cpp
    keeps a graph per pass size, which replays only at the KV length it was captured at. Traces whose steps carry
    `depth`; each (workload, mode)'s runs are followed in order from no graph kept (the block before may have
    left some)."""
    kinds: dict[tuple[str, str], tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    kept_at: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)  # pass size -> padded KV length
    for run in speculative_runs(runs):
        if "depth" not in run["steps"][0]:
            continue
        key = (run["workload"], run["mode"])
        kept = kept_at[key]
        # (the first step's pass, the prompt's end and the first drafts, keeps a graph of its size too)
        first = run["steps"][0]
        kept[first["pass_tokens"]] = kv_length(first, pad)
        for step, previous, _ in after_passes_in_a_row(run):
            size, length = step["pass_tokens"], kv_length(step, pad)
            if size != previous:
                kinds[key][0 if kept.get(size) == length else 1].append(step["verify_ms"])
            kept[size] = length
    return dict(kinds)


def kv_length(step: dict[str, Any], pad: int) -> int:
    """The KV length a step's pass attended over, in units of `pad` cells."""
    return -(-(step["depth"] + step["pass_tokens"]) // pad)


def kv_pad(meta: dict[str, Any]) -> int:
    """The cells llama.cpp padded the KV length to in a bench run: `KV_PAD`, or the padding asked for where it is a
    larger power of two (`meta.kv_pad`, a build with localspec's change)."""
    cells = str(meta.get("kv_pad") or 0)
    asked = int(cells) if cells.isdigit() else 0
    return max(KV_PAD, asked) if asked & (asked - 1) == 0 else KV_PAD


def priced_choices(runs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (workload, source chosen) of `adaptive`'s steps: what the chooser expected of each source it priced
    (tokens per second, summed with how many steps priced it) and what the chosen steps got."""
    rows: dict[tuple[str, str], dict[str, Any]] = defaultdict(
        lambda: {"steps": 0, "tokens": 0, "ms": 0.0, "close": 0, "priced": defaultdict(lambda: [0.0, 0])}
    )
    for run in adaptive_runs(runs):
        for step in run["steps"][1:]:
            priced = step.get("priced") or {}
            row = rows[(run["workload"], step["source"])]
            row["steps"] += 1
            row["tokens"] += step["accepted"] + 1
            row["ms"] += step["verify_ms"] + step["draft_ms"]
            for name, rate in priced.items():
                row["priced"][name][0] += rate
                row["priced"][name][1] += 1
            chosen = priced.get(step["source"])
            # Another source priced within 5% of the one chosen: the plan was a close call.
            row["close"] += chosen is not None and any(
                name != step["source"] and rate >= 0.95 * chosen for name, rate in priced.items()
            )
    return dict(rows)


def by_round(runs: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, float]]:
    """Per (workload, speculative mode, round) of a `--rounds` trace (`later_steps`): steps by source, target
    passes' tokens, verify and drafting ms, tokens settled and the round's decode seconds, summed over its runs."""
    rows: dict[tuple[str, str, int], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for run in speculative_runs(runs):
        rounds = [run["steps"], *run.get("later_steps", [])]
        if len(rounds) < 2:
            continue
        for number, (steps, seconds) in enumerate(zip(rounds, run["round_seconds"], strict=True), 1):
            row = rows[(run["workload"], run["mode"], number)]
            row["seconds"] += seconds
            for step in steps[1:]:
                row[step["source"]] += 1
                row["passes"] += 1
                row["pass_tokens"] += step["pass_tokens"]
                row["ms"] += step["verify_ms"] + step["draft_ms"]
                row["tokens"] += step["accepted"] + 1
            row["all_tokens"] += sum(step["accepted"] + 1 for step in steps)
    return {key: dict(row) for key, row in rows.items()}


BEFORE = ("every draft taken", "a draft rejected", "no drafts")  # what the step before a draft-model step did


def what_it_did(step: dict[str, Any]) -> str:
    """`step` as a step before a draft-model step (`BEFORE`)."""
    if not step["drafted"]:
        return BEFORE[2]
    return BEFORE[0] if step["accepted"] == step["drafted"] else BEFORE[1]


def draft_steps_by_before(runs: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, float]]:
    """Per (workload, speculative mode, `BEFORE`): the draft-model steps' count, drafts found made ahead
    (`ready`), drafts and drafting ms, summed."""
    rows: dict[tuple[str, str, str], dict[str, float]] = defaultdict(
        lambda: dict.fromkeys(("steps", "ready", "drafted", "draft_ms"), 0.0)
    )
    for run in speculative_runs(runs):
        for before, step in pairwise(run["steps"]):
            if step["source"] != "draft":
                continue
            row = rows[(run["workload"], run["mode"], what_it_did(before))]
            row["steps"] += 1
            for name in ("ready", "drafted", "draft_ms"):
                row[name] += step[name]
    return dict(rows)


def adaptive_steps_by_before(runs: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, float]]:
    """Per (workload, source, the step before: its source and `what_it_did`) of `adaptive`'s speculative steps:
    steps, drafts, drafts taken, tokens settled and ms (verify and drafting), summed. The same source can pay very
    differently by what came before: n-gram drafts right after the draft model's had one rejected, say."""
    rows: dict[tuple[str, str, str], dict[str, float]] = defaultdict(
        lambda: dict.fromkeys(("steps", "drafted", "accepted", "tokens", "ms"), 0.0)
    )
    for run in adaptive_runs(runs):
        for before, step in pairwise(run["steps"]):
            if step["source"] == "none":
                continue
            came_after = (
                "one-token pass"
                if before["source"] == "none"
                else f"{before['source']}, {what_it_did(before)}"
            )
            row = rows[(run["workload"], step["source"], came_after)]
            row["steps"] += 1
            row["drafted"] += step["drafted"]
            row["accepted"] += step["accepted"]
            row["tokens"] += step["accepted"] + 1
            row["ms"] += step["verify_ms"] + step["draft_ms"]
    return dict(rows)


RETURN_PASSES = 2  # one-token passes after a pass of another size that run cold, then capture a CUDA graph
BANDS = (1.25, 1.5, 2.0, 3.0)  # bounds of the bands of priced rate over the target alone's
BAND_LABELS = (
    f"< {BANDS[0]}x",
    *(f"{low}-{high}x" for low, high in pairwise(BANDS)),
    f">= {BANDS[-1]}x",
)


def ngram_returns(runs: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, float]]:
    """Per (workload, `BANDS` band of the rate `adaptive` priced its n-gram drafts at over the target alone's): the
    n-gram steps, tokens they settled, and the ms they saved against the target alone's warm one-token pass (the
    median of the workload's traced `none` runs): those tokens at that price, less the step's pass and what the
    one-token passes right after it cost beyond it (`RETURN_PASSES`). Empty without a traced `none` run."""
    warm: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        if run["system"] == "localspec" and run["mode"] == "none" and run.get("steps"):
            warm[run["workload"]] += [
                step["verify_ms"] for step in run["steps"][1:] if step["pass_tokens"] == 1
            ]
    rows: dict[tuple[str, int], dict[str, float]] = defaultdict(
        lambda: dict.fromkeys(("steps", "tokens", "saved"), 0.0)
    )
    for run in adaptive_runs(runs):
        if not warm.get(run["workload"]):
            continue
        one = statistics.median(warm[run["workload"]])
        steps = run["steps"]
        for at, step in enumerate(steps[1:], 1):
            priced = step.get("priced") or {}
            if step["source"] != "ngram" or not priced.get("none") or "ngram" not in priced:
                continue
            after = takewhile(lambda later: later["pass_tokens"] == 1, steps[at + 1 : at + 1 + RETURN_PASSES])
            settled = step["accepted"] + 1
            row = rows[(run["workload"], bisect.bisect_right(BANDS, priced["ngram"] / priced["none"]))]
            row["steps"] += 1
            row["tokens"] += settled
            row["saved"] += (
                settled * one - step["verify_ms"] - sum(later["verify_ms"] - one for later in after)
            )
    return dict(rows)


def expected_against_settled(runs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, float]]:
    """Per (workload, source) of `adaptive`'s speculative steps, n-gram steps split by their match's class: steps,
    and the tokens the chooser expected them to settle beside the tokens they settled."""
    rows: dict[tuple[str, str], dict[str, float]] = defaultdict(
        lambda: dict.fromkeys(("steps", "expected", "settled"), 0.0)
    )
    for run in adaptive_runs(runs):
        for step in run["steps"][1:]:
            if step.get("expected") is None or step["source"] == "none":
                continue
            source = step["source"]
            if source == "ngram":
                source = f"ngram ({match_class(step['ngram_match'])} match)"
            row = rows[(run["workload"], source)]
            row["steps"] += 1
            row["expected"] += step["expected"]
            row["settled"] += step["accepted"] + 1
    return dict(rows)


# Passes at least this long: their captures cost about alike, so a price compares with a timing.
LONG_PASS = 20


def after_one_pass(runs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, float]]:
    """Per speculative (workload, mode): the steps after a pass of more than two tokens that ran once, where a pass
    of its size again captures its CUDA graph: how many did (kept), went one token short or took another size;
    for `adaptive`, the capture price it planned with and the replays it expected after it, summed where traced;
    and after `LONG_PASS`-token passes, that price beside what the captures taken there cost (a price above it
    shuns captures that would pay)."""
    rows: dict[tuple[str, str], dict[str, float]] = defaultdict(
        lambda: dict.fromkeys(
            (
                "kept",
                "short",
                "other",
                "priced",
                "capture_ms",
                "replays",
                "long_priced",
                "long_ms",
                "long_kept",
                "long_took",
            ),
            0.0,
        )
    )
    for run in speculative_runs(runs):
        for step, previous, streak in after_passes_in_a_row(run):
            if previous <= 2 or streak != 1 or step["source"] == "none":
                continue
            size = step["pass_tokens"]
            row = rows[(run["workload"], run["mode"])]
            row["kept" if size == previous else "short" if size == previous - 1 else "other"] += 1
            long = previous >= LONG_PASS
            if step.get("capture_ms") is not None:
                row["priced"] += 1
                row["capture_ms"] += step["capture_ms"]
                row["replays"] += step["replays"]
                if long:
                    row["long_priced"] += 1
                    row["long_ms"] += step["capture_ms"]
            if long and size == previous:
                row["long_kept"] += 1
                row["long_took"] += step["verify_ms"]
    return dict(rows)


STEPS_HEADER = (
    "workload | mode | source | steps | drafts / step | accepted / step | ready | tokens / pass | verify ms / step"
    " | draft ms / step"
)
KINDS_HEADER = "workload | mode | cold passes (mean ms) | captures | warm"
GRAPHS_HEADER = (
    "workload | mode | passes after another size: its graph kept at this KV length (mean ms) | none kept"
)
CHOICES_HEADER = (
    "workload | `adaptive` chose | steps | priced tok/s: none / ngram / draft | got tok/s | close calls"
)
RETURNS_HEADER = (
    "workload | n-gram drafts priced at, over the target alone | steps | tokens / step | saved ms"
    " | saved ms / step"
)
AFTER_ONE_HEADER = (
    "workload | mode | steps after a pass run once | kept its size (a capture) | one token short | another size"
    " | capture priced at, ms | replays expected | after long passes: capture priced at / captures took, ms"
)
ROUNDS_HEADER = (
    "workload | mode | round | steps: draft / ngram / none | tokens / pass | verify + drafting ms / token"
    " | tokens settled / s"
)
EXPECTED_HEADER = "workload | `adaptive`'s steps | steps | tokens expected / step | tokens settled / step"
ADAPTIVE_BEFORE_HEADER = (
    "workload | `adaptive`'s steps | step before | steps | drafts / step | drafts taken | got tok/s"
)
BEFORE_HEADER = (
    "workload | mode | step before | draft-model steps | drafts made ahead / step | drafts / step"
    " | drafting ms / step"
)


def markdown_table(header: str, text_columns: int, rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines (`header`: its column names joined by " | "): the first `text_columns` columns
    left-aligned, the numbers after them right-aligned."""
    names = header.split(" | ")
    rule = ["---" if column < text_columns else "---:" for column in range(len(names))]
    return [f"| {' | '.join(cells)} |" for cells in (names, rule, *rows)]


def render(path: Path) -> str:
    result = load(path)
    runs = result["runs"]
    totals, longest = summarise(runs)
    if not totals:
        return f"{path}: no step traces (run `localspec bench --trace-steps`)"
    rows = []
    for (workload, mode, source), row in sorted(totals.items()):
        n = row["steps"]
        rows.append(
            [
                workload,
                mode,
                source,
                f"{n:.0f}",
                f"{row['drafted'] / n:.2f}",
                f"{row['accepted'] / n:.2f}",
                f"{row['ready'] / n:.0%}",
                *(f"{row[name] / n:.1f}" for name in ("pass_tokens", "verify_ms", "draft_ms")),
            ]
        )
    lines = [f"<!-- {path} -->", *markdown_table(STEPS_HEADER, 3, rows), ""]
    for (workload, mode), (steps, task) in sorted(longest.items()):
        lines.append(f"- {workload}, {mode}: at most {steps} target-alone steps in a row ({task})")
    rows = [
        [workload, mode, *(f"{len(ms)} ({sum(ms) / len(ms):.1f})" if ms else "0" for ms in by_kind.values())]
        for (workload, mode), by_kind in sorted(pass_kinds(runs).items())
    ]
    lines += ["", *markdown_table(KINDS_HEADER, 2, rows)]
    meta = result.get("meta", {})
    if meta.get("cuda_graph_key", "shape") == "shape":
        rows = [
            [workload, mode, *(f"{len(ms)} ({sum(ms) / len(ms):.1f})" if ms else "0" for ms in by_graph)]
            for (workload, mode), by_graph in sorted(cold_passes_by_graph(runs, kv_pad(meta)).items())
        ]
        if rows:
            lines += ["", *markdown_table(GRAPHS_HEADER, 2, rows)]
    choices = priced_choices(runs)
    if any(row["priced"] for row in choices.values()):
        rows = []
        for (workload, source), row in sorted(choices.items()):
            means = [row["priced"][name] for name in ("none", "ngram", "draft")]
            priced = " / ".join(f"{total / n:.0f}" if n else "-" for total, n in means)
            got = row["tokens"] / row["ms"] * 1000 if row["ms"] else 0.0
            rows.append([workload, source, str(row["steps"]), priced, f"{got:.0f}", str(row["close"])])
        lines += ["", *markdown_table(CHOICES_HEADER, 2, rows)]
    by_before = draft_steps_by_before(runs)
    if by_before:
        rows = []
        for (workload, mode, before), row in sorted(by_before.items()):
            n = row["steps"]
            per_step = [f"{row[name] / n:.1f}" for name in ("ready", "drafted", "draft_ms")]
            rows.append([workload, mode, before, f"{n:.0f}", *per_step])
        lines += ["", *markdown_table(BEFORE_HEADER, 3, rows)]
    by_before = adaptive_steps_by_before(runs)
    if by_before:
        rows = [
            [
                workload,
                source,
                before,
                f"{row['steps']:.0f}",
                f"{row['drafted'] / row['steps']:.1f}",
                f"{row['accepted'] / row['drafted']:.0%}" if row["drafted"] else "-",
                f"{row['tokens'] / row['ms'] * 1000:.0f}" if row["ms"] else "-",
            ]
            for (workload, source, before), row in sorted(by_before.items())
        ]
        lines += ["", *markdown_table(ADAPTIVE_BEFORE_HEADER, 3, rows)]
    after_one = after_one_pass(runs)
    if after_one:
        rows = []
        for (workload, mode), row in sorted(after_one.items()):
            counts = [row[name] for name in ("kept", "short", "other")]
            priced = row["priced"]
            means = [f"{row[name] / priced:.1f}" if priced else "-" for name in ("capture_ms", "replays")]
            long = " / ".join(
                f"{row[total] / row[count]:.1f}" if row[count] else "-"
                for total, count in (("long_ms", "long_priced"), ("long_took", "long_kept"))
            )
            rows.append([workload, mode, f"{sum(counts):.0f}", *(f"{n:.0f}" for n in counts), *means, long])
        lines += ["", *markdown_table(AFTER_ONE_HEADER, 2, rows)]
    returns = ngram_returns(runs)
    if returns:
        rows = []
        for (workload, band), row in sorted(returns.items()):
            steps, saved = row["steps"], row["saved"]
            per_step = [f"{row['tokens'] / steps:.1f}", f"{saved:.1f}", f"{saved / steps:.2f}"]
            rows.append([workload, BAND_LABELS[band], f"{steps:.0f}", *per_step])
        lines += ["", *markdown_table(RETURNS_HEADER, 2, rows)]
    expected = expected_against_settled(runs)
    if expected:
        rows = [
            [
                workload,
                source,
                f"{row['steps']:.0f}",
                *(f"{row[name] / row['steps']:.2f}" for name in ("expected", "settled")),
            ]
            for (workload, source), row in sorted(expected.items())
        ]
        lines += ["", *markdown_table(EXPECTED_HEADER, 2, rows)]
    rounds = by_round(runs)
    if rounds:
        rows = [
            [
                workload,
                mode,
                str(number),
                " / ".join(f"{row.get(source, 0):.0f}" for source in ("draft", "ngram", "none")),
                f"{row['pass_tokens'] / row['passes']:.2f}" if row["passes"] else "-",
                f"{row['ms'] / row['tokens']:.2f}" if row["tokens"] else "-",
                f"{row['all_tokens'] / row['seconds']:.1f}" if row["seconds"] else "-",
            ]
            for (workload, mode, number), row in sorted(rounds.items())
        ]
        lines += ["", *markdown_table(ROUNDS_HEADER, 3, rows)]
    return "\n".join(lines)


def main(paths: list[str]) -> int:
    if (status := usage_error(paths, __doc__)) is not None:
        return status
    print("\n\n".join(render(Path(path)) for path in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
