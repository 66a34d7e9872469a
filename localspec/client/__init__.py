"""Talk to the localspec daemon: find it, start it if needed, call its API with streaming and cancellation.

Used by the TUI, the language server and `localspec complete --daemon`. Streams are iterators of the JSON
chunks the daemon sends; closing a stream early cancels the generation on the daemon within one step.

    with connect(progress=print) as client:
        with client.stream_chat([{"role": "user", "content": "hi"}]) as stream:
            for chunk in stream:
                print(chunk["choices"][0]["delta"].get("content", ""), end="")

`_wire` holds the protocol (calls, errors, server-sent events, /health) once; `_clients` the sync and async
shells over it; `_connect` finding, starting and stopping the daemon (`connect()`, `aconnect()`).
"""

from localspec.client._clients import AsyncDaemonClient, AsyncStream, DaemonClient, Stream
from localspec.client._connect import aconnect, connect, discover, discovery_stamp, stop_daemon
from localspec.client._wire import Health
from localspec.rendezvous import DaemonInfo

__all__ = [
    "AsyncDaemonClient",
    "AsyncStream",
    "DaemonClient",
    "DaemonInfo",
    "Health",
    "Stream",
    "aconnect",
    "connect",
    "discover",
    "discovery_stamp",
    "stop_daemon",
]
