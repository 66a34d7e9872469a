"""What each kind of remote server speaks: the HTTP call for a generation, and what its stream chunks mean.

Every kind serves OpenAI's `/v1/completions` and `/v1/chat/completions`. llama-server adds `/infill` (it builds
the fill-in-the-middle prompt with the model's own tokens and the extra files) and reports `timings`, with
`draft_n` / `draft_n_accepted` when it speculates; vLLM and others get a FIM prompt built from configured tokens.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from localspec.engine.types import FinishReason, GenerationRequest, SamplingParams
from localspec.errors import RemoteBackendError
from localspec.remote.stats import OPTIONAL_FIELDS, RemoteStats

RemoteKind = Literal["llama-server", "vllm", "openai"]


@dataclass
class ChatMessages:
    """A chat prompt that the remote renders with its own chat template (sent to /v1/chat/completions)."""

    messages: list[dict[str, str]]


@dataclass
class InfillParts:
    """An editor request's pieces; the remote (or the configured FIM tokens) make the prompt from them."""

    prefix: str
    suffix: str
    extra: list[tuple[str, str]] = field(default_factory=list)
    filename: str | None = None


@dataclass
class Call:
    """One streaming POST: `native` marks llama-server's own chunk format (`/infill`), else OpenAI's."""

    path: str
    body: dict[str, Any]
    native: bool = False


def build_call(kind: RemoteKind, model: str, request: GenerationRequest, fim_tokens: tuple[str, ...]) -> Call:
    prompt: Any = request.prompt
    common: dict[str, Any] = {"stream": True, **_sampling(kind, request.sampling)}
    if request.stop:
        common["stop"] = list(request.stop)
    if isinstance(prompt, InfillParts) and kind == "llama-server":
        body = {
            "input_prefix": prompt.prefix,
            "input_suffix": prompt.suffix,
            "input_extra": [{"filename": name, "text": text} for name, text in prompt.extra],
            "prompt": "",
            "n_predict": request.max_tokens,
            "cache_prompt": True,
            **common,
        }
        return Call("/infill", body, native=True)
    openai: dict[str, Any] = {
        "model": model,
        "max_tokens": request.max_tokens,
        "stream_options": {"include_usage": True},
        **common,
    }
    if isinstance(prompt, ChatMessages):
        return Call("/v1/chat/completions", {**openai, "messages": prompt.messages})
    if isinstance(prompt, InfillParts):
        pre, suf, mid = fim_tokens
        return Call("/v1/completions", {**openai, "prompt": f"{pre}{prompt.prefix}{suf}{prompt.suffix}{mid}"})
    return Call("/v1/completions", {**openai, "prompt": prompt})


def _sampling(kind: RemoteKind, sampling: SamplingParams) -> dict[str, Any]:
    """OpenAI's sampling fields, plus the ones llama-server and vLLM also take (others may reject them)."""
    fields: dict[str, Any] = {"temperature": sampling.temperature, "top_p": sampling.top_p}
    if sampling.seed is not None:
        fields["seed"] = sampling.seed
    if kind == "llama-server":
        fields.update(top_k=sampling.top_k, min_p=sampling.min_p, repeat_penalty=sampling.repeat_penalty)
        fields["repeat_last_n"] = sampling.repeat_last_n
    elif kind == "vllm":
        fields.update(top_k=sampling.top_k, min_p=sampling.min_p, repetition_penalty=sampling.repeat_penalty)
    return fields


@dataclass
class StreamState:
    """What a generation's stream has said so far: text, finish reason, usage and llama-server's timings."""

    kind: RemoteKind
    native: bool
    started: float = field(default_factory=time.perf_counter)
    first_text_at: float | None = None
    text_chunks: int = 0
    finish_reason: FinishReason | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)

    def feed(self, data: Any) -> str:
        """One parsed `data:` payload of the stream; returns the text it adds."""
        if not isinstance(data, dict):
            raise RemoteBackendError(
                f"The remote server sent a stream chunk that is not a JSON object: {data!r:.200}"
            )
        if "error" in data:
            raise RemoteBackendError(f"The remote server failed mid-stream: {_error_text(data)}")
        if isinstance(data.get("timings"), dict):
            self.timings = data["timings"]
        if isinstance(data.get("usage"), dict):
            self.usage = data["usage"]
        text = self._native(data) if self.native else self._openai(data)
        if text:
            self.text_chunks += 1
            if self.first_text_at is None:
                self.first_text_at = time.perf_counter()
        return text

    def _native(self, data: dict[str, Any]) -> str:
        if data.get("stop"):
            self.finish_reason = "length" if data.get("stop_type") == "limit" else "stop"
            self.usage = {
                "prompt_tokens": data.get("tokens_evaluated"),
                "completion_tokens": data.get("tokens_predicted"),
            }
        content = data.get("content", "")
        return content if isinstance(content, str) else ""

    def _openai(self, data: dict[str, Any]) -> str:
        choices = data.get("choices")
        if not isinstance(choices, list):
            raise RemoteBackendError(f"The remote server sent a stream chunk without choices: {data!s:.200}")
        if not choices:  # the usage chunk at the end
            return ""
        choice = choices[0] if isinstance(choices[0], dict) else {}
        reason = choice.get("finish_reason")
        if reason:
            self.finish_reason = "length" if reason == "length" else "stop"
        content = (choice.get("delta") or {}).get("content") if "delta" in choice else choice.get("text")
        return content if isinstance(content, str) else ""

    def stats(self) -> RemoteStats:
        """The request's stats from what the remote reported; what it did not report is marked unknown."""
        now = time.perf_counter()
        timings, usage = self.timings, self.usage
        tokens = _int(usage.get("completion_tokens")) or _int(timings.get("predicted_n")) or self.text_chunks
        details = usage.get("prompt_tokens_details") or {}
        cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else None
        if cached is None:
            cached = _int(timings.get("cache_n"))
        stats = RemoteStats(
            prompt_tokens=_int(usage.get("prompt_tokens")) or 0,
            cached_tokens=cached or 0,
            tokens=tokens,
            settled=tokens,
            t_prompt=(self.first_text_at or now) - self.started,
            t_total=now - self.started,
        )
        unknown = set(OPTIONAL_FIELDS)
        if cached is not None:
            unknown.discard("cached_tokens")
        if _int(usage.get("prompt_tokens")) is None:  # a stream closed before the remote's summary
            unknown.add("prompt_tokens")
        if self.kind == "llama-server" and timings:
            # llama-server reports draft_n only when it drafted: no field means none drafted, a known 0.
            stats.drafted = _int(timings.get("draft_n")) or 0
            stats.accepted = _int(timings.get("draft_n_accepted")) or 0
            # Each target pass yields one token plus the drafts it accepted.
            stats.target_passes = max(1, tokens - stats.accepted) if tokens else 0
            unknown -= {"drafted", "accepted", "acceptance", "mean_accepted_length"}
            speed = timings.get("predicted_per_second")
            if isinstance(speed, int | float) and speed > 0:
                stats.reported_tokens_per_second = float(speed)
        stats.unknown = frozenset(unknown)
        return stats


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _error_text(body: Any) -> str:
    """The message of an error body ({"error": {"message": …}} or {"error": "…"}, as servers differ)."""
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            return str(error.get("message") or error)[:500]
        return str(error)[:500]
    return str(body)[:500]


def error_message(body: bytes) -> str:
    """A readable message from an error response's body, JSON or not."""
    try:
        return _error_text(json.loads(body))
    except ValueError:
        return body.decode("utf-8", errors="replace").strip()[:500] or "(empty body)"
