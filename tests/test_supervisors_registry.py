"""The registry: paths, kinds, states through a child's life, restarts, last errors, wall-clock
start times, details attached by the child itself, and plain JSON-ready snapshots."""

import dataclasses
import enum
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
import trio
import trio.testing

from supervisors import (
    Backoff,
    ChildSpec,
    ChildState,
    Registry,
    Strategy,
    Supervisor,
    current_child,
)
from supervisors._registry import to_json


def state(registry: Registry, path: str) -> str | None:
    entry = registry.get(path)
    return None if entry is None else entry.state


async def test_registry_follows_a_child_through_its_whole_life(autojump_clock: object) -> None:
    registry = Registry()
    release = trio.Event()
    runs = 0

    async def child(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal runs
        runs += 1
        await trio.sleep(1)
        task_status.started()
        if runs == 1:
            await release.wait()
            raise LookupError("chat 42 vanished")
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(2)

    sup = Supervisor(
        [ChildSpec("c", child, shutdown=5, kind="actor")],
        backoff=Backoff(initial=4, jitter=0),
        registry=registry,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sup.run)
        await trio.sleep(0.5)
        assert state(registry, "root") == "starting"
        assert state(registry, "root/c") == "starting"
        await trio.sleep(1)
        assert state(registry, "root") == "running"
        entry = registry.get("root/c")
        assert entry is not None
        assert (entry.kind, entry.state, entry.restarts, entry.last_error) == (
            "actor",
            ChildState.RUNNING,
            0,
            None,
        )

        release.set()
        await trio.sleep(1)
        entry = registry.get("root/c")
        assert entry is not None
        assert (entry.state, entry.restarts) == ("restarting", 0)
        assert entry.last_error == "LookupError: chat 42 vanished"

        await trio.sleep(4.5)  # backoff 4 s, then 1 s to get ready
        entry = registry.get("root/c")
        assert entry is not None
        assert (entry.state, entry.restarts) == ("running", 1)
        assert entry.last_error == "LookupError: chat 42 vanished"

        nursery.cancel_scope.cancel()
        with trio.CancelScope(shield=True):
            await trio.sleep(1)
            assert state(registry, "root/c") == "stopping"
    assert state(registry, "root/c") is None  # a stopped supervisor forgets its children
    assert state(registry, "root") == "stopped"


async def test_started_at_is_the_wall_clock_of_readiness_in_iso_8601_utc() -> None:
    paris = timezone(timedelta(hours=1))
    registry = Registry(wall_clock=lambda: datetime(2025, 3, 1, 13, 4, 5, 250000, tzinfo=paris))

    async def child(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    sup = Supervisor([ChildSpec("c", child)], registry=registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        entry = registry.get("root/c")
        assert entry is not None
        assert entry.started_at == "2025-03-01T12:04:05.250+00:00"
        assert datetime.fromisoformat(entry.started_at).tzinfo == UTC
        nursery.cancel_scope.cancel()


async def test_a_child_attaches_its_own_details_and_a_restart_starts_with_none() -> None:
    registry = Registry()
    runs = 0
    crash = trio.Event()

    async def session(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal runs
        runs += 1
        context = current_child()
        assert context is not None
        assert (context.path, context.kind, context.registry) == (
            "root/session:9",
            "actor",
            registry,
        )
        context.update(chat="telegram:1", agent="claude", events=runs)
        task_status.started()
        if runs == 1:
            context.update(status="running", sandbox_id="c0ffee")
            await crash.wait()
            raise RuntimeError("sandbox died")
        await trio.sleep_forever()

    sup = Supervisor(
        [ChildSpec("session:9", session, kind="actor")],
        backoff=Backoff(initial=0, jitter=0),
        registry=registry,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        entry = registry.get("root/session:9")
        assert entry is not None
        assert entry.info == {
            "chat": "telegram:1",
            "agent": "claude",
            "events": 1,
            "status": "running",
            "sandbox_id": "c0ffee",
        }
        crash.set()
        await trio.testing.wait_all_tasks_blocked()
        entry = registry.get("root/session:9")
        assert entry is not None
        assert entry.info == {"chat": "telegram:1", "agent": "claude", "events": 2}
        nursery.cancel_scope.cancel()


async def test_tasks_spawned_by_a_child_report_into_the_childs_entry() -> None:
    registry = Registry()

    async def helper() -> None:
        context = current_child()
        assert context is not None
        context.update(helper="was here")

    async def child(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(helper)
        task_status.started()
        await trio.sleep_forever()

    sup = Supervisor([ChildSpec("c", child)], registry=registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        entry = registry.get("root/c")
        assert entry is not None and entry.info == {"helper": "was here"}
        nursery.cancel_scope.cancel()


async def test_an_abandoned_incarnation_cannot_overwrite_its_successors_details(
    autojump_clock: object,
) -> None:
    registry = Registry()
    crash = trio.Event()
    runs = 0

    async def stubborn(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal runs
        runs += 1
        me = runs
        context = current_child()
        assert context is not None
        context.update(run=me)
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(10)
                context.update(run=me, late=True)

    async def crasher(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if runs == 1:
            await crash.wait()
            raise ValueError("boom")
        await trio.sleep_forever()

    sup = Supervisor(
        [ChildSpec("stubborn", stubborn, shutdown=1), ChildSpec("crasher", crasher)],
        strategy=Strategy.ONE_FOR_ALL,
        backoff=Backoff(initial=0, jitter=0),
        registry=registry,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        crash.set()
        await trio.sleep(20)  # the first incarnation wakes up at t=10 and tries to write
        assert runs == 2
        entry = registry.get("root/stubborn")
        assert entry is not None and entry.info == {"run": 2}
        nursery.cancel_scope.cancel()


async def test_registry_update_by_path_copies_json_values_and_refuses_anything_else() -> None:
    registry = Registry()

    async def child(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    sup = Supervisor([ChildSpec("c", child)], registry=registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        tags = ["a"]
        registry.update("root/c", tags=tags, nested={"n": 1.5, "ok": True, "none": None})
        tags.append("changed later")
        with pytest.raises(TypeError, match="'when'"):
            registry.update("root/c", when=datetime.now(UTC))  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="'ratio'"):
            registry.update("root/c", ratio=float("nan"))
        with pytest.raises(KeyError):
            registry.update("root/nobody", x=1)
        entry = registry.get("root/c")
        assert entry is not None
        assert entry.info == {"tags": ["a"], "nested": {"n": 1.5, "ok": True, "none": None}}
        nursery.cancel_scope.cancel()


def test_info_of_plain_values_is_kept_as_it_is_and_anything_else_as_json_makes_it() -> None:
    class Colour(enum.StrEnum):
        RED = "red"

    copied = to_json({"n": 3, "s": "x", "b": True, "f": 0.5, "none": None, "c": Colour.RED})
    assert copied == {"n": 3, "s": "x", "b": True, "f": 0.5, "none": None, "c": "red"}
    assert type(copied["c"]) is str  # a str subclass goes through JSON: plain data out
    with pytest.raises(TypeError, match="'inf'"):
        to_json({"inf": float("inf")})


async def test_snapshot_is_plain_data_that_round_trips_through_json() -> None:
    registry = Registry(wall_clock=lambda: datetime(2025, 1, 1, tzinfo=UTC))
    inner = Supervisor()

    async def child(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        context = current_child()
        assert context is not None
        context.update(sandbox={"id": "s-1", "ports": [8080]})
        task_status.started()
        await trio.sleep_forever()

    root = Supervisor([inner.spec("sessions")], registry=registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(root.run)
        await inner.start_child(ChildSpec("session:1", child, kind="actor"))
        snapshot = registry.snapshot()
        plain = [dataclasses.asdict(entry) for entry in snapshot]
        assert json.loads(json.dumps(plain)) == [
            {
                "path": "root",
                "kind": "supervisor",
                "state": "running",
                "restarts": 0,
                "last_error": None,
                "started_at": "2025-01-01T00:00:00.000+00:00",
                "inbox_depth": None,
                "inbox_capacity": None,
                "info": {},
            },
            {
                "path": "root/sessions",
                "kind": "supervisor",
                "state": "running",
                "restarts": 0,
                "last_error": None,
                "started_at": "2025-01-01T00:00:00.000+00:00",
                "inbox_depth": None,
                "inbox_capacity": None,
                "info": {},
            },
            {
                "path": "root/sessions/session:1",
                "kind": "actor",
                "state": "running",
                "restarts": 0,
                "last_error": None,
                "started_at": "2025-01-01T00:00:00.000+00:00",
                "inbox_depth": None,
                "inbox_capacity": None,
                "info": {"sandbox": {"id": "s-1", "ports": [8080]}},
            },
        ]
        assert (snapshot[2].id, snapshot[2].parent, snapshot[0].parent) == (
            "session:1",
            "root/sessions",
            None,
        )
        sandbox = snapshot[2].info["sandbox"]
        assert isinstance(sandbox, dict)
        sandbox["ports"].append(1)  # mutating a snapshot does not touch the registry
        fresh = registry.get("root/sessions/session:1")
        assert fresh is not None and fresh.info == {"sandbox": {"id": "s-1", "ports": [8080]}}
        nursery.cancel_scope.cancel()


async def test_current_child_is_none_outside_any_supervisor() -> None:
    assert current_child() is None


async def test_two_trees_with_their_own_registries_never_see_each_other() -> None:
    first, second = Registry(), Registry()

    async def child(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await nursery.start(Supervisor([ChildSpec("a", child)], registry=first).run)
        await nursery.start(Supervisor([ChildSpec("b", child)], name="other", registry=second).run)
        assert [e.path for e in first.snapshot()] == ["root", "root/a"]
        assert [e.path for e in second.snapshot()] == ["other", "other/b"]
        nursery.cancel_scope.cancel()


def test_ids_and_names_must_not_contain_the_path_separator() -> None:
    async def child(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    with pytest.raises(ValueError, match="'/'"):
        ChildSpec("chat/1", child)
    with pytest.raises(ValueError):
        ChildSpec("", child)
    with pytest.raises(ValueError, match="shutdown"):
        ChildSpec("c", child, shutdown=-1)
    with pytest.raises(ValueError, match="'/'"):
        Supervisor(name="a/b")


def test_remove_takes_the_entry_and_everything_below_it_and_nothing_else() -> None:
    registry = Registry()
    for path in ("root", "root/a", "root/a/x", "root/a/x/deep", "root/ab", "root/b"):
        registry.add(path, "worker")
    registry.remove("root/a")
    assert [e.path for e in registry.snapshot()] == ["root", "root/ab", "root/b"]
    registry.add("root/a", "worker")  # a path used again starts with nothing below it
    registry.remove("root/a")
    registry.remove("root/nobody")
    assert [e.path for e in registry.snapshot()] == ["root", "root/ab", "root/b"]
