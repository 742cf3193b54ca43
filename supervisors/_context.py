"""How a running child finds its own place in the tree: `current_child()`.

Why a context variable rather than an extra argument to every start function: start functions
keep Trio's own `nursery.start` signature, so any function that follows it (including
`Supervisor.run` and `Actor.run`) is a valid child without an adapter; a nested supervisor finds
its path and registry without anybody wiring them through; and helpers deep inside an actor can
report progress without the handle being threaded through every call. It is not shared state:
each supervised task gets its own value, set by its supervisor in the task that runs the child,
and Trio copies it into the tasks that child spawns (so an actor's helper tasks report into the
actor's entry).
"""

from __future__ import annotations

import contextvars

from ._registry import Entry, InboxLike, JsonValue, Registry


class ChildContext:
    """A supervised child's handle on its registry entry. Created by the supervisor."""

    __slots__ = ("_entry", "_incarnation", "_registry")

    def __init__(self, entry: Entry, registry: Registry) -> None:
        self._entry = entry
        self._incarnation = entry.incarnation
        self._registry = registry

    @property
    def path(self) -> str:
        """Where this child sits in the tree, e.g. "root/sessions/session:42"."""
        return self._entry.path

    @property
    def kind(self) -> str:
        return self._entry.kind

    @property
    def registry(self) -> Registry:
        return self._registry

    def update(self, **info: JsonValue) -> None:
        """Attach details to this child's entry (JSON-serialisable values, copied).

        Info belongs to one incarnation: a restarted child starts with none, and an abandoned
        incarnation that still runs cannot overwrite its successor's.
        """
        if self._current:
            self._entry.update(info)

    def report_inbox(self, inbox: InboxLike) -> None:
        """Show this memory channel's depth and capacity in the registry.

        The registry reads `inbox.statistics()` when a snapshot is taken, so sending and
        receiving cost nothing extra.
        """
        if self._current:
            self._entry.inbox = inbox

    @property
    def _current(self) -> bool:
        return self._entry.incarnation == self._incarnation


_current_child: contextvars.ContextVar[ChildContext | None] = contextvars.ContextVar(
    "supervisors.current_child", default=None
)


def current_child() -> ChildContext | None:
    """The ChildContext of the supervised child this task belongs to, or None if unsupervised."""
    return _current_child.get()


def set_current_child(context: ChildContext) -> None:
    """Called by the supervisor at the top of the task that runs the child."""
    _current_child.set(context)
