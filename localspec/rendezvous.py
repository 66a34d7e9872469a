"""Where the daemon and its clients meet: `daemon.json` in the state dir, the start-up lock, the token file.

The daemon writes `daemon.json` once it is listening (so it holds the real port, even for --port 0) and
removes it on shutdown; a stale file (the pid is gone) counts as no daemon. Both sides import this module,
and neither imports the other.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock

from localspec import locations


@dataclass(frozen=True)
class DaemonInfo:
    url: str
    pid: int
    host: str
    port: int
    started_at: float


def discovery_file() -> Path:
    return locations.state_dir() / "daemon.json"


def start_lock(timeout: float = 120.0) -> FileLock:
    """Held by whoever is starting a daemon, so two clients starting at once make one daemon."""
    return FileLock(str(locations.state_dir() / "daemon.start.lock"), timeout=timeout)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    # An exited child its parent has not reaped yet (a zombie) still answers kill(0); it is not running.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def url_for(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # bound to every interface: reach it on loopback
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def write(host: str, port: int, pid: int | None = None) -> DaemonInfo:
    info = DaemonInfo(
        url=url_for(host, port), pid=pid or os.getpid(), host=host, port=port, started_at=time.time()
    )
    path = discovery_file()
    tmp = path.with_suffix(f".{info.pid}.tmp")
    tmp.write_text(json.dumps(asdict(info), indent=2), encoding="utf-8")
    os.replace(tmp, path)
    return info


def read() -> DaemonInfo | None:
    """The recorded daemon if its process is alive, else None."""
    try:
        data = json.loads(discovery_file().read_text(encoding="utf-8"))
        info = DaemonInfo(
            url=str(data["url"]),
            pid=int(data["pid"]),
            host=str(data["host"]),
            port=int(data["port"]),
            started_at=float(data["started_at"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info if pid_alive(info.pid) else None


def stamp() -> tuple[int, int, int] | None:
    """What changes whenever daemon.json is written anew or removed (None: there is none): a client that read it
    may skip reading it again while this stays the same, at the cost of one stat."""
    try:
        stat = discovery_file().stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def remove(pid: int | None = None) -> None:
    """Delete daemon.json if it still describes this process (a newer daemon may have replaced it)."""
    path = discovery_file()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if int(data.get("pid", -1)) == (pid or os.getpid()):
            path.unlink()
    except (OSError, ValueError):
        pass


def read_token(path: Path | None = None) -> str | None:
    """The bearer token clients send, if the token file exists (the daemon creates it on first start)."""
    path = path or locations.token_file()
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None
