"""RemoteEngine: the daemon's engine interface, served by an existing inference server over HTTP.

The scheduler drives it exactly like the local Engine, from its one worker thread: `generate()` returns a
generation whose `step()` hands back the next stream chunk's text. The HTTP requests run on this backend's own
event-loop thread (httpx), so a chat's stream keeps arriving while an editor request is stepped first, and a
cancelled request closes its HTTP stream at once, which makes the remote stop generating.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import httpx

from localspec.config import DEFAULT_FIM_TOKENS
from localspec.engine.types import CancelToken, FinishReason, GenerationRequest, GenerationResult
from localspec.errors import ConfigError, InvalidRequestError, RemoteBackendError
from localspec.remote.dialects import (
    Call,
    ChatMessages,
    InfillParts,
    RemoteKind,
    StreamState,
    build_call,
    error_message,
)
from localspec.remote.stats import RemoteStats, RemoteStep
from localspec.remote.vllm_metrics import speculative_counters

if TYPE_CHECKING:
    from localspec.config import Config

# How long one step waits for the next chunk before giving the scheduler's worker back (to admit or pre-empt).
STEP_WAIT_SECONDS = 0.05
# How often a stream checks its request's CancelToken while the scheduler steps other requests.
CANCEL_CHECK_SECONDS = 0.02
_T = TypeVar("_T")


@dataclass(frozen=True)
class RemoteSettings:
    """Where the remote is and how to talk to it. The API key is read when connecting, never kept here."""

    url: str
    model: str = ""  # "" = the first model the remote lists
    kind: str = "auto"  # auto | llama-server | vllm | openai
    api_key_file: str = ""
    api_key_env: str = ""
    timeout: float = 120.0
    fim_tokens: tuple[str, ...] = tuple(DEFAULT_FIM_TOKENS)
    n_ctx: int = 4096  # used when the remote does not say its context size

    @classmethod
    def from_config(cls, config: Config) -> RemoteSettings:
        return cls(
            url=config.remote_url.rstrip("/"),
            model=config.remote_model,
            kind=config.remote_kind,
            api_key_file=config.remote_api_key_file,
            api_key_env=config.remote_api_key_env,
            timeout=config.remote_timeout,
            fim_tokens=tuple(config.remote_fim_tokens),
            n_ctx=config.n_ctx,
        )

    @property
    def shown_url(self) -> str:
        """The URL without any user:password part, for logs, errors and /health."""
        return str(httpx.URL(self.url).copy_with(username=None, password=None))


def read_api_key(settings: RemoteSettings) -> str | None:
    """The bearer key from engine.remote_api_key_file or engine.remote_api_key_env (None: no key)."""
    if settings.api_key_file:
        path = Path(settings.api_key_file).expanduser()
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"engine.remote_api_key_file {path} cannot be read ({exc.strerror}).") from None
        if not key:
            raise ConfigError(
                f"engine.remote_api_key_file {path} is empty; write the remote's API key in it."
            )
        return key
    if settings.api_key_env:
        key = os.environ.get(settings.api_key_env, "").strip()
        if not key:
            raise ConfigError(
                f"engine.remote_api_key_env names {settings.api_key_env}, which is not set in the daemon's "
                "environment; export it before `localspec serve`, or use engine.remote_api_key_file."
            )
        return key
    return None


class RemoteEngine:
    """Connects to the remote, finds out what it is (llama-server's /props, vLLM's /version) and its model."""

    def __init__(self, settings: RemoteSettings) -> None:
        self.settings = settings
        key = read_api_key(settings)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="localspec-remote", daemon=True)
        self._thread.start()
        self._client = httpx.AsyncClient(
            base_url=settings.url,
            headers={"Authorization": f"Bearer {key}"} if key else {},
            timeout=httpx.Timeout(settings.timeout, connect=min(settings.timeout, 10.0)),
        )
        self._totals = _Totals()
        try:
            self.kind, self.model, self.n_ctx = self._call(self._probe(), settings.timeout + 15)
        except BaseException:
            self.close()
            raise

    # ---- what the daemon asks of an engine --------------------------------------------------------------------

    calibrated = True  # nothing to time here: the remote server decodes

    def calibrate(self) -> str:
        return ""

    def describe(self) -> dict[str, Any]:
        return {"name": "remote", "kind": self.kind, "url": self.settings.shown_url, "model": self.model}

    def chat_prompt(self, messages: list[dict[str, str]]) -> ChatMessages:
        """The remote renders the chat with its own template."""
        return ChatMessages(messages)

    def infill_prompt(
        self,
        prefix: str,
        suffix: str,
        extra: list[tuple[str, str]] | None = None,
        filename: str | None = None,
        max_tokens: int = 256,
    ) -> InfillParts:
        return InfillParts(prefix, suffix, list(extra or []), filename)

    def generate(self, request: GenerationRequest) -> RemoteGeneration | NothingToGenerate:
        if request.max_tokens < 0:
            raise InvalidRequestError(f"max_tokens must be 0 or more, not {request.max_tokens}.")
        if (
            request.max_tokens == 0
        ):  # a prefill: the remote keeps its own cache, there is nothing to prepare here
            return NothingToGenerate()
        if not request.prompt:
            raise InvalidRequestError("The prompt is empty; send at least one character.")
        call = build_call(cast(RemoteKind, self.kind), self.model, request, self.settings.fim_tokens)
        return RemoteGeneration(self, call, request)

    def stats(self) -> dict[str, Any]:
        """Totals over finished requests; fields the remote does not report are None (unknown, not zero)."""
        stats = self._totals.as_dict()
        if self.kind == "vllm":
            # vLLM reports speculation only server-wide, counted since it started, for all of its clients.
            counters = self._vllm_counters()
            stats["drafted"], stats["accepted"] = counters if counters else (None, None)
            stats["acceptance"] = round(counters[1] / counters[0], 4) if counters and counters[0] else None
            stats["speculative_scope"] = "server"
        return {**stats, "backend": self.describe()}

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):  # closing is best effort: the process may be on its way out
            self._call(self._client.aclose(), 5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    # ---- on the backend's event loop --------------------------------------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, _T], timeout: float) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def _submit(self, coroutine: Coroutine[Any, Any, None]) -> Future[None]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    async def _probe(self) -> tuple[str, str, int]:
        kind, n_ctx = self.settings.kind, self.settings.n_ctx
        if kind in ("auto", "llama-server"):
            props = await self._get_json("/props", optional=True)
            settings = props.get("default_generation_settings") if isinstance(props, dict) else None
            if isinstance(settings, dict):
                kind = "llama-server"
                n_ctx = int(settings.get("n_ctx") or n_ctx)
        if kind == "auto":
            version = await self._get_json("/version", optional=True)
            kind = "vllm" if isinstance(version, dict) and "version" in version else "openai"
        model = self.settings.model or await self._first_model()
        return kind, model, n_ctx

    async def _first_model(self) -> str:
        listing = await self._get_json("/v1/models", optional=False)
        data = listing.get("data") if isinstance(listing, dict) else None
        if not data or not isinstance(data[0], dict) or not data[0].get("id"):
            raise RemoteBackendError(
                f"The remote server at {self.settings.shown_url} lists no model at /v1/models; set "
                "engine.remote_model to the name it serves."
            )
        return str(data[0]["id"])

    async def _get_json(self, path: str, optional: bool) -> Any:
        try:
            response = await self._client.get(path)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        if response.status_code != 200:
            if optional and response.status_code not in (401, 403):
                return None
            raise self._status_error(response.status_code, response.content, path)
        try:
            return response.json()
        except ValueError:
            if optional:
                return None
            raise RemoteBackendError(
                f"The remote server at {self.settings.shown_url} answered {path} with something that is not "
                "JSON; is engine.remote_url the inference server's address?"
            ) from None

    async def _stream(self, call: Call, cancel: CancelToken, put: Callable[[tuple[str, Any]], None]) -> None:
        """POST one streaming request and put ("data", payload) items, then ("end", None) or ("error", exc)."""
        watcher = asyncio.create_task(_cancel_on(cancel, asyncio.current_task()))
        try:
            async with self._client.stream("POST", call.path, json=call.body) as response:
                if response.status_code != 200:
                    put(
                        ("error", self._status_error(response.status_code, await response.aread(), call.path))
                    )
                    return
                async for payload in self._events(response):
                    put(("data", payload))
            put(("end", None))
        except asyncio.CancelledError:
            put(("end", None))  # cancelled: leaving the `async with` closed the connection, the remote stops
        except RemoteBackendError as exc:
            put(("error", exc))
        except httpx.HTTPError as exc:
            put(("error", self._transport_error(exc)))
        finally:
            watcher.cancel()

    async def _events(self, response: httpx.Response) -> AsyncIterator[Any]:
        """The JSON payloads of a server-sent-events stream, up to `[DONE]` or its end."""
        async for line in response.aiter_lines():
            if not line or line.startswith((":", "event:", "id:", "retry:")):
                continue
            if line.startswith("error:"):
                raise RemoteBackendError(
                    f"The remote server at {self.settings.shown_url} failed mid-stream: "
                    f"{error_message(line[6:].encode())}"
                )
            if not line.startswith("data:"):
                raise RemoteBackendError(
                    f"The remote server at {self.settings.shown_url} sent a malformed stream (a line that is "
                    f"not server-sent events: {line[:120]!r})."
                )
            payload = line[5:].strip()
            if payload == "[DONE]":
                return
            try:
                yield json.loads(payload)
            except ValueError:
                raise RemoteBackendError(
                    f"The remote server at {self.settings.shown_url} sent a malformed stream (a chunk that is "
                    f"not JSON: {payload[:120]!r})."
                ) from None

    def _vllm_counters(self) -> tuple[int, int] | None:
        async def fetch() -> str:
            response = await self._client.get("/metrics", timeout=5.0)
            response.raise_for_status()
            return response.text

        try:
            return speculative_counters(self._call(fetch(), 10))
        except Exception:  # stats are informative: an unreadable /metrics leaves them unknown
            return None

    def _transport_error(self, exc: httpx.HTTPError) -> RemoteBackendError:
        where = self.settings.shown_url
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return RemoteBackendError(
                f"Cannot reach the remote server at {where} ({type(exc).__name__}). Check that it runs and that "
                "engine.remote_url is right."
            )
        if isinstance(exc, httpx.TimeoutException):
            return RemoteBackendError(
                f"The remote server at {where} sent nothing for {self.settings.timeout:g} s; it may be "
                "overloaded or stuck. Raise engine.remote_timeout if it is just slow."
            )
        if isinstance(exc, httpx.RemoteProtocolError | httpx.NetworkError):
            return RemoteBackendError(
                f"The remote server at {where} broke off the connection mid-answer (did it stop or crash?)."
            )
        return RemoteBackendError(f"The remote server at {where} could not be used ({type(exc).__name__}).")

    def _status_error(self, status: int, body: bytes, path: str) -> RemoteBackendError:
        message = error_message(body)
        hint = ""
        if status in (401, 403):
            hint = " Check the key in engine.remote_api_key_file or engine.remote_api_key_env."
        elif status == 404:
            hint = f" This server has no {path}; set engine.remote_kind to what it is."
        return RemoteBackendError(
            f"The remote server at {self.settings.shown_url} answered {path} with HTTP {status}: {message}.{hint}"
        )


class NothingToGenerate:
    """A request for no tokens (a prefill): finished at once, without calling the remote."""

    def __init__(self) -> None:
        self.result: GenerationResult | None = GenerationResult("", [], "length", RemoteStats())

    def step(self) -> None:
        return None

    def close(self) -> None:
        pass


class RemoteGeneration:
    """One request in flight on the remote; the scheduler calls `step()` until it returns None."""

    def __init__(self, engine: RemoteEngine, call: Call, request: GenerationRequest) -> None:
        self.request = request
        self.result: GenerationResult | None = None
        self._engine = engine
        self._state = StreamState(cast(RemoteKind, engine.kind), call.native)
        self._text: list[str] = []
        # The request's end rule (an infill's line or block) applies to what the remote streams, as locally.
        self._cutter = request.end_rule.cutter() if request.end_rule is not None else None
        self._items: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._future = engine._submit(engine._stream(call, request.cancel, self._items.put))

    def step(self) -> RemoteStep | None:
        """The next chunk's text; an empty step when none arrived within STEP_WAIT_SECONDS; None when done."""
        if self.result is not None:
            return None
        if self.request.cancel.cancelled:
            self._finish("cancelled")
            return None
        try:
            kind, payload = self._items.get(timeout=STEP_WAIT_SECONDS)
        except queue.Empty:
            return RemoteStep(text="", tokens=0, drafted=0, accepted=0, source="none")
        if kind == "error":
            raise payload
        if kind == "end":
            if self.request.cancel.cancelled:
                self._finish("cancelled")
            elif self._state.finish_reason is None:
                raise RemoteBackendError(
                    f"The remote server at {self._engine.settings.shown_url} ended the stream before the "
                    "generation finished (did it stop or crash?)."
                )
            else:
                tail = self._cutter.flush() if self._cutter is not None else ""
                self._text.append(tail)
                self._finish(self._state.finish_reason)
                if tail:  # text the end rule held back is final now
                    return RemoteStep(text=tail, tokens=0, drafted=0, accepted=0, source="none")
            return None
        text = self._state.feed(payload)
        tokens = 1 if text else 0
        if self._cutter is not None:
            text = self._cutter.feed(text)
        self._text.append(text)
        if self._cutter is not None and self._cutter.done:
            self._finish("stop")  # the end rule cut the text: close the stream, the remote stops generating
        return RemoteStep(text=text, tokens=tokens, drafted=0, accepted=0, source="none")

    def close(self) -> None:
        """Stop the request (closing its HTTP stream) unless it already finished."""
        if self.result is None:
            self._finish("cancelled")

    def _finish(self, reason: FinishReason) -> None:
        self._future.cancel()
        stats = self._state.stats()
        self.result = GenerationResult("".join(self._text), [], reason, stats)
        self._engine._totals.add(stats)


async def _cancel_on(token: CancelToken, task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` (a stream) once `token` is set, even while the scheduler is stepping other requests."""
    while not token.cancelled:
        await asyncio.sleep(CANCEL_CHECK_SECONDS)
    if task is not None:
        task.cancel()


@dataclass
class _Totals:
    """Cumulative stats of finished requests. A field sums the requests that reported it, and stays unknown
    (None) until one does: a request cut short before the remote's summary leaves the totals as they were."""

    requests: int = 0
    prompt_tokens: int = 0
    tokens: int = 0
    cached_tokens: int = 0
    drafted: int = 0
    accepted: int = 0
    decode_seconds: float = 0.0
    total_seconds: float = 0.0
    reported: set[str] = field(default_factory=set)

    def add(self, stats: RemoteStats) -> None:
        self.requests += 1
        self.tokens += stats.tokens
        self.decode_seconds += max(0.0, stats.t_total - stats.t_prompt)
        self.total_seconds += stats.t_total
        for name in ("prompt_tokens", "cached_tokens", "drafted", "accepted"):
            if name not in stats.unknown:
                setattr(self, name, getattr(self, name) + getattr(stats, name))
                self.reported.add(name)

    def as_dict(self) -> dict[str, Any]:
        def known(name: str, value: Any) -> Any:
            return value if name in self.reported else None

        return {
            "requests": self.requests,
            "prompt_tokens": known("prompt_tokens", self.prompt_tokens),
            "tokens": self.tokens,
            "cached_tokens": known("cached_tokens", self.cached_tokens),
            "cache_hit_tokens": known("cached_tokens", self.cached_tokens),
            "drafted": known("drafted", self.drafted),
            "accepted": known("accepted", self.accepted),
            "acceptance": known("drafted", round(self.accepted / self.drafted, 4) if self.drafted else 0.0),
            "tokens_per_second": round(self.tokens / self.decode_seconds, 3) if self.decode_seconds else 0.0,
            "time": {"total": round(self.total_seconds, 4)},
        }
