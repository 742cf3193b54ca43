"""The session directory: the daemon-wide map of live sessions, so any chat actor can reach any
session of its conversation (a `/cancel <id>` typed in another Slack thread or Telegram topic).

Only a session's own actor changes the status of a live session; everyone else sends it a
message through here. The directory answers at once and never waits on a session: a message
for a full inbox is handed over by a helper task with a deadline, so one slow session cannot
stall the chats that ask about others.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Final

import trio

from anycode_actors.actors.session_api import SessionHandle, SessionMessage
from supervisors import Actor, current_child

log = logging.getLogger(__name__)

# How long a message may wait on a session's full inbox before it is given up (and logged).
HANDOVER_TIMEOUT: Final = 10.0


@dataclass(frozen=True)
class Register:
    """A session actor has started: messages for `handle.session_id` go to `handle.inbox`."""

    handle: SessionHandle


@dataclass(frozen=True)
class Unregister:
    session_id: str


@dataclass(frozen=True)
class Route:
    """Deliver `message` to the live session `session_id`; `reply` learns whether it is live."""

    session_id: str
    message: SessionMessage
    reply: trio.MemorySendChannel[bool]


@dataclass(frozen=True)
class Live:
    """Which sessions are live: `reply` gets the ids the directory knows."""

    reply: trio.MemorySendChannel[frozenset[str]]


DirectoryInbox = Register | Unregister | Route | Live


class SessionDirectory(Actor[DirectoryInbox]):
    inbox_size = 256

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[str, SessionHandle] = {}

    async def handle(self, message: DirectoryInbox) -> None:
        if isinstance(message, Register):
            self._live[message.handle.session_id] = message.handle
        elif isinstance(message, Unregister):
            self._live.pop(message.session_id, None)
        elif isinstance(message, Live):
            with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                message.reply.send_nowait(frozenset(self._live))
        else:
            self._reply(message.reply, self._route(message))
        context = current_child()
        if context is not None:
            context.update(live_sessions=len(self._live))

    def _route(self, route: Route) -> bool:
        handle = self._live.get(route.session_id)
        if handle is None:
            return False
        try:
            handle.inbox.send_nowait(route.message)
        except trio.WouldBlock:
            self.tasks.start_soon(self._hand_over, handle, route.message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The session ended (its actor closes its inbox first thing when it ends).
            del self._live[route.session_id]
            return False
        return True

    async def _hand_over(self, handle: SessionHandle, message: SessionMessage) -> None:
        with trio.move_on_after(HANDOVER_TIMEOUT) as scope:
            try:
                await handle.inbox.send(message)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
        if scope.cancelled_caught:
            log.warning(
                "session %s: its inbox stayed full for %.0f s; %s dropped",
                handle.session_id[:8],
                HANDOVER_TIMEOUT,
                type(message).__name__,
            )

    @staticmethod
    def _reply(reply: trio.MemorySendChannel[bool], live: bool) -> None:
        # The asker may have given up waiting; then there is nobody to tell.
        with contextlib.suppress(
            trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError
        ):
            reply.send_nowait(live)


async def route(
    directory: trio.MemorySendChannel[DirectoryInbox], session_id: str, message: SessionMessage
) -> bool:
    """Send `message` to a live session through the directory; False if it is not live."""
    send, receive = trio.open_memory_channel[bool](1)
    try:
        await directory.send(Route(session_id, message, send))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    with trio.move_on_after(HANDOVER_TIMEOUT):
        return await receive.receive()
    return False


async def live_sessions(directory: trio.MemorySendChannel[DirectoryInbox]) -> frozenset[str] | None:
    """The ids of every live session; None if the directory did not answer."""
    send, receive = trio.open_memory_channel[frozenset[str]](1)
    try:
        await directory.send(Live(send))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return None
    with trio.move_on_after(HANDOVER_TIMEOUT):
        return await receive.receive()
    return None
