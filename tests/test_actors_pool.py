"""The warm pool (actors/pool.py): kept full within the limits, claimed, recycled, drained, and
swept of what a previous run left; on the fake provider, a real in-memory store and the autojump
clock. The last tests run a session actor that takes its sandbox from the pool, and the
watchdog, which must not reap pooled or claimed sandboxes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import trio

from anycode_actors.actors.directory import SessionDirectory
from anycode_actors.actors.pool import (
    CLAIM_WAIT,
    POOL_PREFIX,
    REFILL_DELAY,
    TICK,
    Claimed,
    SandboxPool,
    claim,
)
from anycode_actors.actors.watchdog import ORPHAN_AGE, Watchdog
from anycode_actors.agents.session import Resume
from anycode_actors.config import AgentConfig, Config, config_from_mapping
from anycode_actors.errors import AgentNotReadyError
from anycode_actors.sandboxes.base import SandboxError, SandboxHandle
from anycode_actors.store import SessionStatus, Store
from supervisors import Registry, Supervisor
from tests.actor_fakes import FakeAgent, FakeProvider, iso_ago, memory_store, said
from tests.session_rig import TELEGRAM_TOKEN, start


def pool_config(size: int = 2, *, total: int = 10, idle: int = 30, **data: Any) -> Config:
    return config_from_mapping(
        {
            "telegram": {"bot_token": TELEGRAM_TOKEN},
            "agents": {"claude-code": {"env": {"ANTHROPIC_API_KEY": "sk-ant-agent-key"}}},
            "session": {"debounce_ms": 500, "idle_minutes": 0},
            "limits": {"max_sessions_total": total},
            "pool": {"agents": {"claude-code": size}, "max_idle_minutes": idle},
            **data,
        },
        environ={},
    )


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    async with memory_store() as store:
        yield store


class Prepared:
    """Stands in for `prepare_session`: records the sandboxes it was asked to prepare."""

    def __init__(self) -> None:
        self.handles: list[SandboxHandle] = []

    async def __call__(self, agent: AgentConfig, handle: SandboxHandle) -> Resume:
        await trio.sleep(0.5)
        self.handles.append(handle)
        return Resume(f"acp-{handle.id}", last_seq=0, cursor="2", turn_running=False)


async def start_pool(
    nursery: trio.Nursery, store: Store, config: Config, provider: FakeProvider | None = None
) -> tuple[SandboxPool, FakeProvider, Prepared, Registry]:
    provider = provider or FakeProvider()
    prepared = Prepared()
    pool = SandboxPool(config, provider, store, prepare=prepared)
    registry = Registry()
    supervisor = Supervisor([pool.spec("pool")], registry=registry)
    await nursery.start(supervisor.run)
    return pool, provider, prepared, registry


async def active_session(store: Store, **fields: Any) -> str:
    session = await store.create_session(
        platform="telegram", chat="1", user="1", agent="claude-code", prompt="x", **fields
    )
    return session.id


async def test_the_pool_fills_up_with_ready_sandboxes_holding_only_the_agents_credentials(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    config = pool_config(3)
    pool, provider, prepared, registry = await start_pool(nursery, store, config)
    await trio.sleep(1)
    assert len(provider.specs) == 3
    assert len(prepared.handles) == 3
    for spec in provider.specs:
        assert spec.session_id.startswith(POOL_PREFIX)
        assert spec.agent == "claude-code"
        assert spec.repo is None
        assert dict(spec.env) == config.sandbox_env("claude-code")
    assert pool.held() == frozenset(provider.sandboxes)
    [entry] = [e for e in registry.snapshot() if e.id == "pool"]
    pooled = entry.info["pooled"]
    assert isinstance(pooled, list) and len(pooled) == 3
    assert all(isinstance(p, dict) and p["state"] == "ready" for p in pooled)


async def test_a_claim_hands_over_a_ready_sandbox_and_its_session_and_the_pool_refills(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    pool, provider, prepared, _ = await start_pool(nursery, store, pool_config(2))
    await trio.sleep(1)
    await active_session(store)
    claimed = await claim(pool.address(), "claude-code")
    assert claimed is not None and claimed.handle in prepared.handles
    handle = claimed.handle
    assert claimed == Claimed(handle, Resume(f"acp-{handle.id}", 0, "2", False))
    assert claimed.handle.id in pool.held()  # handed over: not reaped before it is recorded
    await trio.sleep(REFILL_DELAY + 1)
    assert len(provider.specs) == 3  # one more made to replace it
    assert await claim(pool.address(), "codex") is None  # no pool for that agent
    assert pool.claims == 1
    assert pool.misses == 1


async def test_the_refill_waits_a_moment_after_a_claim_and_replaces_a_burst_at_once(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    pool, provider, _, _ = await start_pool(nursery, store, pool_config(3))
    await trio.sleep(1)
    assert len(provider.specs) == 3
    assert await claim(pool.address(), "claude-code") is not None
    await trio.sleep(REFILL_DELAY / 2)
    assert await claim(pool.address(), "claude-code") is not None
    # Nothing new starts beside the claimed sandboxes while they take up their prompts.
    assert len(provider.specs) == 3
    await trio.sleep(REFILL_DELAY)
    assert len(provider.specs) == 5  # both replaced by the one refill
    await trio.sleep(1)
    assert pool.ready("claude-code") == 3


class SlowGitProvider(FakeProvider):
    """Its `exec` (the git that records the /diff starting point) takes 0.4 s, then fails."""

    def __init__(self) -> None:
        super().__init__()
        self.execs: list[float] = []  # trio time each began

    async def exec(self, handle: Any, argv: Any, env: Any = None, cwd: Any = None) -> Any:
        self.execs.append(trio.current_time())
        await trio.sleep(0.4)
        raise SandboxError("git is slow here, then gone")


async def test_a_pooled_sandboxs_diff_starting_point_is_recorded_while_its_agent_starts(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    began = trio.current_time()
    pool, provider, _, _ = await start_pool(nursery, store, pool_config(1), SlowGitProvider())
    await trio.sleep(0.6)  # prepare takes 0.5 s, the git 0.4 s: side by side, not one after another
    assert pool.ready("claude-code") == 1
    assert isinstance(provider, SlowGitProvider) and len(provider.execs) == 1
    assert provider.execs[0] - began < 0.1


async def test_pooled_sandboxes_and_sessions_together_stay_within_max_sessions_total(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    await active_session(store)
    pool, provider, _, _ = await start_pool(nursery, store, pool_config(3, total=3))
    await trio.sleep(1)
    assert len(provider.sandboxes) == 2  # 1 session + 2 pooled = the limit
    # A session with a repository makes its own sandbox: the pool makes room for it first.
    await active_session(store, repo="acme/web")
    assert await claim(pool.address(), "claude-code", take=False) is None
    assert len(provider.sandboxes) == 1
    await trio.sleep(5 * TICK)
    assert len(provider.sandboxes) == 1  # and does not fill it again


async def test_an_unused_sandbox_is_replaced_after_max_idle_minutes_and_a_dead_one_at_once(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    pool, provider, _, _ = await start_pool(nursery, store, pool_config(1, idle=5))
    await trio.sleep(1)
    [first] = provider.sandboxes
    await trio.sleep(4 * 60)
    assert list(provider.sandboxes) == [first]
    await trio.sleep(60 + TICK)
    assert first in provider.destroyed
    [second] = provider.sandboxes
    provider.kill(second)
    await trio.sleep(TICK + 1)
    assert second in provider.destroyed
    assert len(provider.alive) == 1
    assert pool.held() == frozenset(provider.alive)


async def test_a_sandbox_that_does_not_come_up_is_removed_and_tried_again_later(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    async def failing(agent: AgentConfig, handle: SandboxHandle) -> Resume:
        await trio.sleep(0.5)
        raise AgentNotReadyError("sandbox-agent was not healthy")

    provider = FakeProvider()
    pool = SandboxPool(pool_config(1), provider, store, prepare=failing)
    await nursery.start(Supervisor([pool.spec("pool")], registry=Registry()).run)
    await trio.sleep(1)
    await trio.sleep(TICK)
    assert len(provider.specs) >= 2  # tried again at the tick
    assert set(provider.destroyed) >= {f"sbx-{n}" for n in range(1, len(provider.specs))}
    assert await claim(pool.address(), "claude-code") is None


async def test_shutdown_drains_the_pool(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    provider = FakeProvider()
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as inner:
            await start_pool(inner, store, pool_config(2), provider)
            await trio.sleep(1)
            assert len(provider.sandboxes) == 2
            scope.cancel()
    assert provider.sandboxes == {}
    assert len(provider.destroyed) == 2


async def test_a_previous_runs_pool_sandboxes_are_removed_unless_a_live_session_took_one(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    provider = FakeProvider()
    left = provider.add(f"{POOL_PREFIX}0123", created_at=iso_ago(3600)).id
    taken = provider.add(f"{POOL_PREFIX}4567", created_at=iso_ago(3600)).id
    session = await active_session(store)
    await store.set_sandbox(session, taken, "http://sandbox.invalid")
    await start_pool(nursery, store, pool_config(1), provider)
    await trio.sleep(1)
    assert left in provider.destroyed
    assert taken not in provider.destroyed


async def test_the_watchdog_spares_pooled_sandboxes_and_those_sessions_took_from_the_pool(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    provider = FakeProvider()
    pool, provider, _, _ = await start_pool(nursery, store, pool_config(2), provider)
    await trio.sleep(1)
    claimed = await claim(pool.address(), "claude-code")
    assert claimed is not None
    session = await active_session(store)
    await store.transition(session, SessionStatus.STARTING)
    await store.set_sandbox(session, claimed.handle.id, "http://sandbox.invalid")
    stray = provider.add(f"{POOL_PREFIX}stray", created_at=iso_ago(3600)).id
    directory = SessionDirectory()
    await nursery.start(directory.run)
    watchdog = Watchdog(
        provider,
        store,
        directory.address(),
        timeout=timedelta(hours=1),
        interval=30,
        held=pool.held,
    )
    await nursery.start(watchdog.run)
    await trio.sleep(ORPHAN_AGE + 3600)  # the handed-over grace has long passed
    assert stray in provider.destroyed
    assert claimed.handle.id not in provider.destroyed
    assert not set(provider.destroyed) & pool.held()
    # Nor is its session (no actor here) settled as failed while its sandbox exists.
    record = await store.get_session(session)
    assert record is not None and record.status == SessionStatus.STARTING


async def test_a_session_takes_its_sandbox_from_the_pool_and_attaches_to_its_agent_session(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = pool_config(1)
    pool, provider, prepared, _ = await start_pool(nursery, store, config)
    await trio.sleep(1)
    [pooled] = prepared.handles
    agent = FakeAgent([said("done")])
    rig = await start(nursery, store, monkeypatch, agent, config, provider, pool=pool.address())
    closed = await rig.wait_closed()
    assert closed.status == "completed"
    assert agent.prompts == ["fix the login bug"]
    assert agent.connects == [Resume(f"acp-{pooled.id}", 0, "2", False)]
    assert pooled.id in provider.destroyed  # removed with its session
    record = await store.get_session(rig.session.id)
    assert record is not None and record.sandbox_id == pooled.id
    # Only the pool created sandboxes: the pooled one and its replacement.
    assert all(spec.session_id.startswith(POOL_PREFIX) for spec in provider.specs)


async def test_a_session_waits_for_a_sandbox_on_its_way_rather_than_make_its_own(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = pool_config(1)
    pool, provider, prepared, _ = await start_pool(nursery, store, config)
    # At once, while the pooled sandbox is still coming up (half a second).
    agent = FakeAgent([said("done")])
    rig = await start(nursery, store, monkeypatch, agent, config, provider, pool=pool.address())
    closed = await rig.wait_closed()
    assert closed.status == "completed"
    [pooled, *_] = prepared.handles
    assert agent.connects == [Resume(f"acp-{pooled.id}", 0, "2", False)]
    assert [s.session_id for s in provider.specs].count(rig.session.id) == 0
    assert (pool.claims, pool.misses) == (1, 0)


async def test_a_session_makes_its_own_sandbox_when_the_pool_has_none_soon_enough(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def slow(agent: AgentConfig, handle: SandboxHandle) -> Resume:
        await trio.sleep(CLAIM_WAIT * 10)
        return Resume("late", 0, None, False)

    config = pool_config(1)
    provider = FakeProvider()
    pool = SandboxPool(config, provider, store, prepare=slow)
    await nursery.start(Supervisor([pool.spec("pool")], registry=Registry()).run)
    agent = FakeAgent([said("done")])
    rig = await start(nursery, store, monkeypatch, agent, config, provider, pool=pool.address())
    closed = await rig.wait_closed()
    assert closed.status == "completed"
    assert agent.connects == [None]
    assert [s.session_id for s in provider.specs].count(rig.session.id) == 1
    await trio.sleep(CLAIM_WAIT * 10)
    assert pool.ready("claude-code") == 1  # kept for the next claim


async def test_a_claim_of_a_pool_that_stopped_is_answered_with_nothing() -> None:
    send, receive = trio.open_memory_channel[Any](1)
    receive.close()
    assert await claim(send, "claude-code") is None
