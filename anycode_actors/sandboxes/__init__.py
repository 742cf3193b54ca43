"""Sandbox providers: where an agent runs (a Docker container, an ECS task, a local folder)."""

from anycode_actors.sandboxes.base import (
    AgentProcess,
    OutboxListing,
    SandboxError,
    SandboxFile,
    SandboxHandle,
    SandboxInfo,
    SandboxProvider,
    SandboxSpec,
    SandboxUnavailable,
    describe_loss,
    new_agent_token,
)

__all__ = [
    "AgentProcess",
    "OutboxListing",
    "SandboxError",
    "SandboxFile",
    "SandboxHandle",
    "SandboxInfo",
    "SandboxProvider",
    "SandboxSpec",
    "SandboxUnavailable",
    "describe_loss",
    "new_agent_token",
]
