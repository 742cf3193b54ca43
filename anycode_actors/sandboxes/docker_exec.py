"""`docker exec -i` over the docker SDK: a process in a container as an `AgentProcess`.

The stdio ACP and acpx transports need a process with piped stdin/stdout inside the sandbox. The
Engine API gives one: `exec_create(stdin=True)` then `exec_start(socket=True)` upgrades the HTTP
connection to a raw two-way stream. With `tty=False` the engine multiplexes stdout and stderr on
it, each chunk behind an 8-byte header (stream type, 3 zero bytes, big-endian length); writes go
to the process's stdin unframed, and half-closing the socket closes its stdin.

The blocking SDK calls (create, start, inspect) run in worker threads under the provider's
`CapacityLimiter`; create and start are never abandoned, so a started process is never lost. The
data path does not need threads: the upgraded connection is a plain socket (the local engine's
Unix socket, or TCP without TLS), which trio drives directly, so reading is cancellable at any
point and no thread sits blocked in `recv` for the life of a session. Engines reached over TLS or
SSH are refused with a clear error (the daemon runs next to its Docker engine).

Closing never hangs: stdin is closed, the process gets `CLOSE_GRACE` seconds to leave, then it is
signalled through its host pid (SIGTERM, then SIGKILL) when this daemon can see it, and the socket
is closed whatever happened. The container is the session's and is removed anyway.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import ssl
from collections.abc import Mapping, Sequence
from typing import Any, Final

import docker.errors
import requests
import trio

from anycode_actors.sandboxes.base import SandboxError

__all__ = ["CLOSE_GRACE", "STDERR_TAIL_BYTES", "DockerExecProcess", "start_exec"]

logger = logging.getLogger(__name__)

#: Seconds the process gets to exit after its stdin closed, before it is signalled.
CLOSE_GRACE: Final = 3.0
#: Seconds between SIGTERM and SIGKILL.
KILL_GRACE: Final = 2.0
STDERR_TAIL_BYTES: Final = 8192
_HEADER_BYTES: Final = 8
_STDOUT: Final = 1
_STDERR: Final = 2
_READ_CHUNK: Final = 65536
_POLL_FIRST: Final = 0.02
_POLL_MAX: Final = 0.5


class DockerExecProcess:
    """A process started by `start_exec`; see `AgentProcess` for the contract."""

    def __init__(
        self,
        api: Any,
        exec_id: str,
        stream: trio.SocketStream,
        limiter: trio.CapacityLimiter | None,
    ) -> None:
        self._api = api
        self.exec_id = exec_id
        self._stream = stream
        self._limiter = limiter
        self._frames = bytearray()
        self._stdout = bytearray()
        self._stderr = bytearray()
        self._eof = False
        self._stdin_closed = False
        self._closed = False
        self._exit_code: int | None = None

    def __repr__(self) -> str:
        return f"DockerExecProcess({self.exec_id[:12]})"

    async def send_all(self, data: bytes) -> None:
        await self._stream.send_all(data)

    async def receive_some(self, max_bytes: int = _READ_CHUNK) -> bytes:
        while not self._stdout:
            if self._eof:
                return b""
            try:
                chunk = await self._stream.receive_some(_READ_CHUNK)
            except (trio.BrokenResourceError, OSError):
                chunk = b""
            if not chunk:
                self._eof = True
                continue
            self._frames += chunk
            self._demux()
        out = bytes(self._stdout[:max_bytes])
        del self._stdout[:max_bytes]
        return out

    def _demux(self) -> None:
        while len(self._frames) >= _HEADER_BYTES:
            kind = self._frames[0]
            size = int.from_bytes(self._frames[4:8], "big")
            if len(self._frames) < _HEADER_BYTES + size:
                return
            payload = self._frames[_HEADER_BYTES : _HEADER_BYTES + size]
            del self._frames[: _HEADER_BYTES + size]
            if kind == _STDOUT:
                self._stdout += payload
            elif kind == _STDERR:
                self._stderr += payload
                del self._stderr[:-STDERR_TAIL_BYTES]

    async def close_stdin(self) -> None:
        if self._stdin_closed:
            return
        self._stdin_closed = True
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await self._stream.send_eof()

    async def wait(self) -> int:
        """Poll the engine until the process has exited; its exit code."""
        delay = _POLL_FIRST
        while self._exit_code is None:
            info = await self._inspect()
            if not info.get("Running") and info.get("ExitCode") is not None:
                self._exit_code = int(info["ExitCode"])
                break
            await trio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)
        return self._exit_code

    def stderr_tail(self) -> str:
        return self._stderr.decode("utf-8", errors="replace")

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            try:
                with trio.move_on_after(CLOSE_GRACE):
                    await self.close_stdin()
                    await self.wait()
                if self._exit_code is None:
                    await self._kill()
            except (SandboxError, OSError) as exc:
                logger.warning("could not stop exec %s: %s", self.exec_id[:12], exc)
            finally:
                await self._stream.aclose()

    async def _kill(self) -> None:
        # The Engine API cannot signal an exec; its host pid can be, when we run next to the
        # engine (as root or as the same user).
        with trio.move_on_after(CLOSE_GRACE):
            pid = (await self._inspect()).get("Pid")
        if not pid:
            return
        for signum in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(int(pid), signum)
            except (ProcessLookupError, PermissionError) as exc:
                logger.debug("cannot signal exec %s (pid %s): %s", self.exec_id[:12], pid, exc)
                return
            with trio.move_on_after(KILL_GRACE):
                await self.wait()
                return

    async def _inspect(self) -> dict[str, Any]:
        """The engine's view of the exec; SandboxError when the engine fails or is gone."""
        failure: SandboxError
        try:
            info = await trio.to_thread.run_sync(
                self._api.exec_inspect, self.exec_id, limiter=self._limiter, abandon_on_cancel=True
            )
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            # Not chained: the SDK's request carries nothing of ours, but its repr is noise.
            failure = SandboxError(f"cannot inspect exec {self.exec_id[:12]}: {type(exc).__name__}")
        else:
            return dict(info)
        raise failure


def _plain_socket(raw: Any) -> socket.socket:
    sock = getattr(raw, "_sock", raw)
    if isinstance(sock, ssl.SSLSocket) or not isinstance(sock, socket.socket):
        raise SandboxError(
            "docker exec needs a plain connection to the Docker engine (its Unix socket, or TCP "
            "without TLS); this engine is reached over TLS or SSH"
        )
    return sock


def _start(
    api: Any,
    container_id: str,
    argv: Sequence[str],
    env: Mapping[str, str] | None,
    cwd: str | None,
    user: str | None,
) -> tuple[str, socket.socket]:
    """In a worker thread: create and start the exec; our own duplicate of its socket."""
    created = api.exec_create(
        container_id,
        list(argv),
        stdin=True,
        stdout=True,
        stderr=True,
        tty=False,
        environment=[f"{name}={value}" for name, value in (env or {}).items()] or None,
        workdir=cwd,
        user=user or "",
    )
    exec_id = str(created["Id"])
    raw = api.exec_start(exec_id, socket=True, tty=False)
    try:
        sock = _plain_socket(raw)
        # Ours alone: the SDK's response object may close its copy whenever it is collected.
        return exec_id, sock.dup()
    finally:
        raw.close()
        inner = getattr(raw, "_sock", None)
        if isinstance(inner, socket.socket):
            inner.close()


async def start_exec(
    api: Any,
    container_id: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    user: str | None = None,
    limiter: trio.CapacityLimiter | None = None,
) -> DockerExecProcess:
    """Start `argv` in the running container `container_id` with piped stdio.

    `api` is a docker SDK low-level client (`DockerClient.api`); `env` is added to the
    container's environment for this process only (values never appear in errors); `limiter`
    bounds the worker threads of the SDK calls. Raises SandboxError when the engine refuses
    or cannot be reached.
    """
    try:
        exec_id, sock = await trio.to_thread.run_sync(
            _start, api, container_id, argv, env, cwd, user, limiter=limiter
        )
    except docker.errors.APIError as exc:
        raise SandboxError(
            f"cannot start {argv[0]!r} in container {container_id[:12]}: "
            f"{exc.explanation or exc.status_code}"
        ) from None
    except docker.errors.DockerException as exc:
        raise SandboxError(
            f"cannot start {argv[0]!r} in container {container_id[:12]}: {type(exc).__name__}"
        ) from None
    except requests.exceptions.RequestException as exc:
        # The SDK's HTTP layer: no engine at the socket, or no answer in time.
        raise SandboxError(
            f"cannot start {argv[0]!r} in container {container_id[:12]}: the Docker engine "
            f"cannot be reached ({type(exc).__name__})"
        ) from None
    process = DockerExecProcess(
        api, exec_id, trio.SocketStream(trio.socket.from_stdlib_socket(sock)), limiter
    )
    try:
        # Cancelled while the engine started it: stop it rather than leave it running.
        await trio.lowlevel.checkpoint_if_cancelled()
    except BaseException:
        await process.aclose()
        raise
    return process
