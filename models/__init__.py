"""Model catalog and management: `localspec.models`.

The daemon and the CLI call `resolve_pair(target, draft, models_dir)` / `resolve_model(name, models_dir)` to
turn names into GGUF files; `localspec models ...` (see `cli.py`) lists, pulls, verifies, registers and
selects models.
"""

from localspec.models.catalog import Catalog, CatalogModel, CatalogPair, load_catalog
from localspec.models.errors import (
    CatalogError,
    ChecksumMismatchError,
    DiskSpaceError,
    DownloadError,
    ModelNotInstalledError,
    UnknownModelError,
)
from localspec.models.gguf_info import GGUFInfo, read_gguf_info
from localspec.models.install import is_installed, pull_model
from localspec.models.resolve import resolve_model, resolve_pair, resolve_run_models

__all__ = [
    "Catalog",
    "CatalogError",
    "CatalogModel",
    "CatalogPair",
    "ChecksumMismatchError",
    "DiskSpaceError",
    "DownloadError",
    "GGUFInfo",
    "ModelNotInstalledError",
    "UnknownModelError",
    "is_installed",
    "load_catalog",
    "pull_model",
    "read_gguf_info",
    "resolve_model",
    "resolve_pair",
    "resolve_run_models",
]
