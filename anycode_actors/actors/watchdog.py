"""The watchdog: session timeouts, dead sandboxes, and sandboxes nobody owns.

Everything it decides comes from the store, the one record that cannot be lost on the way: every
`interval` it reads the sessions that are not over, and
- cancels (as failed) those past `session.timeout_minutes`, counted from when they were created;
- fails those whose sandbox died, checking every sandbox at once, with one deadline for the
  whole sweep, so a hung engine delays no timeout by more than one sweep;
- removes labelled sandboxes whose session is not live in the store (a crash between create and
  record, a daemon killed mid-session whose session could not be reattached, a sandbox whose
  removal failed), once they are older than `ORPHAN_AGE`, except the warm pool's (`held`) and
  those a live session recorded as its own (taken from the pool, they carry the pool's label).

A session is told through the session directory; only its own actor ends it. A session the
directory does not know (the moment after a restart, before recovery reattached it) is left to
recovery.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import trio

from anycode_actors.actors.directory import DirectoryInbox, live_sessions, route
from anycode_actors.actors.session_api import Cancel
from anycode_actors.errors import AnycodeError
from anycode_actors.sandboxes.base import SandboxInfo, SandboxProvider, describe_loss
from anycode_actors.store import Session, SessionStatus, Store
from supervisors import Actor, current_child

log = logging.getLogger(__name__)

CHECK_INTERVAL: Final = 30.0
# A sandbox must be this old before an unowned one is removed: a session records its sandbox
# a moment after creating it, and a session that just ended is still removing its own.
ORPHAN_AGE: Final = 120.0
# The most one sweep's liveness checks may take, whatever the interval.
SWEEP_DEADLINE: Final = 30.0

WallClock = Callable[[], datetime]


@dataclass(frozen=True)
class _Tick:
    pass


WatchdogInbox = _Tick


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Watchdog(Actor[WatchdogInbox]):
    inbox_size = 4

    def __init__(
        self,
        provider: SandboxProvider,
        store: Store,
        directory: trio.MemorySendChannel[DirectoryInbox],
        *,
        timeout: timedelta,
        interval: float = CHECK_INTERVAL,
        orphan_age: float = ORPHAN_AGE,
        wall_clock: WallClock = _utc_now,
        held: Callable[[], Collection[str]] = frozenset,
    ) -> None:
        super().__init__()
        self._provider = provider
        self._store = store
        self._directory = directory
        self._timeout = timeout
        self._interval = interval
        self._orphan_age = orphan_age
        self._now = wall_clock
        self._held = held
        # Sessions already told, so a session busy ending is not told again every sweep.
        self._told: set[str] = set()
        self._lost: dict[str, str] = {}  # session → the dead sandbox it was told about
        # Active in the store but with no live actor, and since when (trio time).
        self._actorless: dict[str, float] = {}
        self.reaped: list[str] = []
        self.sweeps = 0

    async def setup(self) -> None:
        self.tasks.start_soon(self._ticker)

    async def _ticker(self) -> None:
        while True:
            await trio.sleep(self._interval)
            await self.send(_Tick())

    async def handle(self, message: WatchdogInbox) -> None:
        await self.sweep()
        context = current_child()
        if context is not None:
            context.update(
                sweeps=self.sweeps, told=len(self._told) + len(self._lost), reaped=len(self.reaped)
            )

    async def sweep(self) -> None:
        """One look at every live session and every sandbox."""
        self.sweeps += 1
        sessions = await self._store.active_sessions()
        self._told &= {s.id for s in sessions}
        self._lost = {s.id: self._lost[s.id] for s in sessions if s.id in self._lost}
        now = self._now()
        checks: list[Session] = []
        for session in sessions:
            if session.id in self._told:
                continue
            if now - session.created_at >= self._timeout:
                minutes = self._timeout.total_seconds() / 60
                await self._fail(session, f"timed out after {minutes:g} min")
            elif (
                session.status == SessionStatus.RUNNING
                and session.sandbox_id
                and self._lost.get(session.id) != session.sandbox_id
            ):
                checks.append(session)
        dead: list[Session] = []
        with trio.move_on_after(min(self._interval, SWEEP_DEADLINE)) as scope:
            async with trio.open_nursery() as nursery:
                for session in checks:
                    nursery.start_soon(self._check_alive, session, dead)
        if scope.cancelled_caught:
            # Not knowing is not dead: unanswered checks count as alive until the next sweep.
            log.warning("sandbox liveness checks did not all answer within the sweep")
        for session in dead:
            assert session.sandbox_id is not None
            reason = await describe_loss(self._provider, session.sandbox_id)
            # The session may carry on in a new sandbox (actors/checkpoint.py): told once per
            # sandbox, not once per session.
            if await route(
                self._directory, session.id, Cancel(reason, status="failed", sandbox_lost=True)
            ):
                self._lost[session.id] = session.sandbox_id
                log.warning("session %s: its sandbox stopped unexpectedly", session.id[:8])
            else:
                # Not live: an ending session closes its inbox before it removes its sandbox
                # and records its outcome after, so a sweep in between finds the sandbox gone
                # as expected. (A record with no actor at all is `_settle_actorless`'s.)
                log.debug("session %s: its sandbox is gone; the session is ending", session.id[:8])
        try:
            with trio.fail_after(60):
                sandboxes = await self._provider.list()
        except (AnycodeError, trio.TooSlowError) as exc:
            log.warning("could not list sandboxes: %s", exc)
            return
        # Whose sandbox exists: by its label, or by its id for one taken from the warm pool.
        listed = {s.id for s in sandboxes}
        with_sandbox = {s.session_id for s in sandboxes} | {
            s.id for s in sessions if s.sandbox_id in listed
        }
        await self._settle_actorless(sessions, with_sandbox)
        # A sandbox taken from the warm pool carries the pool's label, not its session's: it is
        # known by its id, which the session recorded.
        owned = {s.sandbox_id for s in sessions if s.sandbox_id} | set(self._held())
        await self._reap({s.id for s in sessions}, sandboxes, owned)

    async def _settle_actorless(self, sessions: list[Session], with_sandbox: set[str]) -> None:
        """A record that stays active with no actor behind it (its actor ended without being able
        to write its outcome, say on a full disk) would count against quotas forever: once it has
        had no actor for `ORPHAN_AGE`, it is failed. Recovery reattaches sessions long before."""
        live = await live_sessions(self._directory)
        if live is None:
            return
        now = trio.current_time()
        # A session whose sandbox still exists is left alone: recovery or the operator decides.
        self._actorless = {
            s.id: self._actorless.get(s.id, now)
            for s in sessions
            if s.id not in live and s.id not in with_sandbox
        }
        for session_id, since in list(self._actorless.items()):
            if now - since < self._orphan_age:
                continue
            reason = "its session ended without recording its outcome"
            try:
                if await self._store.transition(session_id, SessionStatus.FAILED, reason=reason):
                    log.warning("session %s: %s; marked failed", session_id[:8], reason)
            except AnycodeError as exc:
                log.warning("session %s: could not be settled: %s", session_id[:8], exc)
                continue
            del self._actorless[session_id]

    async def _check_alive(self, session: Session, dead: list[Session]) -> None:
        assert session.sandbox_id is not None
        try:
            if not await self._provider.is_alive(session.sandbox_id):
                dead.append(session)
        except AnycodeError as exc:
            log.warning("could not check sandbox %s: %s", session.sandbox_id[:12], exc)

    async def _fail(self, session: Session, reason: str) -> None:
        if await route(self._directory, session.id, Cancel(reason, status="failed")):
            self._told.add(session.id)

    async def _reap(self, live: set[str], sandboxes: list[SandboxInfo], owned: set[str]) -> None:
        now = self._now()
        for sandbox in sandboxes:
            if (
                sandbox.session_id in live
                or sandbox.id in owned
                or _age(sandbox.created_at, now) < self._orphan_age
            ):
                continue
            log.warning(
                "removing sandbox %s: it belongs to no live session (%s)",
                sandbox.id[:12],
                sandbox.session_id[:8],
            )
            try:
                await self._provider.destroy(sandbox.id)
                self.reaped.append(sandbox.id)
            except AnycodeError as exc:
                log.error("could not remove orphan sandbox %s: %s", sandbox.id[:12], exc)


def _age(created_at: str, now: datetime) -> float:
    try:
        created = datetime.fromisoformat(created_at)
    except ValueError:
        return float("inf")
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return (now - created).total_seconds()
