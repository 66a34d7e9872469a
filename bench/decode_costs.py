"""Where the time of a speculative step goes: cost of one llama.cpp pass over n tokens, per model.

Usage: python bench/decode_costs.py TARGET.gguf DRAFT.gguf [--gpu-layers N] [--threads N]
Prints milliseconds per pass for n = 1, 2, 4, 8, 12, 16 (synchronized, KV at ~200 tokens), plus the cost of
reading a logits row and finding its top two (what the engine does per verified position).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from localspec.engine.llama_model import LlamaModel, top_two


def pass_ms(model: LlamaModel, n: int, base: int, repeats: int = 20) -> float:
    tokens = [(i * 37 + 11) % 1000 + 100 for i in range(n)]
    model.remove_from(0, base)
    model.decode(tokens, base, 0, "all")
    model.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        model.remove_from(0, base)
        model.decode(tokens, base, 0, "all")
        model.synchronize()
    return (time.perf_counter() - started) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("target", type=Path)
    parser.add_argument("draft", type=Path)
    parser.add_argument("--gpu-layers", type=int, default=-1)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    for role, path in (("target", args.target), ("draft", args.draft)):
        model = LlamaModel(
            path, role=role, n_ctx_per_seq=1024, n_threads=args.threads, gpu_layers=args.gpu_layers
        )
        prompt = [(i * 13 + 7) % 1000 + 100 for i in range(200)]
        model.decode(prompt, 0, 0, "none")
        costs = {n: pass_ms(model, n, len(prompt)) for n in (1, 2, 4, 8, 12, 16)}
        print(f"{role}: " + "  ".join(f"n={n}: {ms:.2f} ms" for n, ms in costs.items()))
        row = model.logits(1)[0]
        started = time.perf_counter()
        for _ in range(200):
            top_two(row)
        print(f"{role}: top_two per row {(time.perf_counter() - started) / 200 * 1e6:.0f} us")
        model.close()


if __name__ == "__main__":
    main()
