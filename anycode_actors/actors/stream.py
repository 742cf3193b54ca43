"""The stream actor: one per session, it owns the connection to the agent.

It opens the agent session for the session's sandbox (`anycode_actors.agents.open_session`, which
picks the protocol the config names and starts or reattaches the ACP session), and then does two
things until the session actor stops it: it forwards every normalized, numbered agent event into
the session actor's inbox, and it carries out the session actor's commands (prompt, permission
answers, cancel). Reconnects and resume-without-loss live in the transport the session opens (the
SSE stream resumes with Last-Event-ID), so a restarted daemon can reattach from the last stored
cursor and sequence number.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Final, Protocol

import trio

from anycode_actors.agents import (
    AgentEvent,
    AgentSession,
    PermissionMode,
    Resume,
    open_session,
)
from anycode_actors.agents.events import PromptFile
from anycode_actors.config import AgentConfig, SandboxConfig
from anycode_actors.errors import AgentError
from anycode_actors.sandboxes.base import AgentProcess, SandboxHandle, SandboxProvider
from anycode_actors.steps import step
from supervisors import Actor, ChildSpec, Restart, current_child

log = logging.getLogger(__name__)

# How long opening the agent (health, initialize, session/new) may take before the session fails.
CONNECT_TIMEOUT: Final = 120.0
STREAM_INBOX: Final = 16
#: The most agent events one `AgentEventsArrived` carries. Small: the session merges the reports
#: queued in its inbox before it stores them, so a bigger report would save little, and this
#: bounds what a session that cannot keep up holds in its inbox (its size times this).
EVENTS_PER_REPORT: Final = 16


# --- commands from the session actor --------------------------------------------------------


@dataclass(frozen=True)
class Prompt:
    text: str
    files: tuple[PromptFile, ...] = ()  # already in the sandbox; see AcpSession.prompt


@dataclass(frozen=True)
class Respond:
    key: str
    option_id: str | None  # None answers "cancelled"


@dataclass(frozen=True)
class CancelTurn:
    # Set once the agent has been told (or telling it failed): the session actor waits for it
    # before it stops the stream, which would otherwise cut the cancel off.
    done: trio.Event | None = None


StreamCommand = Prompt | Respond | CancelTurn


# --- reports to the session actor -----------------------------------------------------------


@dataclass(frozen=True)
class StreamReady:
    agent_session_id: str
    agent_name: str
    # How the agent's permission requests are answered: by the user (buttons), or by a policy
    # of the agent's side that the user should be told about.
    permissions: PermissionMode
    # Whether the agent can load the session in a new sandbox (None: not learnt).
    can_load: bool | None = None


@dataclass(frozen=True)
class AgentEventsArrived:
    """Agent events in delivery order: the one the stream waited for and every one queued right
    behind it (at most `EVENTS_PER_REPORT`), so a fast agent costs one inbox message per burst,
    not one per event."""

    events: tuple[AgentEvent, ...]


@dataclass(frozen=True)
class StreamEnded:
    """The connection is gone; `error` says why when it was not asked to stop."""

    error: str | None


StreamReport = StreamReady | AgentEventsArrived | StreamEnded


class ReportSink(Protocol):
    """Where reports go: the session actor's inbox (which accepts more than reports)."""

    async def send(self, report: StreamReport, /) -> None: ...


class StreamActor(Actor[StreamCommand]):
    """Owns one agent connection; talks to its session actor only through memory channels.

    The connection lives in a helper task (`_connect`): it opens the agent session, reports
    `StreamReady`, then forwards the agent's events until their stream ends, and with it the
    actor. Commands wait in the inbox until the session is open, then go to it in order.
    """

    inbox_size = STREAM_INBOX

    def __init__(
        self,
        *,
        session_id: str,
        handle: SandboxHandle,
        provider: SandboxProvider,
        agent: AgentConfig,
        sandbox: SandboxConfig,
        reports: ReportSink,
        resume: Resume | None = None,
    ) -> None:
        super().__init__()
        self._session_id = session_id
        self._handle = handle
        self._provider = provider
        self._agent = agent
        self._sandbox = sandbox
        self._reports = reports
        self._resume = resume
        self._session: AgentSession | None = None
        self._opened = trio.Event()
        self._error: str | None = None

    def spec(
        self,
        id: str | None = None,
        *,
        # Temporary: a lost connection is the session actor's decision (it fails the session),
        # not something to retry blindly with a new ACP session and a lost conversation.
        restart: Restart = Restart.TEMPORARY,
        shutdown: float = 15.0,
    ) -> ChildSpec:
        name = id if id is not None else f"stream:{self._session_id[:8]}"
        return super().spec(name, restart=restart, shutdown=shutdown)

    async def setup(self) -> None:
        self.tasks.start_soon(self._connect)

    async def _connect(self) -> None:
        try:
            # Only opening is bounded; a session then runs as long as its watchdog allows. One
            # scope around the whole connection (deadline lifted once open) keeps the protocol's
            # nurseries properly nested inside it.
            with trio.CancelScope(deadline=trio.current_time() + CONNECT_TIMEOUT) as opening:
                async with open_session(
                    self._sandbox.protocol,
                    agent=self._agent,
                    handle=self._handle,
                    spawn=self._spawn,
                    session_id=self._session_id,
                    acpx_permissions=self._sandbox.acpx_permissions,
                    resume=self._resume,
                ) as opened:
                    opening.deadline = math.inf
                    step("opened", self._session_id)
                    self._session = opened.session
                    await self._reports.send(
                        StreamReady(
                            opened.agent_session_id,
                            opened.agent_name,
                            opened.permissions,
                            opened.can_load,
                        )
                    )
                    self._opened.set()
                    await self._forward_events(opened.session)
            if opening.cancelled_caught:
                self._error = f"the agent did not come up within {CONNECT_TIMEOUT:.0f} s"
        except AgentError as exc:
            self._error = str(exc)
        # The connection is over (its event stream ended, or it never opened), so is the
        # actor: the run ends though its reader may be waiting for a command.
        self.stop()
        self.tasks.cancel_scope.cancel()

    async def _spawn(self, argv: Sequence[str]) -> AgentProcess:
        """Start `argv` inside this session's sandbox (stdio and acpx agents)."""
        return await self._provider.exec(self._handle, argv)

    async def handle(self, command: StreamCommand) -> None:
        await self._opened.wait()
        session = self._session
        assert session is not None
        try:
            if isinstance(command, Prompt):
                if command.files:
                    await session.prompt(command.text, command.files)
                else:
                    await session.prompt(command.text)
            elif isinstance(command, Respond):
                if command.option_id is None:
                    await session.cancel_permission(command.key)
                else:
                    await session.respond_permission(command.key, command.option_id)
            else:
                await session.cancel()
        except AgentError as exc:
            # A stale permission answer or a prompt racing a turn end: report, go on.
            log.warning("session %s: %s", self._session_id[:8], exc)
        finally:
            if isinstance(command, CancelTurn) and command.done is not None:
                command.done.set()
        context = current_child()
        if context is not None:
            context.update(turn_running=session.turn_running)

    async def finish(self) -> None:
        with trio.move_on_after(5):
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self._reports.send(StreamEnded(self._error))

    async def _forward_events(self, session: AgentSession) -> None:
        context = current_child()
        shown: bool | None = None
        events = session.events
        async for first in events:
            batch = [first]
            with suppress(trio.WouldBlock, trio.EndOfChannel):
                while len(batch) < EVENTS_PER_REPORT:
                    batch.append(events.receive_nowait())
            await self._reports.send(AgentEventsArrived(tuple(batch)))
            if context is not None and session.turn_running is not shown:
                # The turn ends with an event, not a command: keep the tree's view current
                # (told of changes only: each update copies the actor's info).
                shown = session.turn_running
                context.update(turn_running=shown)


__all__ = [
    "CONNECT_TIMEOUT",
    "EVENTS_PER_REPORT",
    "STREAM_INBOX",
    "AgentEventsArrived",
    "CancelTurn",
    "Prompt",
    "ReportSink",
    "Respond",
    "Resume",
    "StreamActor",
    "StreamCommand",
    "StreamEnded",
    "StreamReady",
    "StreamReport",
]
