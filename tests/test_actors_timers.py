"""The actors' timers (actors/timers.py): one task per run calls each due callback, in deadline
order; cancelled ones are forgotten; a callback that raises does not stop the others; `deliver`
puts a message into an inbox now, later when it is full, or nowhere when its actor is gone. On
the autojump clock."""

from __future__ import annotations

import logging

import pytest
import trio

from anycode_actors.actors.timers import COMPACT_AT, Timer, _Timers, call_at, deliver


def all_tasks() -> list[trio.lowlevel.Task]:
    found, stack = [], [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        assert task is not None
        found.append(task)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return found


async def test_callbacks_run_at_their_deadlines_in_order(autojump_clock: trio.abc.Clock) -> None:
    start = trio.current_time()
    fired: list[tuple[str, float]] = []
    for name, after in (("late", 30.0), ("early", 10.0), ("middle", 20.0)):
        call_at(start + after, lambda n=name: fired.append((n, trio.current_time() - start)))
    await trio.sleep(25)
    assert fired == [("early", 10.0), ("middle", 20.0)]
    await trio.sleep(10)
    assert [name for name, _ in fired] == ["early", "middle", "late"]
    # One task serves them all, however many there are.
    assert sum(1 for t in all_tasks() if t.name == "anycode_actors.timers") == 1


async def test_a_cancelled_timer_never_fires_and_lets_go_of_its_callback(
    autojump_clock: trio.abc.Clock,
) -> None:
    fired: list[str] = []
    timer = call_at(trio.current_time() + 5, lambda: fired.append("no"))
    kept = call_at(trio.current_time() + 6, lambda: fired.append("yes"))
    assert timer.pending
    timer.cancel()
    assert not timer.pending and timer._callback is None
    await trio.sleep(10)
    assert fired == ["yes"]
    assert not kept.pending  # fired once, and done


async def test_a_timer_set_earlier_than_all_others_wakes_the_task_for_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    fired: list[float] = []
    start = trio.current_time()
    call_at(start + 3600, lambda: fired.append(trio.current_time() - start))
    await trio.sleep(1)
    call_at(start + 2, lambda: fired.append(trio.current_time() - start))
    await trio.sleep(5)
    assert fired == [2.0]


async def test_a_callback_that_raises_is_logged_and_the_others_still_run(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    fired: list[str] = []

    def broken() -> None:
        raise ValueError("boom")

    call_at(trio.current_time() + 1, broken)
    call_at(trio.current_time() + 1, lambda: fired.append("after"))
    with caplog.at_level(logging.ERROR, logger="anycode_actors.actors.timers"):
        await trio.sleep(2)
    assert fired == ["after"]
    assert [r.getMessage() for r in caplog.records] == ["a timer's callback failed"]


def test_cancelled_timers_are_swept_out_once_they_are_most_of_the_heap() -> None:
    timers = _Timers()
    made = []
    for n in range(COMPACT_AT * 2):
        timer = Timer(60.0 + n, lambda: None)
        timers.add(timer)
        made.append(timer)
        if n % 4:
            timer.cancel()  # three in four
    pending = [t for t in made if t.pending]
    assert len(timers._heap) < len(made)
    assert sorted(id(entry[2]) for entry in timers._heap if entry[2].pending) == sorted(
        id(t) for t in pending
    )


async def test_deliver_waits_for_room_in_a_task_of_the_actor_and_drops_for_a_gone_one(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    send, receive = trio.open_memory_channel[str](1)
    deliver(send, nursery, "first")
    deliver(send, nursery, "second")  # full: waits in a task of `nursery`
    await trio.sleep(1)
    assert receive.receive_nowait() == "first"
    await trio.sleep(1)
    assert receive.receive_nowait() == "second"
    deliver(send, None, "nowhere")
    deliver(send, None, "dropped: full and no tasks")
    assert receive.receive_nowait() == "nowhere"
    receive.close()
    deliver(send, nursery, "gone")  # the actor has stopped: nothing happens
