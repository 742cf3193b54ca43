"""Long timers of the actors (a session's idle time, a chat's), without a task each.

A timer that sleeps in a task of its own costs every live session and chat a Trio task, its
frames and cancel scopes for as long as it waits, which is most of their life. `call_at` instead
keeps the deadline in one heap per Trio run, served by one system task that sleeps until the
earliest and calls each due callback in turn. A callback is plain and quick (it typically puts a
message into its actor's inbox, see `deliver`); one that raises is logged and the others still
run. `Timer.cancel` forgets the callback at once, so a cancelled timer holds on to nothing.

    timer = call_at(trio.current_time() + idle, lambda: deliver(inbox, tasks, _IdleExpired(n)))
    ...
    timer.cancel()
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import math
from collections.abc import Callable
from typing import Final, TypeVar

import trio

log = logging.getLogger(__name__)

T = TypeVar("T")

COMPACT_AT: Final = 64
"""Heap size from which cancelled timers are swept out once they are the majority."""


class Timer:
    """One scheduled call; `cancel` it when it is no longer wanted (a no-op once it fired)."""

    __slots__ = ("_callback", "deadline")

    def __init__(self, deadline: float, callback: Callable[[], None]) -> None:
        self.deadline = deadline
        self._callback: Callable[[], None] | None = callback

    @property
    def pending(self) -> bool:
        """Neither fired nor cancelled."""
        return self._callback is not None

    def cancel(self) -> None:
        self._callback = None

    def _fire(self) -> None:
        callback, self._callback = self._callback, None
        if callback is None:
            return
        try:
            callback()
        except Exception:
            log.exception("a timer's callback failed")


class _Timers:
    """The heap of one Trio run and the system task that serves it."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._changed = trio.Event()

    def add(self, timer: Timer) -> None:
        earliest = self._heap[0][0] if self._heap else math.inf
        heapq.heappush(self._heap, (timer.deadline, next(self._order), timer))
        if len(self._heap) >= COMPACT_AT and len(self._heap) % COMPACT_AT == 0:
            self._compact()
        if timer.deadline < earliest:
            self._changed.set()

    def _compact(self) -> None:
        pending = [entry for entry in self._heap if entry[2].pending]
        if len(pending) * 2 < len(self._heap):
            heapq.heapify(pending)
            self._heap = pending

    async def run(self) -> None:
        while True:
            now = trio.current_time()
            while self._heap and (self._heap[0][0] <= now or not self._heap[0][2].pending):
                heapq.heappop(self._heap)[2]._fire()
            self._changed = trio.Event()
            with trio.move_on_at(self._heap[0][0] if self._heap else math.inf):
                await self._changed.wait()


_TIMERS: Final = trio.lowlevel.RunVar[_Timers]("anycode_actors.timers")


def call_at(deadline: float, callback: Callable[[], None]) -> Timer:
    """Call `callback()` at Trio time `deadline` (or soon after), from the run's timer task."""
    try:
        timers = _TIMERS.get()
    except LookupError:
        timers = _Timers()
        _TIMERS.set(timers)
        trio.lowlevel.spawn_system_task(timers.run, name="anycode_actors.timers")
    timer = Timer(deadline, callback)
    timers.add(timer)
    return timer


def deliver(inbox: trio.MemorySendChannel[T], tasks: trio.Nursery | None, message: T) -> None:
    """Put `message` into an actor's `inbox` from a timer's callback: at once when there is room,
    else from a task of the actor's own `tasks` that waits for room (as a timer task of its own
    would have). Dropped when the actor has stopped (its inbox closed, its tasks gone)."""
    try:
        inbox.send_nowait(message)
    except trio.WouldBlock:
        if tasks is not None:
            with contextlib.suppress(RuntimeError):  # the actor's run is ending
                tasks.start_soon(_send, inbox, message)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _send(inbox: trio.MemorySendChannel[T], message: T) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await inbox.send(message)


__all__ = ["COMPACT_AT", "Timer", "call_at", "deliver"]
