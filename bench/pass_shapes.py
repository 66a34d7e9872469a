"""What a target pass costs depending on the pass before it, and whether the draft model can run during it.

On a GPU, llama.cpp's CUDA backend replays a captured graph only while consecutive passes have the same shape, and
`llama_decode` returns before the GPU has finished. This prints, with the engine's own models:

- how long `decode` takes to return versus until its logits are ready,
- a pass after passes of the same size ("warm") and after a pass of another size ("cold"),
- j draft-model tokens alone, a target pass alone, and both queued together (draft while the target verifies),
- with --after-draft: a target pass right after passes of its size, after draft-model passes, and after the GPU
  idled as long, with the CUDA graph events llama.cpp logged meanwhile (why a verify pass after drafting is slow).
- with --after-prompt: the two one-token passes after a pass over a prompt's new tokens, when that pass returns
  the last row's logits (as an editor request's first step does, folding the prompt's last chunk in) and when it
  returns none (a chunk of its own), against one-token passes after their like. llama.cpp builds passes with and
  without outputs in two graphs of their own, and its CUDA backend keys captured graphs by the graph's first
  node: whether the one-token passes' captured graph outlives a pass without outputs is what this shows.
- with --alternate: passes of n tokens (4, 9, 25) between one-token passes, as speculative steps alternate with
  one-token steps: each kind's median ms and the CUDA graph events. Run it under each `GGML_CUDA_GRAPH_KEY` of a
  build with localspec's graph-key patch (docs/BENCHMARKS.md): upstream llama.cpp keys a context's captured graph by
  its first node alone ("node"), so each change of size re-warms the one graph; "shape" (the engine's default)
  keeps one graph per pass size.
- with --ahead: target passes of 8 to 25 tokens, cold and warm, alone and with the draft model drafting on another
  thread until the pass is done (as the engine drafts the next step while the target verifies), from the pass's
  launch or only once `decode` returned: the pass's ms and how many draft tokens were made meanwhile, against a
  draft token's ms alone. Both models' kernels share the GPU, and a cold pass launches its kernels one by one from
  the CPU, so drafting beside it may go slower than alone.

    python bench/pass_shapes.py TARGET.gguf DRAFT.gguf [--after-draft | --after-prompt | --alternate | --ahead]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import llama_cpp

from localspec.build_flags import cuda_graph_key
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


def greedy_drafts(draft: LlamaModel, end: int, stop: threading.Event | None = None) -> Iterator[int]:
    """Greedy draft tokens after the BASE ones, as the engine's drafter makes them, up to position `end` or until
    `stop` is set (asked before each): yields each one's position once it is made."""
    token = 0
    for position in range(BASE, end):
        if stop is not None and stop.is_set():
            return
        draft.decode([token], position, 0, "last")
        token, _ = top_two(draft.logits(1)[0])
        yield position


def draft_tokens(draft: LlamaModel, j: int) -> None:
    """j greedy draft tokens."""
    for _ in greedy_drafts(draft, BASE + j):
        pass


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


GRAPH_EVENTS = ("warmup complete", "warmup reset", "reused", "disabling")
GGML_LOG_LEVEL_ERROR = 4
_events: list[str] = []


@llama_cpp.llama_log_callback
def _record_graph_events(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    if level == GGML_LOG_LEVEL_ERROR:  # errors still reach stderr, as with the engine's own log filter
        os.write(2, text)
    line = text.decode(errors="replace")
    _events.extend(name for name in GRAPH_EVENTS if name in line)


def forget_passes(target: LlamaModel, draft: LlamaModel) -> None:
    """Wait for the target, then drop both models' KV after the BASE tokens every pass is timed after."""
    target.synchronize()
    target.remove_from(0, BASE)
    draft.remove_from(0, BASE)


def after_draft(target: LlamaModel, draft: LlamaModel, n: int, drafts: int = 8, trials: int = 10) -> None:
    """A target pass of n tokens timed after three passes of its size, then after one such pass followed by
    `drafts` draft-model tokens, then after one followed by as long an idle GPU; median ms and CUDA graph events."""

    def reset() -> None:
        forget_passes(target, draft)

    def timed() -> float:
        started = time.perf_counter()
        target_pass(target, n)
        return (time.perf_counter() - started) * 1000

    draft_ms = best_ms(lambda: draft_tokens(draft, drafts), reset) / 1000

    def one_pass() -> None:
        target_pass(target, n)
        reset()

    scenarios = {
        "same size": lambda: [one_pass() for _ in range(3)],
        f"{drafts} draft tokens": lambda: (one_pass(), draft_tokens(draft, drafts)),
        "idle as long": lambda: (one_pass(), time.sleep(draft_ms)),
    }
    for name, before in scenarios.items():
        times, events = [], []
        for _ in range(trials):
            before()
            reset()
            _events.clear()
            times.append(timed())
            events.extend(_events)
            reset()
        counted = {event: events.count(event) for event in GRAPH_EVENTS if event in events}
        print(
            f"target pass n={n} after {name}: median {statistics.median(times):.2f} ms, best {min(times):.2f}; {counted}"
        )


def after_prompt(target: LlamaModel, new: int = 20, trials: int = 10) -> None:
    """The two one-token passes after one-token passes, and after a pass over `new` tokens with the last row's
    logits or none: median ms of each, and the CUDA graph events llama.cpp logged meanwhile."""
    scenarios = {"one-token passes": (1, "last"), f"{new} tokens, last row's logits": (new, "last")}
    scenarios[f"{new} tokens, no logits"] = (new, "none")
    for name, (size, outputs) in scenarios.items():
        firsts, seconds, events = [], [], []
        for _ in range(trials):
            for _ in range(3):  # (the one-token passes' graph captured and replayed)
                target.decode([500], BASE, 0, "last")
                target.synchronize()
                target.remove_from(0, BASE)
            target.decode(list(range(500, 500 + size)), BASE, 0, outputs)
            target.synchronize()
            _events.clear()
            for offset, times in enumerate((firsts, seconds)):
                started = time.perf_counter()
                target.decode([600], BASE + size + offset, 0, "last")
                target.synchronize()
                times.append((time.perf_counter() - started) * 1000)
            events.extend(_events)
            target.remove_from(0, BASE)
        counted = {event: events.count(event) for event in GRAPH_EVENTS if event in events}
        print(
            f"one-token passes after {name}: median {statistics.median(firsts):.2f} ms, then "
            f"{statistics.median(seconds):.2f} ms; {counted}"
        )


def alternate(target: LlamaModel, n: int, trials: int = 10) -> None:
    """Passes of n tokens, each after three one-token passes and followed by two: median ms of the n-token pass
    and of the two one-token passes after it, and the CUDA graph events llama.cpp logged meanwhile (the first trial
    left out: it warms up whatever graphs are kept)."""
    spans: dict[str, list[float]] = {
        f"n={n}": [],
        "first one-token after it": [],
        "second one-token after it": [],
    }
    events: list[str] = []
    for trial in range(trials + 1):
        _events.clear()
        position = BASE
        timings = []
        for size in (1, 1, 1, n, 1, 1):
            started = time.perf_counter()
            target.decode(list(range(500, 500 + size)), position, 0, "all")
            target.synchronize()
            timings.append((time.perf_counter() - started) * 1000)
            position += size
        target.remove_from(0, BASE)
        if trial:
            events.extend(_events)
            for times, ms in zip(spans.values(), timings[3:], strict=True):
                times.append(ms)
    counted = {event: events.count(event) for event in GRAPH_EVENTS if event in events}
    medians = ", ".join(f"{name} {statistics.median(times):.2f} ms" for name, times in spans.items())
    print(f"alternating, graph key {cuda_graph_key()}: {medians}; {counted}")


def drafting(draft: LlamaModel, go: threading.Event, stop: threading.Event, made: list[float]) -> None:
    """Once `go` is set, greedy draft tokens after the BASE ones until `stop` is, each one's finishing time in
    `made`."""
    go.wait()
    for _ in greedy_drafts(draft, draft.n_ctx_per_seq - 1, stop):
        made.append(time.perf_counter())


AHEAD_MODES = ("alone", "drafting from its launch", "drafting once its launch returned")


def ahead(target: LlamaModel, draft: LlamaModel, n: int, trials: int = 10) -> None:
    """A target pass of n tokens, warm (after passes of its size) and cold (after a one-token pass): alone, with
    the draft model drafting on another thread from the start (as the engine does), and with drafting held until
    `decode` returned (its kernels launched): median ms until `decode` returned and until the logits were ready,
    and the draft tokens finished meanwhile."""

    def reset() -> None:
        forget_passes(target, draft)

    # On a CPU the two models share one thread pool, which computes one pass at a time.
    modes = AHEAD_MODES if target.offloaded and draft.offloaded else AHEAD_MODES[:1]
    for kind, before in (("warm", (n, n, n)), ("cold", (1,))):
        for mode in modes:
            launched, times, tokens = [], [], []
            for _ in range(trials):
                for size in before:
                    target_pass(target, size)
                    reset()
                go, stop, made = threading.Event(), threading.Event(), []
                thread = None
                if mode != "alone":
                    thread = threading.Thread(target=drafting, args=(draft, go, stop, made))
                    thread.start()
                started = time.perf_counter()
                if mode == AHEAD_MODES[1]:
                    go.set()
                target_pass(target, n, wait=False)
                launched.append((time.perf_counter() - started) * 1000)
                go.set()
                target.synchronize()
                finished = time.perf_counter()
                stop.set()
                if thread is not None:
                    thread.join()
                times.append((finished - started) * 1000)
                tokens.append(sum(1 for at in made if at <= finished))
                reset()
            drafted = (
                f", {statistics.median(tokens):.1f} draft tokens made meanwhile" if mode != "alone" else ""
            )
            print(
                f"target pass n={n}, {kind}, {mode}: decode returned after {statistics.median(launched):.2f} ms, "
                f"logits after {statistics.median(times):.2f} ms{drafted}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", type=Path)
    parser.add_argument("draft", type=Path)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--after-draft", action="store_true", help="only the after-draft comparison")
    parser.add_argument("--after-prompt", action="store_true", help="only the after-prompt comparison")
    parser.add_argument(
        "--alternate", action="store_true", help="only passes of n tokens between one-token ones"
    )
    parser.add_argument("--ahead", action="store_true", help="only target passes with drafting beside them")
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
        forget_passes(target, draft)

    if args.after_prompt:
        llama_cpp.llama_log_set(_record_graph_events, ctypes.c_void_p(0))
        after_prompt(target)
        engine.close()
        return
    if args.alternate:
        llama_cpp.llama_log_set(_record_graph_events, ctypes.c_void_p(0))
        for n in (4, 9, 25):
            alternate(target, n)
        engine.close()
        return
    if args.ahead:
        alone = best_ms(lambda: draft_tokens(draft, 8), reset) / 8
        print(f"a draft token alone: {alone:.2f} ms")
        if not (target.offloaded and draft.offloaded):
            print("(not on a GPU: the passes alone only, since both models share the CPU's thread pool)")
        for n in (8, 9, 16, 25):
            ahead(target, draft, n)
        engine.close()
        return
    if args.after_draft:
        llama_cpp.llama_log_set(_record_graph_events, ctypes.c_void_p(0))
        for n in (1, 9, 17):
            after_draft(target, draft, n)
        engine.close()
        return
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
