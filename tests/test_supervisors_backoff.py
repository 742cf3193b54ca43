"""Backoff between restarts: exponential growth up to the cap, reset after a healthy run, and
jitter that is bounded and reproducible."""

import random

import pytest
import trio

from supervisors import Backoff, ChildSpec, Intensity, Registry, Strategy, Supervisor

ROOMY = Intensity(max_restarts=1000, period=1000)


class Crasher:
    """Crashes after staying up for the next of `uptimes` seconds; then stays up for good."""

    def __init__(self, uptimes: list[float]) -> None:
        self.uptimes = list(uptimes)
        self.started_at: list[float] = []
        self.crashed_at: list[float] = []

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.started_at.append(trio.current_time())
        task_status.started()
        if not self.uptimes:
            await trio.sleep_forever()
        await trio.sleep(self.uptimes.pop(0))
        self.crashed_at.append(trio.current_time())
        raise ValueError("crash")

    def delays(self) -> list[float]:
        """Seconds between each crash and the next start."""
        return [
            start - crash
            for crash, start in zip(self.crashed_at, self.started_at[1:], strict=False)
        ]


async def supervise_until_settled(sup: Supervisor, seconds: float = 500) -> None:
    with trio.move_on_after(seconds):
        await sup.run()


async def test_restart_delays_grow_by_the_factor_up_to_the_cap(autojump_clock: object) -> None:
    crasher = Crasher([0] * 6)
    backoff = Backoff(initial=1, factor=2, cap=5, jitter=0, reset_after=10)
    sup = Supervisor(
        [ChildSpec("c", crasher.run)], backoff=backoff, intensity=ROOMY, registry=Registry()
    )
    await supervise_until_settled(sup)
    assert crasher.delays() == pytest.approx([1, 2, 4, 5, 5, 5])


async def test_backoff_resets_after_the_child_stayed_up_long_enough(
    autojump_clock: object,
) -> None:
    crasher = Crasher([0, 0, 10, 0, 0])
    backoff = Backoff(initial=1, factor=2, cap=60, jitter=0, reset_after=10)
    sup = Supervisor(
        [ChildSpec("c", crasher.run)], backoff=backoff, intensity=ROOMY, registry=Registry()
    )
    await supervise_until_settled(sup)
    assert crasher.delays() == pytest.approx([1, 2, 1, 2, 4])


async def test_backoff_keeps_growing_when_the_child_did_not_stay_up_long_enough(
    autojump_clock: object,
) -> None:
    crasher = Crasher([0, 9.5, 0])
    backoff = Backoff(initial=1, factor=2, cap=60, jitter=0, reset_after=10)
    sup = Supervisor(
        [ChildSpec("c", crasher.run)], backoff=backoff, intensity=ROOMY, registry=Registry()
    )
    await supervise_until_settled(sup)
    assert crasher.delays() == pytest.approx([1, 2, 4])


async def test_restart_delays_use_the_injected_random_source_for_jitter(
    autojump_clock: object,
) -> None:
    crasher = Crasher([0] * 5)
    backoff = Backoff(initial=1, factor=3, cap=20, jitter=0.5, rng=random.Random(1234))
    sup = Supervisor(
        [ChildSpec("c", crasher.run)], backoff=backoff, intensity=ROOMY, registry=Registry()
    )
    await supervise_until_settled(sup)

    replay = random.Random(1234)
    expected = [base * (1 - 0.5 * replay.random()) for base in (1, 3, 9, 20, 20)]
    assert crasher.delays() == pytest.approx(expected)


async def test_one_for_all_restarts_the_group_after_the_failed_childs_backoff(
    autojump_clock: object,
) -> None:
    crasher = Crasher([1])
    sibling_starts: list[float] = []

    async def sibling(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sibling_starts.append(trio.current_time())
        task_status.started()
        await trio.sleep_forever()

    sup = Supervisor(
        [ChildSpec("sibling", sibling), ChildSpec("c", crasher.run)],
        strategy=Strategy.ONE_FOR_ALL,
        backoff=Backoff(initial=3, jitter=0),
        registry=Registry(),
    )
    await supervise_until_settled(sup, 20)
    assert crasher.delays() == pytest.approx([3])
    assert sibling_starts == pytest.approx([0, 4])


def test_delay_grows_by_the_factor_and_stops_at_the_cap() -> None:
    backoff = Backoff(initial=0.5, factor=3, cap=10, jitter=0)
    assert [backoff.delay(n) for n in range(5)] == pytest.approx([0.5, 1.5, 4.5, 10, 10])
    assert backoff.delay(100_000) == 10  # no OverflowError on a very long crash series


def test_jitter_only_shortens_the_wait_by_at_most_the_fraction() -> None:
    backoff = Backoff(initial=1, factor=2, cap=100, jitter=0.25, rng=random.Random(7))
    delays = [backoff.delay(3) for _ in range(1000)]
    assert all(6 <= d <= 8 for d in delays)
    assert min(delays) < 6.1 and max(delays) > 7.9  # spread over the whole range


def test_jitter_is_reproducible_with_a_seeded_random_source() -> None:
    first = Backoff(jitter=1.0, rng=random.Random(42))
    second = Backoff(jitter=1.0, rng=random.Random(42))
    assert [first.delay(n) for n in range(8)] == [second.delay(n) for n in range(8)]


def test_backoffs_without_a_source_share_one_and_still_jitter() -> None:
    first, second = Backoff(jitter=1.0), Backoff(jitter=1.0)
    assert first.rng is second.rng  # one generator per process, not one per supervisor
    delays = {first.delay(2) for _ in range(20)} | {second.delay(2) for _ in range(20)}
    assert len(delays) > 1 and all(0 <= d <= 4 for d in delays)


@pytest.mark.parametrize(
    "settings",
    [
        {"initial": -1},
        {"initial": 5, "cap": 1},
        {"cap": float("inf")},
        {"factor": 0.5},
        {"jitter": 1.5},
        {"jitter": -0.1},
        {"reset_after": -1},
    ],
)
def test_invalid_backoff_settings_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**settings)  # type: ignore[arg-type]


@pytest.mark.parametrize("settings", [{"max_restarts": -1}, {"period": 0}])
def test_invalid_intensity_settings_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Intensity(**settings)  # type: ignore[arg-type]
