"""A local subprocess speaking an agent protocol over its stdin/stdout (an `AgentProcess`).

Used by the local provider, and by tests that run the real agent stack on this machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from typing import IO, Final

import trio

# How long a process gets to exit after SIGTERM before it is killed.
TERMINATE_GRACE: Final = 3.0
# stderr is only for error messages: keep its tail, not all of it.
STDERR_TAIL_BYTES: Final = 8192


class LocalProcess:
    """`argv` started with piped stdin/stdout; stderr goes to a temporary file.

    stderr is a file rather than a pipe so that a chatty agent can never block on a full pipe
    that nobody reads, and so that no background task (and no nursery) is needed to drain it.
    """

    def __init__(self, process: trio.Process, stderr_file: IO[bytes]) -> None:
        self._process = process
        self._stderr = stderr_file
        self._closed = False
        self._final_stderr = ""

    @classmethod
    async def start(
        cls,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> LocalProcess:
        # Owned by the LocalProcess from here on (closed in aclose), hence no `with`.
        stderr_file = tempfile.TemporaryFile(prefix="anycode-agent-stderr-")  # noqa: SIM115
        try:
            process = await trio.lowlevel.open_process(
                list(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr_file,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                # Its own process group, so that closing kills the agent's children too.
                start_new_session=True,
            )
        except BaseException:
            stderr_file.close()
            raise
        return cls(process, stderr_file)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    async def send_all(self, data: bytes) -> None:
        assert self._process.stdin is not None
        await self._process.stdin.send_all(data)

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        assert self._process.stdout is not None
        return bytes(await self._process.stdout.receive_some(max_bytes))

    async def close_stdin(self) -> None:
        if self._process.stdin is not None:
            await self._process.stdin.aclose()

    async def wait(self) -> int:
        return await self._process.wait()

    def stderr_tail(self) -> str:
        if self._stderr.closed:
            return self._final_stderr
        size = self._stderr.seek(0, os.SEEK_END)
        self._stderr.seek(max(0, size - STDERR_TAIL_BYTES))
        return self._stderr.read().decode("utf-8", errors="replace")

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Shielded and bounded: closing runs in finally blocks of cancelled tasks.
        with trio.CancelScope(shield=True):
            if self._process.returncode is None:
                self._signal_group(signal.SIGTERM)
                with trio.move_on_after(TERMINATE_GRACE):
                    await self._process.wait()
                if self._process.returncode is None:
                    self._signal_group(signal.SIGKILL)
                    await self._process.wait()
            for stream in (self._process.stdin, self._process.stdout):
                if stream is not None:
                    await stream.aclose()
        # Error messages are often built after the process is gone: keep the tail, free the file.
        self._final_stderr = self.stderr_tail()
        self._stderr.close()

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signum)
