"""The admin socket: the daemon serves its live supervision tree to `anycode tree`.

The protocol is newline-delimited JSON: the client writes one request line, the daemon answers
with one response line, and a connection may carry any number of requests in turn.

    → {"op": "snapshot"}                      over TCP also "token": "<admin.token>"
    ← {"ok": true,
       "daemon": {"id": "d…", "version": "0.1.0", "pid": 4242,
                  "started_at": "2025-01-01T12:00:00.000+00:00", "uptime": 3723.5},
       "now": "2025-01-01T13:02:03.500+00:00",
       "entries": [{"path": "root/sessions/session:ab12cd34", "kind": "actor",
                    "state": "running", "restarts": 0, "last_error": null,
                    "started_at": "…", "inbox_depth": 0, "inbox_capacity": 16,
                    "info": {"chat": "telegram:1", "agent": "claude-code", …}}, …]}
    ← {"ok": false, "error": "unknown op 'x'; known: snapshot"}

`entries` are `supervisors.ChildEntry` as plain data, in tree order (each parent before its
children). `now` is the daemon's clock, so a client computes uptimes without trusting its own.

Who may ask: the Unix socket is created with mode 0600 (chmod between bind and listen, so there
is no moment it accepts connections from other users), so its file permissions are the access
control. Nothing listens on a network address unless `admin.listen` is set, and then every
request must carry `admin.token`; a missing or wrong token gets an error and the connection is
closed, never a snapshot.

Every request line is untrusted input, parsed strictly before anything else happens: UTF-8, one
JSON object whose arrays and objects nest at most `MAX_REQUEST_NESTING` deep (counted by a
linear scan before the JSON parser, which recurses once per level, sees the line); anything else
gets an error and the connection is closed. Over TCP the token is the first field read, compared
as bytes in constant time. Whatever a client sends, it gets an answer or a closed connection:
nothing it sends can take the server down.

Why many refreshing clients never disturb the daemon: a snapshot is a synchronous copy of the
registry (no awaits, no locks, nothing sent to any actor); each listener serves at most
`MAX_CONNECTIONS` clients at once while further ones wait in the kernel's backlog; reads are
bounded in size (`MAX_REQUEST_BYTES`) and time (`IDLE_TIMEOUT`), writes in time
(`SEND_TIMEOUT`).

Errors, as a tree:

    AdminError              (an AnycodeError) the admin socket cannot be served or asked
    ├── AdminSocketInUse    another daemon answers on the socket; this one refuses to start
    ├── DaemonUnreachable   nothing answers at the address, or it stopped answering
    └── AdminRefused        the daemon answered with an error (wrong token, unknown op)
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hmac
import json
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import trio

from anycode_actors import __version__
from anycode_actors.config import AdminConfig
from anycode_actors.errors import AnycodeError
from supervisors import ChildEntry, ChildState, Registry

log = logging.getLogger(__name__)

MAX_CONNECTIONS: Final = 16
"""Clients served at once per listener; more wait in the listen backlog until one leaves."""
MAX_REQUEST_BYTES: Final = 4096
"""A request line longer than this is refused and the connection closed."""
MAX_RESPONSE_BYTES: Final = 64 * 1024 * 1024
"""What a client accepts as one response line (a tree of many thousands of actors fits)."""
IDLE_TIMEOUT: Final = 10.0
"""A connection that sends no complete request for this long is closed."""
SEND_TIMEOUT: Final = 10.0
"""A client that does not read its response for this long is dropped."""
CLIENT_TIMEOUT: Final = 3.0
"""How long a client waits for connect plus response before it calls the daemon unreachable."""
PROBE_TIMEOUT: Final = 1.0
"""How long the server waits on an existing socket file before it decides who owns it."""
SOCKET_MODE: Final = 0o600
MAX_REQUEST_NESTING: Final = 2
"""How deep arrays and objects may nest in a request (`{"op": "snapshot"}` is 1)."""

# accept() errors that mean "out of resources right now", not "the listener is broken".
_RESOURCE_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class AdminError(AnycodeError):
    """The admin socket cannot be served, or a daemon cannot be asked through it."""


class AdminSocketInUse(AdminError):
    """Another daemon answers on the admin socket, so this one must not take it over."""


class DaemonUnreachable(AdminError):
    """Nothing answers at the admin address (no daemon, or it stopped answering)."""


class AdminRefused(AdminError):
    """The daemon answered with `{"ok": false, ...}`: a wrong token or an unknown request."""


# --- what travels over the socket ---------------------------------------------------------------


@dataclass(frozen=True)
class DaemonInfo:
    """The daemon as a whole: who it is and since when (uptime in seconds, at `now`)."""

    id: str
    version: str
    pid: int
    started_at: str
    uptime: float


@dataclass(frozen=True)
class TreeSnapshot:
    """One answer to `{"op": "snapshot"}`: the daemon, its clock, and every supervised child."""

    daemon: DaemonInfo
    now: str
    entries: tuple[ChildEntry, ...]

    def to_json(self) -> dict[str, Any]:
        """The response object of the protocol (`ok` included), ready for `json.dumps`."""
        return {
            "ok": True,
            "daemon": dataclasses.asdict(self.daemon),
            "now": self.now,
            "entries": [dataclasses.asdict(entry) for entry in self.entries],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TreeSnapshot:
        """Parse a snapshot response; AdminError if it is not one."""
        try:
            daemon = data["daemon"]
            info = DaemonInfo(
                id=str(daemon["id"]),
                version=str(daemon["version"]),
                pid=int(daemon["pid"]),
                started_at=str(daemon["started_at"]),
                uptime=float(daemon["uptime"]),
            )
            entries = tuple(
                ChildEntry(
                    path=str(item["path"]),
                    kind=str(item["kind"]),
                    state=ChildState(item["state"]),
                    restarts=int(item["restarts"]),
                    last_error=item["last_error"],
                    started_at=item["started_at"],
                    inbox_depth=item["inbox_depth"],
                    inbox_capacity=item["inbox_capacity"],
                    info=dict(item["info"]),
                )
                for item in data["entries"]
            )
            return cls(daemon=info, now=str(data["now"]), entries=entries)
        except (KeyError, TypeError, ValueError) as exc:
            raise AdminError(f"the answer is not an anycode tree snapshot ({exc!r})") from None


def split_host_port(listen: str) -> tuple[str, int]:
    """ "127.0.0.1:7070" → ("127.0.0.1", 7070); "[::1]:7070" → ("::1", 7070)."""
    host, sep, port = listen.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"not host:port: {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


@dataclass(frozen=True)
class AdminAddress:
    """Where a client finds a daemon: a Unix socket `path`, or `host`:`port` with a `token`."""

    path: Path | None = None
    host: str = ""
    port: int = 0
    token: str | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def unix(cls, path: str | os.PathLike[str]) -> AdminAddress:
        return cls(path=Path(path))

    @classmethod
    def tcp(cls, listen: str, token: str) -> AdminAddress:
        host, port = split_host_port(listen)
        return cls(host=host, port=port, token=token)

    def __str__(self) -> str:
        if self.path is not None:
            return str(self.path)
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def connect(self) -> trio.SocketStream:
        if self.path is not None:
            return await trio.open_unix_socket(self.path)
        return await trio.open_tcp_stream(self.host, self.port)


# --- the server ---------------------------------------------------------------------------------


class AdminServer:
    """Serves `TreeSnapshot`s of `registry` on the Unix socket and, if asked, on TCP.

    A supervised worker: `run` reports ready once every listener listens, serves until
    cancelled, and removes its socket file on the way out (only if the file is still its own).
    It refuses to start (AdminSocketInUse) when another daemon answers on the socket, and
    replaces a stale socket file that nobody answers on.
    """

    def __init__(
        self,
        registry: Registry,
        socket_path: Path,
        *,
        daemon_id: str,
        listen: str | None = None,
        token: str | None = None,
    ) -> None:
        if listen is not None and not token:
            raise ValueError("serving the tree on a network address needs a token")
        self.registry = registry
        self.socket_path = socket_path
        self.daemon_id = daemon_id
        self._listen = listen
        # Bytes, so any str compares (compare_digest refuses a non-ASCII str); surrogatepass
        # encodes every str, even one with lone surrogates, and two strs alike only if equal.
        self._token = None if token is None else token.encode("utf-8", "surrogatepass")
        self._started_at = registry.now()
        self._bound: tuple[int, int] | None = None
        self.tcp_addresses: list[tuple[str, int]] = []
        """Where the TCP listeners listen once running (useful with port 0)."""

    @classmethod
    def from_config(cls, config: AdminConfig, registry: Registry, *, daemon_id: str) -> AdminServer:
        token = config.token.get_secret_value() if config.token is not None else None
        return cls(registry, config.socket, daemon_id=daemon_id, listen=config.listen, token=token)

    def snapshot(self) -> TreeSnapshot:
        """The tree right now; synchronous, so it never waits on (or for) any actor."""
        now = self.registry.now()
        uptime = datetime.fromisoformat(now) - datetime.fromisoformat(self._started_at)
        daemon = DaemonInfo(
            id=self.daemon_id,
            version=__version__,
            pid=os.getpid(),
            started_at=self._started_at,
            uptime=round(max(0.0, uptime.total_seconds()), 3),
        )
        return TreeSnapshot(daemon=daemon, now=now, entries=tuple(self.registry.snapshot()))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners: list[tuple[trio.SocketListener, bool]] = []
        try:
            listeners.append((await self._open_unix_listener(), False))
            if self._listen is not None:
                host, port = split_host_port(self._listen)
                try:
                    tcp = await trio.open_tcp_listeners(port, host=host)
                except OSError as exc:
                    raise AdminError(
                        f"cannot listen on {self._listen}: {exc.strerror or exc}"
                    ) from exc
                for listener in tcp:
                    listeners.append((listener, True))
                    self.tcp_addresses.append(listener.socket.getsockname()[:2])
                log.info("serving the actor tree on %s (token required)", self._listen)
            async with trio.open_nursery() as nursery:
                for listener, needs_token in listeners:
                    nursery.start_soon(self._accept_loop, listener, needs_token, nursery)
                log.info("admin socket listening on %s", self.socket_path)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                for listener, _ in listeners:
                    await listener.aclose()
            self._remove_socket_file()
            self.tcp_addresses = []

    async def _open_unix_listener(self) -> trio.SocketListener:
        path = self.socket_path
        # A folder of our own (like /run/anycode) may not exist yet; only we need to enter it.
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        await self._clear_stale_socket(path)
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        try:
            try:
                await sock.bind(os.fspath(path))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise AdminSocketInUse(
                        f"another process took the admin socket {path} just now"
                    ) from None
                raise AdminError(f"cannot create the admin socket {path}: {exc.strerror}") from exc
            bound = os.lstat(path)
            self._bound = (bound.st_dev, bound.st_ino)
            # Before listen(): until then every connect() is refused, so no other user can get
            # in while the file still has the umask's permissions.
            os.chmod(path, SOCKET_MODE)
            status = os.lstat(path)
            if (
                (status.st_dev, status.st_ino) != self._bound
                or not stat.S_ISSOCK(status.st_mode)
                or stat.S_IMODE(status.st_mode) != SOCKET_MODE
            ):
                raise AdminError(f"the admin socket {path} changed under us; refusing to serve")
            sock.listen(MAX_CONNECTIONS)
        except BaseException:
            sock.close()
            self._remove_socket_file()
            raise
        return trio.SocketListener(sock)

    async def _clear_stale_socket(self, path: Path) -> None:
        try:
            status = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(status.st_mode):
            raise AdminError(
                f"{path} exists and is not a socket; move it away or set admin.socket elsewhere"
            )
        try:
            with trio.move_on_after(PROBE_TIMEOUT) as probe:
                stream = await trio.open_unix_socket(path)
                await stream.aclose()
        except ConnectionRefusedError:
            # Left behind by a daemon that died without cleaning up: nobody listens.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            log.info("removed a stale admin socket at %s", path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            raise AdminError(f"cannot check the admin socket {path}: {exc.strerror}") from exc
        # It accepted a connection, or took too long to say no (a busy or stopped daemon).
        waited = " (it did not answer in time)" if probe.cancelled_caught else ""
        raise AdminSocketInUse(
            f"another anycode daemon is listening on {path}{waited}; stop it first, "
            "or give this one its own admin.socket"
        )

    def _remove_socket_file(self) -> None:
        """Remove the socket file if it is still the one this server bound."""
        if self._bound is None:
            return
        bound, self._bound = self._bound, None
        try:
            status = os.lstat(self.socket_path)
        except FileNotFoundError:
            return
        if (status.st_dev, status.st_ino) == bound:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)

    async def _accept_loop(
        self, listener: trio.SocketListener, needs_token: bool, nursery: trio.Nursery
    ) -> None:
        # A semaphore rather than a CapacityLimiter: a slot is taken here and given back by
        # the connection's own task.
        slots = trio.Semaphore(MAX_CONNECTIONS)
        while True:
            await slots.acquire()
            try:
                stream = await listener.accept()
            except OSError as exc:
                slots.release()
                if exc.errno not in _RESOURCE_ERRNOS:
                    raise
                log.warning("admin socket: cannot accept a client (%s); retrying", exc.strerror)
                await trio.sleep(0.5)
                continue
            except BaseException:
                slots.release()
                raise
            nursery.start_soon(self._serve_connection, stream, needs_token, slots)

    async def _serve_connection(
        self, stream: trio.SocketStream, needs_token: bool, slots: trio.Semaphore
    ) -> None:
        try:
            async with stream:
                reader = _LineReader(stream, MAX_REQUEST_BYTES)
                keep_open = True
                while keep_open:
                    response, keep_open = await self._next_response(reader, needs_token)
                    if response is None:
                        return  # the client left, or sat idle too long
                    with trio.move_on_after(SEND_TIMEOUT) as sending:
                        await stream.send_all(response)
                    if sending.cancelled_caught:
                        return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away mid-request; nothing to tell anyone
        except Exception:
            # A bug in answering one client must not stop the listener for everyone else.
            log.exception("admin socket: could not answer a client; closed its connection")
        finally:
            slots.release()

    async def _next_response(
        self, reader: _LineReader, needs_token: bool
    ) -> tuple[bytes | None, bool]:
        """The response to the client's next request and whether to keep the connection open;
        no response when the client closed or stayed silent for IDLE_TIMEOUT."""
        with trio.move_on_after(IDLE_TIMEOUT):
            try:
                line = await reader.next_line()
            except _LineTooLong:
                return _error(f"a request is at most {MAX_REQUEST_BYTES} bytes"), False
            if line is None:
                return None, False
            return self._respond(line, needs_token)
        return None, False

    def _respond(self, line: bytes, needs_token: bool) -> tuple[bytes, bool]:
        """The response line to one request, and whether the connection stays open."""
        request = _parse_request(line)
        if request is None:
            return _error("a request is one JSON object per line"), False
        if needs_token and not self._token_matches(request.get("token")):
            return _error("unauthorized: this address needs the admin token"), False
        op = request.get("op")
        if op == "snapshot":
            return _encode(self.snapshot().to_json()), True
        return _error(f"unknown op {op!r}; known: snapshot"), True

    def _token_matches(self, given: object) -> bool:
        if not isinstance(given, str) or self._token is None:
            return False
        return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), self._token)


def _parse_request(line: bytes) -> dict[str, Any] | None:
    """The request object on one line, or None if the line is not a request.

    Strict, because the line is untrusted (over TCP it is parsed before its token is checked):
    its length is bounded by the reader, and its nesting is checked before `json.loads`, which
    raises RecursionError (not a ValueError) on input like `[` * 4000.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not _nests_within(text, MAX_REQUEST_NESTING):
        return None
    try:
        request = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError only if the scan ever misjudged
        return None
    return request if isinstance(request, dict) else None


def _nests_within(text: str, limit: int) -> bool:
    """Whether the arrays and objects of JSON `text` nest at most `limit` deep and never close
    more than they opened; brackets inside strings do not count. Linear, without recursion."""
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return False
        elif char in "]}":
            depth -= 1
            if depth < 0:
                return False
    return True


def _encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _error(text: str) -> bytes:
    return _encode({"ok": False, "error": text})


class _LineTooLong(Exception):
    pass


class _LineReader:
    """Lines from a stream, each at most `limit` bytes; None once the peer has closed."""

    def __init__(self, stream: trio.abc.ReceiveStream, limit: int) -> None:
        self._stream = stream
        self._limit = limit
        self._buffer = bytearray()

    async def next_line(self) -> bytes | None:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line
            if len(self._buffer) > self._limit:
                raise _LineTooLong
            data = await self._stream.receive_some(65536)
            if not data:
                return None
            self._buffer += data


# --- the client ---------------------------------------------------------------------------------


async def fetch_snapshot(address: AdminAddress) -> TreeSnapshot:
    """Ask the daemon at `address` for one snapshot (one connection, one request).

    DaemonUnreachable when nothing answers within CLIENT_TIMEOUT, AdminRefused when the daemon
    says no (wrong token), AdminError when whatever answers is not an anycode daemon.
    """
    request: dict[str, str] = {"op": "snapshot"}
    if address.token is not None:
        request["token"] = address.token
    line: bytes | None = None
    with trio.move_on_after(CLIENT_TIMEOUT):
        try:
            stream = await address.connect()
        except OSError as exc:
            raise DaemonUnreachable(f"cannot connect to {address}: {exc.strerror or exc}") from None
        try:
            async with stream:
                await stream.send_all(_encode(request))
                line = await _LineReader(stream, MAX_RESPONSE_BYTES).next_line()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise DaemonUnreachable(f"the connection to {address} broke: {exc}") from None
        except _LineTooLong:
            raise AdminError(f"the answer from {address} is too long") from None
        if line is None:
            raise DaemonUnreachable(f"{address} closed the connection without answering")
    if line is None:
        raise DaemonUnreachable(f"{address} did not answer within {CLIENT_TIMEOUT:g} s")
    try:
        response = json.loads(line)
    except ValueError:
        raise AdminError(f"{address} did not answer with JSON; is it an anycode daemon?") from None
    if not isinstance(response, dict):
        raise AdminError(f"{address} did not answer with a JSON object")
    if response.get("ok") is not True:
        raise AdminRefused(str(response.get("error", "the daemon refused the request")))
    return TreeSnapshot.from_json(response)
