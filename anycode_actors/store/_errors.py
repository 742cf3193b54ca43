"""The store's errors; the tree is drawn in the package docstring."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import AnycodeError


class StoreError(AnycodeError):
    """Base of every error the store raises on purpose."""


class StoreClosed(StoreError):
    """The store was used after its ``async with`` block ended."""


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
