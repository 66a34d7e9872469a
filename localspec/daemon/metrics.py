"""Prometheus text exposition of the daemon's stats (GET /metrics)."""

from __future__ import annotations

from typing import Any

# (metric name, type, help, key in engine stats)
_ENGINE_METRICS = (
    ("localspec_generated_tokens_total", "counter", "Tokens generated.", "tokens"),
    ("localspec_drafted_tokens_total", "counter", "Tokens proposed by drafters.", "drafted"),
    ("localspec_accepted_tokens_total", "counter", "Drafted tokens the target accepted.", "accepted"),
    ("localspec_acceptance_ratio", "gauge", "Accepted / drafted tokens.", "acceptance"),
    ("localspec_tokens_per_second", "gauge", "Decode speed over all requests.", "tokens_per_second"),
    (
        "localspec_cache_hit_tokens_total",
        "counter",
        "Prompt tokens reused from KV cache.",
        "cache_hit_tokens",
    ),
)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _label(value: Any) -> str:
    return str(value or "").replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(stats: dict[str, Any]) -> str:
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{labels} {value:g}" for labels, value in samples)

    engine = stats.get("engine", {})
    for name, kind, help_text, key in _ENGINE_METRICS:
        value = _number(engine.get(key))
        if value is not None:
            metric(name, kind, help_text, [("", value)])
    metric(
        "localspec_received_requests_total",
        "counter",
        "Requests queued for the engine.",
        [("", float(stats.get("received", 0)))],
    )
    metric(
        "localspec_requests_total",
        "counter",
        "Finished requests by kind.",
        [(f'{{kind="{k}"}}', float(v)) for k, v in sorted(stats.get("requests", {}).items())],
    )
    metric(
        "localspec_finished_total",
        "counter",
        "Finished requests by finish reason.",
        [(f'{{finish_reason="{k}"}}', float(v)) for k, v in sorted(stats.get("finish_reasons", {}).items())],
    )
    metric(
        "localspec_request_errors_total",
        "counter",
        "Requests that failed.",
        [("", float(stats.get("errors", 0)))],
    )
    metric(
        "localspec_preemptions_total",
        "counter",
        "Times a request pre-empted another between decode steps.",
        [("", float(stats.get("preemptions", 0)))],
    )
    metric(
        "localspec_queue_length",
        "gauge",
        "Requests waiting for the engine.",
        [("", float(stats.get("queue_length", 0)))],
    )
    metric(
        "localspec_active_generations",
        "gauge",
        "Generations in progress.",
        [("", float(stats.get("active", 0)))],
    )
    backend = stats.get("backend") or {}
    labels = f'{{backend="{_label(backend.get("name"))}",kind="{_label(backend.get("kind", "llama-cpp-python"))}"}}'
    metric(
        "localspec_backend_info",
        "gauge",
        "The engine that serves: local, or a remote server.",
        [(labels, 1.0)],
    )
    metric(
        "localspec_up",
        "gauge",
        "1 when models are loaded and serving.",
        [("", 1.0 if stats.get("status") == "ok" else 0.0)],
    )
    return "\n".join(lines) + "\n"
