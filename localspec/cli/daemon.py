"""`localspec serve | status | stop`: run the daemon, ask how it is, stop it. Heavy imports stay in the handlers."""

from __future__ import annotations

import argparse
import json
from typing import Any

# CLI flag -> Config field; values left None do not override.
_SERVE_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--host", "host", str, "address to bind (default 127.0.0.1; others need --allow-remote)"),
    ("--port", "port", int, "port (default 8717; 0 picks a free one, recorded in daemon.json)"),
    ("--target", "target", str, "target model: catalog name or .gguf path"),
    ("--draft", "draft", str, "draft model: catalog name or .gguf path"),
    ("--n-ctx", "n_ctx", int, "context tokens per slot"),
    ("--threads", "threads", int, "CPU threads (0 = all cores; 1 for a model wholly on a GPU)"),
    ("--slots", "slots", int, "KV-cache slots (generations alive at once)"),
    ("--target-gpu-layers", "target_gpu_layers", int, "target layers on the GPU (-1 = all)"),
    ("--draft-gpu-layers", "draft_gpu_layers", int, "draft layers on the GPU (-1 = all)"),
    ("--mode", "mode", str, "speculative mode: adaptive, draft, ngram or none"),
    ("--draft-max", "draft_max", str, "most tokens drafted per step, or auto (24 on a GPU, 16 on a CPU)"),
    ("--backend", "backend", str, "local (llama.cpp here) or remote (an inference server; docs/REMOTE.md)"),
    ("--remote-url", "remote_url", str, "the remote server's address, e.g. http://10.0.0.5:8080"),
    ("--remote-model", "remote_model", str, "the model name the remote serves (default: its first)"),
    ("--remote-kind", "remote_kind", str, "auto, llama-server, vllm or openai"),
    ("--remote-api-key-file", "remote_api_key_file", str, "file holding the remote's bearer key"),
    (
        "--remote-timeout",
        "remote_timeout",
        float,
        "seconds the remote may stay silent before a request fails",
    ),
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = subparsers.add_parser("serve", help="run the daemon (HTTP API on 127.0.0.1:8717)")
    for flag, dest, kind, help_text in _SERVE_FLAGS:
        serve.add_argument(flag, dest=dest, type=kind, default=None, help=help_text)
    serve.add_argument(
        "--allow-origin",
        dest="allow_origins",
        action="append",
        default=None,
        metavar="ORIGIN",
        help="browser origin allowed to call the API (repeatable; enables CORS for it)",
    )
    serve.add_argument("--allow-remote", action="store_true", help="allow binding a non-loopback --host")
    serve.add_argument("--no-watch", action="store_true", help="do not reload when config.toml changes")
    serve.add_argument(
        "-v", "--verbose", action="store_true", help="log to stderr too (always to the log file)"
    )
    serve.set_defaults(func=_serve)

    status = subparsers.add_parser("status", help="show whether the daemon runs, its models and speed")
    status.add_argument("--json", action="store_true", help="print machine-readable JSON")
    status.set_defaults(func=_status)

    stop = subparsers.add_parser("stop", help="stop the running daemon")
    stop.set_defaults(func=_stop)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    values = {dest: getattr(args, dest) for _, dest, _, _ in _SERVE_FLAGS}
    values["allow_origins"] = args.allow_origins
    return values


def _serve(args: argparse.Namespace) -> int:
    from localspec.config import load_config
    from localspec.daemon.serve import run

    overrides = _overrides(args)
    config = load_config(overrides=overrides)
    return run(
        config, overrides, allow_remote=args.allow_remote, verbose=args.verbose, watch=not args.no_watch
    )


def _status(args: argparse.Namespace) -> int:
    from localspec.client import DaemonClient, discover
    from localspec.errors import LocalspecError

    info = discover()
    if info is None:
        print(json.dumps({"running": False}) if args.json else "No localspec daemon is running.")
        return 3
    report: dict[str, Any] = {"running": True, "url": info.url, "pid": info.pid}
    try:
        with DaemonClient(info.url) as client:
            report["health"] = client.health()
            report["stats"] = client.stats()
    except LocalspecError as exc:
        report["error"] = str(exc)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"localspec daemon at {info.url} (pid {info.pid})")
    if "error" in report:
        print(f"  not answering: {report['error']}")
        return 1
    health, stats = report["health"], report["stats"]
    print(f"  status: {health['status']}")
    print(f"  backend: {_backend_line(health.get('backend') or {})}")
    print(f"  target: {health['models'].get('target')}  draft: {health['models'].get('draft')}")
    for error in health.get("errors", []):
        print(f"  error: {error['message']}")
    engine = stats.get("engine", {})
    if engine:
        print(
            f"  requests: {engine.get('requests', 0)}  tokens: {engine.get('tokens', 0)}  "
            f"tokens/s: {engine.get('tokens_per_second', 0)}  acceptance: {_percent(engine.get('acceptance'))}  "
            f"cache hits: {_known(engine.get('cache_hit_tokens'))} tokens"
        )
    if cache := engine.get("prompt_cache"):
        print(
            f"  prompt cache: {cache['entries']} copies, {cache['bytes'] / 2**30:.1f} of "
            f"{cache['max_bytes'] / 2**30:.1f} GiB (engine.prompt_cache_mb); saved {cache['saves']}, "
            f"restored {cache['restores']}, dropped for room {cache.get('dropped', 0)}"
        )
    print(f"  queue: {stats.get('queue_length', 0)}  active: {stats.get('active', 0)}")
    return 0


def _backend_line(backend: dict[str, Any]) -> str:
    if backend.get("name") != "remote":
        return "local (llama.cpp in the daemon)"
    return f"remote {backend.get('kind')} at {backend.get('url')}, model {backend.get('model') or '(first listed)'}"


def _known(value: Any) -> str:
    """A stat, or "unknown" where the backend does not report it (null), never a made-up 0."""
    return "unknown" if value is None else str(value)


def _percent(value: Any) -> str:
    return "unknown" if value is None else f"{value:.0%}"


def _stop(args: argparse.Namespace) -> int:
    from localspec.client import stop_daemon

    info = stop_daemon()
    if info is None:
        print("No localspec daemon is running.")
        return 0
    print(f"Stopped the localspec daemon (pid {info.pid}).")
    return 0
