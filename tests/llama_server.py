"""Real llama.cpp servers on 127.0.0.1 for the remote-backend tests: llama-server and its rpc-server workers."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    """A server process on loopback; `log` holds its output (shown when it fails)."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _spawn(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)


def start_llama_server(
    tools: Path,
    model: Path,
    log_dir: Path,
    *extra: str,
    n_ctx: int = 2048,
    slots: int = 2,
    port: int = 0,
    timeout: float = 60,
) -> Served:
    """`llama-server -m MODEL` on `port` (0: a free one) with one thread; returns once /health answers 200."""
    port = port or free_port()
    log = log_dir / f"llama-server-{port}.log"
    command = [str(tools / "llama-server"), "-m", str(model), "--host", "127.0.0.1", "--port", str(port)]
    command += ["-t", "1", "-c", str(n_ctx * slots), "-np", str(slots), "--no-webui", *extra]
    served = Served(f"http://127.0.0.1:{port}", port, _spawn(command, log), log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if served.process.poll() is not None:
            raise RuntimeError(f"llama-server exited with {served.process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{served.url}/health", timeout=2).status_code == 200:
                return served
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    served.stop()
    raise RuntimeError(f"llama-server did not become healthy:\n{log.read_text()}")


def start_rpc_server(tools: Path, log_dir: Path, timeout: float = 30) -> Served:
    """`rpc-server -H 127.0.0.1 -p PORT` (one CPU worker, as it would run on another machine)."""
    port = free_port()
    log = log_dir / f"rpc-server-{port}.log"
    # Line-buffered, so its log shows each client connection as it happens.
    command = ["stdbuf", "-oL", str(tools / "rpc-server"), "-H", "127.0.0.1", "-p", str(port), "-t", "1"]
    served = Served(f"127.0.0.1:{port}", port, _spawn(command, log), log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if served.process.poll() is not None:
            raise RuntimeError(f"rpc-server exited with {served.process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return served
        except OSError:
            time.sleep(0.05)
    served.stop()
    raise RuntimeError(f"rpc-server did not listen:\n{log.read_text()}")
