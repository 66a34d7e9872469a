"""Names to files: what the daemon and the CLI call to find the GGUF files in a models directory.

A name is, in order: a path to a GGUF file, a model registered with `models add`, a catalog pair (its
target, or its draft when a draft is asked for), or a catalog model. Nothing here downloads, reads the
configuration or loads a model: callers pass the names, the directory and (for `choose_pair`) the check.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from localspec.errors import IncompatibleModelsError, ModelLoadError
from localspec.models.catalog import Catalog, CatalogModel, CatalogPair, load_catalog, unknown_name_error
from localspec.models.errors import ModelNotInstalledError
from localspec.models.install import is_installed, model_path
from localspec.models.registry import load_registry

NO_DRAFT = "none"


def looks_like_path(name: str) -> bool:
    return name.endswith(".gguf") or os.sep in name or name.startswith(("~", ".")) or Path(name).is_file()


def _installed_path(model: CatalogModel, models_dir: Path, pull_name: str) -> Path:
    if not is_installed(model, models_dir):
        raise ModelNotInstalledError(
            f"The model {model.name} ({model.file}) is not installed in {models_dir}. "
            f"Run `localspec models pull {pull_name}` to download it."
        )
    return model_path(model, models_dir)


def resolve_model(
    name_or_path: str,
    models_dir: Path,
    *,
    role: Literal["target", "draft"] = "target",
    catalog: Catalog | None = None,
) -> Path:
    """The GGUF file for a path or an installed name; ModelLoadError saying what to run if there is none."""
    name = name_or_path.strip()
    if looks_like_path(name):
        path = Path(name).expanduser()
        if path.is_file():
            return path.resolve()
        if path.parent == Path(".") and (models_dir / name).is_file():
            return (models_dir / name).resolve()
        raise ModelLoadError(
            f"The model file {path} does not exist. Check the path, or run `localspec models list`."
        )
    local = load_registry().local
    if name in local:
        path = Path(local[name].path)
        if not path.is_file():
            raise ModelLoadError(
                f"The registered model {name!r} points at {path}, which no longer exists. Register the "
                f"file's new location with `localspec models add NEW_PATH --name {name}`, or "
                f"`localspec models rm {name}`."
            )
        return path
    catalog = catalog or load_catalog()
    entry = catalog.lookup(name)
    if isinstance(entry, CatalogPair):
        return _installed_path(
            catalog.models[entry.draft if role == "draft" else entry.target], models_dir, entry.name
        )
    if isinstance(entry, CatalogModel):
        return _installed_path(entry, models_dir, entry.name)
    raise unknown_name_error(name, catalog.names() + list(local))


def resolve_pair(
    target: str, draft: str, models_dir: Path, *, catalog: Catalog | None = None
) -> tuple[Path, Path | None]:
    """(target, draft) files for the `models.target` / `models.draft` settings.

    `target` may name a pair (both files; "" is the catalog's default pair); a non-empty `draft` overrides the
    pair's draft, and "none" runs without one.
    """
    catalog = catalog or load_catalog()
    target_name = target.strip() or (pair.name if (pair := catalog.default_pair()) else "")
    draft_name = draft.strip()
    entry = None if looks_like_path(target_name) else catalog.lookup(target_name)
    pair_draft: Path | None = None
    if isinstance(entry, CatalogPair) and target_name not in load_registry().local:
        target_model, draft_model = catalog.pair_models(entry)
        needed = [target_model] if draft_name else [target_model, draft_model]
        missing = [m.name for m in needed if not is_installed(m, models_dir)]
        if missing:
            raise ModelNotInstalledError(
                f"The model pair {entry.name} is not installed in {models_dir} "
                f"(missing: {', '.join(missing)}). "
                f"Run `localspec models pull {entry.name}` to download it."
            )
        target_path = model_path(target_model, models_dir)
        if not draft_name:
            pair_draft = model_path(draft_model, models_dir)
    else:
        target_path = resolve_model(target_name, models_dir, catalog=catalog)
    if draft_name.lower() == NO_DRAFT:
        return target_path, None
    if draft_name:
        return target_path, resolve_model(draft_name, models_dir, role="draft", catalog=catalog)
    return target_path, pair_draft


def resolve_run_models(
    models_dir: Path,
    configured_target: str,
    configured_draft: str,
    target: str | None = None,
    draft: str | None = None,
    no_draft: bool = False,
) -> tuple[Path, Path | None]:
    """(target, draft) files for one run: names given for it win over the configured pair.

    A target named for the run gets no configured draft (it may not share its vocabulary); `no_draft` or the draft
    "none" runs without one. A .gguf path is taken as given: the engine reports a missing or broken file itself.
    """
    if target is None and draft is None:
        target_path, draft_path = resolve_pair(configured_target, configured_draft, models_dir)
    else:
        target_path = (
            _given(target, models_dir)
            if target
            else resolve_pair(configured_target, configured_draft, models_dir)[0]
        )
        draft_path = _given(draft, models_dir) if draft and draft != NO_DRAFT else None
    return target_path, None if no_draft else draft_path


def _given(name_or_path: str, models_dir: Path) -> Path:
    if name_or_path.endswith(".gguf") or Path(name_or_path).expanduser().is_file():
        return Path(name_or_path).expanduser()
    return resolve_model(name_or_path, models_dir)


@dataclass
class PairChoice:
    """What `models use` resolved and will write to config."""

    target_setting: str
    draft_setting: str
    target: Path
    draft: Path | None


def choose_pair(
    target: str,
    draft: str | None,
    models_dir: Path,
    *,
    check_compatible: Callable[[Path, Path], None],
    catalog: Catalog | None = None,
) -> PairChoice:
    """Resolve TARGET [DRAFT] for `models use`, check the pair can work together, and say what to store.

    `check_compatible(target, draft)` raises IncompatibleModelsError (the engine's check loads vocabularies).
    Paths are stored absolute (the daemon may run from another directory); names are stored as names.
    """

    def setting(name: str) -> str:
        if name.lower() == NO_DRAFT or not looks_like_path(name):
            return name
        return str(Path(name).expanduser().resolve())

    target_setting, draft_setting = setting(target), setting(draft) if draft else ""
    target_path, draft_path = resolve_pair(target_setting, draft_setting, models_dir, catalog=catalog)
    if draft_path is not None:
        try:
            check_compatible(target_path, draft_path)
        except IncompatibleModelsError as exc:
            raise IncompatibleModelsError(
                f"{exc} The active pair was not changed; pass another DRAFT, or `none` to run the target alone."
            ) from exc
    return PairChoice(target_setting, draft_setting, target_path, draft_path)
