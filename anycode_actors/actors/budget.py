"""The budget: the bot-wide rate limits every flusher draws from, in a fair order.

Each flusher paces its own chat; nobody but the budget paces the bot. Telegram allows a bot about
30 messages a second across all chats, and Slack counts each Web API method per workspace (Tier 3,
about 50 a minute, for `chat.update`), so 200 chats each within their own limit still overrun the
bot's. A chat platform client names its lanes (`ChatClient.budget_lanes`): which calls share
which bucket, at what rate.

A flusher that has a call to make asks for a grant (`Ask`) with a priority and waits; while it
waits it goes on coalescing, so an intermediate edit that waits long enough carries more text
when it goes and none is lost or repeated. Grants go to the most urgent first — a session's first
message, a permission prompt, a final edit (priority `URGENT`) before intermediate edits of a
stream (`ROUTINE`) — and in the order asked within a priority.

A 429 that a platform gives for the whole bot (a Slack method's tier, say) pauses the lane for
`retry_after` (`Pause`); one for a single chat pauses only that chat, in its flusher.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import trio

from supervisors import Actor, current_child

URGENT: Final = 0
ROUTINE: Final = 1
SLACK: Final = 0.001


@dataclass(frozen=True)
class Lane:
    """A bucket of `burst` calls refilled at `per_second`."""

    per_second: float
    burst: int


@dataclass(eq=False)
class Ticket:
    """One flusher's wait for one call. `granted` is set when it may call; a flusher that stops
    waiting sets `withdrawn`, so no token is spent on it."""

    granted: trio.Event = field(default_factory=trio.Event)
    withdrawn: bool = False


@dataclass(frozen=True)
class Ask:
    lane: str
    priority: int
    ticket: Ticket


@dataclass(frozen=True)
class Pause:
    """The platform said the whole bot must wait: nothing in `lane` for `seconds`."""

    lane: str
    seconds: float


BudgetInbox = Ask | Pause


@dataclass
class _LaneState:
    lane: Lane
    tokens: float
    stamp: float
    paused_until: float = -math.inf
    waiting: list[tuple[int, int, Ticket]] = field(default_factory=list)
    granted: int = 0

    def refill(self, now: float) -> None:
        self.tokens = min(
            float(self.lane.burst), self.tokens + (now - self.stamp) * self.lane.per_second
        )
        self.stamp = now

    def ready_at(self, now: float) -> float:
        if self.tokens >= 1:
            return max(now, self.paused_until)
        # A little late rather than a rounding error early: waking at a moment when the bucket
        # holds 0.9999… would wake again at once, forever.
        return max(self.paused_until, now + (1 - self.tokens) / self.lane.per_second + SLACK)


class Budget(Actor[BudgetInbox]):
    """See the module docstring. An unknown lane is never paced (a platform without lanes)."""

    inbox_size = 1024

    def __init__(self, lanes: Mapping[str, Lane]) -> None:
        super().__init__()
        # Stamped when the budget starts running (`run`), on the clock of that Trio run.
        self._lanes = {
            name: _LaneState(lane, float(lane.burst), 0.0) for name, lane in lanes.items()
        }
        self._order = itertools.count()
        self._changed = trio.Event()
        self.pauses = 0

    async def setup(self) -> None:
        now = trio.current_time()
        for state in self._lanes.values():
            state.stamp = now
        self.tasks.start_soon(self._grant)

    async def handle(self, message: BudgetInbox) -> None:
        state = self._lanes.get(message.lane)
        if isinstance(message, Pause):
            if state is not None:
                self.pauses += 1
                until = trio.current_time() + message.seconds
                state.paused_until = max(state.paused_until, until)
                # After the pause one call goes first, then the lane refills at its rate.
                state.tokens = min(state.tokens, 1.0)
        elif state is None:
            message.ticket.granted.set()
        else:
            heapq.heappush(state.waiting, (message.priority, next(self._order), message.ticket))
        self._changed.set()

    async def _grant(self) -> None:
        while True:
            self._changed = trio.Event()
            now = trio.current_time()
            wake = math.inf
            for state in self._lanes.values():
                state.refill(now)
                while state.waiting and state.tokens >= 1 and now >= state.paused_until:
                    _, _, ticket = heapq.heappop(state.waiting)
                    if ticket.withdrawn:
                        continue
                    state.tokens -= 1
                    state.granted += 1
                    ticket.granted.set()
                if state.waiting:
                    wake = min(wake, state.ready_at(now))
            self._report()
            with trio.move_on_at(wake):
                await self._changed.wait()

    def _report(self) -> None:
        context = current_child()
        if context is None:
            return
        context.update(
            **{
                f"{name}": f"waiting {len(s.waiting)} · granted {s.granted}"
                for name, s in self._lanes.items()
            },
            pauses=self.pauses,
        )


async def draw(budget: trio.MemorySendChannel[BudgetInbox], lane: str, priority: int) -> None:
    """Wait for a grant in `lane`; withdraws the ask if cancelled while waiting."""
    ticket = Ticket()
    await budget.send(Ask(lane, priority, ticket))
    try:
        await ticket.granted.wait()
    except BaseException:
        ticket.withdrawn = True
        raise
