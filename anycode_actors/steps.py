"""Milestones of a task's way from the chat to the agent, as DEBUG lines of one logger.

`step("posted", session_id)` logs `posted <session id>` on the logger `anycode_actors.steps`
with the monotonic time it happened (`time.perf_counter()`) in the record's `at` attribute, and
the step's name and key in `step` and `key`. Nothing is logged unless that logger is enabled for
DEBUG (one level check otherwise), so the calls stay in place in production: `tests/bench.py`
turns the logger on to break the dispatch time down step by step, and so can an operator who
wants to see where a slow start spent its time (`logging.getLogger("anycode_actors.steps")
.setLevel(logging.DEBUG)`).

The steps of a `/task`, in order (a sandbox taken from the warm pool skips none of them):

- `update`: the chat client has the platform's event (Telegram: getUpdates answered);
- `recorded`: the chat actor has written the session to the store (key: the session id, as for
  every step after it);
- `sandbox`: the session has its sandbox (taken from the pool, or created);
- `opened`: the agent session is open (attached, for a pooled sandbox);
- `prompt`: the prompt is handed to the stream actor;
- `posted`: its `session/prompt` request is being POSTed to sandbox-agent (key: the ACP server
  id; protocol "sandbox-agent" only).
"""

from __future__ import annotations

import logging
import time
from typing import Final

STEPS: Final = logging.getLogger("anycode_actors.steps")


def step(name: str, key: str = "") -> None:
    """Log the milestone `name` of `key` (a session id, or "" before there is one)."""
    if STEPS.isEnabledFor(logging.DEBUG):
        STEPS.debug("%s %s", name, key, extra={"step": name, "key": key, "at": time.perf_counter()})


__all__ = ["STEPS", "step"]
