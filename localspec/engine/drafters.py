"""Draft sources: each proposes up to k tokens that likely follow `context` (`propose(context, k)`).

- DraftModelDrafter: a small model of the same family, greedy, stopping early when it is unsure.
- NgramDrafter: prompt-lookup decoding: find the context's last n tokens earlier in the context (or in extra texts
  such as other files of the user's repository, or the session's earlier outputs) and propose what followed them
  there. Costs almost nothing.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from localspec.engine.llama_model import DecodeAborted, LlamaModel, best_two
from localspec.engine.pass_costs import PassCosts
from localspec.engine.prefix_cache import (
    catches_up_one_by_one,
    common_prefix_length,
    reusable_prefix,
    sync_sequence,
    trim_to_prefix,
)


@dataclass
class _Tip:
    """The draft model's pick after a chain's evaluated tokens: `guess` is made but not evaluated (None where it
    was unsure); `unsure` marks the chain's end (an unsure pick, or a guess that ends the generation or the
    request's text); `top` and `runner_up` are its first and second choices there (None where either ends the
    generation, and `top` where it ends the text)."""

    guess: int | None = None
    unsure: bool = False
    top: int | None = None
    runner_up: int | None = None


@dataclass
class _Branch:
    """A second chain drafted ahead in a KV sequence of its own: `tokens` (what that sequence holds) go to where
    the main chain stopped unsure, then on from the draft model's second choice there."""

    tokens: list[int]
    tip: _Tip = field(default_factory=_Tip)


# The draft model's confidence floor by default (`confidence_floor`): llama.cpp's 0.75 where a draft token costs
# about half a target token or more, down to FLOOR_WHEN_FREE where drafting costs nearly nothing.
HIGHEST_FLOOR, FLOOR_WHEN_FREE, FLOOR_PER_COST = 0.75, 0.6, 0.3


def confidence_floor(draft_cost: float) -> float:
    """The confidence below which drafting stops, for a draft token costing `draft_cost` target tokens.

    A less sure pick is worth drafting on from where drafting is cheap: on a GPU a verify pass costs nearly the
    same with a few more tokens, and the draft model's confidence (from its top-2 margin) is about how often the
    target takes its pick. Replayed over the target alone's answers with the passes' measured prices
    (`bench/draft_floor.py`), the best floor falls from about 0.75 where a draft token costs half a target token
    to 0.62-0.67 where it costs a tenth or less (docs/BENCHMARKS.md)."""
    return min(HIGHEST_FLOOR, FLOOR_WHEN_FREE + FLOOR_PER_COST * max(0.0, draft_cost))


# Drafting ahead with a second chain, each chain gets this many tokens before the first goes on (a proposal takes
# about as many; the verify pass may end any time).
BRANCH_TURN = 8


class DraftModelDrafter:
    """Greedy drafting with the draft model in its own KV sequence (kept in step with the target's).

    With `costs`, it times its passes there: one-token passes (drafting, and short catch-ups on a GPU) as the
    price of a draft token, batched catch-ups by size. With `branch_seq`, a second KV sequence, drafting ahead
    also follows the draft model's second choice where it stopped unsure (see `run_ahead`); the model should
    then share KV cells between sequences (`LlamaModel(shared_cells=...)`), which makes starting and taking up
    that chain free.
    """

    def __init__(
        self,
        model: LlamaModel,
        seq_id: int,
        cached: list[int],
        p_min: float,
        one_by_one: bool | None = None,
        costs: PassCosts | None = None,
        branch_seq: int | None = None,
        ends: Callable[[list[int], int], bool] | None = None,
    ) -> None:
        self.model = model
        # Whether a token after a chain ends the request's text (`EndWatch.ends`): a chain ends with such a token,
        # as with an end-of-generation one.
        self._ends = ends
        # Catch up short remainders one token at a time (see sync_sequence); by default where the draft is on a GPU.
        self.one_by_one = model.offloaded if one_by_one is None else one_by_one
        self.seq_id = seq_id
        self.branch_seq = branch_seq
        self.cached = (
            cached  # tokens in the draft's KV for this slot (shared with the slot, updated in place)
        )
        self.costs = costs
        # Stop drafting where the draft is unsure. The top probability is estimated from the top-2 logit margin
        # alone (p = 1 / (1 + e^-margin), an upper bound): exact softmax over a 150k vocabulary per draft token
        # costs a fifth of a GPU draft step.
        self._min_margin = (
            math.log(p_min / (1.0 - p_min)) if 0.0 < p_min < 1.0 else (-math.inf if p_min <= 0 else math.inf)
        )
        # The draft model's pick after `cached`. `cached` plus its guess is a chain of the draft model's own
        # choices that a later `propose` reuses where its context follows the chain (see `run_ahead`).
        self._tip = _Tip()
        # Where drafting stopped unsure, `run_ahead` goes on from the draft model's top pick there anyway (the
        # target's next token is often that pick). `_stops` holds every such place in the chain, in order: a
        # context short of one is offered the chain's tokens up to it only (drafting would stop there).
        self._stops: list[int] = []
        self._branch: _Branch | None = None  # the chain from the second choice at the last such place
        # The chain holds the draft model's own picks from this position on (`run_ahead_from` reads another
        # source's drafts into it first): a shorter context is offered nothing from it.
        self._own_from = 0
        # Whether `branch_seq` holds cells (shared ones too, which it would keep from being freed): it is emptied
        # as soon as its chain is no longer wanted, so that every slot's sequence finds room in the shared buffer.
        self._branch_holds = branch_seq is not None
        self.drafted_ahead = 0  # drafts proposed from the chains
        self.second_chains = 0  # second chains taken up

    def backlog(self, context: list[int]) -> int:
        """Tokens the draft model must read before drafting after `context` (1 while it keeps up)."""
        self._follow(context)
        return len(context) - reusable_prefix(self.cached, context, "last")

    def ready(self, context: list[int]) -> int:
        """Drafts after `context` the draft model has already made (by `run_ahead`): free to propose."""
        return len(self.ready_drafts(context))

    def ready_drafts(self, context: list[int]) -> list[int]:
        """The drafts `ready` counts."""
        self._follow(context)
        known = self._known(context)
        return known[0] if known is not None else []

    def _known(self, context: list[int]) -> tuple[list[int], bool] | None:
        """The chain's drafts after `context` and whether drafting ends after them (see `_chain_after`)."""
        if len(context) < self._own_from:
            return None
        return _chain_after(context, self.cached, self._tip, self._stops)

    def _follow(self, context: list[int]) -> None:
        """Where `context` went the way of the second chain, make it the drafter's chain; either way drop it."""
        branch, self._branch = self._branch, None
        if not self._branch_holds or self.branch_seq is None:
            return
        if (
            branch is not None
            and self._known(context) is None
            and _chain_after(context, branch.tokens, branch.tip, []) is not None
        ):
            self.model.copy_sequence(self.branch_seq, self.seq_id)
            self.cached[:] = branch.tokens
            self._tip = branch.tip
            self._stops = []
            self.second_chains += 1
        self.close()

    def close(self) -> None:
        """Drop the second chain, freeing its cells: the slot's next request (or a prompt-cache copy restored into
        it) may need them."""
        self._branch = None
        if self._branch_holds and self.branch_seq is not None:
            self.model.remove_from(self.branch_seq, 0)
            self._branch_holds = False

    def read(self, context: list[int], most: int) -> bool:
        """Evaluate up to `most` more tokens of `context` into the draft model's KV, with no logits (a prefill whose
        prompt-cache copy should hold the draft model's KV too); whether any are left to read."""
        self.close()
        # No pick is read here: no chain goes on from the prompt.
        self._tip, self._stops, self._own_from = _Tip(), [], 0
        at = trim_to_prefix(self.model, self.seq_id, self.cached, context, "none")
        chunk = context[at : at + most]
        if chunk:
            self.model.decode(chunk, at, self.seq_id, "none")
            self.cached.extend(chunk)
            self.model.synchronize()
        return len(self.cached) < len(context)

    def propose(self, context: list[int], k: int) -> list[int]:
        if k <= 0:
            return []
        started = time.perf_counter()
        self._follow(context)
        # (A request's contexts only grow: the places it has passed no longer matter.)
        self._stops = [at for at in self._stops if at >= len(context)]
        chain = self._known(context)
        known, ends = chain if chain is not None else ([], False)
        self.drafted_ahead += min(k, len(known))
        if chain is not None and (len(known) >= k or ends):
            return known[:k]
        drafts: list[int] = []
        one_token_passes = 0
        if known:  # the chain stops short of k: go on from its last pick (evaluated first, as drafting would)
            drafts = known
            self._evaluate_guess()
            one_token_passes = 1
        else:
            self._stops.clear()
            self._own_from = 0
            missing = len(context) - sync_sequence(
                self.model, self.seq_id, self.cached, context, "last", self.one_by_one
            )
            batched = missing > 1 and not catches_up_one_by_one(self.one_by_one, missing)
            one_token_passes = 0 if batched else missing
            if batched:
                self.model.synchronize()  # (the logits read below would wait for it anyway)
                if self.costs is not None:
                    self.costs.record_draft_pass(missing, time.perf_counter() - started)
                started = time.perf_counter()
        while not self._pick():
            drafts.append(self._tip.guess)  # type: ignore[arg-type]
            if len(drafts) >= k or self._tip.unsure:
                break
            self._evaluate_guess()
            one_token_passes += 1
        if self.costs is not None:
            self.costs.record_draft(one_token_passes, time.perf_counter() - started)
        return drafts

    def run_ahead(self, limit: int, stop: threading.Event) -> None:
        """Go on drafting after the last proposal's drafts, as if the target accepts them all and then picks what
        the draft model picks, for up to `limit` tokens or until `stop` is set. Runs on another thread while the
        target verifies the proposal: where the guess holds, the next `propose` finds its drafts made.

        Where the proposal stopped unsure, a second chain goes on from the draft model's second choice there, in
        `branch_seq` (at such places the target takes the second choice about half as often as the first): the
        first chain is drafted for BRANCH_TURN tokens, then the second, then the first on to `limit`."""
        tip = self._tip
        self._branch = None
        branch_from: int | None = None
        if tip.guess is None and tip.unsure and tip.top is not None:
            self._stops.append(len(self.cached))
            branch_from = tip.runner_up if self.branch_seq is not None else None
            tip.guess, tip.unsure = tip.top, False
        if tip.unsure or tip.guess is None:
            return
        start = len(self.cached)
        first_turn = limit if branch_from is None else min(limit, BRANCH_TURN)
        try:
            goes_on = self._extend(first_turn, stop)
            if branch_from is not None and not stop.is_set():
                self._draft_branch(start, branch_from, first_turn, stop)
            if goes_on and limit > first_turn:
                self._extend(limit - first_turn, stop)
        except DecodeAborted:  # (its request was cancelled; the draft's KV and `cached` still agree)
            return

    def run_ahead_from(self, context: list[int], limit: int, stop: threading.Event) -> None:
        """`run_ahead` for a step whose drafts came from elsewhere (n-gram drafts): the draft model reads `context`
        (the step's context and those drafts) unless its chain already holds it, then drafts on from its pick
        there, so that a draft-model step after an n-gram step whose drafts were all taken finds drafts made."""
        self._follow(context)
        if self._known(context) is None:
            self._stops.clear()
            try:
                sync_sequence(self.model, self.seq_id, self.cached, context, "last", self.one_by_one)
            except DecodeAborted:
                return
            self._own_from = len(context)  # (the tokens before are the other source's, not the chain's)
            self._pick()
        self.run_ahead(limit, stop)

    def _extend(self, count: int, stop: threading.Event) -> bool:
        """Draft up to `count` more tokens of the chain; False where it ended (an unsure pick or a full context)."""
        for _ in range(count):
            if stop.is_set():
                return True
            if len(self.cached) + 1 >= self.model.n_ctx_per_seq:
                return False
            self._evaluate_guess()
            if self._pick() or self._tip.unsure:
                return False
        return True

    def _draft_branch(self, start: int, token: int, limit: int, stop: threading.Event) -> None:
        """Draft a chain that takes `token` after `cached[:start]`, in `branch_seq`."""
        seq = self.branch_seq
        assert seq is not None
        self.model.copy_sequence(self.seq_id, seq)
        self._branch_holds = True
        self.model.remove_from(seq, start)
        branch = _Branch(self.cached[:start], _Tip(guess=token))
        for _ in range(limit):
            if stop.is_set() or len(branch.tokens) + 1 >= self.model.n_ctx_per_seq:
                return
            self.model.decode([token], len(branch.tokens), seq, "last")
            branch.tokens.append(token)
            branch.tip = self._read_pick(branch.tokens)
            self._branch = branch  # (offered from its first evaluated token on)
            if branch.tip.guess is None or branch.tip.unsure:
                return
            token = branch.tip.guess

    def _evaluate_guess(self) -> None:
        token = self._tip.guess
        assert token is not None
        self.model.decode([token], len(self.cached), self.seq_id, "last")
        self.cached.append(token)
        self._tip.guess = None

    def _pick(self) -> bool:
        """Pick the draft model's next token after `cached` into the tip; True where it is below p_min (then
        its guess is None)."""
        self._tip = self._read_pick(self.cached)
        return self._tip.guess is None

    def _read_pick(self, chain: list[int]) -> _Tip:
        """The draft model's pick after `chain`, from its last pass."""
        return self._tip_for(chain, *best_two(self.model.logits(1)[0]))

    def _tip_for(self, chain: list[int], token: int, margin: float, runner_up: int) -> _Tip:
        """The tip of the pick `token` (its top-2 `margin`, its `runner_up`) after `chain`. A pick that ends the
        generation (or the request's text) is kept but ends the chain."""
        end = self.model.is_end_of_generation
        unsure = margin < self._min_margin
        last = end(token) or (self._ends is not None and self._ends(chain, token))
        return _Tip(
            guess=None if unsure else token,
            unsure=unsure or last,
            top=None if last else token,
            runner_up=None if end(runner_up) else runner_up,
        )


def _chain_after(
    context: list[int], cached: list[int], tip: _Tip, stops: list[int]
) -> tuple[list[int], bool] | None:
    """A chain's tokens after `context` where the chain (`cached` plus the tip's guess) starts with `context`
    (else None), and whether drafting ends after them (an unsure pick or the end of the generation)."""
    guess = tip.guess
    chain_end = len(cached) + (guess is not None)
    if not (guess is not None or tip.unsure) or not context or chain_end < len(context):
        return None
    last = guess if len(context) > len(cached) else cached[len(context) - 1]
    if last != context[-1] or cached[: len(context) - 1] != context[:-1]:
        return None
    tokens = [
        *cached[len(context) :],
        *([guess] if guess is not None and len(context) <= len(cached) else []),
    ]
    stop = next((at for at in stops if at >= len(context)), None)
    if stop is not None:
        return tokens[: stop - len(context)], True
    return tokens, tip.unsure


NGRAM_ORDERS = (2, 3, 4, 6, 8)  # n-gram lengths indexed; the longest match wins
# A slot's n-gram index is reused when the new prompt starts with this many tokens of its context (and half of
# it), and rebuilt once it holds STALE_INDEX_FACTOR times the entries a fresh index would.
MIN_REUSED_PREFIX = 64
STALE_INDEX_FACTOR = 3
SMALL_ADD = 8  # up to this many new positions are indexed one by one (more: one n-gram order at a time)


class NgramTable:
    """For every n-gram seen: the token that followed it last, and how consistently the same token followed."""

    def __init__(self, orders: tuple[int, ...] = NGRAM_ORDERS) -> None:
        self.orders = orders
        self.table: dict[
            tuple[int, ...], list[int]
        ] = {}  # n-gram -> [next token, times it followed, times seen]

    def add(self, tokens: list[int], start: int, end: int) -> None:
        """Record the continuation of every n-gram ending at positions start..end-1 (the follower at i + 1)."""
        if end - start <= SMALL_ADD:  # a generation step's new tokens: position by position costs least
            orders = self.orders
            self._update(
                (tuple(tokens[i + 1 - n : i + 1]), tokens[i + 1])
                for i in range(start, end)
                for n in orders
                if i + 1 >= n
            )
            return
        # One order at a time (n-grams of different lengths never share a key, so the table ends the same as
        # position by position), with the keys made by zip in C: an editor indexes thousands of tokens per jump.
        for n in self.orders:
            first = max(start, n - 1)  # the first position with n tokens up to it
            if first < end:
                grams = zip(*(tokens[first + 1 - n + j : end + 1 - n + j] for j in range(n)), strict=True)
                self._update(zip(grams, tokens[first + 1 : end + 1], strict=True))

    def _update(self, followed: Iterable[tuple[tuple[int, ...], int]]) -> None:
        """Record each (n-gram, the token that followed it)."""
        table = self.table
        for key, follower in followed:
            entry = table.get(key)
            if entry is None:
                table[key] = [follower, 1, 1]
            elif entry[0] == follower:
                entry[1] += 1
                entry[2] += 1
            else:  # the n-gram is ambiguous: remember the newest follower, with its weaker record
                entry[0], entry[1], entry[2] = follower, 1, entry[2] + 1

    def follower(self, keys: list[tuple[int, ...]]) -> tuple[int, int] | None:
        """(follower, n) for the longest n-gram of a tail that has a confident follower, if any; `keys` are the
        tail's n-grams, longest first (`tail_keys`: made once for every table a drafter looks in)."""
        table = self.table
        for key in keys:
            entry = table.get(key)
            # Short n-grams recur by chance in code: trust them only when they were followed consistently.
            if entry is not None and entry[1] * 2 > entry[2] and (len(key) >= 3 or entry[1] >= 2):
                return entry[0], len(key)
        return None


def tail_keys(tail: list[int], orders: tuple[int, ...] = NGRAM_ORDERS) -> list[tuple[int, ...]]:
    """The n-grams of these orders that end `tail`, longest first."""
    return [tuple(tail[-n:]) for n in reversed(orders) if n <= len(tail)]


class NgramDrafter:
    """Prompt-lookup decoding: continue the text the way the same n-grams continued before, in the context
    (prompt and generated text) or in extra token streams such as other files of the user's repository.

    Drafting goes token by token, re-matching after each drafted token, and stops where no n-gram of the
    current tail has a consistent continuation, so drafts are short where the text does not repeat itself.
    """

    def __init__(self, shared: Sequence[NgramTable] = ()) -> None:
        self._tokens: list[int] = []
        self._context = NgramTable()
        # Looked up in this order: the request's own text first, then the shared tables (the texts the request
        # offers to copy from, earlier outputs).
        self._tables = [self._context, *shared]
        self._max_n = max(NGRAM_ORDERS)
        # Part of the prompt not indexed yet (see `resuming`'s `own`), or None; and the tokens that end its n-grams.
        self._pending: range | None = None
        self._pending_ends: frozenset[int] = frozenset()
        self._proposed = False
        # A position whose n-grams wait to be indexed (`index_deferred`), or -1.
        self._deferred = -1
        # Length of the n-gram that proposed the first token of the last draft: the longer the match, the likelier
        # the draft is accepted (`estimates.match_class`).
        self.match_length = 0

    @classmethod
    def resuming(
        cls,
        index: tuple[list[int], NgramTable] | None,
        prompt: list[int],
        shared: Sequence[NgramTable] = (),
        own: range | None = None,
    ) -> NgramDrafter:
        """A drafter for `prompt` that reuses a slot's index of the previous request's context, `index`, when most
        of it is this prompt's start (an editor sends nearly the same file on every keystroke): only the rest is
        indexed, ~10 us a token in Python. N-grams of the old context past the shared prefix stay in the table;
        they can only cost a rejected draft.

        own: where nothing is reused, index only this part of the prompt (and the generated text): the rest is in
        `shared` tables already (an editor's suffix and other files' chunks, sent as lookup texts)."""
        drafter = cls(shared)
        resumed = index is not None and drafter._resume(index, prompt)
        if not resumed and own is not None:
            drafter._tokens, drafter._pending = list(prompt), own
            drafter._pending_ends = frozenset(prompt[own.start : min(own.stop, len(prompt) - 1)])
        return drafter

    def _resume(self, index: tuple[list[int], NgramTable], prompt: list[int]) -> bool:
        tokens, table = index
        shared_prefix = common_prefix_length(tokens, prompt)
        small_enough = len(table.table) <= STALE_INDEX_FACTOR * len(NGRAM_ORDERS) * len(prompt)
        if shared_prefix < max(MIN_REUSED_PREFIX, len(tokens) // 2) or not small_enough:
            return False
        self._tokens = prompt[:shared_prefix]
        self._context = self._tables[0] = table
        return True

    def index(self) -> tuple[list[int], NgramTable]:
        """The context indexed so far and its table, for `resuming` by the slot's next request (no context where
        the prompt's own part was never indexed: a request that made no proposal)."""
        self.index_deferred()
        return ([] if self._pending is not None else self._tokens), self._context

    def index_deferred(self) -> None:
        """Index the position a one-token proposal left for later (see `propose`): a step calls it while its target
        pass runs, which on a GPU takes it off the time between passes."""
        if self._deferred >= 0:
            at, self._deferred = self._deferred, -1
            self._context.add(self._tokens, at, at + 1)

    def has_pending(self, proposed_only: bool = False) -> bool:
        """Whether `index_pending` would index anything."""
        return self._pending is not None and (self._proposed or not proposed_only)

    def index_pending(self, proposed_only: bool = False) -> bool:
        """Index the part of the prompt left unindexed, if any (proposed_only: only where a proposal was made
        without it); whether it did. A step calls it while its target pass runs (on a GPU on another thread, beside
        the pass's launch): an infill prompt's first proposal, whose tail is the FIM middle token, cannot use that
        part, so planning that step does not wait for it."""
        pending = self._pending
        if pending is None or not self.has_pending(proposed_only):
            return False
        self._context.add(self._tokens, pending.start, min(pending.stop, len(self._tokens) - 1))
        self._pending, self._pending_ends = None, frozenset()
        return True

    def propose(self, context: list[int], k: int) -> list[int]:
        self.match_length = 0
        if k <= 0:
            return []
        self._proposed = True
        if len(context) > len(self._tokens):  # (the prompt's own part comes before what was generated)
            self.index_pending()
        self.index_deferred()
        # A generation's context only grows, so only its new tail needs indexing.
        indexed = max(0, len(self._tokens) - 1)
        tokens = self._tokens
        tokens.extend(context[len(tokens) :])
        # After one new token, a one-token proposal looks up n-grams that end at the last token; the position
        # before it ends one of them only where the two last tokens are the same. Elsewhere its indexing waits
        # for `index_deferred`, and the proposal is the same.
        if k == 1 and len(tokens) - 1 - indexed == 1 and tokens[-1] != tokens[-2]:
            self._deferred = indexed
        else:
            self._context.add(tokens, indexed, len(tokens) - 1)
        tail = tokens[-self._max_n :]
        drafts: list[int] = []
        while len(drafts) < k:
            # The unindexed part can answer only a tail that ends with one of its tokens: index it first then.
            if self._pending_ends and tail[-1] in self._pending_ends:
                self.index_pending()
            found = None
            keys = tail_keys(tail)
            for table in self._tables:
                if (found := table.follower(keys)) is not None:
                    break
            if found is None:
                break
            token, n = found
            if not drafts:
                self.match_length = n
            drafts.append(token)
            tail = [*tail[1:], token] if len(tail) >= self._max_n else [*tail, token]
        return drafts


class NgramHistory:
    """N-grams of the session's earlier outputs, shared by later requests: code the model wrote once (names,
    idioms, a function it is now asked to change) tends to come back (llama.cpp's dynamic lookup cache does the
    same). Bounded to the most recent `max_tokens` tokens; outputs only, so long prompts sent again and again (an
    editor's context) do not crowd it.
    """

    def __init__(self, max_tokens: int = 16384) -> None:
        self.max_tokens = max_tokens
        self.table = NgramTable()
        self._texts: deque[list[int]] = deque()
        self._size = 0

    def add(self, tokens: list[int]) -> None:
        if len(tokens) < 2 or self.max_tokens <= 0:
            return
        tokens = tokens[-self.max_tokens :]
        self._texts.append(tokens)
        self._size += len(tokens)
        if self._size <= 2 * self.max_tokens:
            self.table.add(tokens, 0, len(tokens) - 1)
            return
        # Rebuilt from the most recent texts only now and then, so indexing stays cheap on average.
        while self._size > self.max_tokens:
            self._size -= len(self._texts.popleft())
        self.table = NgramTable()
        for text in self._texts:
            self.table.add(text, 0, len(text) - 1)

    @property
    def size(self) -> int:
        """Tokens indexed now."""
        return self._size

    def clear(self) -> None:
        self.table = NgramTable()
        self._texts.clear()
        self._size = 0
