"""Right after the draft model missed: is an n-gram proposal right, and does the draft model's next pick say so?

Usage: python bench/ngram_agreement.py TARGET.gguf DRAFT.gguf [--workloads humaneval,fim,code-edit]
                                       [--prompts humaneval=20,fim=10,code-edit=10] [--threads N]

Decodes each task greedily with the target alone (the reference output), reads the draft model's greedy pick at
every output position in one pass, and at each position right after one where the draft model's pick was not the
target's (where a draft-model step has just had a draft rejected), proposes n-gram drafts as the engine would
(the prompt, the output so far, earlier tasks' outputs). Per workload, for the proposals whose first token agrees
with the draft model's pick there and for those that do not: how often that first token is the target's, how
often the draft model's pick is, and the share of the drafts the target would take. Greedy tokens only: a
cost-scaled copy of the target gives the same figures (docs/BENCHMARKS.md, session 64).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from localspec.benchmark import runner, workloads
from localspec.engine import Engine, EngineSettings, GenerationRequest
from localspec.engine.drafters import NgramDrafter, NgramHistory
from localspec.engine.prefix_cache import common_prefix_length

FIELDS = ("proposals", "ngram_right", "draft_right", "taken", "drafted")


def draft_picks(engine: Engine, prompt: list[int], output: list[int]) -> list[int]:
    """The draft model's greedy pick for each token of `output`, after the prompt and the output before it."""
    draft = engine.draft
    assert draft is not None
    draft.remove_from(0, 0)
    head = prompt[:-1]
    for at in range(0, len(head), draft.n_batch):
        draft.decode(head[at : at + draft.n_batch], at, 0, "none")
    picks: list[int] = []
    inputs = [prompt[-1], *output[:-1]]
    for at in range(0, len(inputs), draft.n_batch):
        chunk = inputs[at : at + draft.n_batch]
        rows = draft.decode(chunk, len(head) + at, 0, "all")
        picks += np.argmax(draft.logits(rows), axis=1).tolist()
    return picks


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
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    names = [name.strip() for name in args.workloads.split(",") if name.strip()]
    counts = workloads.prompt_counts(args.prompts, names)
    engine = Engine(
        EngineSettings(
            target_path=args.target,
            draft_path=args.draft,
            n_ctx=4096,
            threads=args.threads,
            slots=1,
            prompt_cache_mb=0,
        )
    )
    tally: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: dict.fromkeys(FIELDS, 0.0))
    try:
        for name in names:
            history = NgramHistory()  # (earlier outputs of the workload, as the engine's history holds them)
            for task in workloads.WORKLOADS[name](counts[name], args.max_tokens):
                prompt = runner.prompt_tokens(engine, task)
                engine.reset_cache()
                output = engine.complete(
                    GenerationRequest(prompt=prompt, max_tokens=args.max_tokens, speculative="none")
                ).token_ids
                picks = draft_picks(engine, prompt, output) if output else []
                ngrams = NgramDrafter([history.table])
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
                history.add(output)
    finally:
        engine.close()
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
