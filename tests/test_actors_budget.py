"""The bot-wide budget: grants at the lane's rate, urgent calls first, pauses for a bot-wide 429,
and flushers that coalesce while they wait so no text is lost or repeated."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import pytest
import trio
import trio.testing

from anycode_actors.actors.budget import ROUTINE, URGENT, Ask, Budget, Lane, Pause, Ticket, draw
from anycode_actors.actors.flusher import Append, EndStream, Flusher
from anycode_actors.chat.base import ChatRef, RateLane
from tests.actor_fakes import RecordingChat


async def start_budget(nursery: trio.Nursery, per_second: float, burst: int) -> Budget:
    budget = Budget({"bot": Lane(per_second, burst)})
    await nursery.start(budget.run)
    return budget


async def test_grants_follow_the_lane_rate(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    budget = await start_budget(nursery, per_second=10, burst=5)
    granted: list[float] = []

    async def caller() -> None:
        await draw(budget.address(), "bot", URGENT)
        granted.append(trio.current_time())

    start = trio.current_time()
    async with trio.open_nursery() as callers:
        for _ in range(25):
            callers.start_soon(caller)
    # 5 at once, then 10 a second: the last of 25 after 2 s.
    assert sum(t - start < 0.01 for t in granted) == 5
    assert max(granted) - start == pytest_approx(2.0)


def pytest_approx(value: float) -> object:
    return pytest.approx(value, abs=0.05)


async def test_urgent_calls_overtake_routine_ones(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    budget = await start_budget(nursery, per_second=1, burst=1)
    order: list[str] = []
    await draw(budget.address(), "bot", URGENT)  # empties the bucket

    async def caller(name: str, priority: int) -> None:
        await draw(budget.address(), "bot", priority)
        order.append(name)

    async with trio.open_nursery() as callers:
        for n in range(3):
            callers.start_soon(caller, f"edit {n}", ROUTINE)
            await trio.testing.wait_all_tasks_blocked()
        callers.start_soon(caller, "prompt", URGENT)
    assert order == ["prompt", "edit 0", "edit 1", "edit 2"]


async def test_a_bot_wide_pause_holds_every_grant(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    budget = await start_budget(nursery, per_second=100, burst=100)
    await budget.send(Pause("bot", 30))
    start = trio.current_time()
    await draw(budget.address(), "bot", URGENT)
    assert trio.current_time() - start >= 30


async def test_a_withdrawn_ask_costs_no_token(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    budget = await start_budget(nursery, per_second=1, burst=1)
    await draw(budget.address(), "bot", URGENT)
    with trio.move_on_after(0.1):
        await draw(budget.address(), "bot", URGENT)  # gives up
    start = trio.current_time()
    await draw(budget.address(), "bot", URGENT)
    assert trio.current_time() - start < 1.0


async def test_an_unknown_lane_is_not_paced(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    budget = await start_budget(nursery, per_second=1, burst=1)
    ticket = Ticket()
    for _ in range(5):
        await budget.send(Ask("elsewhere", URGENT, ticket))
    await trio.testing.wait_all_tasks_blocked()
    assert ticket.granted.is_set()


LANE = RateLane("bot", 1.0, 1)


class LanedChat(RecordingChat):
    rate_lanes: ClassVar[Mapping[str, RateLane]] = {"send": LANE, "edit": LANE, "upload": LANE}


async def test_many_flushers_share_the_budget_and_lose_or_repeat_nothing(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    """20 chats stream 50 words each under a bot budget of 2 calls a second: every word once."""
    budget = await start_budget(nursery, per_second=2, burst=2)
    clients = []
    flushers = []
    for n in range(20):
        client = LanedChat()
        chat = ChatRef("telegram", str(n))
        flusher = Flusher(client, chat, debounce=0.5, budget=budget.address())
        await nursery.start(flusher.run)
        clients.append(client)
        flushers.append(flusher)
    for word in range(50):
        for flusher in flushers:
            await flusher.send(Append("s", f"w{word} "))
        await trio.sleep(0.1)
    for flusher in flushers:
        await flusher.send(EndStream("s"))
    start = trio.current_time()
    for flusher in flushers:
        with trio.fail_after(600):
            await flusher.drain()
    calls = sum(len(c.calls) for c in clients)
    for client in clients:
        assert [t.strip() for t in client.texts()] == [" ".join(f"w{w}" for w in range(50))]
    # Coalesced: far fewer calls than the 1000 deltas, and never faster than the budget.
    assert calls < 200
    assert calls <= 2 + 2 * (trio.current_time() - start + 5.0 + 1)


async def test_a_lane_made_on_demand_paces_every_asker_and_is_forgotten_when_full(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    budget = await start_budget(nursery, per_second=100, burst=100)
    group = Lane(per_second=1 / 3, burst=3)
    granted: list[float] = []

    async def caller() -> None:
        await draw(budget.address(), "group:-100", URGENT, group)
        granted.append(trio.current_time())

    start = trio.current_time()
    async with trio.open_nursery() as callers:
        for _ in range(6):
            callers.start_soon(caller)
    # One bucket for all six: 3 at once, then one every 3 s.
    assert [t - start for t in sorted(granted)] == [pytest_approx(t) for t in (0, 0, 0, 3, 6, 9)]
    await trio.sleep(9.5)  # full again, and nobody waits: the lane is gone
    await trio.testing.wait_all_tasks_blocked()
    assert "group:-100" not in budget._lanes
    # A pause of a lane made on demand holds it even before anyone asked.
    await budget.send(Pause("group:-200", 20, group))
    start = trio.current_time()
    await draw(budget.address(), "group:-200", URGENT, group)
    assert trio.current_time() - start == pytest_approx(20)
