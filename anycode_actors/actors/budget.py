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

A lane may also be named by the ask itself (`Ask.define`): a limit that holds for one chat but
is shared by several senders. Telegram counts "20 messages per minute to the same group"
(https://core.telegram.org/bots/faq#my-bot-is-hitting-limits-how-do-i-avoid-this) for the whole
group, so the chat units of its forum topics, each with its own flusher, and the lobby draw from
one lane per group. Such a lane is made on the first ask and forgotten once it is full again and
nobody waits: a full bucket and no bucket pace alike.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import trio

from anycode_actors.chat.base import ChatClient, ChatRef
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
    """`define`: the lane's rate, for a lane made on demand (see the module docstring)."""

    lane: str
    priority: int
    ticket: Ticket
    define: Lane | None = None


@dataclass(frozen=True)
class Pause:
    """The platform said every sender in `lane` must wait: nothing in it for `seconds`.
    `define` as in `Ask`."""

    lane: str
    seconds: float
    define: Lane | None = None


BudgetInbox = Ask | Pause


@dataclass
class _LaneState:
    lane: Lane
    tokens: float
    stamp: float
    paused_until: float = -math.inf
    waiting: list[tuple[int, int, Ticket]] = field(default_factory=list)
    granted: int = 0
    on_demand: bool = False

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

    def full_at(self, now: float) -> float:
        """When the bucket holds `burst` tokens again and no pause holds it."""
        missing = max(0.0, self.lane.burst - self.tokens)
        return max(self.paused_until, now + missing / self.lane.per_second + SLACK)


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
        if state is None and message.define is not None:
            define = message.define
            state = _LaneState(define, float(define.burst), trio.current_time(), on_demand=True)
            self._lanes[message.lane] = state
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
                elif state.on_demand:
                    wake = min(wake, state.full_at(now))
            self._forget_idle(now)
            self._report()
            with trio.move_on_at(wake):
                await self._changed.wait()

    def _forget_idle(self, now: float) -> None:
        """Drop the lanes made on demand that are full, unpaused and unwaited for."""
        idle = [
            name
            for name, s in self._lanes.items()
            if s.on_demand and not s.waiting and now >= s.paused_until and s.tokens >= s.lane.burst
        ]
        for name in idle:
            del self._lanes[name]

    def _report(self) -> None:
        context = current_child()
        if context is None:
            return
        context.update(
            **{
                f"{name}": f"waiting {len(s.waiting)} · granted {s.granted}"
                for name, s in self._lanes.items()
                if not s.on_demand
            },
            on_demand=sum(s.on_demand for s in self._lanes.values()),
            pauses=self.pauses,
        )


def group_lane(client: ChatClient, chat: ChatRef) -> tuple[str, Lane] | None:
    """The lane made on demand for `chat`'s group limit (`ChatLimits.group_per_minute`), shared
    by every thread of the chat; None for a chat that is not a group or a platform without one."""
    per_minute = client.limits.group_per_minute
    if not per_minute or not client.is_group(chat):
        return None
    return f"group:{chat.platform}:{chat.chat_id}", Lane(per_minute / 60, client.limits.burst)


async def draw(
    budget: trio.MemorySendChannel[BudgetInbox],
    lane: str,
    priority: int,
    define: Lane | None = None,
) -> None:
    """Wait for a grant in `lane` (made on demand at `define`'s rate if the budget lacks it);
    withdraws the ask if cancelled while waiting."""
    ticket = Ticket()
    await budget.send(Ask(lane, priority, ticket, define))
    try:
        await ticket.granted.wait()
    except BaseException:
        ticket.withdrawn = True
        raise
