"""Run tasks through localspec's engine in each mode, and through llama-server, recording one row per run."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from localspec.benchmark.child_process import ends_with_this_process
from localspec.benchmark.workloads import Task
from localspec.build_flags import CPU_FA_SPLIT_KV_ENV, CUDA_GRAPH_KEEP_ENV, CUDA_GRAPH_KEY_ENV, KV_PAD_ENV
from localspec.engine import Engine, GenerationRequest
from localspec.engine.drafters import NgramHistory
from localspec.engine.prefix_cache import common_prefix_length
from localspec.errors import InvalidRequestError, LocalspecError

TARGET_ALONE = "none"


@dataclass
class Run:
    system: str  # "localspec" or "llama-server"
    mode: str
    workload: str
    task_id: str
    tokens: int
    decode_seconds: float
    drafted: int
    accepted: int
    target_passes: int
    text: str
    settled: int = 0
    # Drafts made while the target verified the step before (`DraftModelDrafter.run_ahead`).
    drafted_ahead: int = 0
    second_chains: int = 0  # steps that found a chain drafted from the draft model's second choice
    settled_near_ties: int = 0  # positions re-evaluated alone because a batched pass found a near-tie there
    steps_by_source: dict[str, int] = field(default_factory=dict)
    token_ids: list[int] = field(default_factory=list)
    # The later rounds' outputs, with `bench --rounds` (each compared with the target alone's, not written).
    later_token_ids: list[list[int]] = field(default_factory=list)
    time_split: dict[str, float] = field(default_factory=dict)
    margins: list[float] = field(default_factory=list)
    identical: bool | None = None  # vs the same system's target-alone output
    divergence: dict[str, Any] | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)  # `StepRecord`s, with `bench --trace-steps`
    # Each round's decode seconds and tokens, with `bench --rounds`; with `--trace-steps`, the later rounds' steps.
    round_seconds: list[float] = field(default_factory=list)
    round_tokens: list[int] = field(default_factory=list)
    later_steps: list[list[dict[str, Any]]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("margins")
        data.pop("token_ids")
        data.pop("later_token_ids")
        for optional in ("steps", "round_seconds", "round_tokens", "later_steps"):
            if not data[optional]:
                data.pop(optional)
        return data


def merge_rounds(attempts: list[Run]) -> Run:
    """One run of a task in one mode from its rounds (`bench --rounds`): the first round's output, steps and
    counts, timed at the rounds' mean rate (a speculative mode may settle a near-tie otherwise in another round,
    and so stop at another length). The later rounds' outputs are kept for `compare` (each must be the target
    alone's), and their steps beside the first's (`later_steps`): `adaptive` plans them with what it learnt in the
    rounds before."""
    first = attempts[0]
    if len(attempts) == 1:
        return first
    round_seconds = [attempt.decode_seconds for attempt in attempts]
    tokens = sum(attempt.tokens for attempt in attempts)
    scale = first.tokens / tokens if tokens else 1.0 / len(attempts)
    first.time_split = {
        key: sum(attempt.time_split.get(key, 0.0) for attempt in attempts) * scale for key in first.time_split
    }
    first.decode_seconds = sum(round_seconds) * scale
    first.round_seconds = round_seconds
    first.round_tokens = [attempt.tokens for attempt in attempts]
    first.later_token_ids = [attempt.token_ids for attempt in attempts[1:]]
    first.later_steps = [attempt.steps for attempt in attempts[1:]] if first.steps else []
    return first


def prompt_tokens(engine: Engine, task: Task) -> list[int]:
    """The exact token ids both systems get, so their outputs are comparable."""
    if task.kind == "infill":
        return engine.infill_prompt(task.prefix, task.suffix, max_tokens=task.max_tokens)
    text = engine.chat_prompt(task.messages) if task.kind == "chat" else task.prompt
    return engine.tokenize(text, add_bos=engine.target.adds_bos())


def run_localspec(
    engine: Engine,
    task: Task,
    tokens: list[int],
    mode: str,
    record_margins: bool = False,
    record_steps: bool = False,
) -> Run:
    engine.reset_cache()  # every run pays for its prompt alike; decode speed is what is compared
    result = engine.complete(
        GenerationRequest(
            prompt=tokens,
            max_tokens=task.max_tokens,
            speculative=mode,  # type: ignore[arg-type]
            slot="bench",
            record_margins=record_margins,
            record_steps=record_steps,
        )
    )
    stats = result.stats
    return Run(
        system="localspec",
        mode=mode,
        workload=task.workload,
        task_id=task.task_id,
        tokens=stats.tokens,
        decode_seconds=stats.t_total - stats.t_prompt,
        drafted=stats.drafted,
        accepted=stats.accepted,
        target_passes=stats.target_passes,
        text=result.text,
        token_ids=result.token_ids,
        settled=stats.settled,
        drafted_ahead=stats.drafted_ahead,
        second_chains=stats.second_chains,
        settled_near_ties=stats.settled_near_ties,
        steps_by_source=dict(stats.steps_by_source),
        time_split={
            "plan": stats.t_plan,
            "draft": stats.t_draft,
            "verify": stats.t_verify,
            "sample": stats.t_sample,
        },
        margins=stats.margins,
        steps=[asdict(step) for step in stats.steps],
    )


def fill_margins(engine: Engine, task: Task, tokens: list[int], reference: Run) -> None:
    """Give the target-alone `reference` its top-2 margin at every position, from a second, untimed run: recording
    them in the timed run would cost it a second pass over every logits row, which a real target-alone run skips.
    Greedy decoding repeats itself, so the second run settles the same tokens (checked)."""
    history = engine.history
    engine.history = NgramHistory(0)  # (this run's output must not feed any mode's n-gram history)
    try:
        again = run_localspec(engine, task, tokens, TARGET_ALONE, record_margins=True)
    finally:
        engine.history = history
    if again.token_ids == reference.token_ids:
        reference.margins = again.margins


def compare(run: Run, reference: Run) -> None:
    """Mark `run` identical or not to the target-alone `reference`, every round's output with `bench --rounds` (a
    near-tie may go another way in another round); at the first divergence, record where, how close, and in which
    round."""
    if run.token_ids or reference.token_ids:
        outputs = [run.token_ids, *run.later_token_ids]
        run.identical, run.divergence = True, None
        for number, tokens in enumerate(outputs, 1):
            if tokens == reference.token_ids:
                continue
            position = common_prefix_length(tokens, reference.token_ids)
            margin = reference.margins[position] if position < len(reference.margins) else None
            run.identical = False
            run.divergence = {"position": position, "target_alone_margin": margin}
            if len(outputs) > 1:
                run.divergence["round"] = number
            break
    else:
        run.identical = run.text == reference.text
        if not run.identical:
            position = next(
                (i for i, (a, b) in enumerate(zip(run.text, reference.text, strict=False)) if a != b),
                min(len(run.text), len(reference.text)),
            )
            run.divergence = {"char_position": position}


# ---- llama-server ------------------------------------------------------------------------------------------------


@dataclass
class ServerMode:
    name: str
    args: list[str]


def llama_server_modes(draft: Path | None, draft_max: int, draft_p_min: float) -> list[ServerMode]:
    """llama-server alone and in its speculative modes; its draft-model mode drafts as localspec's engine is set."""
    draft_p_min = round(draft_p_min, 2)
    modes = [ServerMode(TARGET_ALONE, [])]
    if draft is not None:
        modes.append(
            ServerMode(
                f"draft-simple n{draft_max} p{draft_p_min:g}",
                [
                    "-md",
                    str(draft),
                    "--spec-type",
                    "draft-simple",
                    "--spec-draft-n-max",
                    str(draft_max),
                    "--spec-draft-p-min",
                    f"{draft_p_min:g}",
                ],
            )
        )
        modes.append(
            ServerMode(
                "draft-simple n8",
                ["-md", str(draft), "--spec-type", "draft-simple", "--spec-draft-n-max", "8"],
            )
        )
    modes.append(ServerMode("ngram-mod", ["--spec-type", "ngram-mod"]))
    return modes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_llama_server(given: Path | None) -> Path:
    """The llama-server binary to compare with: `given`, else LOCALSPEC_LLAMA_CPP_BIN's, else the one
    `.ci/build-llama-server` builds into localspec's build cache, else the first on PATH. Checked before a
    benchmark starts, so a wrong path fails at once, not after the minutes of localspec's own runs."""
    if given is not None:
        if not given.is_file():
            raise InvalidRequestError(f"--against-llama-server: {given} is not a file.")
        if not os.access(given, os.X_OK):
            raise InvalidRequestError(f"--against-llama-server: {given} is not executable (chmod +x it).")
        return given
    import llama_cpp

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folders = [
        os.environ.get("LOCALSPEC_LLAMA_CPP_BIN"),
        str(cache / "localspec-build" / f"llama.cpp-{llama_cpp.__version__}" / "bin"),
    ]
    for folder in folders:
        if folder and (Path(folder) / "llama-server").is_file():
            return Path(folder) / "llama-server"
    if found := shutil.which("llama-server"):
        return Path(found)
    raise InvalidRequestError(
        "No llama-server found: give its path (--against-llama-server PATH) or run .ci/build-llama-server."
    )


def requested_llama_server(argument: Path | None) -> Path | None:
    """The llama-server that `--against-llama-server [PATH]` asks for, checked (`find_llama_server`): None where
    the flag is absent; the one found where it names no path (argparse's `const`, `Path()`)."""
    if argument is None:
        return None
    return find_llama_server(argument if argument != Path() else None)


class LlamaServer:
    """A llama-server process for one mode; stopped on exit. It keys its CUDA graphs and pads its KV length as
    upstream's llama.cpp does (GGML_CUDA_GRAPH_KEY=node, no LLAMA_KV_PAD: see localspec/llama_patches) whatever
    this process is set to: the comparison is with the llama.cpp that llama-cpp-python vendors."""

    def __init__(
        self,
        binary: Path,
        target: Path,
        mode: ServerMode,
        n_ctx: int,
        threads: int,
        gpu_layers: str,
        log: Path,
    ) -> None:
        self.port = _free_port()
        command = [
            str(binary),
            "-m",
            str(target),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "-c",
            str(n_ctx),
            "-np",
            "1",
            "-t",
            str(threads),
            "-tb",
            str(threads),
            "-ngl",
            gpu_layers,
            *mode.args,
        ]
        if "-md" in mode.args:
            command += ["-ngld", gpu_layers]
        self.command = command
        self._log = log.open("ab")
        self.process = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=ends_with_this_process(),
            env={
                **{
                    k: v
                    for k, v in os.environ.items()
                    if k not in (KV_PAD_ENV, CUDA_GRAPH_KEEP_ENV, CPU_FA_SPLIT_KV_ENV)
                },
                CUDA_GRAPH_KEY_ENV: "node",
            },
        )
        self.url = f"http://127.0.0.1:{self.port}"
        try:
            self._wait_healthy(log)
        except BaseException:  # Ctrl-C while loading too: the server must not outlive the benchmark
            self.close()
            raise

    def _wait_healthy(self, log: Path) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LocalspecError(f"llama-server exited with {self.process.returncode}; see {log}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise LocalspecError(f"llama-server did not become healthy in 300 s; see {log}")

    def complete(self, tokens: list[int], max_tokens: int) -> dict[str, Any]:
        body = {
            "prompt": tokens,
            "n_predict": max_tokens,
            "temperature": 0.0,
            "top_k": 1,
            "cache_prompt": False,
        }
        response = httpx.post(f"{self.url}/completion", json=body, timeout=600)
        response.raise_for_status()
        return dict(response.json())

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


def run_llama_server(server: LlamaServer, mode: str, task: Task, tokens: list[int]) -> Run:
    data = server.complete(tokens, task.max_tokens)
    timings = data.get("timings", {})
    # llama-server counts the end-of-generation token it sampled; localspec counts the text's tokens. The same
    # text is counted alike (both times include the pass that settled the end).
    predicted = int(timings.get("predicted_n", 0)) - (data.get("stop_type") == "eos")
    seconds = float(timings.get("predicted_ms", 0.0)) / 1000.0
    return Run(
        system="llama-server",
        mode=mode,
        workload=task.workload,
        task_id=task.task_id,
        tokens=predicted,
        decode_seconds=seconds,
        drafted=int(timings.get("draft_n", 0)),
        accepted=int(timings.get("draft_n_accepted", 0)),
        target_passes=0,
        text=str(data.get("content", "")),
    )


def summarize(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per (system, mode, workload): aggregate tok/s, acceptance, speedup vs the same system alone."""
    groups: dict[tuple[str, str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.system, run.mode, run.workload), []).append(run)
    alone_speed = {}
    localspec_alone = {}
    for (system, mode, workload), items in groups.items():
        speed = sum(r.tokens for r in items) / max(1e-9, sum(r.decode_seconds for r in items))
        if mode == TARGET_ALONE:
            alone_speed[(system, workload)] = speed
            if system == "localspec":
                localspec_alone[workload] = speed
    rows = []
    for (system, mode, workload), items in groups.items():
        tokens = sum(r.tokens for r in items)
        seconds = sum(r.decode_seconds for r in items)
        drafted = sum(r.drafted for r in items)
        accepted = sum(r.accepted for r in items)
        passes = sum(r.target_passes for r in items)
        settled = sum(r.settled for r in items)
        near_ties = sum(r.settled_near_ties for r in items)
        speed = tokens / max(1e-9, seconds)
        split = {
            key: sum(r.time_split.get(key, 0.0) for r in items)
            for key in ("plan", "draft", "verify", "sample")
        }
        divergences = [r.divergence for r in items if r.divergence]
        sources: dict[str, int] = {}
        for r in items:
            for source, count in r.steps_by_source.items():
                sources[source] = sources.get(source, 0) + count
        rows.append(
            {
                "system": system,
                "mode": mode,
                "workload": workload,
                "prompts": len(items),
                "tokens": tokens,
                "tokens_per_second": round(speed, 2),
                "speedup_vs_own_target_alone": round(speed / alone_speed[(system, workload)], 3)
                if (system, workload) in alone_speed
                else None,
                "speedup_vs_localspec_target_alone": round(speed / localspec_alone[workload], 3)
                if workload in localspec_alone
                else None,
                "acceptance": round(accepted / drafted, 3) if drafted else None,
                "mean_accepted_length": round(settled / passes, 2) if passes else None,
                "settled_near_ties": near_ties if system == "localspec" else None,
                "drafted_ahead": sum(r.drafted_ahead for r in items) if system == "localspec" else None,
                "second_chains": sum(r.second_chains for r in items) if system == "localspec" else None,
                "time_split": {k: round(v / seconds, 3) if seconds else 0.0 for k, v in split.items()},
                # (`bench --rounds`: how far a mode's speed moved from round to round, beside the gaps between modes)
                "rounds_tokens_per_second": _round_speeds(items),
                "identical": sum(1 for r in items if r.identical),
                "compared": sum(1 for r in items if r.identical is not None),
                "divergences": divergences,
            }
        )
    return rows


def _round_speeds(runs: list[Run]) -> list[float] | None:
    """Tokens per second of each round over these runs (`bench --rounds`), or None for runs of one round."""
    rounds = len(runs[0].round_seconds) if runs else 0
    if rounds < 2 or any(len(run.round_seconds) != rounds for run in runs):
        return None
    return [
        round(
            sum(run.round_tokens[i] for run in runs) / max(1e-9, sum(run.round_seconds[i] for run in runs)), 2
        )
        for i in range(rounds)
    ]


def write_json(path: Path, meta: dict[str, Any], rows: list[dict[str, Any]], runs: list[Run]) -> None:
    path.write_text(
        json.dumps({"meta": meta, "summary": rows, "runs": [r.as_json() for r in runs]}, indent=1)
    )
