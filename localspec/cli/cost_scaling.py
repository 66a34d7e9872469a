"""The cost-scaling flags `bench` and `bench-editor` share: run a cost-scaled copy of the target (more layers or
wider FFNs that add exactly zero), the regime of a 7B-14B target, without downloading one."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from localspec.benchmark.cost_scaled import Scale


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scale-layers",
        type=int,
        default=1,
        metavar="N",
        help="run a cost-scaled copy of the target with N times its layers (added layers add exactly zero: "
        "same output, N times the cost per token)",
    )
    parser.add_argument(
        "--scale-ffn",
        type=int,
        default=1,
        metavar="M",
        help="run a cost-scaled copy of the target with M times its FFN width (added units add zero)",
    )
    parser.add_argument(
        "--scaled-dir",
        type=Path,
        help="folder for cost-scaled copies, written once and reused (default: localspec's cache folder)",
    )


def scale_of(args: argparse.Namespace) -> Scale:
    from localspec.benchmark.cost_scaled import Scale

    return Scale(args.scale_layers, args.scale_ffn)


def scaled_target(source: Path, scale: Scale, folder: Path | None, console: Console) -> Path:
    """The target to load: `source` itself, or its cost-scaled copy (written once into the cache, then reused)."""
    if scale.identity:
        return source
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from localspec import locations
    from localspec.benchmark.cost_scaled import cached_scaled_copy
    from localspec.engine.llama_model import check_gguf_file

    check_gguf_file(source, "target")
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        bar = progress.add_task(f"writing {scale.label()} copy of {source.name}", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(bar, completed=done, total=total)

        path, written = cached_scaled_copy(
            source, scale, folder or locations.cache_dir() / "cost-scaled", advance
        )
    console.print(f"{'wrote' if written else 'reusing'} {scale.label()} target: {path}")
    return path


def target_label(source: Path, scale: Scale) -> str:
    """How results name the target: its file, as a cost-scaled copy where it is one."""
    return source.name if scale.identity else f"{scale.label()} {source.name}"


def describe(source: Path, scale: Scale) -> dict[str, Any] | None:
    """What a result file records of the scaling (None: the target itself ran)."""
    if scale.identity:
        return None
    return {"source": str(source), "layers": scale.layers, "ffn": scale.ffn, "label": scale.label()}
