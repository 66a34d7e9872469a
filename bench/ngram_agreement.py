"""Right after the draft model missed: is an n-gram proposal right, and does the draft model's next pick say so?

Usage: python bench/ngram_agreement.py TARGET.gguf DRAFT.gguf [--workloads humaneval,fim,code-edit]
                                       [--prompts humaneval=20,fim=10,code-edit=10]

Takes the target alone's greedy answers and the draft model's greedy pick at every position of them
(`draft_floor.answers`), and at each position right after one where the draft model's pick was not the target's
(where a draft-model step has just had a draft rejected), proposes n-gram drafts as the engine would (the prompt,
the answer so far, the workload's earlier answers). Per workload, for the proposals whose first token agrees with
the draft model's pick there and for those that do not: how often that first token is the target's, how often the
draft model's pick is, and the share of the drafts the target would take. Greedy tokens only: a cost-scaled copy
of the target gives the same figures (docs/BENCHMARKS.md, session 64).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from draft_floor import answers  # (this script's folder is on the path)

from localspec.engine.drafters import NgramDrafter, NgramHistory
from localspec.engine.prefix_cache import common_prefix_length

FIELDS = ("proposals", "ngram_right", "draft_right", "taken", "drafted")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target", type=Path)
    parser.add_argument("draft", type=Path)
    parser.add_argument("--workloads", default="humaneval,fim,code-edit")
    parser.add_argument("--prompts", default="humaneval=20,fim=10,code-edit=10")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--draft-max", type=int, default=24, help="longest n-gram proposal (the engine's on a GPU)"
    )
    args = parser.parse_args()
    names = [name.strip() for name in args.workloads.split(",") if name.strip()]
    tally: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: dict.fromkeys(FIELDS, 0.0))
    histories: dict[str, NgramHistory] = defaultdict(NgramHistory)  # (a workload's earlier answers)
    for answer in answers(args.target, args.draft, names, args.prompts, args.max_tokens):
        name, prompt, output = answer.workload, answer.prompt, answer.target
        picks = [pick for pick, _, _ in answer.picks]  # picks[i]: the draft model's pick for output[i]
        ngrams = NgramDrafter([histories[name].table])
        for at in range(1, len(output)):
            if picks[at - 1] == output[at - 1]:
                continue  # (not right after a miss)
            proposal = ngrams.propose([*prompt, *output[:at]], args.draft_max)
            if not proposal:
                continue
            row = tally[(name, "agrees" if proposal[0] == picks[at] else "differs")]
            row["proposals"] += 1
            row["ngram_right"] += proposal[0] == output[at]
            row["draft_right"] += picks[at] == output[at]
            row["taken"] += common_prefix_length(proposal, output[at:])
            row["drafted"] += len(proposal)
        histories[name].add(output)
    print(
        "| workload | n-gram's first draft, against the draft model's pick | proposals | n-gram's first right |"
        " draft model's pick right | n-gram drafts taken |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for (name, kind), row in sorted(tally.items()):
        n = row["proposals"]
        print(
            f"| {name} | {kind} | {n:.0f} | {row['ngram_right'] / n:.0%} | {row['draft_right'] / n:.0%} "
            f"| {row['taken']:.0f} of {row['drafted']:.0f} |"
        )


if __name__ == "__main__":
    main()
