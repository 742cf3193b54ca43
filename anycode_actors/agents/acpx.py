"""acpx: the headless ACP client CLI, run per prompt, its NDJSON read back as agent events.

With `--format json` acpx prints every JSON-RPC message of *both* directions, one per line: its own
requests (initialize, session/new or session/load, session/prompt), the agent's updates and
requests (session/request_permission, fs/*, terminal/*), and the answers each side gives. Here we
are not the ACP client, acpx is: we watch. `AcpxObserver` tells the directions apart (by method,
and for answers by which side has that request id open) and turns what it sees into the same
events as `AcpSession` produces.

Permissions are decided by acpx itself, by the policy flag from the config (`approve-all`,
`approve-reads`, `deny-all`): each `PermissionRequested` carries that policy so the user can be
told, and acpx's answer arrives as `PermissionResolved(by="policy")`. `respond_permission`
therefore raises PermissionAnswerError. (acpx 0.1.15: with deny-all it exits with code 5, which is
a normal end here; with approve-reads, writes are refused as non-interactive.)

One acpx session per `AcpxSession`: `acpx sessions new --name <name>` at open, one
`acpx prompt -s <name> --file -` process per turn (the prompt goes on stdin, so no text is ever
taken for a flag), `acpx cancel -s <name>` to cancel, `acpx sessions close <name>` at the end. A
follow-up prompt continues the same ACP session: acpx keeps it (its queue owner process, and
session/load). `acpx exec` would be simpler but is one-shot: a follow-up would start from scratch.

Processes are started by a `Spawn` callable, so the same code runs acpx locally (`LocalProcess`)
or inside a container (`docker exec -i`, `anycode_actors.sandboxes.docker_exec`).
"""

from __future__ import annotations

import logging
import secrets
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import trio

from anycode_actors.agents._nursery import open_nursery_bare
from anycode_actors.agents.acp import EVENTS_QUEUE_LIMIT, EventChannel, EventPump, Turn
from anycode_actors.agents.events import (
    CANCELLED,
    ERROR_STOP_REASON,
    PERMISSION_METHOD,
    UPDATE_METHOD,
    AgentEvent,
    ErrorEvent,
    PermissionRequested,
    PermissionResolved,
    PromptFile,
    Raw,
    ToolCall,
    ToolCallMemory,
    TurnEnded,
    normalize,
    permission_requested,
    turn_ended,
)
from anycode_actors.agents.jsonrpc import (
    ErrorResponse,
    LineSplitter,
    Malformed,
    Message,
    Notification,
    Request,
    RequestId,
    Response,
    decode_line,
)
from anycode_actors.config import AcpxPermissions, AgentConfig
from anycode_actors.errors import (
    AgentClosedError,
    AgentError,
    AgentRequestError,
    PermissionAnswerError,
    TurnInProgressError,
)
from anycode_actors.sandboxes.base import AgentProcess

__all__ = [
    "ACPX_PERMISSION_DENIED_EXIT",
    "AcpxLaunch",
    "AcpxObserver",
    "AcpxSession",
    "Spawn",
    "open_acpx_session",
]

logger = logging.getLogger(__name__)

Spawn: TypeAlias = Callable[[Sequence[str]], Awaitable[AgentProcess]]
"""Starts argv with piped stdio: `LocalProcess.start` or a sandbox provider's `exec`."""

#: acpx exits with 5 when its policy denied a permission; the turn itself ended normally.
ACPX_PERMISSION_DENIED_EXIT: Final = 5
#: Seconds for `acpx sessions new` (it starts the agent once: about 3 s here).
SESSION_NEW_TIMEOUT: Final = 120.0
#: Seconds for `acpx cancel` and `acpx sessions close`.
COMMAND_TIMEOUT: Final = 30.0
#: Seconds a prompt process gets to end after a cancel before it is stopped.
CANCEL_GRACE: Final = 10.0
READ_CHUNK: Final = 65536

# Methods the agent calls on its client; every other request comes from acpx.
_AGENT_METHOD_PREFIXES: Final = ("fs/", "terminal/")
_AGENT_METHODS: Final = frozenset({PERMISSION_METHOD, UPDATE_METHOD})


def _from_agent(method: str) -> bool:
    return method in _AGENT_METHODS or method.startswith(_AGENT_METHOD_PREFIXES)


@dataclass(frozen=True)
class AcpxLaunch:
    """How acpx is run for one agent: its policy, working folder, and which agent."""

    cwd: str
    policy: AcpxPermissions
    agent_name: str | None = None
    """A name acpx knows (claude, codex); else `agent_command` is given to acpx raw."""
    agent_command: tuple[str, ...] = ()
    executable: str = "acpx"

    def __post_init__(self) -> None:
        if self.agent_name is None and not self.agent_command:
            raise ValueError("acpx needs an agent name or an ACP command")

    @classmethod
    def from_config(cls, agent: AgentConfig, policy: AcpxPermissions, cwd: str) -> AcpxLaunch:
        return cls(
            cwd=cwd, policy=policy, agent_name=agent.acpx_agent, agent_command=agent.acp_command
        )

    def argv(self, *command: str) -> list[str]:
        """acpx's argv for `command` (e.g. "prompt", "-s", name, "--file", "-")."""
        args = [
            self.executable,
            "--format",
            "json",
            f"--{self.policy}",
            # No TTY here: what the policy would ask a person about is denied, not an error.
            "--non-interactive-permissions",
            "deny",
            "--cwd",
            self.cwd,
        ]
        if self.agent_name is not None:
            return [*args, self.agent_name, *command]
        return [*args, "--agent", shlex.join(self.agent_command), *command]


class AcpxObserver:
    """Turns acpx's two-way NDJSON into agent events (drafts, seq 0). Pure bookkeeping."""

    def __init__(self, policy: str) -> None:
        self.policy = policy
        self.session_id: str | None = None
        """The ACP session acpx opened or loaded (the same one for every turn)."""
        self.turn_ended: TurnEnded | None = None
        self._client_requests: dict[RequestId, str] = {}
        self._agent_requests: dict[RequestId, tuple[str, PermissionRequested | None]] = {}

    def observe(self, message: Message | Malformed) -> list[AgentEvent]:
        if isinstance(message, Malformed):
            if isinstance(message.value, Mapping):
                # acpx's own JSON lines ({"action": "session_ensured", ...}).
                return [Raw(kind="acpx", payload=dict(message.value))]
            return normalize(message)
        if isinstance(message, Request):
            if _from_agent(message.method):
                drafts = normalize(message)
                permission = None
                if message.method == PERMISSION_METHOD:
                    permission = permission_requested(message.id, message.params, self.policy)
                    drafts = [permission]
                self._agent_requests[message.id] = (message.method, permission)
                return drafts
            self._client_requests[message.id] = message.method
            return []
        if isinstance(message, Notification):
            if message.method == UPDATE_METHOD:
                return normalize(message)
            if _from_agent(message.method) or message.method == "session/cancel":
                return []
            return normalize(message)
        return self._answer(message)

    def _answer(self, message: Response | ErrorResponse) -> list[AgentEvent]:
        request_id = message.id
        if request_id is None:
            return normalize(message)
        from_acpx = request_id in self._client_requests
        to_agent = request_id in self._agent_requests
        if from_acpx and to_agent:
            # Both sides have this id open (acpx's session/prompt is id 2 or 3, and so may be
            # the agent's third permission request): the shape tells them apart.
            result = message.result if isinstance(message, Response) else None
            to_agent = not (isinstance(result, Mapping) and "stopReason" in result)
            from_acpx = not to_agent
        if to_agent:
            _, permission = self._agent_requests.pop(request_id)
            if permission is not None:
                return [self._resolved(permission, message)]
            return []
        if from_acpx:
            return self._answer_to_acpx(self._client_requests.pop(request_id), message)
        return normalize(message)

    def _resolved(
        self, permission: PermissionRequested, message: Response | ErrorResponse
    ) -> PermissionResolved:
        result = message.result if isinstance(message, Response) else None
        outcome = result.get("outcome") if isinstance(result, Mapping) else None
        if isinstance(outcome, Mapping) and outcome.get("outcome") == "selected":
            option_id = outcome.get("optionId")
            option = next((o for o in permission.options if o.option_id == option_id), None)
            return PermissionResolved(
                key=permission.key,
                outcome="selected",
                option_id=option_id if isinstance(option_id, str) else None,
                option_kind=option.kind if option else None,
                by="policy",
            )
        return PermissionResolved(key=permission.key, outcome="cancelled", by="policy")

    def _answer_to_acpx(self, method: str, message: Response | ErrorResponse) -> list[AgentEvent]:
        if isinstance(message, Response):
            if method == "session/prompt":
                self.turn_ended = turn_ended(message.result)
                return [self.turn_ended]
            if method in ("session/new", "session/load") and isinstance(message.result, Mapping):
                session_id = message.result.get("sessionId")
                if isinstance(session_id, str):
                    self.session_id = session_id
            return []
        if method == "session/load":
            return []  # acpx falls back to session/new when the agent cannot load the session
        error = message.error
        failure = AgentRequestError(method, error.code, error.message, error.data)
        events: list[AgentEvent] = [ErrorEvent(message=str(failure), code=error.code)]
        if method == "session/prompt":
            self.turn_ended = TurnEnded(stop_reason=ERROR_STOP_REASON, message=str(failure))
            events.append(self.turn_ended)
        return events


class AcpxSession:
    """One acpx session; the same caller API as `AcpSession` (permissions excepted)."""

    def __init__(
        self, launch: AcpxLaunch, spawn: Spawn, nursery: trio.Nursery, name: str, first_seq: int
    ) -> None:
        self.launch = launch
        self.name = name
        self._spawn = spawn
        self._nursery = nursery
        self._pump = EventPump(EVENTS_QUEUE_LIMIT, first_seq)
        self._session_id: str | None = None
        self._tools = ToolCallMemory()
        self._turn: Turn | None = None
        self._process: AgentProcess | None = None
        self._cancelled = False
        self._closed = False

    def __repr__(self) -> str:
        return f"AcpxSession({self.name!r}, policy={self.policy!r})"

    @property
    def policy(self) -> str:
        """Who decides permissions: acpx, by this policy (tell the user)."""
        return self.launch.policy

    @property
    def session_id(self) -> str | None:
        """The ACP session id, once acpx has opened it (after the first prompt)."""
        return self._session_id

    @property
    def events(self) -> EventChannel:
        return self._pump.receive

    @property
    def last_seq(self) -> int:
        return self._pump.last_seq

    @property
    def turn_running(self) -> bool:
        return self._turn is not None and not self._turn.done

    @property
    def pending_permissions(self) -> tuple[PermissionRequested, ...]:
        return ()

    async def prompt(self, text: str, files: Sequence[PromptFile] = ()) -> Turn:
        """acpx reads the prompt as text (``--file -``): files are named by their paths, which
        the caller has put in `text` already, so `files` adds nothing here."""
        if self._closed:
            raise AgentClosedError(f"acpx session {self.name} is closed")
        if self.turn_running:
            raise TurnInProgressError(
                f"acpx session {self.name} is still answering the previous prompt; "
                "wait for its TurnEnded event or cancel it first"
            )
        process = await self._spawn(self.launch.argv("prompt", "-s", self.name, "--file", "-"))
        turn = Turn()
        self._turn = turn
        self._process = process
        self._cancelled = False
        self._nursery.start_soon(self._run_turn, process, turn, text, name="acpx-prompt")
        return turn

    async def cancel(self) -> None:
        """Ask acpx to cancel the running prompt (acpx answers its own pending permission
        requests); stop the prompt process if acpx cannot."""
        if not self.turn_running:
            return
        self._cancelled = True
        try:
            result = await self._command("cancel", "-s", self.name)
        except AgentError as exc:
            logger.warning("acpx cancel failed (%s); stopping the prompt process", exc)
            result = []
        if not any(isinstance(v, Mapping) and v.get("cancelled") for v in result):
            logger.info("acpx cancelled no prompt; stopping the prompt process")
            if self._process is not None:
                await self._process.aclose()

    async def respond_permission(self, key: str, option_id: str) -> None:
        raise PermissionAnswerError(
            f"acpx answers permission requests itself, by its {self.policy} policy"
        )

    async def cancel_permission(self, key: str) -> None:
        await self.respond_permission(key, "")

    # --- internals ------------------------------------------------------------------------------

    async def _run_turn(self, process: AgentProcess, turn: Turn, text: str) -> None:
        try:
            await self._feed_prompt(process, text)
            # One observer per acpx process: its request ids are its own, and a finished turn's
            # process may still be printing while the next one starts.
            observer = AcpxObserver(self.policy)
            await self._read(process, turn, observer)
            code: int | None = None
            with trio.move_on_after(CANCEL_GRACE):
                code = await process.wait()
            if observer.turn_ended is None:
                if self._cancelled:
                    ended = TurnEnded(stop_reason=CANCELLED, message="acpx was stopped")
                else:
                    tail = process.stderr_tail().strip()[-2000:]
                    message = f"acpx exited with code {code} before the turn ended"
                    await self._pump.put(ErrorEvent(message=message, details=tail))
                    ended = TurnEnded(stop_reason=ERROR_STOP_REASON, message=message)
                await self._pump.put(ended)
                turn._finish(ended.stop_reason, ended.message)
            elif code not in (0, ACPX_PERMISSION_DENIED_EXIT, None):
                logger.info("acpx exited with code %s after the turn ended", code)
        finally:
            with trio.CancelScope(shield=True):
                await process.aclose()
            if not turn.done:
                turn._fail(AgentClosedError("the acpx session was closed"))

    async def _feed_prompt(self, process: AgentProcess, text: str) -> None:
        try:
            await process.send_all(text.encode())
            await process.close_stdin()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            logger.warning("acpx did not take the prompt: %r", exc)

    async def _read(self, process: AgentProcess, turn: Turn, observer: AcpxObserver) -> None:
        splitter = LineSplitter()
        while True:
            try:
                data = await process.receive_some(READ_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                data = b""
            lines = splitter.feed(data) if data else []
            if not data:
                last = splitter.finish()
                lines = [last] if last is not None else []
            for line in lines:
                if isinstance(line, bytes) and not line.strip():
                    continue
                message = decode_line(line) if isinstance(line, bytes) else line
                for event in observer.observe(message):
                    if observer.session_id is not None:
                        self._session_id = observer.session_id
                    await self._put(event)
                    if isinstance(event, TurnEnded):
                        # Done when acpx says so, not when its process has gone.
                        turn._finish(event.stop_reason, event.message)
            if not data:
                return

    async def _put(self, event: AgentEvent) -> None:
        if isinstance(event, ToolCall):
            event = self._tools.merge(event)
        elif isinstance(event, PermissionRequested):
            event = self._tools.fill_permission(event)
        await self._pump.put(event)

    async def _command(self, *command: str, bound: float = COMMAND_TIMEOUT) -> list[Any]:
        """Run a short acpx command; its JSON lines. Raises AgentError on failure."""
        process = await self._spawn(self.launch.argv(*command))
        values: list[Any] = []
        try:
            with trio.move_on_after(bound) as scope:
                await process.close_stdin()
                splitter = LineSplitter()
                while data := await process.receive_some(READ_CHUNK):
                    for line in splitter.feed(data):
                        if isinstance(line, bytes) and line.strip():
                            parsed = decode_line(line)
                            values.append(parsed.value if isinstance(parsed, Malformed) else parsed)
                code = await process.wait()
            if scope.cancelled_caught:
                raise AgentError(f"acpx {command[0]} did not finish within {bound:g} s")
            if code != 0:
                tail = process.stderr_tail().strip()[-2000:]
                raise AgentError(f"acpx {' '.join(command[:2])} exited with code {code}: {tail}")
        finally:
            with trio.CancelScope(shield=True):
                await process.aclose()
        return values

    async def _close(self) -> None:
        self._closed = True
        with trio.move_on_after(COMMAND_TIMEOUT + 5.0, shield=True):
            if self._process is not None:
                await self._process.aclose()
            try:
                await self._command("sessions", "close", self.name)
            except AgentError as exc:
                logger.warning("could not close acpx session %s: %s", self.name, exc)
        self._pump.finish()


@asynccontextmanager
async def open_acpx_session(
    launch: AcpxLaunch, spawn: Spawn, *, name: str | None = None, first_seq: int = 1
) -> AsyncIterator[AcpxSession]:
    """Create an acpx session (`acpx sessions new`) and close it at the end, even when
    cancelled (`acpx sessions close` also stops acpx's queue owner and the agent)."""
    async with open_nursery_bare() as nursery:
        session = AcpxSession(
            launch, spawn, nursery, name or f"anycode-{secrets.token_hex(4)}", first_seq
        )
        nursery.start_soon(session._pump.run, name="acpx-events")
        try:
            await session._command(
                "sessions", "new", "--name", session.name, bound=SESSION_NEW_TIMEOUT
            )
        except BaseException:
            session._pump.finish()
            nursery.cancel_scope.cancel()
            raise
        try:
            yield session
        finally:
            await session._close()
            nursery.cancel_scope.cancel()
