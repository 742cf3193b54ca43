"""Quotas: how many sessions a chat, a user and the daemon may have, checked as a session is
created, in the same write transaction, so two racing `/task`s cannot both take the last slot."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

from ._errors import StoreError

DAY: Final = timedelta(hours=24)
"""Tasks per user per day are counted over the last 24 hours, so the moment the next slot frees
is exact (24 h after the oldest task in the window), not "tomorrow at midnight somewhere"."""


class QuotaKind(StrEnum):
    PER_CHAT = "per_chat"  # active sessions in one chat (session.max_concurrent)
    PER_USER = "per_user"  # active sessions of one user, every chat (limits.max_sessions_per_user)
    TOTAL = "total"  # active sessions of the whole daemon (limits.max_sessions_total)
    PER_DAY = "per_day"  # tasks one user started in 24 h (limits.max_tasks_per_user_per_day)


@dataclass(frozen=True)
class Quota:
    """The limits a new session must fit in; None means no limit of that kind."""

    per_chat: int | None = None
    per_user: int | None = None
    total: int | None = None
    per_day: int | None = None


@dataclass(frozen=True)
class Usage:
    """What one user has: active sessions now and tasks started in the last 24 hours."""

    active: int
    last_day: int
    # The oldest task in the 24-hour window: a daily slot frees 24 h after it.
    oldest_in_day: datetime | None


class QuotaExceeded(StoreError):
    """A new session would exceed `kind`: `count` already, `limit` allowed.

    `oldest` is the created_at of the oldest session that holds a slot of this kind (the
    oldest active one, or the oldest task of the last 24 h), from which the caller tells the
    user when a slot frees.
    """

    def __init__(self, kind: QuotaKind, count: int, limit: int, oldest: datetime | None) -> None:
        super().__init__(f"{kind.value} limit reached: {count} of {limit}")
        self.kind = kind
        self.count = count
        self.limit = limit
        self.oldest = oldest
