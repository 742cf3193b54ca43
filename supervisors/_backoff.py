"""Exponential backoff with jitter: between restarts, and between any tries after failures."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from ._defaults import (
    BACKOFF_CAP,
    BACKOFF_FACTOR,
    BACKOFF_INITIAL,
    BACKOFF_JITTER,
    BACKOFF_RESET_AFTER,
)

_SHARED_RNG = random.Random()


@dataclass(frozen=True)
class Backoff:
    """How long a supervisor waits before restarting a child that has to be restarted, or anything
    else waits before trying again after consecutive failures (a client reconnecting).

    The n-th consecutive restart of a child (n = 0, 1, ...) waits `min(cap, initial * factor**n)`
    seconds, less a random share of up to `jitter` of that (jitter=0.1 waits between 90% and 100%,
    jitter=1.0 is "full jitter" between 0 and 100%). Jitter only ever shortens the wait, so `cap`
    is a true maximum; it exists so that many children failing on the same cause (the chat
    platform is down) do not all retry in the same instant.

    A child that stayed up at least `reset_after` seconds counts as healthy: its next restart
    starts again from `initial`.

    `rng` makes jitter reproducible in tests (`random.Random(seed)`, or simply jitter=0). By
    default every Backoff draws from one generator shared by the process: a `random.Random` is
    seeded from the OS and holds about 2.5 KB of state, which a supervisor made per session (and
    a client's reconnect policy) would otherwise each pay for.
    """

    initial: float = BACKOFF_INITIAL
    factor: float = BACKOFF_FACTOR
    cap: float = BACKOFF_CAP
    jitter: float = BACKOFF_JITTER
    reset_after: float = BACKOFF_RESET_AFTER
    rng: random.Random = field(default_factory=lambda: _SHARED_RNG, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.initial <= self.cap or math.isinf(self.cap):
            raise ValueError(
                f"need 0 <= initial <= cap < inf, got initial={self.initial} cap={self.cap}"
            )
        if not self.factor >= 1:
            raise ValueError(f"factor must be >= 1, got {self.factor}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be within [0, 1], got {self.jitter}")
        if not self.reset_after >= 0:
            raise ValueError(f"reset_after must be >= 0, got {self.reset_after}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before restart (or retry) number `attempt` (0-based) of a series."""
        try:
            base = min(self.cap, self.initial * self.factor**attempt)
        except OverflowError:
            base = self.cap
        if self.jitter:
            base -= base * self.jitter * self.rng.random()
        return base
