"""The store's file: versioned migrations, connection settings, and one timestamp format."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlite_utils import Database

from anycode_actors.agents import TextDelta
from anycode_actors.errors import AnycodeError
from anycode_actors.store import (
    DEFAULT_BUSY_TIMEOUT,
    MIGRATIONS,
    SCHEMA_VERSION,
    InvalidTransition,
    Migration,
    SchemaTooNew,
    SessionStatus,
    Store,
    StoreError,
    UnknownSession,
    migrate,
)

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00")


@pytest.fixture
def raw(tmp_path: Path) -> Iterator[Callable[[], sqlite3.Connection]]:
    """Plain connections to the test file, as another program would open it."""
    opened: list[sqlite3.Connection] = []

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.close()


def migration_rows(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT * FROM schema_migrations ORDER BY version").fetchall()


async def test_a_new_file_gets_every_migration_once(
    tmp_path: Path, raw: Callable[[], sqlite3.Connection]
) -> None:
    async with Store.open(tmp_path / "store.db") as store:
        assert await store.schema_version() == SCHEMA_VERSION == MIGRATIONS[-1].version
    rows = migration_rows(raw())
    assert [(v, name) for v, name, _at in rows] == [(m.version, m.name) for m in MIGRATIONS]
    tables = Database(raw()).table_names()
    assert {"sessions", "interactions", "events", "schema_migrations"} <= set(tables)


async def test_reopening_changes_nothing(
    tmp_path: Path, raw: Callable[[], sqlite3.Connection]
) -> None:
    async with Store.open(tmp_path / "store.db"):
        pass
    before = migration_rows(raw())
    for _ in range(3):
        async with Store.open(tmp_path / "store.db") as store:
            assert await store.schema_version() == SCHEMA_VERSION
    assert migration_rows(raw()) == before
    assert migrate(Database(raw())) == []


async def test_an_older_file_is_migrated_and_keeps_its_data(
    tmp_path: Path, raw: Callable[[], sqlite3.Connection]
) -> None:
    old = Database(raw())
    assert migrate(old, MIGRATIONS[:1]) == [1]
    old.execute(
        "INSERT INTO sessions (id, platform, chat, user, agent, prompt, status, created_at,"
        " updated_at) VALUES ('0ld5e55', 'telegram', '7', 'u', 'claude', 'p', 'running',"
        " '2025-01-02T03:04:05.000006+00:00', '2025-01-02T03:04:05.000006+00:00')"
    )
    assert "sessions_active" not in {i.name for i in old.table("sessions").indexes}

    async with Store.open(tmp_path / "store.db") as store:
        assert await store.schema_version() == SCHEMA_VERSION
        (session,) = await store.active_sessions()
        assert (session.id, session.status) == ("0ld5e55", SessionStatus.RUNNING)
        assert await store.transition(session.id, SessionStatus.COMPLETED)
    assert [r[0] for r in migration_rows(raw())] == [m.version for m in MIGRATIONS]
    indexes = {i.name for i in Database(raw()).table("sessions").indexes}
    assert {"sessions_active", "sessions_by_chat"} <= indexes


async def test_sessions_from_before_user_names_have_none_and_new_ones_keep_theirs(
    tmp_path: Path, raw: Callable[[], sqlite3.Connection]
) -> None:
    old = Database(raw())
    assert migrate(old, MIGRATIONS[:5]) == [1, 2, 3, 4, 5]
    old.execute(
        "INSERT INTO sessions (id, platform, chat, user, agent, prompt, status, created_at,"
        " updated_at) VALUES ('0ld5e55', 'telegram', '7', 'u', 'claude', 'p', 'running',"
        " '2025-01-02T03:04:05.000006+00:00', '2025-01-02T03:04:05.000006+00:00')"
    )
    async with Store.open(tmp_path / "store.db") as store:
        (before,) = await store.active_sessions()
        assert before.user_name is None
        made = await store.create_session(
            platform="telegram",
            chat="7",
            user="111",
            agent="claude",
            prompt="p",
            user_name="Grace Hopper",
        )
        assert made.user_name == "Grace Hopper"
        again = await store.get_session(made.id)
        assert again is not None and again.user_name == "Grace Hopper"


def test_a_callable_migration_gets_the_sqlite_utils_database(
    raw: Callable[[], sqlite3.Connection],
) -> None:
    db = Database(raw())
    added = Migration(
        SCHEMA_VERSION + 1,
        "sessions.priority",
        lambda db: db.table("sessions").add_column("priority", int),
    )
    assert migrate(db, [*MIGRATIONS, added]) == [*range(1, SCHEMA_VERSION + 2)]
    assert "priority" in db.table("sessions").columns_dict
    assert migrate(db, [*MIGRATIONS, added]) == []


def test_a_failing_migration_leaves_no_trace(raw: Callable[[], sqlite3.Connection]) -> None:
    db = Database(raw())
    migrate(db)

    def half_done(db: Database) -> None:
        db.execute("CREATE TABLE scratch (x)")
        raise RuntimeError("step failed half way")

    with pytest.raises(RuntimeError):
        migrate(db, [*MIGRATIONS, Migration(SCHEMA_VERSION + 1, "broken", half_done)])
    assert "scratch" not in db.table_names()
    assert [r[0] for r in migration_rows(raw())] == [m.version for m in MIGRATIONS]


def test_migrations_must_be_in_ascending_order(raw: Callable[[], sqlite3.Connection]) -> None:
    with pytest.raises(ValueError):
        migrate(Database(raw()), [MIGRATIONS[1], MIGRATIONS[0]])


async def test_a_file_from_a_newer_daemon_is_refused(
    tmp_path: Path, raw: Callable[[], sqlite3.Connection]
) -> None:
    migrate(Database(raw()), [*MIGRATIONS, Migration(99, "future", ())])
    with pytest.raises(SchemaTooNew):
        async with Store.open(tmp_path / "store.db"):
            pass


async def test_a_foreign_database_is_refused_and_left_untouched(
    tmp_path: Path, raw: Callable[[], sqlite3.Connection]
) -> None:
    # The old bot's schema: the same table name, other columns.
    raw().execute("CREATE TABLE sessions (id TEXT PRIMARY KEY, chat_id TEXT, prompt TEXT)")
    with pytest.raises(sqlite3.OperationalError, match="already exists"):
        async with Store.open(tmp_path / "store.db"):
            pass
    assert Database(raw()).table_names() == ["sessions"]


async def test_file_connections_use_wal_busy_timeout_and_foreign_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    connections: list[sqlite3.Connection] = []
    real_connect: Callable[..., sqlite3.Connection] = sqlite3.connect

    def recording_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        connections.append(real_connect(*args, **kwargs))
        return connections[-1]

    monkeypatch.setattr(sqlite3, "connect", recording_connect)
    async with Store.open(tmp_path / "nested" / "dir" / "store.db"):
        (conn,) = connections  # the store is idle: reading its settings here is safe
        pragma = {
            name: conn.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("journal_mode", "busy_timeout", "foreign_keys")
        }
    assert pragma == {
        "journal_mode": "wal",
        "busy_timeout": int(DEFAULT_BUSY_TIMEOUT * 1000),
        "foreign_keys": 1,
    }


async def test_every_timestamp_is_iso_8601_utc_in_one_format(
    tmp_path: Path, raw: Callable[[], sqlite3.Connection]
) -> None:
    started = datetime.now().astimezone()
    async with Store.open(tmp_path / "store.db") as store:
        done = await store.create_session(
            platform="telegram", chat="1", user="u", agent="claude", prompt="p"
        )
        await store.transition(done.id, SessionStatus.FAILED, reason="boom")
        live = await store.create_session(
            platform="slack", chat="C1", user="U", agent="codex", prompt="p"
        )
        await store.append_event(live.id, TextDelta(seq=1, text="t"))
        answered = await store.create_interaction(live.id, "question")
        await store.resolve_interaction(answered.id, answer="a", resolved_by="U")
        await store.create_interaction(live.id, "permission")
        await store.cancel_pending_interactions(live.id)
        records = [
            await store.get_session(done.id),
            await store.get_session(live.id),
            *(await store.events(live.id)),
            await store.get_interaction(answered.id),
        ]
    columns = {
        "sessions": ("created_at", "updated_at", "ended_at"),
        "events": ("created_at",),
        "interactions": ("created_at", "resolved_at"),
        "schema_migrations": ("applied_at",),
    }
    conn = raw()
    stamps = [
        value
        for table, names in columns.items()
        for row in conn.execute(f"SELECT {', '.join(names)} FROM {table}")
        for value in row
        if value is not None
    ]
    assert len(stamps) >= 12
    for stamp in stamps:
        assert TIMESTAMP.fullmatch(stamp), stamp
        parsed = datetime.fromisoformat(stamp)
        assert parsed.utcoffset() == timedelta(0)
        assert started - timedelta(seconds=1) <= parsed <= datetime.now().astimezone()
    for record in records:
        assert record is not None
        for field in ("created_at", "updated_at", "ended_at", "resolved_at"):
            value = getattr(record, field, None)
            assert value is None or value.utcoffset() == timedelta(0)
    schema_sql = " ".join(r[0] for r in conn.execute("SELECT sql FROM sqlite_master") if r[0])
    assert "datetime(" not in schema_sql.lower() and "current_timestamp" not in schema_sql.lower()


def test_store_errors_are_anycode_errors() -> None:
    assert issubclass(StoreError, AnycodeError)
    assert issubclass(InvalidTransition, ValueError) and issubclass(UnknownSession, LookupError)
