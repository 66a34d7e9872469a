"""A `localspec serve` child process in a home of its own, for benchmarks that drive the daemon through its real
clients (the language server finds it through that home's discovery file, as it finds a user's daemon)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from localspec.benchmark.child_process import ends_with_this_process
from localspec.errors import LocalspecError

POLL_S = 0.1


class DaemonProcess:
    """`python -m localspec serve ARGS` on a free loopback port with LOCALSPEC_HOME=`home` (and `config` copied
    there as its config.toml); ready once /health says ok. Stopped by `close()` (always call it: use try/finally)."""

    def __init__(self, home: Path, args: list[str], timeout: float, config: Path | None = None) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        if config is not None:
            (home / "config").mkdir(exist_ok=True)
            shutil.copyfile(config, home / "config" / "config.toml")
        self.log = home / "serve.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "localspec", "serve", "--host", "127.0.0.1", "--port", "0", *args],
                env=home_env(home),
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=ends_with_this_process(),
            )
        self.url = ""
        self._http: httpx.Client | None = None
        try:
            self._wait_healthy(timeout)
        except BaseException:
            self.close()
            raise

    def _wait_healthy(self, timeout: float) -> None:
        discovery = self.home / "state" / "daemon.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LocalspecError(
                    f"localspec serve exited with {self.process.returncode}; see {self.log}:\n{self._log_tail()}"
                )
            try:
                info = json.loads(discovery.read_text())
                if info.get("pid") == self.process.pid:
                    health = httpx.get(f"{info['url']}/health", timeout=5).json()
                    if health.get("status") == "ok":
                        self.url = str(info["url"])
                        self._http = self.client()
                        return
                    if health.get("status") == "error":
                        errors = (
                            "; ".join(str(e.get("message")) for e in health.get("errors") or []) or health
                        )
                        raise LocalspecError(f"localspec serve could not load its models: {errors}")
            except (OSError, ValueError, KeyError, httpx.HTTPError):
                pass  # not listening yet
            time.sleep(POLL_S)
        raise LocalspecError(f"localspec serve was not ready within {timeout:g} s; see {self.log}")

    def client(self, timeout: float = 30) -> httpx.Client:
        """A new client of its API, with its token (one per thread: the benchmarks' own requests)."""
        token = (self.home / "config" / "token").read_text().strip()
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout)

    def stats(self) -> dict[str, Any]:
        assert self._http is not None
        response = self._http.get("/v1/stats")
        response.raise_for_status()
        return dict(response.json())

    def finished_since(self, last_id: int) -> list[dict[str, Any]]:
        """The daemon's records of the generations that finished after job `last_id` (prompt, cached and generated
        tokens, seconds), oldest first."""
        return [entry for entry in self.stats().get("recent", []) if int(entry.get("id", 0)) > last_id]

    def idle(self) -> bool:
        """No job running or waiting."""
        stats = self.stats()
        return not stats.get("active") and not stats.get("queue_length")

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def home_env(home: Path) -> dict[str, str]:
    """This environment with every localspec folder under `home` (the user's own folders untouched)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("LOCALSPEC_")}
    env["LOCALSPEC_HOME"] = str(home)
    return env
