"""What other actors may say to a session actor, and what it reports back to its chat.

Kept apart from the session actor itself so the chat actor (and the router, the watchdog and the
console) depend on these small messages, not on the machinery that runs a sandbox.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from anycode_actors.agents import Resume
from anycode_actors.chat.base import Attachment, ButtonPress, User
from anycode_actors.sandboxes.base import SandboxHandle


@dataclass(frozen=True)
class FollowUp:
    """A plain message for the session: the next prompt, or the answer to its question, with
    the files sent with it (fetched into the sandbox's inbox before the agent gets it)."""

    text: str
    user: User
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True)
class Cancel:
    """Stop the session: the user asked, it timed out, or the daemon is shutting down."""

    reason: str  # shown to the user: "cancelled by @ada", "timed out after 30 min"
    status: str = "cancelled"  # "cancelled" | "failed" (timeouts and dead sandboxes fail)
    # The sandbox died: the session may carry on in a new one (actors/checkpoint.py).
    sandbox_lost: bool = False


@dataclass(frozen=True)
class PermissionAnswer:
    """A press on a permission button, already checked against the interaction's owner."""

    interaction_id: str
    option_index: int
    press: ButtonPress


@dataclass(frozen=True)
class ShowDiff:
    """/diff: tell the chat what the session changed so far, and attach the patch."""

    user: User


@dataclass(frozen=True)
class PublishNow:
    """/pr: commit, push and open (or update) the pull request now."""

    user: User


SessionMessage = FollowUp | Cancel | PermissionAnswer | ShowDiff | PublishNow


@dataclass(frozen=True)
class SessionClosed:
    """Sent by a session actor to its chat actor when it has ended and cleaned up."""

    session_id: str
    status: str


@dataclass(frozen=True)
class Recovered:
    """A session found running after a daemon restart: its live sandbox and where to resume.
    No handle: its sandbox was gone, and a checkpoint is to carry it into a new one."""

    handle: SandboxHandle | None
    resume: Resume


@dataclass(frozen=True)
class SessionHandle:
    """How the chat actor reaches a running session actor."""

    session_id: str
    user_id: str
    inbox: trio.MemorySendChannel[SessionMessage]
