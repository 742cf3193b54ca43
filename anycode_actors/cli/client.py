"""`anycode task | sessions | cancel`: the terminal client of the HTTP API (`[api]`).

    anycode task "fix the flaky test" --repo acme/web [--agent codex] [--follow]
    anycode sessions
    anycode cancel ID

The API's address and token come from `--url`/`--token` or `ANYCODE_API_URL` and
`ANYCODE_API_TOKEN` (the token is never printed). `task` starts a session and prints its id;
with `--follow` it streams the session's output live (text as it comes, `▸` lines for tool
calls), asks each permission request in the terminal (arrow keys and Enter, or the option's
number; without a terminal, a numbered line is read from stdin), reconnects with
`Last-Event-ID` if the connection drops (nothing is missed or repeated), and exits with the
session's outcome:

    0 completed · 1 failed · 2 the request was refused or the API unreachable · 3 cancelled

Ctrl+C stops following, not the session (`anycode cancel ID` does that).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final

import httpx
import trio
from rich.console import Console
from rich.table import Table
from rich.text import Text

from anycode_actors.cli.common import CommandIO, Subparsers

__all__ = ["EXIT_CODES", "add_client_commands", "choose_option"]

URL_ENV: Final = "ANYCODE_API_URL"
TOKEN_ENV: Final = "ANYCODE_API_TOKEN"
DEFAULT_URL: Final = "http://127.0.0.1:7080"
EXIT_CODES: Final = {"completed": 0, "failed": 1, "cancelled": 3}
REFUSED: Final = 2
RECONNECTS: Final = 5


class ApiRefused(Exception):
    """The API answered with an error, or could not be reached."""


def add_client_commands(subparsers: Subparsers) -> None:
    task = subparsers.add_parser(
        "task",
        help="start a task through the HTTP API (and follow it with --follow)",
        description="Start a session through the daemon's HTTP API ([api]). With --follow, "
        "stream its output, answer its permission requests here, and exit with its outcome: "
        "0 completed, 1 failed, 3 cancelled (2: refused or unreachable).",
    )
    task.add_argument("prompt", help="what the agent should do")
    task.add_argument("--repo", help="a repository to work on: owner/name or a URL")
    task.add_argument("--agent", help="the agent to run (default: the daemon's default agent)")
    task.add_argument("--follow", "-f", action="store_true", help="stream it until it ends")
    _connection(task)
    task.set_defaults(handler=_task)

    sessions = subparsers.add_parser(
        "sessions", help="list your API sessions", description="List your API sessions."
    )
    _connection(sessions)
    sessions.set_defaults(handler=_sessions)

    cancel = subparsers.add_parser(
        "cancel", help="cancel an API session", description="Cancel an API session by its id."
    )
    cancel.add_argument("id", help="the session id")
    _connection(cancel)
    cancel.set_defaults(handler=_cancel)


def _connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help=f"the API's address (default: ${URL_ENV} or {DEFAULT_URL})")
    parser.add_argument("--token", help=f"your API token (default: ${TOKEN_ENV})")


def _client(args: argparse.Namespace, io: CommandIO) -> httpx.AsyncClient:
    url = args.url or io.environ.get(URL_ENV) or DEFAULT_URL
    token = args.token or io.environ.get(TOKEN_ENV, "")
    if not token:
        raise ApiRefused(f"no API token: set {TOKEN_ENV} or pass --token")
    return httpx.AsyncClient(
        base_url=url.rstrip("/"),
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(30, read=None),
    )


def _run(io: CommandIO, main: Callable[[], Any]) -> int:
    try:
        return int(trio.run(main))
    except ApiRefused as refused:
        io.err.print(Text(f"✗ {refused}", style="bold red"))
        return REFUSED
    except KeyboardInterrupt:
        return 130


async def _call(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    try:
        response = await client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise ApiRefused(f"cannot reach the API at {client.base_url}: {exc}") from None
    if response.status_code >= 400:
        try:
            message = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        raise ApiRefused(f"{response.status_code}: {message}")
    return response.json()


# --- anycode sessions / cancel --------------------------------------------------------------------


def _sessions(args: argparse.Namespace, io: CommandIO) -> int:
    async def main() -> int:
        async with _client(args, io) as client:
            listed = (await _call(client, "GET", "/v1/sessions"))["sessions"]
        if not listed:
            io.out.print("No sessions.")
            return 0
        table = Table("id", "status", "owner", "agent", "created", "prompt", box=None)
        for s in listed:
            table.add_row(
                s["id"], s["status"], s["owner"], s["agent"], s["created_at"][:19], s["prompt"]
            )
        io.out.print(table)
        return 0

    return _run(io, main)


def _cancel(args: argparse.Namespace, io: CommandIO) -> int:
    async def main() -> int:
        async with _client(args, io) as client:
            await _call(client, "DELETE", f"/v1/sessions/{args.id}")
        io.out.print(f"Cancelling session {args.id}.")
        return 0

    return _run(io, main)


# --- anycode task ---------------------------------------------------------------------------------


def _task(args: argparse.Namespace, io: CommandIO) -> int:
    body = {"prompt": args.prompt}
    if args.agent:
        body["agent"] = args.agent
    if args.repo:
        body["repo"] = args.repo

    async def main() -> int:
        async with _client(args, io) as client:
            session = await _call(client, "POST", "/v1/sessions", json=body)
            io.err.print(
                Text(f"Session {session['id']} ({session['agent']}) started.", style="dim")
            )
            if not args.follow:
                io.out.print(session["id"])
                return 0
            try:
                return await Follower(client, session["id"], io.out).run()
            except KeyboardInterrupt:
                io.err.print(f"\nStopped following; cancel with: anycode cancel {session['id']}")
                return 130

    return _run(io, main)


class Follower:
    """Streams one session's events to the terminal and asks its permissions."""

    def __init__(self, client: httpx.AsyncClient, session_id: str, out: Console) -> None:
        self.client = client
        self.session_id = session_id
        self.out = out
        self.last_id = ""
        self.asked: set[str] = set()
        self.tools: set[str] = set()
        self.at_line_start = True

    async def run(self) -> int:
        failures = 0
        while True:
            try:
                outcome = await self._stream()
            except (httpx.TransportError, httpx.RemoteProtocolError) as exc:
                failures += 1
                if failures > RECONNECTS:
                    raise ApiRefused(f"the event stream keeps failing: {exc}") from None
                await trio.sleep(min(2.0**failures / 4, 5.0))
                continue
            if outcome is not None:
                return outcome
            failures = 0

    async def _stream(self) -> int | None:
        """Read the stream until the session ends (its exit code) or the server closes it
        (None: reconnect from the last event id)."""
        headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
        path = f"/v1/sessions/{self.session_id}/events"
        async with self.client.stream("GET", path, headers=headers) as response:
            if response.status_code >= 400:
                await response.aread()
                raise ApiRefused(f"{response.status_code}: {response.text[:200]}")
            fields: dict[str, str] = {}
            async for line in response.aiter_lines():
                if line:
                    name, _, value = line.partition(":")
                    if name:
                        fields[name] = value[1:] if value.startswith(" ") else value
                    continue
                outcome = await self._event(fields)
                fields = {}
                if outcome is not None:
                    return outcome
        return None

    async def _event(self, fields: dict[str, str]) -> int | None:
        if "data" not in fields:
            return None
        if "id" in fields:
            self.last_id = fields["id"]
        kind, data = fields.get("event", "message"), json.loads(fields["data"])
        if kind == "text_delta":
            self._write(data["data"]["text"])
        elif kind == "tool_call":
            call = data["data"]
            if call.get("title") and call["tool_call_id"] not in self.tools:
                self.tools.add(call["tool_call_id"])
                self._line(Text(f"▸ {call['title']}", style="cyan"))
        elif kind == "state":
            await self._ask(data["pending"])
        elif kind == "end":
            status = data["status"]
            style = "green" if status == "completed" else "red"
            words = f"Session {status}" + (f": {data['reason']}" if data.get("reason") else "")
            self._line(Text(words, style=f"bold {style}"))
            for file in data.get("files", []):
                self._line(Text(f"📎 {file['name']} ({file['size']} bytes)", style="dim"))
            return EXIT_CODES.get(status, 1)
        return None

    async def _ask(self, pending: list[dict[str, Any]]) -> None:
        for request in pending:
            if request["id"] in self.asked:
                continue
            self.asked.add(request["id"])
            self._line(Text(f"Permission requested: {request['title']}", style="bold yellow"))
            if request.get("input"):
                self._line(Text(f"  {request['input']}", style="dim"))
            labels = [option["name"] for option in request["options"]]
            index = await trio.to_thread.run_sync(
                choose_option, labels, self.out, abandon_on_cancel=True
            )
            path = f"/v1/sessions/{self.session_id}/permissions/{request['id']}"
            try:
                await _call(self.client, "POST", path, json={"option": index})
            except ApiRefused as refused:
                self._line(Text(f"  {refused}", style="red"))
            else:
                self._line(Text(f"  → {labels[index]}", style="dim"))

    def _write(self, text: str) -> None:
        self.out.print(text, end="", markup=False, highlight=False, soft_wrap=True)
        self.out.file.flush()
        if text:
            self.at_line_start = text.endswith("\n")

    def _line(self, text: Text) -> None:
        if not self.at_line_start:
            self.out.print()
        self.out.print(text, soft_wrap=True)
        self.at_line_start = True


def choose_option(labels: Sequence[str], out: Console) -> int:
    """Ask which of `labels` to pick: arrow keys and Enter (or a number) on a terminal, a
    number typed on a line otherwise. Returns the index."""
    if sys.stdin.isatty():
        try:
            return _choose_with_keys(labels, out)
        except OSError:
            pass
    for number, label in enumerate(labels, 1):
        out.print(f"  [{number}] {label}", markup=False)
    while True:
        out.print(f"Choose 1-{len(labels)}: ", end="")
        line = sys.stdin.readline()
        if not line:
            return len(labels) - 1  # end of input: the last option (the refusal)
        if line.strip().isdigit() and 1 <= int(line.strip()) <= len(labels):
            return int(line.strip()) - 1


def _choose_with_keys(labels: Sequence[str], out: Console) -> int:
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    chosen = 0

    def draw(first: bool) -> None:
        if not first:
            out.file.write(f"\x1b[{len(labels)}A")
        for index, label in enumerate(labels):
            marker = "❯" if index == chosen else " "
            style = "bold reverse" if index == chosen else ""
            out.file.write("\r\x1b[2K")
            out.print(Text(f"  {marker} {index + 1}. {label}", style=style))
        out.file.flush()

    out.print(Text("  ↑/↓ and Enter, or a number:", style="dim"))
    draw(True)
    try:
        tty.setcbreak(fd)
        while True:
            key = os.read(fd, 8)
            if key in (b"\r", b"\n"):
                return chosen
            if key.isdigit() and 1 <= int(key) <= len(labels):
                chosen = int(key) - 1
                draw(False)
                return chosen
            if key in (b"\x1b[A", b"\x1bOA", b"k"):
                chosen = (chosen - 1) % len(labels)
            elif key in (b"\x1b[B", b"\x1bOB", b"j"):
                chosen = (chosen + 1) % len(labels)
            elif key in (b"\x03", b"\x04"):
                raise KeyboardInterrupt
            draw(False)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
