"""The router: every chat platform client feeds it; it hands each event to that chat's actor.

A chat actor (with its flusher) is started on demand the first time a conversation speaks, as a
small supervisor `chat:<platform>:<id>` under the dynamic `chats` supervisor. The router owns the
map from conversation to chat actor; nobody else touches it.

It also paces people: each user's commands and messages draw from a token bucket
(`limits.command_burst` deep, refilled at `limits.commands_per_second`), across every chat.
Someone over the rate is told once to slow down, then dropped without a word until they stop,
so a flood costs the daemon one cheap check per message and nobody else waits for it. Button
presses are never paced: they answer the agent and are rare by nature.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import trio

from anycode_actors.actors.chat import ChatInbox, Throttled
from anycode_actors.chat.base import ButtonPress, ChatEvent, ChatRef
from supervisors import Actor, current_child

log = logging.getLogger(__name__)

# Starts the chat actor (and its flusher) for a conversation; returns the chat actor's inbox.
StartChat = Callable[[ChatRef], Awaitable[trio.MemorySendChannel[ChatInbox]]]
# Buckets of people who went quiet are forgotten once there are this many.
_BUCKETS_KEPT: Final = 4096


@dataclass(frozen=True)
class Deliver:
    """Something for a chat actor that does not come from the platform (recovery, shutdown)."""

    chat: ChatRef
    message: ChatInbox


RouterInbox = ChatEvent | Deliver


@dataclass
class _Bucket:
    tokens: float
    at: float
    warned: bool = False


class CommandRate:
    """Per-user token buckets over trio time: `admit` says whether an event goes through and
    whether its sender must be told to slow down (only the first drop of a flood)."""

    def __init__(self, per_second: float, burst: int) -> None:
        self._rate = per_second
        self._burst = float(burst)
        self._buckets: dict[str, _Bucket] = {}
        self.dropped = 0

    def admit(self, user_key: str) -> tuple[bool, bool]:
        """(admitted, warn)."""
        now = trio.current_time()
        bucket = self._buckets.get(user_key)
        if bucket is None:
            if len(self._buckets) >= _BUCKETS_KEPT:
                self._forget_full(now)
            bucket = self._buckets[user_key] = _Bucket(self._burst, now)
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.at) * self._rate)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            bucket.warned = False
            return True, False
        # Every dropped message costs a token too (down to one burst in debt), so a sustained
        # flood stays out until its sender stops, instead of slipping through at the refill rate.
        bucket.tokens = max(-self._burst, bucket.tokens - 1.0)
        self.dropped += 1
        warn = not bucket.warned
        bucket.warned = True
        return False, warn

    def _forget_full(self, now: float) -> None:
        full = [
            key
            for key, b in self._buckets.items()
            if b.tokens + (now - b.at) * self._rate >= self._burst
        ]
        for key in full:
            del self._buckets[key]


class Router(Actor[RouterInbox]):
    inbox_size = 256

    def __init__(self, start_chat: StartChat, *, rate: CommandRate | None = None) -> None:
        super().__init__()
        self._start_chat = start_chat
        self._chats: dict[str, trio.MemorySendChannel[ChatInbox]] = {}
        self._rate = rate

    async def handle(self, message: RouterInbox) -> None:
        payload: ChatInbox
        if isinstance(message, Deliver):
            chat, payload = message.chat, message.message
        else:
            chat, payload = message.chat, message
            if self._rate is not None and not isinstance(message, ButtonPress):
                admitted, warn = self._rate.admit(f"{chat.platform}:{message.user.id}")
                if not admitted:
                    if not warn:
                        return
                    log.info("%s:%s is over the command rate", chat.platform, message.user.id)
                    payload = Throttled(message)
                context = current_child()
                if context is not None:
                    context.update(throttled=self._rate.dropped)
        inbox = self._chats.get(chat.key)
        if inbox is None:
            inbox = await self._start_chat(chat)
            self._chats[chat.key] = inbox
        # A chat actor's inbox is bounded: a chat that cannot keep up slows the router down
        # (backpressure up to the platform client), it never grows a queue without end.
        await inbox.send(payload)
