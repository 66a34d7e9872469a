"""What a second chain of drafts would cost the draft model: passes over two sequences against passes over one.

When drafting stops where the draft model is unsure, the chain drafted ahead goes on from its first choice there,
and the target takes another token about half the time (docs/BENCHMARKS.md, twelfth lease). A second chain from
the draft model's second choice would have to run in a second KV sequence, in the same passes as the first (one row
each) or in passes of its own. On a GPU llama.cpp replays a CUDA graph only while passes keep one shape and the
same KV buffers, so this times, with the draft model alone (ms per pass, median):

- one-row passes in one sequence (what drafting does now), and one-row passes alternating two sequences;
- two-row passes, one row in each of two sequences (both chains in one pass);
- passes switching between the two shapes every few passes, as a drafter with a second chain would;
- runs of 8 one-row passes in one sequence, then 8 in the other (a chain, then a second chain, as the engine drafts
  ahead where both models run on a GPU);
- a copy of one sequence's KV into the other (`llama_memory_seq_cp`, done by llama.cpp at the next pass).

With `--shared`, both sequences share one KV buffer (llama.cpp's unified KV, as the engine's draft model has where
it drafts ahead): a copy is then free, but every pass attends over the cells of both.

    python bench/draft_branches.py DRAFT.gguf [--context 4096] [--threads 0] [--shared]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import llama_cpp

BASE = 300  # tokens in each sequence before the timed passes
PASSES = 60  # timed passes per pattern


class TwoSequences:
    """The draft model with two KV sequences: one buffer each, as the engine's slots have, or one `shared`."""

    def __init__(self, path: Path, context: int, threads: int, shared: bool) -> None:
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = 999
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise SystemExit(f"llama.cpp could not load {path}")
        ctx_params = llama_cpp.llama_context_default_params()
        ctx_params.n_ctx = 2 * context
        ctx_params.n_seq_max = 2
        ctx_params.kv_unified = shared
        ctx_params.n_batch = ctx_params.n_ubatch = 512
        if threads:
            ctx_params.n_threads = ctx_params.n_threads_batch = threads
        self.ctx = llama_cpp.llama_init_from_model(self.model, ctx_params)
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(512, 0, 1)
        self.position = [0, 0]
        for seq in (0, 1):
            self.decode([(100 + i, seq) for i in range(BASE)])

    def decode(self, rows: list[tuple[int, int]]) -> None:
        """One pass over (token, sequence) rows, each at its sequence's next position; logits for every row."""
        for i, (token, seq) in enumerate(rows):
            self.batch.token[i] = token
            self.batch.pos[i] = self.position[seq]
            self.batch.n_seq_id[i] = 1
            self.batch.seq_id[i][0] = seq
            self.batch.logits[i] = True
            self.position[seq] += 1
        self.batch.n_tokens = len(rows)
        if llama_cpp.llama_decode(self.ctx, self.batch) != 0:
            raise SystemExit("llama_decode failed")
        llama_cpp.llama_synchronize(self.ctx)  # (the drafter waits so for the logits it reads)

    def rewind(self) -> None:
        for seq in (0, 1):
            llama_cpp.llama_memory_seq_rm(self.memory, seq, BASE, -1)
            self.position[seq] = BASE

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)


def timed(model: TwoSequences, passes: list[list[tuple[int, int]]]) -> list[float]:
    """Each pass's milliseconds, the KV rewound to BASE every 40 passes (the position stays in one range)."""
    times = []
    for index, rows in enumerate(passes):
        if index % 40 == 0:
            model.rewind()
        started = time.perf_counter()
        model.decode(rows)
        times.append((time.perf_counter() - started) * 1000)
    return times


def report(name: str, times: list[float], kinds: list[str] | None = None) -> None:
    if kinds is None:
        print(f"{name}: median {statistics.median(times):.3f} ms, mean {statistics.mean(times):.3f}")
        return
    parts = []
    for kind in dict.fromkeys(kinds):
        mine = [t for t, k in zip(times, kinds, strict=True) if k == kind]
        parts.append(f"{kind} median {statistics.median(mine):.3f} / mean {statistics.mean(mine):.3f}")
    print(f"{name}: mean over all {statistics.mean(times):.3f} ms ({'; '.join(parts)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("draft", type=Path)
    parser.add_argument("--context", type=int, default=4096, help="tokens per sequence (default 4096)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--shared", action="store_true", help="one KV buffer for both sequences")
    args = parser.parse_args()
    model = TwoSequences(args.draft, args.context, args.threads, args.shared)
    print(f"KV: {'one buffer shared by both sequences' if args.shared else 'a buffer per sequence'}")
    one: Callable[[int], list[tuple[int, int]]] = lambda i: [(500 + i % 50, 0)]  # noqa: E731
    both: Callable[[int], list[tuple[int, int]]] = lambda i: [(500 + i % 50, 0), (600 + i % 50, 1)]  # noqa: E731
    timed(model, [one(i) for i in range(PASSES)])  # (warm-up: the first passes of a context are slow)
    report("one row, one sequence", timed(model, [one(i) for i in range(PASSES)]))
    report(
        "one row, alternating two sequences",
        timed(model, [[(500 + i % 50, i % 2)] for i in range(PASSES)]),
    )
    report(
        "one row, runs of 8 in each sequence in turn",
        timed(model, [[(500 + i % 50, (i // 8) % 2)] for i in range(PASSES)]),
    )
    report("two rows, one in each sequence", timed(model, [both(i) for i in range(PASSES)]))
    for run in (1, 3, 6):
        kinds = [("two rows" if (i // run) % 2 else "one row") for i in range(PASSES * 2)]
        passes = [both(i) if kind == "two rows" else one(i) for i, kind in enumerate(kinds)]
        report(f"switching shape every {run} passes", timed(model, passes), kinds)
    copies = []
    for _ in range(20):
        model.rewind()
        llama_cpp.llama_memory_seq_rm(model.memory, 1, -1, -1)
        started = time.perf_counter()
        llama_cpp.llama_memory_seq_cp(model.memory, 0, 1, -1, -1)
        model.position[1] = model.position[0]
        model.decode(one(0))  # (a copy between streams happens at the next pass)
        copies.append((time.perf_counter() - started) * 1000)
    report(f"copy of a {args.context}-token sequence, then a one-row pass", copies)
    model.close()


if __name__ == "__main__":
    main()
