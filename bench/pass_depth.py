"""Milliseconds for one pass of n tokens d tokens deep into a sequence, on this machine (a CPU's attention changes
kernels at 64 tokens: `llama_model.ATTENTION_TILE`).

Usage: python bench/pass_depth.py MODEL.gguf [--sizes 24,32,40,48,56,63,64] [--depths 256,512,1000,2000]
Each figure is the best of two passes reading the last row's logits, timed through `LlamaModel.decode` (which pads
a short deep pass on a CPU where that pays: the figures are what the engine pays).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from localspec.engine.llama_model import LlamaModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--sizes", default="24,32,40,48,56,63,64")
    parser.add_argument("--depths", default="256,512,1000,2000")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--gpu-layers", type=int, default=0)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    depths = [int(depth) for depth in args.depths.split(",")]
    model = LlamaModel(
        args.model,
        role="target",
        n_ctx_per_seq=max(depths) + max(sizes) + 64,
        n_threads=args.threads,
        gpu_layers=args.gpu_layers,
    )
    tokens = [(i * 37 + 11) % model.n_vocab for i in range(max(depths) + max(sizes))]  # (any tokens)
    print("depth " + " ".join(f"{size:>6}" for size in sizes))
    for depth in depths:
        model.remove_from(0, 0)
        if depth:
            model.decode(tokens[:depth], 0, 0, "none")
        row = []
        for size in sizes:
            best = float("inf")
            for _ in range(2):
                started = time.perf_counter()
                model.decode(tokens[depth : depth + size], depth, 0, "last")
                model.synchronize()
                best = min(best, time.perf_counter() - started)
                model.remove_from(0, depth)
            row.append(f"{best * 1000:6.1f}")
        print(f"{depth:>5} " + " ".join(row), flush=True)
    model.close()


if __name__ == "__main__":
    main()
