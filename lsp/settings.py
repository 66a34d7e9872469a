"""The language server's settings: one fully defaulted model, read from `initializationOptions` and
`workspace/didChangeConfiguration`.

Editors send camelCase keys (`maxTokens`, `debounceMs`), either at the top level or under a
`localspec` section; snake_case works too. Unknown keys are ignored so newer editor configs do not
break an older server.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from localspec.errors import ConfigError

SECTION = "localspec"


class LspSettings(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    enable: bool = True
    # Generation
    max_tokens: int = Field(default=64, ge=1, le=2048)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    # "auto": one line when the cursor has code after it on its line, several otherwise.
    line_mode: Literal["auto", "single", "multi"] = "auto"
    # Prompt windows around the cursor: whole lines, then capped in characters.
    prefix_lines: int = Field(default=64, ge=0)
    # Lines after the cursor's line, evaluated anew at every jump. None: 16, or 4 where the daemon's prompt
    # tokens are measured to be slow (a CPU, where every line adds to each jump; `lsp/prompt.py`).
    suffix_lines: int | None = Field(default=None, ge=0)
    # The same for a one-line suggestion: None: 2, or 1 where prompts are slow.
    single_line_suffix_lines: int | None = Field(default=None, ge=0)
    # The prefix window starts on a multiple of this many lines (so it holds prefix_lines to prefix_lines +
    # window_step_lines - 1 lines): nearby cursors share it, and the model's cache with it.
    window_step_lines: int = Field(default=64, ge=1)
    # Evaluate each open file's windows in the background, so jumping anywhere in it is quick.
    warm_files: bool = True
    # Files longer than this are not warmed (each window costs about twice its lines in prompt tokens).
    warm_max_lines: int = Field(default=10_000, ge=0)
    prefix_max_chars: int = Field(default=8000, ge=0)
    suffix_max_chars: int = Field(default=2000, ge=0)
    # Extra context from other files (a ring of chunks, as llama.vscode keeps).
    ring_chunks: int = Field(default=16, ge=0, le=256)
    chunk_lines: int = Field(default=64, ge=1)
    extra_max_chars: int = Field(default=8000, ge=0)
    watch_workspace: bool = True
    watch_max_file_bytes: int = Field(default=256_000, ge=0)
    # Latency
    debounce_ms: int = Field(default=120, ge=0, le=5000)
    cache_size: int = Field(default=256, ge=0)
    precompute: bool = True
    request_timeout_s: float = Field(default=30.0, gt=0)
    # Start `localspec serve` in the background when no daemon answers.
    auto_start_daemon: bool = True

    @classmethod
    def from_options(cls, options: Any, base: LspSettings | None = None) -> LspSettings:
        """Settings from an editor's options object, over `base` (defaults when None)."""
        values = _section(options)
        current = (base or cls()).model_dump()
        known = {name: info.alias or name for name, info in cls.model_fields.items()}
        for name, alias in known.items():
            if alias in values:
                current[name] = values[alias]
            elif name in values:
                current[name] = values[name]
        try:
            return cls.model_validate(current)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()
            )
            raise ConfigError(
                f"Invalid localspec language-server settings ({problems}); keeping the previous ones."
            ) from None

    def as_options(self) -> dict[str, Any]:
        """camelCase view, as the editor spells the settings (for the stats command and docs)."""
        return self.model_dump(by_alias=True)


def _section(options: Any) -> dict[str, Any]:
    if not isinstance(options, dict):
        return {}
    nested = options.get(SECTION)
    return nested if isinstance(nested, dict) else options
