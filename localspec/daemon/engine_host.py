"""Loads engines (local, or a connection to a remote server) in the background and hands them to the scheduler; remembers what /health reports.

The server listens before the models are loaded, so clients can show progress ("loading") instead of
failing to connect. A reload loads the new engine next to the old one, which keeps serving until the new
one is ready; a load that fails leaves the old one in place and is reported in /health and the log.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localspec import __version__
from localspec.config import Config
from localspec.daemon.scheduler import Scheduler
from localspec.errors import LocalspecError

if TYPE_CHECKING:
    from localspec.daemon.backend import Backend
    from localspec.engine import EngineSettings
    from localspec.remote import RemoteSettings

    Settings = EngineSettings | RemoteSettings

log = logging.getLogger("localspec.daemon")
MAX_ERRORS = 10
# A remote server that cannot be reached is tried again this often, so a daemon started before it comes up.
REMOTE_RETRY_SECONDS = 5.0


def resolve_models(config: Config) -> tuple[Path, Path | None]:
    """Model files for the config: .gguf paths as given, catalog names through localspec.models."""
    from localspec.models import resolve_pair

    return resolve_pair(config.target, config.draft, config.models_path())


def engine_settings(config: Config) -> EngineSettings:
    from localspec.engine import EngineSettings

    target, draft = resolve_models(config)
    return EngineSettings.from_config(config, target, draft)


def backend_settings(config: Config) -> Settings:
    """The local engine's settings, or the remote's when engine.backend = "remote"."""
    if config.backend == "remote":
        from localspec.remote import RemoteSettings

        return RemoteSettings.from_config(config)
    return engine_settings(config)


def _describe(settings: Settings) -> dict[str, Any]:
    """The backend a load serves with, for /health and /v1/stats (never the remote's key)."""
    from localspec.remote import RemoteSettings

    if isinstance(settings, RemoteSettings):
        return {
            "name": "remote",
            "kind": settings.kind,
            "url": settings.shown_url,
            "model": settings.model or None,
        }
    return {"name": "local"}


class EngineHost:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._lock = threading.Lock()
        self._settings: Settings | None = None  # of the engine serving now
        self._models: dict[str, Any] = {"target": None, "draft": None}
        self._info: dict[str, Any] = {}
        self._backend: dict[str, Any] = {"name": "local"}
        self._errors: list[dict[str, Any]] = []
        self._loading: dict[str, Any] | None = None
        self._load_seq = 0

    @property
    def current_settings(self) -> Settings | None:
        return self._settings

    def load_config(self, config: Config) -> threading.Thread | None:
        """Resolve the config's models and load them in the background (no-op if they are already serving)."""
        try:
            settings = backend_settings(config)
        except LocalspecError as exc:
            kept = " The previous models keep serving." if self._settings is not None else ""
            self.report_error(f"{exc}{kept}")
            return None
        if settings == self._settings:
            return None
        return self.load(settings)

    def load(self, settings: Settings) -> threading.Thread:
        from localspec.remote import RemoteSettings

        with self._lock:
            self._load_seq += 1
            seq = self._load_seq
            if isinstance(settings, RemoteSettings):
                self._loading = {"remote": settings.shown_url, "started_at": time.time()}
            else:
                self._loading = {
                    "target": str(settings.target_path),
                    "draft": str(settings.draft_path) if settings.draft_path else None,
                    "started_at": time.time(),
                }
            if self._settings is None:
                self._backend = _describe(settings)
            if not self.scheduler.has_engine:
                self.scheduler.set_unavailable(None)  # queued requests wait for this load instead of failing
        thread = threading.Thread(target=self._load, args=(settings, seq), name="localspec-load", daemon=True)
        thread.start()
        return thread

    def report_error(self, message: str) -> None:
        log.error("%s", message)
        with self._lock:
            if self._errors and self._errors[-1]["message"] == message:  # the same failure again (a retry)
                self._errors.pop()
            self._errors.append({"message": message, "at": time.time()})
            del self._errors[:-MAX_ERRORS]
            if not self.scheduler.has_engine and self._loading is None:
                self.scheduler.set_unavailable(message)

    def _load(self, settings: Settings, seq: int) -> None:
        started = time.monotonic()
        try:
            engine, models, info, backend = _open(settings)
        except Exception as exc:
            with self._lock:
                if seq == self._load_seq:
                    self._loading = None
            kept = " The previous models keep serving." if self._settings is not None else ""
            self.report_error(f"Loading {_what(settings)} failed: {exc}{kept}")
            if _is_remote(settings):
                self._retry_later(settings, seq)
            return
        with self._lock:
            if seq != self._load_seq:  # a newer load superseded this one
                stale: Backend | None = engine
            else:
                stale = None
                self._loading = None
                self._settings = settings
                self._errors.clear()
                self._models, self._info, self._backend = models, info, backend
                self.scheduler.install(engine)
        if stale is not None:
            stale.close()
            return
        log.info("loaded in %.2fs: %s, %s", time.monotonic() - started, backend, self._models)

    def _retry_later(self, settings: Settings, seq: int) -> None:
        def retry() -> None:
            if seq == self._load_seq:  # no newer config since
                self._load(settings, seq)

        timer = threading.Timer(REMOTE_RETRY_SECONDS, retry)
        timer.daemon = True
        timer.start()

    def health(self) -> dict[str, Any]:
        with self._lock:
            if self._settings is not None:
                status = "ok"
            elif self._loading is not None:
                status = "loading"
            else:
                status = "error"
            loading = dict(self._loading) if self._loading else None
            if loading:
                loading["elapsed"] = round(time.time() - loading["started_at"], 2)
            return {
                "status": status,
                "version": __version__,
                "models": dict(self._models),
                "backend": dict(self._backend),
                "errors": [dict(e) for e in self._errors],
                "loading": loading,
            }

    def model_info(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._info)


def _is_remote(settings: Settings) -> bool:
    from localspec.remote import RemoteSettings

    return isinstance(settings, RemoteSettings)


def _what(settings: Settings) -> str:
    from localspec.remote import RemoteSettings

    if isinstance(settings, RemoteSettings):
        return f"the remote server at {settings.shown_url}"
    return settings.target_path.name


def _open(settings: Settings) -> tuple[Backend, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Load the local models or connect to the remote: (engine, models, model info, backend description)."""
    from localspec.remote import RemoteEngine, RemoteSettings

    if isinstance(settings, RemoteSettings):
        log.info("connecting to the remote server at %s", settings.shown_url)
        remote = RemoteEngine(settings)
        backend = remote.describe()
        return (
            remote,
            {"target": remote.model, "draft": None},
            {"n_ctx": remote.n_ctx, "backend": backend},
            backend,
        )
    from localspec.engine import Engine

    log.info("loading target %s, draft %s", settings.target_path, settings.draft_path)
    engine = Engine(settings, calibrate=False)  # the scheduler times it where nothing else decodes
    log.info(
        "prompt cache: up to %.1f GiB of host memory (engine.prompt_cache_mb)",
        engine.snapshots.max_bytes / 2**30,
    )
    models = {
        "target": engine.target_info.name if engine.target_info else settings.target_path.stem,
        "draft": engine.draft_info.name if engine.draft_info else None,
    }
    info = {
        "target": _info_dict(engine.target_info),
        "draft": _info_dict(engine.draft_info),
        "n_ctx": engine.n_ctx,
        "mode": settings.mode,
    }
    return engine, models, info, {"name": "local"}


def _info_dict(info: Any) -> dict[str, Any] | None:
    if info is None:
        return None
    return {
        "name": info.name,
        "path": info.path,
        "architecture": info.architecture,
        "n_params": info.n_params,
        "n_vocab": info.n_vocab,
        "n_ctx_train": info.n_ctx_train,
        "has_fim": info.has_fim,
    }
