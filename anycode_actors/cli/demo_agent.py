"""A tiny ACP agent for `anycode demo`, and a readable example of the Agent Client Protocol.

Run it as `python -m anycode_actors.cli.demo_agent`. It speaks ACP version 1 over stdio:
JSON-RPC 2.0, one message per line (NDJSON), requests from the client on stdin, everything it
says on stdout. It needs nothing but the standard library and runs no model; every answer is
scripted:

    client → initialize                      ← {protocolVersion: 1, agentInfo: {name: ...}}
    client → session/new {cwd}               ← {sessionId}
    client → session/prompt {prompt}
        agent → session/update agent_message_chunk  (the answer, a few words at a time)
        agent → session/update tool_call            ("Write outbox/hello.md", kind edit)
        agent → session/request_permission          (allow / allow for the session / reject)
        client → {outcome: selected optionId | cancelled}
        agent → session/update tool_call_update     (completed, or failed when rejected)
        agent → session/update agent_message_chunk  (a closing sentence)
                                             ← {stopReason: "end_turn"}
    client → session/cancel (notification)   the turn ends with stopReason "cancelled"

Files for the user go to the outbox: `outbox/` in the workspace, which is /workspace/outbox inside
a sandbox and `<session folder>/workspace/outbox` under the local provider. The daemon uploads
what it finds there into the chat when a turn ends.

It is synchronous on purpose: one loop reads stdin, and while a turn waits (between chunks, or for
the permission answer) it keeps reading, so a `session/cancel` is noticed at once.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Final

from anycode_actors import __version__

PROTOCOL_VERSION: Final = 1
AGENT_NAME: Final = "anycode-demo-agent"
#: Seconds between two chunks of the streamed answer.
CHUNK_DELAY: Final = 0.08
#: Words per `agent_message_chunk`.
CHUNK_WORDS: Final = 3
OUTBOX: Final = "outbox"
REPORT_NAME: Final = "hello.md"

# JSON-RPC error codes.
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602

#: What the agent offers when it asks to write the file, in the order the buttons appear.
PERMISSION_OPTIONS: Final = (
    {"optionId": "allow", "name": "Allow", "kind": "allow_once"},
    {"optionId": "allow_always", "name": "Always allow", "kind": "allow_always"},
    {"optionId": "reject", "name": "Reject", "kind": "reject_once"},
)
ALLOWING: Final = frozenset({"allow", "allow_always"})

INTRO: Final = (
    "Hello! I am the anycode demo agent, a tiny ACP agent that runs without a model. "
    "You asked: “{prompt}”. "
    "I stream this answer a few words at a time, the way a real coding agent does, "
    "and the daemon turns the pieces into message edits. "
)
ASKING: Final = "Next I would like to write a short report into the outbox, so I ask you first."
NOT_ASKING: Final = (
    "Next I write a short report into the outbox; you allowed that for this session."
)
ALLOWED: Final = (
    "Done: outbox/{name} is written. The daemon uploads whatever is in the outbox when my "
    "turn ends. Send a message to talk to me again, or /cancel to end the session."
)
REJECTED: Final = "Understood: I did not write the file. Send a message to try again."
REPORT: Final = """\
# Hello from the anycode demo agent

You asked: {prompt}

This file was written by `anycode_actors.cli.demo_agent`, a scripted ACP agent, after you
allowed it. Anything an agent leaves in `/workspace/outbox` reaches the chat as a file when its turn
ends.

- session: `{session}`
- written at: {now}
"""


class Cancelled(Exception):
    """The client sent session/cancel for the running turn."""


@dataclass
class Session:
    id: str
    workspace: Path
    always_allowed: bool = False
    turns: int = 0


@dataclass
class DemoAgent:
    """One agent process: reads `stdin` (a binary stream), writes `stdout`."""

    stdin: BinaryIO
    stdout: BinaryIO
    delay: float = CHUNK_DELAY
    sessions: dict[str, Session] = field(default_factory=dict)
    _buffer: bytes = b""
    _eof: bool = False
    # Messages read while a turn waited for something else; handled after the turn.
    _backlog: deque[dict[str, Any]] = field(default_factory=deque)
    _next_id: int = 0
    _answers: dict[int, dict[str, Any]] = field(default_factory=dict)
    _turn: str | None = None  # the session whose turn is running
    _cancelled: bool = False

    # --- the loop -----------------------------------------------------------------------------

    def serve(self) -> None:
        """Handle messages until stdin ends."""
        while True:
            message = self._backlog.popleft() if self._backlog else self._receive(None)
            if message is None:
                return
            self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        method = message.get("method")
        params = message.get("params") or {}
        if "id" in message and method is not None:
            handler = self._handlers().get(method)
            if handler is None:
                self._error(message["id"], METHOD_NOT_FOUND, f"{method} is not supported")
                return
            handler(message["id"], params)
        elif method == "session/cancel":
            pass  # no turn is running: nothing to cancel
        # Other notifications, and answers to requests nobody waits for, need nothing.

    def _handlers(self) -> dict[str, Any]:
        return {
            "initialize": self._initialize,
            "session/new": self._new_session,
            "session/prompt": self._prompt,
        }

    # --- requests -----------------------------------------------------------------------------

    def _initialize(self, request_id: Any, params: dict[str, Any]) -> None:
        self._result(
            request_id,
            {
                "protocolVersion": PROTOCOL_VERSION,
                "agentCapabilities": {
                    "loadSession": False,
                    "promptCapabilities": {"image": False, "audio": False},
                },
                "agentInfo": {"name": AGENT_NAME, "version": __version__},
                "authMethods": [],
            },
        )

    def _new_session(self, request_id: Any, params: dict[str, Any]) -> None:
        cwd = params.get("cwd")
        if not isinstance(cwd, str) or not os.path.isabs(cwd):
            self._error(request_id, INVALID_PARAMS, "cwd must be an absolute path")
            return
        session = Session(f"demo-{os.urandom(4).hex()}", workspace_of(Path(cwd)))
        self.sessions[session.id] = session
        self._result(request_id, {"sessionId": session.id})

    def _prompt(self, request_id: Any, params: dict[str, Any]) -> None:
        session = self.sessions.get(str(params.get("sessionId")))
        if session is None:
            self._error(request_id, INVALID_PARAMS, "unknown sessionId")
            return
        if self._turn is not None:
            self._error(request_id, INVALID_PARAMS, "a turn is already running")
            return
        text = " ".join(
            block["text"]
            for block in params.get("prompt") or ()
            if isinstance(block, dict) and block.get("type") == "text"
        ).strip()
        self._turn, self._cancelled = session.id, False
        session.turns += 1
        try:
            stop_reason = self._run_turn(session, text)
        except Cancelled:
            stop_reason = "cancelled"
        finally:
            self._turn = None
        self._result(request_id, {"stopReason": stop_reason})

    # --- the scripted turn --------------------------------------------------------------------

    def _run_turn(self, session: Session, prompt: str) -> str:
        intro = INTRO.format(prompt=prompt or "nothing")
        self._stream(session, intro + (NOT_ASKING if session.always_allowed else ASKING))
        call_id = f"call-{session.turns}"
        target = session.workspace / OUTBOX / REPORT_NAME
        content = REPORT.format(
            prompt=prompt or "nothing",
            session=session.id,
            now=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        self._update(
            session,
            {
                "sessionUpdate": "tool_call",
                "toolCallId": call_id,
                "title": f"Write {OUTBOX}/{REPORT_NAME}",
                "kind": "edit",
                "status": "pending",
                "locations": [{"path": str(target)}],
                "content": [
                    {"type": "diff", "path": str(target), "oldText": None, "newText": content}
                ],
            },
        )
        # "Always allow" earlier in this session means the agent does not ask again.
        choice = (
            "allow_always" if session.always_allowed else self._ask_permission(session, call_id)
        )
        if choice not in ALLOWING:
            self._update(
                session,
                {
                    "sessionUpdate": "tool_call_update",
                    "toolCallId": call_id,
                    "status": "failed",
                    "content": [_text_content("The user rejected the write.")],
                },
            )
            self._stream(session, "\n\n" + REJECTED)
            return "end_turn"
        session.always_allowed = session.always_allowed or choice == "allow_always"
        self._update(
            session,
            {"sessionUpdate": "tool_call_update", "toolCallId": call_id, "status": "in_progress"},
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
        self._update(
            session,
            {
                "sessionUpdate": "tool_call_update",
                "toolCallId": call_id,
                "status": "completed",
                "rawOutput": f"wrote {len(content.encode())} bytes",
            },
        )
        self._stream(session, "\n\n" + ALLOWED.format(name=REPORT_NAME))
        return "end_turn"

    def _stream(self, session: Session, text: str) -> None:
        """Send `text` as agent_message_chunk updates of a few words each, with pauses."""
        words = text.split(" ")
        for start in range(0, len(words), CHUNK_WORDS):
            piece = " ".join(words[start : start + CHUNK_WORDS])
            if start + CHUNK_WORDS < len(words):
                piece += " "
            self._update(
                session,
                {
                    "sessionUpdate": "agent_message_chunk",
                    "content": {"type": "text", "text": piece},
                },
            )
            self._pause(self.delay)

    def _ask_permission(self, session: Session, call_id: str) -> str | None:
        """The optionId the user chose. Raises Cancelled when the turn was cancelled meanwhile or
        the client answered "cancelled" (it must, for every pending request, when it cancels)."""
        request_id = self._request(
            "session/request_permission",
            {
                "sessionId": session.id,
                "toolCall": {"toolCallId": call_id, "title": f"Write {OUTBOX}/{REPORT_NAME}"},
                "options": list(PERMISSION_OPTIONS),
            },
        )
        while request_id not in self._answers:
            self._pause(None)
        answer = self._answers.pop(request_id)
        outcome = (answer.get("result") or {}).get("outcome") or {}
        if self._cancelled or outcome.get("outcome") != "selected":
            raise Cancelled
        option = outcome.get("optionId")
        return option if isinstance(option, str) else None

    def _pause(self, seconds: float | None) -> None:
        """Wait `seconds` (None: for the next message), handling what arrives meanwhile.

        Raises Cancelled once the client cancelled the running turn.
        """
        deadline = None if seconds is None else _now() + seconds
        while not self._cancelled:
            left = None if deadline is None else max(0.0, deadline - _now())
            message = self._receive(left)
            if message is None:
                if self._eof:
                    raise Cancelled  # the client is gone; end the turn
                if deadline is not None and _now() >= deadline:
                    return
                continue
            if "method" not in message and message.get("id") is not None:
                self._answers[message["id"]] = message
                if seconds is None:
                    return
            elif message.get("method") == "session/cancel":
                if (message.get("params") or {}).get("sessionId") == self._turn:
                    self._cancelled = True
            else:
                self._backlog.append(message)
            if seconds == 0:
                return
        raise Cancelled

    # --- the wire -----------------------------------------------------------------------------

    def _update(self, session: Session, update: dict[str, Any]) -> None:
        self._send(
            {"method": "session/update", "params": {"sessionId": session.id, "update": update}}
        )

    def _request(self, method: str, params: dict[str, Any]) -> int:
        request_id = self._next_id
        self._next_id += 1
        self._send({"id": request_id, "method": method, "params": params})
        return request_id

    def _result(self, request_id: Any, result: dict[str, Any]) -> None:
        self._send({"id": request_id, "result": result})

    def _error(self, request_id: Any, code: int, message: str) -> None:
        self._send({"id": request_id, "error": {"code": code, "message": message}})

    def _send(self, message: dict[str, Any]) -> None:
        line = json.dumps({"jsonrpc": "2.0", **message}, ensure_ascii=False) + "\n"
        self.stdout.write(line.encode())
        self.stdout.flush()

    def _receive(self, timeout: float | None) -> dict[str, Any] | None:
        """The next message, or None after `timeout` seconds or at the end of input."""
        deadline = None if timeout is None else _now() + timeout
        while True:
            line, newline, rest = self._buffer.partition(b"\n")
            if newline or (self._eof and line):
                self._buffer = rest
                message = _parse(line)
                if message is None:
                    continue  # a blank line, or something a client should never send
                return message
            if self._eof:
                return None
            left = None if deadline is None else max(0.0, deadline - _now())
            readable, _, _ = select.select([self.stdin], [], [], left)
            if not readable:
                return None
            chunk = os.read(self.stdin.fileno(), 65536)
            self._eof = not chunk
            self._buffer += chunk


def workspace_of(cwd: Path) -> Path:
    """The workspace a session works in: its cwd, or the folder above when the cwd is the clone
    of a repository (`/workspace/repo`; the workspace holds `.anycode/`, as in the image)."""
    if cwd.name == "repo" and (cwd.parent / ".anycode").is_dir():
        return cwd.parent
    return cwd


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def _text_content(text: str) -> dict[str, Any]:
    return {"type": "content", "content": {"type": "text", "text": text}}


def _now() -> float:
    return time.monotonic()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m anycode_actors.cli.demo_agent",
        description="A scripted ACP agent on stdin/stdout, for `anycode demo`.",
    )
    parser.add_argument(
        "--delay",
        type=float,
        default=CHUNK_DELAY,
        help=f"seconds between streamed chunks (default {CHUNK_DELAY})",
    )
    args = parser.parse_args(argv)
    agent = DemoAgent(sys.stdin.buffer, sys.stdout.buffer, delay=max(0.0, args.delay))
    try:
        agent.serve()
    except (BrokenPipeError, KeyboardInterrupt):
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
