"""What the store hands out: statuses, the transition table, and frozen records of rows."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final

from ..agents.events import StoredEvent, UnknownEvent, from_record


class SessionStatus(StrEnum):
    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES: Final = frozenset(
    {SessionStatus.COMPLETED, SessionStatus.FAILED, SessionStatus.CANCELLED}
)
ACTIVE_STATUSES: Final = frozenset(set(SessionStatus) - TERMINAL_STATUSES)

ALLOWED_TRANSITIONS: Final[Mapping[SessionStatus, frozenset[SessionStatus]]] = MappingProxyType(
    {
        SessionStatus.PENDING: frozenset(
            {SessionStatus.STARTING, SessionStatus.FAILED, SessionStatus.CANCELLED}
        ),
        SessionStatus.STARTING: frozenset(
            {SessionStatus.RUNNING, SessionStatus.FAILED, SessionStatus.CANCELLED}
        ),
        SessionStatus.RUNNING: frozenset(
            {SessionStatus.COMPLETED, SessionStatus.FAILED, SessionStatus.CANCELLED}
        ),
        SessionStatus.COMPLETED: frozenset(),
        SessionStatus.FAILED: frozenset(),
        SessionStatus.CANCELLED: frozenset(),
    }
)
"""Status → statuses it may move to. Migration 1's trigger enforces the same table in SQL."""


class InteractionKind(StrEnum):
    QUESTION = "question"
    PERMISSION = "permission"


class InteractionStatus(StrEnum):
    PENDING = "pending"
    RESOLVED = "resolved"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Session:
    """One task: a prompt run by one agent in one sandbox for one chat."""

    id: str
    platform: str
    chat: str
    thread: str | None
    user: str
    agent: str
    prompt: str
    repo: str | None
    sandbox_id: str | None
    agent_endpoint: str | None
    agent_session_id: str | None
    status: SessionStatus
    last_event_seq: int
    reason: str | None
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None
    stream_message_id: str | None = None
    """The chat message the output streams into now; it starts `stream_offset` characters into
    the chat text of event `stream_mark` (for resuming after a crash)."""
    stream_mark: int | None = None
    stream_offset: int = 0
    user_name: str | None = None
    """The user's name as their chat shows it, when it said (see `chat.base.User.full_name`)."""

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal


@dataclass(frozen=True, slots=True)
class InteractionOption:
    """A choice the agent offered; ``option_id`` goes back to the agent unchanged."""

    option_id: str
    name: str
    kind: str


@dataclass(frozen=True, slots=True)
class Interaction:
    """A question or permission request waiting for (or given) a human answer."""

    id: str
    session_id: str
    kind: InteractionKind
    request_id: str | None
    tool_call_id: str | None
    options: tuple[InteractionOption, ...]
    chat_message_id: str | None
    status: InteractionStatus
    resolved_by: str | None
    answer: str | None
    created_at: datetime
    resolved_at: datetime | None


@dataclass(frozen=True, slots=True)
class Event:
    """One stored agent event; ``seq`` orders the events of a session from 1 (``event.seq`` is
    the same number). A row this code cannot read is an ``UnknownEvent`` that says why."""

    session_id: str
    seq: int
    event: StoredEvent
    created_at: datetime


def utc_now() -> str:
    """The one timestamp format: fixed width, so comparing text compares time."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _ts_or_none(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def session_from_row(row: Mapping[str, Any]) -> Session:
    return Session(
        id=row["id"],
        platform=row["platform"],
        chat=row["chat"],
        thread=row["thread"],
        user=row["user"],
        agent=row["agent"],
        prompt=row["prompt"],
        repo=row["repo"],
        sandbox_id=row["sandbox_id"],
        agent_endpoint=row["agent_endpoint"],
        agent_session_id=row["agent_session_id"],
        status=SessionStatus(row["status"]),
        last_event_seq=row["last_event_seq"],
        stream_message_id=row["stream_message_id"],
        stream_mark=row["stream_mark"],
        stream_offset=row["stream_offset"],
        user_name=row["user_name"],
        reason=row["reason"],
        created_at=_ts(row["created_at"]),
        updated_at=_ts(row["updated_at"]),
        ended_at=_ts_or_none(row["ended_at"]),
    )


def interaction_from_row(row: Mapping[str, Any]) -> Interaction:
    return Interaction(
        id=row["id"],
        session_id=row["session_id"],
        kind=InteractionKind(row["kind"]),
        request_id=row["request_id"],
        tool_call_id=row["tool_call_id"],
        options=tuple(InteractionOption(**o) for o in json.loads(row["options"])),
        chat_message_id=row["chat_message_id"],
        status=InteractionStatus(row["status"]),
        resolved_by=row["resolved_by"],
        answer=row["answer"],
        created_at=_ts(row["created_at"]),
        resolved_at=_ts_or_none(row["resolved_at"]),
    )


def event_from_row(row: Mapping[str, Any]) -> Event:
    seq = row["seq"]
    try:
        payload = json.loads(row["payload"])
    except ValueError as exc:
        event: StoredEvent = UnknownEvent(
            seq=seq, tag=row["type"], payload=row["payload"], reason=f"not JSON: {exc}"
        )
    else:
        event = from_record(row["type"], payload, seq=seq)
    return Event(
        session_id=row["session_id"], seq=seq, event=event, created_at=_ts(row["created_at"])
    )
