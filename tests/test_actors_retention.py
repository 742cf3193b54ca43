"""The retention worker: it purges at start and then every interval, on the autojump clock.

Wall-clock time (when sessions ended) is a clock of the test's own that moves with trio time,
so an hour of trio time is an hour of "wall" time too.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from anycode_actors.actors.retention import Retention
from anycode_actors.agents import TextDelta
from anycode_actors.store import Purged, SessionStatus, StoreClosed
from supervisors import ChildSpec, ChildState, Registry, Supervisor
from tests.actor_fakes import InlineStore

HOUR = 3600.0
BASE = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def moving_clock(start: datetime) -> Callable[[], datetime]:
    """Wall time that starts at `start` and moves with trio's clock."""
    zero = trio.current_time()
    return lambda: start + timedelta(seconds=trio.current_time() - zero)


class RecordingStore:
    """Answers purges with fixed counts and remembers when (trio time) and with what cutoff."""

    def __init__(self, *failures: BaseException) -> None:
        self.calls: list[tuple[float, datetime]] = []
        self._failures = list(failures)

    async def purge_ended_before(self, cutoff: datetime) -> Purged:
        await trio.lowlevel.checkpoint()
        self.calls.append((trio.current_time(), cutoff))
        if self._failures:
            raise self._failures.pop(0)
        return Purged(events=5, interactions=1)


async def supervised(nursery: trio.Nursery, retention: Retention, registry: Registry) -> Supervisor:
    root = Supervisor([ChildSpec("retention", retention.run)], registry=registry)
    await nursery.start(root.run)
    return root


async def test_it_purges_at_start_and_then_every_interval(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    store = RecordingStore()
    registry = Registry()
    start = trio.current_time()
    retention = Retention(store, days=30, interval=HOUR, wall_clock=moving_clock(BASE))
    await supervised(nursery, retention, registry)
    await trio.sleep(1)
    assert [(t - start, c) for t, c in store.calls] == [(0, BASE - timedelta(days=30))]
    await trio.sleep(2 * HOUR)
    assert [t - start for t, _ in store.calls] == [0, HOUR, 2 * HOUR]
    assert [c for _, c in store.calls] == [
        BASE - timedelta(days=30) + timedelta(hours=h) for h in range(3)
    ]
    entry = registry.get("root/retention")
    assert entry is not None
    assert entry.info == {
        "retention_days": 30,
        "runs": 3,
        "last_run": "2025-01-01T14:00:00+00:00",
        "deleted_events": 15,
        "deleted_interactions": 3,
        "error": None,
    }


async def test_a_failing_database_is_reported_and_retried_at_the_next_interval(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    store = RecordingStore(sqlite3.OperationalError("database is locked"))
    registry = Registry()
    retention = Retention(store, days=7, interval=HOUR, wall_clock=moving_clock(BASE))
    await supervised(nursery, retention, registry)
    await trio.sleep(1)
    entry = registry.get("root/retention")
    assert entry is not None
    assert entry.info["error"] == "OperationalError: database is locked"
    assert retention.purged == Purged()
    await trio.sleep(HOUR)
    entry = registry.get("root/retention")
    assert entry is not None
    assert (entry.restarts, entry.state) == (0, ChildState.RUNNING)
    assert entry.info["error"] is None
    assert retention.purged == Purged(events=5, interactions=1)
    assert len(store.calls) == 2


async def test_a_closed_store_crashes_it_so_its_supervisor_restarts_it(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    store = RecordingStore(StoreClosed("the store is closed"))
    registry = Registry()
    retention = Retention(store, days=7, interval=HOUR, wall_clock=moving_clock(BASE))
    await supervised(nursery, retention, registry)
    await trio.sleep(60)
    entry = registry.get("root/retention")
    assert entry is not None
    assert (entry.restarts, entry.state) == (1, ChildState.RUNNING)
    assert len(store.calls) == 2


def test_days_and_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least one day"):
        Retention(RecordingStore(), days=0)
    with pytest.raises(ValueError, match="must be positive"):
        Retention(RecordingStore(), days=1, interval=0)


@pytest.fixture
def db_path() -> Iterator[Path]:
    # Short: the daemon test puts its admin socket here (a Unix socket path has 107 bytes).
    folder = Path(tempfile.mkdtemp(prefix="ac", dir="/tmp"))
    try:
        yield folder / "store.db"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def test_a_session_loses_its_history_at_the_first_run_past_its_retention(
    autojump_clock: trio.abc.Clock, db_path: Path
) -> None:
    async with InlineStore.open(db_path) as store:
        ended = await store.create_session(
            platform="telegram", chat="1", user="u", agent="claude", prompt="fix it"
        )
        live = await store.create_session(
            platform="telegram", chat="1", user="u", agent="claude", prompt="and this"
        )
        for session in (ended, live):
            for seq in (1, 2):
                await store.append_event(session.id, TextDelta(seq=seq, text="x"))
            await store.create_interaction(session.id, "question")
        for step in (SessionStatus.STARTING, SessionStatus.RUNNING, SessionStatus.COMPLETED):
            assert await store.transition(ended.id, step)
        assert await store.transition(live.id, SessionStatus.STARTING)
        with closing(sqlite3.connect(db_path)) as conn, conn:
            conn.execute(
                "UPDATE sessions SET ended_at = ? WHERE id = ?",
                (BASE.isoformat(timespec="microseconds"), ended.id),
            )
        # One day of retention; the wall clock starts 22.5 hours after the session ended, so
        # the runs at 0 and 1 hour keep its history and the run at 2 hours deletes it.
        clock = moving_clock(BASE + timedelta(hours=22.5))
        retention = Retention(store, days=1, interval=HOUR, wall_clock=clock)
        async with trio.open_nursery() as inner:
            await inner.start(retention.run)
            await trio.sleep(HOUR + 1)
            assert retention.runs == 2
            assert len(await store.events(ended.id)) == 2
            await trio.sleep(HOUR)
            assert retention.runs == 3
            assert await store.events(ended.id) == []
            assert len(await store.events(live.id)) == 2
            assert retention.purged == Purged(events=2, interactions=1)
            inner.cancel_scope.cancel()


async def test_the_daemon_runs_retention_right_after_the_watchdog(db_path: Path) -> None:
    from anycode_actors.config import config_from_mapping
    from anycode_actors.daemon import Daemon

    folder = db_path.parent
    config = config_from_mapping(
        {
            "telegram": {"bot_token": "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11"},
            "sandbox": {"provider": "local", "protocol": "acp"},
            "local": {"allow_unsandboxed": True, "workdir": str(folder / "work")},
            "database": {"path": str(db_path), "retention_days": 7},
            "admin": {"socket": str(folder / "d.sock")},
        },
        environ={},
        base_dir=folder,
    )
    daemon = Daemon(config, clients=[])
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        with trio.fail_after(5):
            while True:
                entry = daemon.registry.get("root/retention")
                if entry is not None and entry.info:
                    break
                await trio.sleep(0.01)
        paths = [e.path for e in daemon.registry.snapshot()]
        nursery.cancel_scope.cancel()
    assert paths.index("root/retention") == paths.index("root/watchdog") + 1
    assert (entry.kind, entry.state, entry.restarts) == ("worker", ChildState.RUNNING, 0)
    assert entry.info["retention_days"] == 7
    assert entry.info["runs"] == 1
    assert entry.info["error"] is None
