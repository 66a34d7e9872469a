"""`localspec bench-editor`: how long an inline suggestion takes to appear in an editor, vs llama-server /infill."""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path
from typing import Any

from localspec.cli import cost_scaling

LINE_MODES = ("single", "multi")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench-editor",
        help="benchmark editor latency: the language server's inline suggestions (and llama-server /infill)",
        description="Opens source files in a real LSP client talking to `localspec lsp` and a `localspec serve` "
        "of its own, jumps around them and types, and times every inline suggestion; optionally replays the same "
        "cursor states through llama-server's /infill.",
    )
    parser.add_argument("sources", nargs="+", type=Path, metavar="SOURCE", help="source files or folders")
    parser.add_argument("--target", help="target GGUF path or catalog name (default: configured)")
    cost_scaling.add_flags(parser)
    parser.add_argument("--draft", help="draft GGUF path or catalog name (default: configured)")
    parser.add_argument("--files", type=int, default=3, help="files to open: the longest ones (default 3)")
    parser.add_argument(
        "--min-lines", type=int, default=200, help="only files of at least this many lines (default 200)"
    )
    parser.add_argument("--jumps", type=int, default=20, help="jumps per scenario and line mode (default 20)")
    parser.add_argument(
        "--line-modes", default=",".join(LINE_MODES), help="comma-separated: single, multi (default both)"
    )
    parser.add_argument(
        "--max-tokens", type=int, default=64, help="the language server's maxTokens (default 64)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the places jumped to (default 0)")
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads (default: engine.threads; 0 = all cores, 1 where the target is wholly on a GPU)",
    )
    parser.add_argument(
        "--gpu-layers", type=int, help="layers on the GPU (-1: all when available; default: configured)"
    )
    parser.add_argument("--n-ctx", type=int, default=4096, help="context tokens, both systems (default 4096)")
    parser.add_argument(
        "--warm-timeout",
        type=float,
        default=1800.0,
        metavar="SECONDS",
        help="longest wait for the daemon to load and the opened files to be pre-processed (default 1800)",
    )
    parser.add_argument(
        "--against-llama-server",
        type=Path,
        nargs="?",
        const=Path(),
        metavar="PATH",
        help="also replay the same requests through llama-server /infill (binary path; default: the one "
        "`.ci/build-llama-server` builds, else PATH's)",
    )
    parser.add_argument(
        "--llama-server-modes",
        default="plain,cache-reuse",
        help="comma-separated: plain, cache-reuse, draft (cache-reuse with the draft model)",
    )
    parser.add_argument(
        "--daemon-config",
        type=Path,
        metavar="TOML",
        help="config.toml for the benchmark's own daemon (default: none; the daemon runs in a home of its own, "
        "so your config.toml and LOCALSPEC_* settings do not reach it), e.g. to measure an engine setting",
    )
    parser.add_argument(
        "--out", type=Path, help="JSON results (default: bench/results/bench-editor-DATE.json)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from localspec.benchmark.editor import BenchOptions, run_benchmark
    from localspec.benchmark.runner import requested_llama_server
    from localspec.config import load_config
    from localspec.engine.llama_model import check_model_files, threads_for
    from localspec.errors import ConfigError, InvalidRequestError
    from localspec.models import resolve_run_models

    line_modes = tuple(m.strip() for m in args.line_modes.split(",") if m.strip())
    if not line_modes or any(m not in LINE_MODES for m in line_modes):
        raise InvalidRequestError(f"--line-modes takes single and/or multi, not {args.line_modes!r}.")
    server_modes = tuple(m.strip() for m in args.llama_server_modes.split(",") if m.strip())
    for flag, value in (("--files", args.files), ("--jumps", args.jumps), ("--max-tokens", args.max_tokens)):
        if value < 1:
            raise InvalidRequestError(f"{flag} must be at least 1, not {value}.")
    llama_server = requested_llama_server(args.against_llama_server)
    if args.daemon_config is not None:
        if not args.daemon_config.is_file():
            raise InvalidRequestError(f"--daemon-config {args.daemon_config}: no such file.")
        try:  # (a bad file fails here, before anything starts)
            load_config(args.daemon_config, environ={})
        except ConfigError as exc:
            raise ConfigError(f"--daemon-config {args.daemon_config}: {exc}") from exc
    config = load_config(
        overrides={
            "threads": args.threads,
            "target_gpu_layers": args.gpu_layers,
            "draft_gpu_layers": args.gpu_layers,
        }
    )
    source, draft = resolve_run_models(
        config.models_path(), config.target, config.draft, args.target, args.draft
    )
    check_model_files(source, draft)
    console = Console(width=170)
    scale = cost_scaling.scale_of(args)
    options = BenchOptions(
        sources=args.sources,
        target=cost_scaling.scaled_target(source, scale, args.scaled_dir, console),
        draft=draft,
        files=args.files,
        min_lines=args.min_lines,
        jumps=args.jumps,
        line_modes=line_modes,
        max_tokens=args.max_tokens,
        seed=args.seed,
        threads=threads_for(config.threads, config.target_gpu_layers),
        gpu_layers=config.target_gpu_layers,
        n_ctx=args.n_ctx,
        warm_timeout=args.warm_timeout,
        llama_server=llama_server,
        server_modes=server_modes,
        daemon_config=args.daemon_config,
        cost_scaled=cost_scaling.describe(source, scale),
        target_label=cost_scaling.target_label(source, scale),
    )
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or Path("bench/results") / f"bench-editor-{stamp}.json"
    run_benchmark(options, out, console)
    return 0
