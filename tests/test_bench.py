"""`localspec bench` end to end on the tiny models: every workload and mode, JSON, plot and Markdown table,
losslessness report, llama-server in the same run, and a clean exit."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from localspec.benchmark.runner import Run

MODES = {"none", "draft", "ngram", "adaptive"}
SERVER_MODES = {"none", "draft-simple n{draft_max} p{draft_p_min:g}", "draft-simple n8", "ngram-mod"}
ROOT = Path(__file__).parent.parent
# The GPU machine installs only what the bench needs: the bench must run without the TUI's and LSP's packages.
WITHOUT_UI_PACKAGES = (
    "import sys\n"
    "for name in ('textual', 'pygls', 'watchdog', 'lsprotocol'):\n"
    "    sys.modules[name] = None  # importing it raises ImportError\n"
    "from localspec.cli import main\n"
    "sys.exit(main())\n"
)


@dataclass
class BenchRun:
    completed: subprocess.CompletedProcess[str]
    result: dict[str, Any]
    json_path: Path
    out: Path


def _bench(home: Path, out: Path, *args: str) -> BenchRun:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALSPEC_")}
    env["LOCALSPEC_HOME"] = str(home)
    completed = subprocess.run(
        [sys.executable, "-c", WITHOUT_UI_PACKAGES, "bench", "--threads", "1", "--n-ctx", "2048",
         "--max-tokens", "16", "--out", str(out), *args],
        capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]  # a clean exit: no crash in teardown
    json_path = next(out.glob("bench-*.json"))
    return BenchRun(completed, json.loads(json_path.read_text()), json_path, out)


@pytest.fixture(scope="module")
def scaled_bench(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> BenchRun:
    """One bench run on a cost-scaled copy of the tiny target: three workloads with their own prompt counts,
    plus the user's own JSONL prompts."""
    folder = tmp_path_factory.mktemp("bench")
    prompts = folder / "mine.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "def add(a, b):\n    return a + b\n\ndef", "id": "own-1"})
        + "\n"
        + json.dumps({"prefix": "x = [1, 2, 3]\ny = [", "suffix": "]\n", "id": "own-2"})
        + "\n"
    )
    return _bench(
        folder / "home",
        folder / "results",
        "--target", str(tiny_models.target), "--draft", str(tiny_models.draft_similar),
        "--scale-layers", "2", "--scale-ffn", "2",
        "--workloads", "humaneval,fim,code-edit", "--jsonl", str(prompts),
        "--prompts", "humaneval=3,fim=1,code-edit=2", "--trace-steps",
    )  # fmt: skip


def test_bench_runs_every_workload_and_mode_and_reports_speed_acceptance_and_identity(
    scaled_bench: BenchRun,
) -> None:
    from localspec.models.hardware import gpu_devices

    result, completed = scaled_bench.result, scaled_bench.completed
    assert "speedup" in completed.stdout  # the table
    assert next(scaled_bench.out.glob("bench-*.png")).stat().st_size > 0
    # The prices the chooser started from are kept with the results (and printed).
    assert result["meta"]["start_up_prices"].startswith("target pass 1: ")
    assert "draft catch-up of 64 tokens" in " ".join(completed.stderr.split())
    assert result["meta"]["complete"] is True
    assert result["meta"]["gpus"] == list(gpu_devices())  # which card it ran on ([] without a driver)
    assert result["meta"]["cpus"] == os.cpu_count()
    # What keyed the CUDA graphs of localspec's passes (the engine's default unless the environment named one).
    assert result["meta"]["cuda_graph_key"] == os.environ.get("GGML_CUDA_GRAPH_KEY", "shape")
    assert result["meta"]["kv_pad"] == os.environ.get("LLAMA_KV_PAD")  # (None: upstream's padding)
    # ... and how long its captured graphs are kept: graph lookups, not upstream's 10 s.
    assert result["meta"]["cuda_graph_keep_calls"] == os.environ.get("GGML_CUDA_GRAPH_KEEP_CALLS", "100000")
    # ... and whether a one-token pass's CPU attention split its context ("0": not, as a verify pass's rows).
    assert result["meta"]["cpu_fa_split_kv"] == os.environ.get("GGML_CPU_FA_SPLIT_KV", "0")
    runs = result["runs"]
    per_workload = {
        w: {r["task_id"] for r in runs if r["workload"] == w} for w in {r["workload"] for r in runs}
    }
    assert {w: len(ids) for w, ids in per_workload.items()} == {
        "humaneval": 3,
        "fim": 1,
        "code-edit": 2,
        "jsonl": 2,
    }
    assert result["meta"]["prompts_per_workload"] == {"humaneval": 3, "fim": 1, "code-edit": 2}
    assert {run["mode"] for run in runs} == MODES
    for run in runs:
        if run["mode"] == "none":
            continue
        # Every speculative run is compared with the target alone; a difference names its position and margin.
        assert run["identical"] is True or run["divergence"]["target_alone_margin"] is not None
        assert sum(run["steps_by_source"].values()) == run["target_passes"]
    summary = {(row["mode"], row["workload"]): row for row in result["summary"]}
    for mode in MODES:
        for workload in per_workload:
            row = summary[(mode, workload)]
            assert row["tokens_per_second"] > 0 and row["speedup_vs_own_target_alone"] > 0
            # How often near-tie re-evaluation fired: the sum of the runs' counts, per row.
            assert row["settled_near_ties"] == sum(
                r["settled_near_ties"] for r in runs if (r["mode"], r["workload"]) == (mode, workload)
            )
    assert any(summary[("draft", workload)]["acceptance"] for workload in per_workload)


def test_step_traces_set_what_adaptive_expected_of_each_source_beside_what_it_got(
    scaled_bench: BenchRun,
) -> None:
    table = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "step_traces.py"), str(scaled_bench.json_path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    cells = [line.strip("|").split("|") for line in table.splitlines() if line.startswith("| ")]
    rows = {
        (row[0].strip(), row[1].strip()): row
        for row in cells
        if len(row) == 6 and row[3].count(" / ") == 2 and row[2].strip().isdigit()
    }
    steps = [
        (run["workload"], step)
        for run in scaled_bench.result["runs"]
        if run["mode"] == "adaptive"
        for step in run["steps"][1:]
    ]
    assert rows and {(workload, step["source"]) for workload, step in steps} == set(rows)
    # (a step's capture price and the replays expected after it come together, where the chooser priced one)
    assert all((step["capture_ms"] is None) == (step["replays"] is None) for _, step in steps)
    # every step keeps the tokens it was expected to settle, an n-gram step also its match's length
    assert all(step["expected"] >= 1.0 for _, step in steps)
    assert all((step["ngram_match"] > 0) == (step["source"] == "ngram") for _, step in steps)
    for (workload, source), row in rows.items():
        chosen = [step for w, step in steps if (w, step["source"]) == (workload, source)]
        assert int(row[2]) == len(chosen)
        priced = dict(
            zip(("none", "ngram", "draft"), (cell.strip() for cell in row[3].split(" / ")), strict=True)
        )
        if source != "none":  # a speculative step's source was priced (a re-timing prices nothing)
            assert priced[source] != "-" and priced["none"] != "-"


def _step(
    source: str, drafted: int, accepted: int, verify_ms: float, priced: dict[str, float]
) -> dict[str, Any]:
    return {
        "source": source, "drafted": drafted, "accepted": accepted, "ready": 0, "pass_tokens": drafted + 1,
        "draft_ms": 0.0, "verify_ms": verify_ms, "draft_ready": 0, "priced": priced,
    }  # fmt: skip


def _step_traces_of(
    tmp_path: Path, steps_by_mode: dict[str, list[dict[str, Any]]], meta: dict[str, Any] | None = None
) -> str:
    """bench/step_traces.py's tables of a trace written here: one HumanEval run per mode, of these steps."""
    runs = [
        {
            "system": "localspec",
            "workload": "humaneval",
            "mode": mode,
            "task_id": "HumanEval/0",
            "steps": steps,
        }
        for mode, steps in steps_by_mode.items()
    ]
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"meta": meta or {}, "runs": runs}))
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "step_traces.py"), str(path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def test_step_traces_net_each_ngram_step_against_the_warm_passes_it_replaced(tmp_path: Path) -> None:
    # A trace written here: the target alone's warm one-token pass costs 2 ms (its median), and adaptive's n-gram
    # steps are followed by one-token passes that ran cold (3 ms) or by another n-gram step.
    alone = [_step("none", 0, 0, ms, {}) for ms in (9.0, 2.0, 2.0, 2.5)]  # (the first reads the prompt)
    low, high = {"none": 500.0, "ngram": 600.0}, {"none": 500.0, "ngram": 2000.0}
    alone_step = _step("none", 0, 0, 3.0, {"none": 500.0})  # a cold one-token pass
    adaptive = [
        _step("none", 0, 0, 9.0, {"none": 500.0}),
        # 1 token for 2 ms, less its 5 ms pass and 1 ms more in each of the two return passes; a third is not its
        _step("ngram", 8, 0, 5.0, low),
        alone_step,
        alone_step,
        alone_step,
        # 8 tokens: 16 ms less its 5 ms pass (another n-gram step comes next)
        _step("ngram", 8, 7, 5.0, high),
        # 4 tokens: 8 ms less 4, and 1 ms more in the one-token pass after it
        _step("ngram", 4, 3, 4.0, high),
        alone_step,
    ]
    table = _step_traces_of(tmp_path, {"none": alone, "adaptive": adaptive})
    rows = {
        cells[1].strip(): [cell.strip() for cell in cells[2:]]
        for cells in (
            line.strip("|").split("|") for line in table.splitlines() if line.startswith("| humaneval")
        )
        if "x" in cells[1]
    }
    assert rows == {"< 1.25x": ["1", "1.0", "-5.0", "-5.00"], ">= 3.0x": ["2", "6.0", "14.0", "7.00"]}


def test_step_traces_set_the_tokens_adaptive_expected_beside_those_settled(tmp_path: Path) -> None:
    # n-gram steps are split by the length of the match behind their drafts (short: up to 3 tokens, long: 8 or
    # more); a step traced before `expected` existed, and a one-token step, are left out.
    def step(
        source: str, drafted: int, accepted: int, expected: float | None, match: int = 0
    ) -> dict[str, Any]:
        return {**_step(source, drafted, accepted, 5.0, {}), "expected": expected, "ngram_match": match}

    adaptive = [
        step("draft", 8, 8, 6.0),  # (the first step: read with the prompt)
        step("draft", 8, 5, 6.0),
        step("draft", 8, 7, 5.0),
        step("ngram", 8, 1, 4.5, match=2),
        step("ngram", 8, 0, 3.5, match=3),
        step("ngram", 8, 8, 8.0, match=12),
        step("none", 0, 0, 1.0),
        {**_step("draft", 4, 4, 5.0, {})},  # (an older trace's step: no `expected`)
    ]
    table = _step_traces_of(tmp_path, {"adaptive": adaptive})
    header = table.index("tokens expected / step")
    rows = {
        cells[1].strip(): [cell.strip() for cell in cells[2:]]
        for cells in (
            line.strip("|").split("|")
            for line in table[header:].splitlines()
            if line.startswith("| humaneval")
        )
    }
    assert rows == {
        "draft": ["2", "5.50", "7.00"],
        "ngram (long match)": ["1", "8.00", "9.00"],
        "ngram (short match)": ["2", "4.00", "1.50"],
    }


def test_step_traces_split_passes_after_another_size_by_whether_a_graph_of_theirs_was_kept(
    tmp_path: Path,
) -> None:
    # With the `shape` key llama.cpp keeps one CUDA graph a pass size, replayed only at the KV length (padded to 256
    # cells) it was captured at. Steps of sizes 9 and 1 in turn, their depth moving on: a pass of 9 after a pass of
    # 1 finds its graph kept while the KV length stays in the same 256 cells, and none once it has moved past them.
    def at(step: dict[str, Any], depth: int) -> dict[str, Any]:
        return {**step, "depth": depth}

    adaptive = [
        at(_step("ngram", 8, 8, 5.0, {}), 100),  # (the first step: only a pass before)
        at(_step("none", 0, 0, 2.0, {}), 109),  # size 1: no graph of it kept yet
        at(_step("ngram", 8, 0, 3.0, {}), 110),  # size 9, KV 119: kept (the first step ran it at KV 109)
        at(_step("none", 0, 0, 1.0, {}), 111),  # size 1 at KV 112: kept
        at(_step("ngram", 8, 0, 7.0, {}), 250),  # size 9 at KV 259: past 256, none kept
    ]
    table = _step_traces_of(tmp_path, {"adaptive": adaptive})
    assert "| humaneval | adaptive | 2 (2.0) | 2 (4.5) |" in table
    # A build asked to pad to 4,096 cells (LLAMA_KV_PAD): the last pass finds its graph too. Upstream's key keeps
    # one graph in all, which this split does not describe: no such table then.
    padded = _step_traces_of(tmp_path, {"adaptive": adaptive}, {"kv_pad": "4096"})
    assert "| humaneval | adaptive | 3 (3.7) | 1 (2.0) |" in padded
    upstream = _step_traces_of(tmp_path, {"adaptive": adaptive}, {"cuda_graph_key": "node"})
    assert "its graph kept at this KV length" not in upstream and "cold passes" in upstream


def test_step_traces_split_adaptives_steps_by_what_the_step_before_did(tmp_path: Path) -> None:
    # n-gram steps right after a draft-model step that had a draft rejected are counted apart from those after one
    # whose drafts were all taken: the same source can pay very differently by what came before.
    adaptive = [
        _step("draft", 8, 8, 5.0, {}),  # (the first step: only a step before)
        _step("draft", 8, 3, 5.0, {}),
        _step("ngram", 8, 0, 4.0, {}),  # after a rejected draft: 1 token in 4 ms
        _step("none", 0, 0, 2.0, {}),
        _step("draft", 8, 8, 5.0, {}),  # after a one-token pass
        _step("ngram", 8, 8, 4.0, {}),  # after every draft taken: 9 tokens in 4 ms
        _step("ngram", 4, 2, 2.0, {}),  # after n-gram drafts all taken: 3 tokens in 2 ms
    ]
    table = _step_traces_of(tmp_path, {"adaptive": adaptive})
    header = table.index("| step before | steps | drafts / step | drafts taken | got tok/s |")
    rows = {
        (cells[1].strip(), cells[2].strip()): [cell.strip() for cell in cells[3:]]
        for cells in (
            line.strip("|").split("|")
            for line in table[header:].split("\n\n")[0].splitlines()
            if line.startswith("| humaneval")
        )
    }
    assert rows == {
        ("draft", "draft, every draft taken"): ["1", "8.0", "38%", "800"],
        ("draft", "one-token pass"): ["1", "8.0", "100%", "1800"],
        ("ngram", "draft, a draft rejected"): ["1", "8.0", "0%", "250"],
        ("ngram", "draft, every draft taken"): ["1", "8.0", "100%", "2250"],
        ("ngram", "ngram, every draft taken"): ["1", "4.0", "50%", "1500"],
    }


def test_step_traces_set_each_rounds_steps_side_by_side(tmp_path: Path) -> None:
    # A `--rounds 2` trace: `adaptive` took n-gram drafts in its first round and the draft model in its second.
    first = [
        _step("none", 0, 0, 9.0, {}),  # (the first step: read with the prompt)
        _step("ngram", 8, 3, 4.0, {}),  # 4 tokens in 4 ms
        _step("none", 0, 0, 2.0, {}),  # 1 token in 2 ms
    ]
    second = [_step("none", 0, 0, 9.0, {}), _step("draft", 8, 8, 6.0, {})]  # 9 tokens in 6 ms
    run = {
        "system": "localspec",
        "workload": "humaneval",
        "mode": "adaptive",
        "task_id": "HumanEval/0",
        "steps": first,
        "later_steps": [second],
        "round_seconds": [0.012, 0.010],
    }
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"runs": [run, {**run, "mode": "none", "later_steps": []}]}))
    table = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "step_traces.py"), str(path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    header = table.index("| round |")
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")[2:]]
        for line in table[header:].splitlines()
        if line.startswith("| humaneval")
    ]
    assert rows == [["1", "0 / 1 / 1", "5.00", "1.20", "500.0"], ["2", "1 / 0 / 0", "9.00", "0.67", "1000.0"]]


def test_step_traces_count_what_followed_a_pass_run_once(tmp_path: Path) -> None:
    # After a 25-token pass run once, a step of 25 tokens captures its CUDA graph, one of 24 shuns it by a token;
    # after two in a row (or a pass of two tokens or fewer) nothing is counted.
    def sized(
        source: str, size: int, capture: tuple[float, float] | None = None, verify_ms: float = 50.0
    ) -> dict[str, Any]:
        step = _step(source, size - 1, size - 1, verify_ms, {})
        step["capture_ms"], step["replays"] = capture if capture is not None else (None, None)
        return step

    steps = [
        sized("draft", 25),  # (the first step: read with the prompt)
        sized("draft", 25, (80.0, 2.0), verify_ms=90.0),  # kept: a capture (after a long pass)
        sized("draft", 25, (60.0, 2.0)),  # a replay: not counted
        sized("draft", 11),  # (after two in a row: not counted)
        sized("draft", 8, (70.0, 0.5)),  # another size
        sized("draft", 7, (60.0, 0.5)),  # one token short
        sized("ngram", 2),  # another size (untraced)
        sized("draft", 25),  # (after two tokens: not counted)
    ]
    table = _step_traces_of(tmp_path, {"adaptive": steps})
    header = next(line for line in table.splitlines() if "steps after a pass run once" in line)
    lines = table.splitlines()
    row = lines[lines.index(header) + 2].strip("|").split("|")
    assert [cell.strip() for cell in row] == [
        *("humaneval", "adaptive", "4", "1", "1", "2", "70.0", "1.0"),
        "80.0 / 90.0",  # (after the 25-token pass only: the price it planned with, what the capture took)
    ]


def test_a_cost_scaled_target_is_written_once_and_labelled_everywhere(
    scaled_bench: BenchRun, tiny_models
) -> None:
    meta = scaled_bench.result["meta"]
    label = "cost-scaled (x2 layers, x2 FFN)"
    assert meta["cost_scaled"] == {
        "source": str(tiny_models.target),
        "layers": 2,
        "ffn": 2,
        "label": label,
    }
    assert meta["target_label"] == f"{label} {tiny_models.target.name}"
    copy = Path(meta["target"])
    assert copy.is_file() and copy.parent == scaled_bench.out.parent / "home" / "cache" / "cost-scaled"
    assert label in " ".join(scaled_bench.completed.stdout.split())  # the table's title
    assert f"wrote {label} target" in scaled_bench.completed.stderr


def test_render_table_turns_a_bench_json_into_the_markdown_table(scaled_bench: BenchRun) -> None:
    rendered = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "render_table.py"), str(scaled_bench.json_path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    lines = rendered.splitlines()
    assert lines[0].startswith(f"<!-- {scaled_bench.json_path}:")
    body = [line.strip("|").split("|") for line in lines[3:] if line.startswith("| ")]
    summary = {(r["workload"], r["system"], r["mode"]): r for r in scaled_bench.result["summary"]}
    assert len(body) == len(summary)
    for cells in body:
        workload, system, mode, speed, own, vs_localspec, acceptance, identical = (c.strip() for c in cells)
        row = summary[(workload, system, mode)]
        assert float(speed) == pytest.approx(row["tokens_per_second"], abs=0.06)
        assert float(own.rstrip("x")) == pytest.approx(row["speedup_vs_own_target_alone"], abs=0.006)
        assert float(vs_localspec.rstrip("x")) == pytest.approx(
            row["speedup_vs_localspec_target_alone"], abs=0.006
        )
        if row["acceptance"] is None:
            assert acceptance == "-"
        else:  # (the summary rounds to 3 places, the table to 2 from the runs' counts)
            assert float(acceptance) == pytest.approx(row["acceptance"], abs=0.006)
        assert identical == ("-" if mode == "none" else f"{row['identical']}/{row['compared']}")


def test_bench_against_llama_server_runs_each_server_mode_fresh_warm_and_with_all_layers(
    tiny_models, llama_cpp_tools: Path, tmp_path: Path
) -> None:
    run = _bench(
        tmp_path / "home",
        tmp_path / "results",
        "--target", str(tiny_models.target), "--draft", str(tiny_models.draft_similar),
        "--workloads", "humaneval,code-edit", "--prompts", "2", "--modes", "none,adaptive",
        "--against-llama-server", str(llama_cpp_tools / "llama-server"),
    )  # fmt: skip
    result = run.result
    server_runs = [r for r in result["runs"] if r["system"] == "llama-server"]
    # Its draft-model mode drafts down to the floor localspec's engine drafted to (by default from the costs).
    meta = result["meta"]
    server_modes = {
        mode.format(draft_max=meta["draft_max"], draft_p_min=round(meta["draft_p_min"], 2))
        for mode in SERVER_MODES
    }
    assert {r["mode"] for r in server_runs} == server_modes
    for mode in server_modes:
        mine = [r for r in server_runs if r["mode"] == mode]
        assert sorted((r["workload"], r["task_id"]) for r in mine) == sorted(
            (r["workload"], r["task_id"])
            for r in result["runs"]
            if r["system"] == "localspec" and r["mode"] == "none"
        )
        assert all(r["tokens"] > 0 and r["decode_seconds"] > 0 for r in mine)
        # Speculative server runs are checked against the server's own target alone.
        assert all((r["identical"] is None) == (mode == "none") for r in mine)
    # The same text is the same number of tokens in both systems, whether it ended at max_tokens or by itself.
    alone = {
        (r["workload"], r["task_id"]): r
        for r in result["runs"]
        if r["system"] == "localspec" and r["mode"] == "none"
    }
    for r in server_runs:
        reference = alone[(r["workload"], r["task_id"])]
        if r["text"] == reference["text"]:
            assert r["tokens"] == reference["tokens"]
    assert any(r["tokens"] < 16 for r in alone.values())  # (some answers ended before max_tokens)
    commands = result["meta"]["llama_server_commands"]
    assert set(commands) == server_modes
    for mode, command in commands.items():
        assert re.search(r" -ngl all( |$)", command)  # every layer on the GPU, however deep the target
        assert (" -ngld all" in command) == mode.startswith("draft-simple")
    # Each mode runs a fresh server per workload, warmed up by one request before the timed ones.
    log = (run.out / "llama-server.log").read_text(errors="replace")
    starts = len(re.findall(r"listening on http://127\.0\.0\.1:\d+", log))
    assert starts == len(server_modes) * 2
    assert log.count("prompt eval time =") == starts * (1 + 2)
    assert "llama-server" in {row["system"] for row in result["summary"]}


def test_prompt_counts_are_one_number_for_all_workloads_or_one_per_named_workload() -> None:
    from localspec.benchmark.workloads import prompt_counts
    from localspec.errors import LocalspecError

    names = ["humaneval", "fim", "code-edit"]
    assert prompt_counts("20", names) == {"humaneval": 20, "fim": 20, "code-edit": 20}
    assert prompt_counts("humaneval=20, fim=5", names) == {"humaneval": 20, "fim": 5, "code-edit": 10}
    for bad, message in (
        ("humaneval=x", "at least 1"),
        ("0", "at least 1"),
        ("jsonl=3", "not a selected workload"),
        ("20,fim=3", "one number, or name=number"),
        ("humaneval=5@x", "problem to start from"),
        ("5@-1", "problem to start from"),
    ):
        with pytest.raises(LocalspecError, match=message):
            prompt_counts(bad, names)


def test_prompts_can_be_drawn_from_later_humaneval_problems_for_a_held_out_set() -> None:
    """`N@S` takes a workload's prompts from HumanEval's problem S on: prompts other than the ones an engine
    change was judged on, for the same workloads."""
    from localspec.benchmark.workloads import Selection, prompt_selection, tasks
    from localspec.errors import LocalspecError

    names = ["humaneval", "fim", "code-edit"]
    chosen = prompt_selection("humaneval=3@100,fim=2@150", names)
    assert chosen == {"humaneval": Selection(3, 100), "fim": Selection(2, 150), "code-edit": Selection(10, 0)}
    ids = {name: [task.task_id for task in tasks(f"{name}=3@100", [name], 16)] for name in names}
    assert ids["humaneval"] == ["HumanEval/100", "HumanEval/101", "HumanEval/102"]
    assert ids["code-edit"] == ids["humaneval"]
    # (fill-in-the-middle skips solutions under three code lines, so its problems may go further)
    numbers = [int(task_id.split("/")[1]) for task_id in ids["fim"]]
    assert len(numbers) == 3 and 100 <= numbers[0] < numbers[1] < numbers[2]
    first = [task.task_id for task in tasks("2", ["humaneval"], 16)]
    assert first == ["HumanEval/0", "HumanEval/1"]
    with pytest.raises(LocalspecError, match="HumanEval has 164 problems"):
        tasks("2@164", ["humaneval"], 16)


def test_each_workload_starts_every_mode_with_an_empty_ngram_history(endless_pair: tuple[Path, Path]) -> None:
    """The workloads share HumanEval problems: a later workload must not copy a mode's earlier answer to the same
    problem. Here two workloads hold the same prompt: the second decodes exactly as the first, no history to use."""
    from rich.console import Console

    from localspec.benchmark import runner
    from localspec.benchmark.workloads import Task
    from localspec.cli.bench import _run_localspec
    from localspec.engine import Engine, EngineSettings

    target, _ = endless_pair  # (a model that never ends its reply: 48 tokens to copy)
    engine = Engine(EngineSettings(target_path=target, n_ctx=512, slots=1, threads=1, mode="none"))
    try:
        prompt = "def fibonacci(n):\n    if n < 2:\n        return n\n"
        tasks = [
            Task(workload, "same", "completion", prompt=prompt, max_tokens=48) for workload in ("a", "b")
        ]
        prompts = [runner.prompt_tokens(engine, task) for task in tasks]
        runs = _run_localspec(engine, ["none", "ngram"], tasks, prompts, Console(quiet=True))
    finally:
        engine.close()
    first, second = (r for r in runs if r.mode == "ngram")
    assert (second.workload, second.token_ids) == ("b", first.token_ids)
    assert len(first.token_ids) == 48
    assert (second.drafted, second.target_passes) == (first.drafted, first.target_passes)


def two_workloads_in_three_modes(
    endless_pair: tuple[Path, Path], rounds: int = 1, trace_steps: bool = False, pause: float = 0.0
) -> list[Run]:
    """`bench`'s localspec runs of two tasks in each of two workloads, modes asked as draft, none, ngram."""
    from rich.console import Console

    from localspec.benchmark import runner
    from localspec.benchmark.workloads import Task
    from localspec.cli.bench import _run_localspec
    from localspec.engine import Engine, EngineSettings

    target, draft = endless_pair
    engine = Engine(EngineSettings(target_path=target, draft_path=draft, n_ctx=512, slots=1, threads=1))
    try:
        tasks = [
            Task(workload, f"{workload}-{i}", "completion", prompt=f"def f{i}(x):\n    return", max_tokens=6)
            for workload in ("a", "b")
            for i in range(2)
        ]
        prompts = [runner.prompt_tokens(engine, task) for task in tasks]
        return _run_localspec(
            engine,
            ["draft", "none", "ngram"],
            tasks,
            prompts,
            Console(quiet=True),
            trace_steps=trace_steps,
            rounds=rounds,
            pause=pause,
        )
    finally:
        engine.close()


def test_each_mode_learns_pass_prices_from_its_own_passes_only(endless_pair: tuple[Path, Path]) -> None:
    """A user runs one mode. Sharing one set of prices, `adaptive` planned with passes timed by the modes run before
    it (on a GPU, draft mode's CUDA graph captures, which `adaptive` alone would not have timed): each mode gets a
    copy of the start-up prices, and only its own passes move it."""
    from rich.console import Console

    from localspec.benchmark import runner
    from localspec.benchmark.workloads import Task
    from localspec.cli.bench import _run_localspec
    from localspec.engine import Engine, EngineSettings

    target, draft = endless_pair
    engine = Engine(EngineSettings(target_path=target, draft_path=draft, n_ctx=512, slots=1, threads=1))
    try:
        start_up = engine.costs
        tasks = [Task("a", "a-0", "completion", prompt="def f(x):\n    return", max_tokens=12)]
        prices = {mode: engine.costs.copy() for mode in ("none", "draft", "adaptive")}
        _run_localspec(
            engine,
            ["none", "draft", "adaptive"],
            tasks,
            [runner.prompt_tokens(engine, tasks[0])],
            Console(quiet=True),
            prices=prices,
        )
        choosers = {mode: chooser for (_, mode), chooser in engine._choosers.items()}
    finally:
        engine.close()
    assert set(choosers) == {"none", "draft", "adaptive"}
    assert all(chooser.costs is prices[mode] for mode, chooser in choosers.items())
    assert all(costs is not start_up for costs in prices.values())


def test_each_mode_runs_a_workloads_tasks_back_to_back_after_the_target_alone(
    endless_pair: tuple[Path, Path],
) -> None:
    """A request starts from what its predecessor left (on a GPU, llama.cpp's CUDA graph for the last pass shape):
    each mode runs a workload's tasks one after another, as a session in that mode would, not right after another
    mode's run of the same task. The target alone runs first whatever the order asked, so every other run is
    compared with it."""
    runs = two_workloads_in_three_modes(endless_pair)
    assert [(run.mode, run.task_id) for run in runs] == [
        (mode, f"{workload}-{i}")
        for workload in ("a", "b")
        for mode in ("none", "draft", "ngram")
        for i in range(2)
    ]
    assert all(run.identical for run in runs if run.mode != "none")


def test_pause_leaves_the_engine_idle_before_every_timed_request(
    endless_pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`bench --pause S`: a user leaves the daemon idle between requests (long enough, upstream llama.cpp drops its
    captured CUDA graphs), so each timed request follows S seconds of idle time, which is not timed."""
    import time

    from localspec.benchmark import runner
    from localspec.benchmark.workloads import Task
    from localspec.engine import Engine

    spans: list[tuple[float, float]] = []
    run_localspec = runner.run_localspec

    def timed(engine: Engine, task: Task, tokens: list[int], mode: str, **options: bool) -> Run:
        started = time.monotonic()
        run = run_localspec(engine, task, tokens, mode, **options)
        spans.append((started, time.monotonic()))
        return run

    monkeypatch.setattr(runner, "run_localspec", timed)
    runs = two_workloads_in_three_modes(endless_pair, pause=0.5)  # (without it: gaps of 0.07-0.17 s here)
    timed_spans = spans[-len(runs) :]  # (after the untimed warm-up request of each mode)
    assert len(timed_spans) == 12
    assert all(start - end >= 0.5 for (_, end), (start, _) in pairwise(timed_spans))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--pause", "-1"], "--pause must be 0 or more seconds, not -1."),
        (["--rounds", "0"], "--rounds must be 1 or more, not 0."),
        (["--modes", "adaptive,fast"], "Unknown mode(s) fast; choose from"),
        (["--workloads", "humaneval,essays"], "Unknown workload(s) essays; choose from"),
        (["--modes", "none", "--no-target-alone"], "--no-target-alone leaves no mode to run"),
    ],
)
def test_a_bad_flag_is_refused_before_anything_runs(tmp_path: Path, flags: list[str], message: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALSPEC_")}
    env["LOCALSPEC_HOME"] = str(tmp_path / "home")
    completed = subprocess.run(
        [sys.executable, "-c", WITHOUT_UI_PACKAGES, "bench", *flags, "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert completed.returncode == 1
    assert message in completed.stderr
    assert not (tmp_path / "out").exists()  # (no models loaded, nothing written)


def test_rounds_run_the_modes_in_turn_then_in_reverse_and_report_their_mean_time(
    endless_pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`bench --rounds 2`: each workload's modes run back to back as in one round, then again in reverse order, so a
    machine whose speed drifts during the run weighs on every mode alike; each task and mode is reported once, at
    the mean of its rounds' times."""
    from rich.console import Console

    from localspec.benchmark import runner
    from localspec.benchmark.report import print_table
    from localspec.benchmark.workloads import Task
    from localspec.engine import Engine

    calls: list[tuple[str, str]] = []
    run_localspec = runner.run_localspec

    def recorded(engine: Engine, task: Task, tokens: list[int], mode: str, **options: bool) -> Run:
        calls.append((mode, task.task_id))
        return run_localspec(engine, task, tokens, mode, **options)

    monkeypatch.setattr(runner, "run_localspec", recorded)
    runs = two_workloads_in_three_modes(endless_pair, rounds=2, trace_steps=True)
    in_turn = ("none", "draft", "ngram")
    assert calls[3:] == [
        (mode, f"{workload}-{i}")
        for workload in ("a", "b")
        for order in (in_turn, in_turn[::-1])
        for mode in order
        for i in range(2)
    ]
    assert [(run.mode, run.task_id) for run in runs] == [
        (mode, f"{workload}-{i}") for workload in ("a", "b") for mode in in_turn for i in range(2)
    ]
    for run in runs:
        assert len(run.round_seconds) == 2 and run.tokens == 6
        assert run.decode_seconds == pytest.approx(sum(run.round_seconds) / 2)
        assert run.as_json()["round_seconds"] == run.round_seconds
        # (the second round's steps kept beside the first's: what `adaptive` did once it had learnt)
        assert len(run.later_steps) == 1 and run.later_steps[0] and run.later_steps[0] is not run.steps
        assert run.as_json()["later_steps"] == run.later_steps
    assert all(run.identical for run in runs if run.mode != "none")
    # Each mode's speed round by round, beside its mean: what a gap between two modes has to beat.
    rows = runner.summarize(runs)
    for row in rows:
        speeds = row["rounds_tokens_per_second"]
        assert len(speeds) == 2 and min(speeds) <= row["tokens_per_second"] * (1 + 1e-6)
        assert row["tokens_per_second"] <= max(speeds) * (1 + 1e-6)
    console = Console(record=True, width=250)
    print_table(rows, console, "tiny")
    shown = console.export_text()
    assert "tok/s by round" in shown
    assert " / ".join(f"{speed:.0f}" for speed in rows[0]["rounds_tokens_per_second"]) in shown


def test_a_later_rounds_divergence_is_reported_with_its_round() -> None:
    """With `bench --rounds`, a speculative mode's output must be the target alone's in every round: batched passes of
    other shapes may settle a near-tie the other way in a later round, and the first round alone would hide it."""
    from localspec.benchmark import runner

    def output(tokens: list[int]) -> Run:
        return runner.Run(
            "localspec", "adaptive", "w", "t", len(tokens), 0.01, 0, 0, len(tokens), "", token_ids=tokens
        )

    reference = output([5, 6, 7, 8])
    reference.margins = [1.0, 0.9, 0.03, 1.0]
    merged = runner.merge_rounds([output([5, 6, 7, 8]), output([5, 6, 9, 8]), output([5, 6, 7, 8])])
    runner.compare(merged, reference)
    assert merged.identical is False
    assert merged.divergence == {"position": 2, "target_alone_margin": 0.03, "round": 2}
    assert "later_token_ids" not in merged.as_json()
    # Compared again (as after the margins are read): every round the target alone's leaves no divergence behind.
    merged.later_token_ids = [[5, 6, 7, 8], [5, 6, 7, 8]]
    runner.compare(merged, reference)
    assert merged.identical is True and merged.divergence is None
    single = output([5, 6, 9])
    runner.compare(single, reference)
    assert single.identical is False and single.divergence == {"position": 2, "target_alone_margin": 0.03}


def test_a_divergence_is_explained_by_the_target_alone_margin_measured_outside_the_timed_run(
    tiny_models,
) -> None:
    import dataclasses

    import numpy as np

    from localspec.benchmark import runner
    from localspec.benchmark.workloads import Task
    from localspec.engine import Engine, EngineSettings

    engine = Engine(EngineSettings(target_path=tiny_models.target, n_ctx=512, slots=1, threads=2))
    try:
        task = Task("humaneval", "t-1", "completion", prompt="def add(a, b):\n    return", max_tokens=12)
        tokens = runner.prompt_tokens(engine, task)
        # The timed target-alone run does not pay for margins.
        reference = runner.run_localspec(engine, task, tokens, runner.TARGET_ALONE)
        assert reference.margins == [] and len(reference.token_ids) >= 4
        # A run that differs from it at position 3 (as a speculative run would at a flipped near-tie).
        other = dataclasses.replace(reference, mode="adaptive", token_ids=list(reference.token_ids))
        other.token_ids[3] += 1
        runner.compare(other, reference)
        assert other.divergence == {"position": 3, "target_alone_margin": None}
        runner.fill_margins(engine, task, tokens, reference)
        runner.compare(other, reference)
        measured = runner.run_localspec(engine, task, tokens, runner.TARGET_ALONE, record_margins=True)
        assert reference.margins == measured.margins and len(measured.margins) >= len(reference.token_ids)
        assert other.divergence == {"position": 3, "target_alone_margin": measured.margins[3]}
        # The recorded margin is the target's top-1 minus top-2 logit where position 3 was chosen, as the target
        # computes it directly over the prompt and the first three tokens.
        engine.reset_cache()
        engine.target.decode([*tokens, *reference.token_ids[:3]], 0, 0, "last")
        row = np.array(engine.target.logits(1)[0])
        engine.target.remove_from(0, 0)
        runner_up, top = np.sort(row)[-2:]
        assert int(np.argmax(row)) == reference.token_ids[3]
        assert measured.margins[3] == pytest.approx(float(top - runner_up), abs=1e-3)
    finally:
        engine.close()


SHUTDOWN_SCRIPT = """
import os, sys
from pathlib import Path
import llama_cpp
from localspec.engine import Engine, EngineSettings, GenerationRequest, llama_model

def generate():
    engine = Engine(EngineSettings(target_path=Path(sys.argv[1]), n_ctx=256, slots=1, threads=3, mode="none"))
    engine.complete(GenerationRequest(prompt="def f():", max_tokens=4))
    engine.close()

def log_an_error():  # llama.cpp logs a failed load at error level
    llama_cpp.llama_model_load_from_file(b"/nonexistent/missing.gguf", llama_cpp.llama_model_default_params())

generate()
pools = len(llama_model._threadpools)
log_an_error()
os.write(2, b"-- shutdown --\\n")
llama_model.shutdown()
log_an_error()
print(pools, len(llama_model._threadpools))
generate()  # loading again after shutdown starts over
llama_model.shutdown()
"""


def test_shutdown_frees_the_threadpools_and_takes_llama_cpp_logging_out_of_python(tiny_models) -> None:
    """After `shutdown()` no llama.cpp log line (say, from a library destructor after the interpreter finalised)
    can call back into Python: llama.cpp logs through its own C logger again."""
    env = {**os.environ, "LOCALSPEC_LLAMA_LOG": "none"}  # localspec's Python callback drops every line
    completed = subprocess.run(
        [sys.executable, "-c", SHUTDOWN_SCRIPT, str(tiny_models.target)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.split() == ["1", "0"]  # one shared pool while models ran, none after shutdown
    before, after = completed.stderr.split("-- shutdown --")
    assert "missing.gguf" not in before  # dropped by localspec's callback
    assert "failed to open GGUF file '/nonexistent/missing.gguf'" in after  # printed by llama.cpp itself


def test_bench_without_a_draft_model_skips_the_draft_mode(tiny_models, tmp_path: Path) -> None:
    run = _bench(
        tmp_path / "home", tmp_path / "results",
        "--target", str(tiny_models.target), "--draft", "none",
        "--workloads", "humaneval", "--prompts", "1", "--modes", "draft,ngram",
    )  # fmt: skip
    assert "no draft model: the draft mode is skipped" in run.completed.stderr
    assert {r["mode"] for r in run.result["runs"]} == {"none", "ngram"}


def test_bench_without_the_target_alone_runs_only_the_modes_named_and_claims_no_speedup(
    tiny_models, tmp_path: Path
) -> None:
    run = _bench(
        tmp_path / "home", tmp_path / "results",
        "--target", str(tiny_models.target), "--draft", str(tiny_models.draft_similar),
        "--workloads", "humaneval", "--prompts", "1", "--modes", "draft,ngram", "--no-target-alone",
    )  # fmt: skip
    assert {r["mode"] for r in run.result["runs"]} == {"draft", "ngram"}
    assert all(r["identical"] is None for r in run.result["runs"])
    rows = run.result["summary"]
    assert {r["mode"] for r in rows} == {"draft", "ngram"}
    assert all(r["speedup_vs_own_target_alone"] is None and r["tokens_per_second"] > 0 for r in rows)
    table = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "render_table.py"), str(run.json_path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "| humaneval | localspec | draft |" in table and "| - | - |" in table


def test_bench_takes_engine_settings_from_the_config_and_its_flags_override_them(
    tiny_models, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    (home / "config").mkdir(parents=True)
    (home / "config" / "config.toml").write_text(
        "[engine]\nn_ctx = 1024\n\n[speculative]\ndraft_max = 5\ndraft_p_min = 0.5\nhistory_tokens = 0\n"
    )
    run = _bench(
        home, tmp_path / "results",
        "--target", str(tiny_models.target), "--draft", str(tiny_models.draft_similar),
        "--workloads", "humaneval", "--prompts", "1", "--modes", "draft", "--draft-p-min", "0.25",
        "--trace-steps",
    )  # fmt: skip
    meta = run.result["meta"]
    assert (meta["draft_max"], meta["history_tokens"]) == (5, 0)  # config.toml's [speculative]
    assert (meta["n_ctx"], meta["draft_p_min"]) == (2048, 0.25)  # flags (--n-ctx 2048) win over the config
    # --trace-steps: every run keeps its steps, which add up to the run's figures.
    for one in run.result["runs"]:
        steps = one["steps"]
        assert len(steps) == one["target_passes"]
        assert sum(step["drafted"] for step in steps) == one["drafted"]
        assert sum(step["accepted"] for step in steps) == one["accepted"]
        assert all(step["source"] == ("draft" if one["mode"] == "draft" else "none") for step in steps)
        assert all(step["drafted"] <= 5 and step["verify_ms"] > 0 for step in steps)
        assert all(step["pass_tokens"] >= step["drafted"] + 1 for step in steps)
    # bench/step_traces.py adds the steps up per mode and source (each run's first step, which reads the prompt's
    # last chunk, left out).
    table = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "step_traces.py"), str(run.json_path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    lines = [line.strip("|").split("|") for line in table.splitlines() if line.startswith("| humaneval")]
    rows = {(cells[1].strip(), cells[2].strip()): cells for cells in lines if len(cells) == 10}
    assert set(rows) == {("none", "none"), ("draft", "draft")}
    for mode in ("none", "draft"):
        steps = [step for one in run.result["runs"] if one["mode"] == mode for step in one["steps"][1:]]
        cells = rows[(mode, mode)]
        assert int(cells[3]) == len(steps)
        assert float(cells[4]) == pytest.approx(sum(s["drafted"] for s in steps) / len(steps), abs=0.006)
        assert float(cells[5]) == pytest.approx(sum(s["accepted"] for s in steps) / len(steps), abs=0.006)
        assert float(cells[8]) == pytest.approx(sum(s["verify_ms"] for s in steps) / len(steps), abs=0.06)
    # ... and classes the speculative modes' passes as cold (a new size), captures and warm (repeats).
    kinds = [
        line.strip("|").split("|") for line in table.splitlines() if line.startswith("| humaneval | draft |")
    ]
    counts = [int(cell.split()[0]) for cell in next(cells for cells in kinds if len(cells) == 5)[2:]]
    draft_runs = [one["steps"] for one in run.result["runs"] if one["mode"] == "draft"]
    new_sizes = sum(
        step["pass_tokens"] != before["pass_tokens"]
        for steps in draft_runs
        for before, step in pairwise(steps)
    )
    assert sum(counts) == sum(len(steps) - 1 for steps in draft_runs) and counts[0] == new_sizes
    # ... and sorts the draft-model steps by what the step before them did, with the drafts they found made ahead.
    by_before = {
        cells[2].strip(): cells
        for cells in kinds
        if len(cells) == 7 and cells[2].strip() in ("every draft taken", "a draft rejected", "no drafts")
    }
    pairs = [(before, step) for steps in draft_runs for before, step in pairwise(steps)]

    def what_it_did(before: dict[str, Any]) -> str:
        if not before["drafted"]:
            return "no drafts"
        return "every draft taken" if before["accepted"] == before["drafted"] else "a draft rejected"

    for name, cells in by_before.items():
        chosen = [step for before, step in pairs if what_it_did(before) == name]
        assert int(cells[3]) == len(chosen) > 0
        assert float(cells[4]) == pytest.approx(sum(s["ready"] for s in chosen) / len(chosen), abs=0.06)
        assert float(cells[5]) == pytest.approx(sum(s["drafted"] for s in chosen) / len(chosen), abs=0.06)
    assert by_before and sum(int(cells[3]) for cells in by_before.values()) == len(pairs)
    # bench/draft_floor.py replays draft mode over the target alone's answers with this trace's prices: a speedup
    # for every floor and draft cost, and the answers kept for the next replay.
    answers = tmp_path / "answers.json"
    replay = [
        sys.executable, str(ROOT / "bench" / "draft_floor.py"), str(tiny_models.target),
        str(tiny_models.draft_similar), "--prices", str(run.json_path), "--workloads", "humaneval",
        "--prompts", "2", "--max-tokens", "16", "--answers", str(answers),
    ]  # fmt: skip
    tables = [subprocess.run(replay, capture_output=True, text=True, check=True).stdout for _ in range(2)]
    assert tables[0] == tables[1]  # (the second from the kept answers)
    rows = [line.split() for line in tables[0].splitlines() if re.match(r"\s+0\.\d+\s", line)]
    assert len(rows) == 7 and all(len(row) == 8 and all(float(cell) > 0 for cell in row[1:]) for row in rows)
    assert [len(answer["target"]) for answer in json.loads(answers.read_text())] == [16, 16]


def test_the_ngram_agreement_script_reads_the_draft_models_pick_at_each_answer_token(tiny_models) -> None:
    # bench/ngram_agreement.py looks at the positions right after a miss of the draft model. A draft model with the
    # target's weights never misses (its picks line up with the answer's tokens): no row. An unrelated one misses
    # often, and the n-gram proposals there are split by whether their first draft is its pick.
    def table(draft: Path) -> list[list[str]]:
        out = subprocess.run(
            [
                sys.executable, str(ROOT / "bench" / "ngram_agreement.py"), str(tiny_models.target), str(draft),
                "--workloads", "humaneval", "--prompts", "3", "--max-tokens", "48",
            ],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        return [
            [cell.strip() for cell in line.strip("|").split("|")]
            for line in out.splitlines()
            if line.startswith("| humaneval")
        ]

    assert table(tiny_models.draft_same) == []
    rows = table(tiny_models.draft_other)
    assert rows and {row[1] for row in rows} <= {"agrees", "differs"}
    for row in rows:
        ngram_right, draft_right = (int(cell.rstrip("%")) for cell in row[3:5])
        # (agreeing, both are right or neither; differing, at most one is)
        assert ngram_right == draft_right if row[1] == "agrees" else ngram_right + draft_right <= 100


def test_the_planning_cost_script_times_each_kind_of_step() -> None:
    # bench/plan_cost.py times the chooser's plan with a GPU's prices for the real 1.5B: where an n-gram proposal
    # is there it plans with it (it pays at those prices), and without one it keeps to the target alone.
    timed = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "plan_cost.py"), "--draft-max", "16"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rows = [
        re.match(r"(no|a 6-token) n-gram proposal .* ([\d.]+) us  \(plan: (\w+) (\d+)\)", line)
        for line in timed.splitlines()
    ]
    assert len(rows) == 4 and all(rows)
    for row in rows:
        assert row is not None and float(row[2]) > 0
        assert (row[3], row[4]) == (("none", "0") if row[1] == "no" else ("ngram", "6"))


def test_the_overhead_replay_times_each_mode_between_passes_on_the_target_alones_text(
    tiny_models, tmp_path: Path
) -> None:
    # bench/overhead_replay.py: every mode settles the target alone's answer (made once, then read back), and gets
    # a row of times outside the passes and of speeds at the held prices, per workload in the bench's order; the
    # first mode is the ratios' yardstick. The draft model picks as the real one did along the answer (draft mode
    # drafts at every step).
    answers = tmp_path / "answers.json"
    replay = [
        sys.executable, str(ROOT / "bench" / "overhead_replay.py"), str(tiny_models.target),
        str(tiny_models.draft_similar), "--workloads", "humaneval,fim", "--prompts", "humaneval=1,fim=1",
        "--max-tokens", "16", "--rounds", "1", "--modes", "none,adaptive,draft", "--answers", str(answers),
        "--scale", "5",
    ]  # fmt: skip
    for _ in range(2):  # (the second from the kept answers)
        printed = subprocess.run(replay, capture_output=True, text=True)
        assert printed.returncode == 0, printed.stderr
        *lines, picks = printed.stdout.splitlines()
        blocks = "\n".join(lines).split("== ")[1:]
        assert [block.split()[0] for block in blocks] == ["humaneval", "fim"]
        for block in blocks:
            rows = {line.split()[0]: line.split()[1:] for line in block.splitlines()[2:]}
            assert set(rows) == {"none", "adaptive", "draft"}
            # (one token a pass, and no more than itself)
            assert float(rows["none"][1]) == 1.0 and float(rows["none"][6]) == 0.0
            assert rows["none"][8:] == ["1.000", "(1.000)"]
            assert all(
                float(cell) > 0 for row in rows.values() for cell in [*row[:6], *row[7:9], row[9].strip("()")]
            )
        along = re.fullmatch(
            r"the draft model's picks: (\d+) the real one's along the answer, (\d+) past it", picks
        )
        assert along is not None and int(along[1]) > 0, picks
    assert [len(answer["target"]) for answer in json.loads(answers.read_text())] == [16, 16]


def test_the_backend_sampling_check_compares_every_row_and_says_how_many_are_wrong(tiny_models) -> None:
    # bench/backend_sampling_check.py: llama.cpp's own picks on the device against the whole rows' argmax, row by
    # row, a verdict that matches them, and an exit status that says whether any was wrong (the vendored
    # llama.cpp has one wrong: docs/BENCHMARKS.md, session 38; a fixed one would say "all rows right").
    checked = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "backend_sampling_check.py"), str(tiny_models.target)],
        capture_output=True, text=True,
    )  # fmt: skip
    rows = re.findall(r"row (\d): whole row (\d+), picked on the device (\d+)", checked.stdout)
    assert [int(row[0]) for row in rows] == list(range(8))
    wrong = sum(whole != picked for _, whole, picked in rows)
    assert (f"{wrong} of 8 rows wrong" if wrong else "all rows right") in checked.stdout
    assert checked.returncode == (1 if wrong else 0)


def test_the_overhead_model_keeps_its_sources_tokenizer_and_decodes(tiny_models, tmp_path: Path) -> None:
    # bench/overhead_model.py: a two-layer copy with random weights that tokenizes as its source does (what the
    # language server and the daemon handle), and that llama.cpp loads and decodes.
    import numpy as np

    from localspec.engine.llama_model import LlamaModel

    copy = tmp_path / "overhead.gguf"
    written = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "overhead_model.py"), str(tiny_models.target), str(copy)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    text = "def add(a, b):\n    return a + b  # défini\n"
    source = LlamaModel(tiny_models.target, role="target", n_ctx_per_seq=256, n_threads=1)
    model = LlamaModel(copy, role="target", n_ctx_per_seq=256, n_threads=1)
    try:
        tokens = model.tokenize(text, add_bos=True, parse_special=False)
        assert tokens == source.tokenize(text, add_bos=True, parse_special=False) and len(tokens) > 10
        assert model.metadata("llama.block_count") == "2"
        model.decode(tokens, 0, 0, "last")
        assert np.isfinite(model.logits(1)[0]).all()
    finally:
        source.close()
        model.close()


def test_pass_depth_times_every_size_at_every_depth(tiny_models) -> None:
    # bench/pass_depth.py: a row per depth, a figure per size.
    timed = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "pass_depth.py"), str(tiny_models.target),
         "--sizes", "2,63,64", "--depths", "0,100", "--threads", "1"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert timed.returncode == 0, timed.stderr
    rows = [line.split() for line in timed.stdout.splitlines()[1:]]
    assert [row[0] for row in rows] == ["0", "100"] and all(len(row) == 4 for row in rows)
    assert all(float(figure) > 0 for row in rows for figure in row[1:])


def test_shared_kv_cost_times_jumps_for_host_copies_and_each_number_of_shared_windows(tiny_models) -> None:
    # bench/shared_kv_cost.py: a row for host copies, then one per number of windows held in the shared buffer.
    timed = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "shared_kv_cost.py"), str(tiny_models.target),
         "--shared", "16", "--own", "32", "--windows", "1,3", "--new", "4", "--generate", "2", "--jumps", "4",
         "--threads", "1"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert timed.returncode == 0, timed.stderr
    rows = [line.strip("|").split("|") for line in timed.stdout.splitlines()[2:]]
    assert [row[0].strip() for row in rows] == [
        "host copies (ordinary memory)",
        "shared buffer, 1 window (48 cells)",
        "shared buffer, 3 windows (112 cells)",
    ]
    # switch, passes and the whole jump: p50 / p90 each, the whole at least the passes
    figures = [[[float(x) for x in cell.split("/")] for cell in row[1:]] for row in rows]
    assert all(len(row) == 3 and row[2][0] >= row[1][0] > 0 for row in figures)


def test_a_bench_with_nothing_to_run_says_what_to_give(
    tiny_models, localspec_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from localspec.cli import main

    assert main(["bench", "--target", str(tiny_models.target), "--workloads", ""]) == 1
    assert "name at least one --workloads entry or give --jsonl prompts" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["bench", "bench-editor"])
def test_a_llama_server_that_cannot_run_is_reported_before_anything_is_measured(
    command: str,
    tiny_models,
    localspec_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # `bench` loaded its models and ran every localspec mode before it found out the llama-server path was wrong.
    from localspec.cli import main

    source = tmp_path / "src"
    source.mkdir()
    (source / "a.py").write_text("def f():\n    return 1\n")
    out = tmp_path / "out"
    first = ["bench"] if command == "bench" else ["bench-editor", str(source)]
    models = ["--target", str(tiny_models.target), "--draft", str(tiny_models.draft_similar)]
    not_executable = tmp_path / "llama-server"
    not_executable.write_text("#!/bin/sh\n")
    no_server_here = tmp_path / "empty"
    no_server_here.mkdir()
    monkeypatch.setenv("LOCALSPEC_LLAMA_CPP_BIN", str(no_server_here))
    monkeypatch.setenv("XDG_CACHE_HOME", str(no_server_here))
    monkeypatch.setenv("PATH", str(no_server_here))
    for server, says in [
        (["--against-llama-server", str(tmp_path / "missing")], "missing is not a file"),
        (["--against-llama-server", str(not_executable)], "llama-server is not executable (chmod +x it)"),
        (["--against-llama-server"], "No llama-server found: give its path (--against-llama-server PATH)"),
    ]:
        assert main([*first, *models, *server, "--out", str(out / "results.json")]) == 1
        assert says in capsys.readouterr().err
    assert not out.exists()  # nothing ran, nothing was written


def test_a_bench_that_fails_part_way_keeps_what_it_measured(tiny_models, tmp_path: Path) -> None:
    # The stage after localspec's runs fails (a llama-server that exits at once, as one built without the GPU's
    # support would): the runs measured before it are on disk, marked incomplete. The same file is written after
    # each workload and each llama-server mode, so a run stopped by Ctrl-C, a timeout or kill -9 keeps as much.
    out = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALSPEC_")}
    env["LOCALSPEC_HOME"] = str(tmp_path / "home")
    completed = subprocess.run(
        [sys.executable, "-m", "localspec", "bench", "--threads", "1", "--n-ctx", "2048", "--max-tokens", "8",
         "--target", str(tiny_models.target), "--draft", str(tiny_models.draft_similar),
         "--workloads", "humaneval,fim", "--prompts", "1", "--modes", "none,adaptive",
         "--against-llama-server", "/bin/false", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert completed.returncode == 1
    assert "llama-server exited with 1" in completed.stderr
    assert "stopped part-way" in completed.stderr
    kept = json.loads(next(out.glob("bench-*.json")).read_text())
    assert kept["meta"]["complete"] is False
    assert {(r["system"], r["mode"], r["workload"]) for r in kept["runs"]} == {
        ("localspec", mode, workload) for mode in ("none", "adaptive") for workload in ("humaneval", "fim")
    }
    assert {row["mode"] for row in kept["summary"]} == {"none", "adaptive"}
    assert kept["meta"]["end_prices"].startswith("target pass 1: ")


def test_a_missing_or_broken_model_file_is_the_first_and_only_thing_a_bench_says(
    tiny_models, localspec_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from localspec.cli import main

    assert main(["bench", "--target", str(tmp_path / "gone.gguf"), "--prompts", "1"]) == 1
    err = capsys.readouterr().err
    assert "The target model file" in err and "does not exist" in err and "draft mode" not in err
    (tmp_path / "partial.gguf").write_bytes(b"<html>")  # a download that saved an error page
    args = [
        "bench",
        "--target",
        str(tiny_models.target),
        "--draft",
        str(tmp_path / "partial.gguf"),
        "--prompts",
        "1",
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "The draft model file" in err and "is not a GGUF file" in err and "measured at start-up" not in err


def test_a_plot_that_fails_leaves_the_results_and_says_how_to_draw_it_later(tmp_path: Path) -> None:
    # The plot is drawn in a child process: a crash there (seen as a segfault on a GPU machine) cannot cost the
    # results or the bench's exit status.
    from localspec.benchmark import report

    broken = tmp_path / "bench-broken.json"
    broken.write_text('{"meta": {}, "summary": "not rows"}')
    message = report.plot_in_child(broken, tmp_path / "bench-broken.png")
    assert message.startswith("plot failed (") and "python -m localspec.benchmark.report" in message
    assert not (tmp_path / "bench-broken.png").exists()


def test_graph_keys_prices_each_pass_as_either_cuda_graph_key_would_run_it(tmp_path: Path) -> None:
    # After a 30-token prompt pass (priced as observed: 10 ms), one-token passes and 9-token n-gram steps in turn,
    # all within the first 256 cells of KV. Prices (ms) cold / capturing / replayed: 1 token 3 / 3.5 / 2, 9 tokens
    # 6 / 7 / 4; a graph rebuild 0.5 ms.
    prices = (
        "target pass 1: 3.0, 9: 6.0, 25: 12.0 (after two of the same size: 1: 2.0, 9: 4.0, 25: 8.0) "
        "(the second of the same size, capturing its CUDA graph: 1: 3.5, 9: 7.0, 25: 14.0); draft token 1.0"
    )
    one, nine = _step("none", 0, 0, 1.0, {}), _step("ngram", 8, 8, 1.0, {})
    steps = [{**one, "pass_tokens": 30, "verify_ms": 10.0}, one, one, one, nine, one, one, nine, one, one]
    run = {
        "system": "localspec",
        "workload": "humaneval",
        "mode": "adaptive",
        "steps": steps,
        "decode_seconds": 0.05,
    }
    meta = {"target_label": "t.gguf", "end_prices": prices, "end_prices_by_mode": {"adaptive": prices}}
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"meta": meta, "runs": [run]}))
    table = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "graph_keys.py"), str(path), "--rebuild", "0.5"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    row = next(line for line in table.splitlines() if line.startswith("| humaneval"))
    observed, upstream, shape, saving = (cell.strip() for cell in row.strip("|").split("|")[2:])
    assert observed == "19"  # 10 + nine passes of 1 ms
    # One graph a context: 1 cold, capture, replay; 9 cold; 1 cold, capture; 9 cold; 1 cold, capture.
    assert upstream == f"{10 + 3 + 3.5 + 2 + 6 + 3 + 3.5 + 6 + 3 + 3.5:.0f}"
    # A graph per size: 1 cold, capture, replay; 9 cold; 1 replayed after a rebuild, replay; 9 captured after a
    # rebuild; 1 replayed after a rebuild, replay.
    assert shape == f"{10 + 3 + 3.5 + 2 + 6 + 2.5 + 2 + 7.5 + 2.5 + 2:.0f}"
    assert saving == f"{(43.5 - 41) / 50:.1%}"
