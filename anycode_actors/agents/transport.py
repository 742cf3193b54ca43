"""The small interface between the ACP client core and the wire (HTTP+SSE, stdio).

A transport sends one JSON-RPC message at a time and delivers what the agent sends, in order, on a
bounded trio channel. It never interprets messages: matching answers to requests, numbering events
and answering the agent are the client core's job (`anycode_actors.agents.acp`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import trio

from anycode_actors.agents.jsonrpc import Malformed, Message
from anycode_actors.errors import AgentClosedError

__all__ = ["INCOMING_BUFFER", "Received", "Transport"]

#: Messages a transport may read ahead of the client core. Small: the core is fast, and a full
#: buffer is the backpressure that stops reading from a flooding agent.
INCOMING_BUFFER: Final = 16


@dataclass(frozen=True, slots=True)
class Received:
    """One message from the agent, and where it came from when the transport can resume there."""

    message: Message | Malformed
    cursor: str | None = None


class Transport(Protocol):
    @property
    def incoming(self) -> trio.MemoryReceiveChannel[Received]:
        """Everything the agent sends, in order. Ends (EndOfChannel) when the connection ends;
        `end_reason()` then says why."""
        ...

    async def send(self, message: Mapping[str, Any]) -> None:
        """Hand one message to the agent. Raises AgentError (AgentClosedError when the
        connection is gone). For a request it returns once the request is on its way; the answer
        arrives on `incoming`."""
        ...

    def end_reason(self) -> AgentClosedError | None:
        """Why `incoming` ended (exit code, stderr tail, lost stream), or None while open."""
        ...
