"""The one place that answers "where do my files live". Each function creates its directory."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "localspec"


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _override(env_name: str) -> Path | None:
    # Tests and power users can relocate every folder with one variable (LOCALSPEC_HOME) or each one alone.
    if value := os.environ.get(env_name):
        return Path(value)
    if home := os.environ.get("LOCALSPEC_HOME"):
        return Path(home) / env_name.removeprefix("LOCALSPEC_").removesuffix("_DIR").lower()
    return None


def config_dir() -> Path:
    return _ensure(_override("LOCALSPEC_CONFIG_DIR") or Path(platformdirs.user_config_dir(APP_NAME)))


def data_dir() -> Path:
    return _ensure(_override("LOCALSPEC_DATA_DIR") or Path(platformdirs.user_data_dir(APP_NAME)))


def state_dir() -> Path:
    """Runtime state: the running daemon's address and pid, start-up lock."""
    return _ensure(_override("LOCALSPEC_STATE_DIR") or Path(platformdirs.user_state_dir(APP_NAME)))


def log_dir() -> Path:
    return _ensure(_override("LOCALSPEC_LOG_DIR") or Path(platformdirs.user_log_dir(APP_NAME)))


def cache_dir() -> Path:
    return _ensure(_override("LOCALSPEC_CACHE_DIR") or Path(platformdirs.user_cache_dir(APP_NAME)))


def config_file() -> Path:
    return config_dir() / "config.toml"


def token_file() -> Path:
    return config_dir() / "token"


def default_models_dir() -> Path:
    return _ensure(data_dir() / "models")


def conversations_dir() -> Path:
    return _ensure(data_dir() / "conversations")
