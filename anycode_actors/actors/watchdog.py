"""The watchdog: session timeouts, dead sandboxes, and sandboxes nobody owns.

Session actors register when they start (`Watch`) and leave when they end (`Unwatch`); the
watchdog owns that table. Every `interval` it cancels sessions past their deadline (the chat is
told why), fails sessions whose sandbox died, and removes labelled sandboxes that belong to no
watched session (a crash between create and register, or a daemon killed mid-session whose
session could not be reattached).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import trio

from anycode_actors.actors.session_api import Cancel, SessionMessage
from anycode_actors.errors import AnycodeError
from anycode_actors.sandboxes.base import SandboxProvider
from supervisors import Actor, current_child

log = logging.getLogger(__name__)

CHECK_INTERVAL: Final = 30.0
# A sandbox must be this old before an unowned one is removed: a session actor registers before
# it creates its sandbox, so this is only a margin for clocks and slow listings.
ORPHAN_AGE: Final = 120.0


@dataclass(frozen=True)
class Watch:
    session_id: str
    deadline: float  # trio.current_time() after which the session is timed out
    timeout_text: str  # "30 min"
    inbox: trio.MemorySendChannel[SessionMessage]


@dataclass(frozen=True)
class Unwatch:
    session_id: str


@dataclass(frozen=True)
class SandboxOf:
    """A session tells which sandbox it owns, so liveness can be checked."""

    session_id: str
    sandbox_id: str


@dataclass(frozen=True)
class _Tick:
    pass


WatchdogInbox = Watch | Unwatch | SandboxOf | _Tick


@dataclass
class _Watched:
    watch: Watch
    sandbox_id: str | None = None
    notified: bool = False


class Watchdog(Actor[WatchdogInbox]):
    inbox_size = 256

    def __init__(self, provider: SandboxProvider, *, interval: float = CHECK_INTERVAL) -> None:
        super().__init__()
        self._provider = provider
        self._interval = interval
        self._watched: dict[str, _Watched] = {}
        # Sessions that ended recently remove their own sandbox; the reaper leaves those alone.
        self._ended: dict[str, float] = {}
        self.reaped: list[str] = []

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._ticker)
            await super().run(task_status=task_status)
            nursery.cancel_scope.cancel()

    async def _ticker(self) -> None:
        while True:
            await trio.sleep(self._interval)
            await self.send(_Tick())

    async def handle(self, message: WatchdogInbox) -> None:
        if isinstance(message, Watch):
            self._watched[message.session_id] = _Watched(message)
        elif isinstance(message, Unwatch):
            self._watched.pop(message.session_id, None)
            self._ended[message.session_id] = trio.current_time()
        elif isinstance(message, SandboxOf):
            watched = self._watched.get(message.session_id)
            if watched is not None:
                watched.sandbox_id = message.sandbox_id
        else:
            await self._check()
        context = current_child()
        if context is not None:
            context.update(watched=len(self._watched), reaped=len(self.reaped))

    async def _check(self) -> None:
        now = trio.current_time()
        for session_id, watched in list(self._watched.items()):
            if watched.notified:
                continue
            if now >= watched.watch.deadline:
                reason = f"timed out after {watched.watch.timeout_text}"
                watched.notified = await _tell(watched.watch.inbox, Cancel(reason, status="failed"))
                continue
            if watched.sandbox_id is not None and not await self._alive(watched.sandbox_id):
                reason = "the sandbox stopped unexpectedly"
                watched.notified = await _tell(watched.watch.inbox, Cancel(reason, status="failed"))
                log.warning("session %s: %s", session_id[:8], reason)
        await self._reap()

    async def _alive(self, sandbox_id: str) -> bool:
        try:
            with trio.fail_after(30):
                return await self._provider.is_alive(sandbox_id)
        except (AnycodeError, trio.TooSlowError) as exc:
            # Not knowing is not dead: a slow engine must not fail healthy sessions.
            log.warning("could not check sandbox %s: %s", sandbox_id[:12], exc)
            return True

    async def _reap(self) -> None:
        try:
            with trio.fail_after(60):
                sandboxes = await self._provider.list()
        except (AnycodeError, trio.TooSlowError) as exc:
            log.warning("could not list sandboxes: %s", exc)
            return
        now = trio.current_time()
        self._ended = {s: t for s, t in self._ended.items() if now - t < ORPHAN_AGE}
        owned = set(self._watched) | set(self._ended)
        for sandbox in sandboxes:
            if sandbox.session_id in owned or _age(sandbox.created_at) < ORPHAN_AGE:
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


async def _tell(inbox: trio.MemorySendChannel[SessionMessage], message: SessionMessage) -> bool:
    """Whether the session was told; False if its inbox stayed full (tell it at the next check).

    A session that ended meanwhile has nobody left to tell: that counts as told.
    """
    try:
        with trio.move_on_after(10):
            await inbox.send(message)
            return True
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return True
    return False


def _age(created_at: str) -> float:
    try:
        created = datetime.fromisoformat(created_at)
    except ValueError:
        return float("inf")
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return (datetime.now(UTC) - created).total_seconds()
