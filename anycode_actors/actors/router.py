"""The router: every chat platform client feeds it; it hands each event to that chat's actor.

A chat unit (chat actor + flusher) is started on demand the first time a conversation speaks,
as `chat:<platform>:<id>` under the dynamic `chats` supervisor. The router owns the map from
conversation to chat inbox; nobody else touches it.

The router never waits on one chat. An event goes into the chat's inbox at once if there is
room; a chat whose inbox is full is handled by policy:
- a button press, a plain message (a follow-up), `/cancel`, `/task` and what the daemon itself
  has to say are never dropped: they wait in that chat's backlog, in order, and a helper task
  feeds the backlog into the inbox as the chat actor makes room;
- a command identical to one already waiting (same person, same text) is coalesced into it;
- chatter (`/help`, `/status`, `/agents`, unknown commands) is shed, with one "busy" answer to
  the chat per backlog;
- a full backlog refuses what it cannot hold, telling the sender.
So a flooded chat costs the others nothing, presses included.

A stateless command (`/help`, `/agents`, a typo) from a chat that has no unit does not start
one: the lobby answers it (see actors/lobby.py), so memory follows the chats that hold a
conversation, not every chat that ever asked for help. A chat the lobby answered less than
`LOBBY_SPACING` ago gets a unit instead, whose flusher paces it. Whatever the router itself has
to tell someone also goes through the lobby, which draws from the bot-wide budget.

A chat unit that stopped (idle, crashed for good, or its supervisor restarted) has closed its
inbox: a send to it fails at once, the router forgets it and starts a fresh unit. A unit that
stops on its own also says so (`ChatStopped`), so the map holds only live chats.

It also paces people: each user's commands and messages draw from a token bucket
(`limits.command_burst` deep, refilled at `limits.commands_per_second`), across every chat.
Someone over the rate is told once to slow down, then dropped without a word until they stop,
so a flood costs the daemon one cheap check per message and nobody else waits for it. Button
presses are never paced: they answer the agent and are rare by nature.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import trio

from anycode_actors.actors.chat import ChatInbox
from anycode_actors.actors.commands import KNOWN, is_stateless
from anycode_actors.actors.lobby import Answer, LobbyInbox, Tell
from anycode_actors.chat.base import ButtonPress, ChatEvent, ChatRef, Command
from supervisors import Actor, SupervisorError, current_child

log = logging.getLogger(__name__)

# Starts the chat unit for a conversation, given when the lobby last spoke there (trio time, or
# None); returns the chat actor's inbox.
StartChat = Callable[[ChatRef, float | None], Awaitable[trio.MemorySendChannel[ChatInbox]]]

# Buckets of people who went quiet are forgotten once there are this many.
_BUCKETS_KEPT: Final = 4096
BACKLOG: Final = 100
"""Events a backed-up chat may have waiting beyond its inbox before the router refuses more."""
CHATTER: Final = frozenset({"help", "status", "agents"})
"""Commands that only ask something: shed, not queued, when their chat is backed up."""
SLOW_DOWN: Final = "Slow down: you are sending commands too fast. Wait a few seconds, then retry."
BUSY: Final = "This chat is busy catching up; /help and /status were skipped. Try again shortly."
FULL: Final = "This chat is too busy: your message was not delivered. Send it again in a minute."
RESTARTING: Final = "The bot is restarting; your message was not delivered. Try again shortly."
SWEEP_EVERY: Final = 60.0
LOBBY_SPACING: Final = 2.0
"""Seconds after a lobby answer before the same chat may have another one from the lobby."""
"""Seconds between looks for chat units that stopped without their `ChatStopped` reaching us."""


@dataclass(frozen=True)
class Deliver:
    """Something for a chat actor that does not come from the platform (recovery, shutdown)."""

    chat: ChatRef
    message: ChatInbox


@dataclass(frozen=True)
class ChatStopped:
    """A chat unit has stopped and closed `inbox`; the router forgets it (if still current)."""

    chat: ChatRef
    inbox: trio.MemorySendChannel[ChatInbox]


RouterInbox = ChatEvent | Deliver | ChatStopped


@dataclass(slots=True)
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
        self._forget_at = _BUCKETS_KEPT
        self.dropped = 0

    def admit(self, user_key: str) -> tuple[bool, bool]:
        """(admitted, warn)."""
        now = trio.current_time()
        bucket = self._buckets.get(user_key)
        if bucket is None:
            if len(self._buckets) >= self._forget_at:
                self._forget_full(now)
                # Not again before the map has doubled: while thousands of people are active
                # a scan frees little, and one per newcomer made each admit O(people).
                self._forget_at = max(_BUCKETS_KEPT, 2 * len(self._buckets))
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

    def forget_quiet(self) -> None:
        """Forget everyone whose bucket has refilled: they are back where a newcomer starts.
        Called now and then, so people who went quiet cost nothing, however many came by."""
        self._forget_full(trio.current_time())
        self._forget_at = _BUCKETS_KEPT
        # A dict keeps its table at its largest size; a copy is sized for what is left.
        self._buckets = dict(self._buckets)

    def _forget_full(self, now: float) -> None:
        full = [
            key
            for key, b in self._buckets.items()
            if b.tokens + (now - b.at) * self._rate >= self._burst
        ]
        for key in full:
            del self._buckets[key]


@dataclass
class _Line:
    """The router's side of one chat: its inbox, and what waits for room in it."""

    inbox: trio.MemorySendChannel[ChatInbox]
    backlog: deque[ChatInbox] = field(default_factory=deque)
    feeding: bool = False
    told_busy: bool = False


class Router(Actor[RouterInbox]):
    inbox_size = 256

    def __init__(
        self,
        start_chat: StartChat,
        *,
        rate: CommandRate | None = None,
        lobby: trio.MemorySendChannel[LobbyInbox] | None = None,
        backlog: int = BACKLOG,
    ) -> None:
        super().__init__()
        self._start_chat = start_chat
        self._rate = rate
        self._lobby = lobby
        # When the lobby last answered each chat; forgotten after LOBBY_SPACING.
        self._lobby_answered: dict[str, float] = {}
        self._backlog_size = backlog
        self._lines: dict[str, _Line] = {}
        self.shed = 0
        self.coalesced = 0
        self.refused = 0
        self.untold = 0

    async def setup(self) -> None:
        self.tasks.start_soon(self._sweep)

    async def _sweep(self) -> None:
        """Forget chats whose unit has stopped (its inbox has no reader left) though no
        `ChatStopped` came: a stopping unit does not wait for room in this inbox, so thousands
        of chats going idle at once overflow it and most of their `ChatStopped` are lost."""
        while True:
            await trio.sleep(SWEEP_EVERY)
            stopped = [
                key
                for key, line in self._lines.items()
                if not line.backlog and line.inbox.statistics().open_receive_channels == 0
            ]
            for key in stopped:
                del self._lines[key]
            self._forget_lobby_answers()
            if self._rate is not None:
                self._rate.forget_quiet()
            if stopped:
                self._report()

    def _forget_lobby_answers(self) -> None:
        horizon = trio.current_time() - LOBBY_SPACING
        self._lobby_answered = {k: at for k, at in self._lobby_answered.items() if at > horizon}

    async def handle(self, message: RouterInbox) -> None:
        if isinstance(message, ChatStopped):
            line = self._lines.get(message.chat.key)
            if line is not None and line.inbox is message.inbox and not line.backlog:
                del self._lines[message.chat.key]
        elif isinstance(message, Deliver):
            await self._hand_over(message.chat, message.message, None)
        elif self._admitted(message) and not self._answered_in_lobby(message):
            await self._hand_over(message.chat, message, message)
        self._report()

    def _admitted(self, event: ChatEvent) -> bool:
        if self._rate is None or isinstance(event, ButtonPress):
            return True
        admitted, warn = self._rate.admit(f"{event.chat.platform}:{event.user.id}")
        if not admitted and warn:
            log.info("%s:%s is over the command rate", event.chat.platform, event.user.id)
            self._tell(event, SLOW_DOWN)
        return admitted

    def _answered_in_lobby(self, event: ChatEvent) -> bool:
        """Hand a stateless command from a chat without a unit to the lobby, if it has room
        and has not answered that chat in the last `LOBBY_SPACING` seconds."""
        if (
            self._lobby is None
            or not isinstance(event, Command)
            or not is_stateless(event.name)
            or event.chat.key in self._lines
        ):
            return False
        now = trio.current_time()
        if now - self._lobby_answered.get(event.chat.key, -LOBBY_SPACING) < LOBBY_SPACING:
            return False
        try:
            self._lobby.send_nowait(Answer(event))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        if len(self._lobby_answered) >= _BUCKETS_KEPT:
            self._forget_lobby_answers()
        self._lobby_answered[event.chat.key] = now
        return True

    async def _hand_over(self, chat: ChatRef, payload: ChatInbox, event: ChatEvent | None) -> None:
        line = await self._line(chat, event)
        if line is None:
            return
        if not line.backlog:
            try:
                line.inbox.send_nowait(payload)
                return
            except trio.WouldBlock:
                pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # The unit stopped since we last sent: forget it and start a fresh one.
                self._lines.pop(chat.key, None)
                line = await self._line(chat, event)
                if line is None:
                    return
                line.inbox.send_nowait(payload)  # a fresh inbox has room
                return
        self._queue(line, chat, payload, event)

    async def _line(self, chat: ChatRef, event: ChatEvent | None) -> _Line | None:
        line = self._lines.get(chat.key)
        if line is not None:
            return line
        try:
            inbox = await self._start_chat(chat, self._lobby_answered.get(chat.key))
        except SupervisorError as exc:
            # The chats supervisor is restarting or gave up: the next event tries again.
            log.warning("%s: could not start its chat unit: %s", chat.key, exc)
            if event is not None:
                self._tell(event, RESTARTING)
            return None
        line = self._lines[chat.key] = _Line(inbox)
        return line

    def _queue(
        self, line: _Line, chat: ChatRef, payload: ChatInbox, event: ChatEvent | None
    ) -> None:
        if isinstance(event, Command):
            if any(_same_command(event, waiting) for waiting in line.backlog):
                self.coalesced += 1
                return
            if event.name.lower() in CHATTER or event.name.lower() not in KNOWN:
                self.shed += 1
                if not line.told_busy:
                    line.told_busy = True
                    self._tell(event, BUSY)
                return
        if len(line.backlog) >= self._backlog_size:
            self.refused += 1
            if event is not None:
                self._tell(event, FULL)
            else:
                log.warning("%s: backlog full, dropped %s", chat.key, type(payload).__name__)
            return
        line.backlog.append(payload)
        if not line.feeding:
            line.feeding = True
            self.tasks.start_soon(self._feed, chat, line)

    async def _feed(self, chat: ChatRef, line: _Line) -> None:
        """Move a backed-up chat's backlog into its inbox, in order, as room appears."""
        try:
            while line.backlog:
                try:
                    await line.inbox.send(line.backlog[0])
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    # The unit stopped with work waiting: a fresh one takes the backlog over.
                    try:
                        line.inbox = await self._start_chat(chat, None)
                    except SupervisorError as exc:
                        lost = len(line.backlog)
                        log.warning("%s: %d waiting events lost: %s", chat.key, lost, exc)
                        line.backlog.clear()
                        return
                    if self._lines.get(chat.key) is not line:
                        self._lines[chat.key] = line
                    continue
                line.backlog.popleft()
        finally:
            line.feeding = False
            line.told_busy = False
            self._report()

    def _tell(self, event: ChatEvent, text: str) -> None:
        """Have the lobby tell the sender: the router never waits on a platform."""
        try:
            if self._lobby is None:
                raise trio.BrokenResourceError
            self._lobby.send_nowait(Tell(event, text))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.untold += 1
            log.info("%s: could not tell %s: %s", event.chat.key, event.user.id, text)

    def _report(self) -> None:
        context = current_child()
        if context is None:
            return
        context.update(
            chats=len(self._lines),
            backlog=sum(len(line.backlog) for line in self._lines.values()),
            shed=self.shed,
            coalesced=self.coalesced,
            refused=self.refused,
            throttled=self._rate.dropped if self._rate is not None else 0,
            untold=self.untold,
        )


def _same_command(event: Command, waiting: ChatInbox) -> bool:
    return (
        isinstance(waiting, Command)
        and waiting.user == event.user
        and waiting.name.lower() == event.name.lower()
        and waiting.args == event.args
    )


__all__ = [
    "BUSY",
    "FULL",
    "LOBBY_SPACING",
    "SLOW_DOWN",
    "ChatStopped",
    "CommandRate",
    "Deliver",
    "Router",
    "RouterInbox",
]
