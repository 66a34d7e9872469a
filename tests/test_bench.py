"""`localspec bench` end to end on the tiny models: every workload and mode, JSON and plot, losslessness report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

MODES = {"none", "draft", "ngram", "adaptive"}


def test_bench_runs_every_workload_and_mode_and_reports_speed_acceptance_and_identity(
    tiny_models, localspec_home: Path, tmp_path: Path
) -> None:
    prompts = tmp_path / "mine.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "def add(a, b):\n    return a + b\n\ndef", "id": "own-1"})
        + "\n"
        + json.dumps({"prefix": "x = [1, 2, 3]\ny = [", "suffix": "]\n", "id": "own-2"})
        + "\n"
    )
    out = tmp_path / "results"
    completed = subprocess.run(
        [
            sys.executable, "-m", "localspec", "bench",
            "--target", str(tiny_models.target), "--draft", str(tiny_models.draft_similar),
            "--workloads", "humaneval,fim,code-edit", "--jsonl", str(prompts),
            "--prompts", "2", "--max-tokens", "16", "--threads", "1", "--n-ctx", "2048",
            "--out", str(out),
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "speedup" in completed.stdout  # the table
    result = json.loads(next(out.glob("bench-*.json")).read_text())
    assert next(out.glob("bench-*.png")).stat().st_size > 0
    # The prices the chooser started from are kept with the results (and printed).
    assert result["meta"]["start_up_prices"].startswith("target pass 1: ")
    assert "draft catch-up of 64 tokens" in " ".join(completed.stderr.split())
    runs = result["runs"]
    workloads = {run["workload"] for run in runs}
    assert {"humaneval", "fim", "code-edit"} <= workloads and len(workloads) == 4  # plus the JSONL prompts
    assert {run["mode"] for run in runs} == MODES
    for run in runs:
        if run["mode"] == "none":
            continue
        # Every speculative run is compared with the target alone; a difference names its position and margin.
        assert run["identical"] is True or run["divergence"]["target_alone_margin"] is not None
        assert sum(run["steps_by_source"].values()) == run["target_passes"]
    summary = {(row["mode"], row["workload"]): row for row in result["summary"]}
    for mode in MODES:
        for workload in workloads:
            row = summary[(mode, workload)]
            assert row["tokens_per_second"] > 0 and row["speedup_vs_own_target_alone"] > 0
    assert any(summary[("draft", workload)]["acceptance"] for workload in workloads)


def test_a_divergence_is_explained_by_the_target_alone_margin_measured_outside_the_timed_run(
    tiny_models,
) -> None:
    import dataclasses

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
        assert measured.margins[3] >= 0.0
    finally:
        engine.close()
