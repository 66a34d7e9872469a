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


class PositionalAcceptance:
    """Acceptance of the i-th drafted token given that the ones before it were accepted.

    One rate per position because drafts are nearly all-or-nothing: a run whose first token is right usually stays
    right, so a single rate would draft too much where the first guess is weak and too little along a good run.
    """

    def __init__(self, prior: float | list[float], weight: float = 0.15) -> None:
        priors = prior if isinstance(prior, list) else [prior] * POSITIONS
        self.rates = [Ewma(value, weight) for value in priors]

    def rate(self, position: int) -> float:
        return self.rates[min(position, POSITIONS - 1)].value

    def first(self, n: int) -> list[float]:
        """The rates of positions 0..n-1 (`rate` of each)."""
        values = [estimate.value for estimate in self.rates[:n]]
        return values + values[-1:] * (n - len(values))

    def record(self, drafted: int, accepted: int) -> None:
        # Positions up to the first rejection were tried; those after it tell nothing.
        for i in range(min(drafted, accepted + 1)):
            self.rates[min(i, POSITIONS - 1)].add(1.0 if i < accepted else 0.0)
