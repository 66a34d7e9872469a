"""Adaptive choice of draft source and length from measured acceptance and measured costs.

Model: a source whose drafts are accepted token by token with probability a settles, with k drafts,
E(k) = (1 - a^(k+1)) / (1 - a) tokens per target pass. A step costs k * c_draft + c_verify(k + 1) seconds,
with c_verify(n) fitted from measured passes. The chooser picks the source and k with the best expected
tokens per second, compared with the target alone (1 / c_verify(1)), so speculation backs off when it does not pay.
"""

from __future__ import annotations

from dataclasses import dataclass

from localspec.engine.types import DraftSource, SpeculativeMode

PROBE_EVERY = 24  # steps between re-tries of a source that currently looks unprofitable
OPTIMISTIC_ACCEPTANCE = 0.95
PRIOR_ACCEPTANCE = 0.85
CANDIDATE_LENGTHS = (
    1,
    2,
    3,
    4,
    6,
    8,
    12,
    16,
    24,
    32,
)  # draft lengths the planner weighs (fewer = cheaper steps)
PROBE_MARGIN = 1.1  # a probe must promise this much over the target alone to be worth its cost


def expected_tokens(acceptance: float, k: int) -> float:
    if acceptance >= 0.999:
        return k + 1.0
    return (1.0 - acceptance ** (k + 1)) / (1.0 - acceptance)


@dataclass
class _Ewma:
    value: float
    weight: float = 0.15
    samples: int = 0

    def add(self, sample: float) -> None:
        self.samples += 1
        # The first samples carry more weight so the estimate leaves its prior quickly.
        weight = max(self.weight, 1.0 / (self.samples + 1))
        self.value += weight * (sample - self.value)


class VerifyCost:
    """Least-squares fit of verify time t(n) = one + (n - 1) * extra over recent passes (decayed sums)."""

    # Prior: an extra token in a pass costs half a one-token pass (measured 0.5-0.9 on a 2-core CPU and ~0.6 on
    # an H100 for small batches: small batches are far from free).
    def __init__(self, one: float = 0.05, extra_ratio: float = 0.5, decay: float = 0.97) -> None:
        self.one = one
        self.extra = one * extra_ratio
        self._extra_ratio = extra_ratio
        self._decay = decay
        self._sums = [0.0, 0.0, 0.0, 0.0, 0.0]  # weight, x, x*x, t, x*t with x = n - 1

    def add(self, n: int, seconds: float) -> None:
        x = n - 1.0
        self._sums = [s * self._decay for s in self._sums]
        for i, value in enumerate((1.0, x, x * x, seconds, x * seconds)):
            self._sums[i] += value
        w, sx, sxx, st, sxt = self._sums
        variance = w * sxx - sx * sx
        if variance > 1e-6 * w * w:
            extra = (w * sxt - sx * st) / variance
            one = (st - extra * sx) / w
            if extra >= 0.0 and one > 0.0:
                self.one, self.extra = one, extra
                return
        # All passes had (nearly) the same size: split the mean time with the prior ratio.
        mean_x, mean_t = sx / w, st / w
        self.one = mean_t / (1.0 + mean_x * self._extra_ratio)
        self.extra = self.one * self._extra_ratio

    def estimate(self, n: int) -> float:
        return self.one + (n - 1) * self.extra


@dataclass
class Plan:
    source: DraftSource
    k: int


class AdaptiveChooser:
    def __init__(
        self, mode: SpeculativeMode, draft_max: int, has_draft_model: bool, draft_cost_ratio: float = 0.4
    ) -> None:
        self.mode = mode
        self.draft_max = draft_max
        self.has_draft_model = has_draft_model
        # Acceptance per drafted token. The priors are hopeful so that each source gets tried; measurements
        # replace them within a few steps.
        self.acceptance = {"draft": _Ewma(PRIOR_ACCEPTANCE), "ngram": _Ewma(PRIOR_ACCEPTANCE)}
        self.verify_cost = VerifyCost()
        # Seconds per draft-model token; until measured, a fraction of a one-token target pass.
        self.c_draft = _Ewma(0.0)
        self._draft_cost_ratio = draft_cost_ratio
        self._since_tried = {"draft": 0, "ngram": 0}

    def start_request(self) -> None:
        """Whether the text repeats itself is a property of each request: n-gram acceptance starts hopeful again.
        The draft model's acceptance and the measured costs carry over (they describe the model pair)."""
        self.acceptance["ngram"] = _Ewma(PRIOR_ACCEPTANCE)
        self._since_tried["ngram"] = 0

    # ---- planning ---------------------------------------------------------------------------------------------

    def _draft_token_cost(self) -> float:
        return self.c_draft.value if self.c_draft.samples else self.verify_cost.one * self._draft_cost_ratio

    def _rate(self, source: DraftSource, k: int, acceptance: float | None = None) -> float:
        cost = self.verify_cost.estimate(k + 1)
        if source == "draft":
            cost += k * self._draft_token_cost()
        if source == "none":
            return 1.0 / cost
        return expected_tokens(self.acceptance[source].value if acceptance is None else acceptance, k) / cost

    def _best_length(
        self, source: DraftSource, limit: int, acceptance: float | None = None
    ) -> tuple[int, float]:
        """The draft length in 1..limit with the best expected rate, and that rate."""
        best_k, best_rate = 0, 0.0
        for k in sorted({*(k for k in CANDIDATE_LENGTHS if k <= limit), limit} - {0}):
            rate = self._rate(source, k, acceptance)
            if rate > best_rate:
                best_k, best_rate = k, rate
        return best_k, best_rate

    def plan(self, budget: int, ngram_available: int) -> Plan:
        """budget: most drafts the request can still use; ngram_available: length of the n-gram proposal."""
        budget = min(budget, self.draft_max)
        if budget <= 0 or self.mode == "none":
            return Plan("none", 0)
        if self.mode == "draft":
            return Plan("draft", budget) if self.has_draft_model else Plan("none", 0)
        if self.mode == "ngram":
            return Plan("ngram", min(budget, ngram_available)) if ngram_available else Plan("none", 0)
        alone = self._rate("none", 0)
        best_rate, plan = alone, Plan("none", 0)
        if ngram_available:
            k, rate = self._best_length("ngram", min(budget, ngram_available))
            if rate > best_rate:
                best_rate, plan = rate, Plan("ngram", k)
            elif self._since_tried["ngram"] >= PROBE_EVERY:
                k, hopeful = self._best_length(
                    "ngram", min(budget, ngram_available, 4), OPTIMISTIC_ACCEPTANCE
                )
                if hopeful > PROBE_MARGIN * alone:
                    return Plan("ngram", k)  # n-gram drafts cost nothing to make: re-probe cheaply
        if self.has_draft_model:
            k, rate = self._best_length("draft", budget)
            if rate > best_rate:
                best_rate, plan = rate, Plan("draft", k)
            elif plan.source == "none" and self._since_tried["draft"] >= PROBE_EVERY:
                # Acceptance changes with the text: re-probe now and then, but only where a nearly perfect
                # draft would beat the target alone at the measured costs (on many machines it never can).
                k, hopeful = self._best_length("draft", min(budget, 4), acceptance=OPTIMISTIC_ACCEPTANCE)
                if hopeful > PROBE_MARGIN * alone:
                    return Plan("draft", k)
        return plan

    # ---- measuring --------------------------------------------------------------------------------------------

    def record(
        self,
        source: DraftSource,
        drafted: int,
        accepted: int,
        t_draft: float,
        t_verify: float,
        verify_tokens: int,
    ) -> None:
        for name in self._since_tried:
            self._since_tried[name] = 0 if name == source else self._since_tried[name] + 1
        if verify_tokens:
            self.verify_cost.add(verify_tokens, t_verify)
        if source == "none" or drafted == 0:
            return
        if source == "draft":
            self.c_draft.add(t_draft / drafted)
        # Per-token acceptance: each accepted draft is a success; a rejection (if any) one failure.
        rejected = 1 if accepted < drafted else 0
        estimate = self.acceptance[source]
        for _ in range(accepted):
            estimate.add(1.0)
        if rejected:
            estimate.add(0.0)
