"""The Store: one SQLite connection driven from a worker thread, behind async methods."""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import stat
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence, Sized
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar, TypeVarTuple

import trio
from sqlite_utils import Database

from ..agents.events import AgentEvent, to_record
from ._errors import (
    AmbiguousSessionPrefix,
    DatabaseLocked,
    DiskFull,
    InvalidTransition,
    StoreClosed,
    StoreError,
    StoreUnavailable,
    UnknownInteraction,
    UnknownSession,
)
from ._quota import DAY, Quota, QuotaExceeded, QuotaKind, Usage
from ._records import (
    ACTIVE_STATUSES,
    ALLOWED_TRANSITIONS,
    TERMINAL_STATUSES,
    Event,
    Interaction,
    InteractionKind,
    InteractionOption,
    InteractionStatus,
    Session,
    SessionStatus,
    event_from_row,
    interaction_from_row,
    session_from_row,
    utc_now,
)
from ._schema import applied_versions, migrate, write_transaction

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_encode_payload: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
"""An event's stored JSON (one encoder for all: `json.dumps` with options makes one per call)."""

DEFAULT_BUSY_TIMEOUT: Final = 10.0
"""Seconds a writer waits for another connection's write lock before "database is locked"."""

INTERACTION_ID_BYTES: Final = 8
"""Random bytes in an interaction id: 11 url-safe chars, leaving Telegram's 64-byte
callback_data plenty of room for a prefix and an option index."""

DB_FILE_MODE: Final = 0o600
"""The database holds prompts, agent output and chat ids: its files are for their owner only."""

PURGE_BATCH: Final = 5000
"""Rows one purge transaction deletes at most, so other writers wait milliseconds, not minutes."""

_ID_ATTEMPTS: Final = 5
_ACTIVE_VALUES: Final = tuple(sorted(s.value for s in ACTIVE_STATUSES))
_TERMINAL_VALUES: Final = tuple(sorted(s.value for s in TERMINAL_STATUSES))
# What SQLite keeps beside the database file: the WAL, its shared-memory index, and the rollback
# journal (used before WAL mode is on).
_SIDE_FILES: Final = ("-wal", "-shm", "-journal")

log = logging.getLogger(__name__)


def _sources(to: SessionStatus, expected_from: SessionStatus | None) -> list[SessionStatus]:
    """Statuses the UPDATE may match; a pair the state machine never allows is a caller bug."""
    sources = [s for s, targets in ALLOWED_TRANSITIONS.items() if to in targets]
    if expected_from is not None:
        if expected_from not in sources:
            raise InvalidTransition(f"{expected_from} → {to} is never allowed")
        return [expected_from]
    if not sources:
        raise InvalidTransition(f"no status may move to {to}")
    return sources


def _day_ago() -> str:
    return (datetime.now(UTC) - DAY).isoformat(timespec="microseconds")


def _marks(values: Sized) -> str:
    return ", ".join("?" * len(values))


@dataclass(frozen=True, slots=True)
class Purged:
    """How many rows a purge deleted (or several purges, added up with ``+``)."""

    events: int = 0
    interactions: int = 0

    def __add__(self, other: Purged) -> Purged:
        return Purged(self.events + other.events, self.interactions + other.interactions)


class Store:
    """The daemon's SQLite database. Open it with ``async with Store.open(path) as store:``.

    One connection, used only from worker threads that a ``CapacityLimiter(1)`` admits one at a
    time: the event loop never blocks on SQLite, and the connection never sees two threads at
    once. Calls are not abandoned on cancel: a write that started finishes (in milliseconds)
    before the caller sees ``Cancelled``, so the caller never guesses whether it happened.
    Several stores (or processes) may share one file: WAL lets readers run beside the writer,
    and ``busy_timeout`` makes writers queue instead of failing.
    """

    def __init__(
        self,
        db: Database,
        limiter: trio.CapacityLimiter,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> None:
        self._db: Database | None = db
        self._limiter = limiter
        self._busy_timeout = busy_timeout

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> AsyncIterator[Store]:
        """Open (creating and migrating if needed) the database at ``path``, or ``":memory:"``.

        The connection closes when the block ends, even if it ends by cancellation.
        """
        limiter = trio.CapacityLimiter(1)
        db = await trio.to_thread.run_sync(_connect, os.fspath(path), busy_timeout, limiter=limiter)
        store = cls(db, limiter, busy_timeout)
        try:
            yield store
        finally:
            with trio.CancelScope(shield=True):
                await store._call(store._close)

    # -- plumbing

    async def _call(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        return await trio.to_thread.run_sync(self._guarded, fn, *args, limiter=self._limiter)

    def _guarded(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        # Checked in the worker, so a call queued behind close() fails cleanly.
        if self._db is None:
            raise StoreClosed("the store is closed")
        try:
            return fn(*args)
        except sqlite3.OperationalError as exc:
            unavailable = _unavailable(exc, self._busy_timeout)
            if unavailable is None:
                raise
            raise unavailable from exc

    @property
    def _sync_db(self) -> Database:
        if self._db is None:
            raise StoreClosed("the store is closed")
        return self._db

    def _close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return list(self._sync_db.query(sql, params))

    # -- sessions

    async def create_session(
        self,
        *,
        platform: str,
        chat: str,
        user: str,
        agent: str,
        prompt: str,
        repo: str | None = None,
        thread: str | None = None,
        quota: Quota | None = None,
        user_name: str | None = None,
    ) -> Session:
        """Record a new task as ``pending``; its id is 32 lowercase hex chars. ``user_name`` is
        how the chat names ``user`` (the author of the session's commits).

        With a ``quota``, the counts are checked and the row inserted in one write transaction:
        QuotaExceeded (the first limit hit, per chat, per user, total, per day) and nothing is
        written, however many creators race, in this process or another.
        """

        def insert() -> Session:
            now, session_id = utc_now(), uuid.uuid4().hex
            row = {
                "id": session_id,
                "platform": platform,
                "chat": chat,
                "thread": thread,
                "user": user,
                "user_name": user_name,
                "agent": agent,
                "prompt": prompt,
                "repo": repo,
                "status": SessionStatus.PENDING.value,
                "created_at": now,
                "updated_at": now,
            }
            with write_transaction(self._sync_db):
                if quota is not None:
                    self._check_quota(quota, platform, chat, user)
                self._sync_db.execute(
                    f"INSERT INTO sessions ({', '.join(row)}) VALUES ({_marks(row)})",
                    list(row.values()),
                )
            return self._get_session(session_id)

        return await self._call(insert)

    def _check_quota(self, quota: Quota, platform: str, chat: str, user: str) -> None:
        active = f"status IN ({_marks(_ACTIVE_VALUES)})"
        checks: list[tuple[QuotaKind, int | None, str, list[Any]]] = [
            (QuotaKind.PER_CHAT, quota.per_chat, f"platform = ? AND chat = ? AND {active}",
             [platform, chat, *_ACTIVE_VALUES]),
            (QuotaKind.PER_USER, quota.per_user, f"platform = ? AND user = ? AND {active}",
             [platform, user, *_ACTIVE_VALUES]),
            (QuotaKind.TOTAL, quota.total, active, [*_ACTIVE_VALUES]),
            (QuotaKind.PER_DAY, quota.per_day, "platform = ? AND user = ? AND created_at >= ?",
             [platform, user, _day_ago()]),
        ]  # fmt: skip
        for kind, limit, where, params in checks:
            if limit is None:
                continue
            row = self._rows(
                f"SELECT count(*) AS n, min(created_at) AS oldest FROM sessions WHERE {where}",
                params,
            )[0]
            if int(row["n"]) >= limit:
                oldest = datetime.fromisoformat(row["oldest"]) if row["oldest"] else None
                raise QuotaExceeded(kind, int(row["n"]), limit, oldest)

    async def usage(self, platform: str, user: str) -> Usage:
        """The user's active sessions (every chat) and tasks started in the last 24 hours."""

        def read() -> Usage:
            active = self._rows(
                "SELECT count(*) AS n FROM sessions WHERE platform = ? AND user = ?"
                f" AND status IN ({_marks(_ACTIVE_VALUES)})",
                [platform, user, *_ACTIVE_VALUES],
            )[0]
            day = self._rows(
                "SELECT count(*) AS n, min(created_at) AS oldest FROM sessions"
                " WHERE platform = ? AND user = ? AND created_at >= ?",
                [platform, user, _day_ago()],
            )[0]
            oldest = datetime.fromisoformat(day["oldest"]) if day["oldest"] else None
            return Usage(int(active["n"]), int(day["n"]), oldest)

        return await self._call(read)

    def _get_session(self, session_id: str) -> Session:
        rows = self._rows("SELECT * FROM sessions WHERE id = ?", (session_id,))
        if not rows:
            raise UnknownSession(session_id)
        return session_from_row(rows[0])

    def _get_session_or_none(self, session_id: str) -> Session | None:
        rows = self._rows("SELECT * FROM sessions WHERE id = ?", (session_id,))
        return session_from_row(rows[0]) if rows else None

    async def get_session(self, session_id: str) -> Session | None:
        return await self._call(self._get_session_or_none, session_id)

    async def transition(
        self,
        session_id: str,
        to: SessionStatus | str,
        expected_from: SessionStatus | str | None = None,
        *,
        reason: str | None = None,
    ) -> bool:
        """Move the session to ``to`` if its status allows it; True if this call made the change.

        One ``UPDATE ... WHERE status IN (...)``: of any number of racing callers, in this
        process or another, exactly one sees True. ``expected_from`` narrows the match to one
        status. A terminal status never changes. ``reason`` (why it failed or was cancelled) is
        written only by the winner. Raises InvalidTransition for a pair the state machine never
        allows (such as ``completed → running``), UnknownSession for an unknown id.
        """
        target = SessionStatus(to)
        sources = _sources(target, None if expected_from is None else SessionStatus(expected_from))

        def update() -> bool:
            now = utc_now()
            cursor = self._sync_db.execute(
                "UPDATE sessions SET status = ?, updated_at = ?, reason = coalesce(?, reason),"
                " ended_at = CASE WHEN ? THEN ? ELSE ended_at END"
                f" WHERE id = ? AND status IN ({_marks(sources)})",
                [
                    target.value,
                    now,
                    reason,
                    target.is_terminal,
                    now,
                    session_id,
                    *(s.value for s in sources),
                ],
            )
            if cursor.rowcount == 1:
                return True
            self._get_session(session_id)  # raises UnknownSession
            return False

        return await self._call(update)

    async def set_sandbox(self, session_id: str, sandbox_id: str, agent_endpoint: str) -> None:
        """Remember the sandbox, so recovery can reattach to it or remove it."""
        await self._update_session(session_id, sandbox_id=sandbox_id, agent_endpoint=agent_endpoint)

    async def set_agent_session_id(self, session_id: str, agent_session_id: str) -> None:
        await self._update_session(session_id, agent_session_id=agent_session_id)

    async def set_stream_message(
        self, session_id: str, message_id: str, mark: int | None, offset: int
    ) -> None:
        """Remember the chat message the session's output now streams into, and where its text
        begins (event seq `mark`, `offset` characters into that event's text)."""

        def update() -> None:
            self._sync_db.execute(
                "UPDATE sessions SET stream_message_id = ?, stream_mark = ?, stream_offset = ?"
                " WHERE id = ?",
                [message_id, mark, offset, session_id],
            )

        await self._call(update)

    async def set_thread(self, session_id: str, thread: str | None) -> None:
        """Move the session to another thread of its chat (None: the main chat): where its
        output goes, and where a restarted daemon takes it up again."""

        def update() -> None:
            cursor = self._sync_db.execute(
                "UPDATE sessions SET thread = ?, updated_at = ? WHERE id = ?",
                [thread, utc_now(), session_id],
            )
            if cursor.rowcount != 1:
                raise UnknownSession(session_id)

        await self._call(update)

    async def _update_session(self, session_id: str, **fields: str) -> None:
        def update() -> None:
            assignments = ", ".join(f"{name} = ?" for name in fields)
            cursor = self._sync_db.execute(
                f"UPDATE sessions SET {assignments}, updated_at = ? WHERE id = ?",
                [*fields.values(), utc_now(), session_id],
            )
            if cursor.rowcount != 1:
                raise UnknownSession(session_id)

        await self._call(update)

    async def active_sessions(
        self, platform: str | None = None, chat: str | None = None
    ) -> list[Session]:
        """Sessions not yet terminal, newest first; all of them (what recovery resumes) unless
        narrowed to a platform or to one chat of a platform."""
        if chat is not None and platform is None:
            raise ValueError("a chat id means nothing without its platform")
        where = [f"status IN ({_marks(_ACTIVE_VALUES)})"]
        params: list[Any] = [*_ACTIVE_VALUES]
        for column, value in (("platform", platform), ("chat", chat)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = (
            f"SELECT * FROM sessions WHERE {' AND '.join(where)}"
            " ORDER BY created_at DESC, rowid DESC"
        )
        return await self._call(lambda: [session_from_row(r) for r in self._rows(sql, params)])

    async def list_sessions(
        self,
        platform: str,
        *,
        chat: str | None = None,
        thread: str | None = None,
        limit: int = 100,
    ) -> list[Session]:
        """The platform's sessions, ended ones too, newest first: at most `limit`, narrowed to
        one chat and to one thread of it when given (the HTTP API lists and finds its own)."""
        where, params = ["platform = ?"], [platform]
        for column, value in (("chat", chat), ("thread", thread)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = (
            f"SELECT * FROM sessions WHERE {' AND '.join(where)}"
            " ORDER BY created_at DESC, rowid DESC LIMIT ?"
        )
        args = [*params, limit]
        return await self._call(lambda: [session_from_row(r) for r in self._rows(sql, args)])

    async def count_active(self, platform: str, chat: str) -> int:
        sql = (
            "SELECT count(*) AS n FROM sessions WHERE platform = ? AND chat = ?"
            f" AND status IN ({_marks(_ACTIVE_VALUES)})"
        )
        params = [platform, chat, *_ACTIVE_VALUES]
        return await self._call(lambda: int(self._rows(sql, params)[0]["n"]))

    async def find_session_by_prefix(
        self, platform: str, chat: str, prefix: str, *, active_only: bool = False
    ) -> Session | None:
        """The session of this chat whose id starts with ``prefix`` (as typed in ``/cancel``).

        None if none matches or the prefix is blank; AmbiguousSessionPrefix if several do.
        Sessions of other chats never match, so one chat cannot reach another's tasks.
        """
        needle = prefix.strip().lower()
        if not needle:
            return None
        sql = (
            "SELECT * FROM sessions WHERE platform = ? AND chat = ? AND substr(id, 1, ?) = ?"
            + (f" AND status IN ({_marks(_ACTIVE_VALUES)})" if active_only else "")
            + " ORDER BY created_at DESC, rowid DESC"
        )
        params = [platform, chat, len(needle), needle]
        if active_only:
            params += _ACTIVE_VALUES
        rows = await self._call(self._rows, sql, params)
        if len(rows) > 1:
            raise AmbiguousSessionPrefix(needle, [r["id"] for r in rows])
        return session_from_row(rows[0]) if rows else None

    # -- events

    async def append_event(self, session_id: str, event: AgentEvent) -> bool:
        """Store the session's event number ``event.seq``, in the form ``to_record`` gives it;
        False if that seq was already stored.

        A stream that reconnects may deliver an event twice; the first copy wins and the
        repeat is ignored. ``sessions.last_event_seq`` moves in the same transaction and never
        backwards, so it always names an event that is really stored.
        """
        [stored] = await self.append_events(session_id, [event])
        return stored

    async def append_events(self, session_id: str, events: Sequence[AgentEvent]) -> list[bool]:
        """`append_event` for each of `events`, in order, in one transaction (one trip to the
        database's thread): whether each one was stored, False for a seq stored already."""
        rows = []
        for event in events:
            if event.seq < 1:
                raise ValueError(f"event seq starts at 1, got {event.seq}")
            tag, payload = to_record(event)
            body = _encode_payload(payload)
            rows.append((event.seq, tag, body))
        if not rows:
            return []

        def insert() -> list[bool]:
            db = self._sync_db
            with write_transaction(db):
                now = utc_now()
                self._get_session(session_id)
                # The seqs stored already (a resumed stream repeating them) are looked up in
                # one query, and the new rows go in with one executemany.
                seqs = [seq for seq, _, _ in rows]
                found = {
                    seq
                    for (seq,) in db.conn.execute(
                        "SELECT seq FROM events WHERE session_id = ? AND seq BETWEEN ? AND ?",
                        (session_id, min(seqs), max(seqs)),
                    )
                }
                stored = []
                for seq in seqs:
                    stored.append(seq not in found)
                    found.add(seq)  # a seq twice in `rows`: the first copy wins
                new_rows = [
                    (session_id, seq, tag, body, now)
                    for (seq, tag, body), new in zip(rows, stored, strict=True)
                    if new
                ]
                if new_rows:
                    db.conn.executemany(
                        "INSERT INTO events (session_id, seq, type, payload, created_at)"
                        " VALUES (?, ?, ?, ?, ?)",
                        new_rows,
                    )
                    db.execute(
                        "UPDATE sessions SET last_event_seq = max(last_event_seq, ?),"
                        " updated_at = ? WHERE id = ?",
                        (max(row[1] for row in new_rows), now, session_id),
                    )
            return stored

        return await self._call(insert)

    async def events(
        self, session_id: str, after_seq: int = 0, *, limit: int | None = None
    ) -> list[Event]:
        """The session's events with seq above ``after_seq``, in seq order (for replay), each
        read back with ``from_record``."""
        sql = "SELECT * FROM events WHERE session_id = ? AND seq > ? ORDER BY seq LIMIT ?"
        params = (session_id, after_seq, -1 if limit is None else limit)
        return await self._call(lambda: [event_from_row(r) for r in self._rows(sql, params)])

    async def last_seq(self, session_id: str) -> int:
        """The highest stored event seq of the session, 0 before its first event."""
        return await self._call(lambda: self._get_session(session_id).last_event_seq)

    # -- interactions

    async def create_interaction(
        self,
        session_id: str,
        kind: InteractionKind | str,
        *,
        request_id: str | None = None,
        tool_call_id: str | None = None,
        options: Iterable[InteractionOption] = (),
    ) -> Interaction:
        """Record a pending question or permission request under a fresh short id.

        The id is 11 url-safe chars from ``secrets``: short enough for Telegram's 64-byte
        callback_data with room for a prefix, and unguessable, so a forged button finds nothing.
        """
        kind = InteractionKind(kind)
        opts = json.dumps(
            [{"option_id": o.option_id, "name": o.name, "kind": o.kind} for o in options],
            ensure_ascii=False,
            separators=(",", ":"),
        )

        def insert() -> Interaction:
            self._get_session(session_id)
            for _ in range(_ID_ATTEMPTS):
                interaction_id = secrets.token_urlsafe(INTERACTION_ID_BYTES)
                cursor = self._sync_db.execute(
                    "INSERT INTO interactions"
                    " (id, session_id, kind, request_id, tool_call_id, options, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                    (
                        interaction_id,
                        session_id,
                        kind.value,
                        request_id,
                        tool_call_id,
                        opts,
                        utc_now(),
                    ),
                )
                if cursor.rowcount == 1:
                    return self._get_interaction(interaction_id)
            raise StoreError("could not draw an unused interaction id")  # 2**-64 per draw

        return await self._call(insert)

    def _get_interaction(self, interaction_id: str) -> Interaction:
        rows = self._rows("SELECT * FROM interactions WHERE id = ?", (interaction_id,))
        if not rows:
            raise UnknownInteraction(interaction_id)
        return interaction_from_row(rows[0])

    async def get_interaction(self, interaction_id: str) -> Interaction | None:
        sql = "SELECT * FROM interactions WHERE id = ?"
        rows = await self._call(self._rows, sql, (interaction_id,))
        return interaction_from_row(rows[0]) if rows else None

    async def set_interaction_message(self, interaction_id: str, chat_message_id: str) -> None:
        """Remember the chat message that shows the buttons, so they can be removed later."""

        def update() -> None:
            cursor = self._sync_db.execute(
                "UPDATE interactions SET chat_message_id = ? WHERE id = ?",
                (chat_message_id, interaction_id),
            )
            if cursor.rowcount != 1:
                raise UnknownInteraction(interaction_id)

        await self._call(update)

    async def resolve_interaction(
        self, interaction_id: str, *, answer: str, resolved_by: str
    ) -> bool:
        """Record the answer if the interaction is still pending; True if this call resolved it.

        Compare-and-set, so a double tap or two users pressing at once answer the agent once.
        An unknown id (callback data comes from outside) is simply False.
        """

        def update() -> bool:
            cursor = self._sync_db.execute(
                "UPDATE interactions SET status = ?, answer = ?, resolved_by = ?, resolved_at = ?"
                " WHERE id = ? AND status = ?",
                (
                    InteractionStatus.RESOLVED.value,
                    answer,
                    resolved_by,
                    utc_now(),
                    interaction_id,
                    InteractionStatus.PENDING.value,
                ),
            )
            return cursor.rowcount == 1

        return await self._call(update)

    async def unresolved_interactions(self, session_id: str) -> list[Interaction]:
        """Pending interactions of the session, oldest first."""
        sql = (
            "SELECT * FROM interactions WHERE session_id = ? AND status = ?"
            " ORDER BY created_at, rowid"
        )
        params = (session_id, InteractionStatus.PENDING.value)
        return await self._call(lambda: [interaction_from_row(r) for r in self._rows(sql, params)])

    async def cancel_pending_interactions(self, session_id: str) -> list[Interaction]:
        """Mark every pending interaction of the session cancelled and return them, oldest first.

        The session actor answers each one "cancelled" to the agent (or the agent waits forever)
        and removes its buttons; an interaction resolved meanwhile is not in the list.
        """

        def update() -> list[Interaction]:
            rows = self._rows(
                "UPDATE interactions SET status = ?, resolved_at = ?"
                " WHERE session_id = ? AND status = ? RETURNING *",
                (
                    InteractionStatus.CANCELLED.value,
                    utc_now(),
                    session_id,
                    InteractionStatus.PENDING.value,
                ),
            )
            return sorted((interaction_from_row(r) for r in rows), key=lambda i: i.created_at)

        return await self._call(update)

    # -- schema

    async def record_upload(self, session_id: str, name: str, size: int) -> None:
        """Outbox file `name` (`size` bytes) of the session has reached its chat."""

        def insert() -> None:
            self._sync_db.execute(
                "INSERT OR IGNORE INTO uploads (session_id, name, size, uploaded_at)"
                " VALUES (?, ?, ?, ?)",
                [session_id, name, size, utc_now()],
            )

        await self._call(insert)

    async def uploads(self, session_id: str) -> set[tuple[str, int]]:
        """(name, size) of every outbox file the session has delivered."""
        rows = await self._call(
            self._rows, "SELECT name, size FROM uploads WHERE session_id = ?", [session_id]
        )
        return {(row["name"], int(row["size"])) for row in rows}

    async def schema_version(self) -> int:
        return await self._call(lambda: max(applied_versions(self._sync_db), default=0))

    # -- retention

    async def purge_ended_before(self, cutoff: datetime, *, batch: int = PURGE_BATCH) -> Purged:
        """Delete the events and interactions of sessions that ended before ``cutoff``.

        Only sessions in a terminal status (completed, failed, cancelled) whose ``ended_at`` is
        older than ``cutoff`` lose them; a live session, or one that ended later, keeps every
        row. The session rows themselves stay: the per-day quotas count them and ``/status``
        lists them (``last_event_seq`` still says how many events there were).

        Rows go in batches of at most ``batch``, each its own transaction, so other writers and
        this store's other callers (queued on its one connection) wait between batches rather
        than behind one long delete. A purge cut short keeps the batches it finished; the next
        one deletes the rest.
        """
        if cutoff.tzinfo is None:
            raise ValueError("the cutoff must be timezone-aware")
        if batch < 1:
            raise ValueError(f"a purge batch holds at least one row, got {batch}")
        # Same fixed-width UTC text as utc_now(), so comparing text compares time.
        until = cutoff.astimezone(UTC).isoformat(timespec="microseconds")
        ended = (
            f"SELECT id FROM sessions WHERE status IN ({_marks(_TERMINAL_VALUES)})"
            # ended_at is written with every terminal status; a hand-edited row without one
            # counts from its last update.
            " AND coalesce(ended_at, updated_at) < ?"
        )

        def delete_batch(table: str) -> int:
            cursor = self._sync_db.execute(
                f"DELETE FROM {table} WHERE rowid IN"
                f" (SELECT rowid FROM {table} WHERE session_id IN ({ended}) LIMIT ?)",
                [*_TERMINAL_VALUES, until, batch],
            )
            return cursor.rowcount

        deleted = {"events": 0, "interactions": 0}
        for table in deleted:
            while True:
                count = await self._call(delete_batch, table)
                deleted[table] += count
                if count < batch:
                    break
        return Purged(**deleted)


# Primary result codes (https://www.sqlite.org/rescode.html) of failures that come from the
# file and its surroundings, not from the SQL: the sqlite3 error carries the extended code.
_SQLITE_BUSY: Final = 5
_SQLITE_LOCKED: Final = 6
_SQLITE_READONLY: Final = 8
_SQLITE_IOERR: Final = 10
_SQLITE_FULL: Final = 13
_SQLITE_CANTOPEN: Final = 14


def _unavailable(exc: sqlite3.OperationalError, busy_timeout: float) -> StoreError | None:
    """The StoreUnavailable that says what stopped SQLite, or None for an error of the SQL
    itself (a bug: it is raised as it is)."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return DatabaseLocked(
            f"the database is locked by another program (waited {busy_timeout:g} s)"
        )
    if primary == _SQLITE_FULL:
        return DiskFull("the disk that holds the database is full")
    if primary in (_SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CANTOPEN):
        return StoreUnavailable(f"the database cannot be written: {exc}")
    return None


def _connect(path: str, busy_timeout: float) -> Database:
    """Open and prepare the connection; runs in the store's worker thread."""
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        _make_private(path)
    # isolation_level=None: no implicit BEGINs, so each write is its own transaction unless we
    # open one. timeout= is SQLite's busy_timeout. check_same_thread=False: trio may run our
    # (strictly serialized) calls on different worker threads.
    conn = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    try:
        db = Database(conn, execute_plugins=False)
        db.execute("PRAGMA foreign_keys = ON")
        if path != ":memory:":
            _switch_to_wal(db, busy_timeout)
            # In WAL, NORMAL is still corruption-safe; a power cut may lose the last commits.
            db.execute("PRAGMA synchronous = NORMAL")
        migrate(db)
    except BaseException:
        conn.close()
        raise
    return db


def _make_private(path: str) -> None:
    """Make the database file, and the side files a previous run left, owner-only (0600).

    SQLite would create a new database file 0644 (less the umask). Creating it here with
    ``os.open(..., 0o600)`` needs no change to the process-wide umask, and it is enough for the
    side files too: SQLite creates -wal, -shm and -journal with the database file's own
    permissions (``findCreateFileMode`` and ``unixOpenSharedMemory`` in
    https://github.com/sqlite/sqlite/blob/master/src/os_unix.c; the files are listed at
    https://www.sqlite.org/tempfiles.html). Files that already exist keep their mode, so a
    looser one (made by an older version, or -wal and -shm left by a crash) is narrowed here.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, DB_FILE_MODE)
    try:
        _narrow(path, fd)
    finally:
        os.close(fd)
    for side in (path + suffix for suffix in _SIDE_FILES):
        try:
            # O_NOFOLLOW: narrow the file itself, never what a planted symlink points to.
            fd = os.open(side, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            continue
        try:
            _narrow(side, fd)
        finally:
            os.close(fd)


def _narrow(name: str, fd: int) -> None:
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if not mode & 0o077:
        return
    try:
        os.fchmod(fd, DB_FILE_MODE)
    except PermissionError:
        # Another user's file, shared on purpose: opening it is still their decision.
        log.warning("%s is readable by others (mode %o) and not ours to change", name, mode)


def _switch_to_wal(db: Database, busy_timeout: float) -> None:
    """`PRAGMA journal_mode = WAL`, retried: two connections opening a new file at once can
    each hold a shared lock while asking for the exclusive one, and SQLite then answers one of
    them SQLITE_BUSY at once, without waiting, to avoid a deadlock
    (https://www.sqlite.org/c3ref/busy_handler.html)."""
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
