"""What a target pass costs depending on the pass before it, and whether the draft model can run during it.

On a GPU, llama.cpp's CUDA backend replays a captured graph only while consecutive passes have the same shape, and
`llama_decode` returns before the GPU has finished. This prints, with the engine's own models:

- how long `decode` takes to return versus until its logits are ready,
- a pass after passes of the same size ("warm") and after a pass of another size ("cold"),
- j draft-model tokens alone, a target pass alone, and both queued together (draft while the target verifies).

    python bench/pass_shapes.py TARGET.gguf DRAFT.gguf
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from localspec.engine.engine import Engine, EngineSettings
from localspec.engine.llama_model import LlamaModel, top_two

REPEATS = 20
BASE = 200  # tokens already in the KV when a pass is timed


def best_ms(action: Callable[[], None], reset: Callable[[], None]) -> float:
    """Fastest of REPEATS runs of `action`, in milliseconds (`reset` restores the KV after each)."""
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
        reset()
    return min(times) * 1000


def target_pass(target: LlamaModel, n: int, wait: bool = True) -> None:
    target.decode(list(range(500, 500 + n)), BASE, 0, "all")
    if wait:
        target.synchronize()


def draft_tokens(draft: LlamaModel, j: int) -> None:
    """j greedy draft tokens, as the engine's drafter makes them."""
    token = 0
    for position in range(BASE, BASE + j):
        draft.decode([token], position, 0, "last")
        token, _ = top_two(draft.logits(1)[0])


def queued_together(target: LlamaModel, draft: LlamaModel, j: int) -> None:
    """A target pass over j tokens queued, j draft tokens made meanwhile, then the target's logits awaited."""
    target_pass(target, j, wait=False)
    draft_tokens(draft, j)
    target.synchronize()


def cold_ms(target: LlamaModel, n: int, other: int) -> float:
    """Fastest pass over n tokens right after a pass over `other` tokens."""
    times = []
    for _ in range(REPEATS):
        target_pass(target, other)
        target.remove_from(0, BASE)
        started = time.perf_counter()
        target_pass(target, n)
        times.append(time.perf_counter() - started)
        target.remove_from(0, BASE)
    return min(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", type=Path)
    parser.add_argument("draft", type=Path)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    engine = Engine(
        EngineSettings(
            target_path=args.target, draft_path=args.draft, slots=1, n_ctx=1024, threads=args.threads
        )
    )
    target, draft = engine.target, engine.draft
    assert draft is not None
    print(f"offloaded: target={target.offloaded} draft={draft.offloaded}")
    target.decode(list(range(100, 100 + BASE)), 0, 0, "none")
    draft.decode(list(range(100, 100 + BASE)), 0, 0, "none")

    def reset() -> None:
        target.synchronize()
        target.remove_from(0, BASE)
        draft.remove_from(0, BASE)

    for n in (1, 2, 4, 8):
        returns = best_ms(lambda n=n: target_pass(target, n, wait=False), reset)  # type: ignore[misc]
        ready = best_ms(lambda n=n: target_pass(target, n), reset)  # type: ignore[misc]
        print(f"target pass n={n}: decode returns after {returns:.2f} ms, logits ready after {ready:.2f} ms")
    for n, other in ((1, 3), (4, 1), (9, 5), (16, 12)):
        warm = best_ms(lambda n=n: target_pass(target, n), reset)  # type: ignore[misc]
        print(
            f"target pass n={n}: {warm:.2f} ms after n={n} (warm), {cold_ms(target, n, other):.2f} ms after n={other}"
        )
    for j in (1, 2, 3):
        alone = best_ms(lambda j=j: draft_tokens(draft, j), reset)  # type: ignore[misc]
        verify = best_ms(lambda j=j: target_pass(target, j), reset)  # type: ignore[misc]
        both = best_ms(lambda j=j: queued_together(target, draft, j), reset)  # type: ignore[misc]
        print(
            f"draft j={j}: {alone:.2f} ms; target pass n={j}: {verify:.2f} ms; queued together {both:.2f} ms "
            f"(one after the other {alone + verify:.2f})"
        )
    engine.close()


if __name__ == "__main__":
    main()
