"""Adaptive choice of draft source and length from measured acceptance and measured costs.

Model: a source's i-th drafted token is accepted with probability a_i once the ones before it were (measured per
position: a_1, a_2, a_3 and a_4+; for n-grams also per length of the match that proposed the draft), so k drafts
settle E(k) = 1 + a_1 + a_1 a_2 + ... tokens per target pass.
A step costs k * c_draft + c_verify(k + 1) seconds, with c_verify(n) measured for every pass size n, "cold" (after a
pass of another size), "capture" (the second in a row of its size) and "warm" (the third or later: on a GPU only
these replay llama.cpp's CUDA graph; it is captured on the second).
Before drafting, the draft model must first read what it has not seen (the prompt, or the tokens n-gram steps
settled): that catch-up is charged too, spread over the tokens a run of draft-model steps usually settles.
The chooser picks the source and k with the best expected tokens per second, compared with the target alone
(1 / c_verify(1) warm), so speculation backs off when it does not pay; on a GPU it may pad a pass to the size of
the one before, to keep it warm. A verify pass right after the draft model's passes has prices of its own (on an
H100 a 17-token one took 7.2 ms there, 4.6 ms after another 17-token target pass).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from localspec.engine.types import DraftSource, SpeculativeMode

PROBE_EVERY = 24  # steps between re-tries of a source that currently looks unprofitable
OPTIMISTIC_ACCEPTANCE = 0.95
PRIOR_ACCEPTANCE = 0.85
PROBE_MARGIN = 1.1  # a probe must promise this much over the target alone to be worth its cost
LONG_RUN_WEIGHT = 0.05  # weight of one outcome in the n-gram acceptance carried from request to request
FASTER_WEIGHT, SLOWER_WEIGHT = 0.5, 0.1  # weight of a pass timed below / above its size's estimate
POSITIONS = 4  # acceptance is measured separately for the 1st, 2nd, 3rd and 4th-and-later drafted token
# Tokens a run of consecutive draft-model steps is assumed to settle until runs are measured: the draft model's
# catch-up before a run is spread over them.
PRIOR_DRAFT_RUN = 64


def match_class(match_length: int) -> str:
    """n-gram drafts are judged apart by how long a match proposed them: acceptance of the first drafted token
    was measured at ~0.45 after a 2-token match and ~0.9 after 8 tokens."""
    return "short" if match_length <= 3 else ("mid" if match_length < 8 else "long")


MATCH_CLASSES = ("short", "mid", "long")


@dataclass
class _Ewma:
    value: float
    weight: float = 0.15
    samples: int = 0

    def add(self, sample: float, weight: float | None = None) -> None:
        self.samples += 1
        # The first samples carry more weight so the estimate leaves its prior quickly.
        weight = max(self.weight if weight is None else weight, 1.0 / (self.samples + 1))
        self.value += weight * (sample - self.value)


class PositionalAcceptance:
    """Acceptance of the i-th drafted token given that the ones before it were accepted.

    One rate per position because drafts are nearly all-or-nothing: a copied run whose first token is right
    usually stays right (measured on code: ~0.65 for the first n-gram token, ~0.9 from the fourth on), so a single
    rate would draft too much where the first guess is weak and too little along a good run.
    """

    def __init__(self, prior: float | list[float], weight: float = 0.15) -> None:
        priors = prior if isinstance(prior, list) else [prior] * POSITIONS
        self.rates = [_Ewma(value, weight) for value in priors]

    def rate(self, position: int) -> float:
        return self.rates[min(position, POSITIONS - 1)].value

    def record(self, drafted: int, accepted: int) -> None:
        # Positions up to the first rejection were tried; those after it tell nothing.
        for i in range(min(drafted, accepted + 1)):
            self.rates[min(i, POSITIONS - 1)].add(1.0 if i < accepted else 0.0)


class PassCosts:
    """Seconds per target pass over n tokens (for each n) and per draft-model token, on this machine.

    Measured per size because batched passes are neither free nor linear: on a 2-core CPU a 16-token pass costs
    less than a 12-token one (llama.cpp switches to other kernels), on a GPU small batches cost nearly one pass.
    The engine times every size at start-up (`Engine._calibrate`); each real pass then updates its size.
    One instance is shared by all requests: the costs describe the machine and the model pair, not the text.

    Two prices per size: "cold", a pass after a pass of another size, and "warm", after one of the same size. On a
    GPU llama.cpp replays a captured CUDA graph only while consecutive passes have the same shape (an H100: 1.7 ms
    for one token after one-token passes, 2.4 ms after a 3-token pass). On a CPU start-up measures no warm prices
    (the cold ones stand for both until real passes of a repeated size are timed). More tables hold the second
    pass in a row of a size (on a GPU it captures the graph) and passes right after draft-model passes (the draft
    model's verify passes, priced apart so that they neither pass for nor spoil the target alone's prices).
    """

    def __init__(
        self,
        one: float = 0.05,
        extra_ratio: float = 0.5,
        draft_ratio: float = 0.4,
        draft_one_by_one: int = 1,
    ) -> None:
        """draft_one_by_one: the draft model catches up this many tokens or fewer in one-token passes (a draft on
        a GPU: see `drafters.sync_sequence`), more in one batched pass."""
        self._prior_one, self._prior_extra = one, one * extra_ratio
        self._cold: dict[int, _Ewma] = {}
        self._warm: dict[int, _Ewma] = {}
        self._after_draft: dict[int, _Ewma] = {}
        self._capture: dict[int, _Ewma] = {}  # the second pass in a row of a size (a GPU captures its graph)
        self._draft_ratio = draft_ratio
        self._draft_token = _Ewma(0.0)
        self._draft_passes: dict[int, _Ewma] = {}  # the draft model's batched passes (catch-ups), per size
        self.draft_one_by_one = draft_one_by_one

    def record_verify(
        self, n: int, seconds: float, warm: bool = False, after_draft: bool = False, capture: bool = False
    ) -> None:
        if after_draft:
            table = self._after_draft
        else:
            table = self._warm if warm else (self._capture if capture else self._cold)
        self._record(table, n, seconds)

    @staticmethod
    def _record(table: dict[int, _Ewma], n: int, seconds: float) -> None:
        estimate = table.get(n)
        if estimate is None:
            table[n] = _Ewma(seconds, samples=1)
            return
        # Quick to go down, slow to go up: a pass is rarely faster than it can be, but often slower (a busy
        # machine, a first pass of its shape), and an estimate stuck too high would keep its size from being
        # planned, and so from being measured again.
        estimate.add(seconds, FASTER_WEIGHT if seconds < estimate.value else SLOWER_WEIGHT)

    def record_draft(self, tokens: int, seconds: float) -> None:
        if not tokens:
            return
        if self._draft_token.samples == 0:  # no prior to blend with: the first measurement is the estimate
            self._draft_token = _Ewma(seconds / tokens, samples=1)
        else:
            self._draft_token.add(seconds / tokens)

    def record_draft_pass(self, n: int, seconds: float) -> None:
        """A batched draft-model pass over n tokens (a catch-up)."""
        self._record(self._draft_passes, n, seconds)

    def draft_catch_up(self, n: int) -> float:
        """Seconds for the draft model to read n tokens it has not seen, its last pass leaving logits to draft
        from (n = 1 in steady drafting: the token the target settled after the drafts)."""
        if n <= self.draft_one_by_one:
            return n * self.draft_token()
        if not self._draft_passes:  # not measured: a batched token costs a fifth of a one-token pass
            return self.draft_token() * (1 + (n - 1) / 5)
        return self._estimate(self._draft_passes, n)

    def measured_sizes(self) -> set[int]:
        return set(self._cold)

    def verify(self, n: int, warm: bool = False, after_draft: bool = False, capture: bool = False) -> float:
        """Seconds for a pass over n tokens; warm: after two or more passes of the same size; capture: after
        exactly one; after_draft: right after draft-model passes."""
        cold = self._estimate(self._cold, n)
        if after_draft:
            return self._relative_to_cold(self._after_draft, n, cold)
        if capture:
            return self._relative_to_cold(self._capture, n, cold)
        if warm and n in self._warm:
            return self._warm[n].value
        if warm:  # an unmeasured warm size saves what the nearest measured one does
            return min(cold, self._relative_to_cold(self._warm, n, cold))
        return cold

    def _relative_to_cold(self, table: dict[int, _Ewma], n: int, cold: float) -> float:
        """Size n as measured in `table`, or the cold price scaled as the nearest size measured there (or as is)."""
        if (known := table.get(n)) is not None:
            return known.value
        if not table:
            return cold
        nearest = min(table, key=lambda size: abs(size - n))
        return cold * table[nearest].value / self._estimate(self._cold, nearest)

    def switch_cost(self) -> float:
        """What a one-token pass costs more after a pass of another size (0 on a CPU)."""
        if 1 not in self._warm:
            return 0.0
        # (The one after it captures the graph anew, but charging that too kept adaptive from n-gram runs that
        # paid: 1.91x against 2.11x in `ngram` mode on H100 code edits.)
        return max(0.0, self._estimate(self._cold, 1) - self._warm[1].value)

    def _estimate(self, table: dict[int, _Ewma], n: int) -> float:
        if (known := table.get(n)) is not None:
            return known.value
        sizes = sorted(table)
        below = [s for s in sizes if s < n]
        above = [s for s in sizes if s > n]
        if below and above:  # interpolate between the nearest measured sizes
            low, high = below[-1], above[0]
            t_low, t_high = table[low].value, table[high].value
            return t_low + (t_high - t_low) * (n - low) / (high - low)
        if len(below) >= 2:  # extend the line through the two largest measured sizes
            low, high = below[-2], below[-1]
            t_low, t_high = table[low].value, table[high].value
            return t_high + max(0.0, (t_high - t_low) / (high - low)) * (n - high)
        if below or above:  # one size known: scale it per token
            size = (below or above)[-1]
            return table[size].value * n / size
        return self._prior_one + (n - 1) * self._prior_extra

    def describe(self) -> str:
        """The main prices in milliseconds, for logs."""
        sizes = [n for n in (1, 2, 4, 8, 16) if n in self._cold]
        text = "target pass " + ", ".join(f"{n}: {self.verify(n) * 1000:.1f}" for n in sizes)
        if self._warm:
            text += (
                " (after a pass of the same size: "
                + ", ".join(f"{n}: {self.verify(n, warm=True) * 1000:.1f}" for n in sizes)
                + ")"
            )
        if self._after_draft:
            text += (
                " (after draft-model passes: "
                + ", ".join(f"{n}: {self.verify(n, after_draft=True) * 1000:.1f}" for n in sizes)
                + ")"
            )
        text += f"; draft token {self.draft_token() * 1000:.1f}"
        if self._draft_passes:
            text += f", draft catch-up of 64 tokens {self.draft_catch_up(64) * 1000:.1f}"
        return text

    def draft_token(self) -> float:
        """Seconds per draft-model token; until measured, a fraction of a one-token target pass."""
        return self._draft_token.value if self._draft_token.samples else self.verify(1) * self._draft_ratio


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
        # Tokens settled by a run of consecutive draft-model steps (the current one, and their usual number).
        self._draft_run = 0
        self._draft_run_length = _Ewma(PRIOR_DRAFT_RUN, weight=0.3)

    def start_request(self) -> None:
        """Whether the text repeats itself is a property of each request: n-gram acceptance starts again from the
        slow average over this client's requests, and moves fast. The draft model's acceptance and the measured
        costs carry over (they describe the model pair)."""
        self.ngram_acceptance = {
            name: PositionalAcceptance([rate.value for rate in long_run.rates])
            for name, long_run in self._ngram_long_run.items()
        }
        self._since_tried["ngram"] = 0
        self._end_draft_run()

    # ---- planning ---------------------------------------------------------------------------------------------

    def _alone_rate(self) -> float:
        # In the long run the target alone's one-token passes follow one-token passes: the warm price.
        return 1.0 / self.costs.verify(1, warm=True)

    def _best_length(
        self,
        rates: PositionalAcceptance,
        per_draft_token: float,
        limit: int,
        acceptance: float | None = None,
        previous: int = 0,
        streak: int = 2,
        one_off: float = 0.0,
        horizon: float = 1.0,
        after_draft: bool = False,
    ) -> tuple[int, float, int]:
        """The draft length in 1..limit with the best expected tokens per second, that rate, and the pass size to
        pad to (0: none; the previous pass's size when padding pays, a pass of the same size being warm).

        previous: tokens in the last pass (0: another kind of pass), streak: passes in a row of that size. A pass
        of k + 1 tokens replays a graph (warm) when the last two had that size, captures one after one; leaving
        the target alone's one-token passes also makes the next one cold, so that is charged to the step too.
        one_off: seconds paid once before a run of such steps expected to settle `horizon` tokens (the draft
        model's catch-up); a step bears its share. after_draft: the pass follows draft-model passes, and is priced
        as such whatever its size.
        """
        leaving_alone = self.costs.switch_cost() if previous == 1 else 0.0
        best_k, best_rate, best_size = 0, 0.0, 0
        expected = survive = 1.0
        for k in range(1, limit + 1):
            survive *= acceptance if acceptance is not None else rates.rate(k - 1)
            expected += survive
            share = one_off * min(1.0, expected / horizon)
            same = k + 1 == previous
            verify = self.costs.verify(k + 1, same and streak >= 2, after_draft, same and streak == 1)
            step = verify + leaving_alone + k * per_draft_token + share
            rate = expected / step
            if rate > best_rate:
                best_k, best_rate, best_size = k, rate, 0
        if limit + 1 < previous <= self.draft_max + 1 and limit:
            share = one_off * min(1.0, expected / horizon)
            verify = self.costs.verify(previous, streak >= 2, after_draft, streak == 1)
            padded = expected / (verify + limit * per_draft_token + share)
            if padded > best_rate:
                best_k, best_rate, best_size = limit, padded, previous
        return best_k, best_rate, best_size

    def plan(
        self,
        budget: int,
        ngram_available: int,
        ngram_match: int = 0,
        previous: int = 0,
        draft_backlog: int = 1,
        remaining: int | None = None,
        streak: int = 2,
    ) -> Plan:
        """budget: most drafts the request can still use; ngram_available: length of the n-gram proposal;
        ngram_match: length of the match that proposed it; previous: tokens in the target's last pass (0: a
        pass of another kind, such as a prompt); streak: passes in a row of that size; draft_backlog: tokens the
        draft model must read before it can draft (1 while it keeps up); remaining: tokens the request may still
        generate (None: unknown)."""
        budget = min(budget, self.draft_max)
        if budget <= 0 or self.mode == "none":
            return Plan("none", 0)
        if self.mode == "draft":
            return Plan("draft", budget) if self.has_draft_model else Plan("none", 0)
        if self.mode == "ngram":
            return Plan("ngram", min(budget, ngram_available)) if ngram_available else Plan("none", 0)
        if self._since_tried["none"] >= 2 * PROBE_EVERY:
            return Plan("none", 0)  # now and then, re-time a one-token pass: every plan is compared with it
        alone = self._alone_rate()
        best_rate, plan = alone, Plan("none", 0)
        if ngram_available:
            rates = self.ngram_acceptance[match_class(ngram_match)]
            k, rate, size = self._best_length(
                rates, 0.0, min(budget, ngram_available), None, previous, streak
            )
            if rate > best_rate:
                best_rate, plan = rate, Plan("ngram", k, size)
            elif self._since_tried["ngram"] >= PROBE_EVERY:
                k, hopeful, size = self._best_length(
                    self._probe_hopes(match_class(ngram_match)),
                    0.0,
                    min(budget, ngram_available, 4),
                    None,
                    previous,
                    streak,
                )
                if hopeful > PROBE_MARGIN * alone:
                    return Plan("ngram", k, size)  # n-gram drafts cost nothing to make: re-probe cheaply
        if self.has_draft_model:
            per_token = self.costs.draft_token()
            # Steady drafting reads one new token per step (priced in per_token); more is a catch-up, paid once
            # for the run of draft-model steps it starts.
            catch_up = self.costs.draft_catch_up(draft_backlog) - per_token if draft_backlog > 1 else 0.0
            horizon = max(
                1.0,
                self._draft_run_length.value
                if remaining is None
                else min(remaining, self._draft_run_length.value),
            )
            k, rate, size = self._best_length(
                self.draft_acceptance, per_token, budget, None, previous, streak, catch_up, horizon, True
            )
            if rate > best_rate:
                best_rate, plan = rate, Plan("draft", k, size)
            elif plan.source == "none" and self._since_tried["draft"] >= PROBE_EVERY:
                # Acceptance changes with the text: re-probe now and then, but only where a nearly perfect
                # draft would beat the target alone at the measured costs (on many machines it never can).
                k, hopeful, size = self._best_length(
                    self.draft_acceptance,
                    per_token,
                    min(budget, 4),
                    OPTIMISTIC_ACCEPTANCE,
                    previous,
                    streak,
                    catch_up,
                    horizon,
                    after_draft=True,
                )
                if hopeful > PROBE_MARGIN * alone:
                    return Plan("draft", k, size)
        return plan

    def plan_with_ngrams(
        self,
        budget: int,
        propose: Callable[[int], tuple[list[int], int]],
        previous: int = 0,
        draft_backlog: int = 1,
        remaining: int | None = None,
        streak: int = 2,
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
            return self.plan(budget, 0, 0, previous, draft_backlog, remaining, streak), []
        lazy = self.mode == "adaptive" and previous <= 2
        drafts, match = propose(min(1, budget) if lazy else max(budget, 0))
        available = budget if lazy and drafts else len(drafts)
        plan = self.plan(budget, available, match, previous, draft_backlog, remaining, streak)
        if lazy and plan.source == "ngram" and plan.k > len(drafts):
            drafts, match = propose(plan.k)
            if len(drafts) < plan.k:
                plan = self.plan(budget, len(drafts), match, previous, draft_backlog, remaining, streak)
        return plan, drafts

    def _probe_hopes(self, match: str) -> PositionalAcceptance:
        """What a re-probe of n-gram drafts hopes for: a first token accepted as often as after matches of this
        length across this client's requests, every later one nearly always (a copied run that starts right
        stays right). Hoping for a right first token too had the 2-token matches of code probed every 24 steps
        on a 2-core CPU, where a failed probe costs two tokens' time: 13 probes settled 1.1 drafts each."""
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
    ) -> None:
        """warm: the pass followed two or more target passes of its size; capture: exactly one."""
        for name in self._since_tried:
            self._since_tried[name] = 0 if name == source else self._since_tried[name] + 1
        if verify_tokens:
            # (a draft-model step's pass follows the draft model's passes, whatever the size before)
            self.costs.record_verify(verify_tokens, t_verify, warm, source == "draft", capture)
        if source == "draft":
            self._draft_run += accepted + 1
        else:
            self._end_draft_run()
        if source == "none" or drafted == 0:
            return
        if source == "draft":  # (the draft model's passes are timed by the drafter: `PassCosts.record_draft`)
            self.draft_acceptance.record(drafted, accepted)
        else:
            self.ngram_acceptance[match_class(ngram_match)].record(drafted, accepted)
            self._ngram_long_run[match_class(ngram_match)].record(drafted, accepted)

    def _end_draft_run(self) -> None:
        if self._draft_run:
            self._draft_run_length.add(self._draft_run)
            self._draft_run = 0
