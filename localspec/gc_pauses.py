"""Short garbage-collector pauses in a process that serves requests."""

from __future__ import annotations

import gc


def freeze_long_lived() -> None:
    """Collect the garbage, then move all the process holds out of the collector's reach (`gc.freeze`). Called once
    models are loaded: what the process holds then (modules, the models' wrappers, the tokenizers' tables) lives
    until the next load, yet each full collection walks all of it, in the middle of whichever request it falls in:
    on a GPU, a pause of several target passes (docs/BENCHMARKS.md). Objects made later are collected as before;
    those the last call froze are let go first, so what was dropped since (an engine swapped out) is collected."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
