"""Full-scale soaks (`pytest -m soak tests/soak`): the CI tests of test_reliability_load at issue scale.

Excluded from the default run by the `soak` marker (see pyproject addopts). Each takes tens of seconds on
two busy cores with the tiny models.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import RunningDaemon, stop_daemon
from test_reliability_load import (
    PROBE,
    cancellation_storm,
    check_counted_once,
    check_quiet,
    mixed_soak,
    probe,
    start_endless,
    stats,
    warm_up,
)

pytestmark = pytest.mark.soak


@pytest.fixture
def endless_daemon(endless_pair: tuple[Path, Path], tmp_path: Path) -> Iterator[RunningDaemon]:
    running = start_endless(endless_pair, tmp_path / "home")
    try:
        yield running
    finally:
        stop_daemon(running.process)


def test_a_thousand_cancelled_requests(endless_daemon: RunningDaemon) -> None:
    reference, baseline, rss_before = warm_up(endless_daemon)
    tally = asyncio.run(cancellation_storm(endless_daemon, 1000, workers=4, seed=11))
    assert tally.disconnects >= 950
    check_quiet(endless_daemon, tally, baseline, rss_before)
    after = probe(endless_daemon)
    assert after["choices"][0]["text"] == reference["choices"][0]["text"]
    assert after["usage"]["completion_tokens"] == PROBE["max_tokens"]


def test_five_hundred_mixed_requests_with_disconnects(endless_daemon: RunningDaemon) -> None:
    reference, baseline, rss_before = warm_up(endless_daemon)
    tally = asyncio.run(mixed_soak(endless_daemon, 500, workers=3, seed=12))
    check_quiet(endless_daemon, tally, baseline, rss_before)
    check_counted_once(tally, baseline, stats(endless_daemon))
    assert len(tally.completed) >= 250 and tally.disconnects >= 100
    assert probe(endless_daemon)["choices"][0]["text"] == reference["choices"][0]["text"]
