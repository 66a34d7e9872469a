"""`localspec serve`: bind, publish daemon.json, load the models in the background, serve until signalled."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import uvicorn

from localspec import locations, rendezvous
from localspec.config import Config
from localspec.daemon import logs
from localspec.daemon.app import AppSettings, create_app
from localspec.daemon.engine_host import EngineHost
from localspec.daemon.reload import ConfigWatcher
from localspec.daemon.scheduler import Scheduler
from localspec.daemon.security import ensure_token, is_loopback
from localspec.errors import ConfigError

log = logging.getLogger("localspec.daemon")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises SIGTERM after its graceful shutdown, which would kill the process before our cleanup
        # (daemon.json, engine close) runs; shut down gracefully and return normally instead.
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named explicitly: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on connections whose
    # socket says so, and with it on, a response written in two parts waits for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"Cannot listen on {host}:{port} ({exc.strerror}). Another localspec daemon may be running "
            "(`localspec status`), or pick another port with --port or server.port in config.toml."
        ) from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


# Seconds an idle connection stays open. Longer than clients keep one for reuse (aiohttp: 15 s, the language
# server's and the chat's; httpx: 5 s): a client that closes an idle connection itself never sends a request on one
# the daemon is closing at that moment (uvicorn's default is 5 s, and the editor's requests are POSTs, which aiohttp
# does not retry).
KEEP_ALIVE_S = 30


def run(
    config: Config,
    overrides: Mapping[str, Any],
    allow_remote: bool = False,
    verbose: bool = False,
    watch: bool = True,
) -> int:
    log_path = logs.configure(verbose)
    if not is_loopback(config.host):
        if not allow_remote:
            raise ConfigError(
                f"server.host is {config.host!r}, which other machines can reach. The daemon binds loopback "
                "only, unless you pass --allow-remote (then anyone who can reach the port and has the token "
                "can use it)."
            )
        log.warning("listening on %s: reachable from other machines (bearer token required)", config.host)
        print(
            f"localspec: WARNING: listening on {config.host}, reachable from other machines.", file=sys.stderr
        )
    running = rendezvous.read()
    if running is not None and running.pid != os.getpid():
        raise ConfigError(
            f"A localspec daemon is already running at {running.url} (pid {running.pid}). "
            "Stop it with `localspec stop` first."
        )
    token = ensure_token()
    sock = _bind(config.host, config.port)
    port = sock.getsockname()[1]
    scheduler = Scheduler(max_active=config.slots)
    host = EngineHost(scheduler)
    host.load_config(config)
    app = create_app(
        AppSettings(token=token, host=config.host, allow_origins=list(config.allow_origins)), host
    )
    server = _Server(
        uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=3,
            timeout_keep_alive=KEEP_ALIVE_S,
        )
    )
    watcher = ConfigWatcher(locations.config_file(), host, overrides) if watch else None
    try:
        if watcher is not None:
            watcher.start()  # before daemon.json: a client that finds the daemon finds its config watched
        info = rendezvous.write(config.host, port)
        log.info("serving on %s (pid %d); log %s", info.url, info.pid, log_path)
        print(f"localspec: serving on {info.url} (log: {log_path})", file=sys.stderr, flush=True)
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        rendezvous.remove()
        if watcher is not None:
            watcher.stop()
        scheduler.stop()
        sock.close()
        log.info("stopped")
    return 0
