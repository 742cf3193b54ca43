"""Every default the library uses, in one place, so the numbers are easy to find and to argue about.

Callers pass their own values (from config) through the constructors; nothing here is read at
run time from anywhere else.
"""

from __future__ import annotations

import math
from typing import Final

LOGGER_NAME: Final = "supervisors"

ROOT_NAME: Final = "root"
"""Registry path of a root supervisor unless it is given another name."""

SUPERVISOR_KIND: Final = "supervisor"
ACTOR_KIND: Final = "actor"
WORKER_KIND: Final = "worker"

SHUTDOWN_GRACE: Final = 5.0
"""Seconds a cancelled child may spend cleaning up before the supervisor gives up on it."""

SUPERVISOR_SHUTDOWN_GRACE: Final = math.inf
"""A supervisor bounds its own stop by its children's graces, so its parent waits it out (OTP's
`infinity` for supervisor children)."""

MAX_RESTARTS: Final = 5
RESTART_PERIOD: Final = 30.0
"""More than MAX_RESTARTS restarts within RESTART_PERIOD seconds and the supervisor gives up.

With the default backoff a child that crashes at once on every start exhausts this after about
six seconds, while a dependency that flaps every few seconds is retried indefinitely."""

BACKOFF_INITIAL: Final = 0.1
BACKOFF_FACTOR: Final = 2.0
BACKOFF_CAP: Final = 30.0
BACKOFF_JITTER: Final = 0.1
BACKOFF_RESET_AFTER: Final = 10.0
"""A child that stayed up this many seconds is healthy again: its next restart waits only
BACKOFF_INITIAL."""

INBOX_SIZE: Final = 32
"""Messages an actor's inbox holds before `send` blocks (backpressure)."""
