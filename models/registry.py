"""The on-disk record of models this machine knows beyond the catalog: local GGUFs registered with
`models add`, and the checksum each pulled catalog model had when it was downloaded.

A small JSON file in the data dir (`models.json`), written atomically under a file lock so a pull and an
`add` running at once cannot lose each other's entries.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from localspec import locations
from localspec.errors import ConfigError, ModelLoadError


@dataclass
class LocalModel:
    """A GGUF file the user registered by path; `info` is its GGUF metadata summary at registration."""

    name: str
    path: str
    size: int
    added_at: float
    info: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None  # filled in by the first `models verify`


@dataclass
class PulledModel:
    """A catalog model's file as `pull` finished it, so `verify` can check it without a pinned hash."""

    name: str
    file: str
    size: int
    sha256: str
    source: str
    pulled_at: float
    # True when the download was checked against a published SHA-256 (the catalog's pin, or the hash the
    # source announced); False when neither existed and `sha256` is only what arrived.
    verified: bool = False


@dataclass
class Registry:
    local: dict[str, LocalModel] = field(default_factory=dict)
    pulled: dict[str, PulledModel] = field(default_factory=dict)


def registry_file() -> Path:
    return locations.data_dir() / "models.json"


def _read(path: Path) -> Registry:
    if not path.exists():
        return Registry()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return Registry(
            local={k: LocalModel(**v) for k, v in raw.get("local", {}).items()},
            pulled={k: PulledModel(**v) for k, v in raw.get("pulled", {}).items()},
        )
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"The model registry {path} is unreadable ({exc}). Delete it and re-register your local models "
            "with `localspec models add PATH` (pulled models are found again by `localspec models list`)."
        ) from exc


def load_registry() -> Registry:
    return _read(registry_file())


@contextmanager
def edit_registry() -> Iterator[Registry]:
    """Read-modify-write the registry under its lock; the file is replaced atomically on success."""
    path = registry_file()
    with FileLock(str(path) + ".lock", timeout=30):
        registry = _read(path)
        yield registry
        document = {
            "version": 1,
            "local": {k: asdict(v) for k, v in registry.local.items()},
            "pulled": {k: asdict(v) for k, v in registry.pulled.items()},
        }
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(document, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)


def record_pulled(name: str, file: Path, sha256: str, source: str, *, verified: bool) -> None:
    with edit_registry() as registry:
        registry.pulled[name] = PulledModel(
            name=name,
            file=file.name,
            size=file.stat().st_size,
            sha256=sha256,
            source=source,
            pulled_at=time.time(),
            verified=verified,
        )


def register_local(path: Path, name: str | None = None, reserved: list[str] | None = None) -> LocalModel:
    """Read a GGUF file's metadata (no weights) and record it under `name` (default: the file's stem)."""
    from localspec.models.gguf_info import read_gguf_info

    path = path.expanduser().resolve()
    if not path.is_file():
        raise ModelLoadError(f"{path} does not exist or is not a file. Give the path to a .gguf file.")
    info = read_gguf_info(path)
    name = name or path.stem
    if reserved and name in reserved:
        raise ConfigError(
            f"{name!r} is already a catalog name; register the file under another one with --name."
        )
    entry = LocalModel(name=name, path=str(path), size=info.size, added_at=time.time(), info=info.to_dict())
    with edit_registry() as registry:
        registry.local[name] = entry
    return entry


def unregister_local(name: str) -> LocalModel | None:
    with edit_registry() as registry:
        return registry.local.pop(name, None)
