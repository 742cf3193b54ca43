"""The live view of a supervision tree: what runs where, in which state, how often it restarted.

Supervisors write into it; children add their own details through their `ChildContext`; a
console or an admin socket reads `snapshot()`. It is a plain object created by whoever starts the
root supervisor and handed down the tree, never a module global, so two trees (or two tests)
never see each other.
"""

from __future__ import annotations

import copy
import enum
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, TypeAlias

import trio

JsonValue: TypeAlias = (
    "str | int | float | bool | Sequence[JsonValue] | Mapping[str, JsonValue] | None"
)
"""What a child may attach to its registry entry: anything `json.dumps` accepts."""


class ChildState(enum.StrEnum):
    """Where a child is in its life, as the registry shows it."""

    STARTING = "starting"
    """Started, has not called task_status.started() yet."""
    RUNNING = "running"
    RESTARTING = "restarting"
    """Exited or was stopped; waits out its backoff before it starts again."""
    STOPPING = "stopping"
    """Cancelled; within its shutdown grace."""
    STOPPED = "stopped"
    """Exited normally or was stopped, and will not be started again."""
    FAILED = "failed"
    """Crashed and will not be started again, or ignored cancellation past its grace."""


@dataclass(frozen=True)
class ChildEntry:
    """One line of the tree, as plain data: `dataclasses.asdict(entry)` goes straight to JSON.

    `path` names the child and its ancestors ("root/chats/chat:telegram:1"). `started_at` is the
    wall clock (ISO 8601, UTC) when the current incarnation reported ready. `inbox_depth` and
    `inbox_capacity` are filled for children that reported an inbox (capacity None means
    unbounded). `info` is whatever the child attached with `ChildContext.update`.
    """

    path: str
    kind: str
    state: ChildState
    restarts: int
    last_error: str | None
    started_at: str | None
    inbox_depth: int | None
    inbox_capacity: int | None
    info: dict[str, JsonValue] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.path.rpartition("/")[2]

    @property
    def parent(self) -> str | None:
        return self.path.rpartition("/")[0] or None


class InboxLike(Protocol):
    """Either end of a trio memory channel."""

    def statistics(self) -> trio.MemoryChannelStatistics: ...


class Entry:
    """The mutable record behind a ChildEntry; only supervisors and ChildContext touch it.

    `incarnation` grows on every (re)start so a stale ChildContext (an abandoned child that is
    still running) cannot scribble over its successor's info.
    """

    __slots__ = (
        "inbox",
        "incarnation",
        "info",
        "kind",
        "last_error",
        "path",
        "restarts",
        "started_at",
        "state",
    )

    def __init__(self, path: str, kind: str) -> None:
        self.path = path
        self.kind = kind
        self.state = ChildState.STARTING
        self.restarts = 0
        self.last_error: str | None = None
        self.started_at: str | None = None
        self.info: dict[str, JsonValue] = {}
        self.inbox: InboxLike | None = None
        self.incarnation = 0

    def update(self, info: Mapping[str, JsonValue]) -> None:
        self.info.update(to_json(info))

    def freeze(self) -> ChildEntry:
        depth: int | None = None
        capacity: int | None = None
        if self.inbox is not None:
            stats = self.inbox.statistics()
            depth = stats.current_buffer_used
            size = stats.max_buffer_size
            capacity = None if math.isinf(size) else int(size)
        return ChildEntry(
            path=self.path,
            kind=self.kind,
            state=self.state,
            restarts=self.restarts,
            last_error=self.last_error,
            started_at=self.started_at,
            inbox_depth=depth,
            inbox_capacity=capacity,
            info=copy.deepcopy(self.info),
        )


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Registry:
    """Every supervised child of one tree, keyed by path.

    `wall_clock` is injectable so tests can pin `started_at`.
    """

    def __init__(self, *, wall_clock: Callable[[], datetime] = _utc_now) -> None:
        self._entries: dict[str, Entry] = {}
        # The paths added under each path, so that removing one entry and what is below it
        # looks at those only, not at every entry of the tree.
        self._below: dict[str, set[str]] = {}
        self._wall_clock = wall_clock

    def snapshot(self) -> list[ChildEntry]:
        """All entries in tree order: each parent before its children, siblings in start order."""
        children: dict[str | None, list[Entry]] = {}
        for path, entry in self._entries.items():
            parent = path.rpartition("/")[0]
            children.setdefault(parent if parent in self._entries else None, []).append(entry)
        ordered: list[ChildEntry] = []
        stack = list(reversed(children.get(None, [])))
        while stack:
            entry = stack.pop()
            ordered.append(entry.freeze())
            stack.extend(reversed(children.get(entry.path, [])))
        return ordered

    def get(self, path: str) -> ChildEntry | None:
        """The entry at `path`, or None if nothing runs there."""
        entry = self._entries.get(path)
        return None if entry is None else entry.freeze()

    def update(self, path: str, **info: JsonValue) -> None:
        """Attach details to the child at `path` (a session: chat, agent, sandbox id, ...).

        Values must be JSON-serialisable (TypeError otherwise) and are copied. A child updates
        itself more conveniently through `current_child().update(...)`.
        """
        entry = self._entries.get(path)
        if entry is None:
            raise KeyError(f"no child at {path!r}")
        entry.update(info)

    def now(self) -> str:
        """The wall clock as ISO 8601 UTC, the one timestamp format of the project."""
        return self._wall_clock().astimezone(UTC).isoformat(timespec="milliseconds")

    # Supervisor side. A supervisor owns the entries of its own children.

    def add(self, path: str, kind: str) -> Entry:
        """Create (or replace) the entry at `path`; used by supervisors."""
        entry = Entry(path, kind)
        self._entries[path] = entry
        self._below.setdefault(path.rpartition("/")[0], set()).add(path)
        return entry

    def remove(self, path: str) -> None:
        """Forget the entry at `path` and everything below it; used by supervisors."""
        parent = self._below.get(path.rpartition("/")[0])
        if parent is not None:
            parent.discard(path)
        stack = [path]
        while stack:
            key = stack.pop()
            self._entries.pop(key, None)
            stack.extend(self._below.pop(key, ()))


def to_json(info: Mapping[str, JsonValue]) -> dict[str, JsonValue]:
    """A private deep copy of `info`, or TypeError naming the key that is not JSON."""
    copied: dict[str, JsonValue] = {}
    for key, value in info.items():
        kind = type(value)
        if value is None or kind is str or kind is int or kind is bool:
            copied[key] = value  # immutable and JSON already: nothing to copy or check
            continue
        if isinstance(value, float) and kind is float and math.isfinite(value):
            copied[key] = value
            continue
        try:
            copied[key] = json.loads(json.dumps(value, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"registry info {key!r} is not JSON-serialisable: {exc}") from exc
    return copied
