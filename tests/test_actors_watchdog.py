"""The watchdog: timeouts, dead sandboxes and sandboxes nobody owns, decided from the store, on
the autojump clock.

Sessions are records in a real (in-memory) store and inboxes registered with a real session
directory; the sandboxes live in the fake provider, whose engine can be made slow or failing.
The watchdog's wall clock follows the autojump clock, so "30 minutes later" takes no real time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import trio

from anycode_actors.actors.directory import Register, SessionDirectory
from anycode_actors.actors.session_api import Cancel, SessionHandle, SessionMessage
from anycode_actors.actors.watchdog import ORPHAN_AGE, Watchdog
from anycode_actors.sandboxes.base import SandboxError
from anycode_actors.store import SessionStatus, Store
from tests.actor_fakes import FakeProvider, iso_ago, memory_store

INTERVAL = 30.0
TIMEOUT = timedelta(minutes=30)
OLD = ORPHAN_AGE + 600  # seconds: well past the age at which an unowned sandbox is removed


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    async with memory_store() as store:
        yield store


@dataclass
class World:
    provider: FakeProvider
    store: Store
    directory: SessionDirectory
    watchdog: Watchdog

    async def session(
        self, *, age: float = 0.0, sandbox: bool = True, registered: bool = True, size: int = 16
    ) -> tuple[str, trio.MemoryReceiveChannel[SessionMessage], str | None]:
        """A running session `age` seconds old: (id, its inbox, its sandbox id)."""
        session = await self.store.create_session(
            platform="telegram", chat="1", user="1", agent="claude-code", prompt="x"
        )
        created = (datetime.now(UTC) - timedelta(seconds=age)).isoformat(timespec="microseconds")
        self.store._sync_db.execute(
            "UPDATE sessions SET created_at = ? WHERE id = ?", [created, session.id]
        )
        sandbox_id = None
        await self.store.transition(session.id, SessionStatus.STARTING)
        if sandbox:
            sandbox_id = self.provider.add(session.id, created_at=created).id
            await self.store.set_sandbox(session.id, sandbox_id, "http://sandbox.invalid")
            await self.store.transition(session.id, SessionStatus.RUNNING)
        send, receive = trio.open_memory_channel[SessionMessage](size)
        if registered:
            await self.directory.send(Register(SessionHandle(session.id, "1", send)))
        return session.id, receive, sandbox_id


async def start_world(
    nursery: trio.Nursery, store: Store, provider: FakeProvider | None = None
) -> World:
    provider = provider or FakeProvider()
    directory = SessionDirectory()
    await nursery.start(directory.run)
    start, started = datetime.now(UTC), trio.current_time()

    def wall_clock() -> datetime:
        return start + timedelta(seconds=trio.current_time() - started)

    watchdog = Watchdog(
        provider,
        store,
        directory.address(),
        timeout=TIMEOUT,
        interval=INTERVAL,
        wall_clock=wall_clock,
    )
    await nursery.start(watchdog.run)
    return World(provider, store, directory, watchdog)


def received(inbox: trio.MemoryReceiveChannel[SessionMessage]) -> list[SessionMessage]:
    messages = []
    while True:
        try:
            messages.append(inbox.receive_nowait())
        except trio.WouldBlock:
            return messages


TIMED_OUT = Cancel("timed out after 30 min", status="failed")
DIED = Cancel("the sandbox stopped unexpectedly", status="failed", sandbox_lost=True)


async def test_a_session_past_its_timeout_is_cancelled_as_failed_once(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    world = await start_world(nursery, store)
    _, inbox, _ = await world.session(age=29 * 60)
    await trio.sleep(INTERVAL + 1)
    assert received(inbox) == []
    await trio.sleep(2 * INTERVAL)
    assert received(inbox) == [TIMED_OUT]
    await trio.sleep(5 * INTERVAL)  # still active in the store while it ends: told once
    assert received(inbox) == []


async def test_a_session_within_its_timeout_is_left_alone(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    world = await start_world(nursery, store)
    _, inbox, _ = await world.session(age=60)
    await trio.sleep(20 * INTERVAL)
    assert received(inbox) == []


async def test_the_timeout_counts_from_creation_even_across_a_daemon_restart(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    # No message ever told this watchdog about the session: the store is enough.
    world = await start_world(nursery, store)
    _, inbox, _ = await world.session(age=31 * 60)
    await trio.sleep(INTERVAL + 1)
    assert received(inbox) == [TIMED_OUT]


async def test_a_session_whose_sandbox_died_is_cancelled_as_failed_once(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    world = await start_world(nursery, store)
    _, inbox, sandbox = await world.session()
    _, healthy, _ = await world.session()
    await trio.sleep(INTERVAL + 1)
    assert received(inbox) == []
    assert sandbox is not None
    world.provider.kill(sandbox)
    await trio.sleep(INTERVAL)
    assert received(inbox) == [DIED]
    await trio.sleep(3 * INTERVAL)
    assert received(inbox) == []
    assert received(healthy) == []


async def test_an_ending_session_that_removed_its_sandbox_is_not_said_to_have_lost_it(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An ending session closes its inbox, removes its sandbox, then records its outcome: a
    sweep in between finds the record running and the sandbox gone, which is no loss."""
    world = await start_world(nursery, store)
    session_id, inbox, sandbox = await world.session()
    lost_id, lost_inbox, lost_sandbox = await world.session()
    assert sandbox is not None and lost_sandbox is not None
    inbox.close()  # what the session actor does first when it ends
    await world.provider.destroy(sandbox)
    world.provider.kill(lost_sandbox)
    with caplog.at_level("DEBUG", logger="anycode_actors.actors.watchdog"):
        await trio.sleep(INTERVAL + 1)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == [f"session {lost_id[:8]}: its sandbox stopped unexpectedly"]
    assert received(lost_inbox) == [DIED]
    record = await store.get_session(session_id)
    assert record is not None and record.status == SessionStatus.RUNNING  # the session's to end


async def test_a_session_without_a_sandbox_yet_is_not_taken_for_dead(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    world = await start_world(nursery, store)
    _, inbox, _ = await world.session(sandbox=False)
    await trio.sleep(5 * INTERVAL)
    assert received(inbox) == []


async def test_an_old_labelled_sandbox_of_no_live_session_is_destroyed(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    provider = FakeProvider()
    orphan = provider.add("s-gone", created_at=iso_ago(OLD))
    world = await start_world(nursery, store, provider)
    await trio.sleep(INTERVAL + 1)
    assert provider.destroyed == [orphan.id]
    assert world.watchdog.reaped == [orphan.id]


async def test_a_young_sandbox_of_no_live_session_is_left_alone(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    provider = FakeProvider()
    young = provider.add("s-new", created_at=iso_ago(5))
    await start_world(nursery, store, provider)
    await trio.sleep(3)
    await trio.sleep(INTERVAL)
    assert provider.destroyed == []
    assert provider.alive == [young.id]


async def test_an_old_sandbox_of_a_live_session_is_never_reaped_even_if_nobody_told_us(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    """The review's bug: a lost `Watch` message got a live session's sandbox reaped."""
    world = await start_world(nursery, store)
    _, _, sandbox = await world.session(age=OLD, registered=False)
    await trio.sleep(10 * INTERVAL)
    assert world.provider.destroyed == []
    assert world.provider.alive == [sandbox]


async def test_the_sandbox_of_an_ended_session_that_could_not_remove_it_is_reaped(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    world = await start_world(nursery, store)
    session_id, _, sandbox = await world.session(age=OLD)
    await store.transition(session_id, SessionStatus.FAILED)
    await trio.sleep(INTERVAL + 1)
    assert world.provider.destroyed == [sandbox]


async def test_a_hung_engine_delays_no_timeout_by_more_than_one_sweep(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    world = await start_world(nursery, store)
    for _ in range(20):
        await world.session()
    world.provider.is_alive_delay = 3600.0  # every inspection hangs
    world.provider.list_delay = 3600.0
    _, late, _ = await world.session(age=TIMEOUT.total_seconds() - INTERVAL / 2)
    await trio.sleep(2 * INTERVAL + 1)
    assert received(late) == [TIMED_OUT]


async def test_a_slow_or_failing_engine_never_fails_healthy_sessions(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    world = await start_world(nursery, store)
    _, slow, _ = await world.session()
    world.provider.is_alive_delay = 3600.0
    world.provider.list_delay = 3600.0
    await trio.sleep(10 * INTERVAL)
    assert received(slow) == []
    world.provider.is_alive_delay = world.provider.list_delay = 0.0
    world.provider.is_alive_error = SandboxError("Docker engine not reachable")
    world.provider.list_error = SandboxError("Docker engine not reachable")
    await trio.sleep(10 * INTERVAL)
    assert received(slow) == []
    assert world.provider.destroyed == []


async def test_an_orphan_that_cannot_be_removed_does_not_stop_the_others(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    provider = FakeProvider()
    first = provider.add("s-a", created_at=iso_ago(OLD))
    provider.add("s-b", created_at=iso_ago(OLD))
    provider.destroy_error = SandboxError("device busy")
    world = await start_world(nursery, store, provider)
    await trio.sleep(INTERVAL + 1)
    assert world.watchdog.reaped == []
    provider.destroy_error = None
    await trio.sleep(INTERVAL)
    assert sorted(world.watchdog.reaped) == sorted(provider.destroyed)
    assert len(provider.destroyed) == 2 and first.id in provider.destroyed


async def test_a_session_too_busy_to_take_its_timeout_at_once_still_gets_it(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    world = await start_world(nursery, store)
    # An inbox with no room: the session reads it only after a few seconds.
    _, inbox, _ = await world.session(age=TIMEOUT.total_seconds() + 1, size=0)
    await trio.sleep(INTERVAL + 5)
    with trio.fail_after(1):
        assert await inbox.receive() == TIMED_OUT


async def test_a_session_that_ended_is_told_nothing_more(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    world = await start_world(nursery, store)
    session_id, inbox, _ = await world.session(age=TIMEOUT.total_seconds() - 10)
    await store.transition(session_id, SessionStatus.COMPLETED)
    await trio.sleep(5 * INTERVAL)
    assert received(inbox) == []


async def test_a_record_left_active_by_an_actor_that_could_not_write_its_end_is_settled(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    """A session actor that ended on a full disk could not record its outcome: without an actor
    and without a sandbox, the record is failed after a grace, so it stops counting."""
    world = await start_world(nursery, store)
    session_id, _, _ = await world.session(sandbox=False, registered=False)
    with_sandbox, _, _ = await world.session(registered=False)  # recovery's business, not ours
    await trio.sleep(ORPHAN_AGE - INTERVAL)
    settled = await store.get_session(session_id)
    assert settled is not None and not settled.status.is_terminal
    await trio.sleep(3 * INTERVAL)
    settled = await store.get_session(session_id)
    assert settled is not None and settled.status == SessionStatus.FAILED
    assert settled.reason == "its session ended without recording its outcome"
    kept = await store.get_session(with_sandbox)
    assert kept is not None and kept.status == SessionStatus.RUNNING
