"""Saved KV sequences in host memory: the prompt cache beyond the slots.

A slot holds one token list at a time. When a request is about to overwrite a slot whose KV holds many tokens the
new prompt does not share (an editor jumping to another function or file), the slot's KV is copied here first;
when a later prompt shares more with a saved copy than with its slot, the copy is restored into the slot instead of
evaluating those tokens again. A restored KV is the one the target computed for exactly those tokens at exactly
those positions, so reuse stays exact: only a common prefix is ever reused, as with a slot.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from localspec.engine.llama_model import LlamaModel
from localspec.engine.prefix_cache import SlotState, common_prefix_length

# Save a slot only when overwriting it would lose at least this many tokens that no copy holds yet (a save copies
# the whole sequence: on a GPU, re-evaluating a few hundred tokens costs less than copying it out); restore a copy
# only when it spares at least this many over what the slot already shares with the prompt.
MIN_SAVED_TOKENS = 64
MIN_SAVED_TOKENS_GPU = 512
MIN_RESTORE_GAIN = 16


@dataclass(frozen=True)
class Snapshot:
    target_tokens: tuple[int, ...]
    target_state: np.ndarray
    draft_tokens: tuple[int, ...]
    draft_state: np.ndarray | None

    @property
    def nbytes(self) -> int:
        return self.target_state.nbytes + (self.draft_state.nbytes if self.draft_state is not None else 0)


class KvSnapshots:
    """Least recently used copies of slots' KV, within `max_bytes` of host memory (0 turns the store off)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[int, ...], Snapshot] = OrderedDict()
        self.nbytes = 0
        self.saves = 0
        self.restores = 0

    def __len__(self) -> int:
        return len(self._entries)

    def best(self, prompt: list[int]) -> tuple[Snapshot | None, int]:
        """The copy sharing the longest prefix with `prompt`, and that length."""
        best: Snapshot | None = None
        best_length = 0
        for snapshot in self._entries.values():
            length = common_prefix_length(list(snapshot.target_tokens), prompt)
            if length > best_length:
                best, best_length = snapshot, length
        return best, best_length

    def save(self, slot: SlotState, target: LlamaModel, draft: LlamaModel | None) -> None:
        """Copy what `slot` holds, unless a copy of it (or of more) is already here or it does not fit."""
        tokens = tuple(slot.target_tokens)
        if self.max_bytes <= 0 or len(tokens) < MIN_SAVED_TOKENS:
            return
        for kept in self._entries:
            if kept[: len(tokens)] == tokens:
                self._entries.move_to_end(kept)
                return
        draft_state = draft.save_sequence(slot.seq_id) if draft is not None and slot.draft_tokens else None
        snapshot = Snapshot(
            tokens,
            target.save_sequence(slot.seq_id),
            tuple(slot.draft_tokens) if draft_state is not None else (),
            draft_state,
        )
        if snapshot.nbytes > self.max_bytes:
            return
        for kept in [kept for kept in self._entries if tokens[: len(kept)] == kept]:  # copies this one covers
            self._drop(kept)
        self._entries[tokens] = snapshot
        self.nbytes += snapshot.nbytes
        self.saves += 1
        while self.nbytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: tuple[int, ...]) -> None:
        self.nbytes -= self._entries.pop(key).nbytes

    def restore(
        self, snapshot: Snapshot, slot: SlotState, target: LlamaModel, draft: LlamaModel | None
    ) -> None:
        """Make `slot` hold the copy (the draft's part too, when the copy has one)."""
        target.restore_sequence(slot.seq_id, snapshot.target_state)
        slot.target_tokens[:] = snapshot.target_tokens
        if draft is not None and snapshot.draft_state is not None:
            draft.restore_sequence(slot.seq_id, snapshot.draft_state)
            slot.draft_tokens[:] = snapshot.draft_tokens
        if snapshot.target_tokens in self._entries:
            self._entries.move_to_end(snapshot.target_tokens)
        self.restores += 1

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0

    def prepare(
        self, slot: SlotState, prompt: list[int], target: LlamaModel, draft: LlamaModel | None
    ) -> None:
        """Before `slot` serves `prompt`: save what it would lose, and restore a copy that shares more."""
        if self.max_bytes <= 0:
            return
        shared = common_prefix_length(slot.target_tokens, prompt)
        snapshot, length = self.best(prompt)
        lost = len(slot.target_tokens) - max(shared, self.best(slot.target_tokens)[1])
        if lost >= (MIN_SAVED_TOKENS_GPU if target.offloaded else MIN_SAVED_TOKENS):
            self.save(slot, target, draft)
        if snapshot is not None and length >= shared + MIN_RESTORE_GAIN:
            self.restore(snapshot, slot, target, draft)

    def describe(self) -> dict[str, int]:
        return {
            "entries": len(self._entries),
            "bytes": self.nbytes,
            "max_bytes": self.max_bytes,
            "saves": self.saves,
            "restores": self.restores,
        }
