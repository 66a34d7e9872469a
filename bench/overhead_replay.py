"""What the engine's own work between passes costs a step on a fast GPU, measured on any machine.

On a GPU where a target token takes ~2 ms, the engine's Python between passes (planning, picking, bookkeeping) is
a share of every mode's speed, and `adaptive` does more of it than the target alone. Timed on its own
(`plan_cost.py`) a plan looks cheap; between passes it costs several times as much, because every pass evicts the
caches that the interpreter and its tables were in. This replays real text through the engine with passes that
cost next to nothing and a chooser that decides as on that GPU:
- the passes run on two-layer stand-ins with the models' tokenizers (`overhead_model.py`);
- each step's picks are the target alone's answer (`draft_floor.py`'s answers: made with TARGET here, or read
  from --answers), so the n-gram drafter and the chooser see the text a real run sees; the picks' argmax over the
  logits is still computed, so its cost stays;
- the draft model picks as the real DRAFT did along that answer (its pick, top-2 margin and runner-up there, from
  the same answers), so its drafts are accepted as far as the real one's would be and it stops where that one
  was unsure; past a wrong draft the stand-in's own picks go on (rejected whatever they are), as sure as the
  real one was along the answer there, so that a draft model's chain goes on past its miss as a real one's does;
- prices are held at `plan_cost.py`'s (an H200's, for the real 1.5B; `--scale N`: its target passes N times as
  dear, as a cost-scaled target's, where the draft model pays), so `adaptive` chooses as it did there;
- the engine's settings are a GPU's (drafting ahead, indexing beside the first pass, planning during one-token
  passes), and what it does during a pass counts as the pass's time, as it overlaps the pass there.
The workloads run one after another in one engine, as `localspec bench` runs them (what the chooser learns
from one is there for the next): after one untimed run of the first prompt in each mode, each mode runs a
workload's prompts back to back, `--rounds` times in turn and in reverse order (ABBA), each time with a fresh
history of earlier outputs. Printed per workload and mode: target passes, tokens per pass, and microseconds per
pass outside the model's passes: planning, picking (with the KV's trim), the rest; then per token, against the
first mode's; then the speed a run would have with its passes at the held prices and the time between them as
measured, and its ratio to the first mode's (in brackets: the passes alone).

usage: python bench/overhead_replay.py TARGET.gguf DRAFT.gguf [--answers FILE] [--modes none,ngram,adaptive]
       [--workloads humaneval] [--prompts humaneval=20] [--max-tokens 128] [--rounds 2] [--scale 1] [--trace FILE.json]
"""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from draft_floor import Answer, kept_answers  # (this script's folder is on the path)
from overhead_model import write_overhead_model
from plan_cost import gpu_prices

from localspec.benchmark import workloads
from localspec.benchmark.runner import Run, prompt_tokens, run_localspec, summarize, write_json
from localspec.benchmark.workloads import Task
from localspec.engine import Engine, EngineSettings
from localspec.engine.drafters import DraftModelDrafter, _Tip
from localspec.engine.llama_model import best_two
from localspec.engine.pass_costs import PassCosts
from localspec.engine.speculative import Generation

DRAFT_MAX = 24  # a GPU's default draft length (config.DRAFT_MAX_GPU)


class HeldPrices(PassCosts):
    """Prices that the replay's passes (which cost nothing) do not move once `held`."""

    held = False

    def record_verify(self, *args: Any, **kwargs: Any) -> None:
        if not self.held:
            super().record_verify(*args, **kwargs)

    def record_draft(self, tokens: int, seconds: float) -> None:
        if not self.held:
            super().record_draft(tokens, seconds)

    def record_draft_pass(self, n: int, seconds: float) -> None:
        if not self.held:
            super().record_draft_pass(n, seconds)


class ForcedPicks:
    """Makes every Generation's walk take the answer's tokens (the row's argmax is still computed, then dropped):
    the target alone's text whatever the stand-in's logits say, and drafts accepted as far as they match it. The
    draft model picks as the real one did along the answer (`draft_picks`: its pick, margin and runner-up before
    each answer token, after `prompt`)."""

    def __init__(self, end_token: int) -> None:
        self.prompt: list[int] = []
        self.answer: list[int] = []
        self.draft_picks: list[tuple[int, float, int]] = []
        self.end_token = end_token
        self.on_path = self.off_path = 0  # the draft model's picks made as the real one's, and the others
        forced = self

        def read_pick(drafter: DraftModelDrafter, chain: list[int]) -> _Tip:
            at = len(chain) - len(forced.prompt)
            real = forced.draft_picks[at] if 0 <= at < len(forced.draft_picks) else None
            # (on the answer's path where the chain ends as the prompt and answer do: one path is followed)
            path = forced.prompt[-8:] + forced.answer[max(0, at - 8) : at]
            if real is not None and chain[-8:] == path[-8:]:
                forced.on_path += 1
                return drafter._tip_for(chain, *real)
            # Past a wrong draft the real model goes on as sure as it was along the answer there (a stand-in's
            # margins would stop it at once, making drafts past a miss next to free).
            forced.off_path += 1
            token, margin, runner_up = best_two(drafter.model.logits(1)[0])
            return drafter._tip_for(chain, token, margin if real is None else real[1], runner_up)

        DraftModelDrafter._read_pick = read_pick  # type: ignore[method-assign,assignment]

        def walk(
            generation: Generation, base: int, drafts: list[int], n_rows: int
        ) -> tuple[list[int], float]:
            settled: list[int] = []
            for row in range(len(drafts) + 1):
                generation._picker.pick(row, n_rows, n_rows > 1)
                at = len(generation._output) + row
                settled.append(forced.answer[at] if at < len(forced.answer) else forced.end_token)
                if row >= len(drafts) or settled[-1] != drafts[row]:
                    break
            return settled, 0.0

        Generation._walk = walk  # type: ignore[method-assign,assignment]


def priced_passes(steps: list[dict[str, Any]], prices: PassCosts) -> float:
    """What a run's target passes, and its draft tokens not made ahead, cost at `prices`: each pass priced cold,
    as a capture or warm after the passes before it, as the chooser prices it. The first step's pass finished the
    prompt (the prompt's time, not the decode's), and leaves the next pass cold."""
    previous, streak, seconds = 0, 0, 0.0
    for step in steps[1:]:
        size, drafting = step["pass_tokens"], step["source"] == "draft"
        seconds += prices.in_sequence(size, previous, streak, drafting)
        if drafting:
            seconds += max(0, step["drafted"] - step["ready"]) * prices.draft_token()
        streak = streak + 1 if size == previous else 1
        previous = size
    return seconds


def print_rows(totals: dict[str, defaultdict[str, float]]) -> None:
    """A header, then a row per mode: its passes, the time between them, and its speed at the held prices, against
    the first mode's."""
    print(
        "mode       passes  tokens/pass   us a pass: planning  picking  rest    us a token   more than the first"
        "   at the prices: tok/s  ratio (passes alone)"
    )
    first: tuple[float, float, float] | None = None
    for mode, total in totals.items():
        passes, tokens = total["passes"], total["tokens"]
        outside = total["decode"] - total["verify"] - total["draft"]
        rest = outside - total["plan"] - total["sample"]
        per_token = outside / tokens * 1e6
        rate, bare = tokens / (total["priced"] + outside), tokens / total["priced"]
        first = (per_token, rate, bare) if first is None else first
        print(
            f"{mode:9} {passes:7.0f} {tokens / passes:12.2f} {total['plan'] / passes * 1e6:20.1f}"
            f" {total['sample'] / passes * 1e6:8.1f} {rest / passes * 1e6:6.1f} {per_token:13.1f}"
            f" {per_token - first[0]:21.1f} {rate:22.1f} {rate / first[1]:6.3f} ({bare / first[2]:.3f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", type=Path)
    parser.add_argument("draft", type=Path)
    parser.add_argument(
        "--answers", type=Path, help="keep the target's answers here, and reuse them if it exists"
    )
    parser.add_argument("--modes", default="none,ngram,adaptive")
    parser.add_argument("--workloads", default="humaneval")
    parser.add_argument("--prompts", default="humaneval=20")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--scale", type=float, default=1.0, help="the target's passes this many times as dear"
    )
    parser.add_argument(
        "--trace",
        type=Path,
        help="write every run with its steps here, for bench/step_traces.py (its ms aside)",
    )
    args = parser.parse_args()
    names = [name.strip() for name in args.workloads.split(",") if name.strip()]
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    found = kept_answers(args.answers, args.target, args.draft, names, args.prompts, args.max_tokens)
    tasks = workloads.tasks(args.prompts, names, args.max_tokens)
    if len(tasks) != len(found):
        raise SystemExit(
            f"{args.answers} holds {len(found)} answers for {len(tasks)} prompts: make them anew."
        )

    with tempfile.TemporaryDirectory() as folder:
        target = write_overhead_model(args.target, Path(folder) / "target.gguf")
        draft = write_overhead_model(args.draft, Path(folder) / "draft.gguf")
        settings = EngineSettings(
            target,
            draft,
            slots=1,
            threads=1,
            draft_max=DRAFT_MAX,
            tie_margin=0.1,
            draft_ahead=True,
            index_beside=True,
            plan_ahead=True,
        )
        engine = Engine(settings, calibrate=False)
    prices = HeldPrices(price_depth=False)
    gpu_prices(prices, DRAFT_MAX, args.scale)
    prices.held = True
    engine.costs = prices
    engine.calibrated = True
    forced = ForcedPicks(engine.target.special_tokens()["eos"])
    prompts = [prompt_tokens(engine, task) for task in tasks]
    if any(answer.prompt and answer.prompt != prompt for answer, prompt in zip(found, prompts, strict=True)):
        raise SystemExit(f"{args.answers} holds answers to other prompts: make them anew.")
    by_workload: dict[str, list[tuple[Task, list[int], Answer]]] = defaultdict(list)
    for task, prompt, answer in zip(tasks, prompts, found, strict=True):
        by_workload[task.workload].append((task, prompt, answer))
    totals: dict[str, dict[str, defaultdict[str, float]]] = {}
    traced: list[Run] = []

    def run(task: Task, prompt: list[int], answer: Answer, mode: str) -> Run:
        forced.prompt, forced.answer, forced.draft_picks = prompt, answer.target, answer.picks
        return run_localspec(engine, task, prompt, mode, record_steps=True)

    for mode in modes:  # (untimed: the interpreter's and llama.cpp's first passes, as the bench's warm-up)
        run(tasks[0], prompts[0], found[0], mode)
    schedule = [mode for turn in range(args.rounds) for mode in (modes if turn % 2 == 0 else modes[::-1])]
    for name, replayed in by_workload.items():  # one workload after another, as `localspec bench` runs them
        totals[name] = {mode: defaultdict(float) for mode in modes}
        for mode in schedule:
            engine.history.clear()
            for task, prompt, answer in replayed:
                done = run(task, prompt, answer, mode)
                traced.append(done)
                total = totals[name][mode]
                total["passes"] += done.target_passes
                total["tokens"] += done.tokens
                total["decode"] += done.decode_seconds
                total["priced"] += priced_passes(done.steps, prices)
                for part, seconds in done.time_split.items():
                    total[part] += seconds
    engine.close()
    if args.trace is not None:
        meta = {"replay": "bench/overhead_replay.py", "scale": args.scale, "rounds": args.rounds}
        write_json(args.trace, meta, summarize(traced), traced)
    for name, by_mode in totals.items():
        if len(totals) > 1:
            print(f"== {name}")
        print_rows(by_mode)
    print(
        f"the draft model's picks: {forced.on_path} the real one's along the answer, {forced.off_path} past it"
    )


if __name__ == "__main__":
    main()
