"""`localspec` command line: one module per subcommand (here, or in models/, tui/, lsp/ for their own areas).
Each registers its subcommands; heavy imports happen in the handlers."""

from __future__ import annotations

import argparse
import importlib
import sys

from localspec.errors import LocalspecError

# Modules that define `register(subparsers)`; each handler is set with `parser.set_defaults(func=...)`
# and returns an exit code. Keep these modules' top-level imports light: every command imports them all.
COMMAND_MODULES = (
    "localspec.cli.complete",
    "localspec.cli.daemon",
    "localspec.cli.config",
    "localspec.models.cli",
    "localspec.tui.cli",
    "localspec.lsp.cli",
    "localspec.cli.bench",
    "localspec.cli.bench_editor",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="localspec",
        description="Local coding assistant: lossless speculative decoding on llama.cpp.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except LocalspecError as exc:
        print(f"localspec: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("localspec: interrupted", file=sys.stderr)
        return 130
