"""Actor: a bounded inbox handled one message at a time, visible in the registry, kept across
restarts, closed when the actor stops for good."""

import pytest
import trio
import trio.testing

from supervisors import (
    Actor,
    Backoff,
    ChildStartFailed,
    Inbox,
    Registry,
    Restart,
    Supervisor,
)


class Recorder(Actor[str]):
    """Records what it handles; "crash" raises, "stop" stops, "hold" waits for `release`."""

    inbox_size = 3

    def __init__(self, *, inbox_size: int | None = None, inbox: Inbox[str] | None = None) -> None:
        super().__init__(inbox_size=inbox_size, inbox=inbox)
        self.handled: list[str] = []
        self.release = trio.Event()
        self.busy = False

    async def handle(self, message: str) -> None:
        assert not self.busy, "two messages handled at once"
        self.busy = True
        try:
            if message == "hold":
                await self.release.wait()
            await trio.sleep(0.1)
            if message == "crash":
                raise ValueError("bad message")
            if message == "stop":
                self.stop()
            self.handled.append(message)
        finally:
            self.busy = False


def instant() -> Backoff:
    return Backoff(initial=0, jitter=0)


async def test_an_actor_handles_its_messages_one_at_a_time_in_order(
    autojump_clock: object,
) -> None:
    actor = Recorder()
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)  # an actor runs unsupervised too
        for message in ("a", "b", "c"):
            await actor.send(message)
        await trio.sleep(1)
        assert actor.handled == ["a", "b", "c"]
        nursery.cancel_scope.cancel()


async def test_a_full_inbox_makes_senders_wait(autojump_clock: object) -> None:
    actor = Recorder(inbox_size=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        await actor.send("hold")
        await trio.testing.wait_all_tasks_blocked()
        await actor.send("a")
        await actor.send("b")
        with trio.move_on_after(5) as blocked:
            await actor.send("c")
        assert blocked.cancelled_caught
        actor.release.set()
        await actor.send("c")
        await trio.sleep(1)
        assert actor.handled == ["hold", "a", "b", "c"]
        nursery.cancel_scope.cancel()


async def test_the_registry_shows_an_actors_inbox_depth_and_capacity(
    autojump_clock: object,
) -> None:
    registry = Registry()
    actor = Recorder()
    sup = Supervisor([actor.spec("chat:telegram:1")], registry=registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        entry = registry.get("root/chat:telegram:1")
        assert entry is not None
        assert (entry.kind, entry.inbox_depth, entry.inbox_capacity) == ("actor", 0, 3)

        await actor.send("hold")
        await trio.testing.wait_all_tasks_blocked()
        await actor.send("a")
        await actor.send("b")
        entry = registry.get("root/chat:telegram:1")
        assert entry is not None
        assert (entry.inbox_depth, entry.inbox_capacity) == (2, 3)

        actor.release.set()
        await trio.sleep(1)
        entry = registry.get("root/chat:telegram:1")
        assert entry is not None and entry.inbox_depth == 0
        nursery.cancel_scope.cancel()


async def test_an_unbounded_inbox_reports_no_capacity() -> None:
    registry = Registry()
    actor = Recorder(inbox_size=float("inf"))  # type: ignore[arg-type]
    sup = Supervisor([actor.spec("a")], registry=registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        entry = registry.get("root/a")
        assert entry is not None and entry.inbox_capacity is None
        nursery.cancel_scope.cancel()


async def test_an_actor_keeps_its_queued_messages_across_a_restart(autojump_clock: object) -> None:
    registry = Registry()
    actor = Recorder()
    sup = Supervisor([actor.spec("a")], backoff=instant(), registry=registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        for message in ("crash", "x", "y"):
            await actor.send(message)
        await trio.sleep(1)
        assert actor.handled == ["x", "y"]
        entry = registry.get("root/a")
        assert entry is not None
        assert (entry.state, entry.restarts) == ("running", 1)
        assert entry.last_error == "ValueError: bad message"
        nursery.cancel_scope.cancel()


async def test_stop_ends_the_actor_normally_and_closes_its_inbox(autojump_clock: object) -> None:
    registry = Registry()
    sessions = Supervisor(registry=registry)
    actor = Recorder()
    async with trio.open_nursery() as nursery:
        await nursery.start(sessions.run)
        await sessions.start_child(actor.spec("session:1", restart=Restart.TEMPORARY))
        await actor.send("work")
        await actor.send("stop")
        await trio.sleep(1)
        assert actor.handled == ["work", "stop"]
        assert sessions.children() == []
        assert registry.get("root/session:1") is None
        with pytest.raises(trio.BrokenResourceError):
            await actor.send("too late")
        with pytest.raises(RuntimeError, match="stopped"):
            await actor.run()
        nursery.cancel_scope.cancel()


async def test_an_actor_whose_setup_fails_does_not_start() -> None:
    class NeedsToken(Recorder):
        async def setup(self) -> None:
            raise PermissionError("no bot token")

    sup = Supervisor(registry=Registry())
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        with pytest.raises(ChildStartFailed) as caught:
            await sup.start_child(NeedsToken().spec("telegram"))
        assert isinstance(caught.value.error, PermissionError)
        nursery.cancel_scope.cancel()


async def test_each_producer_can_own_and_close_its_address(autojump_clock: object) -> None:
    actor = Recorder()
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        async with actor.address() as producer:
            await producer.send("from producer")
        await actor.send("still open")
        await trio.sleep(1)
        assert actor.handled == ["from producer", "still open"]
        nursery.cancel_scope.cancel()


async def test_a_dynamic_actor_that_is_terminated_or_crashes_for_good_closes_its_inbox(
    autojump_clock: object,
) -> None:
    supervisor = Supervisor(backoff=instant(), registry=Registry())
    terminated, crashed = Recorder(), Recorder()
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        await supervisor.start_child(terminated.spec("terminated", restart=Restart.TEMPORARY))
        await supervisor.start_child(crashed.spec("crashed", restart=Restart.TEMPORARY))
        await supervisor.terminate_child("terminated")  # cancelled, not stopped by itself
        with pytest.raises(trio.BrokenResourceError):
            await terminated.send("late")
        await crashed.send("crash")
        await trio.sleep(1)
        with pytest.raises(trio.BrokenResourceError):
            await crashed.send("late")
        nursery.cancel_scope.cancel()


async def test_dynamic_actors_close_their_inboxes_when_their_supervisor_stops(
    autojump_clock: object,
) -> None:
    supervisor = Supervisor(backoff=instant(), registry=Registry())
    actor = Recorder()
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        await supervisor.start_child(actor.spec("worker"))
        nursery.cancel_scope.cancel()
    with pytest.raises(trio.BrokenResourceError):
        actor.address().send_nowait("after the supervisor stopped")


async def test_a_static_actor_keeps_its_inbox_open_for_its_supervisors_next_run(
    autojump_clock: object,
) -> None:
    actor = Recorder()
    supervisor = Supervisor([actor.spec("static")], backoff=instant(), registry=Registry())
    for _ in range(2):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            await actor.send("a")
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
    assert actor.handled == ["a", "a"]


class Helper(Actor[str]):
    """Runs a ticker in `tasks` from `setup` and records its `finish`."""

    def __init__(self) -> None:
        super().__init__()
        self.ticks = 0
        self.finished_after: int | None = None

    async def setup(self) -> None:
        self.tasks.start_soon(self._tick)

    async def _tick(self) -> None:
        while True:
            await trio.sleep(1)
            self.ticks += 1

    async def handle(self, message: str) -> None:
        if message == "stop":
            self.stop()

    async def finish(self) -> None:
        await trio.sleep(0.5)  # shielded: runs to its end even when the run was cancelled
        self.finished_after = self.ticks


async def test_helper_tasks_live_as_long_as_the_run_and_finish_runs_on_every_exit(
    autojump_clock: object,
) -> None:
    stopped, cancelled = Helper(), Helper()
    async with trio.open_nursery() as nursery:
        await nursery.start(stopped.run)
        await nursery.start(cancelled.run)
        await trio.sleep(3.5)
        await stopped.send("stop")
        await trio.sleep(3)
        assert stopped.finished_after == 3 and stopped.ticks == 3  # the ticker ended with it
        nursery.cancel_scope.cancel()
    assert cancelled.finished_after == cancelled.ticks == 6
    with pytest.raises(RuntimeError):
        _ = cancelled.tasks


async def test_an_actor_can_be_given_an_inbox_made_beforehand(autojump_clock: object) -> None:
    send, receive = trio.open_memory_channel[str](2)
    early_address = send.clone()  # handed to a peer made before the actor exists
    actor = Recorder(inbox=(send, receive))
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        await early_address.send("hello")
        await trio.sleep(1)
        assert actor.handled == ["hello"]
        nursery.cancel_scope.cancel()


class Leftovers(Actor[str]):
    """Stops at "stop"; its `finish` takes what was still waiting in the inbox."""

    def __init__(self) -> None:
        super().__init__(inbox_size=8)
        self.left: list[str] = []

    async def handle(self, message: str) -> None:
        if message == "stop":
            await trio.sleep(1)  # more arrives meanwhile
            self.stop()

    async def finish(self) -> None:
        while True:
            try:
                self.left.append(self._inbox.receive_nowait())
            except trio.WouldBlock:
                return


async def test_finish_can_answer_what_waits_in_the_inbox_after_a_stop(
    autojump_clock: object,
) -> None:
    actor = Leftovers()
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        await actor.send("stop")
        await actor.send("late 1")
        await actor.send("late 2")
        await trio.sleep(2)
    assert actor.left == ["late 1", "late 2"]
    with pytest.raises(trio.BrokenResourceError):
        await actor.send("after")
