"""The router: every chat platform client feeds it; it hands each event to that chat's actor.

A chat actor (with its flusher) is started on demand the first time a conversation speaks, as a
small supervisor `chat:<platform>:<id>` under the dynamic `chats` supervisor. The router owns the
map from conversation to chat actor; nobody else touches it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from anycode_actors.actors.chat import ChatInbox
from anycode_actors.chat.base import ChatEvent, ChatRef
from supervisors import Actor

log = logging.getLogger(__name__)

# Starts the chat actor (and its flusher) for a conversation; returns the chat actor's inbox.
StartChat = Callable[[ChatRef], Awaitable[trio.MemorySendChannel[ChatInbox]]]


@dataclass(frozen=True)
class Deliver:
    """Something for a chat actor that does not come from the platform (recovery, shutdown)."""

    chat: ChatRef
    message: ChatInbox


RouterInbox = ChatEvent | Deliver


class Router(Actor[RouterInbox]):
    inbox_size = 256

    def __init__(self, start_chat: StartChat) -> None:
        super().__init__()
        self._start_chat = start_chat
        self._chats: dict[str, trio.MemorySendChannel[ChatInbox]] = {}

    async def handle(self, message: RouterInbox) -> None:
        if isinstance(message, Deliver):
            chat, payload = message.chat, message.message
        else:
            chat, payload = message.chat, message
        inbox = self._chats.get(chat.key)
        if inbox is None:
            inbox = await self._start_chat(chat)
            self._chats[chat.key] = inbox
        # A chat actor's inbox is bounded: a chat that cannot keep up slows the router down
        # (backpressure up to the platform client), it never grows a queue without end.
        await inbox.send(payload)
