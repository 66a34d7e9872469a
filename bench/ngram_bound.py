"""How fast could n-gram drafting be on a workload? Replay the target-alone outputs with an oracle.

Usage: python bench/ngram_bound.py TARGET.gguf [--workloads humaneval,fim,code-edit] [--prompts 20]

Decodes each task greedily with the target alone (the reference output), then replays the output step by step
with the engine's n-gram drafter (prompt, generated text and, with history, earlier tasks' outputs) under three
policies, costing each step with the engine's own start-up timing of a target pass of that size:
  all       draft every n-gram token proposed (what `ngram` mode does)
  adaptive  the engine's chooser
  oracle    draft exactly the proposed tokens that the target will accept (an upper bound for this drafter)
and prints the speedup over the target alone that each would reach if drafting and Python cost nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from localspec.benchmark import runner, workloads
from localspec.engine import Engine, EngineSettings, GenerationRequest
from localspec.engine.chooser import AdaptiveChooser
from localspec.engine.drafters import NgramDrafter, NgramHistory
from localspec.engine.pass_costs import PassCosts
from localspec.engine.prefix_cache import common_prefix_length

POLICIES = ("all", "adaptive", "oracle")


def replay(
    references: list[tuple[list[int], list[int]]],
    costs: PassCosts,
    policy: str,
    history: bool,
    draft_max: int,
) -> float:
    """Speedup over the target alone of replaying every (prompt, output) pair under `policy`."""
    alone = spent = 0.0
    chooser = AdaptiveChooser("adaptive", draft_max, has_draft_model=False, costs=costs)
    earlier = NgramHistory()
    for prompt, output in references:
        alone += len(output) * costs.verify(1)
        drafter = NgramDrafter(shared=[earlier.table] if history else [])
        chooser.start_request()
        position = 0
        while position < len(output):
            budget = min(len(output) - position - 1, draft_max)
            proposal = drafter.propose(prompt + output[:position], max(budget, 0))
            if policy == "oracle":
                k = common_prefix_length(proposal, output[position:])
            elif policy == "all":
                k = len(proposal)
            else:
                plan = chooser.plan(budget, len(proposal), drafter.match_length)
                k = plan.k if plan.source == "ngram" else 0
            accepted = common_prefix_length(proposal[:k], output[position:])
            seconds = costs.verify(k + 1)
            spent += seconds
            chooser.record("ngram" if k else "none", k, accepted, seconds, k + 1, drafter.match_length)
            position += accepted + 1
        earlier.add(output)
    return alone / spent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("target", type=Path)
    parser.add_argument("--workloads", default="humaneval,fim,code-edit")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--gpu-layers", type=int, default=-1)
    args = parser.parse_args()
    engine = Engine(EngineSettings(target_path=args.target, slots=1, target_gpu_layers=args.gpu_layers))
    print("| workload | policy | speedup (prompt n-grams) | speedup (+ earlier outputs) |")
    print("| --- | --- | ---: | ---: |")
    for name in args.workloads.split(","):
        references = []
        for task in workloads.WORKLOADS[name](args.prompts, args.max_tokens):
            prompt = runner.prompt_tokens(engine, task)
            engine.reset_cache()
            result = engine.complete(
                GenerationRequest(prompt=prompt, max_tokens=task.max_tokens, speculative="none", slot="b")
            )
            references.append((prompt, result.token_ids))
        for policy in POLICIES:
            alone, with_history = (
                replay(references, engine.costs, policy, history, engine.settings.draft_max)
                for history in (False, True)
            )
            print(f"| {name} | {policy} | {alone:.2f}x | {with_history:.2f}x |")
    engine.close()


if __name__ == "__main__":
    main()
