"""Saved KV sequences in host memory: the prompt cache beyond the slots.

A slot holds one token list at a time. When a request is about to overwrite a slot whose KV holds many tokens the
new prompt does not share (an editor jumping to another function or file), the slot's KV is copied here first;
when a later prompt shares more with a saved copy than with its slot, the copy is restored into the slot instead of
evaluating those tokens again. A restored KV is the one the target computed for exactly those tokens at exactly
those positions, so reuse stays exact: only a common prefix is ever reused, as with a slot.
"""

from __future__ import annotations

import bisect
import itertools
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from localspec.engine.host_memory import pinned_allocations
from localspec.engine.llama_model import LlamaModel
from localspec.engine.prefix_cache import SlotState
from localspec.engine.types import CacheRoom

# Save a slot only when overwriting it would lose at least this many tokens that no copy holds yet (a save copies
# the whole sequence: on a GPU, re-evaluating a few hundred tokens costs less than copying it out); restore a copy
# only when it spares at least this many over what the slot already shares with the prompt.
MIN_SAVED_TOKENS = 64
MIN_SAVED_TOKENS_GPU = 512
MIN_RESTORE_GAIN = 16


@dataclass(frozen=True)
class Snapshot:
    # As an array: numpy finds where two token lists part in microseconds, where Python takes a fraction of a
    # millisecond.
    target_tokens: np.ndarray
    order_key: bytes  # `_order_key(target_tokens)`
    target_state: np.ndarray
    draft_tokens: tuple[int, ...]
    draft_state: np.ndarray | None
    serial: int = field(default_factory=itertools.count().__next__)  # its key in the store

    @property
    def nbytes(self) -> int:
        return self.target_state.nbytes + (self.draft_state.nbytes if self.draft_state is not None else 0)


def _as_array(tokens: list[int] | tuple[int, ...]) -> np.ndarray:
    return np.asarray(tokens, dtype=np.int64)


def _order_key(tokens: np.ndarray) -> bytes:
    """Bytes that sort as the token list does, token by token (token ids are never negative: fixed width,
    big-endian); a key that starts with another's belongs to a list that starts with the other's list."""
    return tokens.astype(">u4").tobytes()


def _shared_length(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the common prefix of two token arrays."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differs = a[:n] != b[:n]
    first = int(differs.argmax())  # the first True, or 0 when none is
    return first if differs[first] else n


class KvSnapshots:
    """Least recently used copies of slots' KV, within `max_bytes` of host memory (0 turns the store off)."""

    def __init__(self, max_bytes: int, pinned: bool = False) -> None:
        """pinned: keep copies in page-locked memory where the models run on a GPU (`host_memory`)."""
        self.max_bytes = max_bytes
        self.pinned = pinned
        # Keyed by serial number, least recently used first. (Not by token tuple: an OrderedDict hashes every key
        # while iterating, and a tuple of thousands of tokens does not cache its hash.)
        self._entries: dict[int, Snapshot] = {}
        # (order key, serial) of every copy, in token order. Of all copies, the two either side of where a token
        # list would go share the longest prefix with it (lists in order part later the closer they are), so a
        # lookup compares two copies, not every one.
        self._order: list[tuple[bytes, int]] = []
        self.nbytes = 0
        self.saves = 0
        self.restores = 0
        self.dropped = 0  # copies dropped to make room for newer ones
        # Names this store's contents: a client that warmed it tells a new, empty one (`CacheRoom.id`) by it.
        self.id = uuid.uuid4().hex[:12]

    def __len__(self) -> int:
        return len(self._entries)

    def best(self, prompt: list[int]) -> tuple[Snapshot | None, int]:
        """The copy sharing the longest prefix with `prompt`, and that length."""
        return self._best(_as_array(prompt))

    def _best(self, wanted: np.ndarray) -> tuple[Snapshot | None, int]:
        best: Snapshot | None = None
        best_length = 0
        at = bisect.bisect_left(self._order, (_order_key(wanted),))
        for _, serial in self._order[max(0, at - 1) : at + 1]:
            snapshot = self._entries[serial]
            length = _shared_length(snapshot.target_tokens, wanted)
            if length > best_length:
                best, best_length = snapshot, length
        return best, best_length

    def save(self, slot: SlotState, target: LlamaModel, draft: LlamaModel | None) -> CacheRoom:
        """Copy what `slot` holds, unless a copy of it (or of more) is already here or it does not fit; say which."""
        if self.max_bytes <= 0 or len(slot.target_tokens) < MIN_SAVED_TOKENS:
            return self.room(False, 0)
        held = _as_array(slot.target_tokens)
        held_key = _order_key(held)
        at = bisect.bisect_left(self._order, (held_key,))
        if at < len(self._order) and self._order[at][0].startswith(held_key):
            # A copy of these tokens, or of more, is here (any such copy sorts right after them).
            serial = self._order[at][1]
            self._touch(serial)
            return self.room(True, self._entries[serial].nbytes)
        copied_draft = draft if draft is not None and slot.draft_tokens else None
        size = target.sequence_bytes(slot.seq_id)
        if copied_draft is not None:
            size += copied_draft.sequence_bytes(slot.seq_id)
        if size > self.max_bytes:
            return self.room(False, size)
        # Room is made before the copy, so that the buffers of the copies it drops can take it (`host_memory`).
        # Copies of a prefix of these tokens (they sort before them) go first.
        for serial in [serial for key, serial in self._order[:at] if held_key.startswith(key)]:
            self._drop(serial)
        while self.nbytes + size > self.max_bytes:
            self._drop(next(iter(self._entries)))
            self.dropped += 1
        pinned = self.pinned
        draft_state = copied_draft.save_sequence(slot.seq_id, pinned) if copied_draft is not None else None
        snapshot = Snapshot(
            held,
            held_key,
            target.save_sequence(slot.seq_id, pinned),
            tuple(slot.draft_tokens) if draft_state is not None else (),
            draft_state,
        )
        self._entries[snapshot.serial] = snapshot
        bisect.insort(self._order, (held_key, snapshot.serial))
        self.nbytes += snapshot.nbytes
        self.saves += 1
        return self.room(True, snapshot.nbytes)

    def room(self, kept: bool = False, copy_bytes: int = 0) -> CacheRoom:
        return CacheRoom(self.id, self.nbytes, self.max_bytes, kept, copy_bytes)

    def _touch(self, key: int) -> None:
        self._entries[key] = self._entries.pop(key)  # now the most recently used

    def _drop(self, serial: int) -> None:
        snapshot = self._entries.pop(serial)
        del self._order[bisect.bisect_left(self._order, (snapshot.order_key, serial))]
        self.nbytes -= snapshot.nbytes

    def restore(
        self, snapshot: Snapshot, slot: SlotState, target: LlamaModel, draft: LlamaModel | None
    ) -> None:
        """Make `slot` hold the copy (the draft's part too, when the copy has one)."""
        target.restore_sequence(slot.seq_id, snapshot.target_state)
        slot.target_tokens[:] = snapshot.target_tokens.tolist()
        if draft is not None and snapshot.draft_state is not None:
            draft.restore_sequence(slot.seq_id, snapshot.draft_state)
            slot.draft_tokens[:] = snapshot.draft_tokens
        if snapshot.serial in self._entries:
            self._touch(snapshot.serial)
        self.restores += 1

    def clear(self) -> None:
        self._entries.clear()
        self._order.clear()
        self.nbytes = 0
        self.id = uuid.uuid4().hex[:12]

    def prepare(
        self, slot: SlotState, prompt: list[int], target: LlamaModel, draft: LlamaModel | None
    ) -> float:
        """Before `slot` serves `prompt`: save what it would lose, and restore a copy that shares more. Returns the
        seconds spent saving (the rest of the time is the restore)."""
        if self.max_bytes <= 0:
            return 0.0
        started = time.perf_counter()
        held, wanted = _as_array(slot.target_tokens), _as_array(prompt)
        shared = _shared_length(held, wanted)
        snapshot, length = self._best(wanted)
        lost = len(held) - max(shared, self._best(held)[1])
        saving = 0.0
        if lost >= (MIN_SAVED_TOKENS_GPU if target.offloaded else MIN_SAVED_TOKENS):
            self.save(slot, target, draft)
            saving = time.perf_counter() - started
        if snapshot is not None and length >= shared + MIN_RESTORE_GAIN:
            self.restore(snapshot, slot, target, draft)
        return saving

    def describe(self) -> dict[str, int]:
        return {
            "entries": len(self._entries),
            "bytes": self.nbytes,
            "max_bytes": self.max_bytes,
            "saves": self.saves,
            "restores": self.restores,
            "dropped": self.dropped,
            # copies that hold the draft model's KV as well (a request restoring one drafts at once)
            "with_draft": sum(1 for snapshot in self._entries.values() if snapshot.draft_state is not None),
            # page-locked buffers allocated for copies (the others took a freed one: `host_memory`)
            "pinned_allocations": pinned_allocations() if self.pinned else 0,
        }
