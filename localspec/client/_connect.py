"""Reaching the daemon: find it through the rendezvous, start `localspec serve` if none runs, wait until its
models are loaded, stop it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TypeVar

import httpx

from localspec import locations, rendezvous
from localspec.client import _wire
from localspec.client._clients import AsyncDaemonClient, DaemonClient
from localspec.client._wire import Health
from localspec.errors import DaemonUnavailableError
from localspec.rendezvous import DaemonInfo

Progress = Callable[[str], None]
T = TypeVar("T")


def discover() -> DaemonInfo | None:
    """The running daemon recorded in the state dir (its process alive), or None."""
    return rendezvous.read()


def discovery_stamp() -> tuple[int, int, int] | None:
    """Changes whenever the daemon record `discover()` reads changes (see `rendezvous.stamp`)."""
    return rendezvous.stamp()


def _health(url: str) -> Health | None:
    """The daemon's /health, or None if nothing answers there."""
    try:
        response = httpx.get(f"{url}/health", timeout=2.0)
        return Health.parse(url, response.json()) if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def _spawn(serve_args: Sequence[str]) -> subprocess.Popen[bytes]:
    log_path = locations.log_dir() / "serve-autostart.log"
    with log_path.open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "localspec", "serve", *serve_args],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            start_new_session=True,  # survives the client's terminal closing
        )
    # Reap it when it exits, so a long-lived client does not keep a zombie that looks alive.
    threading.Thread(target=process.wait, name="localspec-daemon-reaper", daemon=True).start()
    return process


def _tail(path: os.PathLike[str] | str, lines: int = 15) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return "".join(handle.readlines()[-lines:]).strip()
    except OSError:
        return ""


def connect(
    *,
    autostart: bool = True,
    progress: Progress | None = None,
    timeout: float = 180.0,
    serve_args: Sequence[str] = (),
) -> DaemonClient:
    """A client for a daemon whose models are loaded; starts `localspec serve` in the background if none runs.

    A file lock makes concurrent callers (two editors opening at once) start one daemon between them.
    `progress` gets short human-readable messages while the daemon starts and loads its models. `timeout=0`
    looks once and never waits: DaemonUnavailableError says why the daemon cannot serve yet.
    """
    return DaemonClient(_ready(autostart, progress, timeout, serve_args).url)


async def aconnect(
    *,
    autostart: bool = True,
    progress: Progress | None = None,
    timeout: float = 180.0,
    serve_args: Sequence[str] = (),
) -> AsyncDaemonClient:
    """`connect()` for asyncio programs: it waits off the event loop and calls `progress` on it."""
    loop = asyncio.get_running_loop()
    report = None if progress is None else partial(_call_soon, loop, progress)
    info = await _off_loop(loop, partial(_ready, autostart, report, timeout, serve_args))
    return AsyncDaemonClient(info.url)


def _ready(
    autostart: bool, progress: Progress | None, timeout: float, serve_args: Sequence[str]
) -> DaemonInfo:
    report = progress or (lambda _message: None)
    deadline = time.monotonic() + timeout
    info = discover()
    if info is None or _health(info.url) is None:
        if not autostart:
            raise DaemonUnavailableError(_wire.NOT_RUNNING)
        with rendezvous.start_lock(timeout=timeout):
            info = discover()  # another client may have started one while we waited for the lock
            if info is None or _health(info.url) is None:
                report("starting the localspec daemon")
                info = _start(serve_args, deadline)
    return _wait_ready(info, report, deadline)


def _start(serve_args: Sequence[str], deadline: float) -> DaemonInfo:
    process = _spawn(serve_args)
    while time.monotonic() < deadline:
        info = discover()
        if info is not None and info.pid == process.pid and _health(info.url) is not None:
            return info
        if process.poll() is not None:
            tail = _tail(locations.log_dir() / "serve-autostart.log")
            raise DaemonUnavailableError(f"`localspec serve` exited with code {process.returncode}:\n{tail}")
        time.sleep(0.05)
    raise DaemonUnavailableError(
        f"`localspec serve` did not start in time; see {locations.log_dir() / 'serve-autostart.log'}."
    )


def _wait_ready(info: DaemonInfo, report: Progress, deadline: float) -> DaemonInfo:
    """Polls /health until the models are loaded (at least once, even when the deadline has passed)."""
    last = ""
    while True:
        health = _health(info.url)
        if health is None:
            if discover() is None:
                raise DaemonUnavailableError(f"The localspec daemon at {info.url} stopped while starting.")
        elif health.ready:
            return info
        elif health.failed:
            raise health.not_ready()
        elif health.progress() != last:
            last = health.progress()
            report(last)
        if time.monotonic() >= deadline:
            if health is None:
                raise DaemonUnavailableError(f"The localspec daemon at {info.url} does not answer /health.")
            raise health.not_ready()
        time.sleep(0.1)


def _call_soon(loop: asyncio.AbstractEventLoop, function: Callable[[str], None], message: str) -> None:
    with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is listening any more
        loop.call_soon_threadsafe(function, message)


async def _off_loop(loop: asyncio.AbstractEventLoop, work: Callable[[], T]) -> T:
    """Runs blocking `work` in a daemon thread. Unlike `asyncio.to_thread`, it never holds up the program's
    exit, which matters when a start waits minutes for models to load."""
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():  # the caller may have been cancelled meanwhile
            outcome()

    def run() -> None:
        try:
            result = work()
        except BaseException as exc:
            outcome = partial(future.set_exception, exc)
        else:
            outcome = partial(future.set_result, result)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=run, name="localspec-connect", daemon=True).start()
    return await future


def stop_daemon(timeout: float = 15.0) -> DaemonInfo | None:
    """Ask the running daemon to shut down (SIGTERM) and wait for it; None if none was running."""
    info = discover()
    if info is None:
        return None
    try:
        os.kill(info.pid, signal.SIGTERM)
    except ProcessLookupError:
        rendezvous.remove(info.pid)
        return info
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not rendezvous.pid_alive(info.pid):
            rendezvous.remove(info.pid)
            return info
        time.sleep(0.05)
    raise DaemonUnavailableError(
        f"The daemon (pid {info.pid}) did not stop within {timeout:.0f}s; end it with `kill {info.pid}`."
    )
