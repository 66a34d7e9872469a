"""Small caches that keep what was used last: an editor resends the same texts with every suggestion, and clients
name their own slots, so the engine keeps the most recent few of each rather than all of them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def recently_used(cache: dict[K, V], key: K, make: Callable[[], V], size: int) -> V:
    """`cache[key]`, made by `make()` where missing. The dict's order is least recently used first: the entry is
    moved to the end, and a new one beyond `size` entries drops the oldest."""
    if key in cache:
        value = cache.pop(key)
    else:
        value = make()
        if len(cache) >= size:
            del cache[next(iter(cache))]
    cache[key] = value
    return value
