"""What an editor jump would cost with warmed windows kept on the device, against copies in host memory.

The prompt cache (`localspec/engine/kv_snapshots.py`) keeps warmed editor windows as copies in host memory and
copies one back into the slot's own KV buffer at a jump. The alternative measured here: one KV buffer shared by
all sequences (llama.cpp's unified KV, `LlamaModel(shared_cells=...)`), each held window a sequence of its own
that shares its first `--shared` tokens (a file's extra-context chunks) with the others, so a jump only makes the
active sequence share the window's cells (`copy_sequence`, no copy). Its price: every pass's attention spans the
buffer's used cells, and the masks that hide the other windows' cells are built on the host.

A jump here is what a one-line suggestion does: switch to a window (`--shared` + `--own` tokens), a pass over
`--new` tokens typed since, then `--generate` one-token passes, then drop what it added. Printed: p50 / p90 ms
of the switch, of the jump's passes and of the whole jump, for host copies (a sequence with its own buffer) and
for the shared buffer holding each of `--windows` windows (the jumps go round them in a shuffled order).

    python bench/shared_kv_cost.py TARGET.gguf [--shared 400] [--own 800] [--windows 4,16,32] [--jumps 40]
"""

from __future__ import annotations

import argparse
import faulthandler
import random
import time
from collections.abc import Callable
from pathlib import Path

from localspec.benchmark.editor_report import percentile
from localspec.engine.llama_model import LlamaModel, shutdown

ACTIVE = 0  # the sequence a jump decodes in; held windows are the sequences from 1 on


def _jump(
    model: LlamaModel, switch: Callable[[], None], depth: int, new: list[int], generate: int
) -> list[float]:
    """[switch, passes, total] ms of one jump; leaves the active sequence `depth` tokens long again."""
    started = time.perf_counter()
    switch()
    model.synchronize()
    switched = time.perf_counter()
    model.decode(new, depth, ACTIVE, "last")
    for i in range(generate):
        model.decode([new[i % len(new)]], depth + len(new) + i, ACTIVE, "last")
    model.synchronize()
    done = time.perf_counter()
    model.remove_from(ACTIVE, depth)
    return [(switched - started) * 1000, (done - switched) * 1000, (done - started) * 1000]


def _row(label: str, jumps: list[list[float]]) -> str:
    """p50 / p90 of each part, as `localspec bench-editor` computes them."""
    cells = [
        f"{percentile(list(part), 50):.2f} / {percentile(list(part), 90):.2f}"
        for part in zip(*jumps, strict=True)
    ]
    return f"| {label} | {' | '.join(cells)} |"


def main() -> None:
    faulthandler.enable()  # a crash in native code (llama.cpp, CUDA) then prints where it happened
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", type=Path)
    parser.add_argument("--shared", type=int, default=400, help="tokens every window starts with")
    parser.add_argument("--own", type=int, default=800, help="tokens of each window's own")
    parser.add_argument("--windows", default="4,16,32", help="windows held in the shared buffer, in turn")
    parser.add_argument("--new", type=int, default=20, help="tokens a jump's first pass evaluates")
    parser.add_argument("--generate", type=int, default=7, help="one-token passes after it")
    parser.add_argument("--jumps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    counts = sorted(int(n) for n in args.windows.split(","))
    depth = args.shared + args.own
    rng = random.Random(0)

    # Host copies: the window is copied back into the active sequence's own buffer (as the prompt cache does now).
    own_buffer = LlamaModel(args.target, role="target", n_ctx_per_seq=depth + 256, n_threads=args.threads)
    vocab = min(20000, own_buffer.n_vocab)

    def text(n: int) -> list[int]:
        return [rng.randrange(min(100, vocab // 2), vocab) for _ in range(n)]

    shared, new = text(args.shared), text(args.new)
    print("| KV of the windows | switch p50 / p90 ms | passes | whole jump |")
    print("| --- | --- | --- | --- |")
    copies = []
    for _ in range(min(4, max(counts))):
        own_buffer.remove_from(ACTIVE, 0)
        own_buffer.decode([*shared, *text(args.own)], 0, ACTIVE, "none")
        copies.append(own_buffer.save_sequence(ACTIVE, pinned=True))
    jumps = [
        _jump(own_buffer, lambda i=i: own_buffer.restore_sequence(ACTIVE, copies[i % len(copies)]), depth, new,
              args.generate)
        for i in range(args.jumps)
    ]  # fmt: skip
    memory = "page-locked" if own_buffer.offloaded else "ordinary"
    print(_row(f"host copies ({memory} memory)", jumps))
    own_buffer.close()

    # One shared buffer: windows in sequences 1..N, sharing the first `--shared` tokens' cells.
    most = counts[-1]
    cells = args.shared + (most + 1) * args.own + args.new + args.generate + 512
    model = LlamaModel(
        args.target,
        role="target",
        n_ctx_per_seq=cells,
        n_seq=most + 1,
        shared_cells=cells,
        n_threads=args.threads,
    )
    model.decode(shared, 0, 1, "none")
    held = 0
    for count in counts:
        for seq in range(held + 1, count + 1):
            if seq > 1:
                model.copy_sequence(1, seq)
                model.remove_from(seq, args.shared)
            model.decode(text(args.own), args.shared, seq, "none")
        held = count
        order = [1 + i % count for i in range(args.jumps)]
        rng.shuffle(order)
        jumps = [
            _jump(model, lambda seq=seq: model.copy_sequence(seq, ACTIVE), depth, new, args.generate)
            for seq in order
        ]
        windows = f"{count} window{'s' if count > 1 else ''}"
        print(_row(f"shared buffer, {windows} ({args.shared + count * args.own} cells)", jumps))
    model.close()
    shutdown()


if __name__ == "__main__":
    main()
