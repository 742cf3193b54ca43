"""Durable state of the daemon: sessions, interactions and events in SQLite.

The store is what survives a restart: on start the daemon reads the sessions that never reached
a terminal status and resumes their streams from the last stored event seq.

Rules the old bot broke, and this package keeps:

- one timestamp format, made in Python: ISO 8601 UTC with microseconds and ``+00:00``, fixed
  width, so text order is time order (never SQLite's ``datetime('now')``);
- status changes are compare-and-set in one ``UPDATE ... WHERE status IN (...)``: of two racing
  writers exactly one wins, and a terminal status is never overwritten (a trigger refuses it too);
- an event is keyed by ``(session_id, seq)``: a repeated delivery is ignored, not duplicated;
  it is stored under a versioned tag (``to_record`` in ``anycode_actors.agents.events``) and
  read back typed (``from_record``), a row this code cannot read as an ``UnknownEvent``;
- every SQLite call runs in a worker thread behind a ``trio.CapacityLimiter(1)``, so the event
  loop never waits on the disk and the connection is never used by two threads at once.

Errors (under the package-wide ``anycode_actors.errors.AnycodeError``)::

    StoreError
    ├── StoreClosed
    ├── StoreUnavailable (the file is locked, full, or failing: outside the daemon's control)
    │   ├── DatabaseLocked (another process held the write lock past the busy timeout)
    │   └── DiskFull
    ├── SchemaTooNew
    ├── InvalidTransition (also ValueError)
    ├── UnknownSession (also LookupError)
    ├── UnknownInteraction (also LookupError)
    ├── AmbiguousSessionPrefix (also LookupError)
    └── QuotaExceeded
"""

from ._errors import (
    AmbiguousSessionPrefix,
    DatabaseLocked,
    DiskFull,
    InvalidTransition,
    SchemaTooNew,
    StoreClosed,
    StoreError,
    StoreUnavailable,
    UnknownInteraction,
    UnknownSession,
)
from ._quota import DAY, Quota, QuotaExceeded, QuotaKind, Usage
from ._records import (
    ACTIVE_STATUSES,
    ALLOWED_TRANSITIONS,
    TERMINAL_STATUSES,
    Event,
    Interaction,
    InteractionKind,
    InteractionOption,
    InteractionStatus,
    Session,
    SessionStatus,
)
from ._schema import MIGRATIONS, SCHEMA_VERSION, Migration, migrate
from ._store import DB_FILE_MODE, DEFAULT_BUSY_TIMEOUT, INTERACTION_ID_BYTES, Purged, Store

__all__ = [
    "ACTIVE_STATUSES",
    "ALLOWED_TRANSITIONS",
    "DAY",
    "DB_FILE_MODE",
    "DEFAULT_BUSY_TIMEOUT",
    "INTERACTION_ID_BYTES",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "TERMINAL_STATUSES",
    "AmbiguousSessionPrefix",
    "DatabaseLocked",
    "DiskFull",
    "Event",
    "Interaction",
    "InteractionKind",
    "InteractionOption",
    "InteractionStatus",
    "InvalidTransition",
    "Migration",
    "Purged",
    "Quota",
    "QuotaExceeded",
    "QuotaKind",
    "SchemaTooNew",
    "Session",
    "SessionStatus",
    "Store",
    "StoreClosed",
    "StoreError",
    "StoreUnavailable",
    "UnknownInteraction",
    "UnknownSession",
    "Usage",
    "migrate",
]
