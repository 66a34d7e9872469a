"""A loopback HTTP server that misbehaves on purpose, for fault injection in the remote-backend tests.

It stands in for a broken inference server (it is not what is under test): it lists one model, then answers
every POST the way `mode` says: garbage, a malformed stream, HTTP 500, silence, or a stream cut short.
"""

from __future__ import annotations

import asyncio
import json
import threading

GOOD_CHUNK = (
    b'data: {"choices": [{"index": 0, "text": "ok", "delta": {"content": "ok"}, "finish_reason": null}]}\n\n'
)
SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"


def _response(status: str, body: dict[str, object]) -> bytes:
    data = json.dumps(body).encode()
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    return head.encode() + b"Connection: close\r\n\r\n" + data


class FaultServer:
    """Runs on its own thread; `mode` may change between requests."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.posts = 0
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(10)
        self.url = f"http://127.0.0.1:{self.port}"

    def _run(self, ready: threading.Event) -> None:
        async def main() -> None:
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            async with server:
                await self._stop.wait()

        self._loop.run_until_complete(main())

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, path = head.decode().split(" ")[:2]
            length = next(
                (
                    int(line.split(":")[1])
                    for line in head.decode().split("\r\n")
                    if line.lower().startswith("content-length")
                ),
                0,
            )
            await reader.readexactly(length)
            if method == "GET":
                if path == "/v1/models":
                    writer.write(_response("200 OK", {"data": [{"id": "fault-model"}]}))
                else:
                    writer.write(_response("404 Not Found", {"error": "no such route"}))
            else:
                self.posts += 1
                await self._answer(writer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter) -> None:
        if self.mode == "error500":
            writer.write(_response("500 Internal Server Error", {"error": {"message": "the GPU fell over"}}))
        elif self.mode == "malformed":
            writer.write(SSE_HEAD + GOOD_CHUNK + b"data: {this is not json\n\n")
        elif self.mode == "garbage":
            writer.write(SSE_HEAD + b"\x00\x17<html>surprise</html>\n\n")
        elif self.mode == "cut_short":
            writer.write(SSE_HEAD + GOOD_CHUNK)
        elif self.mode in ("hang", "hang_mid_stream"):
            if self.mode == "hang_mid_stream":
                writer.write(SSE_HEAD + GOOD_CHUNK)
                await writer.drain()
            await self._stop.wait()
        else:
            raise ValueError(self.mode)
