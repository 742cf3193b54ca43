"""The chat actor: one per conversation, it serialises everything that happens there.

Two fast messages in one chat are handled in order; different chats never wait on each other.
It answers commands, starts session actors, routes follow-ups and button presses to the right
session, and speaks only through its flusher (the one caller of send/edit for the chat).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

import trio

from anycode_actors.actors.commands import HELP_TEXT, BadTask, parse_task, short_id
from anycode_actors.actors.flusher import FlusherMessage, Post, StreamStarted
from anycode_actors.actors.session import Recovered
from anycode_actors.actors.session_api import (
    Cancel,
    FollowUp,
    PermissionAnswer,
    SessionClosed,
    SessionHandle,
    SessionMessage,
)
from anycode_actors.chat.base import ButtonPress, ChatClient, ChatEvent, ChatRef, Command, Message
from anycode_actors.config import Config
from anycode_actors.store import (
    AmbiguousSessionPrefix,
    InteractionStatus,
    Session,
    SessionStatus,
    Store,
)
from supervisors import Actor, SupervisorError, current_child

log = logging.getLogger(__name__)

# Button data is "<interaction id>:<option index>"; see `permission_button_data`.
BUTTON_SEPARATOR: Final = ":"
# How many message ids of session output the chat remembers for reply-to routing.
REPLY_MAP_SIZE: Final = 512

StartSession = Callable[[Session, "Recovered | None"], Awaitable[SessionHandle]]


@dataclass(frozen=True)
class Notice:
    """Something the daemon itself has to say in this chat (recovery, shutdown)."""

    text: str


@dataclass(frozen=True)
class Reattach:
    """A session a previous run left running: start its actor again, resuming its stream."""

    session: Session
    recovered: Recovered


ChatInbox = ChatEvent | SessionClosed | StreamStarted | Notice | Reattach


def permission_button_data(interaction_id: str, option_index: int) -> str:
    """Callback data for one permission option; short whatever the agent's option ids are."""
    return f"{interaction_id}{BUTTON_SEPARATOR}{option_index}"


def parse_button_data(data: str) -> tuple[str, int] | None:
    interaction_id, sep, index = data.rpartition(BUTTON_SEPARATOR)
    if not sep or not interaction_id or not index.isdigit():
        return None
    return interaction_id, int(index)


class ChatActor(Actor[ChatInbox]):
    """Everything one conversation asks of the daemon."""

    def __init__(
        self,
        chat: ChatRef,
        *,
        client: ChatClient,
        flusher: trio.MemorySendChannel[FlusherMessage],
        store: Store,
        config: Config,
        start_session: StartSession,
        allowed_users: Sequence[str] = (),
        inbox_size: int | None = None,
    ) -> None:
        super().__init__(inbox_size=inbox_size)
        self.chat = chat
        self._client = client
        self._flusher = flusher
        self._store = store
        self._config = config
        self._start_session = start_session
        self._allowed = frozenset(allowed_users)
        # Live sessions started from this chat, oldest first: the last is "the most recent".
        self._sessions: OrderedDict[str, SessionHandle] = OrderedDict()
        self._message_session: OrderedDict[str, str] = OrderedDict()

    async def handle(self, message: ChatInbox) -> None:
        if isinstance(message, Command):
            await self._command(message)
        elif isinstance(message, Message):
            await self._plain(message)
        elif isinstance(message, ButtonPress):
            await self._press(message)
        elif isinstance(message, SessionClosed):
            self._sessions.pop(message.session_id, None)
        elif isinstance(message, Notice):
            await self._say(message.text)
        elif isinstance(message, Reattach):
            await self._reattach(message)
        else:
            # The flusher began a new message of a session's output: replies to it go there,
            # and a restarted daemon continues the output in it.
            self._message_session[message.message_id] = message.stream
            await self._store.set_stream_message(
                message.stream, message.message_id, message.mark, message.offset
            )
            while len(self._message_session) > REPLY_MAP_SIZE:
                self._message_session.popitem(last=False)
        context = current_child()
        if context is not None:
            context.update(chat=self.chat.key, live_sessions=len(self._sessions))

    async def _say(self, text: str) -> None:
        await self._flusher.send(Post(text))

    # --- commands ------------------------------------------------------------------------------

    async def _command(self, command: Command) -> None:
        name = command.name.lower()
        if name in ("task", "start"):
            await self._task(command)
        elif name == "status":
            await self._status()
        elif name == "cancel":
            await self._cancel(command)
        elif name == "agents":
            await self._agents()
        elif name == "help":
            await self._say(HELP_TEXT)
        else:
            await self._say("Unknown command. Try /help.")

    async def _task(self, command: Command) -> None:
        agents = self._config.known_agents()
        try:
            request = parse_task(command.args, agents, self._config.agents.default_agent)
        except BadTask as bad:
            await self._say(str(bad))
            return
        protocol = self._config.sandbox.protocol
        if not self._config.agent(request.agent).supports(protocol):
            await self._say(
                f"{request.agent} cannot run with the {protocol} protocol here. "
                "Try /agents for the ones that can."
            )
            return
        active = await self._store.count_active(self.chat.platform, self.chat.chat_id)
        if active >= self._config.session.max_concurrent:
            await self._say(f"Too many active sessions ({active}). Cancel one first with /cancel.")
            return
        session = await self._store.create_session(
            platform=self.chat.platform,
            chat=self.chat.chat_id,
            thread=self.chat.thread,
            user=command.user.id,
            agent=request.agent,
            prompt=request.prompt,
            repo=request.repo,
        )
        lines = [
            f"Starting {request.agent} session `{short_id(session.id)}`...",
            f"Prompt: {request.prompt}",
        ]
        if request.repo:
            lines.append(f"Repository: {request.repo}")
        await self._say("\n".join(lines))
        try:
            handle = await self._start_session(session, None)
        except SupervisorError as exc:
            # The daemon is stopping (or its sessions supervisor gave up): the record must not
            # stay pending and count against the chat's limit.
            log.warning("session %s could not start: %s", short_id(session.id), exc)
            await self._store.transition(
                session.id, SessionStatus.FAILED, reason="the daemon could not start it"
            )
            await self._say(
                f"Session `{short_id(session.id)}` could not start: the daemon is stopping. "
                "Try again in a moment."
            )
            return
        self._sessions[session.id] = handle

    async def _reattach(self, reattach: Reattach) -> None:
        session = reattach.session
        handle = await self._start_session(session, reattach.recovered)
        self._sessions[session.id] = handle
        await self._say(
            f"The daemon restarted; session `{short_id(session.id)}` continues where it was."
        )

    async def _status(self) -> None:
        sessions = await self._store.active_sessions(self.chat.platform, self.chat.chat_id)
        if not sessions:
            await self._say("No active sessions.")
            return
        lines = ["Active sessions:"]
        for session in sessions:
            created = session.created_at.strftime("%Y-%m-%d %H:%M UTC")
            lines.append(
                f"- `{short_id(session.id)}` | {session.agent} | {session.status} | {created}"
            )
        await self._say("\n".join(lines))

    async def _cancel(self, command: Command) -> None:
        prefix = command.args.strip()
        target: str | None
        if prefix:
            try:
                found = await self._store.find_session_by_prefix(
                    self.chat.platform, self.chat.chat_id, prefix, active_only=True
                )
            except AmbiguousSessionPrefix as ambiguous:
                ids = ", ".join(f"`{short_id(c)}`" for c in ambiguous.candidates)
                await self._say(f"`{prefix}` matches several sessions ({ids}); type more of it.")
                return
            target = found.id if found else None
        else:
            target = next(reversed(self._sessions), None)
        if target is None:
            await self._say("No active session to cancel.")
            return
        reason = f"by {command.user.mention}"
        if await self._tell(target, Cancel(reason)):
            return
        # Active in the store but not running here (its actor already ended): settle the record.
        if not await self._store.transition(target, SessionStatus.CANCELLED, reason=reason):
            await self._say(f"Session `{short_id(target)}` has already ended.")
            return
        await self._say(f"Session `{short_id(target)}` cancelled.")

    async def _tell(self, session_id: str, message: SessionMessage) -> bool:
        """Deliver to a live session; False if it is not live here (any more).

        A session closes its inbox when it ends, before its SessionClosed is read here: a
        message in between finds the inbox closed, and the session is forgotten at once.
        """
        handle = self._sessions.get(session_id)
        if handle is None:
            return False
        try:
            await handle.inbox.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._sessions.pop(session_id, None)
            return False
        return True

    async def _agents(self) -> None:
        default = self._config.agents.default_agent
        protocol = self._config.sandbox.protocol
        lines = ["Available agents:"]
        for name in self._config.known_agents():
            if not self._config.agent(name).supports(protocol):
                continue
            lines.append(f"- {name}" + (" (default)" if name == default else ""))
        await self._say("\n".join(lines))

    # --- plain messages and buttons ------------------------------------------------------------

    async def _plain(self, message: Message) -> None:
        if not message.text.strip():
            return
        follow_up = FollowUp(message.text, message.user)
        while True:  # each round either delivers or forgets a session that has ended
            target = None
            if message.reply_to is not None:
                target = self._message_session.get(message.reply_to)
                if target not in self._sessions:
                    target = None
            if target is None:
                target = next(reversed(self._sessions), None)
            if target is None:
                await self._say("No active session. Start one with /task <prompt>")
                return
            if await self._tell(target, follow_up):
                return

    async def _press(self, press: ButtonPress) -> None:
        parsed = parse_button_data(press.data)
        interaction = await self._store.get_interaction(parsed[0]) if parsed else None
        if parsed is None or interaction is None:
            await self._client.answer_press(press, "This button is no longer valid.")
            return
        handle = self._sessions.get(interaction.session_id)
        session = await self._store.get_session(interaction.session_id)
        if (
            session is None
            or session.platform != self.chat.platform
            or (session.chat != self.chat.chat_id)
        ):
            await self._client.answer_press(press, "This is not yours to answer.")
            return
        if not self._may_answer(press, session):
            await self._client.answer_press(
                press, "This is not yours to answer: only the person who started the task can."
            )
            return
        if interaction.status != InteractionStatus.PENDING or handle is None:
            await self._client.answer_press(press, "Already answered.")
            return
        if parsed[1] >= len(interaction.options):
            await self._client.answer_press(press, "This button is no longer valid.")
            return
        if not await self._tell(
            interaction.session_id, PermissionAnswer(interaction.id, parsed[1], press)
        ):
            await self._client.answer_press(press, "Already answered.")

    def _may_answer(self, press: ButtonPress, session: Session) -> bool:
        # The person who started the task may always answer; with an allow-list, anyone on it.
        return press.user.id == session.user or press.user.id in self._allowed
