"""Sandbox providers: where an agent runs (a Docker container, an ECS task, a local folder)."""

from anycode_actors.sandboxes.base import (
    AgentProcess,
    SandboxError,
    SandboxHandle,
    SandboxInfo,
    SandboxProvider,
    SandboxSpec,
)

__all__ = [
    "AgentProcess",
    "SandboxError",
    "SandboxHandle",
    "SandboxInfo",
    "SandboxProvider",
    "SandboxSpec",
]
