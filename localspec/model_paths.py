"""Turn the configured model names (catalog names or paths) plus command-line choices into GGUF paths."""

from __future__ import annotations

from pathlib import Path

from localspec.config import Config


def _resolve(name_or_path: str, config: Config) -> Path:
    if name_or_path.endswith(".gguf") or Path(name_or_path).expanduser().is_file():
        return Path(name_or_path).expanduser()  # a path: the engine reports a missing or broken file itself
    from localspec.models import resolve_model

    return resolve_model(name_or_path, config.models_path())


def resolve_model_paths(
    config: Config, target: str | None = None, draft: str | None = None, no_draft: bool = False
) -> tuple[Path, Path | None]:
    """(target, draft) paths. Explicit arguments win over the config; `no_draft` or draft "none" disables it."""
    if target is None and draft is None:
        from localspec.models import resolve_pair

        target_path, draft_path = resolve_pair(config)
    else:
        target_path = _resolve(target, config) if target else resolve_model_paths(config)[0]
        # A target named on the command line gets no configured draft: it may not share its vocabulary.
        draft_path = _resolve(draft, config) if draft and draft != "none" else None
    return target_path, None if no_draft else draft_path
