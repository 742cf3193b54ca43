"""A scripted sandbox-agent over real HTTP that serves any number of ACP servers and sessions from
one process, for the benchmarks (tests/bench.py): what the daemon reads from it costs the daemon
exactly what a real sandbox-agent's stream would, while the agent's side costs one process instead
of one per session.

It speaks the part of sandbox-agent 0.4.x that the daemon uses (anycode_actors/agents/
sandbox_agent.py documents it): `GET /v1/health`; `POST /v1/acp/{id}` of JSON-RPC, a request
answered in the POST's body once the agent answers it (a whole turn for session/prompt), and
everything the agent says (answers included) broadcast on `GET /v1/acp/{id}` as SSE with
increasing ids, replayed after `Last-Event-ID`, with a comment line after each `HEARTBEAT`
seconds of silence (sandbox-agent's heartbeat), and ended when its reader goes away. Every prompt
is answered with `words` text chunks "w000 ", "w001 ", … (one every `pace` seconds; 0: as fast
as the stream is read), then the end of the turn. No token is checked.

    python -m tests.fakes.sandbox_agent --words 100 --pace 0.01    # prints "port <n>", serves
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import trio

from tests.fakes._http import Served, serve_asgi

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


#: Seconds of silence after which a stream gets a comment line, as sandbox-agent's does (its
#: heartbeat every 15 s; see SSE_READ_TIMEOUT in anycode_actors/agents/sandbox_agent.py).
HEARTBEAT: Final = 15.0


def word(n: int) -> str:
    return f"w{n:03d}"


@dataclass
class _Server:
    """One ACP server: its event log and who waits for it to grow."""

    log: list[bytes] = field(default_factory=list)
    grew: trio.Event = field(default_factory=trio.Event)
    sessions: int = 0

    def emit(self, payload: dict[str, Any]) -> None:
        event_id = len(self.log) + 1
        data = json.dumps({"jsonrpc": "2.0", **payload}, separators=(",", ":"))
        self.log.append(f"id: {event_id}\ndata: {data}\n\n".encode())
        self.grew.set()
        self.grew = trio.Event()


class ScriptedSandboxAgent:
    """The ASGI app. `prompts` counts the prompts it was sent, `turns_done` the turns ended."""

    def __init__(self, nursery: trio.Nursery, *, words: int, pace: float) -> None:
        self._nursery = nursery
        self.words = words
        self.pace = pace
        self.servers: dict[str, _Server] = {}
        self.prompts = 0
        self.turns_done = 0
        self.turns_started: list[float] = []  # time.perf_counter() as each turn began

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = (await receive())["type"]
                if event == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif event == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path == "/v1/health":
            await _respond(send, 200, b'{"status":"ok"}')
            return
        if not path.startswith("/v1/acp/"):
            await _respond(send, 404, b'{"title":"Not Found"}')
            return
        server_id = path.removeprefix("/v1/acp/")
        if scope["method"] == "GET":
            await self._stream(scope, receive, send, server_id)
        elif scope["method"] == "POST":
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            await self._post(send, server_id, json.loads(body))
        else:  # DELETE
            self.servers.pop(server_id, None)
            await _respond(send, 204, b"")

    async def _post(self, send: Send, server_id: str, message: dict[str, Any]) -> None:
        server = self.servers.setdefault(server_id, _Server())
        method, request_id = message.get("method"), message.get("id")
        if method is None or request_id is None:
            await _respond(send, 202, b"")
            return
        if method == "initialize":
            result: dict[str, Any] = {"protocolVersion": 1, "agentInfo": {"name": "scripted"}}
        elif method == "session/new":
            server.sessions += 1
            result = {"sessionId": f"{server_id}-s{server.sessions}"}
        elif method == "session/prompt":
            self.prompts += 1
            self.turns_started.append(time.perf_counter())
            session_id = message["params"]["sessionId"]
            for n in range(self.words):
                if self.pace:
                    await trio.sleep(self.pace)
                server.emit(
                    {
                        "method": "session/update",
                        "params": {
                            "sessionId": session_id,
                            "update": {
                                "sessionUpdate": "agent_message_chunk",
                                "content": {"type": "text", "text": word(n) + " "},
                            },
                        },
                    }
                )
                if not self.pace and n % 64 == 63:
                    await trio.lowlevel.checkpoint()
            result = {"stopReason": "end_turn"}
            self.turns_done += 1
        else:
            result = {}
        server.emit({"id": request_id, "result": result})
        answer = {"jsonrpc": "2.0", "id": request_id, "result": result}
        await _respond(send, 200, json.dumps(answer).encode())

    async def _stream(self, scope: Scope, receive: Receive, send: Send, server_id: str) -> None:
        server = self.servers.get(server_id)
        if server is None:
            await _respond(send, 404, b'{"title":"Not Found"}')
            return
        headers = dict(scope["headers"])
        last = headers.get(b"last-event-id")
        position = int(last) if last and last.isdigit() else 0
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        async with trio.open_nursery() as nursery:
            # A reader that went away ends the stream here, as it does in sandbox-agent.
            nursery.start_soon(_until_disconnected, receive, nursery.cancel_scope)
            while True:
                if position < len(server.log):
                    chunk = b"".join(server.log[position:])
                    position = len(server.log)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    continue
                with trio.move_on_after(HEARTBEAT) as quiet:
                    await server.grew.wait()
                if quiet.cancelled_caught:
                    # What sandbox-agent sends on a quiet stream, so that a reader can tell a
                    # quiet stream from a dead one.
                    await send(
                        {"type": "http.response.body", "body": b": ping\n\n", "more_body": True}
                    )


async def _until_disconnected(receive: Receive, stream: trio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    stream.cancel()


async def _respond(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json")] if body else []
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def serve(
    words: int,
    pace: float,
    *,
    task_status: trio.TaskStatus[tuple[Served, ScriptedSandboxAgent]] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with trio.open_nursery() as nursery:
        app = ScriptedSandboxAgent(nursery, words=words, pace=pace)
        served = await nursery.start(serve_asgi, app)
        task_status.started((served, app))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--words", type=int, default=100)
    parser.add_argument("--pace", type=float, default=0.0)
    args = parser.parse_args()

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            served, _ = await nursery.start(serve, args.words, args.pace)
            print(f"port {served.port}", flush=True)
            await trio.sleep_forever()

    try:
        trio.run(run)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
