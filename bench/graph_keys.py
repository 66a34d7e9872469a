"""What a CUDA graph per pass size (`GGML_CUDA_GRAPH_KEY=shape`, localspec/llama_patches) would save, replayed on
the step traces of a GPU run made with upstream's key.

Each target pass of a run's steps is classed as llama.cpp's CUDA backend would run it under either key, and priced
from the run's own end prices (cold, capturing, replayed; `meta.end_prices_by_mode`):
- upstream ("node"): one graph a context. A pass of the size and KV length (padded to 256 cells) of the pass
  before replays from the third in a row, captures as the second, runs cold otherwise.
- "shape": a graph per size. A size's first pass in a KV length runs cold, its second captures, later ones replay;
  a pass after one of another size pays `--rebuild` ms more (llama.cpp builds its graph again; ~0.5 ms measured on
  the 1.5B in the thirty-sixth lease, docs/BENCHMARKS.md), scaled by the copy's layers.
Passes over a prompt (more tokens than any priced size) are priced as observed in both. The draft model's own
passes, which the key would speed up too, are not counted. It prints, per workload and mode, the verify time
observed, modelled under upstream's key (the model's check) and under "shape", and the modelled saving as a share
of the decode time.

    python bench/graph_keys.py RESULT.json[.gz] [--rebuild MS]
"""

from __future__ import annotations

import argparse
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from render_table import load  # (this script's folder is on the path)
from step_traces import KV_PAD, markdown_table

HEADER = "workload | mode | verify ms observed | upstream key, modelled | shape key, modelled | saving of decode time"
TABLES = {
    "cold": r"^target pass ([^(;]*)",
    "warm": r"\(after two of the same size: ([^)]*)\)",
    "capture": r"\(the second of the same size, capturing its CUDA graph: ([^)]*)\)",
}


def parse_prices(text: str) -> dict[str, dict[int, float]]:
    """The prices `PassCosts.describe` wrote, ms by size, for each kind of pass."""
    tables = {}
    for kind, pattern in TABLES.items():
        found = re.search(pattern, text)
        assert found, f"no {kind} prices in {text!r}"
        pairs = (item.split(":") for item in found.group(1).split(",") if ":" in item)
        tables[kind] = {int(size): float(ms) for size, ms in pairs}
    return tables


def price(table: dict[int, float], n: int) -> float:
    """ms for a pass of n tokens, interpolated between the sizes the table holds."""
    sizes = sorted(table)
    if n in table:
        return table[n]
    low = max(size for size in sizes if size < n)
    high = min(size for size in sizes if size > n)
    return table[low] + (table[high] - table[low]) * (n - low) / (high - low)


def modelled(
    runs: list[dict[str, Any]], prices: dict[str, dict[int, float]], rebuild: float
) -> tuple[float, ...]:
    """Observed, upstream-modelled and shape-modelled verify ms over `runs` (one mode's, in the order run)."""
    largest = max(prices["cold"])
    observed = upstream = shape = 0.0
    before = (0, 0)  # upstream: (size, KV length) of the last pass
    streak = 0
    # shape: size -> (KV length its graph was last checked at, captured)
    graphs: dict[int, tuple[int, bool]] = {}
    for run in runs:
        position = 0
        for step in run["steps"]:
            n, ms = step["pass_tokens"], step["verify_ms"]
            kv = math.ceil((position + n) / KV_PAD)
            observed += ms
            if n > largest:  # a prompt's pass: cold under either key
                upstream += ms
                shape += ms
            else:
                same = (n, kv) == before
                streak = streak + 1 if same else 1
                kind = "cold" if streak == 1 else ("capture" if streak == 2 else "warm")
                upstream += price(prices[kind], n)
                kv_then, captured = graphs.get(n, (0, False))
                if kv_then != kv:
                    graphs[n] = (kv, False)
                    shape += price(prices["cold"], n)
                else:
                    graphs[n] = (kv, True)
                    extra = 0.0 if before[0] == n else rebuild
                    shape += price(prices["warm" if captured else "capture"], n) + extra
            before = (n, kv)
            position += max(1, n - (step["drafted"] - step["accepted"]))  # (rejected drafts leave the KV)
    return observed, upstream, shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", type=Path)
    parser.add_argument(
        "--rebuild", type=float, default=0.5, help="ms a graph rebuild costs the 1.5B (28 layers)"
    )
    args = parser.parse_args()
    data = load(args.result)
    meta = data["meta"]
    layers = (meta.get("cost_scaled") or {}).get("layers", 1)
    rebuild = args.rebuild * layers
    by_mode = meta.get("end_prices_by_mode") or {}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for run in data["runs"]:
        if run.get("system") == "localspec" and run.get("steps"):
            groups[(run["workload"], run["mode"])].append(run)
    rows = []
    for (workload, mode), runs in sorted(groups.items()):
        prices = parse_prices(by_mode.get(mode) or meta["end_prices"])
        observed, upstream, shape = modelled(runs, prices, rebuild)
        decode = sum(run["decode_seconds"] for run in runs) * 1000
        rows.append(
            [
                workload,
                mode,
                f"{observed:.0f}",
                f"{upstream:.0f}",
                f"{shape:.0f}",
                f"{(upstream - shape) / decode:.1%}",
            ]
        )
    print(f"{meta.get('target_label')}, a graph rebuild {rebuild:.1f} ms")
    print("\n".join(markdown_table(HEADER, 2, rows)))


if __name__ == "__main__":
    main()
