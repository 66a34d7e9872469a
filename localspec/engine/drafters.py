"""Draft sources behind one small interface: propose up to k tokens that likely follow `context`.

- DraftModelDrafter: a small model of the same family, greedy, stopping early when it is unsure.
- NgramDrafter: prompt-lookup decoding: find the context's last n tokens earlier in the context (or in extra texts
  such as other files of the user's repository) and propose what followed them there. Costs almost nothing.
"""

from __future__ import annotations

import math
from typing import Protocol

from localspec.engine.llama_model import LlamaModel, top_two


class Drafter(Protocol):
    def propose(self, context: list[int], k: int) -> list[int]: ...


def common_prefix_length(a: list[int], b: list[int]) -> int:
    limit = min(len(a), len(b))
    if limit and a[:limit] == b[:limit]:
        return limit
    index = 0
    while index < limit and a[index] == b[index]:
        index += 1
    return index


def sync_sequence(model: LlamaModel, seq_id: int, cached: list[int], wanted: list[int], outputs: str) -> int:
    """Make sequence `seq_id` hold exactly `wanted`, reusing the longest common prefix of what it holds.

    `cached` (the tokens the KV currently holds) is updated in place. With outputs="last" the final token is
    always evaluated, so its logits are readable afterwards. Returns how many tokens were reused.
    """
    reuse = common_prefix_length(cached, wanted)
    if outputs == "last" and reuse == len(wanted) and wanted:
        reuse -= 1
    if reuse < len(cached):
        model.remove_from(seq_id, reuse)
        del cached[reuse:]
    if reuse < len(wanted):
        model.decode(wanted[reuse:], reuse, seq_id, outputs)
        cached.extend(wanted[reuse:])
    return reuse


class DraftModelDrafter:
    """Greedy drafting with the draft model in its own KV sequence (kept in step with the target's)."""

    def __init__(self, model: LlamaModel, seq_id: int, cached: list[int], p_min: float) -> None:
        self.model = model
        self.seq_id = seq_id
        self.cached = (
            cached  # tokens in the draft's KV for this slot (shared with the slot, updated in place)
        )
        # Stop drafting where the draft is unsure. The top probability is estimated from the top-2 logit margin
        # alone (p = 1 / (1 + e^-margin), an upper bound): exact softmax over a 150k vocabulary per draft token
        # costs a fifth of a GPU draft step.
        self._min_margin = (
            math.log(p_min / (1.0 - p_min)) if 0.0 < p_min < 1.0 else (-math.inf if p_min <= 0 else math.inf)
        )

    def propose(self, context: list[int], k: int) -> list[int]:
        if k <= 0:
            return []
        sync_sequence(self.model, self.seq_id, self.cached, context, "last")
        drafts: list[int] = []
        while True:
            token, margin = top_two(self.model.logits(1)[0])
            if margin < self._min_margin:
                break
            drafts.append(token)
            if len(drafts) >= k or self.model.is_end_of_generation(token):
                break
            self.model.decode([token], len(self.cached), self.seq_id, "last")
            self.cached.append(token)
        return drafts


class NgramDrafter:
    """Prompt-lookup decoding over the growing context plus optional extra token streams."""

    def __init__(self, max_n: int = 4, min_n: int = 2) -> None:
        self.max_n = max_n
        self.min_n = min_n
        self._tokens: list[int] = []
        self._last_end: dict[tuple[int, ...], int] = {}  # n-gram -> end index of its latest occurrence
        self._indexed = 0  # n-grams ending before this index are in _last_end
        self._extra: list[list[int]] = []
        self._extra_index: dict[tuple[int, ...], tuple[int, int]] = {}

    def add_extra(self, tokens: list[int]) -> None:
        """Index another token stream (e.g. a repository file) to copy from."""
        which = len(self._extra)
        self._extra.append(tokens)
        for end in range(len(tokens)):
            for n in range(self.min_n, self.max_n + 1):
                if end + 1 >= n:
                    self._extra_index[tuple(tokens[end + 1 - n : end + 1])] = (which, end)

    def _index_until(self, length: int) -> None:
        # Index n-grams ending before the last token, so a lookup never finds the suffix itself.
        for end in range(self._indexed, length - 1):
            for n in range(self.min_n, self.max_n + 1):
                if end + 1 >= n:
                    self._last_end[tuple(self._tokens[end + 1 - n : end + 1])] = end
        self._indexed = max(self._indexed, length - 1)

    def propose(self, context: list[int], k: int) -> list[int]:
        if k <= 0:
            return []
        # A generation's context only grows, so only its new tail needs indexing.
        self._tokens.extend(context[len(self._tokens) :])
        self._index_until(len(self._tokens))
        for n in range(self.max_n, self.min_n - 1, -1):
            if len(context) < n:
                continue
            key = tuple(context[-n:])
            end = self._last_end.get(key)
            if end is not None:
                return self._tokens[end + 1 : end + 1 + k]
            hit = self._extra_index.get(key)
            if hit is not None:
                which, extra_end = hit
                return self._extra[which][extra_end + 1 : extra_end + 1 + k]
        return []
