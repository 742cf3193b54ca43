"""The warm pool: sandboxes kept ready for each agent, so that a `/task` does not wait for one.

`[pool] agents = {claude-code = 3}` keeps three sandboxes of claude-code ready: created, and
with protocol "sandbox-agent" also the agent started and its ACP session opened
(`prepare_session`), so a session that takes one only attaches to that session and sends its
prompt. With the stdio protocols ("acp", "acpx") the agent runs as a process of the session's
own connection, so a pooled sandbox is only created and the session starts its agent in it.

- A session asks with `claim(pool, agent)` and gets a `Claimed` (the sandbox, and where its
  agent session is to be attached) or None, and then creates its sandbox as before. With none
  ready but one on its way (not promised to an earlier claim), the claim waits for that one.
  A task with a repository never takes one (its sandbox is made for the repository); it asks
  with `take=False`, which only makes room (below).
- Sandboxes and sessions share `limits.max_sessions_total`: the pool fills only what the live
  sessions in the store leave free, and before a session that found nothing ready creates its
  own sandbox, the pool removes ready ones until the two fit together again.
- Refilled in the background `REFILL_DELAY` after a claim (not at once: a sandbox and its agent
  starting would take the CPUs from the claimed one while it takes up its prompt) and every
  `TICK` seconds; a ready sandbox older than `pool.max_idle_minutes`, or found dead, is removed
  and replaced. One that fails to come up is retried at the next tick, not at once.
- A session attaches to a pooled sandbox's agent session without asking sandbox-agent's health
  first (`Resume.prepared`), and the pool records the /diff starting point while the agent
  starts, beside `prepare_session`.
- Pooled sandboxes carry the session label `pool-<random>` (their ACP server is named after
  it), never a user's credentials: their environment is the agent's (`Config.sandbox_env`), as
  a session's own is. At its first tick the pool removes every pool sandbox a previous run left
  behind that no live session took; the watchdog spares the ones it holds (`held`) and the ones
  that live sessions took (recorded as their sandbox in the store).
- On shutdown every sandbox it holds is removed (`finish`), shielded and bounded.
- The actor tree shows each pooled sandbox with its agent, state and age.
"""

from __future__ import annotations

import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import trio

from anycode_actors.actors.workspace_diff import WorkspaceDiff
from anycode_actors.agents._nursery import open_nursery_bare
from anycode_actors.agents.session import Resume, prepare_session
from anycode_actors.config import AgentConfig, Config
from anycode_actors.errors import AnycodeError
from anycode_actors.sandboxes.base import SandboxHandle, SandboxProvider, SandboxSpec
from anycode_actors.store import Store
from supervisors import Actor, current_child

log = logging.getLogger(__name__)

POOL_PREFIX: Final = "pool-"
"""The session label of a pooled sandbox starts with this."""
TICK: Final = 10.0
"""Seconds between the pool's looks at its sandboxes (refill, age, liveness)."""
PREPARE_TIMEOUT: Final = 120.0
"""How long a pooled sandbox may take to come up (created, agent started, session open)."""
DESTROY_GRACE: Final = 60.0
CLAIM_WAIT: Final = 5.0
"""How long a session waits for the pool's answer before it creates its sandbox itself."""
HANDED_OVER_FOR: Final = 600.0
"""Seconds a claimed sandbox still counts as held, until its session has recorded it."""
REFILL_DELAY: Final = 0.5
"""Seconds between a claim and the refill it calls for: a sandbox being made (the engine's work,
then its agent starting) takes the CPU the claimed sandbox needs to take up its prompt now."""

Prepare = Callable[[AgentConfig, SandboxHandle], Awaitable[Resume]]


@dataclass(frozen=True)
class Claimed:
    """A ready sandbox, now the claiming session's: `resume` says where its agent session is
    to be attached (None: the session opens its agent itself)."""

    handle: SandboxHandle
    resume: Resume | None
    # Whether the workspace's starting point for /diff (actors/workspace_diff.py) is recorded.
    diff_base: bool = False


@dataclass(frozen=True)
class Claim:
    """A session of `agent` is starting: `reply` gets a ready sandbox (when `take`), or None
    once there is room for the session to create its own."""

    agent: str
    reply: trio.MemorySendChannel[Claimed | None]
    take: bool = True


@dataclass(frozen=True)
class _Tick:
    pass


@dataclass(frozen=True)
class _Refill:
    pass


@dataclass(frozen=True)
class _Warmed:
    pool_id: str
    resume: Resume | None
    diff_base: bool


@dataclass(frozen=True)
class _WarmFailed:
    pool_id: str
    error: str


PoolInbox = Claim | _Tick | _Refill | _Warmed | _WarmFailed


@dataclass
class _Entry:
    pool_id: str
    agent: str
    since: float  # trio time it was asked for, then made ready
    created_at: str  # wall clock, ISO 8601, for the tree
    state: str = "warming"  # "warming" | "ready"
    handle: SandboxHandle | None = None
    resume: Resume | None = None
    diff_base: bool = False


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class SandboxPool(Actor[PoolInbox]):
    """Keeps `config.pool` sandboxes ready per agent. See the module docstring."""

    inbox_size = 64

    def __init__(
        self,
        config: Config,
        provider: SandboxProvider,
        store: Store,
        *,
        prepare: Prepare = prepare_session,
        tick: float = TICK,
        refill_delay: float = REFILL_DELAY,
    ) -> None:
        super().__init__()
        self._config = config
        self._provider = provider
        self._store = store
        self._prepare = prepare
        self._tick = tick
        self._refill_delay = refill_delay
        self._refill_due = False  # a refill after a claim is on its way (`_refill_soon`)
        self._entries: dict[str, _Entry] = {}
        self._handed: dict[str, float] = {}  # sandbox id → trio time it was claimed
        self._waiting: deque[Claim] = deque()  # claims for a sandbox still warming, oldest first
        self._swept = False
        self.claims = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return any(size > 0 for size in self._config.pool.agents.values())

    def ready(self, agent: str) -> int:
        """How many sandboxes of `agent` are ready to be claimed now."""
        return sum(1 for e in self._entries.values() if e.agent == agent and e.state == "ready")

    def held(self) -> frozenset[str]:
        """The sandboxes the pool holds or just handed over: the watchdog leaves them alone."""
        now = trio.current_time()
        self._handed = {k: t for k, t in self._handed.items() if now - t < HANDED_OVER_FOR}
        ids = {e.handle.id for e in self._entries.values() if e.handle is not None}
        return frozenset(ids | self._handed.keys())

    # --- life -----------------------------------------------------------------------------------

    async def setup(self) -> None:
        self._report()
        if self.enabled:
            self._outbox.send_nowait(_Tick())  # a new actor's inbox has room
            self.tasks.start_soon(self._ticker)

    async def _ticker(self) -> None:
        while True:
            await trio.sleep(self._tick)
            await self.send(_Tick())

    async def finish(self) -> None:
        """Drain: remove every sandbox the pool holds (warming ones too), all at once."""
        handles = [e.handle for e in self._entries.values() if e.handle is not None]
        self._entries.clear()
        # A claim still waiting is answered: nothing, so its session goes on by itself.
        for claim in self._waiting:
            with trio.move_on_after(1):
                await _answer(claim, None)
        self._waiting.clear()
        while True:
            try:
                message = self._inbox.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if isinstance(message, Claim):
                with trio.move_on_after(1):
                    await _answer(message, None)
        if handles:
            log.info("pool: removing its %d sandboxes", len(handles))
            async with trio.open_nursery() as nursery:
                for handle in handles:
                    nursery.start_soon(self._destroy, handle.id)

    async def handle(self, message: PoolInbox) -> None:
        if isinstance(message, Claim):
            await self._on_claim(message)
        elif isinstance(message, _Tick):
            await self._on_tick()
        elif isinstance(message, _Refill):
            self._refill_due = False
            await self._refill()
        elif isinstance(message, _Warmed):
            entry = self._entries.get(message.pool_id)
            if entry is not None:
                entry.state = "ready"
                entry.resume = message.resume
                entry.diff_base = message.diff_base
                entry.since = trio.current_time()
                entry.created_at = _utc_now()
                await self._serve_waiting(entry)
        elif isinstance(message, _WarmFailed):
            entry = self._entries.pop(message.pool_id, None)
            log.warning("pool: sandbox %s did not come up: %s", message.pool_id, message.error)
            if entry is not None:
                if entry.handle is not None:
                    self.tasks.start_soon(self._destroy, entry.handle.id)
                await self._release_waiting(entry.agent)
        self._report()

    # --- claims ---------------------------------------------------------------------------------

    async def _on_claim(self, claim: Claim) -> None:
        entry = None
        if claim.take:
            entry = next(
                (
                    e
                    for e in sorted(self._entries.values(), key=lambda e: e.since)
                    if e.agent == claim.agent and e.state == "ready"
                ),
                None,
            )
        if entry is not None:
            await self._hand_over(entry, claim)
            return
        if claim.take and self._warming(claim.agent) > self._waiting_for(claim.agent):
            # One is on its way, and sooner ready than a sandbox made from scratch: the claim
            # waits for it (or, at the claimant's CLAIM_WAIT, creates its own after all).
            self._waiting.append(claim)
            return
        if claim.take:
            self.misses += 1
        await self._make_room()
        await _answer(claim, None)

    async def _hand_over(self, entry: _Entry, claim: Claim) -> bool:
        assert entry.handle is not None
        if not await _answer(claim, Claimed(entry.handle, entry.resume, entry.diff_base)):
            return False  # the claimant stopped waiting: the sandbox stays in the pool
        del self._entries[entry.pool_id]
        self._handed[entry.handle.id] = trio.current_time()
        self.claims += 1
        self._refill_soon()
        return True

    def _refill_soon(self) -> None:
        """Refill `refill_delay` after a claim (one refill for a burst of claims): by then the
        claimed sandbox's session has sent its prompt and the agent has taken it up, without a
        new sandbox starting beside it on the same CPUs."""
        if self._refill_due:
            return
        self._refill_due = True
        self.tasks.start_soon(self._refill_later)

    async def _refill_later(self) -> None:
        await trio.sleep(self._refill_delay)
        await self.send(_Refill())

    async def _serve_waiting(self, entry: _Entry) -> None:
        """Hand the sandbox that just became ready to the longest-waiting claim for it."""
        for claim in [c for c in self._waiting if c.agent == entry.agent]:
            self._waiting.remove(claim)
            if await self._hand_over(entry, claim):
                return

    async def _release_waiting(self, agent: str) -> None:
        """Send the claims that no sandbox on its way will serve to make their own."""
        waiting = [c for c in self._waiting if c.agent == agent]
        for claim in waiting[self._warming(agent) :]:
            self._waiting.remove(claim)
            self.misses += 1
            await _answer(claim, None)

    def _warming(self, agent: str) -> int:
        return sum(1 for e in self._entries.values() if e.agent == agent and e.state == "warming")

    def _waiting_for(self, agent: str) -> int:
        return sum(1 for c in self._waiting if c.agent == agent)

    async def _make_room(self) -> None:
        """Remove ready sandboxes (the oldest first) until the live sessions, which include
        the one about to create its own, and the pool's sandboxes fit `max_sessions_total`."""
        over = await self._active() + len(self._entries) - self._config.limits.max_sessions_total
        ready = sorted(
            (e for e in self._entries.values() if e.state == "ready"), key=lambda e: e.since
        )
        doomed = ready[: max(0, over)]
        for entry in doomed:
            del self._entries[entry.pool_id]
        async with trio.open_nursery() as nursery:
            for entry in doomed:
                assert entry.handle is not None
                nursery.start_soon(self._destroy, entry.handle.id)

    async def _active(self) -> int:
        return len(await self._store.active_sessions())

    # --- upkeep ---------------------------------------------------------------------------------

    async def _on_tick(self) -> None:
        if not self._swept:
            self._swept = True
            await self._sweep_leftovers()
        idle = float(self._config.pool.max_idle_minutes) * 60
        now = trio.current_time()
        ready = [e for e in self._entries.values() if e.state == "ready"]
        dead: set[str] = set()
        with trio.move_on_after(self._tick):
            async with trio.open_nursery() as nursery:
                for entry in ready:
                    nursery.start_soon(self._check_alive, entry, dead)
        for entry in ready:
            if entry.pool_id in dead or now - entry.since >= idle:
                why = "it stopped" if entry.pool_id in dead else "it was not used"
                log.info("pool: replacing sandbox %s of %s: %s", entry.pool_id, entry.agent, why)
                del self._entries[entry.pool_id]
                assert entry.handle is not None
                self.tasks.start_soon(self._destroy, entry.handle.id)
        await self._refill()

    async def _check_alive(self, entry: _Entry, dead: set[str]) -> None:
        assert entry.handle is not None
        try:
            if not await self._provider.is_alive(entry.handle.id):
                dead.add(entry.pool_id)
        except AnycodeError as exc:
            log.warning("pool: could not check sandbox %s: %s", entry.pool_id, exc)

    async def _sweep_leftovers(self) -> None:
        """Remove the pool sandboxes of a previous run that no live session took."""
        try:
            with trio.fail_after(60):
                sandboxes = await self._provider.list()
            taken = {s.sandbox_id for s in await self._store.active_sessions()}
        except (AnycodeError, trio.TooSlowError) as exc:
            log.warning("pool: could not look for sandboxes a previous run left: %s", exc)
            return
        mine = self.held()
        for sandbox in sandboxes:
            if (
                sandbox.session_id.startswith(POOL_PREFIX)
                and sandbox.id not in taken
                and sandbox.id not in mine
            ):
                log.info("pool: removing sandbox %s, left by a previous run", sandbox.id[:12])
                await self._destroy(sandbox.id)

    async def _refill(self) -> None:
        wanted = {
            agent: size - sum(1 for e in self._entries.values() if e.agent == agent)
            for agent, size in self._config.pool.agents.items()
        }
        if not any(n > 0 for n in wanted.values()):
            return
        room = self._config.limits.max_sessions_total - await self._active() - len(self._entries)
        for agent, missing in wanted.items():
            for _ in range(max(0, min(missing, room))):
                room -= 1
                entry = _Entry(
                    f"{POOL_PREFIX}{secrets.token_hex(8)}", agent, trio.current_time(), _utc_now()
                )
                self._entries[entry.pool_id] = entry
                self.tasks.start_soon(self._warm, entry)

    async def _warm(self, entry: _Entry) -> None:
        sandbox = self._config.sandbox
        spec = SandboxSpec(
            session_id=entry.pool_id,
            agent=entry.agent,
            protocol=sandbox.protocol,
            # The agent's credentials only, as for any session: never a user's.
            env=self._config.sandbox_env(entry.agent),
        )
        try:
            with trio.fail_after(PREPARE_TIMEOUT):
                handle = await self._provider.create(spec)
                # Held from now on, before the next checkpoint: `finish` removes it.
                entry.handle = handle
                # A pooled sandbox serves a task without a repository, whose /diff compares
                # with the workspace as it was before the agent's first prompt: recorded now,
                # while the agent starts, as a session does (opening the agent's session leaves
                # the workspace alone), off the session's path.
                resume = None
                async with open_nursery_bare() as nursery:
                    nursery.start_soon(self._record_diff_base, entry, handle)
                    if sandbox.protocol == "sandbox-agent":
                        resume = await self._prepare(self._config.agent(entry.agent), handle)
        except (AnycodeError, trio.TooSlowError) as exc:
            await self.send(_WarmFailed(entry.pool_id, str(exc) or type(exc).__name__))
            return
        await self.send(_Warmed(entry.pool_id, resume, entry.diff_base))

    async def _record_diff_base(self, entry: _Entry, handle: SandboxHandle) -> None:
        if not self._provider.can_exec:
            return  # git cannot run in these sandboxes; the session knows (no /diff)
        git = self._config.git
        workspace = WorkspaceDiff(
            handle.session_id, max_patch_bytes=git.max_patch_bytes, within=float(git.timeout_secs)
        )
        try:
            await workspace.begin(self._provider, handle)
        except AnycodeError as exc:
            log.warning("pool: no /diff starting point in %s: %s", handle.session_id, exc)
            return
        entry.diff_base = True

    async def _destroy(self, sandbox_id: str) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(DESTROY_GRACE):
            try:
                await self._provider.destroy(sandbox_id)
            except AnycodeError as exc:
                log.error("pool: sandbox %s not removed: %s", sandbox_id[:12], exc)

    def _report(self) -> None:
        context = current_child()
        if context is None:
            return
        context.update(
            pooled=[
                {
                    "agent": e.agent,
                    "state": e.state,
                    "since": e.created_at,
                    "sandbox": e.handle.id[:12] if e.handle else None,
                }
                for e in sorted(self._entries.values(), key=lambda e: (e.agent, e.since))
            ],
            claims=self.claims,
            misses=self.misses,
        )


async def _answer(claim: Claim, claimed: Claimed | None) -> bool:
    """Hand `claimed` to the claiming session; False when it stopped waiting."""
    try:
        await claim.reply.send(claimed)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    return True


async def claim(
    pool: trio.MemorySendChannel[PoolInbox], agent: str, *, take: bool = True
) -> Claimed | None:
    """A ready sandbox of `agent` from `pool`, or None: none is ready (or `take` is False),
    the pool is gone, or it did not answer within CLAIM_WAIT. With None, there is room for the
    caller to create its own sandbox (as far as the pool could make it).

    The answer is a rendezvous: a sandbox is handed over only when the caller receives it, so
    a caller that gave up never leaves one nobody holds."""
    send, receive = trio.open_memory_channel[Claimed | None](0)
    with receive, send:
        with trio.move_on_after(CLAIM_WAIT):
            try:
                await pool.send(Claim(agent, send.clone(), take))
                return await receive.receive()
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel):
                return None
    return None


__all__ = ["POOL_PREFIX", "Claim", "Claimed", "PoolInbox", "SandboxPool", "claim"]
