"""`Recent`: a bounded mapping that forgets its least recently used entries.

The chat clients remember a little about what they saw and sent (update and envelope ids,
message texts, a press's response_url) to skip duplicates and identical edits; memory must stay
bounded however long the daemon runs, and the oldest entries are the ones least likely needed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["Recent"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Recent(Generic[K, V]):
    """A mapping that keeps at most `capacity` entries, dropping the least recently used.

    `put` and `get` count as a use; `key in recent` only looks and does not.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self._capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: K) -> V | None:
        """The value stored under `key`, or None; a hit makes the entry the most recent."""
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: K, value: V) -> None:
        """Store `value` under `key` as the most recent entry; drop the oldest beyond capacity."""
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._capacity:
            self._items.popitem(last=False)
