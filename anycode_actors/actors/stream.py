"""The stream actor: one per session, it owns the connection to the agent.

It opens the agent's protocol for the session's sandbox (sandbox-agent over HTTP + SSE, ACP over
stdio through `exec`, or acpx), starts or reattaches the ACP session, and then does two things
until the session actor stops it: it forwards every normalized, numbered agent event into the
session actor's inbox, and it carries out the session actor's commands (prompt, permission
answers, cancel). Reconnects and resume-without-loss live in the transport it opens (the SSE
stream resumes with Last-Event-ID), so a restarted daemon can reattach from the last stored
cursor and sequence number.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Final, Protocol

import trio

from anycode_actors.agents import (
    AcpxLaunch,
    AgentEvent,
    PermissionRequested,
    Turn,
    open_acpx_session,
    open_sandbox_agent_client,
    open_stdio_client,
)
from anycode_actors.config import AgentConfig, AgentProtocol, SandboxConfig
from anycode_actors.errors import AgentError
from anycode_actors.sandboxes.base import AgentProcess, SandboxHandle, SandboxProvider
from supervisors import ChildSpec, Restart, current_child

log = logging.getLogger(__name__)

# How long opening the agent (health, initialize, session/new) may take before the session fails.
CONNECT_TIMEOUT: Final = 120.0
STREAM_INBOX: Final = 16


class AgentSession(Protocol):
    """What the stream actor needs of an ACP session (AcpSession and AcpxSession both fit)."""

    @property
    def events(self) -> trio.MemoryReceiveChannel[AgentEvent]: ...

    @property
    def turn_running(self) -> bool: ...

    async def prompt(self, text: str) -> Turn: ...

    async def cancel(self) -> None: ...

    async def respond_permission(self, key: str, option_id: str) -> None: ...

    async def cancel_permission(self, key: str) -> None: ...


# --- commands from the session actor --------------------------------------------------------


@dataclass(frozen=True)
class Prompt:
    text: str


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


@dataclass(frozen=True)
class AgentEventArrived:
    event: AgentEvent


@dataclass(frozen=True)
class StreamEnded:
    """The connection is gone; `error` says why when it was not asked to stop."""

    error: str | None


StreamReport = StreamReady | AgentEventArrived | StreamEnded


class ReportSink(Protocol):
    """Where reports go: the session actor's inbox (which accepts more than reports)."""

    async def send(self, report: StreamReport, /) -> None: ...


@dataclass(frozen=True)
class Resume:
    """Where a reattached stream continues (a restarted daemon)."""

    agent_session_id: str
    last_seq: int
    cursor: str | None
    turn_running: bool
    permissions: Sequence[PermissionRequested] = ()


def sandbox_agent_server_id(session_id: str) -> str:
    """The sandbox-agent ACP server id of a session: derived, so a restart can find it."""
    return f"anycode-{session_id[:16]}"


class StreamActor:
    """Owns one agent connection; talks to its session actor only through memory channels."""

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
        self._session_id = session_id
        self._handle = handle
        self._provider = provider
        self._agent = agent
        self._sandbox = sandbox
        self._reports = reports
        self._resume = resume
        self._commands_in, self._commands = trio.open_memory_channel[StreamCommand](STREAM_INBOX)
        self.policy_note: str | None = None

    def spec(self) -> ChildSpec:
        # Temporary: a lost connection is the session actor's decision (it fails the session),
        # not something to retry blindly with a new ACP session and a lost conversation.
        return ChildSpec(
            id=f"stream:{self._session_id[:8]}",
            start=self.run,
            restart=Restart.TEMPORARY,
            shutdown=15.0,
            kind="actor",
        )

    async def send(self, command: StreamCommand) -> None:
        await self._commands_in.send(command)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        context = current_child()
        if context is not None:
            context.report_inbox(self._commands)
        task_status.started()
        error: str | None = None
        try:
            # Only opening is bounded; a session then runs as long as its watchdog allows. One
            # scope around the whole connection (deadline lifted once open) keeps the protocol's
            # nurseries properly nested inside it.
            with trio.CancelScope(deadline=trio.current_time() + CONNECT_TIMEOUT) as opening:
                async with self._connect() as opened:
                    opening.deadline = math.inf
                    await self._serve(opened)
            if opening.cancelled_caught:
                error = f"the agent did not come up within {CONNECT_TIMEOUT:.0f} s"
        except AgentError as exc:
            error = str(exc)
        finally:
            with trio.move_on_after(5, shield=True):
                with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self._reports.send(StreamEnded(error))

    async def _serve(self, opened: tuple[AgentSession, str, str]) -> None:
        session, agent_session_id, agent_name = opened
        await self._reports.send(StreamReady(agent_session_id, agent_name))
        context = current_child()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._forward_events, session, nursery.cancel_scope)
            async for command in self._commands:
                try:
                    if isinstance(command, Prompt):
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
                if context is not None:
                    context.update(turn_running=session.turn_running)

    async def _forward_events(self, session: AgentSession, scope: trio.CancelScope) -> None:
        context = current_child()
        async for event in session.events:
            await self._reports.send(AgentEventArrived(event))
            if context is not None:
                # The turn ends with an event, not a command: keep the tree's view current.
                context.update(turn_running=session.turn_running)
        # The agent's event stream ended (its SessionEnded was the last event): stop serving.
        scope.cancel()

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[tuple[AgentSession, str, str]]:
        """Open the protocol the config names; yield (session, agent session id, agent name)."""
        actor = self
        protocol: AgentProtocol = actor._sandbox.protocol
        handle = actor._handle
        resume = actor._resume
        first_seq = resume.last_seq + 1 if resume else 1
        if protocol == "sandbox-agent":
            assert handle.endpoint is not None, "a sandbox-agent sandbox has an endpoint"
            agent_id = actor._agent.sandbox_agent_id or "claude"
            async with open_sandbox_agent_client(
                handle.endpoint,
                token=handle.token or None,
                agent=agent_id,
                server_id=sandbox_agent_server_id(actor._session_id),
                attach=resume is not None,
                last_event_id=resume.cursor if resume else None,
                # The sandbox is destroyed right after: no DELETE, which may never answer.
                delete_on_close=False,
            ) as client:
                if resume is not None:
                    # Attach at once, before any replayed update can arrive for a session the
                    # client does not know yet; the agent behind the server is initialized.
                    session = client.attach_session(
                        resume.agent_session_id,
                        first_seq=first_seq,
                        turn_running=resume.turn_running,
                        permissions=resume.permissions,
                    )
                    yield session, session.session_id, agent_id
                else:
                    info = await client.initialize()
                    session = await client.new_session(handle.workdir, first_seq=first_seq)
                    yield session, session.session_id, info.agent_name
        elif protocol == "acp":
            process = await actor._provider.exec(handle, actor._agent.acp_command)
            async with open_stdio_client(process) as client:
                info = await client.initialize()
                session = await client.new_session(handle.workdir, first_seq=first_seq)
                yield session, session.session_id, info.agent_name
        else:
            launch = AcpxLaunch.from_config(
                actor._agent, actor._sandbox.acpx_permissions, handle.workdir
            )

            async def spawn(argv: Sequence[str]) -> AgentProcess:
                return await actor._provider.exec(handle, argv)

            async with open_acpx_session(
                launch, spawn, name=f"anycode-{actor._session_id[:12]}", first_seq=first_seq
            ) as acpx:
                actor.policy_note = acpx.policy
                yield acpx, acpx.session_id or acpx.name, "acpx"
