"""The store's errors; the tree is drawn in the package docstring."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import AnycodeError


class StoreError(AnycodeError):
    """Base of every error the store raises on purpose."""


class StoreClosed(StoreError):
    """The store was used after its ``async with`` block ended."""


class StoreUnavailable(StoreError):
    """SQLite could not read or write the database for a reason outside the daemon: the file is
    locked by another process past the busy timeout, the disk is full, an I/O error, a read-only
    file. What was being written was not written (SQLite rolled the statement back). The
    message says which, in words fit for a chat; the sqlite3 error is the cause."""


class DatabaseLocked(StoreUnavailable):
    """Another connection (another process) held the write lock for longer than the store's
    busy timeout. Trying again later may work."""


class DiskFull(StoreUnavailable):
    """The disk (or quota) that holds the database or its WAL is full. Nothing more can be
    written until space is freed."""


class SchemaTooNew(StoreError):
    """The file was migrated by a newer version of the daemon; running old code on it could
    corrupt it, so the store refuses to open."""


class InvalidTransition(StoreError, ValueError):
    """A status change the state machine never allows, whatever the stored status is."""


class UnknownSession(StoreError, LookupError):
    """No session has this id."""


class UnknownInteraction(StoreError, LookupError):
    """No interaction has this id."""


class AmbiguousSessionPrefix(StoreError, LookupError):
    """Several sessions of the chat start with the prefix; ``candidates`` holds their ids."""

    def __init__(self, prefix: str, candidates: Sequence[str]) -> None:
        super().__init__(f"{len(candidates)} sessions start with {prefix!r}")
        self.prefix = prefix
        self.candidates = tuple(candidates)
