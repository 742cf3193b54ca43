"""Fault tests that report what they find: a gap the daemon still has is an expected failure
whose reason names the gap, and the test passes by itself once the gap is fixed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio

Scenario = Callable[[trio.Nursery, Path], Awaitable[list[str]]]


def expect_known_gaps(scenario: Scenario, tmp: Path) -> None:
    """Run `scenario` (given a nursery for the stand-ins) and report what it found missing as an
    expected failure, or pass when nothing is. A plain test calling `trio.run`: pytest-trio
    drops the reason of an xfail raised in an async test, and here the reason is the finding."""

    async def main() -> list[str]:
        async with trio.open_nursery() as nursery:
            gaps = await scenario(nursery, tmp)
            nursery.cancel_scope.cancel()
        return gaps

    try:
        gaps = trio.run(main)
    except BaseExceptionGroup as group:
        # A skip (or CI's failure for what it must have) comes out of the nursery wrapped.
        leaves = list(_leaves(group))
        if len(leaves) == 1 and isinstance(
            leaves[0], pytest.skip.Exception | pytest.fail.Exception
        ):
            raise leaves[0] from None
        raise
    if gaps:
        pytest.xfail("; ".join(gaps))


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error
