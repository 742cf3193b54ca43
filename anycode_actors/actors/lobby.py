"""The lobby: what the daemon says outside any conversation's chat unit.

Two kinds of words need no chat unit, and starting one for them would cost a chat actor, a
flusher and their tasks for every chat that ever spoke:
- the answer to a stateless command (`/help`, `/agents`, a typo) in a chat that has no unit,
  sent by the router (`Answer`);
- what the router itself has to tell one person: slow down, the chat is busy, not delivered
  (`Tell`).

The lobby sends both through the same bot-wide budget the flushers draw from, so none of it can
push the bot over its limit, and it honours a 429 as they do: a bot-wide one pauses the budget's
lane, a chat's own one is waited out before the one retry. A chat's own pace (one message a
second) is the router's business: it sends a chat to the lobby at most once per `LOBBY_SPACING`
and hands anything sooner to the chat's unit, whose flusher paces it.

Calls run concurrently, at most `CONCURRENT` at a time, so one slow call delays no other chat; a
full inbox makes the router fall back to the chat unit (answers) or drop the notice with a log
line (notices are courtesy; the event they are about was already handled or refused).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import trio

from anycode_actors.actors.budget import URGENT, BudgetInbox, Pause, draw, group_lane
from anycode_actors.actors.commands import stateless_answer
from anycode_actors.chat.base import (
    ChatClient,
    ChatError,
    ChatEvent,
    ChatRef,
    Command,
    RateLimited,
)
from anycode_actors.config import Config
from supervisors import Actor, current_child

log = logging.getLogger(__name__)

CONCURRENT: Final = 8
"""Calls in flight at once; more wait in the inbox."""
ATTEMPTS: Final = 2
"""A call that is rate limited is made again once, after the wait the platform asked for."""
MAX_WAIT: Final = 60.0
"""A retry_after longer than this is not waited out: the words are dropped with a log line."""


@dataclass(frozen=True)
class Answer:
    """A stateless command from a chat that has no chat unit: answer it in that chat."""

    command: Command


@dataclass(frozen=True)
class Tell:
    """Tell only the person behind `event` something (privately where the platform can)."""

    event: ChatEvent
    text: str


LobbyInbox = Answer | Tell


class Lobby(Actor[LobbyInbox]):
    # Deep, because a burst of chats that each ask once is what the lobby is for: a waiting
    # answer holds only the event the client already made, where a chat unit started instead
    # costs a chat actor, a flusher and their tasks (about 60 KB). At the bot's 30 messages a
    # second this is some nine minutes of answers.
    inbox_size = 16384

    def __init__(
        self,
        config: Config,
        clients: Mapping[str, ChatClient],
        budgets: Mapping[str, trio.MemorySendChannel[BudgetInbox]],
    ) -> None:
        super().__init__()
        self._config = config
        self._clients = clients
        self._budgets = budgets
        self._slots = trio.Semaphore(CONCURRENT)
        self.answered = 0
        self.told = 0
        self.dropped = 0

    async def handle(self, message: LobbyInbox) -> None:
        await self._slots.acquire()
        self.tasks.start_soon(self._deliver, message)

    async def _deliver(self, message: LobbyInbox) -> None:
        event = message.command if isinstance(message, Answer) else message.event
        try:
            client = self._clients.get(event.chat.platform)
            if client is None:
                log.info("%s: no client for its platform; nothing said", event.chat.key)
                return
            for attempt in range(ATTEMPTS):
                await self._draw(client, event.chat)
                try:
                    if isinstance(message, Answer):
                        text = stateless_answer(message.command.name, self._config)
                        await client.send(event.chat, text)
                        self.answered += 1
                    else:
                        await client.refuse(message.event, message.text)
                        self.told += 1
                    return
                except RateLimited as limited:
                    if attempt + 1 == ATTEMPTS or limited.retry_after > MAX_WAIT:
                        raise
                    await self._wait_out(client, limited)
        except ChatError as error:
            self.dropped += 1
            log.warning("%s: the lobby could not say its piece: %s", event.chat.key, error)
        finally:
            self._slots.release()
            self._report()

    async def _draw(self, client: ChatClient, chat: ChatRef) -> None:
        budget = self._budgets.get(client.platform)
        if budget is None:
            return
        group = group_lane(client, chat)
        if group is not None:
            # The group's own limit, shared with the flushers of its topics (budget.py).
            await draw(budget, group[0], URGENT, group[1])
        lane = client.rate_lanes.get("send")
        if lane is not None:
            await draw(budget, lane.name, URGENT)

    async def _wait_out(self, client: ChatClient, limited: RateLimited) -> None:
        budget = self._budgets.get(client.platform)
        lane = client.rate_lanes.get("send")
        if limited.scope == "bot" and budget is not None and lane is not None:
            # Every sender in the lane must wait, not only this call: the budget pauses it,
            # and the next draw waits the pause out.
            with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                budget.send_nowait(Pause(lane.name, max(0.0, limited.retry_after)))
        else:
            await trio.sleep(max(0.0, limited.retry_after))

    def _report(self) -> None:
        context = current_child()
        if context is not None:
            context.update(answered=self.answered, told=self.told, dropped=self.dropped)


__all__ = ["Answer", "Lobby", "LobbyInbox", "Tell"]
