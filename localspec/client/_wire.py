"""The daemon's HTTP protocol without I/O: what each call sends, how answers, errors, streams and /health read.

The sync and async clients are thin shells over this module (httpx's own pattern), so the protocol is
written once, whatever HTTP library a shell uses.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from localspec.errors import (
    ContextOverflowError,
    DaemonUnavailableError,
    InvalidRequestError,
    LocalspecError,
    RemoteBackendError,
    UnsupportedError,
)

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 600.0  # between two reads of an answer (a stream sends a comment every 15 s while it waits)
NOT_RUNNING = "No localspec daemon is running. Start one with `localspec serve`."


@dataclass(frozen=True)
class Call:
    """One API call: method, path and JSON body. `streamed()` is the same call answered as server-sent events."""

    method: str
    path: str
    body: dict[str, Any] | None = None

    def streamed(self) -> Call:
        return Call("POST", self.path, {**(self.body or {}), "stream": True})


def health() -> Call:
    return Call("GET", "/health")


def models() -> Call:
    return Call("GET", "/v1/models")


def stats() -> Call:
    return Call("GET", "/v1/stats")


def metrics() -> Call:
    return Call("GET", "/metrics")


def complete(prompt: str | list[int], params: dict[str, Any]) -> Call:
    return Call("POST", "/v1/completions", {"prompt": prompt, **params})


def chat(messages: Sequence[dict[str, Any]], params: dict[str, Any]) -> Call:
    return Call("POST", "/v1/chat/completions", {"messages": list(messages), **params})


def infill(prefix: str, suffix: str, params: dict[str, Any]) -> Call:
    return Call("POST", "/v1/infill", {"prefix": prefix, "suffix": suffix, **params})


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def answer(call: Call, status: int, body: bytes) -> Any:
    """The decoded answer of a read response, or the error it carries."""
    if status >= 400:
        raise error_from(status, body)
    return body.decode("utf-8") if call.path == "/metrics" else json.loads(body)


def error_from(status: int, body: bytes) -> LocalspecError:
    """The `localspec.errors` exception for an error answer (OpenAI's `{"error": {...}}` shape)."""
    try:
        error = json.loads(body)["error"]
        message, code = str(error["message"]), error.get("code")
    except (ValueError, KeyError, TypeError):
        message, code = body.decode("utf-8", "replace")[:500] or f"HTTP {status}", None
    if code == "context_length_exceeded":
        return ContextOverflowError(message)
    if code == "unsupported":
        return UnsupportedError(message)
    if code == "remote_error":  # the daemon is fine; the remote server it decodes on is not
        return RemoteBackendError(message)
    if status in (401, 403) or status >= 500:
        return DaemonUnavailableError(message)
    return InvalidRequestError(message)


Errors = tuple[type[BaseException], ...]


@contextmanager
def reaching(url: str, errors: Errors) -> Iterator[None]:
    """Turns a failure to reach the daemon (`errors`: what the shell's HTTP library raises for it) into
    DaemonUnavailableError."""
    try:
        yield
    except errors as exc:
        raise DaemonUnavailableError(
            f"No localspec daemon answers at {url} ({exc}). Start one with `localspec serve`."
        ) from exc


@contextmanager
def reading(url: str, errors: Errors) -> Iterator[None]:
    """Turns a connection broken after the answer began (the daemon stopped mid-reply) into an error."""
    try:
        yield
    except errors as exc:
        raise DaemonUnavailableError(
            f"The localspec daemon at {url} closed the connection mid-reply ({exc or type(exc).__name__}); "
            "it may have stopped or crashed. Check `localspec status`, then send again."
        ) from exc


class ChunkDecoder:
    """Server-sent event lines to chunk dicts. `done` once `[DONE]` arrived; `final` is the last chunk
    carrying `usage` (and `speculative`)."""

    def __init__(self) -> None:
        self.done = False
        self.final: dict[str, Any] | None = None

    def decode(self, line: str) -> dict[str, Any] | None:
        """The chunk a line carries, or None (comments, blank separators, event names, the end)."""
        if not line.startswith("data:"):
            return None
        data = line[5:].strip()
        if data == "[DONE]":
            self.done = True
            return None
        chunk: dict[str, Any] = json.loads(data)
        if "error" in chunk:
            raise error_from(500, data.encode())
        if "usage" in chunk:
            self.final = chunk
        return chunk


@dataclass(frozen=True)
class Health:
    """What `GET /health` says: "ok" (models loaded), "loading", or "error" (no models could be loaded)."""

    url: str
    status: str
    target: str | None = None
    draft: str | None = None
    loading: str | None = None  # the target file being loaded
    errors: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, url: str, data: dict[str, Any]) -> Health:
        models = data.get("models") or {}
        loading = data.get("loading") or {}
        return cls(
            url=url,
            status=str(data.get("status", "unknown")),
            target=models.get("target"),
            draft=models.get("draft"),
            loading=str(loading["target"]) if loading.get("target") else None,
            errors=[str(e.get("message", e)) for e in data.get("errors") or []],
        )

    @property
    def ready(self) -> bool:
        return self.status == "ok"

    @property
    def failed(self) -> bool:
        return self.status == "error"

    def progress(self) -> str:
        """A short line for a status bar while the models load."""
        return f"loading {os.path.basename(self.loading or 'models')}"

    def not_ready(self) -> DaemonUnavailableError:
        """Why requests cannot be served yet, as the error to raise."""
        if self.failed:
            reason = "; ".join(self.errors) or "unknown error"
            return DaemonUnavailableError(f"The localspec daemon could not load its models: {reason}")
        return DaemonUnavailableError(
            f"The localspec daemon at {self.url} is not ready yet ({self.progress()})."
        )

    def pair(self) -> str:
        """The loaded models, e.g. "tiny-target + tiny-draft" or "tiny-target (no draft)"."""
        target = self.target or "?"
        return f"{target} + {self.draft}" if self.draft else f"{target} (no draft)"
