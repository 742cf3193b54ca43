"""Supervisor behaviour: start and stop order, strategies, restart types, intensity, start
failures, and giving up on children that ignore cancellation."""

import logging

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
    Strategy,
    Supervisor,
)


class Worker:
    """A child that logs each start and stop, and crashes or exits when the test says so."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self.starts = 0
        self._go = trio.Event()
        self._error: BaseException | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.starts += 1
        self._go = trio.Event()
        self._error = None
        self.log.append(f"start {self.name}")
        try:
            task_status.started()
            await self._go.wait()
            if self._error is not None:
                raise self._error
        finally:
            self.log.append(f"stop {self.name}")

    def crash(self, error: BaseException | None = None) -> None:
        self._error = error if error is not None else ValueError(f"{self.name} broke")
        self._go.set()

    def exit(self) -> None:
        self._go.set()

    def spec(self, restart: Restart = Restart.PERMANENT) -> ChildSpec:
        return ChildSpec(self.name, self.run, restart=restart, shutdown=1.0)


def instant() -> Backoff:
    return Backoff(initial=0, jitter=0)


def make(
    workers: list[Worker], strategy: Strategy = Strategy.ONE_FOR_ONE, **kwargs: object
) -> Supervisor:
    return Supervisor(
        [w.spec() for w in workers],
        strategy=strategy,
        backoff=instant(),
        registry=Registry(),
        **kwargs,  # type: ignore[arg-type]
    )


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


async def test_children_start_in_order_and_stop_in_reverse_order() -> None:
    log: list[str] = []
    sup = make([Worker(name, log) for name in "abc"])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        assert log == ["start a", "start b", "start c"]
        nursery.cancel_scope.cancel()
    assert log == ["start a", "start b", "start c", "stop c", "stop b", "stop a"]


async def test_supervisor_is_ready_only_once_every_child_is_ready(autojump_clock: object) -> None:
    ready: list[tuple[str, float]] = []

    def slow_child(name: str, delay: float) -> ChildSpec:
        async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            await trio.sleep(delay)
            ready.append((name, trio.current_time()))
            task_status.started()
            await trio.sleep_forever()

        return ChildSpec(name, run)

    sup = Supervisor([slow_child("a", 2), slow_child("b", 3)], registry=Registry())
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        await nursery.start(sup.run)
        assert trio.current_time() - start == pytest.approx(5)
        assert [name for name, _ in ready] == ["a", "b"]
        assert [at - start for _, at in ready] == pytest.approx([2, 5])
        nursery.cancel_scope.cancel()


async def test_one_for_one_restarts_only_the_failed_child() -> None:
    log: list[str] = []
    a, b, c = (Worker(name, log) for name in "abc")
    sup = make([a, b, c], Strategy.ONE_FOR_ONE)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        log.clear()
        b.crash()
        await settle()
        assert log == ["stop b", "start b"]
        assert (a.starts, b.starts, c.starts) == (1, 2, 1)
        nursery.cancel_scope.cancel()


async def test_one_for_all_stops_the_others_in_reverse_and_restarts_all_in_order() -> None:
    log: list[str] = []
    a, b, c = (Worker(name, log) for name in "abc")
    sup = make([a, b, c], Strategy.ONE_FOR_ALL)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        log.clear()
        b.crash()
        await settle()
        assert log == ["stop b", "stop c", "stop a", "start a", "start b", "start c"]
        nursery.cancel_scope.cancel()


async def test_rest_for_one_restarts_the_failed_child_and_those_after_it() -> None:
    log: list[str] = []
    a, b, c, d = (Worker(name, log) for name in "abcd")
    sup = make([a, b, c, d], Strategy.REST_FOR_ONE)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        log.clear()
        b.crash()
        await settle()
        assert log == ["stop b", "stop d", "stop c", "start b", "start c", "start d"]
        assert a.starts == 1
        nursery.cancel_scope.cancel()


async def test_a_child_that_is_not_restarted_leaves_its_siblings_alone() -> None:
    log: list[str] = []
    a, b = Worker("a", log), Worker("b", log)
    sup = Supervisor(
        [a.spec(), b.spec(Restart.TEMPORARY)],
        strategy=Strategy.ONE_FOR_ALL,
        backoff=instant(),
        registry=Registry(),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        log.clear()
        b.crash()
        await settle()
        assert log == ["stop b"]
        assert a.starts == 1
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("restart", "crash", "restarted"),
    [
        (Restart.PERMANENT, False, True),
        (Restart.PERMANENT, True, True),
        (Restart.TRANSIENT, False, False),
        (Restart.TRANSIENT, True, True),
        (Restart.TEMPORARY, False, False),
        (Restart.TEMPORARY, True, False),
    ],
    ids=[
        "permanent_restarts_after_normal_exit",
        "permanent_restarts_after_crash",
        "transient_stays_down_after_normal_exit",
        "transient_restarts_after_crash",
        "temporary_stays_down_after_normal_exit",
        "temporary_stays_down_after_crash",
    ],
)
async def test_restart_type_decides_whether_an_exited_child_starts_again(
    restart: Restart, crash: bool, restarted: bool
) -> None:
    log: list[str] = []
    worker = Worker("w", log)
    registry = Registry()
    sup = Supervisor([worker.spec(restart)], backoff=instant(), registry=registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        if crash:
            worker.crash()
        else:
            worker.exit()
        await settle()
        assert worker.starts == (2 if restarted else 1)
        entry = registry.get("root/w")
        assert entry is not None
        if restarted:
            assert entry.state == "running"
        else:
            assert entry.state == ("failed" if crash else "stopped")
        nursery.cancel_scope.cancel()


async def test_too_many_restarts_stop_the_children_and_fail_naming_the_child_and_its_error(
    autojump_clock: object,
) -> None:
    log: list[str] = []
    steady = Worker("steady", log)
    crashes = 0

    async def flaky(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal crashes
        task_status.started()
        await trio.sleep(1)
        crashes += 1
        raise OSError(f"disk gone #{crashes}")

    sup = Supervisor(
        [steady.spec(), ChildSpec("flaky", flaky)],
        intensity=Intensity(max_restarts=2, period=10),
        backoff=instant(),
        registry=Registry(),
    )
    with pytest.raises(RestartIntensityExceeded) as caught:
        await sup.run()  # raised bare: no ExceptionGroup around it
    error = caught.value
    assert error.child_id == "flaky"
    assert isinstance(error.last_error, OSError)
    assert str(error.last_error) == "disk gone #3"
    assert error.__cause__ is error.last_error
    assert "'flaky'" in str(error) and "OSError: disk gone #3" in str(error)
    assert crashes == 3
    assert log == ["start steady", "stop steady"]
    assert trio.current_time() == pytest.approx(3)


async def test_restarts_spread_wider_than_the_period_never_exceed_the_intensity(
    autojump_clock: object,
) -> None:
    starts = 0

    async def crashes_every_6s(
        *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        nonlocal starts
        starts += 1
        task_status.started()
        await trio.sleep(6)
        raise ValueError("again")

    sup = Supervisor(
        [ChildSpec("w", crashes_every_6s)],
        intensity=Intensity(max_restarts=1, period=5),
        backoff=instant(),
        registry=Registry(),
    )
    with trio.move_on_after(60):
        await sup.run()
    assert starts == 10


async def test_a_failed_static_start_stops_the_started_children_and_fails_upward() -> None:
    log: list[str] = []
    a, c = Worker("a", log), Worker("c", log)

    async def broken(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raise ConnectionRefusedError("no database")

    registry = Registry()
    sup = Supervisor([a.spec(), ChildSpec("b", broken), c.spec()], registry=registry)
    with pytest.raises(ChildStartFailed) as caught:
        await sup.run()
    assert caught.value.child_id == "b"
    assert isinstance(caught.value.error, ConnectionRefusedError)
    assert log == ["start a", "stop a"]
    root = registry.get("root")
    assert root is not None and root.state == "failed"
    assert root.last_error is not None and "no database" in root.last_error


async def test_a_child_that_returns_before_reporting_ready_fails_to_start() -> None:
    async def forgetful(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        return

    sup = Supervisor([ChildSpec("f", forgetful)], registry=Registry())
    with pytest.raises(ChildStartFailed) as caught:
        await sup.run()
    assert isinstance(caught.value.error, RuntimeError)
    assert "started" in str(caught.value.error)


async def test_a_child_calling_started_twice_crashes() -> None:
    async def twice(*, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started("first")
        await trio.lowlevel.checkpoint()
        task_status.started("second")

    sup = Supervisor(
        [ChildSpec("t", twice)],
        registry=Registry(),
        backoff=instant(),
        intensity=Intensity(max_restarts=1, period=60),
    )
    with pytest.raises(RestartIntensityExceeded) as caught:
        with trio.fail_after(5):
            await sup.run()
    assert "started' twice" in str(caught.value)


async def test_each_child_runs_in_one_task_of_its_own_and_nothing_more(
    nursery: trio.Nursery,
) -> None:
    """A supervised child is its host task: no second task and no nursery per child."""
    seen: list[tuple[trio.lowlevel.Task, trio.lowlevel.Task | None]] = []

    async def child(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task = trio.lowlevel.current_task()
        seen.append((task, task.parent_nursery and task.parent_nursery.parent_task))
        task_status.started()
        await trio.sleep_forever()

    sup = Supervisor([ChildSpec("a", child), ChildSpec("b", child)], registry=Registry())
    await nursery.start(sup.run)
    [(a, a_parent), (b, b_parent)] = seen
    assert a.name == "supervised root/a" and b.name == "supervised root/b"
    # System tasks, directly under the run's system nursery.
    assert a_parent is b_parent and a_parent is not None
    assert a_parent.name == "<init>"
    nursery.cancel_scope.cancel()


async def test_a_restart_that_fails_to_start_counts_as_a_crash_and_is_retried(
    autojump_clock: object,
) -> None:
    attempts = 0

    async def shaky(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 2:
            raise TimeoutError("slow dependency")
        task_status.started()
        if attempts == 1:
            await trio.sleep(1)
            raise ValueError("first run broke")
        await trio.sleep_forever()

    registry = Registry()
    sup = Supervisor([ChildSpec("s", shaky)], backoff=instant(), registry=registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(5)
        assert attempts == 3
        entry = registry.get("root/s")
        assert entry is not None
        assert (entry.state, entry.restarts) == ("running", 2)
        assert entry.last_error == "TimeoutError: slow dependency"
        nursery.cancel_scope.cancel()


async def test_a_base_exception_that_is_not_an_error_is_re_raised_not_restarted() -> None:
    class Shutdown(BaseException):
        pass

    log: list[str] = []
    a, b = Worker("a", log), Worker("b", log)
    sup = make([a, b])

    async def interrupt_b() -> None:
        await settle()
        b.crash(Shutdown())

    with pytest.RaisesGroup(Shutdown):  # the test's own nursery wraps it, run() does not
        async with trio.open_nursery() as nursery:
            nursery.start_soon(interrupt_b)
            await sup.run()
    assert b.starts == 1
    assert log == ["start a", "start b", "stop b", "stop a"]


async def test_a_child_ignoring_cancellation_is_abandoned_after_its_grace_and_logged(
    autojump_clock: object, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[str] = []
    quick = Worker("quick", log)
    stubborn_done = trio.Event()

    async def stubborn(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(100)
            stubborn_done.set()

    sup = Supervisor(
        [quick.spec(), ChildSpec("stubborn", stubborn, shutdown=2.5)], registry=Registry()
    )
    with caplog.at_level(logging.ERROR, logger="supervisors"):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            start = trio.current_time()
            nursery.cancel_scope.cancel()
        stopped_after = trio.current_time() - start

    assert stopped_after == pytest.approx(2.5)
    assert not stubborn_done.is_set()
    assert log == ["start quick", "stop quick"]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "root/stubborn" in errors[0].getMessage()
    assert "2.5 s shutdown grace" in errors[0].getMessage()
    await stubborn_done.wait()  # it really was still running, unsupervised


async def test_a_child_gets_its_whole_grace_for_cleanup(autojump_clock: object) -> None:
    cleaned = trio.Event()

    async def tidy(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(1.5)
            cleaned.set()

    sup = Supervisor([ChildSpec("tidy", tidy, shutdown=2)], registry=Registry())
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        start = trio.current_time()
        nursery.cancel_scope.cancel()
    assert cleaned.is_set()
    assert trio.current_time() - start == pytest.approx(1.5)


async def test_a_stubborn_sibling_is_abandoned_and_replaced_on_a_one_for_all_restart(
    autojump_clock: object, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[str] = []
    crasher = Worker("crasher", log)
    incarnations = 0

    async def stubborn(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal incarnations
        incarnations += 1
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(30)

    sup = Supervisor(
        [ChildSpec("stubborn", stubborn, shutdown=1), crasher.spec()],
        strategy=Strategy.ONE_FOR_ALL,
        backoff=instant(),
        registry=Registry(),
    )
    with caplog.at_level(logging.ERROR, logger="supervisors"):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            start = trio.current_time()
            crasher.crash()
            await trio.sleep(0.5)
            assert incarnations == 1
            await trio.sleep(1)
            assert incarnations == 2
            assert crasher.starts == 2
            assert trio.current_time() - start == pytest.approx(1.5)
            nursery.cancel_scope.cancel()
    assert any("root/stubborn" in r.getMessage() for r in caplog.records)


async def test_duplicate_static_ids_are_refused() -> None:
    log: list[str] = []
    with pytest.raises(DuplicateChild, match="'a'"):
        Supervisor([Worker("a", log).spec(), Worker("a", log).spec()])


async def test_a_root_supervisor_needs_a_registry() -> None:
    with pytest.raises(RuntimeError, match="registry="):
        await Supervisor().run()


async def test_running_one_supervisor_twice_at_once_is_refused() -> None:
    sup = Supervisor(registry=Registry())
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        with pytest.raises(RuntimeError, match="already running"):
            await sup.run()
        nursery.cancel_scope.cancel()
