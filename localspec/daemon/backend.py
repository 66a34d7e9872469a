"""What the scheduler runs generations on: the local Engine or a RemoteEngine (both fit these protocols)."""

from __future__ import annotations

from typing import Any, Protocol

from localspec.engine.types import GenerationRequest, GenerationResult, StepEvent


class Generating(Protocol):
    """A generation in flight: `step()` until it returns None or `result` is set (no step gives more after
    that), then read `result`; `close()` stops it."""

    result: GenerationResult | None

    def step(self) -> StepEvent | None: ...

    def close(self) -> None: ...


class Backend(Protocol):
    """The engine interface the daemon uses. Prompts from `chat_prompt` / `infill_prompt` are opaque: they go
    back, inside a GenerationRequest, to the same backend's `generate`."""

    calibrated: bool

    @property
    def n_ctx(self) -> int: ...

    def calibrate(self) -> str:
        """Time what must be timed before serving (once); a summary for the log, "" if there was nothing."""
        ...

    def chat_prompt(self, messages: list[dict[str, str]]) -> Any: ...

    def infill_prompt(
        self,
        prefix: str,
        suffix: str,
        extra: list[tuple[str, str]] | None = None,
        filename: str | None = None,
        max_tokens: int = 256,
    ) -> Any: ...

    def generate(self, request: GenerationRequest) -> Generating: ...

    def stats(self) -> dict[str, Any]: ...

    def close(self) -> None: ...
