"""The prompt cache: KV sequences (slots) that keep what earlier requests evaluated, and the rule that makes a
sequence hold a new token list while reusing its longest common prefix."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from localspec.engine.llama_model import LlamaModel
from localspec.errors import InvalidRequestError

if TYPE_CHECKING:
    from localspec.engine.drafters import NgramTable

# A slot belonging to another key is reused only when it shares at least this many prompt tokens.
MIN_SHARED_PREFIX = 256


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix. The two usually agree up to near their ends (a KV's tokens and the
    context it should hold), so long prefixes are tested first with slice compares, which run in C, and only the
    last stretch is walked in Python (a context of thousands of tokens is compared every step)."""
    limit = min(len(a), len(b))
    known, back = 0, 0  # a[:known] == b[:known]
    while True:
        candidate = max(known, limit - back)
        if a[known:candidate] == b[known:candidate]:
            break
        limit, back = candidate, max(16, back * 4)  # no common prefix reaches `candidate`
    known = candidate
    while known < limit and a[known] == b[known]:
        known += 1
    return known


# A draft model on a GPU catches up this many tokens or fewer one token at a time, as it drafts: its one-token CUDA
# graph then stays in use (llama.cpp captures a graph anew whenever the pass shape changes).
ONE_BY_ONE_CATCH_UP = 4


def reusable_prefix(cached: list[int], wanted: list[int], outputs: str) -> int:
    """Tokens of `cached` that `sync_sequence` keeps: the common prefix, less the final token when its logits are
    wanted and nothing else would be evaluated."""
    reuse = common_prefix_length(cached, wanted)
    return reuse - 1 if outputs == "last" and reuse == len(wanted) and wanted else reuse


def catches_up_one_by_one(one_by_one: bool, missing: int) -> bool:
    return one_by_one and missing <= ONE_BY_ONE_CATCH_UP


def trim_to_prefix(model: LlamaModel, seq_id: int, cached: list[int], wanted: list[int], outputs: str) -> int:
    """Drop what sequence `seq_id` holds beyond its reusable prefix of `wanted` (see `reusable_prefix`); `cached` is
    updated in place. Returns the prefix's length: `wanted[returned:]` is left to evaluate."""
    reuse = reusable_prefix(cached, wanted, outputs)
    if reuse < len(cached):
        model.remove_from(seq_id, reuse)
        del cached[reuse:]
    return reuse


def sync_sequence(
    model: LlamaModel,
    seq_id: int,
    cached: list[int],
    wanted: list[int],
    outputs: str,
    one_by_one: bool = False,
) -> int:
    """Make sequence `seq_id` hold exactly `wanted`, reusing the longest common prefix of what it holds.

    `cached` (the tokens the KV currently holds) is updated in place. With outputs="last" the final token is
    always evaluated, so its logits are readable afterwards. Returns how many tokens were reused.
    one_by_one: evaluate a short remainder as one-token passes with logits (the shape of a drafting pass).
    """
    reuse = trim_to_prefix(model, seq_id, cached, wanted, outputs)
    missing = wanted[reuse:]
    if catches_up_one_by_one(one_by_one, len(missing)):
        for position, token in enumerate(missing, start=reuse):
            model.decode([token], position, seq_id, "last")
    elif missing:
        model.decode(missing, reuse, seq_id, outputs)
    cached.extend(missing)
    return reuse


@dataclass
class SlotState:
    """One KV sequence id in each model, and the tokens each KV currently holds (the prompt cache)."""

    seq_id: int
    key: str
    target_tokens: list[int]
    draft_tokens: list[int]
    last_used: float = 0.0
    busy: bool = False
    # The n-gram index of the last request's context (prompt and output), reused when the next prompt shares it.
    ngram_index: tuple[list[int], NgramTable] | None = None

    def release(self) -> None:
        self.busy = False
        self.last_used = time.monotonic()


class SlotPool:
    """The slots of both models' KV caches: each client kind (chat, editor, API) keeps its own slot."""

    def __init__(self, count: int) -> None:
        self.slots = [SlotState(seq_id=i, key="", target_tokens=[], draft_tokens=[]) for i in range(count)]

    def acquire(self, key: str, prompt: list[int]) -> SlotState:
        """The free slot that serves `prompt` best: the key's own, another one holding most of the prompt, an
        unused one, or the least recently used."""
        free = [s for s in self.slots if not s.busy]
        if not free:
            raise InvalidRequestError(
                f"All {len(self.slots)} engine slots are busy; wait for a request to finish or raise engine.slots."
            )
        same_key = [s for s in free if s.key == key]
        unused = [s for s in free if not s.key]
        shared = max(free, key=lambda s: common_prefix_length(s.target_tokens, prompt))
        if same_key:
            slot = same_key[0]
        elif common_prefix_length(shared.target_tokens, prompt) >= MIN_SHARED_PREFIX:
            slot = shared  # another client's cache is worth taking over: most of it is this prompt too
        elif unused:
            slot = unused[0]
        else:
            slot = min(free, key=lambda s: s.last_used)
        slot.key = key
        slot.busy = True
        return slot

    def reset(self, target: LlamaModel, draft: LlamaModel | None) -> None:
        """Forget every free slot's cached prefix."""
        for slot in self.slots:
            if not slot.busy:
                target.remove_from(slot.seq_id, 0)
                slot.target_tokens.clear()
                if draft:
                    draft.remove_from(slot.seq_id, 0)
                slot.draft_tokens.clear()
                slot.ngram_index = None

    def describe(self) -> list[dict[str, object]]:
        return [{"key": s.key, "cached_tokens": len(s.target_tokens), "busy": s.busy} for s in self.slots]
