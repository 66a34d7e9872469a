"""Errors of model management, inside localspec's one hierarchy (see `localspec.errors`)."""

from __future__ import annotations

from localspec.errors import LocalspecError, ModelLoadError


class UnknownModelError(ModelLoadError):
    """A name is neither a catalog entry, a registered model, nor a path to a GGUF file."""


class ModelNotInstalledError(ModelLoadError):
    """A catalog model is known but its file has not been pulled yet."""


class CatalogError(LocalspecError):
    """The catalog TOML is missing, malformed, or refers to names it does not define."""


class DownloadError(LocalspecError):
    """Every source of a model failed; the message names each source, its URL and what to try."""


class ChecksumMismatchError(DownloadError):
    """A downloaded file's SHA-256 differs from the expected one (the file has been removed)."""


class DiskSpaceError(DownloadError):
    """Not enough free disk space for the download plus the configured reserve."""
