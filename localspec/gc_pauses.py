"""Short garbage-collector pauses in a process that serves requests."""

from __future__ import annotations

import gc


def freeze_long_lived() -> None:
    """Call after loading models. What the process holds then (modules, the models' wrappers, the tokenizers'
    tables) lives until the next load, yet each full collection walks all of it, in the middle of whichever request
    it falls in: on a GPU, a pause of several target passes (docs/BENCHMARKS.md). Garbage is collected first; the
    rest is moved out of the collector's reach (`gc.freeze`), and objects made later are collected as before. At
    the next load the last load's frozen objects are let go first, so what that load dropped is collected then."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
