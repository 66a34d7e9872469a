"""The adaptive chooser: each step, the draft source and length with the best expected tokens per second.

A source's i-th drafted token is accepted with probability a_i once the ones before it were (`estimates`), so k
drafts settle E(k) = 1 + a_1 + a_1 a_2 + ... tokens per target pass. A step costs k draft tokens plus a verify pass
of k + 1 tokens, priced by `pass_costs` for this machine (warm or cold, see there), plus a share of the draft
model's catch-up. The target alone (one-token passes) is the yardstick: speculation backs off where it does not pay.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from localspec.engine.estimates import MATCH_CLASSES, POSITIONS, Ewma, PositionalAcceptance, match_class
from localspec.engine.pass_costs import PassCosts
from localspec.engine.types import DraftSource, SpeculativeMode

PROBE_EVERY = 24  # steps between re-tries of a source that currently looks unprofitable
OPTIMISTIC_ACCEPTANCE = 0.95
PRIOR_ACCEPTANCE = 0.85
PROBE_MARGIN = 1.1  # a probe must promise this much over the target alone to be worth its cost
# A draft-model step that drafted nothing (the draft model unsure at its first pick) taught nothing of its
# acceptance: the draft model is tried again after this many steps, not PROBE_EVERY.
PROBE_AGAIN_AFTER = 4
RETIME_EVERY = 2 * PROBE_EVERY  # steps between one-token passes that re-time the target alone
# ... this many times as many while another source promises WIDE_MARGIN times the target alone's rate or more
# and the last re-timing cost what its price said, within CONFIRMED.
RARE_RETIME_FACTOR, WIDE_MARGIN, CONFIRMED = 4, 1.5, 0.15
LONG_RUN_WEIGHT = 0.05  # weight of one outcome in the n-gram acceptance carried from request to request
# Draft-model steps take the longest draft length whose expected rate is within this share of the best: past the
# best length the estimate is pessimistic (the draft model stops by itself where it is unsure, so the drafts it
# makes beyond are the sure ones), and the rate is flat there where a longer verify pass costs little more.
LENGTH_SLACK = 0.1
# Where the draft model's best draft promised under REST_MARGIN of the target alone's rate (and a due probe was not
# worth it), it is not priced again for up to REST_STEPS steps while one-token passes go on: nothing it is priced
# by improves meanwhile (its acceptance and prices move only with its own steps, the catch-up it would need grows:
# a shorter one ends the rest), and pricing every draft length of it (and its probe) was most of a one-token step's
# planning.
REST_MARGIN, REST_STEPS = 0.8, 32
# Tokens a run of steps is assumed to settle until runs are measured. What a run pays once is spread over the
# tokens such runs settle: the draft model's catch-up over a run of draft-model steps, the return to one-token
# passes (cold, then a CUDA graph capture) over a run of speculative steps.
PRIOR_RUN = 64
# Replays of a CUDA graph that follow its capture (passes of the same size after it, on a GPU), until counted: what
# keeping a draft-model step's pass size is expected to buy (`AdaptiveChooser._capture_price`).
PRIOR_REPLAYS = 2.0


def expected_tokens(acceptance: list[float]) -> float:
    """Tokens a step drafting len(acceptance) tokens settles on average: 1 + a_1 + a_1 a_2 + ... (module docstring)."""
    expected = survive = 1.0
    for accept in acceptance:
        survive *= accept
        expected += survive
    return expected


@dataclass(frozen=True)
class StepSite:
    """Where a step's target pass sits, as the chooser prices it.

    previous: tokens in the target's last pass (0: a pass of another kind, such as a prompt); streak: passes in a
    row of that size; draft_backlog: tokens the draft model must read before it can draft (1 while it keeps up);
    remaining: tokens the request may still generate (None: unknown); draft_ready: drafts the draft model has
    already made for this context; depth: tokens the target's sequence holds before the pass (a deeper pass
    costs more per token)."""

    previous: int = 0
    streak: int = 2
    draft_backlog: int = 1
    remaining: int | None = None
    draft_ready: int = 0
    depth: int = 0


class RunLength:
    """Tokens settled by runs of consecutive steps of one kind: the current run's, and their usual number."""

    def __init__(self) -> None:
        self.current = 0
        self.usual = Ewma(PRIOR_RUN, weight=0.3)

    def extend(self, tokens: int) -> None:
        self.current += tokens

    def end(self) -> None:
        if self.current:
            self.usual.add(self.current)
            self.current = 0

    def horizon(self, remaining: int | None) -> float:
        """Tokens a run starting now is expected to settle (no more than the request may still generate)."""
        usual = self.usual.value
        return max(1.0, usual if remaining is None else min(remaining, usual))


@dataclass
class _Prepared:
    """n-gram prices worked out ahead for the next step (`AdaptiveChooser.prepare`), and what they were read from."""

    key: tuple[int, int, float, int]  # draft length limit, depth, switch horizon, `PassCosts.cold_version`
    switch: float  # `PassCosts.switch_cost()` then
    cheapest: float  # the cheapest pass priced
    # By match class: the acceptance read, and `_best_length`'s answer.
    by_class: dict[str, tuple[list[float], tuple[int, float, int]]]


@dataclass
class Plan:
    source: DraftSource
    k: int
    pass_size: int = 0  # 0, or pad the pass to this size (the previous pass's: warm on a GPU)


class AdaptiveChooser:
    def __init__(
        self,
        mode: SpeculativeMode,
        draft_max: int,
        has_draft_model: bool,
        costs: PassCosts | None = None,
    ) -> None:
        self.mode = mode
        self.draft_max = draft_max
        self.has_draft_model = has_draft_model
        # Acceptance per drafted token. The priors are hopeful so that each source gets tried; measurements
        # replace them within a few steps.
        self.draft_acceptance = PositionalAcceptance(PRIOR_ACCEPTANCE)
        # n-gram acceptance per match class: for this request, and a slow average over this client's requests.
        self._ngram_long_run = {
            name: PositionalAcceptance(PRIOR_ACCEPTANCE, weight=LONG_RUN_WEIGHT) for name in MATCH_CLASSES
        }
        self.ngram_acceptance = {name: PositionalAcceptance(PRIOR_ACCEPTANCE) for name in MATCH_CLASSES}
        self.costs = costs if costs is not None else PassCosts()
        self._since_tried = {"draft": 0, "ngram": 0, "none": 0}
        # Runs of consecutive draft-model steps, and of steps with drafts (between two one-token passes).
        self._draft_run = RunLength()
        self._speculative_run = RunLength()
        # Whether the last re-timing of the target alone cost what its price said: only then may re-timings become
        # rare (a price timed wrong at start-up is corrected at the usual pace).
        self._alone_confirmed = False
        self.draft_rest = 0  # one-token steps left before the draft model is priced again (see REST_MARGIN)
        self._rest_backlog = 0  # the catch-up it was priced with (one it would need less of ends the rest)
        # The last plan's expected tokens per second of each source it priced (`StepRecord.priced`, for traces).
        self.priced: dict[DraftSource, float] = {}
        # The price (seconds) last worked out for a pass repeating the one before's size as a CUDA graph capture, net
        # of the replays expected after it, and those replays: by the last plan, or by `padded_size` after it where
        # that priced the padding (`StepRecord.capture_ms`, for traces); None: the last plan priced none.
        self.capture_priced: tuple[float, float] | None = None
        # The last plan and the n-gram match it was made with, in `adaptive` (`expected`, for traces).
        self._last_plan: tuple[Plan, int] | None = None
        self._prepared: _Prepared | None = None
        # Replays after each capture of a pass of more than one token; the current run's size and passes (0: none).
        self._replays = Ewma(PRIOR_REPLAYS, weight=0.3)
        self._run_size = self._run_passes = 0

    def start_request(self) -> None:
        """Whether the text repeats itself is a property of each request: n-gram acceptance starts again from the
        slow average over this client's requests, and moves fast. The draft model's acceptance and the measured
        costs carry over (they describe the model pair). A request starts with the draft model's probe due: a new
        text may suit it where the last one did not, and a probe is made only where a nearly perfect draft pays."""
        self.ngram_acceptance = {
            name: PositionalAcceptance([rate.value for rate in long_run.rates])
            for name, long_run in self._ngram_long_run.items()
        }
        self._since_tried["ngram"] = 0
        self._since_tried["draft"] = max(self._since_tried["draft"], PROBE_EVERY)
        self.draft_rest = 0
        self._prepared = None
        self._draft_run.end()
        self._speculative_run.end()
        self._count_replays(0, 0)  # (the prompt's pass ends any run of replays)

    # ---- planning ---------------------------------------------------------------------------------------------

    def _alone_rate(self, depth: int) -> float:
        # In the long run the target alone's one-token passes follow one-token passes: the warm price.
        return 1.0 / self.costs.verify(1, warm=True, depth=depth)

    def _best_length(
        self,
        rates: PositionalAcceptance,
        site: StepSite,
        *,
        limit: int,
        per_draft_token: float = 0.0,
        acceptance: float | None = None,
        one_off: float = 0.0,
        horizon: float = 1.0,
        switch_horizon: float = 1.0,
        after_draft: bool = False,
        free_drafts: int = 0,
        slack: float = 0.0,
        capture_credit: bool = False,
    ) -> tuple[int, float, int]:
        """The draft length in 1..limit with the best expected tokens per second, that rate, and the pass size to
        pad to (0: none; the previous pass's size when padding pays, a pass of the same size being warm).

        site: where the pass sits (its previous pass size, streak and depth; see `StepSite`). acceptance: one
        rate for every position instead of `rates`. one_off: seconds paid once for a run of such steps expected
        to settle `horizon` tokens (the draft model's catch-up), of which a step bears its share. Leaving
        one-token passes is paid so too, once for a run of speculative steps expected to settle `switch_horizon`
        tokens (the two one-token passes after the run, cold and capture). after_draft: the
        pass follows draft-model passes and is priced as such. free_drafts: drafts already made (the draft model
        drafted them ahead): only the ones beyond cost per_draft_token.
        slack: take the longest length whose rate is within this share of the best (the best rate is returned).
        capture_credit: a pass of the previous size after one such pass (a CUDA graph capture) is priced net of the
        replays expected after it, within the steps left in a run of `horizon` tokens (`_capture_price`).
        """
        costs = self.costs
        previous, streak, depth = site.previous, site.streak, site.depth
        switch = costs.switch_cost() if previous == 1 else 0.0
        capture_size = previous if capture_credit and streak == 1 and previous > 1 else 0
        best_k, best_rate, best_size = 0, 0.0, 0
        expected = survive = 1.0
        by_length = []
        verify_prices = costs.sequence_prices(range(2, limit + 2), previous, streak, after_draft, depth)
        acceptances = [acceptance] * limit if acceptance is not None else rates.first(limit)
        for k, (accept, verify) in enumerate(zip(acceptances, verify_prices, strict=True), 1):
            survive *= accept
            expected += survive
            # (`x * min(1, expected / h)` and `max(0, k - free_drafts)` written out: this loop runs for every
            # draft length of every source at every step, and the calls were a third of its time)
            share = one_off if expected >= horizon else one_off * (expected / horizon)
            if switch:
                share += switch if expected >= switch_horizon else switch * (expected / switch_horizon)
            drafting = (k - free_drafts) * per_draft_token if k > free_drafts else 0.0
            if k + 1 == capture_size:
                verify = self._capture_price(capture_size, site, after_draft, horizon / expected - 1)
            step = verify + drafting + share
            rate = expected / step
            by_length.append(rate)
            if rate > best_rate:
                best_k, best_rate, best_size = k, rate, 0
        if slack and best_k:
            best_k = max(k for k, rate in enumerate(by_length, 1) if rate >= (1 - slack) * best_rate)
        if limit + 1 < previous <= self.draft_max + 1 and limit:
            share = one_off * min(1.0, expected / horizon)
            verify = (
                self._capture_price(previous, site, after_draft, horizon / expected - 1)
                if capture_size
                else costs.in_sequence(previous, previous, streak, after_draft, depth)
            )
            padded = expected / (verify + max(0, limit - free_drafts) * per_draft_token + share)
            if padded > best_rate:
                best_k, best_rate, best_size = limit, padded, previous
        return best_k, best_rate, best_size

    def plan(
        self,
        budget: int,
        ngram_available: int,
        ngram_match: int = 0,
        site: StepSite = StepSite(),
    ) -> Plan:
        """budget: most drafts the request can still use; ngram_available: length of the n-gram proposal;
        ngram_match: length of the match that proposed it; site: where the step's pass sits."""
        plan = self._plan(budget, ngram_available, ngram_match, site)
        self._last_plan = (plan, ngram_match) if self.mode == "adaptive" else None
        return plan

    def expected(self) -> float | None:
        """Tokens the last plan expected its step to settle at the length it planned, from the acceptance rates it
        planned with (so: before the step is recorded); None outside `adaptive`. Worked out only where asked (step
        traces): planning runs at every step."""
        if self._last_plan is None:
            return None
        plan, ngram_match = self._last_plan
        if plan.source == "none":
            return 1.0
        rates = (
            self.ngram_acceptance[match_class(ngram_match)]
            if plan.source == "ngram"
            else self.draft_acceptance
        )
        return expected_tokens(rates.first(plan.k))

    def _plan(self, budget: int, ngram_available: int, ngram_match: int, site: StepSite) -> Plan:
        budget = min(budget, self.draft_max)
        self.priced = {}
        self.capture_priced = None
        prepared, self._prepared = self._prepared, None  # (for this plan only)
        if budget <= 0 or self.mode == "none":
            return Plan("none", 0)
        if self.mode == "draft":
            return Plan("draft", budget) if self.has_draft_model else Plan("none", 0)
        if self.mode == "ngram":
            return Plan("ngram", min(budget, ngram_available)) if ngram_available else Plan("none", 0)
        if self._since_tried["none"] >= RETIME_EVERY * (RARE_RETIME_FACTOR if self._alone_confirmed else 1):
            return Plan("none", 0)  # now and then, re-time a one-token pass: every plan is compared with it
        alone = self._alone_rate(site.depth)
        best_rate, plan = alone, Plan("none", 0)
        self.priced["none"] = alone
        switch_horizon = self._speculative_run.horizon(site.remaining)
        if ngram_available:
            match = match_class(ngram_match)
            rates, limit = self.ngram_acceptance[match], min(budget, ngram_available)
            known = self._prepared_price(prepared, match, rates, limit, site, switch_horizon, alone)
            # (a capture of the size before is priced net of the replays the run of speculative steps leaves room for)
            k, rate, size = (
                known
                if known is not None
                else self._best_length(
                    rates,
                    site,
                    limit=limit,
                    horizon=switch_horizon,
                    switch_horizon=switch_horizon,
                    capture_credit=True,
                )
            )
            self.priced["ngram"] = rate
            if rate > best_rate:
                best_rate, plan = rate, Plan("ngram", k, size)
            elif self._since_tried["ngram"] >= PROBE_EVERY:
                k, hopeful, size = self._best_length(
                    self._probe_hopes(match_class(ngram_match)),
                    site,
                    limit=min(budget, ngram_available, 4),
                    switch_horizon=switch_horizon,
                )
                if hopeful > PROBE_MARGIN * alone:
                    return Plan("ngram", k, size)  # n-gram drafts cost nothing to make: re-probe cheaply
        if (
            self.has_draft_model
            and self.draft_rest
            and site.previous == 1
            and not site.draft_ready
            and site.draft_backlog >= self._rest_backlog
        ):
            self.draft_rest -= 1
        elif self.has_draft_model:
            per_token = self.costs.draft_token()
            # Steady drafting reads one new token per step (priced in per_token); more is a catch-up, paid once
            # for the run of draft-model steps it starts.
            backlog = site.draft_backlog
            catch_up = self.costs.draft_catch_up(backlog) - per_token if backlog > 1 else 0.0
            horizon = self._draft_run.horizon(site.remaining)

            def drafting(limit: int, acceptance: float | None = None) -> tuple[int, float, int]:
                return self._best_length(
                    self.draft_acceptance,
                    site,
                    limit=limit,
                    acceptance=acceptance,
                    per_draft_token=per_token,
                    one_off=catch_up,
                    horizon=horizon,
                    switch_horizon=switch_horizon,
                    after_draft=True,
                    free_drafts=site.draft_ready,
                    slack=LENGTH_SLACK,
                    capture_credit=True,
                )

            k, rate, size = drafting(budget)
            self.priced["draft"] = rate
            if rate > best_rate:
                best_rate, plan = rate, Plan("draft", k, size)
            elif (
                plan.source == "none"
                and self._since_tried["draft"] >= PROBE_EVERY
                and drafting(budget, OPTIMISTIC_ACCEPTANCE)[1] > PROBE_MARGIN * alone
            ):
                # Acceptance changes with the text: re-probe now and then, but only where a nearly perfect draft
                # of the best length would beat the target alone at the measured costs (on many machines it never
                # can). The probe itself is short: it costs little where the draft model misses again. (Judged by
                # its own short draft, a probe after one-token passes, which pays the cold pass and the return,
                # never beat the target alone on a target that a draft model pays for.)
                k, _, size = drafting(min(budget, 4), OPTIMISTIC_ACCEPTANCE)
                return Plan("draft", k, size)
            # (a probe not yet due is not put off by resting; one due and not worth it is rested like the rest)
            due_in = PROBE_EVERY - self._since_tried["draft"]
            rest = REST_STEPS if due_in <= 0 else min(REST_STEPS, due_in - 1)
            self.draft_rest = rest if rate < REST_MARGIN * alone else 0
            self._rest_backlog = backlog
        # A re-timing is a one-token step where the plan settles several tokens: while the plan wins widely and the
        # last re-timing confirmed the price, a small error in it could not change the plan: re-time rarely (above).
        if self._since_tried["none"] >= RETIME_EVERY and best_rate < WIDE_MARGIN * alone:
            return Plan("none", 0)
        return plan

    def prepare(self, budget: int, site: StepSite) -> None:
        """Work out the n-gram prices of every match class for the next step, at `site` after a one-token pass and
        for drafts of up to `budget` tokens (the whole budget: a one-token step plans with its proposal's first
        token). A step calls it while its one-token pass runs: on a GPU the CPU waits for that pass anyway, and the
        next plan then needs only its proposal's class (`_prepared_price`)."""
        self._prepared = None
        if self.mode != "adaptive" or site.previous != 1 or budget <= 0:
            return
        horizon = self._speculative_run.horizon(site.remaining)
        costs = self.costs
        self._prepared = _Prepared(
            (budget, site.depth, horizon, costs.cold_version),
            costs.switch_cost(),
            min(costs.sequence_prices(range(2, budget + 2), 1, 2, depth=site.depth)),
            {
                name: (
                    rates.first(POSITIONS),
                    self._best_length(rates, site, limit=budget, switch_horizon=horizon),
                )
                for name, rates in self.ngram_acceptance.items()
            },
        )

    def _prepared_price(
        self,
        prepared: _Prepared | None,
        match: str,
        rates: PositionalAcceptance,
        limit: int,
        site: StepSite,
        switch_horizon: float,
        alone: float,
    ) -> tuple[int, float, int] | None:
        """`_best_length`'s answer for n-gram drafts of this match class from `prepare`, where it is the plan's: read
        from the same acceptance and cold prices, and either the same switch cost or a rate so far below the target
        alone's that the switch cost's change (the one-token pass since was timed) cannot lift it to it. A pass
        costing `cheapest` or more whose price moves by `change` moves a rate by at most cheapest / (cheapest - change)
        times. None: price it now."""
        if prepared is None or site.previous != 1:
            return None
        if prepared.key != (limit, site.depth, switch_horizon, self.costs.cold_version):
            return None
        read, answer = prepared.by_class[match]
        if rates.first(POSITIONS) != read:
            return None
        change = abs(self.costs.switch_cost() - prepared.switch)
        if change == 0.0:
            return answer
        cheapest = prepared.cheapest
        below = change < cheapest and answer[1] * cheapest / (cheapest - change) < alone * (1 - 1e-9)
        return answer if below else None

    def padded_size(self, n: int, site: StepSite, largest: int) -> int:
        """The size to give a draft-model step's pass of n tokens once its drafts are made (the draft model stops
        where it is unsure, so a step's size is known only then): the pass before's, where repeating that size (a
        replayed CUDA graph) costs less than a pass of n tokens, else n. Padding keeps a run of same-size passes
        warm; the extra rows are ignored. In `adaptive` a pass that would capture the graph is priced net of the
        replays after it (`_capture_price`; at most the steps left in the run, each settling no more than a pass
        holds)."""
        previous = site.previous
        if not n < previous <= largest:
            return n
        if self.mode == "adaptive" and site.streak == 1:  # (draft mode keeps the plain prices: the yardstick)
            same = self._capture_price(
                previous, site, True, self._draft_run.horizon(site.remaining) / previous - 1
            )
        else:
            same = self.costs.in_sequence(previous, previous, site.streak, True, site.depth)
        return previous if same < self.costs.in_sequence(n, previous, site.streak, True, site.depth) else n

    def _capture_price(self, n: int, site: StepSite, after_draft: bool, steps_left: float) -> float:
        """A pass that captures the CUDA graph of n tokens (the second pass of that size in a row), net of what the
        passes expected to replay it (the replays counted after captures, at most `steps_left`) save over cold
        passes: a capture costs about a cold pass, and one replay after it does not pay for keeping the size, while
        a run of them does (docs/BENCHMARKS.md). Never below a replay's price; on a CPU the three prices are one and
        nothing changes."""
        replays = max(0.0, min(self._replays.value, steps_left))
        costs, depth = self.costs, site.depth
        warm = costs.verify(n, warm=True, depth=depth)
        saving = max(0.0, costs.verify(n, after_draft=after_draft, depth=depth) - warm)
        capture = costs.verify(n, capture=True, after_draft=after_draft, depth=depth)
        price = max(warm, capture - replays * saving)
        self.capture_priced = (price, replays)
        return price

    def plan_with_ngrams(
        self,
        budget: int,
        propose: Callable[[int], tuple[list[int], int]],
        site: StepSite = StepSite(),
    ) -> tuple[Plan, list[int]]:
        """`plan` with the n-gram proposal, built only as far as the plan needs: propose(k) returns up to k
        n-gram drafts and the length of the match behind the first.

        A proposal of up to 16 tokens costs tens of microseconds of lookups, and most steps of a text that does
        not repeat itself use none of it. So `adaptive` plans with the first token only, as if the proposal went
        on for the whole budget, builds what the plan takes, and plans again with the real length where it turns
        out shorter. The result is the plan of the whole proposal: a longer proposal only adds draft lengths to
        choose from. (After a pass of more than two tokens a plan may pad a short draft up to that size, which
        depends on the real length: there the whole proposal is built first.) Modes without n-grams propose nothing.
        """
        if self.mode not in ("adaptive", "ngram"):
            return self.plan(budget, 0, 0, site), []
        lazy = self.mode == "adaptive" and site.previous <= 2
        drafts, match = propose(min(1, budget) if lazy else max(budget, 0))
        available = budget if lazy and drafts else len(drafts)
        plan = self.plan(budget, available, match, site)
        # (one token past the plan where there is room: whether the target would have taken it is learnt for
        # free, `record`)
        wanted = min(plan.k + 1, budget)
        if lazy and plan.source == "ngram" and wanted > len(drafts):
            drafts, match = propose(wanted)
            if len(drafts) < plan.k:
                plan = self.plan(budget, len(drafts), match, site)
        return plan, drafts

    def _probe_hopes(self, match: str) -> PositionalAcceptance:
        """What a re-probe of n-gram drafts hopes for: a first token accepted as often as after matches of this
        length across this client's requests, every later one nearly always (a copied run that starts right
        stays right). Hoping for a right first token too re-probes weak matches at a loss on a CPU."""
        first = self._ngram_long_run[match].rate(0)
        return PositionalAcceptance([first] + [OPTIMISTIC_ACCEPTANCE] * (POSITIONS - 1))

    # ---- measuring --------------------------------------------------------------------------------------------

    def record(
        self,
        source: DraftSource,
        drafted: int,
        accepted: int,
        t_verify: float,
        verify_tokens: int,
        ngram_match: int = 0,
        warm: bool = False,
        capture: bool = False,
        depth: int = 0,
        ngram_next: bool | None = None,
    ) -> None:
        """One step's outcome. warm: its pass followed two or more target passes of its size; capture: exactly
        one. A draft-model step's pass follows the draft model's passes, whatever the size before.
        ngram_next: after n-gram drafts all accepted, whether the proposal's next token (not drafted) was the
        target's own pick after them: the position past the drafts is then known as if it had been drafted, so
        the rates of longer drafts are learnt from steps that did not try them (else they keep their prior)."""
        for name in self._since_tried:
            self._since_tried[name] = 0 if name == source else self._since_tried[name] + 1
        if source == "draft" and drafted == 0:
            self._since_tried["draft"] = PROBE_EVERY - PROBE_AGAIN_AFTER
        if source == "none" and verify_tokens == 1:
            priced = self.costs.verify(1, warm, capture, depth=depth)
            self._alone_confirmed = abs(t_verify - priced) <= CONFIRMED * priced
        if verify_tokens:
            self.costs.record_verify(verify_tokens, t_verify, warm, capture, source == "draft", depth)
        self._count_replays(verify_tokens, depth)
        if source == "draft":
            self._draft_run.extend(accepted + 1)
        else:
            self._draft_run.end()
        if drafted:
            self._speculative_run.extend(accepted + 1)
        else:  # (a step without drafts makes a one-token pass)
            self._speculative_run.end()
        if source == "none" or drafted == 0:
            return
        if source == "draft":  # (the draft model's passes are timed by the drafter: `PassCosts.record_draft`)
            self.draft_acceptance.record(drafted, accepted)
        else:
            if ngram_next is not None and accepted == drafted:
                drafted, accepted = drafted + 1, accepted + int(ngram_next)
            self._learn_ngrams(ngram_match, drafted, accepted)

    def record_ngrams_beside(self, known: int, agreed: int, match_length: int) -> None:
        """n-gram drafts proposed at a draft-model step and not verified: the target's picks along that step say
        how far they would have been accepted (`known`: the drafts the picks reach; `agreed`: how many of the
        first ones equal them), learnt as if they had been tried. n-gram drafts cost nothing to make, so their
        acceptance is kept measured while the draft model is preferred: learnt from n-gram steps alone, a rate
        carried low from earlier requests kept n-grams from being tried again."""
        if not known:
            return
        tried = min(agreed + 1, known)  # (where all the known ones agreed, later positions are unknown)
        self._learn_ngrams(match_length, tried, agreed)

    def _learn_ngrams(self, match_length: int, drafted: int, accepted: int) -> None:
        """n-gram drafts of a match this long, `accepted` of `drafted`: into the request's rates and the long run's."""
        match = match_class(match_length)
        self.ngram_acceptance[match].record(drafted, accepted)
        self._ngram_long_run[match].record(drafted, accepted)

    def _count_replays(self, size: int, depth: int) -> None:
        """Count the replays after each capture of a pass of more than one token (the passes of its size after it),
        where a shorter pass counts as of the size if a replay of that size costs no more than it: it could have
        been padded to it. A chooser that shuns a capture drafts one short instead, or does not pad a short draft
        up to it, and counting only what it did, it would never see that the run could have gone on and never
        price a capture as worth it again."""
        run = self._run_size
        if 1 < size <= run and (
            size == run
            or self.costs.verify(run, warm=True, depth=depth) <= self.costs.verify(size, depth=depth)
        ):
            self._run_passes += 1
            return
        if self._run_passes >= 2:  # (a run of one pass had no capture)
            self._replays.add(self._run_passes - 2)
        self._run_size, self._run_passes = (size, 1) if size > 1 else (0, 0)
