"""`DaemonClient` and `AsyncDaemonClient`: thin sync and async shells over `_wire`, with their streams.

Streams are iterators of the JSON chunks the daemon sends; closing one early (`close()`, leaving its `with`
block, or breaking out of the loop of an `async with`) closes the HTTP connection, and the daemon cancels the
generation within one step.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import TracebackType
from typing import Any, Self

import aiohttp
import httpx

from localspec import rendezvous
from localspec.client import _wire
from localspec.client._wire import Call
from localspec.errors import DaemonUnavailableError

# What each shell's HTTP library raises where the daemon cannot be reached, and where an answer breaks off.
_HTTPX_UNREACHABLE: _wire.Errors = (httpx.TransportError,)
_HTTPX_BROKEN: _wire.Errors = (httpx.HTTPError,)
_AIOHTTP_ERRORS: _wire.Errors = (aiohttp.ClientError,)
# Longest line of a stream the async client reads (aiohttp's default is 64 KiB; a chunk is one line).
_AIOHTTP_LINE_BYTES = 2**20


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
        with _wire.reaching(url, _HTTPX_UNREACHABLE):
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
            with _wire.reading(self._url, _HTTPX_BROKEN):
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


class AsyncStream:
    """Async iterator of a streaming response's chunks; `await aclose()` (or leaving `async with`) cancels."""

    def __init__(
        self, request: Callable[[], AbstractAsyncContextManager[aiohttp.ClientResponse]], url: str
    ) -> None:
        self._make_request = request  # (made when the stream opens: an aiohttp request starts once made)
        self._request: AbstractAsyncContextManager[aiohttp.ClientResponse] | None = None
        self._url = url
        self._closed = False
        self._decoder = _wire.ChunkDecoder()
        self._response: aiohttp.ClientResponse | None = None
        self._lines: AsyncIterator[bytes] | None = None

    @property
    def final(self) -> dict[str, Any] | None:
        return self._decoder.final

    async def _open(self) -> AsyncIterator[bytes]:
        self._request = self._make_request()
        with _wire.reaching(self._url, _AIOHTTP_ERRORS):
            self._response = response = await self._request.__aenter__()
            if response.status >= 400:
                body = await response.read()
                await self.aclose()
                raise _wire.error_from(response.status, body)
        self._lines = response.content.__aiter__()
        return self._lines

    async def __aenter__(self) -> Self:
        if self._response is None:
            await self._open()
        return self

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._closed:
            raise StopAsyncIteration
        lines = self._lines or await self._open()
        try:
            with _wire.reading(self._url, _AIOHTTP_ERRORS):
                async for line in lines:
                    chunk = self._decoder.decode(line.decode("utf-8").rstrip("\r\n"))
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
        """Stop reading; a response not read to its end closes its connection, and the daemon cancels the
        generation (aiohttp closes it at once, before anything is awaited: a second cancel cannot keep it open)."""
        if not self._closed:
            self._closed = True
            if self._request is not None and self._response is not None:
                await self._request.__aexit__(None, None, None)

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
        timeout: float = _wire.READ_TIMEOUT_S,
    ) -> None:
        self.url, self.token = _resolve(url, token)
        self._http = httpx.Client(
            base_url=self.url,
            headers=_wire.auth_headers(self.token),
            timeout=httpx.Timeout(timeout, connect=_wire.CONNECT_TIMEOUT_S),
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: Call) -> Any:
        with _wire.reaching(self.url, _HTTPX_UNREACHABLE):
            response = self._http.request(call.method, call.path, json=call.body)
        return _wire.answer(call, response.status_code, response.content)

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
    """Asynchronous client (for asyncio apps such as the language server and the TUI), on aiohttp: an editor
    sends a request per suggestion, and aiohttp spends a fraction of httpx's time on each (docs/BENCHMARKS.md).
    Cancelling a call closes its connection, and the daemon cancels the generation."""

    def __init__(
        self, url: str | None = None, token: str | None = None, timeout: float = _wire.READ_TIMEOUT_S
    ) -> None:
        self.url, self.token = _resolve(url, token)
        self._timeout = aiohttp.ClientTimeout(sock_connect=_wire.CONNECT_TIMEOUT_S, sock_read=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        """The session, made on first use (on the event loop that uses it, as aiohttp wants)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                self.url,
                headers=_wire.auth_headers(self.token),
                timeout=self._timeout,
                cookie_jar=aiohttp.DummyCookieJar(),
                read_bufsize=_AIOHTTP_LINE_BYTES,
            )
        return self._session

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _send(self, call: Call) -> Any:
        with _wire.reaching(self.url, _AIOHTTP_ERRORS):
            async with self._http().request(call.method, call.path, json=call.body) as response:
                body = await response.read()
        return _wire.answer(call, response.status, body)

    def _stream(self, call: Call) -> AsyncStream:
        call = call.streamed()
        return AsyncStream(lambda: self._http().request(call.method, call.path, json=call.body), self.url)

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
