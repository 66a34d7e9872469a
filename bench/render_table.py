"""Render a `localspec bench` JSON file as a Markdown table (for docs/BENCHMARKS.md and the README).

Usage: python bench/render_table.py RESULTS.json [MORE.json ...]   (also .json.gz, as in docs/benchmarks/traces/)
Identical-output counts are recomputed from the stored runs: each speculative run against the same system's
target-alone run of the same (workload, task).
"""

from __future__ import annotations

import gzip
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any


def load(path: Path) -> dict[str, Any]:
    """A bench result, plain or gzipped."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as file:
        return json.load(file)


def usage_error(paths: list[str], doc: str | None) -> int | None:
    """Where `paths` names no file or asks for help (these scripts take no options): print `doc` and return the
    exit status; else None."""
    if paths and not any(path.startswith("-") for path in paths):
        return None
    print(doc, file=sys.stderr)
    return 0 if paths[:1] in (["-h"], ["--help"]) else 2


def _over(
    speed: dict[tuple[str, str, str], float], run: tuple[str, str, str], alone: tuple[str, str, str]
) -> float | None:
    """`run`'s speed over a target alone's; None where none ran (`bench --no-target-alone`)."""
    return speed[run] / speed[alone] if alone in speed else None


def rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    alone = {(r["system"], r["workload"], r["task_id"]): r for r in runs if r["mode"] == "none"}
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[(run["workload"], run["system"], run["mode"])].append(run)
    speed = {
        key: sum(r["tokens"] for r in items) / sum(r["decode_seconds"] for r in items)
        for key, items in groups.items()
    }
    table = []
    for (workload, system, mode), items in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != "localspec", kv[0][2] != "none", kv[0][2])
    ):
        drafted = sum(r["drafted"] for r in items)
        accepted = sum(r["accepted"] for r in items)
        identical = compared = 0
        if mode != "none":
            for r in items:
                reference = alone.get((system, workload, r["task_id"]))
                if reference is not None:
                    compared += 1
                    same = r["identical"] if system == "localspec" else r["text"] == reference["text"]
                    identical += bool(same)
        table.append(
            {
                "workload": workload,
                "system": system,
                "mode": mode,
                "tok/s": speed[(workload, system, mode)],
                "vs own alone": _over(speed, (workload, system, mode), (workload, system, "none")),
                "vs localspec alone": _over(speed, (workload, system, mode), (workload, "localspec", "none")),
                "acceptance": accepted / drafted if drafted else None,
                "identical": f"{identical}/{compared}" if compared else "-",
            }
        )
    return table


def markdown(table: list[dict[str, Any]]) -> str:
    lines = [
        "| workload | system | mode | tok/s | vs its own target alone | vs localspec target alone | acceptance "
        "| identical to target alone |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in table:
        own, ratio = (
            f"{row[key]:.2f}x" if row[key] is not None else "-"
            for key in ("vs own alone", "vs localspec alone")
        )
        acceptance = f"{row['acceptance']:.2f}" if row["acceptance"] is not None else "-"
        lines.append(
            f"| {row['workload']} | {row['system']} | {row['mode']} | {row['tok/s']:.1f} | "
            f"{own} | {ratio} | {acceptance} | {row['identical']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    if (status := usage_error(sys.argv[1:], __doc__)) is not None:
        sys.exit(status)
    for name in sys.argv[1:]:
        data = load(Path(name))
        print(f"<!-- {name}: {json.dumps(data['meta'])} -->")
        print(markdown(rows(data["runs"])))
        print()
