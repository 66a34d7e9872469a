"""The language server's cancellation storm at issue scale: 1,000 superseded or cancelled completions
(`pytest -m soak tests/soak`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import test_lsp_server as lsp
from conftest import RunningDaemon
from test_reliability_load import RSS_BOUND_MB, cache_mb, rss_mb, wait_quiet
from test_reliability_lsp import STORM, cut_off, endless_daemon, lsp_storm  # noqa: F401  (fixtures)

pytestmark = pytest.mark.soak
start_lsp = lsp.start_lsp


async def test_a_thousand_lsp_completions_superseded_or_cancelled(
    endless_daemon: RunningDaemon,  # noqa: F811
    start_lsp: lsp.StartLsp,
    tmp_path: Path,
) -> None:
    client = await start_lsp(endless_daemon.home, STORM)
    uri = lsp.open_document(client, tmp_path, "main.py", lsp.DOC)
    baseline = wait_quiet(endless_daemon)
    rss_before = rss_mb(endless_daemon)

    outcome = await lsp_storm(client, uri, 1000, seed=4)

    # A few single-line suggestions may finish between two keystrokes; the rest were cut off.
    assert sum(outcome.values()) == 1000 and outcome["suggested"] <= 20, outcome
    counters = (await lsp.stats(client))["suggestions"]
    assert cut_off(counters, outcome, 1000) >= 980, counters
    after = wait_quiet(endless_daemon)
    assert not any(slot["busy"] for slot in after["engine"]["slots"])
    assert after["errors"] == baseline["errors"]
    # Each generation the daemon started for a superseded or cancelled request was stopped, not run to its end.
    received = sum(after["requests"].values()) - sum(baseline["requests"].values())
    assert after["finish_reasons"].get("cancelled", 0) >= received - 20, after["finish_reasons"]
    cached = cache_mb(after) - cache_mb(baseline)  # (copies of the typed prompts, within the cache's budget)
    assert rss_mb(endless_daemon) - rss_before - cached < RSS_BOUND_MB
    assert (await lsp.stats(client))["in_flight"] == 0
