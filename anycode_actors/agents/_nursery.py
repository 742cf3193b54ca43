"""A nursery for context managers whose callers should see their own exceptions as raised."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


@asynccontextmanager
async def open_nursery_bare() -> AsyncIterator[trio.Nursery]:
    """`trio.open_nursery()`, except that an exception raised by the `async with` block itself
    (and nothing else) comes out as it is, not inside an ExceptionGroup: a caller of
    `open_acp_client` writes `except AgentError`, not `except*`. Failures of the nursery's own
    tasks are still grouped, as they should be."""
    raised: list[BaseException] = []
    try:
        async with trio.open_nursery() as nursery:
            try:
                yield nursery
            except BaseException as exc:
                raised.append(exc)
                raise
    except BaseExceptionGroup as group:
        if raised and len(group.exceptions) == 1 and group.exceptions[0] is raised[0]:
            raise raised[0] from None
        raise
