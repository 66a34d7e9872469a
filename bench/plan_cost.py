"""What the adaptive chooser's planning costs a step, in microseconds of Python, with no model loaded.

Usage: python bench/plan_cost.py [--draft-max N]
Prices are the H200's for the real 1.5B target (sixteenth lease, ms: cold / after two of a size / after draft-model
passes), timed at the sizes start-up sweeps (`pass_costs.sweep_sizes`), so the longer draft lengths are
interpolated as in the engine. On a fast GPU a one-token pass of that target takes ~1.8 ms, and planning is paid at
every step: there it is a share of the target alone's speed that `adaptive` must win back. Each figure is the mean
over a run of plans at the same place, as the engine pays it: where the draft model is far from paying, it is
priced once every few one-token steps (`chooser.REST_STEPS`).
"""

from __future__ import annotations

import argparse
import time
from itertools import pairwise

from localspec.engine.chooser import AdaptiveChooser, Plan, StepSite
from localspec.engine.pass_costs import PassCosts, sweep_sizes

COLD = {1: 3.5, 2: 4.5, 4: 4.4, 8: 5.2, 16: 6.1, 25: 6.6}
WARM = {1: 1.8, 2: 2.1, 4: 2.9, 8: 3.7, 16: 4.5, 25: 5.3}
AFTER_DRAFT = {1: 4.2, 2: 5.0, 4: 4.5, 8: 5.5, 16: 6.0, 25: 6.9}
DRAFT_TOKEN_MS = 1.2
# The second pass of a size in a row captures a CUDA graph, which costs more than a cold pass (x10 traces of the
# forty-seventh lease, an H100): priced so, the chooser shuns a capture as it does on a GPU unless it prices the replays after it.
CAPTURE_OVER_COLD = 1.08
DRAFT_CATCH_UP_MS = (64, 6.1)  # the draft model reading 64 tokens in one pass (an H200, forty-second lease)


def _between(table: dict[int, float], n: int) -> float:
    sizes = sorted(table)
    for low, high in pairwise(sizes):
        if low <= n <= high:
            return table[low] + (table[high] - table[low]) * (n - low) / (high - low)
    return table[sizes[-1]]


def gpu_prices(costs: PassCosts, draft_max: int, scale: float = 1.0) -> PassCosts:
    """`costs` (priced by size alone, as on a GPU) with the prices above, timed at start-up's sizes; `scale`
    multiplies the target's (a cost-scaled target's, `bench --scale-layers`), the draft token's stays."""
    for n in sweep_sizes(draft_max + 1):
        cold, warm = _between(COLD, n) * scale / 1000, _between(WARM, n) * scale / 1000
        costs.record_verify(n, cold)
        costs.record_verify(n, cold * CAPTURE_OVER_COLD, capture=True)
        costs.record_verify(n, warm, warm=True)
        costs.record_verify(n, _between(AFTER_DRAFT, n) * scale / 1000, after_draft=True)
    costs.record_draft(1, DRAFT_TOKEN_MS / 1000)
    costs.record_draft_pass(DRAFT_CATCH_UP_MS[0], DRAFT_CATCH_UP_MS[1] / 1000)
    return costs


def priced_chooser(draft_max: int) -> AdaptiveChooser:
    """A chooser with the prices above and some steps behind it (one-token passes last)."""
    costs = gpu_prices(PassCosts(price_depth=False), draft_max)
    chooser = AdaptiveChooser("adaptive", draft_max, has_draft_model=True, costs=costs)
    chooser.start_request()
    for _ in range(20):
        chooser.record("draft", 8, 2, 0.005, 9)
    chooser.record("none", 0, 0, WARM[1] / 1000, 1, warm=True)
    return chooser


def time_plan(chooser: AdaptiveChooser, site: StepSite, ngram: list[int], budget: int) -> tuple[float, Plan]:
    """Microseconds a plan (best of 7 rounds of 2,000), and the plan."""

    def propose(k: int) -> tuple[list[int], int]:
        return ngram[:k], 3

    best = float("inf")
    for _ in range(7):
        started = time.perf_counter()
        for _ in range(2000):
            plan, _ = chooser.plan_with_ngrams(budget, propose, site)
        best = min(best, (time.perf_counter() - started) / 2000)
    return best * 1e6, plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draft-max", type=int, default=24)
    args = parser.parse_args()
    chooser = priced_chooser(args.draft_max)
    for ngram, label in (([], "no n-gram proposal"), ([5] * 6, "a 6-token n-gram proposal")):
        for previous, after in ((1, "after one-token passes"), (9, "after a 9-token pass")):
            site = StepSite(previous=previous, streak=5, remaining=100, depth=300)
            us, plan = time_plan(chooser, site, ngram, args.draft_max)
            print(f"{label:28} {after:24} {us:6.1f} us  (plan: {plan.source} {plan.k})")


if __name__ == "__main__":
    main()
