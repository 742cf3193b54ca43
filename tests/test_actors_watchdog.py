"""The watchdog: timeouts, dead sandboxes and sandboxes nobody owns, on the autojump clock.

Sessions are stood in for by memory channels that receive what the watchdog tells them; the
sandboxes live in the fake provider, whose engine can be made slow or failing.
"""

from __future__ import annotations

import trio

from anycode_actors.actors.session_api import Cancel, SessionMessage
from anycode_actors.actors.watchdog import ORPHAN_AGE, SandboxOf, Unwatch, Watch, Watchdog
from anycode_actors.sandboxes.base import SandboxError
from tests.actor_fakes import FakeProvider, iso_ago

INTERVAL = 30.0
OLD = ORPHAN_AGE + 600  # seconds: well past the age at which an unowned sandbox is removed


async def start_watchdog(nursery: trio.Nursery, provider: FakeProvider) -> Watchdog:
    watchdog = Watchdog(provider, interval=INTERVAL)
    await nursery.start(watchdog.run)
    return watchdog


async def watch(
    watchdog: Watchdog, session_id: str, *, deadline_in: float = 600.0, size: int = 16
) -> trio.MemoryReceiveChannel[SessionMessage]:
    """Register a session whose deadline is `deadline_in` seconds from now; return its inbox."""
    send, receive = trio.open_memory_channel[SessionMessage](size)
    minutes = deadline_in / 60
    await watchdog.send(
        Watch(session_id, trio.current_time() + deadline_in, f"{minutes:g} min", send)
    )
    return receive


def received(inbox: trio.MemoryReceiveChannel[SessionMessage]) -> list[SessionMessage]:
    messages = []
    while True:
        try:
            messages.append(inbox.receive_nowait())
        except trio.WouldBlock:
            return messages


async def test_a_session_past_its_deadline_is_cancelled_as_failed_once(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    watchdog = await start_watchdog(nursery, FakeProvider())
    inbox = await watch(watchdog, "s-late", deadline_in=90)
    await trio.sleep(80)
    assert received(inbox) == []
    await trio.sleep(20)  # the first check after the deadline (at 90 s) is at 120 s
    assert received(inbox) == [Cancel("timed out after 1.5 min", status="failed")]
    await trio.sleep(10 * INTERVAL)
    assert received(inbox) == []


async def test_a_session_within_its_deadline_is_left_alone(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    provider = FakeProvider()
    watchdog = await start_watchdog(nursery, provider)
    inbox = await watch(watchdog, "s-ok", deadline_in=3600)
    handle = provider.add("s-ok")
    await watchdog.send(SandboxOf("s-ok", handle.id))
    await trio.sleep(3000)
    assert received(inbox) == []
    assert provider.alive == [handle.id]


async def test_a_session_whose_sandbox_died_is_cancelled_as_failed_once(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    provider = FakeProvider()
    watchdog = await start_watchdog(nursery, provider)
    inbox = await watch(watchdog, "s-dead")
    handle = provider.add("s-dead")
    await watchdog.send(SandboxOf("s-dead", handle.id))
    await trio.sleep(INTERVAL + 1)
    assert received(inbox) == []
    provider.kill(handle.id)
    await trio.sleep(INTERVAL)
    assert received(inbox) == [Cancel("the sandbox stopped unexpectedly", status="failed")]
    await trio.sleep(5 * INTERVAL)
    assert received(inbox) == []


async def test_a_session_without_a_sandbox_yet_is_not_taken_for_dead(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    watchdog = await start_watchdog(nursery, FakeProvider())
    inbox = await watch(watchdog, "s-starting")
    await trio.sleep(5 * INTERVAL)
    assert received(inbox) == []


async def test_an_old_labelled_sandbox_of_no_watched_session_is_destroyed(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    provider = FakeProvider()
    orphan = provider.add("s-gone", created_at=iso_ago(OLD))
    watchdog = await start_watchdog(nursery, provider)
    await trio.sleep(INTERVAL + 1)
    assert provider.destroyed == [orphan.id]
    assert watchdog.reaped == [orphan.id]
    assert provider.alive == []


async def test_a_young_sandbox_of_no_watched_session_is_left_alone(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    # Just created: its session may not have registered yet.
    provider = FakeProvider()
    young = provider.add("s-new", created_at=iso_ago(5))
    await start_watchdog(nursery, provider)
    await trio.sleep(3 * INTERVAL)
    assert provider.destroyed == []
    assert provider.alive == [young.id]


async def test_an_old_sandbox_of_a_watched_session_is_left_alone(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    provider = FakeProvider()
    owned = provider.add("s-long", created_at=iso_ago(OLD))
    watchdog = await start_watchdog(nursery, provider)
    await watch(watchdog, "s-long", deadline_in=7200)
    await watchdog.send(SandboxOf("s-long", owned.id))
    await trio.sleep(10 * INTERVAL)
    assert provider.destroyed == []


async def test_the_sandbox_of_a_session_that_just_ended_is_left_for_the_session_to_remove(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    provider = FakeProvider()
    sandbox = provider.add("s-ending", created_at=iso_ago(OLD))
    watchdog = await start_watchdog(nursery, provider)
    await watch(watchdog, "s-ending")
    await watchdog.send(SandboxOf("s-ending", sandbox.id))
    await trio.sleep(1)
    await watchdog.send(Unwatch("s-ending"))  # the session is removing it right now
    await trio.sleep(ORPHAN_AGE - 2 * INTERVAL)
    assert provider.destroyed == []
    # A session that never managed to remove it: after a while it is an orphan like any other.
    await trio.sleep(ORPHAN_AGE + 2 * INTERVAL)
    assert provider.destroyed == [sandbox.id]


async def test_a_slow_engine_never_fails_healthy_sessions(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    provider = FakeProvider()
    watchdog = await start_watchdog(nursery, provider)
    inbox = await watch(watchdog, "s-1", deadline_in=7200)
    handle = provider.add("s-1")
    await watchdog.send(SandboxOf("s-1", handle.id))
    provider.is_alive_delay = 3600.0  # the engine hangs on every inspection
    provider.list_delay = 3600.0
    await trio.sleep(20 * INTERVAL)
    assert received(inbox) == []
    assert provider.destroyed == []


async def test_a_failing_engine_never_fails_healthy_sessions_and_the_watchdog_goes_on(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    provider = FakeProvider()
    watchdog = await start_watchdog(nursery, provider)
    healthy = await watch(watchdog, "s-1", deadline_in=7200)
    handle = provider.add("s-1")
    await watchdog.send(SandboxOf("s-1", handle.id))
    provider.is_alive_error = SandboxError("Docker engine not reachable")
    provider.list_error = SandboxError("Docker engine not reachable")
    await trio.sleep(5 * INTERVAL)
    assert received(healthy) == []
    # Still watching: a timeout is noticed although the engine keeps failing.
    late = await watch(watchdog, "s-2", deadline_in=30)
    await trio.sleep(2 * INTERVAL)
    assert received(late) == [Cancel("timed out after 0.5 min", status="failed")]
    assert received(healthy) == []


async def test_an_orphan_that_cannot_be_removed_does_not_stop_the_others(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    provider = FakeProvider()
    first = provider.add("s-a", created_at=iso_ago(OLD))
    provider.add("s-b", created_at=iso_ago(OLD))
    provider.destroy_error = SandboxError("device busy")
    watchdog = await start_watchdog(nursery, provider)
    await trio.sleep(INTERVAL + 1)
    assert watchdog.reaped == []
    provider.destroy_error = None
    await trio.sleep(INTERVAL)
    assert sorted(watchdog.reaped) == sorted(provider.destroyed)
    assert len(provider.destroyed) == 2 and first.id in provider.destroyed
    assert provider.alive == []


async def test_a_timeout_for_a_session_too_busy_to_take_it_is_told_again(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    watchdog = await start_watchdog(nursery, FakeProvider())
    # An inbox with no room: the session reads it only after a long while.
    inbox = await watch(watchdog, "s-busy", deadline_in=30, size=0)
    await trio.sleep(5 * INTERVAL)
    with trio.fail_after(3 * INTERVAL):
        message = await inbox.receive()
    assert message == Cancel("timed out after 0.5 min", status="failed")


async def test_an_unwatched_session_is_told_nothing_more(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    watchdog = await start_watchdog(nursery, FakeProvider())
    inbox = await watch(watchdog, "s-done", deadline_in=40)
    await trio.sleep(1)
    await watchdog.send(Unwatch("s-done"))
    await trio.sleep(5 * INTERVAL)
    assert received(inbox) == []
