"""The language server's transports: stdio (what editors spawn) and TCP, both read on the event loop, in order.

pygls's `start_io` reads every header line and every body on a worker thread: three thread hand-offs a message,
which a suggestion's request pays on its way in. Its TCP transport reads with asyncio streams instead; this does the
same for stdio where stdin is a pipe or a socket (what editors give), and leaves anything else (a terminal, a file,
Windows) to `start_io`. Messages are taken up in order: the reader lets the event loop run once before each line,
so a handler a message started (an async one starts on the next turn) takes the documents and settings as they were
when it came, before the next message changes them (pygls's own stream reader, which its TCP transport uses, does
not; this module serves TCP the same way as stdio).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import sys
import threading

from pygls.io_ import StdoutWriter, run_async
from pygls.server import JsonRPCServer

log = logging.getLogger(__name__)


def serve_tcp(server: JsonRPCServer, host: str, port: int) -> None:
    """Listen on host:port for an editor and serve it until it disconnects (then stop, as pygls does)."""
    log.info("listening for an editor on %s:%s", host, port)
    server._stop_event = stop = threading.Event()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.protocol.set_writer(writer)
        await _handle_messages(server, stop, reader)
        server.shutdown()  # (closes the listener: serving ends)

    async def listen() -> None:
        server._server = await asyncio.start_server(connection, host, port)
        async with server._server:
            await server._server.serve_forever()

    with contextlib.suppress(asyncio.CancelledError):  # (the listener closed: the editor is gone)
        asyncio.run(listen())


def serve_stdio(server: JsonRPCServer) -> None:
    """Serve the editor on stdin/stdout until it exits or closes stdin."""
    if not _readable_on_loop(sys.stdin.buffer.fileno()):
        server.start_io()
        return
    try:
        asyncio.run(_serve(server))
    except BrokenPipeError:
        log.error("The editor closed the connection; shutting down.")
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.shutdown()


def _readable_on_loop(fd: int) -> bool:
    """Whether the event loop can watch `fd` (a pipe or a socket; not a terminal, whose non-blocking mode would be
    stdout's too, nor a regular file). Windows' loop cannot watch a pipe this way."""
    if sys.platform == "win32":
        return False
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


class _InOrder:
    """An asyncio stream that yields to the event loop before each line (see the module's docstring)."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self._stream = stream

    async def readline(self) -> bytes:
        await asyncio.sleep(0)
        return await self._stream.readline()

    async def readexactly(self, n: int) -> bytes:
        return await self._stream.readexactly(n)


async def _serve(server: JsonRPCServer) -> None:
    loop = asyncio.get_running_loop()
    stream = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stream), sys.stdin.buffer)
    # `shutdown()` (the editor's exit) sets the event pygls's own transports stop on.
    server._stop_event = stop = threading.Event()
    server.protocol.set_writer(StdoutWriter(sys.stdout.buffer))
    await _handle_messages(server, stop, stream)


async def _handle_messages(
    server: JsonRPCServer, stop: threading.Event, stream: asyncio.StreamReader
) -> None:
    """pygls's message loop over `stream`, in order (`_InOrder`), until `stop` is set or the stream ends."""
    await run_async(
        stop_event=stop,
        reader=_InOrder(stream),
        protocol=server.protocol,
        logger=log,
        error_handler=server.report_server_error,
    )
