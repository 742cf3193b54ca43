"""Agent protocols: ACP (Agent Client Protocol, JSON-RPC 2.0) through sandbox-agent, over stdio,
and as printed by acpx, all turned into the same normalized, numbered events.

    async with open_sandbox_agent_client(url, token=token, agent="claude") as client:
        await client.initialize()
        session = await client.new_session(cwd="/workspace")
        await session.prompt("fix the login bug")
        async for event in session.events:
            ...

`open_stdio_client(process)` and `open_local_stdio_client(argv)` give the same `AcpClient` over an
adapter's stdin/stdout; `open_acpx_session(launch, spawn)` gives an `AcpxSession` with the same
prompt/cancel/events API. `open_session(protocol, ...)` opens whichever of them a sandbox's
protocol names and yields it as an `AgentSession` (`anycode_actors.agents.session`). The events
are in `anycode_actors.agents.events`; the errors are the `AgentError` family in
`anycode_actors.errors`.
"""

from anycode_actors.agents.acp import (
    AcpClient,
    AcpSession,
    InitializeResult,
    Turn,
    open_acp_client,
)
from anycode_actors.agents.acpx import (
    AcpxLaunch,
    AcpxObserver,
    AcpxSession,
    Spawn,
    open_acpx_session,
)
from anycode_actors.agents.events import (
    AgentEvent,
    ErrorEvent,
    PermissionOption,
    PermissionRequested,
    PermissionResolved,
    Raw,
    SessionEnded,
    TextDelta,
    ThoughtDelta,
    ToolCall,
    TurnEnded,
    normalize,
)
from anycode_actors.agents.sandbox_agent import (
    ReconnectPolicy,
    SandboxAgentTransport,
    StreamStats,
    open_sandbox_agent_client,
    open_sandbox_agent_transport,
    wait_until_healthy,
)
from anycode_actors.agents.session import (
    AgentSession,
    AnswersByPolicy,
    AsksUser,
    OpenedSession,
    PermissionMode,
    Resume,
    open_session,
)
from anycode_actors.agents.stdio import (
    StdioTransport,
    open_local_stdio_client,
    open_stdio_client,
    open_stdio_transport,
)
from anycode_actors.agents.transport import Received, Transport
from anycode_actors.errors import (
    AgentAuthError,
    AgentClosedError,
    AgentError,
    AgentNotReadyError,
    AgentRequestError,
    PermissionAnswerError,
    TurnInProgressError,
)

__all__ = [
    "AcpClient",
    "AcpSession",
    "AcpxLaunch",
    "AcpxObserver",
    "AcpxSession",
    "AgentAuthError",
    "AgentClosedError",
    "AgentError",
    "AgentEvent",
    "AgentNotReadyError",
    "AgentRequestError",
    "AgentSession",
    "AnswersByPolicy",
    "AsksUser",
    "ErrorEvent",
    "InitializeResult",
    "OpenedSession",
    "PermissionAnswerError",
    "PermissionMode",
    "PermissionOption",
    "PermissionRequested",
    "PermissionResolved",
    "Raw",
    "Received",
    "ReconnectPolicy",
    "Resume",
    "SandboxAgentTransport",
    "SessionEnded",
    "Spawn",
    "StdioTransport",
    "StreamStats",
    "TextDelta",
    "ThoughtDelta",
    "ToolCall",
    "Transport",
    "Turn",
    "TurnEnded",
    "TurnInProgressError",
    "normalize",
    "open_acp_client",
    "open_acpx_session",
    "open_local_stdio_client",
    "open_sandbox_agent_client",
    "open_sandbox_agent_transport",
    "open_session",
    "open_stdio_client",
    "open_stdio_transport",
    "wait_until_healthy",
]
