#!/usr/bin/env bash
# Entrypoint of the anycode sandbox image (run under tini).
#
# Environment:
#   GITHUB_TOKEN / GH_TOKEN  optional; git (credential helper in /etc/gitconfig, github.com only)
#                            and gh read it from the environment when they need it; it is never
#                            written to disk and never printed
#   ANYCODE_REPO             optional; cloned into /workspace/repo. A failed clone does not stop the
#                            container: it is logged (docker logs) and recorded in
#                            $ANYCODE_STATE_DIR/clone-failed, and ANYCODE_CLONE_STATUS=failed /
#                            ANYCODE_CLONE_ERROR are exported to the server and the agents
#   ANYCODE_BRANCH           optional branch or tag to check out
#   ANYCODE_CLONE_DEPTH      optional shallow-clone depth
#   ANYCODE_CLONE_TIMEOUT    seconds before the clone is abandoned (default 300)
#   ANYCODE_STATE_DIR        where markers go (default /workspace/.anycode): clone-status holds
#                            ok | failed | skipped, clone-failed the error of a failed clone
#   ANYCODE_PROTOCOL         sandbox-agent (default): serve sandbox-agent on 0.0.0.0:2468 behind
#                            the token gate, with token ANYCODE_AGENT_TOKEN (required; it is on
#                            no command line) and telemetry off;
#                            acp | acpx: idle, the daemon talks to the agents through docker exec
#   ANYCODE_AGENT_PORT       the port the daemon connects to (default 2468); sandbox-agent itself
#                            listens on 127.0.0.1 at the port after it
#   GIT_AUTHOR_NAME/_EMAIL   optional commit identity (default "anycode agent")
# Arguments, when given, are run instead of the protocol's process (after the setup above).
set -eu

log() { printf '[anycode-entrypoint] %s\n' "$*" >&2; }

# Remove anything secret from a message: token values and user:password@ parts of URLs.
redact() {
    local text="$1" secret
    for secret in "${GITHUB_TOKEN:-}" "${GH_TOKEN:-}" "${ANYCODE_AGENT_TOKEN:-}"; do
        if [ -n "$secret" ]; then text="${text//"$secret"/***}"; fi
    done
    printf '%s' "$text" | sed -E 's#(://)[^/@[:space:]]+@#\1***@#g'
}

if [ "$(id -u)" = 0 ]; then
    # Claude Code refuses --dangerously-skip-permissions as root unless told it is in a sandbox.
    export IS_SANDBOX=1
fi

# --- GitHub auth: nothing to write; make both variable names available to child processes. ----
if [ -n "${GITHUB_TOKEN:-}" ] || [ -n "${GH_TOKEN:-}" ]; then
    export GH_TOKEN="${GH_TOKEN:-${GITHUB_TOKEN:-}}"
    export GITHUB_TOKEN="${GITHUB_TOKEN:-$GH_TOKEN}"
    log "GitHub token present: git (https://github.com) and gh will use it from the environment"
fi
git config --global user.name >/dev/null 2>&1 || git config --global user.name "${GIT_AUTHOR_NAME:-anycode agent}" || true
git config --global user.email >/dev/null 2>&1 || git config --global user.email "${GIT_AUTHOR_EMAIL:-anycode-agent@users.noreply.github.com}" || true

# --- Markers. -------------------------------------------------------------------------------
state_dir="${ANYCODE_STATE_DIR:-/workspace/.anycode}"
if ! mkdir -p "$state_dir" 2>/dev/null || [ ! -w "$state_dir" ]; then
    log "WARNING: $state_dir is not writable; markers go to /tmp/anycode instead"
    state_dir=/tmp/anycode
    mkdir -p "$state_dir"
fi
export ANYCODE_STATE_DIR="$state_dir"
rm -f "$state_dir/clone-failed"

set_clone_status() {
    export ANYCODE_CLONE_STATUS="$1"
    printf '%s\n' "$1" >"$state_dir/clone-status"
}

# --- Clone. ---------------------------------------------------------------------------------
repo_dir=/workspace/repo
if [ -z "${ANYCODE_REPO:-}" ]; then
    set_clone_status skipped
elif [ -d "$repo_dir/.git" ]; then
    log "$repo_dir already holds a clone; not cloning again"
    set_clone_status ok
else
    shown_repo="$(redact "$ANYCODE_REPO")"
    clone_args=(clone --quiet)
    if [ -n "${ANYCODE_BRANCH:-}" ]; then clone_args+=(--branch "$ANYCODE_BRANCH"); fi
    if [ -n "${ANYCODE_CLONE_DEPTH:-}" ]; then clone_args+=(--depth "$ANYCODE_CLONE_DEPTH"); fi
    log "cloning $shown_repo into $repo_dir"
    rc=0
    output="$(GIT_TERMINAL_PROMPT=0 timeout "${ANYCODE_CLONE_TIMEOUT:-300}" \
        git "${clone_args[@]}" -- "$ANYCODE_REPO" "$repo_dir" 2>&1)" || rc=$?
    if [ "$rc" = 0 ]; then
        log "clone of $shown_repo done"
        set_clone_status ok
    else
        if [ "$rc" = 124 ]; then output="timed out after ${ANYCODE_CLONE_TIMEOUT:-300} s; $output"; fi
        message="$(redact "$output" | tr '\n' ' ' | sed -E 's/ +$//')"
        rm -rf "$repo_dir" 2>/dev/null || true
        printf 'repo: %s\nexit: %s\nerror: %s\n' "$shown_repo" "$rc" "$message" >"$state_dir/clone-failed"
        set_clone_status failed
        export ANYCODE_CLONE_ERROR="$message"
        log "ERROR: clone of $shown_repo failed (exit $rc): $message"
        log "ERROR: continuing without $repo_dir (marker: $state_dir/clone-failed)"
    fi
fi
if [ -d "$repo_dir" ]; then cd "$repo_dir"; else cd /workspace 2>/dev/null || true; fi

# --- Run. -----------------------------------------------------------------------------------
if [ "$#" -gt 0 ]; then
    exec "$@"
fi

protocol="${ANYCODE_PROTOCOL:-sandbox-agent}"
case "$protocol" in
sandbox-agent)
    if [ -z "${ANYCODE_AGENT_TOKEN:-}" ]; then
        log "ERROR: ANYCODE_AGENT_TOKEN is not set; refusing to start sandbox-agent without a token"
        exit 64
    fi
    port="${ANYCODE_AGENT_PORT:-2468}"
    if [ "$port" -lt 65535 ]; then inner_port=$((port + 1)); else inner_port=$((port - 1)); fi
    # The server's own log goes to stdout too (docker logs), not only to ~/.local/share/sandbox-agent.
    export SANDBOX_AGENT_LOG_STDOUT="${SANDBOX_AGENT_LOG_STDOUT:-1}"
    log "starting sandbox-agent $(sandbox-agent --version 2>/dev/null | awk '{ print $NF }') on 127.0.0.1:$inner_port behind the token gate on 0.0.0.0:$port (token auth, telemetry off)"
    # sandbox-agent 0.4.2 takes its token only as `--token <token>` (no environment variable, no
    # file: `sandbox-agent server --help`; server/packages/sandbox-agent/src/cli.rs in
    # https://github.com/rivet-dev/sandbox-agent), and every user of the host sees a process's
    # arguments (ps, docker top). So sandbox-agent listens on the container's loopback without a
    # token, and the gate below checks the token, which it takes from ANYCODE_AGENT_TOKEN and
    # removes before it starts sandbox-agent (so neither sandbox-agent nor the agents see it).
    # Processes inside the container can reach sandbox-agent without the token; they could read
    # it from its command line before. The script on stdin is a verbatim copy of
    # anycode_actors/sandboxes/agent_gate.py (tests/test_agent_gate.py checks that).
    exec python3 - --listen "0.0.0.0:$port" --upstream-port "$inner_port" -- \
        sandbox-agent server --host 127.0.0.1 --port "$inner_port" --no-token --no-telemetry \
        <<'ANYCODE_AGENT_GATE'
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
ANYCODE_AGENT_GATE
    ;;
acp | acpx)
    log "protocol $protocol: idling; the daemon runs agents through docker exec"
    exec sleep infinity
    ;;
*)
    log "ERROR: unknown ANYCODE_PROTOCOL '$protocol' (expected sandbox-agent, acp or acpx)"
    exit 64
    ;;
esac
