"""Stats of a remote generation: the engine's types, plus which fields the remote did not report."""

from __future__ import annotations

from dataclasses import dataclass

from localspec.engine.types import RequestStats, StepEvent

# Fields a remote may leave unknown (its speculation, its prompt cache); responses show them as null, never 0.
OPTIONAL_FIELDS = frozenset(
    {"drafted", "accepted", "acceptance", "mean_accepted_length", "draft_sources", "cached_tokens"}
)


@dataclass
class RemoteStats(RequestStats):
    """RequestStats from a remote server. Names in `unknown` are fields it did not report."""

    unknown: frozenset[str] = frozenset()
    reported_tokens_per_second: float | None = None  # the server's own decode speed, when it tells

    @property
    def tokens_per_second(self) -> float:
        if self.reported_tokens_per_second is not None:
            return self.reported_tokens_per_second
        return super().tokens_per_second


@dataclass
class RemoteStep(StepEvent):
    """Text from one stream chunk of a remote: what was drafted or accepted in it is not known."""


def unknown_fields(stats: RequestStats) -> frozenset[str]:
    """The stats fields a remote did not report (none for the local engine): shown as null, never as 0."""
    return stats.unknown if isinstance(stats, RemoteStats) else frozenset()
