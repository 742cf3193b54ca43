"""Retention in the store: `purge_ended_before` deletes the events and interactions of sessions
that ended before the cutoff, and nothing else. Real SQLite in a temporary file."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from anycode_actors.agents import TextDelta
from anycode_actors.store import Purged, Session, SessionStatus, Store

S = SessionStatus
PATH_TO = {
    S.RUNNING: [S.STARTING, S.RUNNING],
    S.COMPLETED: [S.STARTING, S.RUNNING, S.COMPLETED],
    S.FAILED: [S.STARTING, S.FAILED],
    S.CANCELLED: [S.CANCELLED],
}
TERMINAL = (S.COMPLETED, S.FAILED, S.CANCELLED)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[Store]:
    async with Store.open(db_path) as opened:
        yield opened


async def session_with_history(
    store: Store, status: SessionStatus, *, events: int = 3, interactions: int = 2
) -> Session:
    session = await store.create_session(
        platform="telegram", chat="100", user="u1", agent="claude", prompt="fix it"
    )
    for seq in range(1, events + 1):
        assert await store.append_event(session.id, TextDelta(seq=seq, text=f"part {seq}"))
    for _ in range(interactions):
        await store.create_interaction(session.id, "permission")
    for step in PATH_TO[status]:
        assert await store.transition(session.id, step)
    got = await store.get_session(session.id)
    assert got is not None
    return got


def age(db_path: Path, session_id: str, days: float) -> None:
    """Make the session look `days` old: ended then (if it ended), created and updated then."""
    when = (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="microseconds")
    with closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute(
            "UPDATE sessions SET created_at = ?, updated_at = ?,"
            " ended_at = CASE WHEN ended_at IS NULL THEN NULL ELSE ? END WHERE id = ?",
            (when, when, when, session_id),
        )


async def test_old_ended_sessions_lose_events_and_interactions_and_others_keep_them(
    store: Store, db_path: Path
) -> None:
    old = {status: await session_with_history(store, status) for status in TERMINAL}
    recent = await session_with_history(store, S.COMPLETED)
    live = await session_with_history(store, S.RUNNING)
    for session in old.values():
        age(db_path, session.id, days=31)
    age(db_path, recent.id, days=29)
    age(db_path, live.id, days=60)  # running for two months: still live, nothing goes
    before = {s.id: s for s in [*old.values(), recent, live]}

    purged = await store.purge_ended_before(datetime.now(UTC) - timedelta(days=30))

    assert purged == Purged(events=3 * len(old), interactions=2 * len(old))
    for session in old.values():
        assert await store.events(session.id) == []
        assert await stored_interactions(db_path, session.id) == 0
    for session in (recent, live):
        assert [e.seq for e in await store.events(session.id)] == [1, 2, 3]
        assert await stored_interactions(db_path, session.id) == 2
    # Session rows stay, unchanged: quotas count them and /status lists them.
    for session_id, session in before.items():
        after = await store.get_session(session_id)
        assert after is not None
        assert (after.status, after.last_event_seq) == (session.status, 3)
    assert await store.purge_ended_before(datetime.now(UTC) - timedelta(days=30)) == Purged()


async def stored_interactions(db_path: Path, session_id: str) -> int:
    with closing(sqlite3.connect(db_path)) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM interactions WHERE session_id = ?", (session_id,)
        ).fetchone()
    return int(count)


async def test_the_cutoff_may_be_in_any_timezone(store: Store, db_path: Path) -> None:
    ended = await session_with_history(store, S.COMPLETED)
    age(db_path, ended.id, days=2)
    # Two days ago in UTC+10 is "later" text than in UTC; compared as text unconverted, the
    # cutoff one hour after the session ended would look earlier than its end.
    east = timezone(timedelta(hours=10))
    cutoff = (datetime.now(UTC) - timedelta(days=2) + timedelta(hours=1)).astimezone(east)
    assert await store.purge_ended_before(cutoff) == Purged(events=3, interactions=2)
    west = timezone(timedelta(hours=-10))
    other = await session_with_history(store, S.FAILED)
    age(db_path, other.id, days=2)
    too_early = (datetime.now(UTC) - timedelta(days=2) - timedelta(hours=1)).astimezone(west)
    assert await store.purge_ended_before(too_early) == Purged()


async def test_a_purge_deletes_in_batches_until_nothing_is_left(
    store: Store, db_path: Path
) -> None:
    sessions = [await session_with_history(store, S.COMPLETED, events=5) for _ in range(3)]
    for session in sessions:
        age(db_path, session.id, days=40)
    purged = await store.purge_ended_before(datetime.now(UTC) - timedelta(days=30), batch=2)
    assert purged == Purged(events=15, interactions=6)
    for session in sessions:
        assert await store.events(session.id) == []


async def test_a_naive_cutoff_or_an_empty_batch_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.purge_ended_before(datetime.now() - timedelta(days=30))
    with pytest.raises(ValueError, match="at least one row"):
        await store.purge_ended_before(datetime.now(UTC), batch=0)


async def test_purging_an_in_memory_store_works_too() -> None:
    async with Store.open(":memory:") as store:
        session = await session_with_history(store, S.CANCELLED)
        assert await store.purge_ended_before(datetime.now(UTC) - timedelta(days=1)) == Purged()
        assert len(await store.events(session.id)) == 3
        later = datetime.now(UTC) + timedelta(seconds=1)
        assert await store.purge_ended_before(later) == Purged(events=3, interactions=2)
