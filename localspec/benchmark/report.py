"""Benchmark output: a terminal table and a PNG plot of speedup and acceptance per workload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def print_table(rows: list[dict[str, Any]], console: Console, target: str) -> None:
    """`target` names what was measured, e.g. "cost-scaled (x5 layers) qwen2.5-coder-1.5b.gguf"."""
    table = Table(
        title=f"localspec bench, target {target} (decode tok/s; speedup vs target alone in this run)"
    )
    for column in (
        "workload",
        "system",
        "mode",
        "tok/s",
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
