"""The store under concurrency: racing writers on one file (tasks, stores and processes), the
event loop kept free while SQLite waits, and every SQLite call on the store's worker thread."""

from __future__ import annotations

import json
import sqlite3
import sys
import threading
from collections import Counter
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import trio

from anycode_actors.agents import TextDelta
from anycode_actors.store import MIGRATIONS, SCHEMA_VERSION, SessionStatus, Store

S = SessionStatus
TERMINALS = (S.COMPLETED, S.FAILED, S.CANCELLED)


async def new_sessions(store: Store, n: int) -> list[str]:
    return [
        (
            await store.create_session(
                platform="telegram", chat="1", user="u", agent="claude", prompt="p"
            )
        ).id
        for _ in range(n)
    ]


async def attempt(store: Store, sid: str, to: S, frm: S | None, won: list[tuple[str, S]]) -> None:
    if await store.transition(sid, to, frm, reason=f"{to} by racer"):
        won.append((sid, to))


@pytest.mark.parametrize("n_stores", [1, 2])
async def test_racing_writers_on_one_status_exactly_one_wins_each_step(
    tmp_path: Path, n_stores: int
) -> None:
    path = tmp_path / "store.db"
    async with AsyncExitStack() as stack:
        stores = [await stack.enter_async_context(Store.open(path)) for _ in range(n_stores)]
        ids = await new_sessions(stores[0], 12)
        # Racers of one step exclude each other: each names the status the step starts from,
        # or moves to a terminal one (after which nothing moves). A session the previous step
        # ended stays as it is.
        steps: list[list[tuple[S, S | None]]] = [
            [(S.STARTING, S.PENDING), (S.CANCELLED, S.PENDING)],
            [(S.RUNNING, S.STARTING), (S.FAILED, S.STARTING)],
            [(t, None) for t in TERMINALS] + [(t, S.RUNNING) for t in TERMINALS],
        ]
        for attempts in steps:
            before = {sid: await stores[0].get_session(sid) for sid in ids}
            won: list[tuple[str, S]] = []
            async with trio.open_nursery() as nursery:
                for sid in ids:
                    for round_ in range(3):
                        for store in stores:
                            for to, frm in attempts[round_ % 2 :] + attempts[: round_ % 2]:
                                nursery.start_soon(attempt, store, sid, to, frm, won)
            wins = Counter(sid for sid, _to in won)
            winner_target = dict(won)
            for sid in ids:
                previous = before[sid]
                assert previous is not None
                after = await stores[-1].get_session(sid)
                assert after is not None
                if previous.is_terminal:
                    assert wins[sid] == 0 and after == previous
                else:
                    assert wins[sid] == 1, sid
                    assert after.status is winner_target[sid]
                    assert after.reason == f"{winner_target[sid]} by racer"


RACER = """
import json, pathlib, sys
import trio
from anycode_actors.store import Store

path, ids_file, name, n_racers, terminal = sys.argv[1:]

async def main():
    ids = json.loads(pathlib.Path(ids_file).read_text())
    folder = pathlib.Path(path).parent
    async with Store.open(path) as store:
        (folder / f"ready-{name}").touch()
        while len(list(folder.glob("ready-*"))) < int(n_racers):  # start together
            await trio.sleep(0.005)
        wins = []
        for frm, to in (("pending", "starting"), ("starting", "running"), (None, terminal)):
            for sid in ids:
                if await store.transition(sid, to, frm, reason=name):
                    wins.append([sid, to])
        print(json.dumps(wins))

trio.run(main)
"""


async def test_racing_processes_on_one_file_exactly_one_wins_each_step(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with Store.open(path) as store:
        ids = await new_sessions(store, 40)
    (tmp_path / "ids.json").write_text(json.dumps(ids))
    outputs: dict[str, bytes] = {}

    async def race(name: str, terminal: S) -> None:
        done = await trio.run_process(
            [sys.executable, "-c", RACER, str(path), str(tmp_path / "ids.json"), name, "3",
             terminal.value],
            capture_stdout=True,
            check=True,
        )  # fmt: skip
        outputs[name] = done.stdout

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i, terminal in enumerate(TERMINALS):
                nursery.start_soon(race, f"racer{i}", terminal)

    wins = [(sid, to, name) for name, out in outputs.items() for sid, to in json.loads(out)]
    per_step = Counter((sid, "terminal" if S(to).is_terminal else to) for sid, to, _name in wins)
    assert per_step == Counter({(sid, step): 1 for sid in ids for step in
                                ("starting", "running", "terminal")})  # fmt: skip
    async with Store.open(path) as store:
        for sid, to, name in wins:
            if S(to).is_terminal:
                final = await store.get_session(sid)
                assert final is not None
                assert (final.status, final.reason) == (to, name)


async def test_a_write_waiting_for_the_lock_leaves_the_event_loop_running(
    tmp_path: Path,
) -> None:
    """Another process holds the write lock. If the store waited for it on the event loop
    thread, nothing below could run: the loop would be stuck until busy_timeout, then the
    write would fail with "database is locked". No timing decides the outcome: while the
    lock is held the write cannot finish, whatever the speed of the machine."""
    path = tmp_path / "store.db"
    async with Store.open(path, busy_timeout=10) as store:
        (sid,) = await new_sessions(store, 1)
        other_process = sqlite3.connect(path, isolation_level=None)
        other_process.execute("BEGIN IMMEDIATE")
        finished = trio.Event()
        results: list[bool] = []

        async def write() -> None:
            results.append(await store.append_event(sid, TextDelta(seq=1, text="t")))
            finished.set()

        ticks = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            for _ in range(25):
                await trio.sleep(0.01)
                ticks += 1
                assert not finished.is_set()
            other_process.execute("COMMIT")
            with trio.fail_after(10):
                await finished.wait()
        other_process.close()
        assert ticks == 25 and results == [True]
        assert await store.last_seq(sid) == 1


async def test_a_write_in_flight_finishes_even_if_its_caller_is_cancelled(
    tmp_path: Path,
) -> None:
    """Cancelling a caller must not leave it guessing whether its write happened: a write
    that reached SQLite completes, whatever the caller then sees."""
    path = tmp_path / "store.db"
    async with Store.open(path) as store:
        (sid,) = await new_sessions(store, 1)
        other_process = sqlite3.connect(path, isolation_level=None)
        other_process.execute("BEGIN IMMEDIATE")
        writer_scope = trio.CancelScope()
        returned = trio.Event()

        async def write() -> None:
            with writer_scope:
                await store.append_event(sid, TextDelta(seq=1, text="t"))
            returned.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            await trio.sleep(0.1)  # the write is waiting for the lock in its thread
            writer_scope.cancel()
            await trio.sleep(0.1)
            assert not returned.is_set()  # not abandoned: still waiting for its thread
            other_process.execute("COMMIT")
        other_process.close()
        assert await store.last_seq(sid) == 1


async def test_every_sqlite_statement_runs_off_the_event_loop_one_call_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records the thread of every statement SQLite runs for the store. None may run on the
    event loop's thread, and a transaction's statements are never interleaved with another
    thread's (which would mean two calls used the connection at once)."""
    trace: list[tuple[int, str]] = []
    real_connect: Callable[..., sqlite3.Connection] = sqlite3.connect

    def traced_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)
        conn.set_trace_callback(lambda sql: trace.append((threading.get_ident(), sql)))
        return conn

    monkeypatch.setattr(sqlite3, "connect", traced_connect)
    loop_thread = threading.get_ident()
    async with Store.open(tmp_path / "store.db") as store:
        ids = await new_sessions(store, 4)
        async with trio.open_nursery() as nursery:
            for sid in ids:
                for seq in range(1, 11):
                    nursery.start_soon(store.append_event, sid, TextDelta(seq=seq, text="t"))
                nursery.start_soon(store.transition, sid, S.STARTING)
                nursery.start_soon(store.events, sid)
                nursery.start_soon(store.create_interaction, sid, "question")
    assert len(trace) > 100
    assert loop_thread not in {thread for thread, _sql in trace}
    owner = None
    for thread, sql in trace:
        if sql.startswith("BEGIN"):
            assert owner is None
            owner = thread
        elif owner is not None:
            assert thread == owner, f"{sql!r} ran inside another thread's transaction"
            if sql in ("COMMIT", "ROLLBACK"):
                owner = None


async def test_two_stores_writing_at_once_never_see_database_is_locked(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with Store.open(path) as a, Store.open(path) as b:
        ids_a, ids_b = await new_sessions(a, 5), await new_sessions(b, 5)

        async def write_all(store: Store, ids: list[str]) -> None:
            for seq in range(1, 41):
                for sid in ids:
                    await store.append_event(sid, TextDelta(seq=seq, text="t"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write_all, a, ids_a)
            nursery.start_soon(write_all, b, ids_b)
        for sid in ids_a + ids_b:
            assert await a.last_seq(sid) == 40
            assert len(await b.events(sid)) == 40


async def test_two_stores_opening_a_new_file_at_once_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    versions: list[int] = []

    async def open_one() -> None:
        async with Store.open(path) as store:
            versions.append(await store.schema_version())

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(open_one)
    raw = sqlite3.connect(path)
    rows = raw.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    raw.close()
    assert rows == [(m.version,) for m in MIGRATIONS] and versions == [SCHEMA_VERSION] * 4
