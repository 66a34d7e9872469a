"""Daemon logging: a rotated file in the platformdirs log dir, plus stderr."""

from __future__ import annotations

import logging
import sys
from logging.handlers import RotatingFileHandler
from pathlib import Path

from localspec import locations

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_file() -> Path:
    return locations.log_dir() / "daemon.log"


def configure(verbose: bool = False) -> Path:
    """Log to daemon.log (rotated at 5 MB, 3 kept) and warnings (everything if verbose) to stderr."""
    path = log_file()
    file_handler = RotatingFileHandler(path, maxBytes=5 * 1024 * 1024, backupCount=3, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
    file_handler.setLevel(logging.INFO)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter(LOG_FORMAT))
    console.setLevel(logging.INFO if verbose else logging.WARNING)
    for name in ("localspec", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers = [file_handler, console]
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return path
