"""One agent session, whatever protocol carries it: `open_session` is the only place that knows
the protocols apart.

    async with open_session(
        config.sandbox.protocol,
        agent=config.agent("claude-code"),
        handle=handle,
        spawn=spawn,
        session_id=session.id,
        acpx_permissions=config.sandbox.acpx_permissions,
    ) as opened:
        await opened.session.prompt("fix the login bug")
        async for event in opened.session.events:
            ...

It opens sandbox-agent over HTTP + SSE (`open_sandbox_agent_client`), ACP over the stdio of a
process that `spawn` starts in the sandbox (`open_stdio_client`), or acpx (`open_acpx_session`),
starts or reattaches the ACP session, and yields an `OpenedSession`: the session behind the one
`AgentSession` interface, its id, the agent's name, and how its permission requests are answered
(`PermissionMode`), so the caller never needs to know which protocol it got.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Final, Protocol, TypeAlias

from anycode_actors.agents.acp import AcpClient, AcpSession, Turn, open_acp_client
from anycode_actors.agents.acpx import AcpxLaunch, Spawn, open_acpx_session
from anycode_actors.agents.events import AgentEvent, PermissionRequested, PromptFile
from anycode_actors.agents.sandbox_agent import (
    open_sandbox_agent_client,
    open_sandbox_agent_transport,
)
from anycode_actors.agents.stdio import open_stdio_client
from anycode_actors.config import AcpxPermissions, AgentConfig, AgentProtocol
from anycode_actors.errors import AgentError
from anycode_actors.sandboxes.base import SandboxHandle

#: Seconds for `session/load`: the agent reads its session back and replays it.
LOAD_SESSION_TIMEOUT: Final = 120.0


class EventSource(Protocol):
    """A session's events: a trio receive channel (iterate it, or `receive`) that also hands
    over an event already queued without waiting (`receive_nowait`, trio.WouldBlock when none
    is), so a reader can take a burst of events at once. `EventChannel` is one; so is a trio
    memory channel."""

    async def receive(self) -> AgentEvent: ...

    def receive_nowait(self) -> AgentEvent: ...

    def __aiter__(self) -> AsyncIterator[AgentEvent]: ...


class AgentSession(Protocol):
    """What a caller needs of an ACP session (AcpSession and AcpxSession both fit)."""

    @property
    def events(self) -> EventSource: ...

    @property
    def turn_running(self) -> bool: ...

    async def prompt(self, text: str, files: Sequence[PromptFile] = ()) -> Turn: ...

    async def cancel(self) -> None: ...

    async def respond_permission(self, key: str, option_id: str) -> None: ...

    async def cancel_permission(self, key: str) -> None: ...


@dataclass(frozen=True)
class AsksUser:
    """The agent asks the client about each permission request: the user answers it."""


@dataclass(frozen=True)
class AnswersByPolicy:
    """The agent's side answers its permission requests itself, by a fixed policy: nobody is
    asked, and each request's `PermissionResolved(by="policy")` tells what was decided."""

    decider: str  # who decides, as the user is told: "acpx"
    policy: str  # the policy it follows: "approve-all", "approve-reads", "deny-all"


PermissionMode: TypeAlias = AsksUser | AnswersByPolicy


@dataclass(frozen=True)
class Resume:
    """Where a reattached session continues (a restarted daemon)."""

    agent_session_id: str
    last_seq: int
    cursor: str | None
    turn_running: bool
    permissions: Sequence[PermissionRequested] = ()
    load: bool = False
    """The sandbox is a new one into which the agent's own session state was put back (see
    `anycode_actors.actors.checkpoint`): the agent is started afresh and asked to load the
    session (ACP `session/load`, https://agentclientprotocol.com/protocol/session-setup
    #loading-sessions) instead of being reattached. What the agent replays while loading is
    history the chat has shown already: it is not passed on."""
    prepared: bool = False
    """The warm pool opened this session (`prepare_session`) in a sandbox it has watched since:
    its sandbox-agent answered then, so attaching sends the prompt without asking
    `/v1/health` first (a sandbox-agent gone meanwhile fails the prompt's request instead)."""


@dataclass(frozen=True)
class OpenedSession:
    """An open agent session and what its caller needs to know about it."""

    session: AgentSession
    agent_session_id: str
    agent_name: str
    permissions: PermissionMode
    can_load: bool | None = None
    """Whether the agent can load this session in a new sandbox (ACP `loadSession`); None when
    the connection did not learn it (a reattached session)."""


def sandbox_agent_server_id(session_id: str) -> str:
    """The sandbox-agent ACP server id of a session: derived, so a restart can find it."""
    return f"anycode-{session_id[:16]}"


def acpx_session_name(session_id: str) -> str:
    """The acpx session name of a session: derived, so a restart can find it."""
    return f"anycode-{session_id[:12]}"


@dataclass(frozen=True)
class _Target:
    """What `open_session` was given, for the opener of the protocol it names."""

    agent: AgentConfig
    handle: SandboxHandle
    spawn: Spawn
    session_id: str
    acpx_permissions: AcpxPermissions
    resume: Resume | None

    @property
    def first_seq(self) -> int:
        return self.resume.last_seq + 1 if self.resume is not None else 1


async def load_session(client: AcpClient, cwd: str, resume: Resume, first_seq: int) -> AcpSession:
    """Reopen `resume.agent_session_id` in a freshly started agent with `session/load`
    (`AcpClient.load_session`: the history it replays is dropped). An agent that does not
    advertise `loadSession` raises AgentError."""
    assert client.agent is not None
    if not client.agent.capabilities.get("loadSession"):
        raise AgentError(f"{client.agent.agent_name} cannot load a session (no loadSession)")
    return await client.load_session(
        resume.agent_session_id, cwd, first_seq=first_seq, bound=LOAD_SESSION_TIMEOUT
    )


@asynccontextmanager
async def _open_sandbox_agent(target: _Target) -> AsyncIterator[OpenedSession]:
    handle, resume = target.handle, target.resume
    if handle.endpoint is None:
        raise AgentError("the sandbox has no sandbox-agent endpoint")
    agent_id = target.agent.sandbox_agent_id or "claude"
    async with open_sandbox_agent_client(
        handle.endpoint,
        token=handle.token or None,
        agent=agent_id,
        # Named after the session the sandbox was made for (its label), which is this session's
        # own id, or the pool's id for a sandbox taken from the pool (`prepare_session`).
        server_id=sandbox_agent_server_id(handle.session_id or target.session_id),
        attach=resume is not None and not resume.load,
        last_event_id=resume.cursor if resume and not resume.load else None,
        # The sandbox is destroyed right after: no DELETE, which may never answer.
        delete_on_close=False,
        check_health=resume is None or not resume.prepared,
    ) as client:
        if resume is not None and resume.load:
            info = await client.initialize()
            session = await load_session(client, handle.workdir, resume, target.first_seq)
            yield OpenedSession(session, session.session_id, info.agent_name, AsksUser(), True)
        elif resume is not None:
            # Attach at once, before any replayed update can arrive for a session the client
            # does not know yet; the agent behind the server is initialized.
            session = client.attach_session(
                resume.agent_session_id,
                first_seq=target.first_seq,
                turn_running=resume.turn_running,
                permissions=resume.permissions,
            )
            yield OpenedSession(session, session.session_id, agent_id, AsksUser())
        else:
            info = await client.initialize()
            session = await client.new_session(handle.workdir, first_seq=target.first_seq)
            can_load = bool(info.capabilities.get("loadSession"))
            yield OpenedSession(session, session.session_id, info.agent_name, AsksUser(), can_load)


@asynccontextmanager
async def _open_stdio(target: _Target) -> AsyncIterator[OpenedSession]:
    process = await target.spawn(target.agent.acp_command)
    async with open_stdio_client(process) as client:
        info = await client.initialize()
        if target.resume is not None and target.resume.load:
            session = await load_session(
                client, target.handle.workdir, target.resume, target.first_seq
            )
        else:
            session = await client.new_session(target.handle.workdir, first_seq=target.first_seq)
        can_load = bool(info.capabilities.get("loadSession"))
        yield OpenedSession(session, session.session_id, info.agent_name, AsksUser(), can_load)


@asynccontextmanager
async def _open_acpx(target: _Target) -> AsyncIterator[OpenedSession]:
    launch = AcpxLaunch.from_config(target.agent, target.acpx_permissions, target.handle.workdir)
    async with open_acpx_session(
        launch, target.spawn, name=acpx_session_name(target.session_id), first_seq=target.first_seq
    ) as acpx:
        yield OpenedSession(
            acpx,
            acpx.session_id or acpx.name,
            "acpx",
            AnswersByPolicy("acpx", acpx.policy),
            can_load=False,
        )


async def prepare_session(agent: AgentConfig, handle: SandboxHandle) -> Resume:
    """Start `agent` on the sandbox-agent of `handle` and open its ACP session (initialize,
    session/new in the handle's workdir), then let go of the connection and leave both running:
    `open_session(..., resume=<the returned Resume>)` later attaches to them without waiting
    for either, as a restarted daemon does. The server is named after `handle.session_id`.
    AgentError when the agent does not come up; the caller bounds the time."""
    if handle.endpoint is None:
        raise AgentError("the sandbox has no sandbox-agent endpoint")
    async with open_sandbox_agent_transport(
        handle.endpoint,
        token=handle.token or None,
        agent=agent.sandbox_agent_id or "claude",
        server_id=sandbox_agent_server_id(handle.session_id),
        delete_on_close=False,
    ) as transport:
        async with open_acp_client(transport) as client:
            await client.initialize()
            session = await client.new_session(handle.workdir)
        cursor = transport.last_event_id
    return Resume(
        agent_session_id=session.session_id,
        last_seq=0,
        cursor=str(cursor) if cursor is not None else None,
        turn_running=False,
        prepared=True,
    )


_OPENERS: Final[Mapping[str, Callable[[_Target], AbstractAsyncContextManager[OpenedSession]]]] = {
    "sandbox-agent": _open_sandbox_agent,
    "acp": _open_stdio,
    "acpx": _open_acpx,
}


def open_session(
    protocol: AgentProtocol,
    *,
    agent: AgentConfig,
    handle: SandboxHandle,
    spawn: Spawn,
    session_id: str,
    acpx_permissions: AcpxPermissions,
    resume: Resume | None = None,
) -> AbstractAsyncContextManager[OpenedSession]:
    """Open the agent session of `session_id` in the sandbox `handle` over `protocol`; closing
    it closes the connection (the sandbox and the agent's ACP server are left as they are).

    `spawn` starts a process inside the sandbox (stdio and acpx); `acpx_permissions` is acpx's
    policy. With `resume` the session continues where a previous connection left it: its events
    are numbered after `resume.last_seq`, and sandbox-agent reattaches to the same ACP server and
    session, replaying what followed `resume.cursor`. An unknown protocol raises AgentError."""
    opener = _OPENERS.get(protocol)
    if opener is None:
        known = ", ".join(_OPENERS)
        raise AgentError(f"unknown agent protocol {protocol!r} (known: {known})")
    target = _Target(agent, handle, spawn, session_id, acpx_permissions, resume)
    return opener(target)


__all__ = [
    "AgentSession",
    "AnswersByPolicy",
    "AsksUser",
    "EventSource",
    "OpenedSession",
    "PermissionMode",
    "Resume",
    "acpx_session_name",
    "load_session",
    "open_session",
    "prepare_session",
    "sandbox_agent_server_id",
]
