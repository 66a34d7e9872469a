"""`localspec lsp`: the language server, over stdio (what editors spawn) or TCP."""

from __future__ import annotations

import argparse
from typing import Any

from localspec.errors import ConfigError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "lsp",
        help="run the language server (fill-in-the-middle suggestions for editors)",
        description="Language server giving editors inline and classic completions from the localspec "
        "daemon. Editors start it over stdio; the daemon is started in the background when none runs.",
    )
    transport = parser.add_mutually_exclusive_group()
    # Many editors pass --stdio; it is the default anyway.
    transport.add_argument("--stdio", action="store_true", help="talk LSP over stdin/stdout (default)")
    transport.add_argument(
        "--tcp", metavar="HOST:PORT", help="listen for one editor on a TCP address instead"
    )
    parser.add_argument("--log-level", default="WARNING", help="log level on stderr (DEBUG, INFO, WARNING)")
    parser.set_defaults(func=run)


def parse_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--tcp expects HOST:PORT such as 127.0.0.1:2087, not {value!r}.")
    return host.strip("[]") or "127.0.0.1", int(port)


def run(args: argparse.Namespace) -> int:
    import logging

    level = getattr(logging, str(args.log_level).upper(), None)
    if not isinstance(level, int):
        raise ConfigError(f"--log-level must be DEBUG, INFO, WARNING or ERROR, not {args.log_level!r}.")
    # stdout carries the protocol: logs go to stderr, which editors show in their LSP log.
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from localspec.lsp.server import server
    from localspec.lsp.transport import serve_stdio, serve_tcp

    if args.tcp:
        host, port = parse_address(args.tcp)
        serve_tcp(server, host, port)
    else:
        serve_stdio(server)
    return 0
