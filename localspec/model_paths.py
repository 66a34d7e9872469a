"""From configuration to engine: model names (catalog names or paths) to GGUF paths, and engine settings."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from localspec.config import Config

if TYPE_CHECKING:
    from localspec.engine import EngineSettings


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

        target_path, draft_path = resolve_pair(config.target, config.draft, config.models_path())
    else:
        target_path = _resolve(target, config) if target else resolve_model_paths(config)[0]
        # A target named on the command line gets no configured draft: it may not share its vocabulary.
        draft_path = _resolve(draft, config) if draft and draft != "none" else None
    return target_path, None if no_draft else draft_path


def engine_settings(config: Config, target: Path, draft: Path | None, **overrides: Any) -> EngineSettings:
    """The engine settings a config asks for (overrides win: e.g. fewer slots for a one-shot command)."""
    from localspec.engine import EngineSettings

    values: dict[str, Any] = {
        "target_path": target,
        "draft_path": draft,
        "n_ctx": config.n_ctx,
        "threads": config.threads,
        "target_gpu_layers": config.target_gpu_layers,
        "draft_gpu_layers": config.draft_gpu_layers,
        "slots": config.slots,
        "mode": config.mode,  # Config.validate() checked it
        "draft_max": config.draft_max,
        "draft_p_min": config.draft_p_min,
        "history_tokens": config.history_tokens,
    }
    return EngineSettings(**{**values, **overrides})
