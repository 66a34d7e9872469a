"""Talk to the localspec daemon: find it, start it if needed, call its API with streaming and cancellation.

Used by the TUI, the language server and `localspec complete --daemon`. Streams are iterators of the JSON
chunks the daemon sends; closing a stream early (`close()`, leaving its `with` block, or breaking out of the
loop of an `async with`) closes the HTTP connection, and the daemon cancels the generation within one step.

    with ensure_daemon(progress=print) as client:
        with client.stream_chat([{"role": "user", "content": "hi"}]) as stream:
            for chunk in stream:
                print(chunk["choices"][0]["delta"].get("content", ""), end="")
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import TracebackType
from typing import Any, Self

import httpx

from localspec import locations
from localspec.daemon import discovery
from localspec.daemon.discovery import DaemonInfo
from localspec.daemon.security import read_token
from localspec.errors import (
    ContextOverflowError,
    DaemonUnavailableError,
    InvalidRequestError,
    LocalspecError,
    RemoteBackendError,
    UnsupportedError,
)

Progress = Callable[[str], None]
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=5.0)

__all__ = [
    "AsyncDaemonClient",
    "AsyncStream",
    "DaemonClient",
    "DaemonInfo",
    "Stream",
    "discover",
    "ensure_daemon",
    "stop_daemon",
]


def discover() -> DaemonInfo | None:
    """The running daemon recorded in the state dir (its process alive), or None."""
    return discovery.read()


def _error_from(status: int, body: bytes) -> LocalspecError:
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


def _unavailable(url: str, exc: Exception) -> DaemonUnavailableError:
    return DaemonUnavailableError(
        f"No localspec daemon answers at {url} ({exc}). Start one with `localspec serve`."
    )


def _cut_off(url: str, exc: Exception) -> DaemonUnavailableError:
    # The connection broke after the answer began: the daemon stopped, crashed or was killed mid-reply.
    return DaemonUnavailableError(
        f"The localspec daemon at {url} closed the connection mid-reply ({exc or type(exc).__name__}); "
        "it may have stopped or crashed. Check `localspec status`, then send again."
    )


def _resolve(url: str | None, token: str | None) -> tuple[str, str | None]:
    if url is None:
        info = discover()
        if info is None:
            raise DaemonUnavailableError("No localspec daemon is running. Start one with `localspec serve`.")
        url = info.url
    return url.rstrip("/"), token if token is not None else read_token()


def _chunks(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if not line.startswith("data:"):
            continue  # comments (pings), blank separators, event names
        data = line[5:].strip()
        if data == "[DONE]":
            return
        chunk = json.loads(data)
        if "error" in chunk:
            raise _error_from(500, data.encode())
        yield chunk


def _chat_body(messages: Sequence[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
    return {"messages": list(messages), **params}


def _infill_body(prefix: str, suffix: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"prefix": prefix, "suffix": suffix, **params}


class Stream(AbstractContextManager["Stream"]):
    """Iterator of a streaming response's chunks. `final` holds the last chunk (usage + speculative)."""

    def __init__(self, response_cm: AbstractContextManager[httpx.Response], url: str) -> None:
        self._cm = response_cm
        self._url = url
        self._closed = False
        try:
            self._response = response_cm.__enter__()
        except httpx.TransportError as exc:
            raise _unavailable(url, exc) from exc
        if self._response.status_code >= 400:
            body = self._response.read()
            self.close()
            raise _error_from(self._response.status_code, body)
        self._chunks = _chunks(self._response.iter_lines())
        self.final: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self.close()
            raise
        except httpx.TransportError as exc:
            self.close()
            raise _cut_off(self._url, exc) from exc
        except BaseException:
            self.close()
            raise
        if "usage" in chunk:
            self.final = chunk
        return chunk

    def close(self) -> None:
        """Stop reading; if the generation is still running the daemon cancels it."""
        if not self._closed:
            self._closed = True
            self._cm.__exit__(None, None, None)

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncStream(AbstractAsyncContextManager["AsyncStream"]):
    """Async iterator of a streaming response's chunks; `await aclose()` (or leaving `async with`) cancels."""

    def __init__(self, response_cm: AbstractAsyncContextManager[httpx.Response], url: str) -> None:
        self._cm = response_cm
        self._url = url
        self._closed = False
        self._response: httpx.Response | None = None
        self._lines: AsyncIterator[str] | None = None
        self.final: dict[str, Any] | None = None

    async def _open(self) -> None:
        try:
            self._response = await self._cm.__aenter__()
        except httpx.TransportError as exc:
            raise _unavailable(self._url, exc) from exc
        if self._response.status_code >= 400:
            body = await self._response.aread()
            await self.aclose()
            raise _error_from(self._response.status_code, body)
        self._lines = self._response.aiter_lines()

    async def __aenter__(self) -> Self:
        if self._response is None:
            await self._open()
        return self

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._response is None:
            await self._open()
        assert self._lines is not None
        try:
            async for line in self._lines:
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise _error_from(500, data.encode())
                if "usage" in chunk:
                    self.final = chunk
                return chunk
        except httpx.TransportError as exc:
            await self.aclose()
            raise _cut_off(self._url, exc) from exc
        except BaseException:
            await self.aclose()
            raise
        await self.aclose()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            if self._response is not None:
                await self._cm.__aexit__(None, None, None)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class DaemonClient:
    """Synchronous client. With no url, finds the running daemon; the token comes from the token file."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
    ) -> None:
        self.url, self.token = _resolve(url, token)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    @classmethod
    def discover(cls) -> DaemonClient:
        """A client for the running daemon; DaemonUnavailableError if none runs."""
        return cls()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = self._http.request(method, path, json=body)
        except httpx.TransportError as exc:
            raise _unavailable(self.url, exc) from exc
        if response.status_code >= 400:
            raise _error_from(response.status_code, response.content)
        return response.json() if path != "/metrics" else response.text

    def _stream(self, path: str, body: dict[str, Any]) -> Stream:
        return Stream(self._http.stream("POST", path, json={**body, "stream": True}), self.url)

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health")

    def models(self) -> dict[str, Any]:
        return self._request("GET", "/v1/models")

    def stats(self) -> dict[str, Any]:
        return self._request("GET", "/v1/stats")

    def metrics(self) -> str:
        return self._request("GET", "/metrics")

    def complete(self, prompt: str | list[int], **params: Any) -> dict[str, Any]:
        return self._request("POST", "/v1/completions", {"prompt": prompt, **params})

    def stream_complete(self, prompt: str | list[int], **params: Any) -> Stream:
        return self._stream("/v1/completions", {"prompt": prompt, **params})

    stream_completion = stream_complete

    def chat(self, messages: Sequence[dict[str, Any]], **params: Any) -> dict[str, Any]:
        return self._request("POST", "/v1/chat/completions", _chat_body(messages, params))

    def stream_chat(self, messages: Sequence[dict[str, Any]], **params: Any) -> Stream:
        return self._stream("/v1/chat/completions", _chat_body(messages, params))

    def infill(self, prefix: str, suffix: str = "", **params: Any) -> dict[str, Any]:
        """Fill-in-the-middle; params: extra=[{"filename", "text"}], filename, max_tokens, single_line."""
        return self._request("POST", "/v1/infill", _infill_body(prefix, suffix, params))

    def stream_infill(self, prefix: str, suffix: str = "", **params: Any) -> Stream:
        return self._stream("/v1/infill", _infill_body(prefix, suffix, params))


class AsyncDaemonClient:
    """Asynchronous client (for asyncio apps such as the language server and the TUI)."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
    ) -> None:
        self.url, self.token = _resolve(url, token)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = await self._http.request(method, path, json=body)
        except httpx.TransportError as exc:
            raise _unavailable(self.url, exc) from exc
        if response.status_code >= 400:
            raise _error_from(response.status_code, response.content)
        return response.json() if path != "/metrics" else response.text

    def _stream(self, path: str, body: dict[str, Any]) -> AsyncStream:
        return AsyncStream(self._http.stream("POST", path, json={**body, "stream": True}), self.url)

    async def health(self) -> dict[str, Any]:
        return await self._request("GET", "/health")

    async def models(self) -> dict[str, Any]:
        return await self._request("GET", "/v1/models")

    async def stats(self) -> dict[str, Any]:
        return await self._request("GET", "/v1/stats")

    async def complete(self, prompt: str | list[int], **params: Any) -> dict[str, Any]:
        return await self._request("POST", "/v1/completions", {"prompt": prompt, **params})

    def stream_complete(self, prompt: str | list[int], **params: Any) -> AsyncStream:
        return self._stream("/v1/completions", {"prompt": prompt, **params})

    async def chat(self, messages: Sequence[dict[str, Any]], **params: Any) -> dict[str, Any]:
        return await self._request("POST", "/v1/chat/completions", _chat_body(messages, params))

    def stream_chat(self, messages: Sequence[dict[str, Any]], **params: Any) -> AsyncStream:
        return self._stream("/v1/chat/completions", _chat_body(messages, params))

    async def infill(self, prefix: str, suffix: str = "", **params: Any) -> dict[str, Any]:
        return await self._request("POST", "/v1/infill", _infill_body(prefix, suffix, params))

    def stream_infill(self, prefix: str, suffix: str = "", **params: Any) -> AsyncStream:
        return self._stream("/v1/infill", _infill_body(prefix, suffix, params))


# ---- lifecycle ----


def _health(url: str) -> dict[str, Any] | None:
    try:
        response = httpx.get(f"{url}/health", timeout=2.0)
        return response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def _spawn(serve_args: Sequence[str]) -> subprocess.Popen[bytes]:
    log_path = locations.log_dir() / "serve-autostart.log"
    with log_path.open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "localspec", "serve", *serve_args],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            start_new_session=True,  # survives the client's terminal closing
        )
    # Reap it when it exits, so a long-lived client does not keep a zombie that looks alive.
    threading.Thread(target=process.wait, name="localspec-daemon-reaper", daemon=True).start()
    return process


def _tail(path: os.PathLike[str] | str, lines: int = 15) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return "".join(handle.readlines()[-lines:]).strip()
    except OSError:
        return ""


def ensure_daemon(
    autostart: bool = True,
    progress: Progress | None = None,
    timeout: float = 180.0,
    serve_args: Sequence[str] = (),
) -> DaemonClient:
    """A client for a daemon with loaded models; starts `localspec serve` in the background if none runs.

    A file lock makes concurrent callers (two editors opening at once) start one daemon between them.
    `progress` gets short human-readable messages while the daemon starts and loads its models.
    Blocking: call it from a worker thread in async programs (`await asyncio.to_thread(ensure_daemon)`).
    """
    report = progress or (lambda _message: None)
    deadline = time.monotonic() + timeout
    info = discover()
    if info is None or _health(info.url) is None:
        if not autostart:
            raise DaemonUnavailableError("No localspec daemon is running. Start one with `localspec serve`.")
        with discovery.start_lock(timeout=timeout):
            info = discover()  # another client may have started one while we waited for the lock
            if info is None or _health(info.url) is None:
                report("starting the localspec daemon")
                info = _start(serve_args, deadline)
    return _wait_ready(info, report, deadline)


def _start(serve_args: Sequence[str], deadline: float) -> DaemonInfo:
    process = _spawn(serve_args)
    while time.monotonic() < deadline:
        info = discover()
        if info is not None and info.pid == process.pid and _health(info.url) is not None:
            return info
        if process.poll() is not None:
            tail = _tail(locations.log_dir() / "serve-autostart.log")
            raise DaemonUnavailableError(f"`localspec serve` exited with code {process.returncode}:\n{tail}")
        time.sleep(0.05)
    raise DaemonUnavailableError(
        f"`localspec serve` did not start in time; see {locations.log_dir() / 'serve-autostart.log'}."
    )


def _wait_ready(info: DaemonInfo, report: Progress, deadline: float) -> DaemonClient:
    last = ""
    while time.monotonic() < deadline:
        health = _health(info.url)
        if health is None:
            if discover() is None:
                raise DaemonUnavailableError(f"The localspec daemon at {info.url} stopped while starting.")
        elif health["status"] == "ok":
            return DaemonClient(info.url)
        elif health["status"] == "error":
            errors = "; ".join(e["message"] for e in health.get("errors", [])) or "unknown error"
            raise DaemonUnavailableError(f"The localspec daemon could not load its models: {errors}")
        else:
            loading = health.get("loading") or {}
            message = f"loading {os.path.basename(str(loading.get('target', 'models')))}"
            if message != last:
                report(message)
                last = message
        time.sleep(0.1)
    raise DaemonUnavailableError(
        f"The localspec daemon at {info.url} did not finish loading its models in time."
    )


def stop_daemon(timeout: float = 15.0) -> DaemonInfo | None:
    """Ask the running daemon to shut down (SIGTERM) and wait for it; None if none was running."""
    info = discover()
    if info is None:
        return None
    try:
        os.kill(info.pid, signal.SIGTERM)
    except ProcessLookupError:
        discovery.remove(info.pid)
        return info
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not discovery.pid_alive(info.pid):
            discovery.remove(info.pid)
            return info
        time.sleep(0.05)
    raise DaemonUnavailableError(
        f"The daemon (pid {info.pid}) did not stop within {timeout:.0f}s; end it with `kill {info.pid}`."
    )
