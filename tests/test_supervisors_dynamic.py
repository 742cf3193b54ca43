"""Dynamic children (start_child / terminate_child / children) and nested supervisors."""

import pytest
import trio
import trio.testing

from supervisors import (
    Backoff,
    ChildSpec,
    ChildStartFailed,
    DuplicateChild,
    Intensity,
    Registry,
    Restart,
    RestartIntensityExceeded,
    Supervisor,
    SupervisorNotRunning,
    UnknownChild,
)


class Worker:
    """A child that logs each start and stop, and crashes or exits when the test says so."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self.starts = 0
        self._go = trio.Event()
        self._crash = False

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        self.starts += 1
        self._go = trio.Event()
        self._crash = False
        self.log.append(f"start {self.name}")
        try:
            task_status.started(f"ready:{self.name}")
            await self._go.wait()
            if self._crash:
                raise ValueError(f"{self.name} broke")
        finally:
            self.log.append(f"stop {self.name}")

    def crash(self) -> None:
        self._crash = True
        self._go.set()

    def exit(self) -> None:
        self._go.set()

    def spec(self, restart: Restart = Restart.PERMANENT) -> ChildSpec:
        return ChildSpec(self.name, self.run, restart=restart, shutdown=1.0)


def instant() -> Backoff:
    return Backoff(initial=0, jitter=0)


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


def ids(sup: Supervisor) -> list[str]:
    return [entry.id for entry in sup.children()]


async def test_start_child_waits_until_the_child_is_ready_and_returns_what_it_reported(
    autojump_clock: object,
) -> None:
    async def slow(*, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.sleep(2)
        task_status.started("inbox-address")
        await trio.sleep_forever()

    sup = Supervisor(registry=Registry())
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        start = trio.current_time()
        assert await sup.start_child(ChildSpec("slow", slow)) == "inbox-address"
        assert trio.current_time() - start == pytest.approx(2)
        assert ids(sup) == ["slow"]
        nursery.cancel_scope.cancel()


async def test_starting_an_id_that_is_already_supervised_raises_duplicate_child() -> None:
    log: list[str] = []
    sup = Supervisor([Worker("static", log).spec()], registry=Registry())
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await sup.start_child(Worker("dynamic", log).spec())
        for taken in ("static", "dynamic"):
            with pytest.raises(DuplicateChild, match=repr(taken)):
                await sup.start_child(Worker(taken, log).spec())
        assert ids(sup) == ["static", "dynamic"]
        assert log == ["start static", "start dynamic"]
        nursery.cancel_scope.cancel()


async def test_a_dynamic_child_that_fails_to_start_raises_and_is_not_kept() -> None:
    async def broken(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raise PermissionError("no token")

    registry = Registry()
    sup = Supervisor(registry=registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        with pytest.raises(ChildStartFailed) as caught:
            await sup.start_child(ChildSpec("session:1", broken))
        assert caught.value.child_id == "session:1"
        assert isinstance(caught.value.error, PermissionError)
        assert ids(sup) == []
        assert registry.get("root/session:1") is None
        log: list[str] = []
        await sup.start_child(Worker("session:1", log).spec())  # the id is free again
        assert ids(sup) == ["session:1"]
        nursery.cancel_scope.cancel()


async def test_terminate_child_stops_it_and_forgets_it() -> None:
    log: list[str] = []
    registry = Registry()
    sup = Supervisor(registry=registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await sup.start_child(Worker("a", log).spec())
        await sup.start_child(Worker("b", log).spec())
        await sup.terminate_child("a")
        assert log == ["start a", "start b", "stop a"]
        assert ids(sup) == ["b"]
        assert registry.get("root/a") is None
        nursery.cancel_scope.cancel()


async def test_terminating_an_unknown_child_raises_unknown_child() -> None:
    sup = Supervisor(registry=Registry())
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        with pytest.raises(UnknownChild, match="'ghost'"):
            await sup.terminate_child("ghost")
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("crash", [False, True], ids=["after_normal_exit", "after_crash"])
async def test_a_temporary_dynamic_child_that_exits_is_removed(crash: bool) -> None:
    log: list[str] = []
    worker = Worker("session:7", log)
    registry = Registry()
    sup = Supervisor(registry=registry, backoff=instant())
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await sup.start_child(worker.spec(Restart.TEMPORARY))
        worker.crash() if crash else worker.exit()
        await settle()
        assert ids(sup) == []
        assert registry.get("root/session:7") is None
        assert worker.starts == 1
        nursery.cancel_scope.cancel()


async def test_a_transient_dynamic_child_is_restarted_after_a_crash_and_removed_when_done() -> None:
    log: list[str] = []
    worker = Worker("chat:1", log)
    sup = Supervisor(registry=Registry(), backoff=instant())
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await sup.start_child(worker.spec(Restart.TRANSIENT))
        worker.crash()
        await settle()
        assert worker.starts == 2
        assert ids(sup) == ["chat:1"]
        worker.exit()
        await settle()
        assert ids(sup) == []
        nursery.cancel_scope.cancel()


async def test_dynamic_children_stop_in_reverse_start_order_after_the_static_ones_started() -> None:
    log: list[str] = []
    sup = Supervisor([Worker("static", log).spec()], registry=Registry())
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        for name in ("x", "y"):
            await sup.start_child(Worker(name, log).spec())
        nursery.cancel_scope.cancel()
    assert log == ["start static", "start x", "start y", "stop y", "stop x", "stop static"]


async def test_dynamic_calls_to_a_supervisor_that_is_not_running_raise() -> None:
    log: list[str] = []
    sup = Supervisor(registry=Registry())
    with pytest.raises(SupervisorNotRunning):
        await sup.start_child(Worker("early", log).spec())
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        nursery.cancel_scope.cancel()
    with pytest.raises(SupervisorNotRunning):
        await sup.terminate_child("late")
    assert sup.children() == []
    assert not sup.running


async def test_cancelling_start_child_while_the_child_starts_leaves_no_child_behind(
    autojump_clock: object,
) -> None:
    events: list[str] = []

    async def slow(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        events.append("starting")
        try:
            await trio.sleep(10)
            task_status.started()
            await trio.sleep_forever()
        finally:
            events.append("stopped")

    registry = Registry()
    sup = Supervisor(registry=registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        with trio.move_on_after(3):
            await sup.start_child(ChildSpec("slow", slow))
        await trio.sleep(20)
        assert events == ["starting", "stopped"]
        assert ids(sup) == []
        assert registry.get("root/slow") is None
        nursery.cancel_scope.cancel()


async def test_a_dynamic_start_is_served_while_another_child_waits_out_its_backoff(
    autojump_clock: object,
) -> None:
    log: list[str] = []
    flaky = Worker("flaky", log)
    sup = Supervisor(
        [flaky.spec()], backoff=Backoff(initial=100, cap=100, jitter=0), registry=Registry()
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        flaky.crash()
        await trio.sleep(1)
        start = trio.current_time()
        await sup.start_child(Worker("new", log).spec())
        assert trio.current_time() == start
        assert flaky.starts == 1
        await trio.sleep(100)
        assert flaky.starts == 2
        nursery.cancel_scope.cancel()


async def test_a_child_can_terminate_itself_through_its_supervisor() -> None:
    sup = Supervisor(registry=Registry())
    finished = trio.Event()

    async def done_soon(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            await sup.terminate_child("done-soon")
        finally:
            finished.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await sup.start_child(ChildSpec("done-soon", done_soon))
        await finished.wait()
        await settle()
        assert ids(sup) == []
        nursery.cancel_scope.cancel()


async def test_nested_supervisors_register_their_children_under_their_own_path() -> None:
    registry = Registry()
    chats = Supervisor()
    sessions = Supervisor()
    log: list[str] = []
    root = Supervisor(
        [Worker("store", log).spec(), chats.spec("chats"), sessions.spec("sessions")],
        registry=registry,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(root.run)
        assert chats.path == "root/chats"
        await chats.start_child(Worker("chat:telegram:1", log).spec())
        await sessions.start_child(Worker("session:1", log).spec())
        await chats.start_child(Worker("chat:slack:C1", log).spec())
        assert [(e.path, e.kind) for e in registry.snapshot()] == [
            ("root", "supervisor"),
            ("root/store", "worker"),
            ("root/chats", "supervisor"),
            ("root/chats/chat:telegram:1", "worker"),
            ("root/chats/chat:slack:C1", "worker"),
            ("root/sessions", "supervisor"),
            ("root/sessions/session:1", "worker"),
        ]
        nursery.cancel_scope.cancel()
    assert log[-4:] == [
        "stop session:1",
        "stop chat:slack:C1",
        "stop chat:telegram:1",
        "stop store",
    ]


async def test_a_restarted_child_supervisor_restarts_static_children_drops_dynamic() -> None:
    log: list[str] = []
    registry = Registry()
    flusher = Worker("flusher", log)
    chat = Supervisor([flusher.spec()], intensity=Intensity(max_restarts=0), backoff=instant())
    root = Supervisor([chat.spec("chat")], backoff=instant(), registry=registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(root.run)
        await chat.start_child(Worker("stream", log).spec())
        log.clear()
        flusher.crash()  # intensity 0: the chat supervisor gives up at once
        await settle()
        assert log == ["stop flusher", "stop stream", "start flusher"]
        assert [entry.id for entry in chat.children()] == ["flusher"]
        entry = registry.get("root/chat")
        assert entry is not None
        assert (entry.state, entry.restarts) == ("running", 1)
        assert entry.last_error is not None
        assert entry.last_error.startswith("RestartIntensityExceeded: child 'flusher'")
        nursery.cancel_scope.cancel()


async def test_a_child_supervisor_that_exceeds_its_intensity_fails_its_parent_in_turn() -> None:
    log: list[str] = []
    worker = Worker("w", log)
    inner = Supervisor([worker.spec()], intensity=Intensity(max_restarts=0))
    root = Supervisor(
        [inner.spec("inner")], intensity=Intensity(max_restarts=0), registry=Registry()
    )

    async def crash_soon() -> None:
        await settle()
        worker.crash()

    with pytest.RaisesGroup(RestartIntensityExceeded):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(crash_soon)
            try:
                await root.run()
            except RestartIntensityExceeded as error:
                assert error.child_id == "inner"
                assert isinstance(error.last_error, RestartIntensityExceeded)
                assert error.last_error.child_id == "w"
                raise


async def test_a_supervisor_run_inside_an_actor_registers_its_children_below_that_actor() -> None:
    registry = Registry()
    sessions = Supervisor()
    log: list[str] = []

    async def session(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        helpers = Supervisor([Worker("stream:1", log).spec()])
        async with trio.open_nursery() as nursery:
            await nursery.start(helpers.run)
            task_status.started()

    root = Supervisor([sessions.spec("sessions")], registry=registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(root.run)
        await sessions.start_child(ChildSpec("session:1", session, kind="actor"))
        assert [(e.path, e.kind) for e in registry.snapshot()][-2:] == [
            ("root/sessions/session:1", "actor"),
            ("root/sessions/session:1/stream:1", "worker"),
        ]
        await sessions.terminate_child("session:1")
        assert log == ["start stream:1", "stop stream:1"]
        assert [e.path for e in registry.snapshot()] == ["root", "root/sessions"]
        nursery.cancel_scope.cancel()
