"""Running estimates the chooser plans with: an EWMA, and acceptance per drafted position."""

from __future__ import annotations

from dataclasses import dataclass

POSITIONS = 4  # acceptance is measured separately for the 1st, 2nd, 3rd and 4th-and-later drafted token
MATCH_CLASSES = ("short", "mid", "long")


def match_class(match_length: int) -> str:
    """n-gram drafts are judged apart by the length of the match that proposed them: a longer match is likelier
    to be copied right (docs/BENCHMARKS.md has the measured rates)."""
    return "short" if match_length <= 3 else ("mid" if match_length < 8 else "long")


@dataclass
class Ewma:
    value: float
    weight: float = 0.15
    samples: int = 0

    def add(self, sample: float, weight: float | None = None) -> None:
        self.samples += 1
        # The first samples carry more weight so the estimate leaves its prior quickly.
        weight = max(self.weight if weight is None else weight, 1.0 / (self.samples + 1))
        self.value += weight * (sample - self.value)

    def measure(self, sample: float) -> None:
        """`add`, except that a first sample is the estimate as it is: for a value with no prior to blend with."""
        if self.samples == 0:
            self.value, self.samples = sample, 1
        else:
            self.add(sample)


class PooledRate:
    """A success rate from counts, each step's counts discounted by `weight` at the next step: for positions pooled
    into one rate, where a step tries many of them at once. (An `Ewma` over each trial would let the last trial of a
    step, its rejection, outweigh the twenty accepted before it.)"""

    def __init__(self, prior: float, weight: float = 0.15) -> None:
        self.weight = weight
        self._hits, self._trials = prior, 1.0  # the prior counts as one trial

    @property
    def value(self) -> float:
        return self._hits / self._trials

    def add_step(self, trials: int, hits: int) -> None:
        keep = 1.0 - self.weight
        self._hits = keep * self._hits + hits
        self._trials = keep * self._trials + trials


class PositionalAcceptance:
    """Acceptance of the i-th drafted token given that the ones before it were accepted.

    One rate per position because drafts are nearly all-or-nothing: a run whose first token is right usually stays
    right, so a single rate would draft too much where the first guess is weak and too little along a good run.
    The 4th and later positions share one rate, learnt per step from how many of them were tried and accepted.
    """

    def __init__(self, prior: float | list[float], weight: float = 0.15) -> None:
        priors = prior if isinstance(prior, list) else [prior] * POSITIONS
        self._each = [Ewma(value, weight) for value in priors[: POSITIONS - 1]]
        self._later = PooledRate(priors[POSITIONS - 1], weight)
        self.rates: list[Ewma | PooledRate] = [*self._each, self._later]

    def rate(self, position: int) -> float:
        return self.rates[min(position, POSITIONS - 1)].value

    def first(self, n: int) -> list[float]:
        """The rates of positions 0..n-1 (`rate` of each)."""
        values = [estimate.value for estimate in self.rates[:n]]
        return values + values[-1:] * (n - len(values))

    def record(self, drafted: int, accepted: int) -> None:
        # Positions up to the first rejection were tried; those after it tell nothing.
        tried = min(drafted, accepted + 1)
        for i, estimate in enumerate(self._each[:tried]):
            estimate.add(1.0 if i < accepted else 0.0)
        if tried >= POSITIONS:
            self._later.add_step(tried - len(self._each), accepted - len(self._each))
