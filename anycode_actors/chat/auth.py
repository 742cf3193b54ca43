"""Who may use the bot: the allowed-users check every chat client applies at its edge.

Events from anyone else never reach the actors; the client answers them with `NOT_AUTHORIZED`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

NOT_AUTHORIZED: Final = "You are not authorized to use this bot."


def is_allowed(allowed: Sequence[str], user_id: str) -> bool:
    """True if `user_id` may use the bot. An empty list allows everyone (the config default)."""
    return not allowed or user_id in allowed
