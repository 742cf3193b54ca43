"""Versioned schema: the migration steps and the function that applies them."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

from sqlite_utils import Database

from ._errors import SchemaTooNew
from ._records import utc_now


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step. ``apply`` is a tuple of SQL statements or a callable on the sqlite-utils
    Database (for changes plain ALTER TABLE cannot make). It runs inside the step's transaction,
    so a failing step leaves no trace. Released steps are never edited: add a new one."""

    version: int
    name: str
    apply: tuple[str, ...] | Callable[[Database], None]


_V1_CORE_TABLES: Final = (
    """
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        platform TEXT NOT NULL,
        chat TEXT NOT NULL,
        thread TEXT,
        user TEXT NOT NULL,
        agent TEXT NOT NULL,
        prompt TEXT NOT NULL,
        repo TEXT,
        sandbox_id TEXT,
        agent_endpoint TEXT,
        agent_session_id TEXT,
        status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN
            ('pending', 'starting', 'running', 'completed', 'failed', 'cancelled')),
        last_event_seq INTEGER NOT NULL DEFAULT 0,
        reason TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        ended_at TEXT
    )
    """,
    """
    CREATE TRIGGER sessions_status_transition
    BEFORE UPDATE OF status ON sessions
    WHEN NEW.status IS NOT OLD.status AND NOT (
        (OLD.status = 'pending' AND NEW.status IN ('starting', 'failed', 'cancelled'))
        OR (OLD.status = 'starting' AND NEW.status IN ('running', 'failed', 'cancelled'))
        OR (OLD.status = 'running' AND NEW.status IN ('completed', 'failed', 'cancelled'))
    )
    BEGIN
        SELECT RAISE(ABORT, 'forbidden session status transition');
    END
    """,
    """
    CREATE TABLE interactions (
        id TEXT PRIMARY KEY,
        session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        kind TEXT NOT NULL CHECK (kind IN ('question', 'permission')),
        request_id TEXT,
        tool_call_id TEXT,
        options TEXT NOT NULL DEFAULT '[]',
        chat_message_id TEXT,
        status TEXT NOT NULL DEFAULT 'pending'
            CHECK (status IN ('pending', 'resolved', 'cancelled')),
        resolved_by TEXT,
        answer TEXT,
        created_at TEXT NOT NULL,
        resolved_at TEXT
    )
    """,
    """
    CREATE TRIGGER interactions_resolved_once
    BEFORE UPDATE OF status ON interactions
    WHEN NEW.status IS NOT OLD.status AND OLD.status != 'pending'
    BEGIN
        SELECT RAISE(ABORT, 'interaction already resolved');
    END
    """,
    """
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL CHECK (seq > 0),
        type TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at TEXT NOT NULL,
        UNIQUE (session_id, seq)
    )
    """,
)

_V2_QUERY_INDEXES: Final = (
    "CREATE INDEX sessions_by_chat ON sessions (platform, chat, status, created_at)",
    """
    CREATE INDEX sessions_active ON sessions (created_at)
    WHERE status IN ('pending', 'starting', 'running')
    """,
    """
    CREATE INDEX interactions_pending ON interactions (session_id, created_at)
    WHERE status = 'pending'
    """,
)

# The chat message a session's output is streaming into, and where in the event log its text
# begins: a restarted daemon rebuilds that message from the log and carries on in it, so a crash
# neither loses output nor shows it twice.
_V3_STREAM_MESSAGE: Final = (
    "ALTER TABLE sessions ADD COLUMN stream_message_id TEXT",
    "ALTER TABLE sessions ADD COLUMN stream_mark INTEGER",
    "ALTER TABLE sessions ADD COLUMN stream_offset INTEGER NOT NULL DEFAULT 0",
)

# The outbox files a session has delivered to its chat (name and size, as the sandbox listed
# them): a restarted daemon uploads what a turn left behind without sending anything twice.
_V4_UPLOADS: Final = (
    """
    CREATE TABLE uploads (
        session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        size INTEGER NOT NULL,
        uploaded_at TEXT NOT NULL,
        PRIMARY KEY (session_id, name, size)
    )
    """,
)

# Up to v4 an event was stored under its class name, with every field except seq that was not
# None, "" or empty. From v5 `events.type` holds a versioned tag chosen in
# `anycode_actors.agents.events`, and `from_record` needs each required field of the tag in the
# payload, even when it is None or "". This step renames the nine kinds and puts back the
# required fields the old form left out, with the value that made it leave them out. It is
# written out here, not taken from the events module, so that it stays what it was when it
# shipped. A row under any other name is left as it is (it reads as an unknown event).
_V5_EVENT_TAGS: Final[Mapping[str, tuple[str, Mapping[str, Any]]]] = {
    "TextDelta": ("text_delta/1", {"text": ""}),
    "ThoughtDelta": ("thought_delta/1", {"text": ""}),
    "ToolCall": ("tool_call/1", {"tool_call_id": ""}),
    "PermissionRequested": (
        "permission_requested/1",
        {
            "key": "",
            "request_id": "",
            "tool_call_id": None,
            "title": None,
            "input_summary": "",
            "options": [],
        },
    ),
    "PermissionResolved": ("permission_resolved/1", {"key": ""}),
    "TurnEnded": ("turn_ended/1", {"stop_reason": ""}),
    "ErrorEvent": ("error/1", {"message": ""}),
    "SessionEnded": ("session_ended/1", {}),
    "Raw": ("raw/1", {"kind": "", "payload": None}),
}
_V5_BATCH: Final = 500


def _v5_tag_events(db: Database) -> None:
    names = list(_V5_EVENT_TAGS)
    marks = ", ".join("?" * len(names))
    last = 0
    while True:
        rows = db.execute(
            f"SELECT id, type, payload FROM events WHERE id > ? AND type IN ({marks})"
            " ORDER BY id LIMIT ?",
            [last, *names, _V5_BATCH],
        ).fetchall()
        if not rows:
            return
        for row_id, name, text in rows:
            tag, required = _V5_EVENT_TAGS[name]
            payload = json.loads(text)
            if isinstance(payload, dict):
                payload = {**required, **payload}
            body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
            db.execute("UPDATE events SET type = ?, payload = ? WHERE id = ?", (tag, body, row_id))
        last = rows[-1][0]


# The name of the person who started a session, as their chat shows it: the author of the commits
# the daemon makes for them, also after a restart. NULL for sessions made before (their id is
# used).
_V6_USER_NAME: Final = ("ALTER TABLE sessions ADD COLUMN user_name TEXT",)


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(1, "core tables", _V1_CORE_TABLES),
    Migration(2, "indexes for the actors' queries", _V2_QUERY_INDEXES),
    Migration(3, "the message a session streams into", _V3_STREAM_MESSAGE),
    Migration(4, "outbox files delivered", _V4_UPLOADS),
    Migration(5, "versioned event tags", _v5_tag_events),
    Migration(6, "the name of a session's user", _V6_USER_NAME),
)
SCHEMA_VERSION: Final = MIGRATIONS[-1].version


def migrate(db: Database, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
    """Apply the steps not yet recorded in ``schema_migrations``, in order; return their versions.

    A reopen with nothing to do takes no write lock. Each missing step takes the write lock
    first (``BEGIN IMMEDIATE``) and checks again under it, so two processes opening one new
    file apply every step exactly once. Blocking: the store calls it from its worker thread.
    """
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)):
        raise ValueError(f"migration versions must be unique and ascending: {versions}")
    known = versions[-1] if versions else 0
    done = applied_versions(db)
    if done and done[-1] > known:
        raise SchemaTooNew(f"database is at schema {done[-1]}, this code knows {known}")
    applied: list[int] = []
    for migration in (m for m in migrations if m.version not in done):
        with write_transaction(db):
            # Created here, not before, so a file we refuse (its first step fails) stays untouched.
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            # Another process may have applied it since we looked.
            if migration.version in applied_versions(db):
                continue
            if callable(migration.apply):
                migration.apply(db)
            else:
                for statement in migration.apply:
                    db.execute(statement)
            db.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, utc_now()),
            )
        applied.append(migration.version)
    return applied


def applied_versions(db: Database) -> list[int]:
    if "schema_migrations" not in db.table_names():
        return []
    return [r["version"] for r in db.query("SELECT version FROM schema_migrations ORDER BY 1")]


@contextmanager
def write_transaction(db: Database) -> Iterator[None]:
    """Take the write lock up front. A deferred BEGIN that reads, then writes, can fail with
    SQLITE_BUSY at once when another connection wrote in between; busy_timeout covers only
    the wait for the lock, which IMMEDIATE takes before reading anything."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.rollback()
        raise
    else:
        try:
            db.execute("COMMIT")
        except BaseException:
            db.rollback()
            raise
