"""`DaemonClient` and `AsyncDaemonClient`: thin sync and async shells over `_wire`, with their streams.

Streams are iterators of the JSON chunks the daemon sends; closing one early (`close()`, leaving its `with`
block, or breaking out of the loop of an `async with`) closes the HTTP connection, and the daemon cancels the
generation within one step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from localspec import rendezvous
from localspec.client import _wire
from localspec.client._wire import Call
from localspec.errors import DaemonUnavailableError

T = TypeVar("T")


async def _cancelled_once(work: Coroutine[Any, Any, T]) -> T:
    """Await `work` in a task of its own, cancelled once however often the caller is. After a cancel httpx closes
    the connection, which is how the daemon learns to stop generating; a second cancel during that clean-up cuts it
    short and leaves the connection open (encode/httpcore#1115). Callers are often cancelled twice: an editor's
    request superseded by the next keystroke's and cancelled by the editor, a chat's Esc pressed twice."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        task.add_done_callback(_retrieve)
        raise


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Take a cancelled call's outcome, so that asyncio does not report an error nobody waited for."""
    if not task.cancelled():
        task.exception()


def _resolve(url: str | None, token: str | None) -> tuple[str, str | None]:
    if url is None:
        info = rendezvous.read()
        if info is None:
            raise DaemonUnavailableError(_wire.NOT_RUNNING)
        url = info.url
    return url.rstrip("/"), token if token is not None else rendezvous.read_token()


class Stream(AbstractContextManager["Stream"]):
    """Iterator of a streaming response's chunks. `final` holds the last chunk (usage + speculative)."""

    def __init__(self, response_cm: AbstractContextManager[httpx.Response], url: str) -> None:
        self._cm = response_cm
        self._url = url
        self._closed = False
        self._decoder = _wire.ChunkDecoder()
        with _wire.reaching(url):
            self._response = response_cm.__enter__()
        if self._response.status_code >= 400:
            body = self._response.read()
            self.close()
            raise _wire.error_from(self._response.status_code, body)
        self._lines = self._response.iter_lines()

    @property
    def final(self) -> dict[str, Any] | None:
        return self._decoder.final

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._closed:
            raise StopIteration
        try:
            with _wire.reading(self._url):
                for line in self._lines:
                    chunk = self._decoder.decode(line)
                    if chunk is not None:
                        return chunk
                    if self._decoder.done:
                        for _ in self._lines:  # read to the body's end: the connection stays open for reuse
                            pass
                        break
        except BaseException:
            self.close()
            raise
        self.close()
        raise StopIteration

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
        self._decoder = _wire.ChunkDecoder()
        self._response: httpx.Response | None = None
        self._lines: AsyncIterator[str] | None = None

    @property
    def final(self) -> dict[str, Any] | None:
        return self._decoder.final

    async def _open(self) -> AsyncIterator[str]:
        with _wire.reaching(self._url):
            self._response = await self._cm.__aenter__()
        if self._response.status_code >= 400:
            body = await self._response.aread()
            await self.aclose()
            raise _wire.error_from(self._response.status_code, body)
        self._lines = self._response.aiter_lines()
        return self._lines

    async def __aenter__(self) -> Self:
        if self._response is None:
            await _cancelled_once(self._open())
        return self

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> dict[str, Any]:
        return await _cancelled_once(self._next())

    async def _next(self) -> dict[str, Any]:
        if self._closed:
            raise StopAsyncIteration
        lines = self._lines or await self._open()
        try:
            with _wire.reading(self._url):
                async for line in lines:
                    chunk = self._decoder.decode(line)
                    if chunk is not None:
                        return chunk
                    if self._decoder.done:
                        # The body ends here: read it to its end, so the connection serves the next request
                        # (closed half-read, it would be dropped and the next request would connect anew).
                        async for _ in lines:
                            pass
                        break
        except BaseException:
            await self.aclose()
            raise
        await self.aclose()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            if self._response is not None:
                await _cancelled_once(self._cm.__aexit__(None, None, None))

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
        timeout: httpx.Timeout | float = _wire.DEFAULT_TIMEOUT,
    ) -> None:
        self.url, self.token = _resolve(url, token)
        self._http = httpx.Client(base_url=self.url, headers=_wire.auth_headers(self.token), timeout=timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: Call) -> Any:
        with _wire.reaching(self.url):
            response = self._http.request(call.method, call.path, json=call.body)
        return _wire.answer(call, response)

    def _stream(self, call: Call) -> Stream:
        call = call.streamed()
        return Stream(self._http.stream(call.method, call.path, json=call.body), self.url)

    def health(self) -> dict[str, Any]:
        return self._send(_wire.health())

    def models(self) -> dict[str, Any]:
        return self._send(_wire.models())

    def stats(self) -> dict[str, Any]:
        return self._send(_wire.stats())

    def metrics(self) -> str:
        return self._send(_wire.metrics())

    def complete(self, prompt: str | list[int], **params: Any) -> dict[str, Any]:
        return self._send(_wire.complete(prompt, params))

    def stream_complete(self, prompt: str | list[int], **params: Any) -> Stream:
        return self._stream(_wire.complete(prompt, params))

    def chat(self, messages: Sequence[dict[str, Any]], **params: Any) -> dict[str, Any]:
        return self._send(_wire.chat(messages, params))

    def stream_chat(self, messages: Sequence[dict[str, Any]], **params: Any) -> Stream:
        return self._stream(_wire.chat(messages, params))

    def infill(self, prefix: str, suffix: str = "", **params: Any) -> dict[str, Any]:
        """Fill-in-the-middle; params: extra=[{"filename", "text"}], filename, max_tokens, single_line."""
        return self._send(_wire.infill(prefix, suffix, params))

    def stream_infill(self, prefix: str, suffix: str = "", **params: Any) -> Stream:
        return self._stream(_wire.infill(prefix, suffix, params))


class AsyncDaemonClient:
    """Asynchronous client (for asyncio apps such as the language server and the TUI)."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        timeout: httpx.Timeout | float = _wire.DEFAULT_TIMEOUT,
    ) -> None:
        self.url, self.token = _resolve(url, token)
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=_wire.auth_headers(self.token), timeout=timeout
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: Call) -> Any:
        return await _cancelled_once(self._request(call))

    async def _request(self, call: Call) -> Any:
        with _wire.reaching(self.url):
            response = await self._http.request(call.method, call.path, json=call.body)
        return _wire.answer(call, response)

    def _stream(self, call: Call) -> AsyncStream:
        call = call.streamed()
        return AsyncStream(self._http.stream(call.method, call.path, json=call.body), self.url)

    async def health(self) -> dict[str, Any]:
        return await self._send(_wire.health())

    async def models(self) -> dict[str, Any]:
        return await self._send(_wire.models())

    async def stats(self) -> dict[str, Any]:
        return await self._send(_wire.stats())

    async def metrics(self) -> str:
        return await self._send(_wire.metrics())

    async def complete(self, prompt: str | list[int], **params: Any) -> dict[str, Any]:
        return await self._send(_wire.complete(prompt, params))

    def stream_complete(self, prompt: str | list[int], **params: Any) -> AsyncStream:
        return self._stream(_wire.complete(prompt, params))

    async def chat(self, messages: Sequence[dict[str, Any]], **params: Any) -> dict[str, Any]:
        return await self._send(_wire.chat(messages, params))

    def stream_chat(self, messages: Sequence[dict[str, Any]], **params: Any) -> AsyncStream:
        return self._stream(_wire.chat(messages, params))

    async def infill(self, prefix: str, suffix: str = "", **params: Any) -> dict[str, Any]:
        """Fill-in-the-middle; params: extra=[{"filename", "text"}], filename, max_tokens, single_line."""
        return await self._send(_wire.infill(prefix, suffix, params))

    def stream_infill(self, prefix: str, suffix: str = "", **params: Any) -> AsyncStream:
        return self._stream(_wire.infill(prefix, suffix, params))
