"""What a supervisor is told: how to start each child, when to restart it, how to stop it."""

from __future__ import annotations

import enum
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from ._defaults import MAX_RESTARTS, RESTART_PERIOD, SHUTDOWN_GRACE, WORKER_KIND


class Restart(enum.StrEnum):
    """When a child that exited is started again (OTP's restart types)."""

    PERMANENT = "permanent"
    """Always: the child is meant to run for as long as its supervisor does."""
    TRANSIENT = "transient"
    """Only after a crash: a normal return means the job is done."""
    TEMPORARY = "temporary"
    """Never: typical for work started on demand, such as one session."""


class Strategy(enum.StrEnum):
    """Which children a supervisor restarts when one of them has to be restarted."""

    ONE_FOR_ONE = "one_for_one"
    """Only that child: children are independent."""
    ONE_FOR_ALL = "one_for_all"
    """Every child: each one relies on all the others."""
    REST_FOR_ONE = "rest_for_one"
    """That child and the ones started after it, which may rely on it."""


class StartFunction(Protocol):
    """An async function started as `nursery.start` would: it calls `task_status.started(value)`
    once it is ready to be used, then runs until it is cancelled, returns or raises.

    Any Trio function that follows the `nursery.start` protocol fits; bind arguments with
    `functools.partial`.
    """

    def __call__(self, *, task_status: trio.TaskStatus[Any]) -> Awaitable[object]: ...


@dataclass(frozen=True)
class ChildSpec:
    """How to start one child, when to restart it and how long it may take to stop.

    `shutdown` is the grace in seconds between cancelling the child and giving up on it
    (`math.inf` waits forever; use that only for children whose stop is bounded anyway, like
    supervisors). `kind` is free text for the registry ("supervisor", "actor", "worker").
    """

    id: str
    start: StartFunction
    restart: Restart = Restart.PERMANENT
    shutdown: float = SHUTDOWN_GRACE
    kind: str = WORKER_KIND
    closing: Callable[[], None] | None = None
    """Called once the supervisor forgets the child, which it then never starts again: a
    dynamic child that exited without a restart, was terminated, failed to start, or whose
    supervisor stopped. An actor closes its inbox here, so its senders learn it is gone.
    (A static child is not forgotten: the supervisor's next run starts it again.)"""

    def __post_init__(self) -> None:
        check_name(self.id, "child id")
        if math.isnan(self.shutdown) or self.shutdown < 0:
            raise ValueError(f"shutdown grace of {self.id!r} must be >= 0, got {self.shutdown}")


@dataclass(frozen=True)
class Intensity:
    """More than `max_restarts` restarts within `period` seconds and the supervisor gives up.

    This is what stops a crash loop from spinning forever: the supervisor stops its children and
    fails upward, so its own supervisor (with a wider view) decides what to do next.
    """

    max_restarts: int = MAX_RESTARTS
    period: float = RESTART_PERIOD

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {self.max_restarts}")
        if not self.period > 0:
            raise ValueError(f"period must be > 0, got {self.period}")


def check_name(name: str, what: str) -> None:
    """Ids become path segments in the registry ("root/chats/chat:telegram:1")."""
    if not name or "/" in name:
        raise ValueError(f"{what} must be non-empty and contain no '/', got {name!r}")
