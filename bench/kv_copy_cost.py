"""What a prompt-cache copy costs, split: allocating its host buffer, copying the KV out, copying it back.

The prompt cache (`localspec/engine/kv_snapshots.py`) copies a slot's KV out before a prompt overwrites it and
restores a copy for a later prompt that shares more with it. A save takes a host buffer of the sequence's size,
page-locked where a GPU runs the model (`host_memory.host_buffer`: a freed one of about that size where the pool
has one, else a new one, whose allocation is timed below). This tells the allocation apart from the copies, for
page-locked and ordinary memory, at a few sequence lengths (median of a few rounds each, ms). Then, since CUDA
synchronizes around page-locked allocations, it times one-token passes while another thread allocates such
buffers (and ordinary ones) of the last length's size: whether allocating off the engine's thread would still
hold up its passes.

    python bench/kv_copy_cost.py TARGET.gguf [--tokens 500,1000,2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import llama_cpp
import numpy as np

from localspec.engine.host_memory import host_buffer, pinned_allocator
from localspec.engine.llama_model import LlamaModel, shutdown


def _median_ms(action: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def _allocate(size: int, pinned: bool) -> None:
    """Allocate and free a buffer of `size` (page-locked: as the prompt cache's pool does when it has none free)."""
    allocator = pinned_allocator() if pinned else None
    if allocator is None:
        np.empty(size, dtype=np.uint8)
        return
    allocate, release = allocator
    allocated = allocate(size)
    if allocated is not None:
        release(allocated[0])


def _copies(model: LlamaModel, size: int, pinned: bool, rounds: int) -> str:
    """'allocate (and free) / copy out / copy back' in ms, for one kind of host memory."""
    buffer = host_buffer(size, pinned)
    pointer = buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
    allocate = _median_ms(lambda: _allocate(size, pinned), rounds)
    copy_out = _median_ms(lambda: llama_cpp.llama_state_seq_get_data(model.ctx, pointer, size, 0), rounds)
    copy_back = _median_ms(lambda: model.restore_sequence(0, buffer), rounds)
    return f"{allocate:.1f} / {copy_out:.1f} / {copy_back:.1f}"


def _passes_while(model: LlamaModel, depth: int, allocate: Callable[[], object] | None, passes: int) -> str:
    """p50 / p90 ms of one-token passes at `depth` while another thread calls `allocate` in a loop (None: alone)."""
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set() and allocate is not None:
            allocate()

    thread = threading.Thread(target=churn, daemon=True)
    if allocate is not None:
        thread.start()
    times = []
    try:
        for i in range(passes):
            started = time.perf_counter()
            model.decode([100 + i % 1000], depth, 0, "last")
            model.synchronize()
            times.append((time.perf_counter() - started) * 1000)
            model.remove_from(0, depth)
    finally:
        stop.set()
        if allocate is not None:
            thread.join()
    times.sort()
    return f"{statistics.median(times):.2f} / {times[int(len(times) * 0.9)]:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", type=Path)
    parser.add_argument("--tokens", default="500,1000,2000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--passes", type=int, default=200)
    args = parser.parse_args()
    lengths = [int(n) for n in args.tokens.split(",")]
    model = LlamaModel(args.target, role="target", n_ctx_per_seq=max(lengths) + 64, n_batch=512)
    rng = np.random.default_rng(0)
    print(f"{args.target.name}: offloaded {model.offloaded}")
    print("| tokens | MB | page-locked: allocate and free / copy out / copy back | ordinary: the same |")
    print("| ---: | ---: | --- | --- |")
    for n in lengths:
        tokens = [int(t) for t in rng.integers(100, 20000, n)]
        model.remove_from(0, 0)
        for start in range(0, n, 512):
            model.decode(tokens[start : start + 512], start, 0, "none")
        model.synchronize()
        size = int(llama_cpp.llama_state_seq_get_size(model.ctx, 0))
        cells = [_copies(model, size, pinned, args.rounds) for pinned in (True, False)]
        print(f"| {n} | {size / 1e6:.0f} | {cells[0]} | {cells[1]} |")
    print(
        f"\none-token passes {n} tokens deep, p50 / p90 ms, while another thread allocates {size / 1e6:.0f} MB buffers:"
    )
    print("| alone | page-locked | ordinary |")
    print("| --- | --- | --- |")
    kinds = [None, lambda: _allocate(size, True), lambda: _allocate(size, False)]
    print(f"| {' | '.join(_passes_while(model, n, allocate, args.passes) for allocate in kinds)} |")
    model.close()
    shutdown()


if __name__ == "__main__":
    main()
