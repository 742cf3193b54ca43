"""Who may use the bot and who may steer whose session: the access policy of one platform.

Decided once, at the edge. A chat client drops events from people the policy does not let in
and answers them with `NOT_AUTHORIZED`; the chat actor then decides, per session, who may
follow up, answer a button or cancel (the session's owner, or an admin).

An empty allow-list lets nobody in unless the operator said `allow_everyone = true`: a bot that
anyone can find must not start sandboxes holding the operator's agent keys for strangers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

NOT_AUTHORIZED: Final = "You are not authorized to use this bot."


@dataclass(frozen=True)
class AccessPolicy:
    """One platform's `allowed_users`, `allow_everyone` and `admins` (user ids as text)."""

    allowed: frozenset[str] = frozenset()
    everyone: bool = False
    admins: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls,
        allowed: Iterable[object] = (),
        *,
        everyone: bool = False,
        admins: Iterable[object] = (),
    ) -> AccessPolicy:
        return cls(frozenset(map(str, allowed)), everyone, frozenset(map(str, admins)))

    @classmethod
    def open(cls) -> AccessPolicy:
        """Everyone may use the bot and nobody is an admin (the demo, a private console)."""
        return cls(everyone=True)

    def may_use(self, user_id: str) -> bool:
        return self.everyone or user_id in self.allowed or user_id in self.admins

    def is_admin(self, user_id: str) -> bool:
        return user_id in self.admins

    def may_steer(self, user_id: str, owner_id: str) -> bool:
        """Whether `user_id` may cancel a session of `owner_id` or answer its buttons."""
        return user_id == owner_id or self.is_admin(user_id)
