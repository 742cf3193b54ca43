"""The chat actor: one per conversation, it serialises everything that happens there.

Two fast messages in one chat are handled in order; different chats never wait on each other.
It answers commands, starts session actors, routes follow-ups and button presses to the right
session, and speaks only through its flusher (the one caller of send/edit for the chat).

A conversation is a chat or one thread of it (a Slack thread, a Telegram forum topic): each has
its own chat actor, so a session started in a topic lives there, its output goes there and a
plain message there is its follow-up. `/status` lists the sessions of the whole chat; `/cancel`
and the other commands without an id take this thread's sessions. Where the client asks for it
(`ChatClient.task_threads`, Slack's `[slack] threads`), a /task posted outside a thread is
acknowledged here and its session handed to the thread under the acknowledgement
(`StartHere`). A thread that closes moves its sessions' records to the main chat
(`ThreadClosed` from the flusher), where plain messages and /cancel reach them from then on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol

import trio

from anycode_actors.actors.commands import BadTask, parse_task, short_id, stateless_answer
from anycode_actors.actors.directory import DirectoryInbox, Unregister, route
from anycode_actors.actors.flusher import FlusherMessage, Post, Posted, StreamStarted, ThreadClosed
from anycode_actors.actors.publisher import forges_for
from anycode_actors.actors.session_api import (
    Cancel,
    FollowUp,
    PermissionAnswer,
    PublishNow,
    Recovered,
    SessionClosed,
    SessionHandle,
    SessionMessage,
    ShowDiff,
)
from anycode_actors.actors.timers import Timer, call_at
from anycode_actors.chat.auth import AccessPolicy
from anycode_actors.chat.base import (
    Attachment,
    ButtonPress,
    ChatClient,
    ChatEvent,
    ChatRef,
    Command,
    Message,
)
from anycode_actors.config import Config
from anycode_actors.git import repo_ref_from_prompt
from anycode_actors.steps import step
from anycode_actors.store import (
    DAY,
    AmbiguousSessionPrefix,
    InteractionStatus,
    Quota,
    QuotaExceeded,
    QuotaKind,
    Session,
    SessionStatus,
    Store,
    StoreUnavailable,
)
from supervisors import Actor, Inbox, SupervisorError, current_child

log = logging.getLogger(__name__)

# Button data is "<interaction id>:<option index>"; see `permission_button_data`. Parsed
# strictly (ASCII only): the data comes back from the platform and anyone can forge it.
BUTTON_SEPARATOR: Final = ":"
_BUTTON_DATA: Final = re.compile(r"([A-Za-z0-9_-]{1,32}):([0-9]{1,3})", re.ASCII)
NOT_YOURS_TO_ANSWER: Final = (
    "This is not yours to answer: only the person who started the task or an admin can."
)
# How many message ids of session output the chat remembers for reply-to routing.
REPLY_MAP_SIZE: Final = 512


class StartSession(Protocol):
    """Starts a session's actor. `attachments` are the files sent with its /task (fetched into
    its sandbox for the first prompt); they are passed only when there are some."""

    def __call__(
        self,
        session: Session,
        recovered: Recovered | None,
        attachments: tuple[Attachment, ...] = (),
        /,
    ) -> Awaitable[SessionHandle]: ...


# Delivers a message to the chat actor of another conversation (another thread of this chat).
HandOver = Callable[[ChatRef, "ChatInbox"], Awaitable[None]]
# How long a /task waits for its acknowledgement's message id before it runs where it was typed.
ACK_WAIT: Final = 30.0


@dataclass(frozen=True)
class Notice:
    """Something the daemon itself has to say in this chat (recovery, shutdown)."""

    text: str


@dataclass(frozen=True)
class _IdleCheck:
    """Time to see whether this chat unit has been idle long enough to stop."""


@dataclass(frozen=True)
class Reattach:
    """A session a previous run left running: start its actor again, resuming its stream."""

    session: Session
    recovered: Recovered


@dataclass(frozen=True)
class StartHere:
    """A session recorded (and acknowledged) by the chat actor of the main chat, to run in this
    thread: its output, follow-ups and /cancel belong here."""

    session: Session
    attachments: tuple[Attachment, ...] = ()


ChatInbox = (
    ChatEvent
    | SessionClosed
    | StreamStarted
    | ThreadClosed
    | Notice
    | Reattach
    | StartHere
    | _IdleCheck
)


def permission_button_data(interaction_id: str, option_index: int) -> str:
    """Callback data for one permission option; short whatever the agent's option ids are."""
    return f"{interaction_id}{BUTTON_SEPARATOR}{option_index}"


def parse_button_data(data: str) -> tuple[str, int] | None:
    """(interaction id, option index), or None for anything we did not make ourselves."""
    match = _BUTTON_DATA.fullmatch(data)
    if match is None:
        return None
    return match.group(1), int(match.group(2))


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
        access: AccessPolicy | None = None,
        directory: trio.MemorySendChannel[DirectoryInbox] | None = None,
        hand_over: HandOver | None = None,
        idle_after: float | None = None,
        inbox_size: int | None = None,
        inbox: Inbox[ChatInbox] | None = None,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        """`on_stop` is called when the actor stopped itself (the chat was idle), as `stopped`
        is set: whoever runs the chat's unit ends it then."""
        super().__init__(inbox_size=inbox_size, inbox=inbox)
        self.chat = chat
        self._client = client
        self._flusher = flusher
        self._store = store
        self._config = config
        self._start_session = start_session
        self._access = access if access is not None else client.access
        self._directory = directory
        self._hand_over = hand_over
        # Live sessions started from this chat, oldest first: the last is "the most recent".
        self._sessions: OrderedDict[str, SessionHandle] = OrderedDict()
        self._message_session: OrderedDict[str, str] = OrderedDict()
        self._idle_after = idle_after
        self._last_active = 0.0
        self._idle_timer: Timer | None = None
        self.stopped = trio.Event()
        """Set when the actor stopped itself because the chat was idle."""
        self._on_stop = on_stop

    async def setup(self) -> None:
        self._last_active = trio.current_time()
        if self._idle_after is not None:
            # Kept by the run's timer task (actors/timers.py): a chat holds no task for it.
            self._idle_timer = call_at(self._last_active + self._idle_after, self._idle_due)

    async def finish(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._stopping:
            self.stopped.set()
            if self._on_stop is not None:
                self._on_stop()

    def _idle_due(self) -> None:
        """The chat may have been quiet for `idle_after`: if so, it checks (`_IdleCheck`), and
        again every `idle_after` while it stays quiet; else the timer moves to the new end of
        the quiet time."""
        idle_after = self._idle_after
        assert idle_after is not None
        now = trio.current_time()
        if now >= self._last_active + idle_after:
            # Skipped when the inbox is full: the chat is anything but idle then.
            with contextlib.suppress(
                trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError
            ):
                self._outbox.send_nowait(_IdleCheck())
            due = now + idle_after
        else:
            due = self._last_active + idle_after
        self._idle_timer = call_at(due, self._idle_due)

    def _stop_if_idle(self) -> None:
        """Stop when nothing happened for `idle_after` and no session of ours is live.

        No await between the checks and the stop: the run loop closes the inbox right after
        this returns, so a message cannot slip in between and be lost; a sender then finds the
        inbox closed and the router starts a fresh chat unit.
        """
        assert self._idle_after is not None
        quiet = trio.current_time() - self._last_active >= self._idle_after
        if quiet and not self._sessions and self._inbox.statistics().current_buffer_used == 0:
            log.debug("chat %s: idle, stopping", self.chat.key)
            self.stop()

    async def handle(self, message: ChatInbox) -> None:
        if not isinstance(message, _IdleCheck):
            self._last_active = trio.current_time()
        try:
            await self._dispatch(message)
        except (trio.Cancelled, SupervisorError):
            raise
        except StoreUnavailable as exc:
            log.error("chat %s: %s", self.chat.key, exc)
            if isinstance(message, (Command, Message, ButtonPress)):
                await self._refuse(message, f"Sorry, that cannot be done right now: {exc}.")
        except Exception:
            # Whatever a person sends must not take the conversation down with it: the inbox
            # survives a restart, but the message in hand would be lost without a word.
            log.exception("chat %s: could not handle %s", self.chat.key, type(message).__name__)
            if isinstance(message, (Command, Message, ButtonPress)):
                await self._refuse(message, "Sorry, that could not be handled. Please try again.")
        context = current_child()
        if context is not None:
            context.update(chat=self.chat.key, live_sessions=len(self._sessions))

    async def _dispatch(self, message: ChatInbox) -> None:
        if isinstance(message, Command):
            await self._command(message)
        elif isinstance(message, Message):
            await self._plain(message)
        elif isinstance(message, ButtonPress):
            await self._press(message)
        elif isinstance(message, SessionClosed):
            self._sessions.pop(message.session_id, None)
            if self._directory is not None:
                await self._directory.send(Unregister(message.session_id))
        elif isinstance(message, _IdleCheck):
            self._stop_if_idle()
        elif isinstance(message, Notice):
            await self._say(message.text)
        elif isinstance(message, Reattach):
            await self._reattach(message)
        elif isinstance(message, StartHere):
            await self._launch(message.session, message.attachments)
        elif isinstance(message, ThreadClosed):
            # The flusher now posts in the main chat: so do these sessions after a restart.
            for session_id in self._sessions:
                await self._store.set_thread(session_id, None)
        else:
            # The flusher began a new message of a session's output: replies to it go there,
            # and a restarted daemon continues the output in it.
            self._message_session[message.message_id] = message.stream
            await self._store.set_stream_message(
                message.stream, message.message_id, message.mark, message.offset
            )
            while len(self._message_session) > REPLY_MAP_SIZE:
                self._message_session.popitem(last=False)

    async def _say(self, text: str) -> None:
        await self._flusher.send(Post(text))

    async def _refuse(self, event: ChatEvent, text: str) -> None:
        """Tell only the person behind `event` (a press answer, an ephemeral or a reply)."""
        await self._client.refuse(event, text)

    # --- commands ------------------------------------------------------------------------------

    async def _command(self, command: Command) -> None:
        name = command.name.lower()
        if name in ("task", "start"):
            await self._task(command)
        elif name == "status":
            await self._status(command)
        elif name == "cancel":
            await self._cancel(command)
        elif name in ("diff", "pr"):
            await self._repository_command(command)
        else:
            await self._say(stateless_answer(name, self._config))

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
        limits = self._config.limits
        try:
            session = await self._store.create_session(
                platform=self.chat.platform,
                chat=self.chat.chat_id,
                thread=self.chat.thread,
                user=command.user.id,
                user_name=command.user.author_name,
                agent=request.agent,
                prompt=request.prompt,
                repo=self._repository(request.prompt) or request.repo,
                quota=Quota(
                    per_chat=self._config.session.max_concurrent,
                    per_user=limits.max_sessions_per_user,
                    total=limits.max_sessions_total,
                    per_day=limits.max_tasks_per_user_per_day,
                ),
            )
        except QuotaExceeded as over:
            await self._say(self._over_quota(over))
            return
        step("recorded", session.id)
        lines = [
            f"Starting {request.agent} session `{short_id(session.id)}`...",
            f"Prompt: {request.prompt}",
        ]
        if session.repo:
            lines.append(f"Repository: {session.repo}")
        if command.attachments:
            names = ", ".join(a.name for a in command.attachments)
            lines.append(f"Files: {names}")
        if self._hand_over is not None and self._client.task_threads and not self.chat.thread:
            thread = await self._acknowledge("\n".join(lines))
            if thread is not None:
                await self._store.set_thread(session.id, thread)
                session = dataclasses.replace(session, thread=thread)
                await self._hand_over(
                    ChatRef(self.chat.platform, self.chat.chat_id, thread),
                    StartHere(session, command.attachments),
                )
                return
            # The acknowledgement was refused, or is still held up (a long 429): the session
            # runs here, where the acknowledgement is or will be.
        else:
            await self._say("\n".join(lines))
        await self._launch(session, command.attachments)

    async def _acknowledge(self, text: str) -> str | None:
        """Post `text` and return its message id, the thread the session will run in; None
        when it could not be posted in time (the session then runs here)."""
        send, receive = trio.open_memory_channel[Posted](1)
        await self._flusher.send(Post(text, tag="ack", reply_to=send))
        with trio.move_on_after(ACK_WAIT):
            posted = await receive.receive()
            return posted.message_id
        return None

    async def _launch(self, session: Session, attachments: tuple[Attachment, ...] = ()) -> None:
        """Start the session's actor here, or settle its record when the daemon cannot."""
        try:
            if attachments:
                handle = await self._start_session(session, None, attachments)
            else:
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

    def _repository(self, prompt: str) -> str | None:
        """The clone URL of the repository `prompt` names on a configured forge."""
        repo = repo_ref_from_prompt(prompt, forges_for(self._config.git))
        return repo.clone_url if repo is not None else None

    def _over_quota(self, over: QuotaExceeded) -> str:
        """Which limit, and when a slot frees: sessions end at the latest at their timeout."""
        timeout = timedelta(minutes=float(self._config.session.timeout_minutes))
        oldest = over.oldest or datetime.now(UTC)
        frees = _clock(oldest + (DAY if over.kind == QuotaKind.PER_DAY else timeout))
        if over.kind == QuotaKind.PER_DAY:
            return (
                f"You have started {over.count} tasks in the last 24 hours, the daily limit "
                f"(limits.max_tasks_per_user_per_day = {over.limit}). "
                f"Your next task can start at {frees}."
            )
        slot = f"A slot frees when one ends, at the latest at {frees} (the session timeout)."
        if over.kind == QuotaKind.PER_USER:
            return (
                f"You have {over.count} active sessions, the limit per person "
                f"(limits.max_sessions_per_user = {over.limit}). {slot} "
                "/cancel ends one of yours now."
            )
        if over.kind == QuotaKind.TOTAL:
            return (
                f"The bot is at capacity: {over.count} active sessions "
                f"(limits.max_sessions_total = {over.limit}). {slot}"
            )
        return (
            f"Too many active sessions in this chat ({over.count}, "
            f"session.max_concurrent = {over.limit}). {slot} /cancel ends one now."
        )

    async def _reattach(self, reattach: Reattach) -> None:
        session = reattach.session
        handle = await self._start_session(session, reattach.recovered)
        self._sessions[session.id] = handle
        await self._say(
            f"The daemon restarted; session `{short_id(session.id)}` continues where it was."
        )

    async def _status(self, command: Command) -> None:
        sessions = await self._store.active_sessions(self.chat.platform, self.chat.chat_id)
        lines = ["Active sessions:"] if sessions else ["No active sessions."]
        for session in sessions:
            created = session.created_at.strftime("%Y-%m-%d %H:%M UTC")
            lines.append(
                f"- `{short_id(session.id)}` | {session.agent} | {session.status} | {created}"
            )
        limits = self._config.limits
        usage = await self._store.usage(self.chat.platform, command.user.id)
        lines.append(
            f"Your usage: {usage.active} of {limits.max_sessions_per_user} active sessions, "
            f"{usage.last_day} of {limits.max_tasks_per_user_per_day} tasks in the last 24 hours."
        )
        await self._say("\n".join(lines))

    async def _repository_command(self, command: Command) -> None:
        """/diff [id] and /pr [id]: for the given session, or the sender's newest here."""
        name = command.name.lower()
        session = await self._target(command, f"No active session for /{name}.")
        if session is None:
            return
        if not self._access.may_steer(command.user.id, session.user):
            await self._refuse(
                command,
                f"Session `{short_id(session.id)}` is not yours: only the person who started it "
                f"or an admin can ask for /{name}.",
            )
            return
        message = ShowDiff(command.user) if name == "diff" else PublishNow(command.user)
        if not await self._tell(session.id, message):
            await self._say(f"Session `{short_id(session.id)}` has already ended.")

    async def _target(self, command: Command, missing: str) -> Session | None:
        """The active session a command's argument names by id prefix, or else the sender's
        newest here (an admin with none of their own gets the newest one). None, after saying
        why (`missing`, or that the prefix is ambiguous), when there is none."""
        prefix = command.args.strip()
        session: Session | None
        if prefix:
            try:
                session = await self._store.find_session_by_prefix(
                    self.chat.platform, self.chat.chat_id, prefix, active_only=True
                )
            except AmbiguousSessionPrefix as ambiguous:
                ids = ", ".join(f"`{short_id(c)}`" for c in ambiguous.candidates)
                await self._say(f"`{prefix}` matches several sessions ({ids}); type more of it.")
                return None
        else:
            user = command.user.id
            mine = [h for h in self._sessions.values() if h.user_id == user]
            theirs = list(self._sessions.values()) if self._access.is_admin(user) else []
            candidates = mine or theirs
            newest = candidates[-1].session_id if candidates else None
            session = await self._store.get_session(newest) if newest else None
            if session is None:
                session = await self._elsewhere(user, any_thread=True)
        if session is None:
            await self._say(missing)
        return session

    async def _cancel(self, command: Command) -> None:
        user = command.user.id
        session = await self._target(command, "No active session to cancel.")
        if session is None:
            return
        if not self._access.may_steer(user, session.user):
            await self._refuse(
                command,
                f"Session `{short_id(session.id)}` is not yours: only the person who started it "
                "or an admin can cancel it.",
            )
            return
        reason = f"by {command.user.mention}"
        if await self._tell(session.id, Cancel(reason)):
            return
        # Active in the store but no actor runs it (a record a crash left pending): settle it.
        if not await self._store.transition(session.id, SessionStatus.CANCELLED, reason=reason):
            await self._say(f"Session `{short_id(session.id)}` has already ended.")
            return
        await self._say(f"Session `{short_id(session.id)}` cancelled.")

    async def _tell(self, session_id: str, message: SessionMessage) -> bool:
        """Deliver to a live session; False if it is not live (any more).

        Sessions started here are reached directly; others of the same conversation (another
        thread or topic) through the daemon-wide directory. A session closes its inbox when it
        ends, before its SessionClosed is read here: a message in between finds the inbox
        closed, and the session is forgotten at once.
        """
        handle = self._sessions.get(session_id)
        if handle is None:
            if self._directory is None:
                return False
            return await route(self._directory, session_id, message)
        try:
            await handle.inbox.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._sessions.pop(session_id, None)
            return False
        return True

    # --- plain messages and buttons ------------------------------------------------------------

    async def _elsewhere(self, user: str, *, any_thread: bool) -> Session | None:
        """From the main chat, the newest active session of `user` that another chat actor of
        this chat runs: one in a thread (`any_thread`), or one whose record says it is in the
        main chat because its thread was closed. None inside a thread."""
        if self.chat.thread is not None:
            return None
        # Newest first.
        sessions = await self._store.active_sessions(self.chat.platform, self.chat.chat_id)
        found = [
            s
            for s in sessions
            if s.user == user and s.id not in self._sessions and (any_thread or s.thread is None)
        ]
        return found[0] if found else None

    async def _plain(self, message: Message) -> None:
        if not message.text.strip() and not message.attachments:
            return
        follow_up = FollowUp(message.text, message.user, message.attachments)
        user = message.user.id
        while True:  # each round either delivers or forgets a session that has ended
            target = None
            if message.reply_to is not None:
                target = self._message_session.get(message.reply_to)
                if target not in self._sessions:
                    target = None
            if target is not None and self._sessions[target].user_id != user:
                await self._refuse(
                    message,
                    f"Session `{short_id(target)}` is not yours: only the person who started it "
                    "can send it messages. Start your own with /task <prompt>",
                )
                return
            if target is None:
                mine = [sid for sid, h in self._sessions.items() if h.user_id == user]
                target = mine[-1] if mine else None
            if target is None:
                moved = await self._elsewhere(user, any_thread=False)
                if moved is not None and await self._tell(moved.id, follow_up):
                    return
                if not message.text.strip():
                    return  # a file posted in passing, with no session to take it
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
        session = await self._store.get_session(interaction.session_id)
        if (
            session is None
            or session.platform != self.chat.platform
            or (session.chat != self.chat.chat_id)
        ):
            await self._client.answer_press(press, "This is not yours to answer.")
            return
        if not self._access.may_steer(press.user.id, session.user):
            await self._refuse(press, NOT_YOURS_TO_ANSWER)
            return
        if interaction.status != InteractionStatus.PENDING:
            await self._client.answer_press(press, "Already answered.")
            return
        if parsed[1] >= len(interaction.options):
            await self._client.answer_press(press, "This button is no longer valid.")
            return
        if not await self._tell(
            interaction.session_id, PermissionAnswer(interaction.id, parsed[1], press)
        ):
            await self._client.answer_press(press, "Already answered.")


def _clock(when: datetime) -> str:
    """A moment as the chat shows it: UTC, to the minute, with the date when it is not today."""
    when = when.astimezone(UTC)
    if when.date() == datetime.now(UTC).date():
        return when.strftime("%H:%M UTC")
    return when.strftime("%Y-%m-%d %H:%M UTC")
