"""Which draft confidence floor pays, at which cost of a draft token (`drafters.confidence_floor`).

The target alone answers the bench workloads once (greedy); the draft model then reads each prompt and answer in
one batched pass, giving its pick, top-2 margin and runner-up at every position. Accepted drafts are the
target's own tokens, so how far any floor's drafts get accepted follows from these picks alone. Draft-mode steps
are then simulated for each floor with the prices of a `localspec bench --trace-steps` JSON (target passes by
size, cold / capture / warm, and a draft token), the target's prices scaled so that a draft token costs each
given share of a target token. The simulation follows the engine's draft mode: drafting stops below the floor
(at most `--draft-max` drafts), near-ties in the target alone's margins end a step with a one-token pass, and a
step finds its drafts made ahead when the step before was accepted whole and the target took the draft model's
first or second choice where it stopped.

usage: python bench/draft_floor.py TARGET.gguf DRAFT.gguf --prices TRACE.json[.gz] [--workloads W] [--prompts SPEC]
       [--answers FILE]
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from localspec.benchmark import workloads
from localspec.benchmark.runner import prompt_tokens
from localspec.engine import Engine, EngineSettings, GenerationRequest
from localspec.engine.llama_model import LlamaModel, best_two

FLOORS = (0.80, 0.75, 0.71, 0.67, 0.62, 0.57, 0.52)  # draft confidences (p = 1 / (1 + e^-margin))
COST_RATIOS = (0.5, 0.3, 0.2, 0.15, 0.1, 0.08, 0.05)
TIE_MARGIN = 0.1


@dataclass
class Answer:
    workload: str
    target: list[int]  # the target alone's tokens
    target_margins: list[float]  # its top-2 margin at each
    picks: list[tuple[int, float, int]]  # the draft model's (pick, margin, runner-up) before each
    prompt: list[int] = field(default_factory=list)  # the prompt's tokens (answers kept before it lack them)


def answers(target: Path, draft: Path, names: list[str], prompt_spec: str, max_tokens: int) -> list[Answer]:
    engine = Engine(EngineSettings(target_path=target, draft_path=None, n_ctx=4096, slots=1, mode="none"))
    reader = LlamaModel(draft, role="draft", n_ctx_per_seq=4096, n_batch=512)
    found = []
    for task in workloads.tasks(prompt_spec, names, max_tokens):
        prompt = prompt_tokens(engine, task)
        engine.reset_cache()
        result = engine.complete(
            GenerationRequest(prompt=prompt, max_tokens=max_tokens, speculative="none", record_margins=True)
        )
        reader.remove_from(0, 0)
        reader.decode(prompt[:-1], 0, 0, "none")
        tail = [prompt[-1], *result.token_ids]
        picks = []
        for start in range(0, len(tail), reader.n_batch):
            chunk = tail[start : start + reader.n_batch]
            reader.decode(chunk, len(prompt) - 1 + start, 0, "all")
            picks.extend(best_two(row) for row in reader.logits(len(chunk)))
        found.append(Answer(task.workload, result.token_ids, result.stats.margins, picks, prompt))
    reader.close()
    engine.close()
    return found


def kept_answers(
    path: Path | None, target: Path, draft: Path, names: list[str], prompt_spec: str, max_tokens: int
) -> list[Answer]:
    """`answers`, read from `path` where it exists, else made and kept there (where given)."""
    if path is not None and path.exists():
        return [Answer(**item) for item in json.loads(path.read_text())]
    found = answers(target, draft, names, prompt_spec, max_tokens)
    if path is not None:
        path.write_text(json.dumps([asdict(answer) for answer in found]))
    return found


class Prices:
    """Milliseconds per target pass by size and kind, and per draft token, from a bench trace's steps."""

    def __init__(self, trace: dict[str, Any]) -> None:
        timed: dict[tuple[str, int], list[float]] = defaultdict(list)
        draft_token = []
        for run in trace["runs"]:
            previous, streak = 0, 0
            for step in run.get("steps", []):
                size = step["pass_tokens"]
                streak = streak + 1 if size == previous else 1
                previous = size
                kind = "cold" if streak == 1 else "capture" if streak == 2 else "warm"
                timed[kind, size].append(step["verify_ms"])
                if step["source"] == "draft" and step["drafted"] and not step["ready"]:
                    draft_token.append(step["draft_ms"] / step["drafted"])
        self.table = {key: statistics.median(values) for key, values in timed.items()}
        self.draft_token = statistics.median(draft_token)
        self.scale = 1.0

    def target(self, kind: str, size: int) -> float:
        """A pass's price, interpolated between the sizes timed; a kind never timed is priced as another, and a
        size beyond a kind's largest timed one grows as cold passes do (the first pass of each request, which
        reads the prompt's last chunk, gives cold prices of larger sizes)."""
        for table_kind in (kind, "cold", "warm", "capture"):
            known = sorted(n for k, n in self.table if k == table_kind)
            if known:
                break
        largest = known[-1]
        if size > largest and table_kind != "cold":
            return self.target(table_kind, largest) * self.target("cold", size) / self.target("cold", largest)
        below = max((n for n in known if n <= size), default=known[0])
        above = min((n for n in known if n >= size), default=largest)
        low, high = self.table[table_kind, below], self.table[table_kind, above]
        share = 0.0 if above == below else (size - below) / (above - below)
        return self.scale * (low + share * (high - low))

    def scaled_to(self, draft_share: float) -> None:
        """Scale the target's prices so that a draft token costs `draft_share` of a warm one-token pass."""
        self.scale = 1.0
        self.scale = self.draft_token / (draft_share * self.target("warm", 1))


def simulate(answer: Answer, floor: float, prices: Prices, draft_max: int) -> float:
    """Milliseconds that draft mode with this floor takes over the answer."""
    min_margin = math.log(floor / (1 - floor))
    out, picks, n = answer.target, answer.picks, len(answer.target)
    position, spent, previous, streak, ready = 0, 0.0, 0, 0, False

    def target_pass(size: int) -> float:
        nonlocal previous, streak
        streak = streak + 1 if size == previous else 1
        previous = size
        return prices.target("cold" if streak == 1 else "capture" if streak == 2 else "warm", size)

    while position < n:
        drafts = []
        for i in range(position, min(n, position + draft_max)):
            if picks[i][1] < min_margin:
                break
            drafts.append(picks[i][0])
        accepted = 0
        while accepted < len(drafts) and drafts[accepted] == out[position + accepted]:
            accepted += 1
        margins = answer.target_margins[position : position + accepted + 1]
        tie = next((r for r, margin in enumerate(margins) if drafts and margin < TIE_MARGIN), None)
        spent += 0.2 if ready else len(drafts) * prices.draft_token
        spent += target_pass(len(drafts) + 1)
        if tie is not None:
            spent += target_pass(1)
            accepted = tie
        position += accepted + 1
        stop = position - 1
        ready = (
            tie is None
            and bool(drafts)
            and accepted == len(drafts)
            and stop < n
            and out[stop] in (picks[stop][0], picks[stop][2])
        )
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", type=Path)
    parser.add_argument("draft", type=Path)
    parser.add_argument("--prices", type=Path, required=True, help="a `localspec bench --trace-steps` JSON")
    parser.add_argument("--workloads", default="humaneval,fim,code-edit")
    parser.add_argument("--prompts", default="humaneval=20,fim=10,code-edit=10")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--draft-max", type=int, default=16)
    parser.add_argument(
        "--answers", type=Path, help="keep the answers and picks here, and reuse them if it exists"
    )
    args = parser.parse_args()
    opener = gzip.open if args.prices.suffix == ".gz" else open
    with opener(args.prices, "rt") as file:
        prices = Prices(json.load(file))
    names = [name.strip() for name in args.workloads.split(",") if name.strip()]
    found = kept_answers(args.answers, args.target, args.draft, names, args.prompts, args.max_tokens)
    print(
        "speedup of draft mode over the target alone, per workload, by floor (columns) and draft cost (rows)"
    )
    print("draft/target  " + "  ".join(f"{floor:>16.2f}" for floor in FLOORS))
    for share in COST_RATIOS:
        prices.scaled_to(share)
        cells = []
        for floor in FLOORS:
            by_workload = defaultdict(lambda: [0.0, 0])
            for answer in found:
                totals = by_workload[answer.workload]
                totals[0] += simulate(answer, floor, prices, args.draft_max)
                totals[1] += len(answer.target)
            alone = prices.target("warm", 1)
            cells.append("/".join(f"{tokens * alone / spent:.2f}" for spent, tokens in by_workload.values()))
        print(f"{share:>12.2f}  " + "  ".join(f"{cell:>16s}" for cell in cells))
    print("workloads: " + "/".join(dict.fromkeys(answer.workload for answer in found)))


if __name__ == "__main__":
    main()
