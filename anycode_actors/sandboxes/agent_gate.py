"""The agent gate: sandbox-agent behind a bearer-token check, with the token on no command line.

sandbox-agent 0.4.2 takes its token only as an argument, `--token <token>`: its `sandbox-agent
server --help` shows no environment variable for it (clap would add `[env: ...]`), and upstream
declares the option without clap's `env` (the `token` field of `SandboxAgentCli` in
server/packages/sandbox-agent/src/cli.rs, https://github.com/rivet-dev/sandbox-agent). A
process's arguments are readable by every user of the machine (/proc/<pid>/cmdline, `ps`,
`docker top`). So the gate takes the token from its
environment (ANYCODE_AGENT_TOKEN, removed at once), starts the command after `--` without it
(sandbox-agent on 127.0.0.1 with `--no-token`) and forwards only the requests that carry
`Authorization: Bearer <token>`; any other gets the 401 that sandbox-agent itself would give.

    ANYCODE_AGENT_TOKEN=... python3 agent_gate.py --listen HOST:PORT --upstream-port PORT \\
        [--upstream-wait SECONDS] [--label TEXT] \\
        -- sandbox-agent server --host 127.0.0.1 --port PORT --no-token ...

One request per connection: the gate reads the request head, checks the token, sends the head on
with `Connection: close` (and without the Authorization header) and then relays bytes both ways
until sandbox-agent closes the connection, so a stream (SSE) passes through as it is written.
sandbox-agent reads no second request from a connection whose first one said `Connection: close`,
so nothing rides on a checked request; heads that two parsers could read differently (a bare CR
or LF, folded lines, Content-Length beside Transfer-Encoding) are refused with 400. Upgrades
(WebSocket, h2c) are not passed on. While sandbox-agent does not listen yet (it is starting), a
request with the token waits for it, up to `--upstream-wait` seconds (5), then gets a 503.

The gate exits when the command exits, with its exit status (128 + the signal's number when a
signal ended it); SIGTERM, SIGINT and SIGHUP are passed on to the command. `--label` is not used:
it names the sandbox on the command line, so that a process can be recognised without its token.

Standard library only, for Python 3.11 and later: the sandbox image runs this very file (a
verbatim copy in docker/entrypoint.sh, which tests/test_agent_gate.py keeps identical), and the
local provider runs it with the daemon's interpreter.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import os
import signal
import subprocess
import sys

TOKEN_VARIABLE = "ANYCODE_AGENT_TOKEN"
UPSTREAM_HOST = "127.0.0.1"
#: Bytes a request head may have (sandbox-agent's own limit is larger; ours see small heads).
MAX_HEAD = 64 * 1024
#: Seconds a client may take to send its request head.
HEAD_TIMEOUT = 30.0
CHUNK = 64 * 1024
#: Seconds a client may take to close the connection after a whole answer, before the gate does.
LINGER = 5.0
#: Seconds a request waits for sandbox-agent to listen (it is starting) before a 503 answer.
UPSTREAM_WAIT = 5.0
_UPSTREAM_RETRY = 0.05
#: Headers of the client's own connection, and the token: none of them is passed on.
_NOT_FORWARDED = frozenset(
    {b"authorization", b"connection", b"keep-alive", b"proxy-connection", b"upgrade"}
)
_TOKEN_INVALID = {
    "type": "urn:sandbox-agent:error:token_invalid",
    "title": "Token Invalid",
    "status": 401,
    "detail": "token invalid",
    "details": {"message": "missing or invalid bearer token"},
}


def _log(message: str) -> None:
    print(f"[anycode-agent-gate] {message}", file=sys.stderr, flush=True)


def _answer(status: int, reason: str, body: dict[str, object]) -> bytes:
    content = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/problem+json\r\n"
        f"content-length: {len(content)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + content


def _problem(status: int, reason: str, detail: str) -> bytes:
    body = {"type": "about:blank", "title": reason, "status": status, "detail": detail}
    return _answer(status, reason, body)


class _BadRequest(Exception):
    pass


class _Request:
    """A parsed request head: the request line, the headers in order, and the body's framing."""

    def __init__(self, head: bytes) -> None:
        lines = head[:-4].split(b"\r\n")
        if any(b"\r" in line or b"\n" in line for line in lines):
            raise _BadRequest("a bare CR or LF in the request head")
        self.line = lines[0]
        if len(self.line.split(b" ")) != 3:
            raise _BadRequest("a malformed request line")
        self.headers: list[tuple[bytes, bytes]] = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip(b" \t"):
                raise _BadRequest("a malformed or folded header line")
            self.headers.append((name, value.strip(b" \t")))
        lengths = self.values(b"content-length")
        self.chunked = bool(self.values(b"transfer-encoding"))
        if len(lengths) > 1 or (lengths and self.chunked):
            raise _BadRequest("conflicting Content-Length or Transfer-Encoding headers")
        if lengths and not lengths[0].isdigit():
            raise _BadRequest("an invalid Content-Length")
        self.length = int(lengths[0]) if lengths else 0

    @property
    def method(self) -> bytes:
        return self.line.split(b" ", 1)[0]

    def values(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key.lower() == name]

    def forwarded_head(self) -> bytes:
        kept = [
            name + b": " + value
            for name, value in self.headers
            if name.lower() not in _NOT_FORWARDED
        ]
        return b"\r\n".join([self.line, *kept, b"Connection: close", b"", b""])


class Gate:
    """The connection handler: checks every request's token, relays the good ones."""

    def __init__(self, token: bytes, upstream_port: int, upstream_wait: float) -> None:
        self._expected = b"Bearer " + token
        self._upstream_port = upstream_port
        self._upstream_wait = upstream_wait

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass  # the client or sandbox-agent went away
        except asyncio.CancelledError:
            # The gate is exiting (its command has). A connection handler that ends cancelled
            # makes Python 3.11's asyncio print a traceback; the connection just closes.
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(HEAD_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            answer = _problem(431, "Request Header Fields Too Large", "the head is too big")
            await _refuse(reader, writer, answer)
            return
        except (asyncio.IncompleteReadError, TimeoutError):
            return
        try:
            request = _Request(head)
        except _BadRequest as exc:
            await _refuse(reader, writer, _problem(400, "Bad Request", str(exc)))
            return
        given = request.values(b"authorization")
        if len(given) != 1 or not hmac.compare_digest(given[0], self._expected):
            await _refuse(reader, writer, _answer(401, "Unauthorized", _TOKEN_INVALID))
            return
        connected = await self._connect()
        if connected is None:
            detail = "sandbox-agent is not listening (yet)"
            await _refuse(reader, writer, _problem(503, "Service Unavailable", detail))
            return
        upstream_reader, upstream = connected
        try:
            upstream.write(request.forwarded_head())
            await self._relay(request, reader, writer, upstream_reader, upstream)
        finally:
            upstream.close()
            with contextlib.suppress(OSError):
                await upstream.wait_closed()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A connection to sandbox-agent; right after the start it may take a moment to listen,
        and a request then waits instead of failing."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._upstream_wait
        while True:
            try:
                return await asyncio.open_connection(UPSTREAM_HOST, self._upstream_port)
            except OSError:
                if loop.time() >= deadline:
                    return None
            await asyncio.sleep(_UPSTREAM_RETRY)

    async def _relay(
        self,
        request: _Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream_reader: asyncio.StreamReader,
        upstream: asyncio.StreamWriter,
    ) -> None:
        """Until sandbox-agent has answered and closed, or the client has gone away."""

        async def request_body() -> None:
            # A chunked body goes on as it comes (sandbox-agent finds its end); a sized one up to
            # its length.
            remaining = request.length
            while remaining > 0 or request.chunked:
                data = await reader.read(CHUNK if request.chunked else min(CHUNK, remaining))
                if not data:
                    return  # the client closed its side: it is gone
                upstream.write(data)
                await upstream.drain()
                remaining -= len(data)
            # Whatever the client sends after its request is never a request: dropped. Its end
            # means the client is gone.
            while await reader.read(CHUNK):
                pass

        async def response() -> bool:
            """Relay the answer; whether the client can tell its end without the connection's."""
            try:
                head = await upstream_reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                head, framed = exc.partial, False
            except asyncio.LimitOverrunError:
                head, framed = b"", False
            else:
                head, framed = _response_head(head, request.method)
            writer.write(head)
            while data := await upstream_reader.read(CHUNK):
                writer.write(data)
                await writer.drain()
            return framed

        body = asyncio.ensure_future(request_body())
        answer = asyncio.ensure_future(response())
        tasks = [body, answer]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if not body.done() and answer.done() and not answer.exception() and answer.result():
                # sandbox-agent has answered and closed; the client, told `connection: close`,
                # closes on its own once it has the whole answer. The side that closes first
                # keeps the connection in TIME_WAIT, and that should be the client's port, not
                # the port of this gate (or the one Docker publishes for it).
                await asyncio.wait([body], timeout=LINGER)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(
                    asyncio.CancelledError, OSError, asyncio.IncompleteReadError
                ):
                    await task


def _response_head(head: bytes, method: bytes) -> tuple[bytes, bool]:
    """The answer's head as the client gets it (saying `Connection: close`, which sandbox-agent
    says anyway after a request that did), and whether the answer's end is framed: a length,
    chunks, or no body at all; otherwise only the closing connection ends it."""
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    fields: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields.setdefault(name.strip().lower(), []).append(value.strip().lower())
    framed = status >= 200 and (
        method == b"HEAD"
        or status in (204, 304)
        or b"content-length" in fields
        or any(value.endswith(b"chunked") for value in fields.get(b"transfer-encoding", []))
    )
    if not any(b"close" in value for value in fields.get(b"connection", [])):
        head = head[:-2] + b"Connection: close\r\n\r\n"
    return head, framed


async def _refuse(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: bytes
) -> None:
    """Answer without forwarding, then read what the client still sends (its request body)
    until it closes, for a while: closing a socket with unread data resets the connection, and
    the client could lose the answer; and the client is to close first (see `_relay`)."""
    writer.write(answer)
    await writer.drain()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(LINGER):
            while await reader.read(CHUNK):
                pass


def _listen_address(text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, int(port)


async def _run(
    listen: tuple[str, int],
    upstream_port: int,
    upstream_wait: float,
    command: list[str],
    token: bytes,
) -> int:
    gate = Gate(token, upstream_port, upstream_wait)
    host, port = listen
    try:
        server = await asyncio.start_server(gate.handle, host, port, limit=MAX_HEAD)
    except OSError as exc:
        _log(f"ERROR: cannot listen on {host}:{port}: {exc.strerror or exc}")
        return 1
    try:
        child = await asyncio.create_subprocess_exec(*command, stdin=subprocess.DEVNULL)
    except OSError as exc:
        _log(f"ERROR: cannot start {command[0]}: {exc.strerror or exc}")
        server.close()
        return 127
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, _pass_on, child, signum)
    _log(
        f"listening on {host}:{port}; requests with the token go to {command[0]} on "
        f"{UPSTREAM_HOST}:{upstream_port}"
    )
    code = await child.wait()
    server.close()
    return code if code >= 0 else 128 - code


def _pass_on(child: asyncio.subprocess.Process, signum: int) -> None:
    # Not child.send_signal: it polls first, and a poll that reaps a child that the same signal
    # (sent to the whole group) has just ended leaves asyncio's watcher without its exit status.
    # The pid stays the child's until the watcher reaps it, and returncode is set right after.
    if child.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="anycode-agent-gate", description="sandbox-agent behind a bearer-token check"
    )
    parser.add_argument("--listen", type=_listen_address, required=True, metavar="HOST:PORT")
    parser.add_argument("--upstream-port", type=int, required=True, metavar="PORT")
    parser.add_argument(
        "--upstream-wait",
        type=float,
        default=UPSTREAM_WAIT,
        metavar="SECONDS",
        help="how long a request waits for sandbox-agent to listen before a 503",
    )
    parser.add_argument("--label", default="", help="names the sandbox in `ps`; not used")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    # Removed before anything is started: the command and the agents never see it.
    token = os.environ.pop(TOKEN_VARIABLE, "")
    if not token:
        _log(f"ERROR: {TOKEN_VARIABLE} is not set; refusing to serve without a token")
        return 64
    if not command:
        _log("ERROR: no command to run after --")
        return 64
    listen, upstream = args.listen, args.upstream_port
    return asyncio.run(_run(listen, upstream, args.upstream_wait, command, token.encode()))


if __name__ == "__main__":
    sys.exit(main())
