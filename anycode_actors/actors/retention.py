"""Retention: what ended sessions leave behind is deleted `database.retention_days` later.

A supervised worker with no inbox: it purges once as soon as it starts (a daemon that was down
for a week catches up at once) and then every `interval`. The deleting happens in the store's
own worker thread, in short batches (`Store.purge_ended_before`), so neither the event loop nor
the store's other callers wait behind it. Only events and interactions go; session rows stay,
because the per-day quotas count them and `/status` lists them. A session's checkpoint
(actors/checkpoint.py) goes with its events.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol

import trio

from anycode_actors.actors.checkpoint import CheckpointStore
from anycode_actors.store import Purged, Session, StoreClosed, StoreError
from supervisors import current_child

log = logging.getLogger(__name__)

PURGE_INTERVAL: Final = 3600.0
"""Seconds between purges: retention is counted in days, so an hour late is on time."""


class PurgeableStore(Protocol):
    """The one thing retention needs from the store."""

    async def purge_ended_before(self, cutoff: datetime) -> Purged: ...

    async def get_session(self, session_id: str) -> Session | None: ...


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Retention:
    """Deletes ended sessions' events and interactions once they are `days` old.

    `wall_clock` says what time it is (sessions end at wall-clock times, not trio times); the
    tests pass a clock of their own. Progress shows in the registry entry: runs so far, when the
    last one ran, rows deleted since start, and the last error if the last run failed.
    """

    def __init__(
        self,
        store: PurgeableStore,
        *,
        days: int,
        interval: float = PURGE_INTERVAL,
        wall_clock: Callable[[], datetime] = _utc_now,
        checkpoints: CheckpointStore | None = None,
    ) -> None:
        if days < 1:
            raise ValueError(f"retention keeps at least one day, got {days}")
        if not interval > 0:
            raise ValueError(f"the purge interval must be positive, got {interval}")
        self._store = store
        self._days = days
        self._interval = interval
        self._wall_clock = wall_clock
        self._checkpoints = checkpoints
        self.checkpoints_removed = 0
        self.runs = 0
        self.purged = Purged()
        """Rows deleted since this worker was made, added up over its runs."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # Ready before the first purge: a big backlog must not hold up the daemon's start.
        task_status.started()
        while True:
            await self.purge_once()
            await trio.sleep(self._interval)

    async def purge_once(self) -> Purged | None:
        """One purge with the cutoff `days` before now; None if the database refused (logged,
        and the next run tries again)."""
        cutoff = self._wall_clock() - timedelta(days=self._days)
        try:
            purged = await self._store.purge_ended_before(cutoff)
        except StoreClosed:
            # The store child was restarted: crash, so our supervisor starts us on the new one.
            raise
        except (StoreError, sqlite3.Error) as exc:
            # A locked or failing database is no reason for restarts: the rows can wait an hour.
            log.warning("retention: could not delete old session history: %s", exc)
            self._report(error=f"{type(exc).__name__}: {exc}")
            return None
        self.purged += purged
        if self._checkpoints is not None:
            await self._purge_checkpoints(self._checkpoints, cutoff)
        if purged.events or purged.interactions:
            log.info(
                "retention: deleted %d events and %d interactions of sessions ended before %s",
                purged.events,
                purged.interactions,
                cutoff.isoformat(timespec="seconds"),
            )
        self._report(error=None)
        return purged

    async def _purge_checkpoints(self, checkpoints: CheckpointStore, cutoff: datetime) -> None:
        """Remove the checkpoints of sessions that ended before `cutoff`, or that the database
        no longer knows."""
        for session_id in await trio.to_thread.run_sync(checkpoints.session_ids):
            session = await self._store.get_session(session_id)
            if session is None or (session.ended_at is not None and session.ended_at < cutoff):
                try:
                    await checkpoints.remove(session_id)
                except OSError as exc:
                    log.warning("retention: checkpoint %s not removed: %s", session_id[:8], exc)
                    continue
                self.checkpoints_removed += 1

    def _report(self, *, error: str | None) -> None:
        self.runs += 1
        context = current_child()
        if context is not None:
            context.update(
                retention_days=self._days,
                runs=self.runs,
                last_run=self._wall_clock().isoformat(timespec="seconds"),
                deleted_events=self.purged.events,
                deleted_interactions=self.purged.interactions,
                error=error,
            )
