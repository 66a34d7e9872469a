"""Watch config.toml and reload the models when their settings change (hot reload).

Editors save in several ways (write in place, write a temp file and rename), so every event that touches
the file's name counts, and a short debounce folds a burst of events into one reload.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from localspec.config import Config, load_config
from localspec.daemon.engine_host import EngineHost
from localspec.errors import LocalspecError

log = logging.getLogger("localspec.daemon.reload")
DEBOUNCE_SECONDS = 0.3


class _Handler(FileSystemEventHandler):
    def __init__(self, path: Path, on_change: Callable[[], None]) -> None:
        self._path = path
        self._on_change = on_change

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        touched = {Path(str(event.src_path)), Path(str(getattr(event, "dest_path", "") or ""))}
        if self._path in touched:
            self._on_change()


class ConfigWatcher:
    """Reloads the engine from `path` (with the same command-line overrides) whenever the file changes."""

    def __init__(self, path: Path, host: EngineHost, overrides: Mapping[str, Any]) -> None:
        self.path = path
        self._host = host
        self._overrides = dict(overrides)
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._observer: BaseObserver | None = None
        path.parent.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        """Watch the file. Where the system refuses a watch (Linux's inotify limits, reached by many editor windows
        or containers), log why: the daemon serves on, and edits apply at its next start."""
        observer = Observer()
        observer.daemon = True
        try:
            observer.schedule(_Handler(self.path, self._changed), str(self.path.parent), recursive=False)
            observer.start()
        except OSError as exc:
            log.warning(
                "not watching %s for changes (%s): edits to it apply after `localspec stop` and a new start. "
                "On Linux, raising fs.inotify.max_user_instances (sysctl) lifts the limit.",
                self.path,
                exc,
            )
            return
        self._observer = observer

    def stop(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    def _changed(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(DEBOUNCE_SECONDS, self.reload)
            self._timer.daemon = True
            self._timer.start()

    def reload(self) -> Config | None:
        try:
            config = load_config(self.path, overrides=self._overrides)
        except LocalspecError as exc:
            self._host.report_error(f"{exc} The daemon keeps its current settings.")
            return None
        log.info("config file changed; checking models")
        self._host.load_config(config)
        return config
