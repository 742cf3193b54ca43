"""OTP-style supervision for Trio. Knows nothing about chats or sandboxes.

A `Supervisor` starts `ChildSpec`s in order (each by `nursery.start`'s protocol, so "started"
means "ready"), restarts them by `Restart` type and `Strategy`, waits a `Backoff` between restarts,
gives up after too many restarts (`Intensity`) and stops its children in reverse order, each
within its shutdown grace. Supervisors nest (`supervisor.spec(id)`), take children on demand
(`start_child` / `terminate_child`) and report every child into a `Registry` whose `snapshot()`
is plain, JSON-ready data for the console. A running child finds its own entry with
`current_child()`. `Actor` is the one way to write an actor: a bounded inbox and `handle`.

    class ChatActor(Actor[str]):
        async def handle(self, message: str) -> None: ...

    registry = Registry()                       # made by the caller, handed down the tree
    chats = Supervisor()                        # dynamic: children are started on demand
    root = Supervisor([chats.spec("chats")], registry=registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(root.run)           # ready once every child is ready
        chat = ChatActor(inbox_size=16)
        await chats.start_child(chat.spec("chat:telegram:1", restart=Restart.TRANSIENT))
        await chat.send("/task fix the login bug")
        registry.snapshot()                     # root, root/chats, root/chats/chat:telegram:1
        nursery.cancel_scope.cancel()           # stops the tree, newest child first

Logs go to the stdlib logger "supervisors".
"""

from ._actor import Actor, Inbox
from ._backoff import Backoff
from ._context import ChildContext, current_child
from ._defaults import (
    ACTOR_KIND,
    BACKOFF_CAP,
    BACKOFF_FACTOR,
    BACKOFF_INITIAL,
    BACKOFF_JITTER,
    BACKOFF_RESET_AFTER,
    INBOX_SIZE,
    LOGGER_NAME,
    MAX_RESTARTS,
    RESTART_PERIOD,
    ROOT_NAME,
    SHUTDOWN_GRACE,
    SUPERVISOR_KIND,
    SUPERVISOR_SHUTDOWN_GRACE,
    WORKER_KIND,
)
from ._errors import (
    ChildStartFailed,
    DuplicateChild,
    RestartIntensityExceeded,
    SupervisorError,
    SupervisorNotRunning,
    UnknownChild,
)
from ._registry import ChildEntry, ChildState, JsonValue, Registry
from ._spec import ChildSpec, Intensity, Restart, StartFunction, Strategy
from ._supervisor import Supervisor

__all__ = [
    "ACTOR_KIND",
    "BACKOFF_CAP",
    "BACKOFF_FACTOR",
    "BACKOFF_INITIAL",
    "BACKOFF_JITTER",
    "BACKOFF_RESET_AFTER",
    "INBOX_SIZE",
    "LOGGER_NAME",
    "MAX_RESTARTS",
    "RESTART_PERIOD",
    "ROOT_NAME",
    "SHUTDOWN_GRACE",
    "SUPERVISOR_KIND",
    "SUPERVISOR_SHUTDOWN_GRACE",
    "WORKER_KIND",
    "Actor",
    "Backoff",
    "ChildContext",
    "ChildEntry",
    "ChildSpec",
    "ChildStartFailed",
    "ChildState",
    "DuplicateChild",
    "Inbox",
    "Intensity",
    "JsonValue",
    "Registry",
    "Restart",
    "RestartIntensityExceeded",
    "StartFunction",
    "Strategy",
    "Supervisor",
    "SupervisorError",
    "SupervisorNotRunning",
    "UnknownChild",
    "current_child",
]
