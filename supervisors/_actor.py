"""Actor: one task, one bounded inbox, one message at a time.

The one obvious way to write an application actor: subclass, write `handle`, supervise
`actor.spec(id)`. Everything the actor owns is touched only from its own task, so it needs no
locks; others reach it only through `send` (or a handle from `address()`), and a full inbox
makes them wait: backpressure, never an unbounded queue.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Generic, TypeAlias, TypeVar

import trio

from ._context import current_child
from ._defaults import ACTOR_KIND, INBOX_SIZE, SHUTDOWN_GRACE
from ._spec import ChildSpec, Restart

MessageT = TypeVar("MessageT")
Inbox: TypeAlias = tuple[trio.MemorySendChannel[MessageT], trio.MemoryReceiveChannel[MessageT]]


class Actor(ABC, Generic[MessageT]):
    """Base class of actors that read a bounded inbox of `MessageT`.

    Hooks, all optional but `handle`: `setup` before the actor reports ready (raise there to
    fail the start), `handle` for each message, `finish` after the last one however the run
    ends. Helper tasks the actor needs while it runs (a timer, a feeder) go in `self.tasks`, a
    nursery that lives exactly as long as the run.

    The inbox belongs to the object, not to one run: when the supervisor restarts a crashed
    actor, messages already queued are still there and every handle others hold stays valid.
    Only the message being handled when it crashed is lost.

    The inbox closes when the actor will not run again, so senders get
    `trio.BrokenResourceError` at once instead of waiting on an inbox nobody reads:
    - the actor called `self.stop()` from `handle` (its job is done, a session that finished);
    - its supervisor forgot it (`ChildSpec.closing`, which `spec` sets): a dynamic actor that
      crashed without a restart, was terminated, or whose supervisor stopped;
    - whoever runs it without a supervisor calls `close()`.
    A stopped actor cannot run again; make a new one.
    """

    inbox_size: ClassVar[int] = INBOX_SIZE
    """Default capacity for this class; the constructor can override it per instance."""

    def __init__(
        self,
        *,
        inbox_size: int | None = None,
        inbox: Inbox[MessageT] | None = None,
    ) -> None:
        """`inbox` is a channel pair made beforehand (`trio.open_memory_channel`), for two
        actors that address each other: make the pair, give its send side to the one made
        first, this to the other. Without it the actor opens its own of `inbox_size`."""
        if inbox is None:
            size = type(self).inbox_size if inbox_size is None else inbox_size
            inbox = trio.open_memory_channel[MessageT](size)
        self._outbox, self._inbox = inbox
        self._stopping = False
        self._tasks: trio.Nursery | None = None

    @property
    def tasks(self) -> trio.Nursery:
        """A nursery for the actor's helper tasks, cancelled when the run ends (from `setup`
        on; a helper that raises crashes the actor like `handle` does)."""
        if self._tasks is None:
            raise RuntimeError(f"{type(self).__name__} is not running")
        return self._tasks

    def spec(
        self,
        id: str,
        *,
        restart: Restart = Restart.PERMANENT,
        shutdown: float = SHUTDOWN_GRACE,
    ) -> ChildSpec:
        """This actor as a supervised child (kind "actor")."""
        return ChildSpec(
            id=id,
            start=self.run,
            restart=restart,
            shutdown=shutdown,
            kind=ACTOR_KIND,
            closing=self.close,
        )

    async def send(self, message: MessageT) -> None:
        """Queue a message; waits while the inbox is full."""
        await self._outbox.send(message)

    def address(self) -> trio.MemorySendChannel[MessageT]:
        """A send handle of one's own (a clone), for a producer that wants to close it."""
        return self._outbox.clone()

    def stop(self) -> None:
        """Finish `run` after the message being handled; call it from `handle`."""
        self._stopping = True

    def close(self) -> None:
        """Close the inbox for good, from outside: whoever supervises the actor calls it when
        the actor will not run again (its supervisor gave up, or was stopped), so senders get
        `trio.BrokenResourceError` at once instead of filling an inbox nobody reads."""
        self._stopping = True
        self._inbox.close()

    async def setup(self) -> None:
        """Runs before the actor reports ready; raise here to fail the start. Default: nothing."""

    async def finish(self) -> None:
        """Runs once after the last message, however the run ended (`stop()`, a crash, a
        cancellation), with `self.tasks` already gone. Shielded from cancellation, so keep it
        bounded (its own timeouts). The inbox is still open, so what waits in it can still be
        answered (`self._inbox.receive_nowait()`); after a `stop()` it closes when this returns,
        and a finish that takes long closes it first itself. Default: nothing."""

    @abstractmethod
    async def handle(self, message: MessageT) -> None:
        """Handle one message. Raising crashes the actor; its supervisor decides what next."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Set up, report ready, then handle messages one by one until `stop()` or cancelled."""
        if self._stopping:
            raise RuntimeError(f"{type(self).__name__} was stopped; make a new one")
        context = current_child()
        if context is not None:
            context.report_inbox(self._inbox)
        try:
            async with trio.open_nursery() as nursery:
                self._tasks = nursery
                await self.setup()
                task_status.started()
                while not self._stopping:
                    message = await self._inbox.receive()
                    await self.handle(message)
                nursery.cancel_scope.cancel()
        finally:
            self._tasks = None
            try:
                with trio.CancelScope(shield=True):
                    await self.finish()
            finally:
                if self._stopping:
                    self._inbox.close()
