"""`localspec bench`: speed, acceptance and losslessness per workload and mode, optionally vs llama-server."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
from pathlib import Path
from typing import Any

MODES = ("none", "draft", "ngram", "adaptive")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark speculative modes (and llama-server) on code workloads",
        description="Greedy decoding of each task in every mode; prints tok/s, acceptance, speedup over the "
        "target alone and how many outputs are identical to the target alone.",
    )
    parser.add_argument("--target", help="target GGUF path or catalog name (default: configured)")
    parser.add_argument("--draft", help="draft GGUF path or catalog name (default: configured)")
    parser.add_argument(
        "--workloads",
        default="humaneval,fim,code-edit",
        help="comma-separated: humaneval, fim, code-edit (default: all three)",
    )
    parser.add_argument("--jsonl", type=Path, help="also run your own prompts (one JSON object per line)")
    parser.add_argument("--prompts", type=int, default=10, help="prompts per workload (default 10)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)}"
    )
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    parser.add_argument(
        "--gpu-layers", type=int, default=-1, help="layers on the GPU (-1: all when available)"
    )
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--draft-max", type=int, default=16)
    parser.add_argument("--draft-p-min", type=float, default=0.75)
    parser.add_argument("--tie-margin", type=float, help="near-tie settling threshold (default: engine's)")
    parser.add_argument(
        "--against-llama-server",
        type=Path,
        metavar="PATH",
        help="llama-server binary: also run it alone and in its speculative modes",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("bench/results"), help="folder for JSON and PNG results"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from localspec.benchmark import report, runner, workloads
    from localspec.config import load_config
    from localspec.engine import Engine, EngineSettings
    from localspec.engine.drafters import NgramHistory
    from localspec.engine.engine import DEFAULT_TIE_MARGIN
    from localspec.engine.llama_model import default_threads
    from localspec.errors import InvalidRequestError
    from localspec.model_paths import resolve_model_paths

    console = Console(stderr=True)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := [m for m in modes if m not in MODES]:
        raise InvalidRequestError(f"Unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}.")
    if "none" not in modes:
        modes.insert(0, "none")  # the reference every other mode is compared with
    config = load_config()
    target, draft = resolve_model_paths(config, args.target, args.draft)
    threads = args.threads or default_threads()
    tasks: list[workloads.Task] = []
    for name in [w.strip() for w in args.workloads.split(",") if w.strip()]:
        if name not in workloads.WORKLOADS:
            raise InvalidRequestError(
                f"Unknown workload {name!r}; choose from {', '.join(workloads.WORKLOADS)}."
            )
        tasks.extend(workloads.WORKLOADS[name](args.prompts, args.max_tokens))
    if args.jsonl:
        tasks.extend(workloads.from_jsonl(args.jsonl, args.max_tokens))

    engine = Engine(
        EngineSettings(
            target_path=target,
            draft_path=draft,
            n_ctx=args.n_ctx,
            threads=threads,
            target_gpu_layers=args.gpu_layers,
            draft_gpu_layers=args.gpu_layers,
            slots=1,
            draft_max=args.draft_max,
            draft_p_min=args.draft_p_min,
            tie_margin=DEFAULT_TIE_MARGIN if args.tie_margin is None else args.tie_margin,
        )
    )
    start_up_prices = engine.costs.describe()  # what the chooser plans with before any request (milliseconds)
    console.print(f"measured at start-up: {start_up_prices}")
    prompts = [runner.prompt_tokens(engine, task) for task in tasks]
    server_modes = runner.llama_server_modes(draft) if args.against_llama_server else []
    runs: list[runner.Run] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    # Warm-up (GPU kernels, CUDA graphs, caches) so the first measured mode is not penalised.
    for mode in modes:
        runner.run_localspec(engine, tasks[0], prompts[0][: min(len(prompts[0]), 64)], mode)
    # Each mode keeps its own history of earlier outputs, as a session would, so that no mode can copy another
    # mode's output of the same prompt: only earlier tasks' outputs feed the n-gram drafter.
    histories = {mode: NgramHistory() for mode in modes}
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("localspec", total=len(tasks) * len(modes))
        for task, tokens in zip(tasks, prompts, strict=True):
            reference = None
            for mode in modes:
                progress.update(bar, description=f"localspec {mode:<8} {task.workload} {task.task_id}")
                engine.history = histories[mode]
                result = runner.run_localspec(engine, task, tokens, mode)
                if mode == "none":
                    reference = result
                elif reference is not None:
                    runner.compare(result, reference)
                    # A divergence is explained by the target's margin there, read from an untimed run.
                    if result.divergence and not reference.margins:
                        runner.fill_margins(engine, task, tokens, reference)
                        runner.compare(result, reference)
                runs.append(result)
                progress.advance(bar)
        engine.close()
        args.out.mkdir(parents=True, exist_ok=True)
        for server_mode in server_modes:
            bar = progress.add_task(f"llama-server {server_mode.name}", total=len(tasks))
            server = runner.LlamaServer(
                args.against_llama_server,
                target,
                server_mode,
                args.n_ctx,
                threads,
                99 if args.gpu_layers < 0 else args.gpu_layers,
                args.out / "llama-server.log",
            )
            try:
                references = {
                    (r.workload, r.task_id): r
                    for r in runs
                    if r.system == "llama-server" and r.mode == "none"
                }
                for task, tokens in zip(tasks, prompts, strict=True):
                    result = runner.run_llama_server(server, server_mode.name, task, tokens)
                    if server_mode.name != "none" and (task.workload, task.task_id) in references:
                        runner.compare(result, references[(task.workload, task.task_id)])
                    runs.append(result)
                    progress.advance(bar)
            finally:
                server.close()

    rows = runner.summarize(runs)
    report.print_table(rows, Console(width=170))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    meta = {
        "date": stamp,
        "machine": platform.node(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": threads,
        "target": str(target),
        "draft": str(draft),
        "max_tokens": args.max_tokens,
        "prompts_per_workload": args.prompts,
        "gpu_layers": args.gpu_layers,
        "tie_margin": engine.settings.tie_margin,
        "start_up_prices": start_up_prices,
    }
    json_path = args.out / f"bench-{stamp}.json"
    runner.write_json(json_path, meta, rows, runs)
    console.print(f"results: {json_path}")
    try:
        console.print(f"plot: {report.plot(rows, args.out / f'bench-{stamp}.png')}")
    except ImportError:
        console.print("plot skipped: pip install matplotlib (or localspec[bench])")
    return 0
