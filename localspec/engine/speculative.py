"""The speculative decoding loop for one request.

State between steps: the target's KV holds `committed`; `pending` is the latest settled token, not yet evaluated.
A step drafts d1..dk after committed + [pending], evaluates [pending, d1..dk] in ONE target batch, and walks the
rows: row i holds the target's distribution after d_i. The target's own pick at row i is kept; while it equals
d_(i+1) the walk goes on. So every output token is the target's choice, and a step settles accepted + 1 tokens.

Numerics: a batched pass runs other kernels than a one-token pass, so logits differ in the last bits and a
near-tie can flip. Where the greedy top-2 margin at a row is below `tie_margin`, that position is re-evaluated
alone (as the target alone would evaluate it) before its token is taken.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import replace
from functools import partial

from localspec.engine.chooser import AdaptiveChooser, Plan, StepSite
from localspec.engine.drafters import DraftModelDrafter, NgramDrafter, NgramTable
from localspec.engine.llama_model import DecodeAborted, LlamaModel
from localspec.engine.prefix_cache import SlotState, common_prefix_length, trim_to_prefix
from localspec.engine.prompt_chunks import PromptChunks
from localspec.engine.sampling import TokenPicker
from localspec.engine.text_stream import EndWatch, TextStream
from localspec.engine.types import (
    DraftSource,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    RequestStats,
    StepEvent,
    StepRecord,
)


class Generation:
    """Iterate for StepEvents; `result` is set once finished. Call `close()` to release the slot early."""

    def __init__(
        self,
        request: GenerationRequest,
        prompt: list[int],
        target: LlamaModel,
        draft: LlamaModel | None,
        slot: SlotState,
        chooser: AdaptiveChooser,
        tie_margin: float,
        draft_p_min: float,
        lookup_tables: list[NgramTable],
        shared_ngrams: list[NgramTable],
        stats: RequestStats,
        on_finish: Callable[[Generation], None] | None = None,
        prompt_chunks: PromptChunks | None = None,
        ahead: Executor | None = None,
        branch_seq: int | None = None,
        own_text: range | None = None,
        indexer: Executor | None = None,
        prefill_draft: bool = False,
        plan_ahead: bool = False,
    ) -> None:
        """ahead: a thread on which the draft model drafts the next step while the target verifies this one
        (`DraftModelDrafter.run_ahead`), or None; branch_seq: the draft model's sequence for a second chain;
        own_text: the part of the prompt that is not in `lookup_tables` (see `NgramDrafter.resuming`);
        indexer: a thread on which that part's n-grams are indexed while the target's pass is launched, or None
        (then they are indexed after the launch, before waiting for the pass); prompt_chunks: the chunk size of a
        request that gives way (else the target's batch size), taught by this one's chunks; prefill_draft: a prefill
        (max_tokens 0) has the draft model read the prompt too, in chunks after the target's (see `Engine`);
        plan_ahead: a one-token pass works out the next plan's n-gram prices while it runs
        (`AdaptiveChooser.prepare`; where the target's passes return before they are done, on a GPU)."""
        self.request = request
        self.target = target
        self.slot = slot
        self.chooser = chooser
        self.tie_margin = tie_margin
        self.stats = stats
        self._on_finish = on_finish
        self._started = time.perf_counter()
        self._stream = TextStream(request.stop, request.end_rule)
        self._output: list[int] = []
        self.result: GenerationResult | None = None
        # Where drafts would end the text (a stop string, an end rule), drafting stops.
        self._end_watch = (
            EndWatch(self._stream, self._output, len(prompt), target.piece) if self._stream.can_stop else None
        )
        self._draft = (
            DraftModelDrafter(
                draft,
                slot.seq_id,
                slot.draft_tokens,
                draft_p_min,
                costs=chooser.costs,
                branch_seq=branch_seq if ahead is not None else None,
                ends=self._end_watch.ends if self._end_watch is not None else None,
            )
            if draft
            else None
        )
        # The request's own text first, then the texts it offers to copy from, then earlier outputs.
        self._ngram = NgramDrafter.resuming(
            slot.ngram_index, prompt, [*lookup_tables, *shared_ngrams], own_text
        )
        # The prompt except its last token is evaluated first, reusing the slot's cached prefix, in chunks of at most
        # `_chunk_size()` tokens, one per step, so a more urgent request can run between two chunks; the last chunk
        # goes into the first step's pass. The prompt's last token is the first `pending`, so prompt and
        # generation share one code path.
        started = time.perf_counter()
        self.stats.cached_tokens = trim_to_prefix(
            target, slot.seq_id, slot.target_tokens, prompt[:-1], "none"
        )
        self.stats.t_prompt = time.perf_counter() - started
        self._unevaluated = prompt[self.stats.cached_tokens : -1]
        self._chunks = prompt_chunks
        self._yielding = False  # a prompt chunk's pass runs: it stops for a more urgent request
        # The last chunk's pass stopped for a more urgent request: the next one does not (no starving by a stream).
        self._just_gave_way = False
        self._committed = slot.target_tokens  # same list: the slot always knows what its KV holds
        self._context = [*prompt]  # committed + [pending], kept incrementally (drafters read it every step)
        self._pending = prompt[-1]
        self._picker = TokenPicker(target, request.sampling, prompt)
        self._ahead = ahead if self._draft is not None else None
        self._indexer = indexer
        self._used_draft_model = False  # whether a step of this request drafted with the draft model
        self._last_source: DraftSource = "none"  # the last step's source
        self._draft_reads = prefill_draft and self._draft is not None and request.max_tokens == 0
        self._plan_ahead = plan_ahead and chooser.mode == "adaptive"

    def __iter__(self) -> Iterator[StepEvent]:
        while (event := self.step()) is not None:
            yield event

    @property
    def finished(self) -> bool:
        return self.result is not None

    # ---- one step ---------------------------------------------------------------------------------------------

    def step(self) -> StepEvent | None:
        if self.result is not None:
            return None
        if self.request.cancel.cancelled:
            return self._final_event(self._finish("cancelled"))
        # A cancel that arrives during this step's passes stops them where llama.cpp can (on a CPU), as does a more
        # urgent request arriving during a pass over a chunk of the prompt (`_prefill_step`).
        models = [self.target, *([self._draft.model] if self._draft is not None else [])]
        for model in models:
            model.abort_check = self._should_stop
        try:
            return self._step()
        except DecodeAborted:  # (the model dropped what the stopped pass wrote: the slot holds `committed`)
            if self.request.cancel.cancelled:
                return self._final_event(self._finish("cancelled"))
            self.stats.gave_way += 1
            self._just_gave_way = True
            return _settled_nothing()
        finally:
            for model in models:
                model.abort_check = None

    def _should_stop(self) -> bool:
        give_way = self.request.give_way
        yielding = self._yielding and not self._just_gave_way
        return self.request.cancel.cancelled or (yielding and give_way is not None and give_way())

    def _step(self) -> StepEvent | None:
        """One step: a chunk of the prompt, or a plan (`_plan`), its drafts, the target's pass over them
        (`_verify`), the target's own tokens along its rows (`_walk`), and what it settled kept and counted."""
        remaining = self.request.max_tokens - len(self._output)
        most_drafts = self.request.draft_max if self.request.draft_max is not None else self.chooser.draft_max
        # The prompt's last chunk is evaluated in the first step's pass, which saves a pass per request.
        if self._unevaluated and (
            remaining <= 0 or len(self._unevaluated) + 1 + most_drafts > self._chunk_size()
        ):
            return self._prefill_step()
        if self._draft_reads:
            return self._draft_prefill_step()
        fold = self._unevaluated
        self._unevaluated = []
        room = self.target.n_ctx_per_seq - len(self._committed) - len(fold) - 1
        if remaining <= 0 or room <= 0:
            return self._final_event(self._finish("length"))
        budget = min(remaining - 1, room - 1, most_drafts)
        context = self._context
        drafter = self._draft if self.chooser.mode == "adaptive" else None
        site = StepSite(
            previous=self.target.last_pass_size,
            streak=self.target.pass_streak,
            draft_backlog=drafter.backlog(context) if drafter is not None else 1,
            remaining=remaining,
            draft_ready=drafter.ready(context) if drafter is not None and self._ahead is not None else 0,
            depth=len(self._committed),
        )
        planning = time.perf_counter()
        plan, ngram = self._plan(context, budget, site)
        self.stats.t_plan += time.perf_counter() - planning
        source: DraftSource = plan.source
        ahead_before = self._draft.drafted_ahead if self._draft is not None else 0
        started = time.perf_counter()
        pass_size = plan.pass_size
        after_drafts: int | None = None  # the n-gram proposal's token past the drafts, if it went on
        if source == "draft" and self._draft is not None:
            drafts = self._draft.propose(context, plan.k)
            pass_size = max(pass_size, self.chooser.padded_size(len(drafts) + 1, site, most_drafts + 1))
        elif source == "ngram":
            drafts = ngram[: plan.k]
            after_drafts = ngram[plan.k] if len(ngram) > plan.k else None
        else:
            source, drafts = "none", []
        t_draft = time.perf_counter() - started

        # CPU work done while the pass runs. After a one-token pass the next step sits at a known site: its n-gram
        # prices can be worked out. Beside a draft-model step, the n-gram drafts it did not use are proposed (their
        # acceptance is learnt from the target's picks too: `AdaptiveChooser.record_ngrams_beside`).
        meanwhile: Callable[[], object] | None = None
        beside: list[int] = []
        if self._plan_ahead and not drafts and not fold and pass_size <= 1:
            next_site = StepSite(
                previous=1,
                streak=self.target.streak_after(1),
                remaining=remaining - 1,
                depth=len(self._committed) + 1,
            )
            meanwhile = partial(self.chooser.prepare, min(remaining - 2, room - 2, most_drafts), next_site)
        elif source == "draft" and self.chooser.mode == "adaptive":

            def propose_beside() -> None:
                # (not cut where the text would end: the drafting ahead uses that watch meanwhile)
                beside.extend(self._ngram.propose(context, budget))

            meanwhile = propose_beside
        n_rows, indexed, t_verify = self._verify(
            fold, drafts, pass_size, context, source, most_drafts + 1, meanwhile
        )
        base = len(self._committed)
        started = time.perf_counter()
        settled, t_settle = self._walk(base, drafts, n_rows)
        accepted = len(settled) - 1
        # Keep [pending, d1..d_accepted] in the KV (unless a settle already trimmed it) and drop the rest, if the
        # pass wrote more (a one-token pass did not, and on a fast GPU every call between passes counts).
        if 1 + accepted < n_rows:
            self.target.remove_from(self.slot.seq_id, base + 1 + accepted)
        self._committed.extend([self._pending, *drafts[:accepted]])
        self._context.extend([*drafts[:accepted], settled[-1]])
        self._pending = settled[-1]
        t_sample = time.perf_counter() - started - t_settle

        # (what the plan expected, for traces: before this step's outcome moves the rates it was read from)
        expected = self.chooser.expected() if self.request.record_steps else None
        if beside:  # (`match_length` is still the proposal's: nothing proposed since)
            known = min(len(beside), len(settled))
            self.chooser.record_ngrams_beside(
                known, common_prefix_length(beside, settled), self._ngram.match_length
            )
        self.chooser.record(
            source,
            len(drafts),
            accepted,
            t_verify,
            # A pass that finished the prompt, or ran beside the prompt's indexing, says nothing about verify costs.
            0 if fold or indexed else n_rows,
            self._ngram.match_length,
            warm=n_rows == site.previous and site.streak >= 2,
            capture=n_rows == site.previous and site.streak == 1,
            depth=base,
            ngram_next=None if after_drafts is None else after_drafts == settled[-1],
        )
        t_verify += t_settle
        stats = self.stats
        stats.drafted += len(drafts)
        stats.accepted += accepted
        stats.drafted_ahead = self._draft.drafted_ahead if self._draft is not None else 0
        stats.second_chains = self._draft.second_chains if self._draft is not None else 0
        if self.request.record_steps:
            capture = self.chooser.capture_priced
            stats.steps.append(
                StepRecord(
                    source,
                    len(drafts),
                    accepted,
                    stats.drafted_ahead - ahead_before,
                    len(fold) + n_rows,
                    round(t_draft * 1000, 3),
                    round(t_verify * 1000, 3),
                    site.draft_ready,
                    {name: round(rate, 1) for name, rate in self.chooser.priced.items()},
                    None if capture is None else round(capture[0] * 1000, 3),
                    None if capture is None else round(capture[1], 2),
                    None if expected is None else round(expected, 2),
                    self._ngram.match_length if source == "ngram" else 0,
                    site.depth,
                )
            )
        self._last_source = source
        stats.target_passes += 1
        stats.steps_by_source[source] += 1
        stats.t_draft += t_draft
        if fold:
            stats.t_prompt += t_verify
        else:
            stats.t_verify += t_verify
        stats.t_sample += t_sample
        return self._emit(settled, len(drafts), accepted, source)

    def _verify(
        self,
        fold: list[int],
        drafts: list[int],
        pass_size: int,
        context: list[int],
        source: DraftSource,
        limit: int,
        meanwhile: Callable[[], object] | None = None,
    ) -> tuple[int, bool, float]:
        """The target's pass over [pending, *drafts] (after `fold`, the prompt's last chunk), padded to `pass_size`
        where there is no fold; returns its logit rows, whether the prompt's own n-grams were indexed meanwhile,
        and its seconds. The draft model drafts on from these drafts during it (`_start_ahead`), and this thread
        does `meanwhile`'s work, if any."""
        started = time.perf_counter()
        tokens = [self._pending, *drafts]
        if pass_size > len(tokens) and not fold:  # padded to the previous pass's size (warm on a GPU)
            room_left = self.target.n_ctx_per_seq - len(self._committed)
            tokens += [tokens[-1]] * (min(pass_size, room_left) - len(tokens))
        ahead = self._start_ahead(context, drafts, source, limit)
        # The prompt's own n-grams, where a proposal was made without them: on the indexer's thread while this
        # thread launches the pass (ctypes lets go of the GIL during the call), else after the launch, before waiting
        # (as is the position a one-token proposal left unindexed).
        indexer = self._indexer if self._ngram.has_pending(proposed_only=True) else None
        indexing = indexer.submit(self._ngram.index_pending, True) if indexer is not None else None
        indexed = False
        try:
            n_rows = self.target.decode([*fold, *tokens], len(self._committed), self.slot.seq_id, len(tokens))
            self._committed.extend(fold)
            if indexing is None:  # (else the next proposal indexes it: one thread writes the table at a time)
                indexed = self._ngram.index_pending(proposed_only=True)
                self._ngram.index_deferred()
            elif meanwhile is not None:  # (it may propose n-grams, which writes the table)
                indexed, indexing = indexing.result(), None
            if meanwhile is not None:
                meanwhile()
            self.target.synchronize()
        finally:
            if ahead is not None:
                ahead[1].set()
                ahead[0].result()  # (waits for the draft token in flight, if any)
            if indexing is not None:
                indexed = indexing.result()
        return n_rows, indexed, time.perf_counter() - started

    def _walk(self, base: int, drafts: list[int], n_rows: int) -> tuple[list[int], float]:
        """The target's own tokens along the pass's rows: each row's pick, up to the first that differs from the
        draft after it (or a near-tie, settled in a one-token pass of its own). Returns them and the settles'
        seconds."""
        settled: list[int] = []
        t_settle = 0.0
        # Margins decide near-ties in batched passes; a one-token pass needs one only when the request records them.
        want_margin = n_rows > 1 or self.request.record_margins
        for row in range(len(drafts) + 1):
            token, margin = self._picker.pick(
                row, n_rows, want_margin, drafts[row] if row < len(drafts) else None
            )
            near_tie = n_rows > 1 and margin < self.tie_margin
            if near_tie:  # the walk ends here: later rows were computed after a token that may change
                token, margin, t_settle = self._settle_alone(base, drafts, row)
            settled.append(token)
            if self.request.record_margins:
                self.stats.margins.append(margin)
            if near_tie or row >= len(drafts) or token != drafts[row]:
                break
        return settled, t_settle

    def _start_ahead(
        self, context: list[int], drafts: list[int], source: DraftSource, limit: int
    ) -> tuple[Future[None], threading.Event] | None:
        """Let the draft model draft on from this step's drafts while the target verifies them; set the event
        to stop it. After n-gram drafts it first reads them, where this request has used the draft model (a
        request that never does, as with a draft model that costs too much to pay, leaves it idle)."""
        if self._ahead is None or self._draft is None or not drafts:
            return None
        if source == "draft":
            self._used_draft_model = True
            stop = threading.Event()
            return self._ahead.submit(self._draft.run_ahead, limit, stop), stop
        if source == "ngram" and self._used_draft_model:
            stop = threading.Event()
            return self._ahead.submit(self._draft.run_ahead_from, [*context, *drafts], limit, stop), stop
        return None

    def _prefill_step(self) -> StepEvent:
        """Evaluate the next chunk of the prompt (no token is settled); its pass gives way to a more urgent
        request (`GenerationRequest.give_way`)."""
        started = time.perf_counter()
        chunk = self._unevaluated[: self._chunk_size()]
        self._yielding = True
        try:
            self.target.decode(chunk, len(self._committed), self.slot.seq_id, "none")
        finally:
            self._yielding = False
        self._just_gave_way = False
        self._committed.extend(chunk)
        del self._unevaluated[: len(chunk)]
        self.target.synchronize()
        seconds = time.perf_counter() - started
        self.stats.t_prompt += seconds
        if self._chunks is not None:
            self._chunks.record(len(chunk), seconds)
        return _settled_nothing()

    def _chunk_size(self) -> int:
        return self._chunks.size if self._chunks is not None else self.target.n_batch

    def _draft_prefill_step(self) -> StepEvent:
        """A prefill's next chunk for the draft model: the prompt the target has evaluated (no token is settled)."""
        assert self._draft is not None
        started = time.perf_counter()
        self._draft_reads = self._draft.read(self._committed, self._chunk_size())
        self.stats.t_draft += time.perf_counter() - started
        return _settled_nothing()

    def _plan(
        self,
        context: list[int],
        budget: int,
        site: StepSite,
    ) -> tuple[Plan, list[int]]:
        """The chooser's plan and the n-gram proposal it may use. Where the draft model has drafts ready for this
        context, the proposal ends where it first disagrees with them: past there at most one of the two is right,
        and it is nearly always the draft model (docs/BENCHMARKS.md), while a long proposal that goes wrong early
        is the costliest n-gram step. Where the draft model drafts ahead, right after a draft-model step with
        nothing drafted ahead (a draft was rejected) an n-gram plan first has the draft model make its first draft,
        to cut the proposal against."""
        ready = self._draft.ready_drafts(context) if site.draft_ready and self._draft is not None else []

        def propose(k: int) -> tuple[list[int], int]:
            drafts = self._ngram.propose(context, k)
            if self._end_watch is not None:
                drafts = self._end_watch.cut(context, drafts)
            agreed = common_prefix_length(drafts, ready)
            if agreed < min(len(drafts), len(ready)):  # (they part: past that, the draft model's drafts win)
                drafts = drafts[:agreed]
            return drafts, self._ngram.match_length

        plan, ngram = self.chooser.plan_with_ngrams(budget, propose, site)
        if (
            plan.source != "ngram"
            or ready
            or self._ahead is None
            or self._draft is None
            or self._last_source != "draft"
        ):
            return plan, ngram
        # (the text just went where the draft model did not, and an n-gram proposal there that parts from the draft
        # model's next pick was wrong at once at every such step measured; a draft-model step would make it anyway.
        # Only where the draft model drafts ahead, on a GPU: elsewhere nothing is ever ready after a draft-model
        # step, and on a CPU a draft token costs half a target token)
        ready = self._draft.propose(context, 1)
        if not ready:
            return plan, ngram
        return self.chooser.plan_with_ngrams(budget, propose, replace(site, draft_ready=len(ready)))

    def _settle_alone(self, base: int, drafts: list[int], row: int) -> tuple[int, float, float]:
        """Re-evaluate the input token of `row` in a one-token pass and take the target-alone choice there."""
        started = time.perf_counter()
        position = base + row
        token_in = self._pending if row == 0 else drafts[row - 1]
        self.target.remove_from(self.slot.seq_id, position)
        self.target.decode([token_in], position, self.slot.seq_id, "all")
        token, margin = self._picker.pick(0, 1, self.request.record_margins)
        self.stats.settled_near_ties += 1
        return token, margin, time.perf_counter() - started

    def _emit(self, settled: list[int], drafted: int, accepted: int, source: DraftSource) -> StepEvent:
        text_from_drafts = ""
        text = ""
        finish: FinishReason | None = None
        emitted = 0
        for index, token in enumerate(settled):
            self.stats.settled += 1
            if self.target.is_end_of_generation(token):
                finish = "stop"
                break
            self._output.append(token)
            emitted += 1
            text += self._stream.push(self.target.piece(token))
            if index < accepted:
                text_from_drafts = text
            if self._stream.stopped:
                finish = "stop"
                break
            if len(self._output) >= self.request.max_tokens:
                finish = "length"
                break
        event = StepEvent(
            text=text,
            tokens=emitted,
            drafted=drafted,
            accepted=accepted,
            source=source,
            drafted_chars=len(text_from_drafts),
        )
        self.stats.tokens = len(self._output)
        if finish is not None:
            event.text += self._finish(finish)
        return event

    @staticmethod
    def _final_event(tail: str) -> StepEvent | None:
        return _settled_nothing(tail) if tail else None

    def _finish(self, reason: FinishReason) -> str:
        """Record the result, release the slot, and return the text held back until now (if any)."""
        tail = self._stream.finish()
        self.stats.tokens = len(self._output)
        self.stats.t_total = time.perf_counter() - self._started
        self.result = GenerationResult(self._stream.text, list(self._output), reason, self.stats)
        self.close()
        return tail

    def close(self) -> None:
        """Release the slot (the KV stays cached for the next request with the same prefix)."""
        if self.result is None:
            self.stats.t_total = time.perf_counter() - self._started
            self.result = GenerationResult(self._stream.text, list(self._output), "cancelled", self.stats)
        if self.slot.busy:
            if self._draft is not None:
                self._draft.close()
            tokens, table = self._ngram.index()
            if tokens:  # (a request in a mode without n-grams indexes nothing; keep what the slot had)
                self.slot.ngram_index = (tokens, table)
            self.slot.release()
            self._picker.close()
            if self._on_finish is not None:
                self._on_finish(self)


def _settled_nothing(text: str = "") -> StepEvent:
    """A step that settled no token (a prompt chunk, a pass that gave way), or the text held back until the end."""
    return StepEvent(text=text, tokens=0, drafted=0, accepted=0, source="none")
