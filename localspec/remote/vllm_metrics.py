"""vLLM's speculative-decoding counters, read from its Prometheus `/metrics` text."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

DRAFTED = "vllm:spec_decode_num_draft_tokens"
ACCEPTED = "vllm:spec_decode_num_accepted_tokens"


def speculative_counters(text: str) -> tuple[int, int] | None:
    """(drafted, accepted) tokens since the server started, summed over its engines; None if it does not
    speculate (no such counters)."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in (DRAFTED, ACCEPTED):
            continue
        for sample in family.samples:
            if sample.name in (family.name, f"{family.name}_total"):
                totals[family.name] = totals.get(family.name, 0.0) + sample.value
    if DRAFTED not in totals:
        return None
    return int(totals[DRAFTED]), int(totals.get(ACCEPTED, 0))
