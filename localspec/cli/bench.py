"""`localspec bench`: speed, acceptance and losslessness per workload and mode, optionally vs llama-server."""

from __future__ import annotations

import argparse
import datetime
import itertools
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localspec.cli import cost_scaling

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.console import Console

    from localspec.benchmark.runner import Run, ServerMode
    from localspec.benchmark.workloads import Task
    from localspec.engine import Engine, EngineSettings
    from localspec.engine.pass_costs import PassCosts

MODES = ("none", "draft", "ngram", "adaptive")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark speculative modes (and llama-server) on code workloads",
        description="Greedy decoding of each task in every mode; prints tok/s, acceptance, speedup over the "
        "target alone and how many outputs are identical to the target alone.",
    )
    parser.add_argument("--target", help="target GGUF path or catalog name (default: configured)")
    cost_scaling.add_flags(parser)
    parser.add_argument("--draft", help="draft GGUF path or catalog name (default: configured)")
    parser.add_argument(
        "--workloads",
        default="humaneval,fim,code-edit",
        help="comma-separated: humaneval, fim, code-edit (default: all three)",
    )
    parser.add_argument("--jsonl", type=Path, help="also run your own prompts (one JSON object per line)")
    parser.add_argument(
        "--prompts",
        default="10",
        help="prompts per workload: one number for all, or e.g. humaneval=20,fim=10,code-edit=10 (default 10); "
        "N@S draws them from HumanEval's problem S on (0-163), e.g. 20@100 for prompts not tuned on",
    )
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)}"
    )
    # Engine flags default to config.toml's [engine] and [speculative] values; given, they override them.
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads (default: engine.threads; 0 = all cores, 1 where the target is wholly on a GPU)",
    )
    parser.add_argument(
        "--gpu-layers", type=int, help="layers on the GPU (-1: all when available; default: engine's)"
    )
    parser.add_argument("--n-ctx", type=int, help="context tokens (default: engine.n_ctx)")
    parser.add_argument(
        "--draft-max",
        help="most tokens drafted per step, or auto: 24 on a GPU, 16 on a CPU (default: configured)",
    )
    parser.add_argument(
        "--draft-p-min",
        help="draft confidence floor, 0-1 or auto: from the measured cost of a draft token (default: configured)",
    )
    parser.add_argument(
        "--draft-ahead",
        choices=("auto", "on", "off"),
        help="the draft model drafts the next step while the target verifies (default: speculative.draft_ahead, "
        "auto: where both models run on a GPU)",
    )
    parser.add_argument(
        "--trace-steps",
        action="store_true",
        help="keep every step of localspec's runs in the JSON: draft source, drafts, accepted, drafts ready, "
        "pass size, ms (every round's, with --rounds)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run each mode's prompts this many times, the modes in turn and in reverse order every other round, "
        "and report the mean time (a machine whose speed drifts during the run weighs on every mode alike) and "
        "each round's speed",
    )
    parser.add_argument(
        "--pause",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long, untimed, before each request (localspec's and llama-server's), as a user does between "
        "requests: llama.cpp drops a CUDA graph unused for 10 s unless told otherwise (default: 0)",
    )
    parser.add_argument(
        "--no-target-alone",
        action="store_true",
        help="skip localspec's target-alone run (no speedups or identity checks): compares modes or engines with "
        "each other in less time",
    )
    parser.add_argument(
        "--tie-margin",
        type=float,
        help="near-tie settling threshold (default: the engine's, 0.1 on a GPU, 0.35 on a CPU)",
    )
    parser.add_argument(
        "--against-llama-server",
        type=Path,
        nargs="?",
        const=Path(),
        metavar="PATH",
        help="also run llama-server alone and in its speculative modes (binary path; default: the one "
        "`.ci/build-llama-server` builds, else PATH's)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("bench/results"), help="folder for JSON and PNG results"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from localspec.benchmark import report, runner, workloads
    from localspec.benchmark.machine import machine_info
    from localspec.config import draft_ahead_setting, load_config
    from localspec.engine import Engine, EngineSettings
    from localspec.engine.llama_model import check_model_files, shutdown, threads_for
    from localspec.errors import InvalidRequestError
    from localspec.gc_pauses import freeze_long_lived
    from localspec.models import resolve_run_models

    console = Console(stderr=True)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := [m for m in modes if m not in MODES]:
        raise InvalidRequestError(f"Unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}.")
    if args.rounds < 1:
        raise InvalidRequestError(f"--rounds must be 1 or more, not {args.rounds}.")
    if args.pause < 0:
        raise InvalidRequestError(f"--pause must be 0 or more seconds, not {args.pause:g}.")
    if args.no_target_alone:
        modes = [m for m in modes if m != "none"]
        if not modes:
            raise InvalidRequestError("--no-target-alone leaves no mode to run: name one in --modes.")
    elif "none" not in modes:
        modes.insert(0, "none")  # the reference every other mode is compared with
    names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if unknown := [w for w in names if w not in workloads.WORKLOADS]:
        raise InvalidRequestError(
            f"Unknown workload(s) {', '.join(unknown)}; choose from {', '.join(workloads.WORKLOADS)}."
        )
    counts = workloads.prompt_counts(args.prompts, names)
    scale = cost_scaling.scale_of(args)
    config = load_config(
        overrides={
            "threads": args.threads,
            "n_ctx": args.n_ctx,
            "target_gpu_layers": args.gpu_layers,
            "draft_gpu_layers": args.gpu_layers,
            "draft_max": args.draft_max,
            "draft_p_min": args.draft_p_min,
        }
    )
    source, draft = resolve_run_models(
        config.models_path(), config.target, config.draft, args.target, args.draft
    )
    check_model_files(source, draft)
    llama_server = runner.requested_llama_server(args.against_llama_server)
    if draft is None and "draft" in modes:
        modes.remove("draft")
        console.print("no draft model: the draft mode is skipped")
    tasks: list[Task] = workloads.tasks(args.prompts, names, args.max_tokens)
    if args.jsonl:
        tasks.extend(workloads.from_jsonl(args.jsonl, args.max_tokens))
    if not tasks:
        raise InvalidRequestError(
            "Nothing to run: name at least one --workloads entry or give --jsonl prompts."
        )
    target = cost_scaling.scaled_target(source, scale, args.scaled_dir, console)
    label = cost_scaling.target_label(source, scale)
    threads = threads_for(config.threads, config.target_gpu_layers)
    # One slot; each run names its mode, so the configured one only must not ask for a draft model that is absent.
    overrides: dict[str, Any] = {"threads": threads, "slots": 1, "mode": "adaptive"}
    if args.tie_margin is not None:
        overrides["tie_margin"] = args.tie_margin
    if args.draft_ahead is not None:
        overrides["draft_ahead"] = draft_ahead_setting(args.draft_ahead)
    settings = EngineSettings.from_config(config, target, draft, **overrides)

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"bench-{stamp}.json"
    meta: dict[str, Any] = {
        "date": stamp,
        **machine_info(),
        "threads": threads,
        "target": str(target),
        "target_label": label,
        "cost_scaled": cost_scaling.describe(source, scale),
        "draft": str(draft),
        "max_tokens": args.max_tokens,
        "prompts_per_workload": counts,
        "prompts": args.prompts,
        "rounds": args.rounds,
        "pause": args.pause,
        "n_ctx": settings.n_ctx,
        "gpu_layers": settings.target_gpu_layers,
        "draft_gpu_layers": settings.draft_gpu_layers,
        "draft_max_setting": "auto" if settings.draft_max is None else settings.draft_max,
        "draft_p_min_setting": "auto" if settings.draft_p_min is None else settings.draft_p_min,
        "history_tokens": settings.history_tokens,
        "llama_server_commands": {},
    }

    def keep(runs: list[Run], complete: bool) -> list[dict[str, Any]]:
        """Write what was measured so far: a run stopped or failing part-way keeps it (`meta.complete` false)."""
        rows = runner.summarize(runs)
        runner.write_json(json_path, {**meta, "complete": complete}, rows, runs)
        return rows

    runs: list[Run] = []
    engine: Engine | None = None
    try:
        try:
            engine = Engine(settings)
            freeze_long_lived()  # (as the daemon does once the models are in)
            start_up_prices = engine.costs.describe()  # what the chooser plans with before any request (ms)
            console.print(f"measured at start-up: {start_up_prices}")
            meta.update(
                tie_margin=engine.tie_margin,
                draft_ahead=engine.drafts_ahead,
                draft_max=engine.draft_max,
                start_up_prices=start_up_prices,
            )
            prompts = [runner.prompt_tokens(engine, task) for task in tasks]
            prices = {mode: engine.costs.copy() for mode in modes}
            runs = _run_localspec(
                engine,
                modes,
                tasks,
                prompts,
                console,
                args.trace_steps,
                args.rounds,
                lambda done: keep(done, False),
                prices,
                args.pause,
            )
            # The draft confidence floor follows the measured costs by default: as `adaptive`'s runs left them.
            engine.costs = prices.get("adaptive", engine.costs)
            draft_p_min = engine.draft_p_min()
            end_prices = engine.costs.describe()
            meta.update(
                draft_p_min=draft_p_min,
                end_prices=end_prices,
                end_prices_by_mode={mode: costs.describe() for mode, costs in prices.items()},
            )
            console.print(f"prices after the runs: {end_prices}; draft confidence floor {draft_p_min:.2f}")
            keep(runs, False)
        finally:
            if engine is not None:
                engine.close()
            shutdown()  # llama.cpp's process-wide state goes before the interpreter's teardown, in order
        if llama_server is not None:
            references: dict[tuple[str, str], Run] = {}
            for server_mode in runner.llama_server_modes(draft, meta["draft_max"], draft_p_min):
                server_runs, command = _run_llama_server(
                    args, llama_server, settings, server_mode, tasks, prompts, console
                )
                for result in server_runs:  # (the server alone runs first: every other mode's reference)
                    key = (result.workload, result.task_id)
                    if result.mode == "none":
                        references[key] = result
                    elif (reference := references.get(key)) is not None:
                        runner.compare(result, reference)
                runs += server_runs
                meta["llama_server_commands"][server_mode.name] = " ".join(command)
                keep(runs, False)
    except BaseException:
        if json_path.exists():
            console.print(f"stopped part-way; what was measured so far: {json_path} (meta.complete false)")
        raise

    rows = keep(runs, True)
    report.print_table(rows, Console(width=170), label)
    console.print(f"results: {json_path}")
    console.print(report.plot_in_child(json_path, args.out / f"bench-{stamp}.png"))
    return 0


def _run_localspec(
    engine: Engine,
    modes: list[str],
    tasks: list[Task],
    prompts: list[list[int]],
    console: Console,
    trace_steps: bool = False,
    rounds: int = 1,
    checkpoint: Callable[[list[Run]], object] = lambda runs: None,
    prices: dict[str, PassCosts] | None = None,
    pause: float = 0.0,
) -> list[Run]:
    """Every mode over every task (the target alone first), one workload at a time; `checkpoint` gets the runs
    so far after each workload. Each mode plans with prices of its own (`prices`, copies of the start-up ones
    unless given), learnt from its own passes only, as a session in that mode would: with one set, `adaptive`
    planned with passes (CUDA graph captures) that only the modes run before it had timed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from localspec.benchmark import runner
    from localspec.engine.drafters import NgramHistory
    from localspec.gc_pauses import freeze_long_lived

    runs: list[Run] = []
    prices = prices if prices is not None else {mode: engine.costs.copy() for mode in modes}
    # Warm-up (GPU kernels, CUDA graphs, caches) so the first measured mode is not penalised.
    for mode in modes:
        engine.costs = prices[mode]  # (its chooser, made in this run, keeps them)
        runner.run_localspec(engine, tasks[0], prompts[0][: min(len(prompts[0]), 64)], mode)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    # (the target alone first: every other mode's reference; every other round in reverse, `runner.merge_rounds`)
    order = sorted(modes, key=lambda mode: mode != "none")
    schedule = [mode for turn in range(rounds) for mode in (order if turn % 2 == 0 else order[::-1])]
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("localspec", total=len(tasks) * len(schedule))
        for _, workload in itertools.groupby(range(len(tasks)), key=lambda index: tasks[index].workload):
            indices = list(workload)
            # Each mode runs a workload's tasks one after another, as a session in that mode would: on a GPU a
            # request starts from the CUDA graph its predecessor left (llama.cpp keeps one per context, and a pass of
            # another shape re-instantiates it), so a mode run right after another mode would start from that
            # mode's. Each mode's history of earlier outputs starts empty for each workload: the workloads share
            # problems, and no run may copy an earlier answer to its own problem (or another mode's answer).
            by_mode: dict[str, list[list[Run]]] = {mode: [[] for _ in indices] for mode in order}
            for mode in schedule:
                engine.history = NgramHistory(engine.settings.history_tokens)
                engine.costs = prices[mode]
                for position, index in enumerate(indices):
                    task, tokens = tasks[index], prompts[index]
                    progress.update(bar, description=f"localspec {mode:<8} {task.workload} {task.task_id}")
                    time.sleep(pause)  # (a user's time between requests, `--pause`)
                    by_mode[mode][position].append(
                        runner.run_localspec(engine, task, tokens, mode, record_steps=trace_steps)
                    )
                    # (the runs' records live on, as nothing a daemon's request leaves does: frozen with the rest,
                    # so that a full collection walking them never falls in a later run)
                    freeze_long_lived()
                    progress.advance(bar)
            references: dict[int, Run] = {}
            for mode in order:
                for index, attempts in zip(indices, by_mode[mode], strict=True):
                    task, tokens = tasks[index], prompts[index]
                    result = runner.merge_rounds(attempts)
                    if mode == "none":
                        references[index] = result
                    elif reference := references.get(index):
                        runner.compare(result, reference)
                        # A divergence is explained by the target's margin there, read from an untimed run.
                        if result.divergence and not reference.margins:
                            runner.fill_margins(engine, task, tokens, reference)
                            runner.compare(result, reference)
                    runs.append(result)
            checkpoint(runs)
    return runs


def _run_llama_server(
    args: argparse.Namespace,
    llama_server: Path,
    settings: EngineSettings,
    mode: ServerMode,
    tasks: list[Task],
    prompts: list[list[int]],
    console: Console,
) -> tuple[list[Run], list[str]]:
    """One llama-server mode over every task. A fresh server per workload, warmed up by one request, as localspec's
    modes are: its n-gram table (ngram-mod) lives as long as the server, like localspec's per-workload history."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from localspec.benchmark import runner

    runs: list[Run] = []
    command: list[str] = []
    layers = "all" if settings.target_gpu_layers < 0 else str(settings.target_gpu_layers)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task(f"llama-server {mode.name}", total=len(tasks))
        for workload in dict.fromkeys(task.workload for task in tasks):
            mine = [(t, p) for t, p in zip(tasks, prompts, strict=True) if t.workload == workload]
            server = runner.LlamaServer(
                llama_server,
                settings.target_path,
                mode,
                settings.n_ctx,
                settings.threads,
                layers,
                args.out / "llama-server.log",
            )
            command = server.command
            try:
                first, first_tokens = mine[0]
                server.complete(first_tokens[:64], first.max_tokens)  # warm-up, as localspec's modes get
                for task, tokens in mine:
                    time.sleep(args.pause)  # (as before localspec's requests)
                    runs.append(runner.run_llama_server(server, mode.name, task, tokens))
                    progress.advance(bar)
            finally:
                server.close()
    return runs, command
