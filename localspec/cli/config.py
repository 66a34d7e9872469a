"""`localspec config show`: the effective configuration and where each value came from."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: Any) -> None:
    config = subparsers.add_parser("config", help="inspect the configuration")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION")
    show = config_sub.add_parser("show", help="print the effective config and where each value came from")
    show.add_argument("--json", action="store_true", help="print machine-readable JSON")
    show.set_defaults(func=_config_show)
    config.set_defaults(func=_config_show, json=False)


def _config_show(args: argparse.Namespace) -> int:
    from localspec import locations
    from localspec.config import describe, load_config

    config = load_config()
    rows = describe(config)
    if args.json:
        print(json.dumps({key: {"value": value, "source": source} for key, value, source in rows}, indent=2))
        return 0
    width = max(len(key) for key, _, _ in rows)
    print(f"# {locations.config_file()}")
    for key, value, source in rows:
        print(f"{key:<{width}}  {json.dumps(value):<40}  ({source})")
    return 0
