"""A TCP proxy on loopback that can drop every live connection on demand.

Tests put it between a client and a real server (sandbox-agent) to cut streams mid-flight, the way
a flaky network or a restarted load balancer would:

    proxy = TcpProxy("127.0.0.1", server_port)
    await nursery.start(proxy.serve)
    ... client talks to proxy.url ...
    proxy.cut_all()          # every open connection is reset; new ones are accepted as before
"""

from __future__ import annotations

import contextlib
import socket
import struct
from typing import Final

import trio

CHUNK: Final = 65536


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.accepted = 0
        self.cuts = 0
        """Connections dropped by `cut_all`."""
        self._live: set[trio.CancelScope] = set()
        self._sockets: dict[trio.CancelScope, list[trio.SocketStream]] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def live(self) -> int:
        return len(self._live)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept connections until cancelled; reports the listening port."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    def cut_all(self) -> int:
        """Reset every live connection (RST to both sides); returns how many were cut."""
        cut = 0
        for scope in list(self._live):
            for stream in self._sockets.get(scope, []):
                _reset_on_close(stream)
            scope.cancel()
            cut += 1
        self.cuts += cut
        return cut

    async def _handle(self, client: trio.SocketStream) -> None:
        self.accepted += 1
        scope = trio.CancelScope()
        self._live.add(scope)
        try:
            with scope:
                try:
                    upstream = await trio.open_tcp_stream(*self.target)
                except OSError:
                    return  # the target is not up (yet): the client sees the connection close
                self._sockets[scope] = [client, upstream]
                async with upstream, trio.open_nursery() as nursery:
                    nursery.start_soon(_pump, client, upstream)
                    nursery.start_soon(_pump, upstream, client)
        finally:
            self._live.discard(scope)
            self._sockets.pop(scope, None)
            await client.aclose()


async def _pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
    try:
        while data := await source.receive_some(CHUNK):
            await sink.send_all(data)
        await sink.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        return  # the other side is gone; the connection's scope closes both


def _reset_on_close(stream: trio.SocketStream) -> None:
    # SO_LINGER with a zero timeout: close() sends RST instead of FIN, as a dying network does.
    with contextlib.suppress(OSError):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
