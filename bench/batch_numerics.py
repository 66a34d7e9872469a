"""How far a batched pass's logits are from the one-token passes of the target alone: what `tie_margin` must cover.

For each prompt the target alone decodes greedily one token a pass; then, after the same pass over the prompt, the
same tokens are fed again in passes of n tokens, each starting at the last token taken (as a speculative step whose
drafts were all accepted: each pass writes the KV the next one reads). Per pass size it prints how many rows came
out bitwise identical, the largest change of the top-2 margin, the share of rows a given `tie_margin` would
re-evaluate alone, and every row whose greedy choice changed, with the target alone's margin there. Code edits
reach deeper than HumanEval (on a CPU a one-token pass attending 512 cells or more sums its attention in another
order unless `build_flags.CPU_FA_SPLIT_KV` keeps it off).

    python bench/batch_numerics.py TARGET.gguf [--workload humaneval|code-edit] [--prompts 10] [--tokens 128]
        [--sizes 2,4,8,9,16]
"""

from __future__ import annotations

import argparse
from pathlib import Path

# llama_cpp before numpy: on the GPU machine's CUDA build, loading a model in a process that had imported numpy
# first crashed (SIGSEGV in llama_model_load_from_file).
import llama_cpp  # noqa: F401
import numpy as np

from localspec.benchmark.workloads import code_edit, humaneval
from localspec.engine.engine import Engine, EngineSettings
from localspec.engine.llama_model import LlamaModel, top_two

TIE_MARGINS = (0.02, 0.05, 0.1, 0.2, 0.35)


def target_alone(model: LlamaModel, prompt: list[int], tokens: int) -> tuple[list[int], np.ndarray]:
    """The greedy tokens of one-token passes after `prompt`, and each pass's logits row."""
    model.remove_from(0, 0)
    model.decode(prompt, 0, 0, "last")
    rows, output = [], []
    for position in range(len(prompt), len(prompt) + tokens):
        row = model.logits(1)[0].copy()
        rows.append(row)
        output.append(int(np.argmax(row)))
        model.decode([output[-1]], position, 0, "last")
    return output, np.stack(rows)


def batched(model: LlamaModel, prompt: list[int], output: list[int], size: int) -> np.ndarray:
    """The logits rows for the same positions when `output` is fed in passes of `size` tokens after the prompt's
    pass (whose row, the first, is the target alone's)."""
    model.remove_from(0, 0)
    model.decode(prompt, 0, 0, "last")
    rows = [model.logits(1).copy()]
    inputs = output[:-1]
    for start in range(0, len(inputs), size):
        chunk = inputs[start : start + size]
        n = model.decode(chunk, len(prompt) + start, 0, "all")
        rows.append(model.logits(n).copy())
    return np.concatenate(rows)


def margin(row: np.ndarray) -> float:
    return top_two(row)[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target", type=Path)
    parser.add_argument("--workload", choices=("humaneval", "code-edit"), default="humaneval")
    parser.add_argument("--prompts", type=int, default=10, help="prompts (default 10)")
    parser.add_argument("--tokens", type=int, default=128, help="tokens decoded per prompt (default 128)")
    parser.add_argument("--sizes", default="2,4,8,9,16", help="pass sizes to compare (default 2,4,8,9,16)")
    parser.add_argument("--gpu-layers", type=int, default=-1)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    engine = Engine(
        EngineSettings(
            target_path=args.target,
            slots=1,
            n_ctx=2048,
            threads=args.threads,
            target_gpu_layers=args.gpu_layers,
            mode="none",
        )
    )
    model = engine.target
    alone_margins: list[float] = []  # every position's, for the share of near-ties the target alone meets
    found: dict[int, dict[str, list[float]]] = {n: {"delta": [], "flips": [], "margins": []} for n in sizes}
    identical = dict.fromkeys(sizes, 0)
    total = 0
    workload = humaneval if args.workload == "humaneval" else code_edit
    for task in workload(args.prompts, args.tokens):
        chat = task.kind == "chat"
        text = engine.chat_prompt(task.messages) if chat else task.prompt
        prompt = model.tokenize(text, add_bos=model.adds_bos(), parse_special=chat)
        output, alone = target_alone(model, prompt, args.tokens)
        reference = [margin(row) for row in alone]
        alone_margins += reference
        total += len(output)
        for n in sizes:
            rows = batched(model, prompt, output, n)
            identical[n] += int(np.sum(np.all(rows == alone, axis=1)))
            for position, row in enumerate(rows):
                batched_margin = margin(row)
                found[n]["margins"].append(batched_margin)
                found[n]["delta"].append(abs(batched_margin - reference[position]))
                if int(np.argmax(row)) != output[position]:
                    found[n]["flips"].append(reference[position])
    print(f"{args.target.name}: {args.prompts} {args.workload} prompts, {total} positions")
    print(
        "pass size | identical rows | |margin change| p50 / p99 / max | rows below tie_margin "
        + " / ".join(str(t) for t in TIE_MARGINS)
        + " | greedy choice changed (target alone's margin there)"
    )
    alone_below = " / ".join(f"{np.mean(np.array(alone_margins) < t):.3f}" for t in TIE_MARGINS)
    print(f"1 (the target alone) | {total} / {total} | 0 / 0 / 0 | {alone_below} | 0")
    for n in sizes:
        delta = np.array(found[n]["delta"])
        margins = np.array(found[n]["margins"])
        below = " / ".join(f"{np.mean(margins < t):.3f}" for t in TIE_MARGINS)
        flips = ", ".join(f"{m:.3f}" for m in sorted(found[n]["flips"])) or "none"
        print(
            f"{n} | {identical[n]} / {total} | {np.median(delta):.4f} / {np.quantile(delta, 0.99):.4f} / "
            f"{delta.max():.4f} | {below} | {len(found[n]['flips'])}: {flips}"
        )
    engine.close()


if __name__ == "__main__":
    main()
