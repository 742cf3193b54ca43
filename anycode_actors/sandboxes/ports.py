"""Host ports for sandboxes: handed out from a configured range, never one that is in use.

The original kept an atomic counter that wrapped around its range and never checked anything,
so a long-lived sandbox, a second daemon or any other program on the port made `docker start`
fail. `PortAllocator` remembers the ports it has handed out and, before handing out another,
checks that nobody else holds it by binding it on 127.0.0.1, the address sandboxes publish on.

A bind check cannot reserve a port: between the check and Docker's own bind somebody else may
take it. The Docker provider therefore treats "port is already allocated" at start as a reason
to release the port and try another one, a bounded number of times.
"""

from __future__ import annotations

import errno
import socket
from typing import Final

from anycode_actors.sandboxes.base import SandboxError

#: The address sandbox ports are published on, and therefore the one checked.
LOOPBACK: Final = "127.0.0.1"


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether `host:port` can be bound right now (TCP).

    SO_REUSEADDR mirrors what docker-proxy (a Go listener) does when it publishes the port: a
    listener or a plain bound socket on the port counts as taken, a connection lingering in
    TIME_WAIT does not.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
                return False
            raise
    return True


def free_ephemeral_port(host: str = LOOPBACK) -> int:
    """A port the kernel considers free now (bind to port 0). The caller must expect a race."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
    return port


class PortAllocator:
    """Ports from `[start, end)` for this daemon's sandboxes.

    Trio-only: not thread-safe, call it from the Trio thread (the Docker provider does; only its
    SDK calls run in worker threads). The scan starts after the last port handed out, so a port
    just released is the last to be reused, which keeps a late `docker-proxy` exit from turning
    into a conflict.
    """

    def __init__(self, start: int, end: int, *, config_keys: str = "docker.port_range_*") -> None:
        if not 0 < start < end <= 65536:
            raise ValueError(f"not a port range: [{start}, {end})")
        self.start = start
        self.end = end
        self._config_keys = config_keys
        self._held: set[int] = set()
        self._next = start

    @property
    def size(self) -> int:
        return self.end - self.start

    def __contains__(self, port: object) -> bool:
        """Whether `port` lies in the range (held or not)."""
        return isinstance(port, int) and self.start <= port < self.end

    @property
    def held(self) -> frozenset[int]:
        """Ports handed out (or adopted) and not yet released."""
        return frozenset(self._held)

    def allocate(self) -> int:
        """A port from the range that we do not hold and nobody else has bound.

        Raises `SandboxError` when every port in the range is taken, saying by whom.
        """
        busy_elsewhere = 0
        for offset in range(self.size):
            port = self.start + (self._next - self.start + offset) % self.size
            if port in self._held:
                continue
            if not port_is_free(port):
                busy_elsewhere += 1
                continue
            self._held.add(port)
            self._next = self.start + (port - self.start + 1) % self.size
            return port
        raise SandboxError(
            f"no free port in {self.start}–{self.end}: {len(self._held)} held by this daemon's "
            f"sandboxes, {busy_elsewhere} by other programs; {len(self._held)} sandboxes "
            f"running? widen {self._config_keys}"
        )

    def adopt(self, port: int) -> None:
        """Mark `port` as ours without checking it: a sandbox found running (after a restart)
        already has it bound."""
        if port in self:
            self._held.add(port)

    def release(self, port: int) -> None:
        """Give `port` back. Idempotent; ports outside the range are ignored."""
        self._held.discard(port)
