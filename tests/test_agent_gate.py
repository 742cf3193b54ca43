"""The agent gate (anycode_actors/sandboxes/agent_gate.py): the token check in front of
sandbox-agent, run as the real program it is, in front of a small stand-in for sandbox-agent.

The stand-in (an http.server started by the gate as its command) answers /v1/health, streams
server-sent events one at a time on request, echoes bodies and reports what reached it: the
headers, the number of requests, whether the token is in its environment. Tests with the real
sandbox-agent behind the gate are in test_sandboxes_local.py (local provider) and
test_sandboxes_docker.py (the image's entrypoint).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from anycode_actors.sandboxes import agent_gate
from anycode_actors.sandboxes.ports import free_ephemeral_port

REPO = Path(__file__).resolve().parent.parent
TOKEN = "gate-test-token-" + "t0k3n" * 6
STARTUP = 15.0

STAND_IN = r"""
import json, os, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

requests = 0
go = threading.Event()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body, content_type="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                data += self.rfile.read(size) if size else b""
                self.rfile.readline()
                if not size:
                    return data
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def do_GET(self):
        global requests
        requests += 1
        if self.path == "/v1/health":
            self.reply(200, {"status": "ok"})
        elif self.path == "/report":
            env = "ANYCODE_AGENT_TOKEN" in os.environ
            self.reply(200, {"headers": dict(self.headers), "requests": requests, "env": env})
        elif self.path == "/events":
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            self.wfile.write(b"id: 1\ndata: first\n\n")
            self.wfile.flush()
            go.wait(30)
            self.wfile.write(b"id: 2\ndata: second\n\n")
            self.wfile.flush()
            self.close_connection = True
        else:
            self.reply(404, {"path": self.path})

    def do_POST(self):
        global requests
        requests += 1
        data = self.body()
        if self.path == "/go":
            go.set()
        self.reply(200, data, "application/octet-stream")


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


@dataclass
class Gate:
    process: subprocess.Popen[bytes]
    url: str
    port: int
    log: Path

    def child_pids(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()]


def start_gate(
    tmp_path: Path,
    command: list[str],
    *,
    token: str | None = TOKEN,
    upstream: int | None = None,
    options: tuple[str, ...] = (),
) -> Gate:
    port = free_ephemeral_port()
    upstream = upstream if upstream is not None else free_ephemeral_port()
    env = {"PATH": os.environ.get("PATH", os.defpath)}
    if token is not None:
        env[agent_gate.TOKEN_VARIABLE] = token
    log = tmp_path / "gate.log"
    argv = [sys.executable, "-I", agent_gate.__file__, "--listen", f"127.0.0.1:{port}"]
    argv += ["--upstream-port", str(upstream), "--label", str(tmp_path), *options, "--", *command]
    with log.open("wb") as output:
        process = subprocess.Popen(argv, env=env, stdout=output, stderr=subprocess.STDOUT)
    return Gate(process, f"http://127.0.0.1:{port}", port, log)


def stop(gate: Gate) -> None:
    if gate.process.poll() is None:
        gate.process.terminate()
        try:
            gate.process.wait(10)
        except subprocess.TimeoutExpired:
            gate.process.kill()
            gate.process.wait()


def wait_for(gate: Gate, path: str = "/v1/health", token: str | None = TOKEN) -> httpx.Response:
    """Poll until the gate answers something other than "not listening"."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + STARTUP
    while True:
        try:
            answer = httpx.get(gate.url + path, headers=headers, trust_env=False)
        except httpx.TransportError:
            answer = None
        if answer is not None and answer.status_code != 503:
            return answer
        assert gate.process.poll() is None, gate.log.read_text()
        assert time.monotonic() < deadline, "the gate did not get ready"
        time.sleep(0.05)


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    upstream = free_ephemeral_port()
    running = start_gate(tmp_path, [sys.executable, str(script), str(upstream)], upstream=upstream)
    try:
        assert wait_for(running).status_code == 200
        yield running
    finally:
        stop(running)


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def report(gate: Gate) -> dict[str, Any]:
    async with httpx.AsyncClient(trust_env=False) as http:
        answer = await http.get(gate.url + "/report", headers=bearer())
    assert answer.status_code == 200
    return dict(answer.json())


def raw_exchange(port: int, data: bytes, settle: float = 1.0) -> bytes:
    """Send `data` on one connection and read what comes back: until the gate closes the
    connection, or nothing more came for `settle` seconds after the first bytes (the gate waits
    for the client to close first)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(data)
        received = b""
        with contextlib.suppress(TimeoutError):
            while chunk := connection.recv(65536):
                received += chunk
                connection.settimeout(settle)
    return received


# --- the token check ---------------------------------------------------------------------------


async def test_only_requests_with_the_token_reach_sandbox_agent(gate: Gate) -> None:
    before = (await report(gate))["requests"]
    async with httpx.AsyncClient(base_url=gate.url, trust_env=False) as http:
        refused = [
            await http.get("/v1/health"),
            await http.get("/v1/health", headers=bearer("wrong")),
            await http.get("/v1/health", headers={"Authorization": f"bearer {TOKEN}"}),
            await http.get("/v1/health", headers={"Authorization": TOKEN}),
            await http.post("/go", headers=bearer(TOKEN[:-1]), content=b"x" * 100_000),
        ]
        twice = raw_exchange(
            gate.port,
            f"GET /v1/health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Authorization: Bearer {TOKEN}\r\n\r\n".encode(),
        )
        accepted = await http.get("/v1/health", headers=bearer())
    for answer in refused:
        # sandbox-agent's own answer to a missing or wrong token.
        assert answer.status_code == 401
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["type"] == "urn:sandbox-agent:error:token_invalid"
    assert twice.startswith(b"HTTP/1.1 401 ")
    assert (accepted.status_code, accepted.json()) == (200, {"status": "ok"})
    # /report itself counts once: only the accepted health check came in between.
    assert (await report(gate))["requests"] == before + 2


async def test_the_token_is_on_no_command_line_and_sandbox_agent_never_sees_it(
    gate: Gate,
) -> None:
    [child] = gate.child_pids()
    for pid in (gate.process.pid, child):
        assert TOKEN.encode() not in await trio.Path(f"/proc/{pid}/cmdline").read_bytes()
    # The command's environment is without it; so are the requests that reach it.
    assert TOKEN.encode() not in await trio.Path(f"/proc/{child}/environ").read_bytes()
    seen = await report(gate)
    assert seen["env"] is False
    assert isinstance(seen["headers"], dict)
    headers = {str(k).lower(): str(v) for k, v in seen["headers"].items()}
    assert "authorization" not in headers
    assert headers["connection"] == "close"
    assert TOKEN not in json.dumps(seen)
    assert TOKEN not in await trio.Path(gate.log).read_text()


# --- relaying ---------------------------------------------------------------------------------


async def test_a_stream_passes_through_as_it_is_written(gate: Gate) -> None:
    async with (
        httpx.AsyncClient(base_url=gate.url, headers=bearer(), trust_env=False) as http,
        http.stream("GET", "/events", headers={"Accept": "text/event-stream"}) as stream,
    ):
        assert stream.status_code == 200
        assert stream.headers["content-type"] == "text/event-stream"
        lines = stream.aiter_lines()
        with trio.fail_after(10):
            # The first event arrives while the second is not even written yet.
            assert [await anext(lines) for _ in range(3)] == ["id: 1", "data: first", ""]
            assert (await http.post("/go", content=b"")).status_code == 200
        # The stand-in ends its stream by closing (no length, no chunks): the gate closes at
        # once too, without waiting for the client to close first.
        with trio.fail_after(3):
            assert [line async for line in lines] == ["id: 2", "data: second", ""]


async def test_request_bodies_pass_through_whole(gate: Gate) -> None:
    body = os.urandom(300_000)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 70_000):
            yield body[start : start + 70_000]

    async with httpx.AsyncClient(base_url=gate.url, headers=bearer(), trust_env=False) as http:
        sized = await http.post("/echo", content=body)
        chunked = await http.post("/echo", content=chunks())
    assert (sized.status_code, sized.content) == (200, body)
    assert (chunked.status_code, chunked.content) == (200, body)


async def test_nothing_rides_on_a_checked_connection(gate: Gate) -> None:
    before = (await report(gate))["requests"]
    first = f"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n{_auth()}\r\n"
    second = "GET /report HTTP/1.1\r\nHost: x\r\n\r\n"
    received = raw_exchange(gate.port, (first + second + second).encode())
    # One answer, and the connection closed: the requests after the checked one went nowhere.
    assert received.count(b"HTTP/1.1 ") == 1
    assert received.startswith(b"HTTP/1.1 200 ")
    # The stand-in does not say so itself; the gate adds it.
    assert b"\r\nConnection: close\r\n" in received
    assert (await report(gate))["requests"] == before + 2


def _auth() -> str:
    return f"Authorization: Bearer {TOKEN}\r\n"


@pytest.mark.parametrize(
    "head",
    [
        f"GET /v1/health HTTP/1.1\r\nHost: x\r\n{_auth()}X: a\nConnection: keep-alive\r\n\r\n",
        f"GET /v1/health HTTP/1.1\r\nHost: x\r\n{_auth()}X: a\r\n folded\r\n\r\n",
        f"POST /echo HTTP/1.1\r\nHost: x\r\n{_auth()}Content-Length: 3\r\n"
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        f"POST /echo HTTP/1.1\r\nHost: x\r\n{_auth()}Content-Length: 1\r\n"
        "Content-Length: 2\r\n\r\n",
        f"POST /echo HTTP/1.1\r\nHost: x\r\n{_auth()}Content-Length: -1\r\n\r\n",
        f"GET /v1/health\r\nHost: x\r\n{_auth()}\r\n",
    ],
    ids=["bare-lf", "folded", "length-and-chunked", "two-lengths", "bad-length", "bad-line"],
)
async def test_heads_that_parsers_could_read_differently_are_refused(gate: Gate, head: str) -> None:
    before = (await report(gate))["requests"]
    received = raw_exchange(gate.port, head.encode())
    assert received.startswith(b"HTTP/1.1 400 ")
    assert (await report(gate))["requests"] == before + 1


def test_a_huge_head_is_refused(gate: Gate) -> None:
    head = f"GET /v1/health HTTP/1.1\r\n{_auth()}X: {'a' * 100_000}\r\n\r\n"
    assert raw_exchange(gate.port, head.encode()).startswith(b"HTTP/1.1 431 ")


# --- the gate's life ----------------------------------------------------------------------------


def test_a_request_waits_while_sandbox_agent_starts(tmp_path: Path) -> None:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    upstream = free_ephemeral_port()
    late = f'sleep 1; exec "{sys.executable}" "{script}" {upstream}'
    gate = start_gate(tmp_path, ["sh", "-c", late], upstream=upstream)
    try:
        assert wait_for(gate, token=None).status_code == 401
        started = time.monotonic()
        answer = httpx.get(gate.url + "/v1/health", headers=bearer(), trust_env=False, timeout=10)
        assert (answer.status_code, answer.json()) == (200, {"status": "ok"})
        assert time.monotonic() - started < 5
    finally:
        stop(gate)


def test_a_sandbox_agent_that_does_not_listen_gets_a_503(tmp_path: Path) -> None:
    gate = start_gate(tmp_path, ["sleep", "60"], options=("--upstream-wait", "0.3"))
    try:
        assert wait_for(gate, token=None).status_code == 401
        answer = httpx.get(gate.url + "/v1/health", headers=bearer(), trust_env=False)
        assert answer.status_code == 503
        assert answer.json()["detail"] == "sandbox-agent is not listening (yet)"
    finally:
        stop(gate)


def test_the_gate_ends_with_its_command_and_passes_signals_on(tmp_path: Path) -> None:
    gate = start_gate(tmp_path, ["sh", "-c", "exit 7"])
    assert gate.process.wait(STARTUP) == 7

    marker = tmp_path / "terminated"
    script = f"trap 'echo term > {marker}; exit 0' TERM; while :; do sleep 0.05; done"
    gate = start_gate(tmp_path, ["sh", "-c", script])
    try:
        assert wait_for(gate, token=None).status_code == 401
        gate.process.send_signal(signal.SIGTERM)
        assert gate.process.wait(STARTUP) == 0
        assert marker.read_text() == "term\n"
    finally:
        stop(gate)


def test_without_a_token_the_gate_refuses_to_start(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    for token in (None, ""):
        gate = start_gate(tmp_path, ["touch", str(marker)], token=token)
        assert gate.process.wait(STARTUP) == 64
        assert "ANYCODE_AGENT_TOKEN is not set" in gate.log.read_text()
    assert not marker.exists()


def test_a_listen_port_in_use_is_reported(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [sys.executable, "-I", agent_gate.__file__, "--listen", f"127.0.0.1:{port}"]
        argv += ["--upstream-port", "1", "--", "touch", str(marker)]
        done = subprocess.run(
            argv,
            env={agent_gate.TOKEN_VARIABLE: TOKEN, "PATH": os.defpath},
            capture_output=True,
            timeout=STARTUP,
            check=False,
        )
    assert done.returncode == 1
    # What the local provider looks for to try another port.
    assert b"in use" in done.stderr
    assert not marker.exists()


# --- the image's copy -------------------------------------------------------------------------


def test_the_image_runs_the_gate_from_its_one_source() -> None:
    """The image gets anycode_actors/sandboxes/agent_gate.py itself, copied into its build
    context by docker/build-image.sh (and counted in the build hash), so the two cannot drift."""
    build = (REPO / "docker" / "build-image.sh").read_text()
    assert 'cp "$here/../anycode_actors/sandboxes/agent_gate.py" "$scratch/agent_gate.py"' in build
    assert ".build/agent_gate.py; do" in build
    dockerfile = (REPO / "docker" / "Dockerfile.agent").read_text()
    assert "COPY .build/agent_gate.py /usr/local/lib/anycode/agent_gate.py" in dockerfile
    entrypoint = (REPO / "docker" / "entrypoint.sh").read_text()
    assert "exec python3 /usr/local/lib/anycode/agent_gate.py" in entrypoint
    assert Path(agent_gate.__file__).read_text().startswith('"""The agent gate')
