"""Benchmark output: a terminal table and a PNG plot of speedup and acceptance per workload.

`python -m localspec.benchmark.report RESULT.json [PLOT.png]` draws the plot of a saved result. The bench draws it
that way too, in a child process: matplotlib's native code has crashed a process that had run llama.cpp on a GPU
(a segfault after the results were written), and the results must never depend on the plot.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def print_table(rows: list[dict[str, Any]], console: Console, target: str) -> None:
    """`target` names what was measured, e.g. "cost-scaled (x5 layers) qwen2.5-coder-1.5b.gguf"."""
    table = Table(
        title=f"localspec bench, target {target} (decode tok/s; speedup vs target alone in this run)"
    )
    by_round = any(row.get("rounds_tokens_per_second") for row in rows)
    for column in (
        "workload",
        "system",
        "mode",
        "tok/s",
        *(["tok/s by round"] if by_round else []),
        "speedup",
        "vs localspec alone",
        "acceptance",
        "mean acc. len",
        "draft/verify/sample",
        "near ties",
        "identical",
    ):
        table.add_column(column, justify="right" if column not in ("workload", "system", "mode") else "left")
    for row in sorted(rows, key=lambda r: (r["workload"], r["system"] != "localspec", r["mode"])):
        split = row["time_split"]
        table.add_row(
            row["workload"],
            row["system"],
            row["mode"],
            f"{row['tokens_per_second']:.1f}",
            *([_rounds(row.get("rounds_tokens_per_second"))] if by_round else []),
            _ratio(row["speedup_vs_own_target_alone"]),
            _ratio(row["speedup_vs_localspec_target_alone"]),
            f"{row['acceptance']:.2f}" if row["acceptance"] is not None else "-",
            f"{row['mean_accepted_length']:.2f}" if row["mean_accepted_length"] else "-",
            f"{split['draft']:.2f}/{split['verify']:.2f}/{split['sample']:.2f}"
            if row["system"] == "localspec"
            else "-",
            str(row["settled_near_ties"]) if row["settled_near_ties"] is not None else "-",
            f"{row['identical']}/{row['compared']}" if row["compared"] else "-",
        )
    console.print(table)


def _ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def _rounds(speeds: list[float] | None) -> str:
    return " / ".join(f"{speed:.0f}" for speed in speeds) if speeds else "-"


def plot(rows: list[dict[str, Any]], path: Path, target: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = sorted({r["workload"] for r in rows})
    series = sorted({(r["system"], r["mode"]) for r in rows if r["mode"] != "none"})
    figure, (speed_axis, accept_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(1, len(series))
    for index, (system, mode) in enumerate(series):
        by_workload = {r["workload"]: r for r in rows if (r["system"], r["mode"]) == (system, mode)}
        xs = [w + index * width for w in range(len(workloads))]
        speed_axis.bar(
            xs,
            [by_workload.get(w, {}).get("speedup_vs_localspec_target_alone") or 0 for w in workloads],
            width,
            label=f"{system} {mode}",
        )
        accept_axis.bar(xs, [by_workload.get(w, {}).get("acceptance") or 0 for w in workloads], width)
    for axis, title in ((speed_axis, "speedup vs localspec target alone"), (accept_axis, "acceptance")):
        axis.set_xticks([w + 0.4 - width / 2 for w in range(len(workloads))], workloads)
        axis.set_title(title)
    figure.suptitle(f"target: {target}")
    speed_axis.axhline(1.0, color="black", linewidth=0.8)
    speed_axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_in_child(result: Path, path: Path) -> str:
    """Draw `result`'s plot into `path` in a child process; a line for the user either way."""
    child = subprocess.run(
        [sys.executable, "-m", "localspec.benchmark.report", str(result), str(path)],
        capture_output=True,
        text=True,
    )
    if child.returncode == 0:
        return f"plot: {path}"
    if "No module named 'matplotlib'" in child.stderr:
        return "plot skipped: pip install matplotlib (or localspec[bench])"
    last = (child.stderr.strip().splitlines() or [f"exit status {child.returncode}"])[-1]
    return (
        f"plot failed ({last}); the results are complete. Draw it later with: "
        f"python -m localspec.benchmark.report {result} {path}"
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2:
        print("usage: python -m localspec.benchmark.report RESULT.json [PLOT.png]", file=sys.stderr)
        return 2
    result = Path(args[0])
    document = json.loads(result.read_text(encoding="utf-8"))
    target = document["meta"].get("target_label") or document["meta"].get("target", "")
    print(plot(document["summary"], Path(args[1]) if len(args) > 1 else result.with_suffix(".png"), target))
    return 0


if __name__ == "__main__":
    sys.exit(main())
