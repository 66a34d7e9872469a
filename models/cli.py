"""`localspec models list|pull|verify|rm|add|use`. Top-level imports stay light: every command loads this."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress as RichBars
    from rich.progress import TaskID

    from localspec.config import Config
    from localspec.models.catalog import Catalog, CatalogModel
    from localspec.models.hardware import Memory


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list, download, verify, register and choose models",
        description="Manage GGUF models: the catalog, downloads, local files, the active target/draft pair.",
    )
    parser.set_defaults(func=_list)
    sub = parser.add_subparsers(dest="models_command", metavar="SUBCOMMAND")

    p = sub.add_parser("list", help="catalog and installed models, sizes, the active pair")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_list)

    p = sub.add_parser("pull", help="download catalog models or pairs (resumable, checksum-verified)")
    p.add_argument(
        "names", nargs="*", metavar="NAME", help="pair or model names (default: the configured pair)"
    )
    p.set_defaults(func=_pull)

    p = sub.add_parser("verify", help="check installed files against their SHA-256")
    p.add_argument("names", nargs="*", metavar="NAME", help="names to check (default: everything installed)")
    p.set_defaults(func=_verify)

    p = sub.add_parser("rm", help="delete a pulled model, or unregister a local one")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument(
        "--delete-file", action="store_true", help="also delete the file of a registered local model"
    )
    p.set_defaults(func=_rm)

    p = sub.add_parser("add", help="register a local GGUF file (reads its metadata, not its weights)")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--name", help="name to use it by (default: the file name without .gguf)")
    p.add_argument("--json", action="store_true", help="print the metadata as JSON")
    p.set_defaults(func=_add)

    p = sub.add_parser(
        "use", help="check that TARGET and DRAFT work together, then make them the active pair"
    )
    p.add_argument("target", metavar="TARGET", help="pair name, model name, or path to a .gguf file")
    p.add_argument(
        "draft", nargs="?", metavar="DRAFT", help='draft name or path, or "none" (default: the pair\'s)'
    )
    p.set_defaults(func=_use)


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


class _Bars:
    """download.Progress drawn with rich progress bars on stderr."""

    def __init__(self, console: Console) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.console = console
        self.bars: RichBars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task: TaskID | None = None

    def __enter__(self) -> _Bars:
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.stop()

    def start(self, description: str, total: int | None, completed: int = 0) -> None:
        self.finish()
        self.task = self.bars.add_task(description, total=total, completed=completed)

    def advance(self, amount: int) -> None:
        if self.task is not None:
            self.bars.advance(self.task, amount)

    def note(self, message: str) -> None:
        self.bars.console.print(f"[yellow]{message}[/]")

    def finish(self) -> None:
        if self.task is not None:
            self.bars.stop_task(self.task)
            self.task = None


def _count(n: int) -> str:
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


def _memory_note(gpu: Memory | None, ram: Memory | None, n_ctx: int, slots: int) -> str:
    """What "needs" counts and what it was compared with."""
    from localspec.models.download import human_size
    from localspec.models.fit import RUNTIME_BYTES_PER_MODEL

    def describe(memory: Memory) -> str:
        devices = f"{len(memory.devices)}x {memory.devices[0]}, " if memory.devices else ""
        unusable = "" if memory.usable else "; unused: this llama.cpp build has no GPU backend (README, GPU)"
        return f"{devices}{human_size(memory.free)} free of {human_size(memory.total)} ({memory.source}{unusable})"

    return (
        f"needs = both files + their KV cache for n_ctx {n_ctx} x {slots} slots"
        f" + {human_size(RUNTIME_BYTES_PER_MODEL)} per model for compute buffers.\n"
        f"GPU: {describe(gpu) if gpu else 'no NVIDIA GPU found'}; "
        f'RAM: {describe(ram) if ram else "unknown"}. See docs/MODELS.md, "Which pair to run".'
    )


def _context() -> tuple[Config, Catalog]:
    from localspec.config import load_config
    from localspec.models.catalog import load_catalog

    return load_config(), load_catalog()


def _catalog_models(catalog: Catalog, names: list[str]) -> list[CatalogModel]:
    """Models named directly or through a pair, in order, without repeats. Unknown names raise with hints."""
    from localspec.models.catalog import CatalogPair

    models: list[CatalogModel] = []
    for name in names:
        entry = catalog.require(name)
        found = catalog.pair_models(entry) if isinstance(entry, CatalogPair) else (entry,)
        models += [m for m in found if m not in models]
    return models


def _list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from localspec.models.download import human_size
    from localspec.models.fit import pair_fit
    from localspec.models.hardware import gpu_memory, ram_memory
    from localspec.models.install import is_installed, partial_bytes
    from localspec.models.registry import load_registry
    from localspec.models.resolve import resolve_pair

    config, catalog = _context()
    models_dir = config.models_path()
    registry = load_registry()
    gpu, ram = gpu_memory(), ram_memory()
    fits = {
        p.name: pair_fit(
            catalog.pair_models(p), models_dir, n_ctx=config.n_ctx, slots=config.slots, gpu=gpu, ram=ram
        )
        for p in catalog.pairs.values()
    }

    def verified(model: CatalogModel) -> bool:
        """Pinned in the catalog, or checked against the hash its source published when it was pulled."""
        pulled = registry.pulled.get(model.name)
        return bool(model.sha256) or (pulled is not None and pulled.verified)

    def status(model: CatalogModel) -> str:
        if is_installed(model, models_dir):
            return "installed" if verified(model) else "installed, unverified"
        if part := partial_bytes(model, models_dir):
            return f"partial {100 * part // model.size}%" if model.size else f"partial {human_size(part)}"
        return "-"

    try:
        target, draft = resolve_pair(config.target, config.draft, models_dir, catalog=catalog)
        active: dict[str, Any] = {
            "target": str(target),
            "draft": str(draft) if draft else None,
            "error": None,
        }
    except Exception as exc:
        active = {"target": None, "draft": None, "error": str(exc)}
    active |= {"target_setting": config.target, "draft_setting": config.draft}

    if getattr(args, "json", False):
        document = {
            "models_dir": str(models_dir),
            "catalog": catalog.path,
            "active": active,
            "memory": {
                "gpu": vars(gpu) if gpu else None,
                "ram": vars(ram) if ram else None,
                "n_ctx": config.n_ctx,
                "slots": config.slots,
            },
            "pairs": [
                {
                    "name": p.name,
                    "target": p.target,
                    "draft": p.draft,
                    "default": p.default,
                    "description": p.description,
                    "active": p.name == config.target,
                    "installed": all(is_installed(m, models_dir) for m in catalog.pair_models(p)),
                    "fit": fits[p.name].to_dict(),
                }
                for p in catalog.pairs.values()
            ],
            "models": [
                {
                    "name": m.name,
                    "file": m.file,
                    "role": m.role,
                    "size": m.size,
                    "sha256": m.sha256,
                    "license": m.license,
                    "fim": m.fim,
                    "context_length": m.context_length,
                    "status": status(m),
                    "verified": verified(m) if is_installed(m, models_dir) else None,
                    "path": str(models_dir / m.file) if is_installed(m, models_dir) else None,
                }
                for m in catalog.models.values()
            ],
            "local": [
                {"name": e.name, "path": e.path, "size": e.size, "info": e.info}
                for e in registry.local.values()
            ],
        }
        print(json.dumps(document, indent=2))
        return 0

    console = _console()
    pairs = Table(title="Pairs (target + draft)", title_justify="left", box=None)
    pairs.add_column("")
    pairs.add_column("name", no_wrap=True)
    for column in ("size", "status", "needs", "this machine"):
        pairs.add_column(column, no_wrap=True)
    pairs.add_column("notes")
    for pair in catalog.pairs.values():
        target_model, draft_model = catalog.pair_models(pair)
        have = [is_installed(m, models_dir) for m in (target_model, draft_model)]
        pairs.add_row(
            "*" if pair.name == config.target else "",
            pair.name,
            human_size((target_model.size or 0) + (draft_model.size or 0)),
            {(True, True): "installed", (True, False): "target only", (False, True): "draft only"}.get(
                (have[0], have[1]), "-"
            ),
            human_size(fits[pair.name].need.total),
            fits[pair.name].label,
            pair.description,
        )
    console.print(pairs)
    console.print(_memory_note(gpu, ram, config.n_ctx, config.slots))
    single = Table(title="Models", title_justify="left", box=None)
    single.add_column("name", no_wrap=True)
    for column in ("role", "size", "status", "FIM", "licence"):
        single.add_column(column, no_wrap=True)
    for model in catalog.models.values():
        single.add_row(
            model.name,
            model.role,
            human_size(model.size),
            status(model),
            "yes" if model.fim else "no",
            model.license,
        )
    console.print(single)
    if registry.local:
        local = Table(title="Registered local files", title_justify="left", box=None)
        local.add_column("name", no_wrap=True)
        for column in ("arch", "params", "quant", "size", "FIM", "path"):
            local.add_column(column)
        for entry in registry.local.values():
            info = entry.info
            local.add_row(
                entry.name,
                info.get("architecture", "?"),
                _count(info.get("parameters", 0)),
                info.get("quantization", "?"),
                human_size(entry.size),
                "yes" if info.get("has_fim") else "no",
                entry.path,
            )
        console.print(local)
    console.print(f"Models directory: {models_dir}")
    draft_setting = config.draft or "(the pair's draft)"
    console.print(
        f"Active: target [bold]{config.target}[/], draft [bold]{draft_setting}[/]"
        f"  (target from {config.sources.get('target', 'default')})"
    )
    if active["error"]:
        console.print(f"[red]Not ready:[/] {active['error']}")
    else:
        console.print(f"  target file: {active['target']}\n  draft file:  {active['draft'] or 'none'}")
    return 0


def _pull(args: argparse.Namespace) -> int:
    from localspec.models.catalog import CatalogPair
    from localspec.models.install import pull_model

    config, catalog = _context()
    names = args.names
    if not names:  # what the config uses, as far as the catalog knows it; else the default pair
        default = catalog.default_pair()
        names = [n for n in (config.target, config.draft) if n and catalog.lookup(n)]
        names = names or [default.name if default else config.target]
    models = _catalog_models(catalog, names)
    console = _console(stderr=True)
    min_free = int(config.min_free_gb * 1e9)
    with _Bars(console) as bars:
        paths = [
            pull_model(model, config.models_path(), min_free_bytes=min_free, progress=bars)
            for model in models
        ]
    for model, path in zip(models, paths, strict=True):
        print(f"ready: {model.name} -> {path}")
    if len(names) == 1 and names[0] != config.target and isinstance(catalog.lookup(names[0]), CatalogPair):
        print(f"To run it: localspec models use {names[0]}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from localspec.models.install import VerifyResult, is_installed, verify_catalog_model, verify_local_model
    from localspec.models.registry import load_registry

    config, catalog = _context()
    models_dir = config.models_path()
    local = load_registry().local
    local_names = [n for n in args.names if n in local]
    if args.names:
        catalog_models = _catalog_models(catalog, [n for n in args.names if n not in local])
    else:
        catalog_models = [m for m in catalog.models.values() if is_installed(m, models_dir)]
        local_names = list(local)
    if not catalog_models and not local_names:
        print("Nothing to verify: no models are installed. Run `localspec models pull`.")
        return 0
    results: list[VerifyResult] = []
    with _Bars(_console(stderr=True)) as bars:
        results += [verify_catalog_model(m, models_dir, bars) for m in catalog_models]
        results += [verify_local_model(n, bars) for n in local_names]
    for result in results:
        print(f"{'ok' if result.ok else 'FAILED'}: {result.name} ({result.path}): {result.message}")
    failed = [r.name for r in results if not r.ok]
    if failed:
        names = " ".join(failed)
        print(f"Re-download with: localspec models rm {names} && localspec models pull {names}")
        return 1
    return 0


def _rm(args: argparse.Namespace) -> int:
    from pathlib import Path

    from localspec.models.catalog import CatalogPair
    from localspec.models.download import human_size
    from localspec.models.install import is_installed, remove_catalog_model
    from localspec.models.registry import load_registry, unregister_local

    config, catalog = _context()
    models_dir = config.models_path()
    local = load_registry().local
    for name in args.names:
        if name in local:
            entry = unregister_local(name)
            if entry and args.delete_file:
                Path(entry.path).unlink(missing_ok=True)
                print(f"removed {name} and deleted {entry.path}")
            elif entry:
                print(f"unregistered {name} (the file {entry.path} is kept; --delete-file deletes it)")
            continue
        entry_or_pair = catalog.require(name, list(local))
        models = _catalog_models(catalog, [name])
        if isinstance(entry_or_pair, CatalogPair):
            # The small drafts are shared between pairs: keep one another installed pair still needs.
            others = [
                p
                for p in catalog.pairs.values()
                if p.name != entry_or_pair.name and is_installed(catalog.models[p.target], models_dir)
            ]
            shared = {p.draft for p in others} | {p.target for p in others}
            kept = [m for m in models if m.name in shared]
            for model in kept:
                print(f"kept {model.name}: the installed pair(s) {', '.join(p.name for p in others)} use it")
            models = [m for m in models if m not in kept]
        for model in models:
            freed = remove_catalog_model(model, models_dir)
            print(
                f"removed {model.name} ({human_size(freed)} freed)"
                if freed
                else f"{model.name} was not installed"
            )
        if name == config.target:
            print(f"note: {name} is the active model; choose another with `localspec models use NAME`")
    return 0


def _add(args: argparse.Namespace) -> int:
    from pathlib import Path

    from localspec.models.download import human_size
    from localspec.models.registry import register_local

    _, catalog = _context()
    entry = register_local(Path(args.path), args.name, reserved=catalog.names())
    info = entry.info
    if args.json:
        print(json.dumps({"name": entry.name, "path": entry.path, "info": info}, indent=2))
        return 0
    fim = (
        ", ".join(info["fim_tokens"].values())
        if info.get("has_fim")
        else "none (code completion will not work)"
    )
    params = _count(info["parameters"]) + (f" ({info['size_label']})" if info.get("size_label") else "")
    print(f"registered {entry.name} -> {entry.path}")
    rows = [
        ("name in file", info.get("name") or "-"),
        ("architecture", info["architecture"]),
        ("parameters", params),
        ("quantization", info.get("quantization") or "-"),
        ("file size", human_size(entry.size)),
        ("context length", info.get("context_length") or "-"),
        (
            "vocabulary",
            f"{info['vocab_size']} tokens, {info['vocab_type'] or '?'}"
            + (f" / {info['tokenizer_pre']}" if info.get("tokenizer_pre") else ""),
        ),
        ("FIM tokens", fim),
        ("chat template", "yes" if info.get("has_chat_template") else "no (chat needs one)"),
    ]
    for label, value in rows:
        print(f"  {label:<15} {value}")
    print(f"Use it: localspec models use {entry.name} [DRAFT]")
    return 0


def _use(args: argparse.Namespace) -> int:
    from localspec.config import update_config_file
    from localspec.engine.compat import check_compatible  # loads vocabularies through llama.cpp
    from localspec.models.resolve import choose_pair

    config, catalog = _context()
    choice = choose_pair(
        args.target, args.draft, config.models_path(), check_compatible=check_compatible, catalog=catalog
    )
    path = update_config_file({"target": choice.target_setting, "draft": choice.draft_setting})
    print(f"active pair written to {path}:")
    print(f"  target {choice.target_setting} -> {choice.target}")
    print(f"  draft  {choice.draft_setting or '(the pair draft)'} -> {choice.draft or 'none'}")
    for name in ("target", "draft"):
        source = config.sources.get(name, "")
        if source.startswith(("env", "command")):
            print(f"note: {name} is currently set by {source}, which overrides config.toml")
    print("A running daemon reloads the models when config.toml changes.")
    return 0
