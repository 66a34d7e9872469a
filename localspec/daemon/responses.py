"""OpenAI-shaped response bodies and stream chunks, plus localspec's `speculative` report."""

from __future__ import annotations

import time
import uuid
from typing import Any

from localspec.engine.types import GenerationResult, StepEvent
from localspec.remote.stats import RemoteStep, unknown_fields


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(result: GenerationResult) -> dict[str, Any]:
    stats, unknown = result.stats, unknown_fields(result.stats)
    prompt = None if "prompt_tokens" in unknown else stats.prompt_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": stats.tokens,
        "total_tokens": None if prompt is None else prompt + stats.tokens,
        "prompt_tokens_details": {
            "cached_tokens": None if "cached_tokens" in unknown else stats.cached_tokens
        },
    }


def speculative(result: GenerationResult) -> dict[str, Any]:
    stats, unknown = result.stats, unknown_fields(result.stats)
    report: dict[str, Any] = {
        "drafted": stats.drafted,
        "accepted": stats.accepted,
        "acceptance": round(stats.acceptance, 4),
        "mean_accepted_length": round(stats.mean_accepted_length, 3),
        "tokens_per_second": round(stats.tokens_per_second, 2),
        "draft_sources": dict(stats.steps_by_source),
        # Seconds spent evaluating the prompt's uncached tokens (a remote: until its first text arrived).
        "prompt_seconds": round(stats.t_prompt, 4),
    }
    return {key: None if key in unknown else value for key, value in report.items()}


def speculative_step(event: StepEvent) -> dict[str, Any]:
    if isinstance(event, RemoteStep):  # a remote's stream chunk does not say what was drafted in it
        return {"drafted": None, "accepted": None, "source": None, "drafted_chars": None}
    return {
        "drafted": event.drafted,
        "accepted": event.accepted,
        "source": event.source,
        "drafted_chars": event.drafted_chars,
    }


class Shaper:
    """Builds the bodies of one response (same id, model and timestamp for every chunk)."""

    def __init__(self, kind: str, model: str) -> None:
        self.kind = kind  # "chat" | "completion"
        self.model = model
        self.id = new_id("chatcmpl" if kind == "chat" else "cmpl")
        self.created = int(time.time())

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def full(self, result: GenerationResult) -> dict[str, Any]:
        if self.kind == "chat":
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "logprobs": None,
                "finish_reason": result.finish_reason,
            }
            body = self._envelope("chat.completion", [choice])
        else:
            choice = {
                "index": 0,
                "text": result.text,
                "logprobs": None,
                "finish_reason": result.finish_reason,
            }
            body = self._envelope("text_completion", [choice])
        body["usage"] = usage(result)
        body["speculative"] = speculative(result)
        return body

    def chunk(self, text: str, step: dict[str, Any], first: bool) -> dict[str, Any]:
        if self.kind == "chat":
            delta: dict[str, Any] = {"content": text}
            if first:
                delta["role"] = "assistant"
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
            body = self._envelope("chat.completion.chunk", [choice])
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": None}
            body = self._envelope("text_completion", [choice])
        body["speculative_step"] = step
        return body

    def last_chunk(self, result: GenerationResult) -> dict[str, Any]:
        if self.kind == "chat":
            choice: dict[str, Any] = {
                "index": 0,
                "delta": {},
                "logprobs": None,
                "finish_reason": result.finish_reason,
            }
            body = self._envelope("chat.completion.chunk", [choice])
        else:
            choice = {"index": 0, "text": "", "logprobs": None, "finish_reason": result.finish_reason}
            body = self._envelope("text_completion", [choice])
        body["speculative_step"] = {"drafted": 0, "accepted": 0, "source": "none", "drafted_chars": 0}
        body["usage"] = usage(result)
        body["speculative"] = speculative(result)
        return body


def infill_body(content: str, finish_reason: str, result: GenerationResult, model: str) -> dict[str, Any]:
    body = {
        "id": new_id("infill"),
        "object": "infill",
        "model": model,
        "content": content,
        "finish_reason": finish_reason,
        "usage": usage(result),
        "speculative": speculative(result),
    }
    if result.prompt_cache is not None:  # (a remote backend keeps no prompt cache here)
        body["prompt_cache"] = result.prompt_cache.as_dict()
    return body


def error_body(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": code}}
