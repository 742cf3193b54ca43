"""ACP over an agent process's stdin/stdout: one JSON-RPC message per line (NDJSON).

The process is any `AgentProcess`: a local subprocess (`LocalProcess`, the local provider and the
tests) or a process inside a container started through `docker exec -i`
(`anycode_actors.sandboxes.docker_exec`). stderr is the process's business: it keeps the tail,
and this transport puts it into the error when the agent exits.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, Final

import trio

from anycode_actors.agents._nursery import open_nursery_bare
from anycode_actors.agents.acp import AcpClient, open_acp_client
from anycode_actors.agents.jsonrpc import LineSplitter, Malformed, decode_line, encode
from anycode_actors.agents.transport import INCOMING_BUFFER, Received
from anycode_actors.errors import AgentClosedError
from anycode_actors.sandboxes.base import AgentProcess
from anycode_actors.sandboxes.process import LocalProcess

__all__ = [
    "EXIT_WAIT",
    "StdioTransport",
    "open_local_stdio_client",
    "open_stdio_client",
    "open_stdio_transport",
]

logger = logging.getLogger(__name__)

#: Seconds to wait for the exit code after stdout ended (the process is closing anyway).
EXIT_WAIT: Final = 5.0
#: Seconds a closing agent gets after its stdin closed, before it is terminated (SIGTERM, then
#: SIGKILL). Short: an agent may not exit on end of input (claude-agent-acp 0.23.1 did not while
#: Claude Code ran).
CLOSE_GRACE: Final = 0.5
READ_CHUNK: Final = 65536


class StdioTransport:
    """NDJSON over an `AgentProcess`. Create it with `open_stdio_transport`."""

    def __init__(self, process: AgentProcess) -> None:
        self._process = process
        self._send_incoming, self._incoming = trio.open_memory_channel[Received](INCOMING_BUFFER)
        self._write_lock = trio.Lock()
        self._end: AgentClosedError | None = None

    def __repr__(self) -> str:
        return f"StdioTransport({self._process!r})"

    @property
    def incoming(self) -> trio.MemoryReceiveChannel[Received]:
        return self._incoming

    @property
    def process(self) -> AgentProcess:
        return self._process

    def end_reason(self) -> AgentClosedError | None:
        return self._end

    async def send(self, message: Mapping[str, Any]) -> None:
        data = encode(message)
        # trio streams refuse two concurrent send_all calls; a reply and a prompt may race.
        async with self._write_lock:
            try:
                await self._process.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise AgentClosedError(
                    "the agent no longer reads its input", self._process.stderr_tail()[-2000:]
                ) from exc

    async def _read(self) -> None:
        splitter = LineSplitter()
        with self._send_incoming:
            while True:
                try:
                    data = await self._process.receive_some(READ_CHUNK)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    logger.debug("agent stdout failed: %r", exc)
                    data = b""
                if not data:
                    last = splitter.finish()
                    if last is not None:
                        await self._deliver(last)
                    break
                for line in splitter.feed(data):
                    await self._deliver(line)
            # Known before the channel closes, so the client core can say why it ended.
            self._end = await self._exit_reason()

    async def _deliver(self, line: bytes | Malformed) -> None:
        if isinstance(line, bytes):
            if not line.strip():
                return
            message = decode_line(line)
        else:
            message = line
        await self._send_incoming.send(Received(message))

    async def _exit_reason(self) -> AgentClosedError:
        code: int | None = None
        with trio.move_on_after(EXIT_WAIT):
            code = await self._process.wait()
        status = "is still running" if code is None else f"exited with code {code}"
        tail = self._process.stderr_tail().strip()[-2000:]
        return AgentClosedError(f"the agent closed its output and {status}", tail)

    async def _close(self) -> None:
        with trio.move_on_after(CLOSE_GRACE + 5.0, shield=True):
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await self._process.close_stdin()
            with trio.move_on_after(CLOSE_GRACE):
                await self._process.wait()
        with trio.CancelScope(shield=True):
            await self._process.aclose()


@asynccontextmanager
async def open_stdio_transport(process: AgentProcess) -> AsyncIterator[StdioTransport]:
    """A transport on `process`; on exit its stdin is closed, it gets `CLOSE_GRACE` seconds to
    leave, and then it is stopped (`process.aclose()`), even when the block was cancelled."""
    transport = StdioTransport(process)
    try:
        async with open_nursery_bare() as nursery:
            nursery.start_soon(transport._read, name="stdio-read")
            try:
                yield transport
            finally:
                nursery.cancel_scope.cancel()
    finally:
        await transport._close()


@asynccontextmanager
async def open_stdio_client(process: AgentProcess) -> AsyncIterator[AcpClient]:
    """An ACP client talking to `process` over its stdin/stdout (closing it at the end)."""
    async with open_stdio_transport(process) as transport, open_acp_client(transport) as client:
        yield client


@asynccontextmanager
async def open_local_stdio_client(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> AsyncIterator[AcpClient]:
    """Start `argv` (e.g. ["claude-agent-acp"]) as a local subprocess and talk ACP to it."""
    process = await LocalProcess.start(argv, env=env, cwd=cwd)
    async with open_stdio_client(process) as client:
        yield client
