"""The session actor: one per task, it owns exactly one sandbox from creation to removal.

pending → starting → running → completed | failed | cancelled. It creates the sandbox, starts the
stream actor (the agent connection) under a supervisor of its own, sends the prompt, turns agent
events into chat output (through the chat's flusher) and permission prompts (buttons), handles
follow-ups and cancel in every state, and whatever way it ends it removes the sandbox inside a
shielded, bounded scope and writes its final status with a compare-and-set. Every agent event is
written to the event log with its sequence number before anything is shown.

Files people send with the /task or a follow-up (photos, documents, voice notes) are fetched
through the chat client (`download`, at most `session.max_download_mb` each) and written into the
sandbox under `INBOX` before the prompt goes out; the prompt names them and carries them as
`PromptFile`s (image blocks or resource links, see AcpSession.prompt). A file that is too big or
cannot be fetched or written is left out with a word to the chat; the text still goes to the
agent. The fetching is done by a task of the session, not by its handler, so a /cancel during a
large download is handled at once (and cancels the download); the turn counts as running from
the start of the fetch, so follow-ups sent meanwhile queue behind that prompt, in order.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

import trio

from anycode_actors.actors.checkpoint import (
    CheckpointInfo,
    CheckpointStore,
    Continuity,
    RetiredSink,
    restore_impossible,
)
from anycode_actors.actors.commands import short_id
from anycode_actors.actors.flusher import (
    Adopt,
    Append,
    AppendPieces,
    Drain,
    Edit,
    EndStream,
    Flush,
    FlusherMessage,
    Post,
    Posted,
    Upload,
)
from anycode_actors.actors.pool import PoolInbox, claim
from anycode_actors.actors.publisher import Card, Publisher
from anycode_actors.actors.redaction import OutputRedactor
from anycode_actors.actors.session_api import (
    Cancel,
    FollowUp,
    PermissionAnswer,
    PublishNow,
    Recovered,
    SessionClosed,
    SessionMessage,
    ShowDiff,
)
from anycode_actors.actors.stream import (
    AgentEventsArrived,
    CancelTurn,
    Prompt,
    Respond,
    StreamActor,
    StreamCommand,
    StreamEnded,
    StreamReady,
    StreamReport,
)
from anycode_actors.actors.timers import Timer, call_at, deliver
from anycode_actors.actors.workspace_diff import WorkspaceDiff
from anycode_actors.agents import (
    AgentEvent,
    AnswersByPolicy,
    ErrorEvent,
    PermissionRequested,
    PermissionResolved,
    Raw,
    Resume,
    SessionEnded,
    TextDelta,
    ToolCall,
    TurnEnded,
)
from anycode_actors.agents.events import PromptFile, StoredEvent
from anycode_actors.chat.base import (
    Attachment,
    Button,
    ButtonPress,
    ChatError,
    ChatRef,
    FileTooLarge,
)
from anycode_actors.chat.text import clean_display_text
from anycode_actors.config import Config, SessionConfig
from anycode_actors.errors import AnycodeError
from anycode_actors.sandboxes.base import (
    OutboxListing,
    SandboxHandle,
    SandboxProvider,
    SandboxSpec,
    SandboxUnavailable,
    describe_loss,
    failure_reason,
)
from anycode_actors.steps import step
from anycode_actors.store import (
    InteractionOption,
    Session,
    SessionStatus,
    Store,
    StoreUnavailable,
)
from supervisors import Actor, Intensity, Supervisor, UnknownChild, current_child

log = logging.getLogger(__name__)

# Removing a sandbox must finish even when the daemon is being stopped, but never hang it.
DESTROY_GRACE: Final = 60.0
# Time for the last output and the final notice to reach the chat before the actor ends.
DRAIN_GRACE: Final = 10.0
# Time for the patch of a session without a repository to be read out as it ends.
FINAL_DIFF_GRACE: Final = 30.0
REPORT_EVERY: Final = 0.25
"""Seconds between reports to the actor tree while only output streams."""
EVENT_BATCH: Final = 512
"""Reports of agent events are merged up to this many events (see `_with_queued_events`)."""
UPLOADS_IN_FLIGHT: Final = 64
"""Room for upload confirmations; a task of the session records them as they come."""
# Where agents leave files for the user (documented in the README and the agent's prompt).
OUTBOX: Final = "/workspace/outbox"
# Where files people send are written for the agent (documented in the README).
INBOX: Final = "/workspace/inbox"
SESSION_INBOX: Final = 64
# Tags of uploads in flight, answered by the flusher's `Posted`: "upload:<n>".
UPLOAD_TAG: Final = "upload:"
# Lines of a sandbox that died unexpectedly logged before it is removed, and the time to get them.
DEAD_SANDBOX_LOG_LINES: Final = 40
DEAD_SANDBOX_LOG_TIMEOUT: Final = 10.0

# What /diff answers in a session without a publisher whose provider cannot run commands.
_NO_EXEC_DIFF: Final = (
    "the workspace is compared with git inside the sandbox, and these sandboxes cannot run commands"
)

OPTION_LABELS: Final = {
    "allow_once": "Allow",
    "allow_always": "Allow for this session",
    "reject_once": "Deny",
    "reject_always": "Always deny",
}
DECISION_MARKS: Final = {"allow_once": "✅", "allow_always": "✅", "reject_once": "🚫"}

AnswerPress = Callable[[ButtonPress, str], Awaitable[None]]
# Fetches a file a person sent, at most the given number of bytes (ChatClient.download).
Download = Callable[[Attachment, int], Awaitable[bytes]]


@dataclass(frozen=True)
class _Started:
    handle: SandboxHandle


@dataclass(frozen=True)
class _StartFailed:
    message: str


@dataclass(frozen=True)
class _IdleExpired:
    generation: int


@dataclass(frozen=True)
class _Resume:
    """First in a recovered session's inbox: pick up the output and the agent where they were,
    before any message that came after the restart."""


@dataclass(frozen=True)
class _Fetched:
    """A prompt's files are in the sandbox (or said to be missing): the prompt may go."""

    text: str
    files: tuple[PromptFile, ...]


@dataclass(frozen=True)
class _Restored:
    """A new sandbox holds the last checkpoint: reopen the agent's session in it."""

    handle: SandboxHandle


@dataclass(frozen=True)
class _RestoreFailed:
    message: str


@dataclass
class _Restoring:
    """A restore under way: since when, from which checkpoint, and the turn it cut off."""

    started: float
    info: CheckpointInfo
    why: str
    cut_off: int | None
    reopening: bool = False
    """The new sandbox is ready and its stream is opening the agent's session."""


#: The event-log kind of a restore (a `Raw` event the session writes itself).
RESTORED_KIND: Final = "anycode/restored"

SessionInbox = (
    SessionMessage
    | StreamReport
    | Posted
    | _Started
    | _StartFailed
    | _IdleExpired
    | _Resume
    | _Fetched
    | _Restored
    | _RestoreFailed
)


@dataclass
class _Prompt:
    """A permission prompt on screen: which message shows it and what it offered."""

    interaction_id: str
    key: str
    text: str
    options: tuple[InteractionOption, ...]
    message_id: str | None = None


class SessionActor(Actor[SessionInbox]):
    """Runs one task in one sandbox. See the module docstring for its life."""

    inbox_size = SESSION_INBOX

    def __init__(
        self,
        session: Session,
        *,
        chat: ChatRef,
        flusher: trio.MemorySendChannel[FlusherMessage],
        closed: trio.MemorySendChannel[SessionClosed],
        store: Store,
        provider: SandboxProvider,
        config: Config,
        answer_press: AnswerPress,
        recovered: Recovered | None = None,
        publisher: Publisher | None = None,
        download: Download | None = None,
        attachments: tuple[Attachment, ...] = (),
        pool: trio.MemorySendChannel[PoolInbox] | None = None,
    ) -> None:
        """`attachments`: the files sent with the /task, for the first prompt; `download`
        fetches them and those of follow-ups (without it, files are declined)."""
        super().__init__()
        self.session = session
        self._id = session.id
        self._chat = chat
        self._flusher = flusher
        self._closed = closed
        self._store = store
        self._provider = provider
        self._config = config
        self._answer_press = answer_press
        self._publisher = publisher
        # Without a publisher, /diff and the end of the session compare the workspace with
        # what it was at the start (actors/workspace_diff.py), with git in the sandbox: not
        # tried at all where the provider cannot run a command (`can_exec`), which would fail
        # the same way in every session.
        self._workspace = (
            None
            if publisher is not None or not provider.can_exec
            else WorkspaceDiff(
                session.id,
                max_patch_bytes=config.git.max_patch_bytes,
                within=float(config.git.timeout_secs),
            )
        )
        self._download = download
        self._attachments = attachments
        self._inbox_names: set[str] = set()
        self._recovered = recovered
        self._handle: SandboxHandle | None = recovered.handle if recovered else None
        # The warm pool (actors/pool.py), and where the agent session of a sandbox taken from
        # it is attached.
        self._pool = pool
        self._warm: Resume | None = None
        self._diff_base = False  # the pool recorded the /diff starting point already
        # Set once the /diff starting point is recorded; the first prompt waits for it.
        self._diff_begun: trio.Event | None = None
        self._stream: StreamActor | None = None
        self._stream_ready = False
        self._turn_running = False
        self._queued: deque[FollowUp] = deque()
        self._prompts: dict[str, _Prompt] = {}  # by interaction id
        self._by_key: dict[str, str] = {}  # permission key → interaction id
        self._idle_generation = 0
        self._idle_timer: Timer | None = None
        self._outcome: tuple[SessionStatus, str] | None = None
        self._start_scope = trio.CancelScope()
        self._events = 0
        self._uploaded: set[tuple[str, int]] = set()
        self._upload_keys: list[tuple[str, int]] = []  # by upload tag number
        # The flusher confirms each upload here (not in the inbox, which closes when the
        # session ends): the session waits for its last files before removing the sandbox.
        # Made, with the task that records them, at the first upload: most sessions send none.
        self._confirms: trio.MemorySendChannel[Posted] | None = None
        self._confirmed: trio.MemoryReceiveChannel[Posted] | None = None
        self._unconfirmed: set[int] = set()
        self._redactor: OutputRedactor | None = None
        self._unanswered: FollowUp | None = None
        self._fetching: trio.CancelScope | None = None  # a prompt's files being fetched
        # A message taken from the inbox behind a batch of agent events, handled next.
        self._deferred: list[SessionInbox] = []
        self._reported_at = -math.inf
        self._report_now = False  # an event that changes more than the count was handled
        # Checkpoints, and carrying the session into a new sandbox (actors/checkpoint.py).
        self._continuity = _continuity_for(config, session.id, provider)
        self._restoring: _Restoring | None = None
        self._restore_scope = trio.CancelScope()
        self._sink: RetiredSink[SessionInbox] | None = None
        self._agent_session_id = recovered.resume.agent_session_id if recovered else None
        self._agent_cannot_load = ""  # the agent's name once it said it cannot load a session
        # The stream actor's supervisor, run inside `run` for as long as the session lives.
        self._streams = Supervisor(name="streams", intensity=Intensity(max_restarts=0, period=1.0))

    # --- life -----------------------------------------------------------------------------------

    async def setup(self) -> None:
        # Ready at once: the sessions supervisor serves one start at a time, and creating a
        # sandbox (or reattaching to one) takes seconds. Both happen after the start.
        self._report()
        await self.tasks.start(self._streams.run)
        if self._publisher is not None:
            self.tasks.start_soon(self._prepare_publisher, self._publisher)
        if self._recovered is not None:
            self._outbox.send_nowait(_Resume())  # the inbox of a new actor has room
        else:
            self.tasks.start_soon(self._create_sandbox)

    async def _prepare_publisher(self, publisher: Publisher) -> None:
        await publisher.prepare()
        if publisher.problem is not None:
            await self._flusher.send(
                Post(
                    f"Repository {publisher.repo}: {publisher.problem}. The session runs without "
                    "pull requests."
                )
            )
        elif publisher.notice is not None and self._recovered is None:
            # A reattached session's chat was told at the start; a problem found now is new.
            await self._flusher.send(Post(publisher.notice))

    async def finish(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        # Closed before cleanup (which can take a while): whoever writes to this session now
        # learns at once that it has ended, instead of talking to an inbox nobody reads.
        # What is already in it was sent to a live session: it gets an answer, not silence.
        late = self._take_the_rest()
        self._inbox.close()
        await self._clean_up(late)

    async def handle(self, message: SessionInbox) -> None:
        try:
            await self._dispatch(message)
        except StoreUnavailable as exc:
            # The database cannot be written (locked past the busy timeout, the disk full):
            # what happens next could not be recorded, so the session ends, says why, and
            # removes its sandbox.
            log.error("session %s: %s", short_id(self._id), exc)
            self._finish(SessionStatus.FAILED, f"the database failed: {exc}")
        # Streamed output moves only the event count: the tree hears of it a few times a
        # second, not once per event (each report copies the actor's info).
        if (
            not isinstance(message, AgentEventsArrived)
            or self._report_now
            or self._outcome is not None
            or trio.current_time() - self._reported_at >= REPORT_EVERY
        ):
            self._report()

    async def _dispatch(self, message: SessionInbox) -> None:
        if isinstance(message, _Resume):
            assert self._recovered is not None
            self._continuity.load()
            await self._resume_output()
            if self._recovered.handle is None:
                self._turn_running = self._recovered.resume.turn_running
                await self._lose_sandbox("its sandbox was gone after the daemon restarted")
            else:
                await self._start_stream(
                    self._streams, self._recovered.handle, self._recovered.resume
                )
        elif isinstance(message, _Restored):
            await self._on_restored(message.handle)
        elif isinstance(message, _RestoreFailed):
            self._finish(SessionStatus.FAILED, message.message)
        elif isinstance(message, _Started):
            await self._on_started(message.handle, self._streams)
        elif isinstance(message, _StartFailed):
            self._finish(SessionStatus.FAILED, message.message)
        elif isinstance(message, StreamReady):
            await self._on_stream_ready(message)
        elif isinstance(message, AgentEventsArrived):
            for run in _runs(self._with_queued_events(message)):
                if self._stopping:
                    break  # what follows would have stayed in the inbox, unhandled
                if any(_took_it_up(event) for event in run):
                    self._unanswered = None
                await self._on_events(run)
            if self._deferred:
                await self._dispatch(self._deferred.pop())
        elif isinstance(message, StreamEnded):
            if self._outcome is None and self._restoring is None:
                await self._on_stream_lost(message.error)
            elif self._outcome is None and self._restoring and self._restoring.reopening:
                # The new sandbox's agent did not take the session back.
                why = message.error or "its event stream ended"
                self._finish(
                    SessionStatus.FAILED,
                    f"{self._restoring.why}; the new sandbox could not reopen it: {why}",
                )
        elif isinstance(message, FollowUp):
            await self._on_follow_up(message)
        elif isinstance(message, _Fetched):
            await self._on_fetched(message)
        elif isinstance(message, PublishNow):
            await self._publish(asked=True)
        elif isinstance(message, ShowDiff):
            await self._show_diff()
        elif isinstance(message, Cancel):
            await self._on_cancel(message)
        elif isinstance(message, PermissionAnswer):
            await self._on_permission_answer(message)
        elif isinstance(message, Posted):
            prompt = self._prompts.get(message.tag)
            if prompt is not None and message.message_id is not None:
                prompt.message_id = message.message_id
                await self._store.set_interaction_message(prompt.interaction_id, message.message_id)
        elif (
            isinstance(message, _IdleExpired)
            and message.generation == self._idle_generation
            and not self._turn_running
        ):
            self._finish(SessionStatus.COMPLETED, "")

    def _finish(self, status: SessionStatus, reason: str) -> None:
        if self._outcome is None:
            self._outcome = (status, reason)
        self.stop()

    def _report(self) -> None:
        self._reported_at = trio.current_time()
        self._report_now = False
        context = current_child()
        if context is None:
            return
        context.update(
            session=self._id,
            chat=self._chat.key,
            agent=self.session.agent,
            status=self._status_text(),
            sandbox=_short_sandbox(self._handle.id) if self._handle else None,
            events=self._events,
            restores=self._continuity.restores,
        )

    def _status_text(self) -> str:
        if self._outcome is not None:
            return str(self._outcome[0])
        if self._restoring is not None:
            return "restoring"
        if self._stream_ready:
            return "running"
        return "starting"

    # --- starting -------------------------------------------------------------------------------

    async def _resume_output(self) -> None:
        """Carry on where the previous run left the chat.

        The message the output was streaming into is rebuilt from the event log and adopted:
        the flusher edits it to that text, which is a no-op when the chat already shows it, so
        a crash at any moment neither loses text nor shows it twice. Output after that message
        (or all of it, if no message was started) goes out as usual.
        """
        session = self.session
        after = session.stream_mark - 1 if session.stream_mark else 0
        events = await self._store.events(self._id, after_seq=after)
        rest = events
        if session.stream_message_id is not None and session.stream_mark is not None and events:
            pieces: list[tuple[int, str]] = []
            ended = False
            for index, stored in enumerate(events):
                piece = chat_text(stored.event) or ""
                if stored.seq == session.stream_mark:
                    piece = piece[session.stream_offset :]
                pieces.append((stored.seq, piece))
                rest = events[index + 1 :]
                if isinstance(stored.event, TurnEnded):
                    ended = True
                    break
            message = Adopt(
                self._id, session.stream_message_id, tuple(pieces), session.stream_offset
            )
            await self._flusher.send(message)
            if ended:
                await self._flusher.send(EndStream(self._id))
        for stored in rest:
            text = chat_text(stored.event)
            if text:
                await self._flusher.send(Append(self._id, text, mark=stored.seq))
            elif isinstance(stored.event, TurnEnded):
                await self._flusher.send(EndStream(self._id))
        for interaction in await self._store.unresolved_interactions(self._id):
            request = next(
                (
                    p
                    for p in self._recovered.resume.permissions  # type: ignore[union-attr]
                    if str(p.request_id) == interaction.request_id
                ),
                None,
            )
            if request is None:
                continue
            prompt = _Prompt(
                interaction.id,
                request.key,
                _permission_text(request),
                interaction.options,
                interaction.chat_message_id,
            )
            self._prompts[interaction.id] = prompt
            self._by_key[request.key] = interaction.id
        # A request stored just before the crash, before its prompt was made: make it now.
        for request in self._recovered.resume.permissions:  # type: ignore[union-attr]
            if request.key not in self._by_key:
                await self._on_permission(request)

    async def _create_sandbox(self) -> None:
        try:
            started = await self._store.transition(
                self._id, SessionStatus.STARTING, SessionStatus.PENDING
            )
        except StoreUnavailable as exc:
            await self._outbox.send(_StartFailed(f"the database failed: {exc}"))
            return
        if not started:
            await self._outbox.send(_StartFailed("the session was no longer pending"))
            return
        spec = SandboxSpec(
            session_id=self._id,
            agent=self.session.agent,
            protocol=self._config.sandbox.protocol,
            env=self._config.sandbox_env(self.session.agent),
            repo=self.session.repo,
            # With a publisher the daemon clones the repository and copies it in (`_seed`).
            seeded=self._publisher is not None,
        )
        with self._start_scope:
            if self._pool is not None:
                # A task with a repository needs a sandbox made for it: the pool only makes
                # room for it within the limits.
                claimed = await claim(self._pool, self.session.agent, take=not self.session.repo)
                if claimed is not None:
                    step("sandbox", self._id)
                    self._handle = claimed.handle  # owned from here, as below
                    self._warm = claimed.resume
                    self._diff_base = claimed.diff_base
                    await self._outbox.send(_Started(claimed.handle))
                    return
            try:
                handle = await self._provider.create(spec)
            except SandboxUnavailable as exc:
                await self._outbox.send(
                    _StartFailed(
                        f"could not start, sandboxes cannot be created right now ({exc}). "
                        "Nothing ran; send the task again in a few minutes."
                    )
                )
                return
            except AnycodeError as exc:
                await self._outbox.send(_StartFailed(f"could not start: {exc}"))
                return
            # Owned from this moment, before the next checkpoint: a cancel that comes now ends
            # the actor without reading `_Started`, and the cleanup must still remove it.
            self._handle = handle
            step("sandbox", self._id)
            if self._publisher is not None:
                await self._seed(self._publisher, handle)
            await self._outbox.send(_Started(handle))

    async def _seed(self, publisher: Publisher, handle: SandboxHandle) -> None:
        """Copy the repository into the sandbox before the agent starts in it. A copy that
        fails is said; the agent starts all the same, in an empty folder."""
        try:
            await publisher.seed(self._provider, handle)
        except (AnycodeError, trio.TooSlowError) as exc:
            log.warning("session %s: repository not copied: %s", short_id(self._id), exc)
            what = str(exc) or f"{publisher.repo} could not be copied into the sandbox"
            await self._flusher.send(
                Post(f"{what}. The session runs without it, and without pull requests.")
            )

    async def _on_started(self, handle: SandboxHandle, streams: Supervisor) -> None:
        self._handle = handle
        await self._store.set_sandbox(self._id, handle.id, handle.endpoint or "")
        if self._outcome is not None:
            return  # cancelled while the sandbox was being made; cleanup removes it
        if self._workspace is not None and not self._diff_base:
            # Recorded while the agent starts, and before its first prompt, which waits for it
            # (`_on_stream_ready`): the starting point must not hold the agent's first changes.
            self._diff_begun = trio.Event()
            self.tasks.start_soon(self._begin_diff, self._workspace, handle, self._diff_begun)
        await self._start_stream(streams, handle, self._warm)

    async def _begin_diff(
        self, workspace: WorkspaceDiff, handle: SandboxHandle, begun: trio.Event
    ) -> None:
        try:
            await workspace.begin(self._provider, handle)
        except AnycodeError as exc:
            log.warning("session %s: /diff will not work: %s", short_id(self._id), exc)
        finally:
            begun.set()

    async def _start_stream(
        self, streams: Supervisor, handle: SandboxHandle, resume: Resume | None
    ) -> None:
        agent = self._config.agent(self.session.agent)
        self._sink = RetiredSink[SessionInbox](self._outbox)
        self._stream = StreamActor(
            session_id=self._id,
            handle=handle,
            provider=self._provider,
            agent=agent,
            sandbox=self._config.sandbox,
            reports=self._sink,
            resume=resume,
        )
        await streams.start_child(self._stream.spec(self._stream_name()))

    async def _on_stream_ready(self, ready: StreamReady) -> None:
        self._stream_ready = True
        self._agent_session_id = ready.agent_session_id
        if ready.can_load is False:
            self._agent_cannot_load = ready.agent_name
        await self._store.set_agent_session_id(self._id, ready.agent_session_id)
        if self._restoring is not None:
            await self._on_reopened(self._restoring)
            return
        if self._recovered is not None:
            self._turn_running = self._recovered.resume.turn_running
            if not self._turn_running:
                # The turn ended before the daemon was killed, maybe before its files were
                # sent: send what the chat has not had yet.
                self._uploaded |= await self._store.uploads(self._id)
                await self._upload_outbox()
                self._arm_idle_timer()
            return
        if not await self._store.transition(
            self._id, SessionStatus.RUNNING, SessionStatus.STARTING
        ):
            self._finish(SessionStatus.CANCELLED, "")
            return
        if isinstance(ready.permissions, AnswersByPolicy):
            decider, policy = ready.permissions.decider, ready.permissions.policy
            await self._flusher.send(
                Post(f"Permissions follow {decider}'s {policy} policy; no buttons will be shown.")
            )
        if self._diff_begun is not None:
            await self._diff_begun.wait()
        await self._prompt(self.session.prompt, self._attachments)

    async def _prompt(self, text: str, attachments: tuple[Attachment, ...] = ()) -> None:
        self._turn_running = True
        self._idle_generation += 1
        if attachments:
            # Fetched by a task, which hands the prompt back (`_Fetched`) when the files are in.
            self._fetching = trio.CancelScope()
            self.tasks.start_soon(self._fetch_then_prompt, text, attachments, self._fetching)
            return
        step("prompt", self._id)
        await self._to_stream(Prompt(text))

    async def _fetch_then_prompt(
        self, text: str, attachments: tuple[Attachment, ...], scope: trio.CancelScope
    ) -> None:
        with scope:
            files, notes = await self._fetch(attachments)
            await self._outbox.send(_Fetched(_with_files(text, files, notes), files))

    async def _on_fetched(self, fetched: _Fetched) -> None:
        self._fetching = None
        if self._outcome is not None:
            return  # cancelled or ended meanwhile: the agent is asked nothing more
        if fetched.text.strip():
            await self._to_stream(Prompt(fetched.text, fetched.files))
            return
        # Only files were sent and none of them made it: nothing to ask the agent.
        self._turn_running = False
        if self._queued:
            queued = self._queued.popleft()
            await self._prompt(queued.text, queued.attachments)
            return
        self._arm_idle_timer()

    async def _fetch(
        self, attachments: tuple[Attachment, ...]
    ) -> tuple[tuple[PromptFile, ...], list[str]]:
        """Fetch each file into the sandbox's inbox: the files that made it, and a note for the
        agent per voice note. What did not make it is said in the chat."""
        limit_mb = self._config.session.max_download_mb
        files: list[PromptFile] = []
        notes: list[str] = []
        problems: list[str] = []
        for attachment in attachments:
            name = clean_display_text(attachment.name) or "file"
            if self._download is None or self._handle is None:
                problems.append(f"{name}: files cannot be received here")
                continue
            try:
                data = await self._download(attachment, limit_mb * 1024 * 1024)
            except FileTooLarge:
                problems.append(f"{name}: over {limit_mb} MB (session.max_download_mb)")
                continue
            except ChatError as exc:
                log.warning("session %s: could not fetch %s: %s", short_id(self._id), name, exc)
                problems.append(f"{name}: could not be fetched")
                continue
            path = f"{INBOX}/{self._inbox_name(attachment.name)}"
            try:
                await self._provider.write_file(self._handle, path, data)
            except AnycodeError as exc:
                log.warning("session %s: could not write %s: %s", short_id(self._id), path, exc)
                problems.append(f"{name}: could not be put into the sandbox")
                continue
            image = attachment.kind == "image" and attachment.mime_type.startswith("image/")
            files.append(
                PromptFile(
                    path, attachment.name, attachment.mime_type, len(data), data if image else None
                )
            )
            if attachment.kind == "audio":
                notes.append(
                    f"{path} is a voice note (audio, {attachment.mime_type}); it was not "
                    "transcribed."
                )
        if problems:
            await self._flusher.send(
                Post("Not given to the agent:\n" + "\n".join(f"- {p}" for p in problems))
            )
        return tuple(files), notes

    def _inbox_name(self, name: str) -> str:
        """A file name for the inbox: the sent name's last part, in safe characters, numbered
        when the session already has a file of that name."""
        base = _UNSAFE_NAME.sub("_", name.rsplit("/", 1)[-1]).lstrip(".") or "file"
        candidate, number = base[-120:], 1
        while candidate in self._inbox_names:
            number += 1
            candidate = f"{number}-{base}"[-120:]
        self._inbox_names.add(candidate)
        return candidate

    async def _to_stream(self, command: StreamCommand) -> bool:
        """Hand `command` to the stream actor; False when its connection has ended (its
        `StreamEnded` is on the way here and ends the session)."""
        assert self._stream is not None
        try:
            await self._stream.send(command)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    # --- agent events ---------------------------------------------------------------------------

    def _with_queued_events(self, first: AgentEventsArrived) -> list[AgentEvent]:
        """The events of `first` and of the reports queued right behind it, taken together so
        that they are stored in few transactions (one trip to the database's thread for each
        run of `_runs`, instead of one per event). Reports are taken while the last event only
        adds output and fewer than `EVENT_BATCH` are taken; a message of another kind taken
        from the inbox meanwhile waits in `_deferred`, to be handled next."""
        events = list(first.events)
        while events and len(events) < EVENT_BATCH and _only_output(events[-1]):
            try:
                message = self._inbox.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if not isinstance(message, AgentEventsArrived):
                self._deferred.append(message)
                break
            events.extend(message.events)
        return events

    async def _on_events(self, agent_events: Sequence[AgentEvent]) -> None:
        # The credentials the sandbox was given never reach the event log or the chat: every
        # event is redacted first, and a piece of streamed text that may end in the beginning
        # of one waits for the next event (see OutputRedactor). Made at the first event, when
        # the sandbox and its token are known.
        if self._redactor is None:
            self._redactor = _output_redactor(
                self._config, self.session.agent, self._handle, self._recovered
            )
        redactor = self._redactor
        events = [event for agent_event in agent_events for event in redactor.feed(agent_event)]
        # Stored before shown: after a crash, the store is the truth of what happened. A seq
        # stored already is a repeat (a resumed stream delivering it again): handled.
        stored = await self._store.append_events(self._id, events)
        self._report_now = not all(
            type(event) is TextDelta or _only_output(event) for event in events
        )
        # The text of consecutive events goes to the flusher as one message (each piece keeps
        # its event's seq as its mark), sent before anything else the events cause.
        pieces: list[tuple[int, str]] = []
        for event, new in zip(events, stored, strict=True):
            if not new:
                continue
            self._events += 1
            if type(event) is TextDelta:  # most of a stream: output, and only that
                if event.text:
                    pieces.append((event.seq, event.text))
                continue
            text = chat_text(event)
            if text:
                pieces.append((event.seq, text))
            if _only_output(event):
                continue
            await self._send_output(pieces)
            if isinstance(event, PermissionRequested):
                await self._on_permission(event)
            elif isinstance(event, PermissionResolved):
                await self._on_permission_resolved(event)
            elif isinstance(event, TurnEnded):
                await self._on_turn_ended(event)
            elif isinstance(event, ErrorEvent):
                await self._flusher.send(Flush(self._id))
                await self._flusher.send(Post(f"Agent error: {event.message}"))
            elif isinstance(event, SessionEnded) and self._outcome is None:
                await self._on_stream_lost(event.message or event.reason.replace("_", " "))
        await self._send_output(pieces)

    async def _send_output(self, pieces: list[tuple[int, str]]) -> None:
        """Hand the (seq, text) `pieces` of streamed output to the flusher, and forget them."""
        if len(pieces) == 1:
            [(seq, text)] = pieces
            await self._flusher.send(Append(self._id, text, mark=seq))
        elif pieces:
            await self._flusher.send(AppendPieces(self._id, tuple(pieces)))
        pieces.clear()

    async def _on_permission(self, request: PermissionRequested) -> None:
        options = tuple(
            InteractionOption(option_id=o.option_id, name=o.name, kind=o.kind)
            for o in request.options
        )
        if request.policy is not None:
            return  # decided by the agent's own policy; the resolution event tells what happened
        interaction = await self._store.create_interaction(
            self._id,
            "permission",
            request_id=str(request.request_id),
            tool_call_id=request.tool_call_id,
            options=options,
        )
        text = _permission_text(request)
        prompt = _Prompt(interaction.id, request.key, text, options)
        self._prompts[interaction.id] = prompt
        self._by_key[request.key] = interaction.id
        buttons = [
            Button(OPTION_LABELS.get(option.kind, option.name), f"{interaction.id}:{index}")
            for index, option in enumerate(options)
        ]
        rows = [buttons[i : i + 3] for i in range(0, len(buttons), 3)]
        # The stream's message ends here: what the agent says after the decision goes into a
        # new message below the prompt, where the person who just answered is looking.
        await self._flusher.send(EndStream(self._id))
        await self._flusher.send(
            Post(text, buttons=rows, tag=interaction.id, reply_to=self._outbox)
        )

    async def _on_permission_resolved(self, resolved: PermissionResolved) -> None:
        interaction_id = self._by_key.pop(resolved.key, None)
        if interaction_id is None or resolved.by == "user":
            return  # answered through our buttons: the message already shows the decision
        prompt = self._prompts.pop(interaction_id, None)
        if prompt is None:
            return
        outcome = (
            "⏹ No answer needed any more." if resolved.by == "cancel" else "Decided by policy."
        )
        await self._store.resolve_interaction(interaction_id, answer="cancelled", resolved_by="")
        if prompt.message_id is not None:
            await self._flusher.send(Edit(prompt.message_id, f"{prompt.text}\n\n{outcome}"))

    async def _on_turn_ended(self, ended: TurnEnded) -> None:
        self._turn_running = False
        await self._flusher.send(EndStream(self._id))
        await self._upload_outbox()
        if self._outcome is not None:
            return
        if ended.stop_reason == "error":
            self._finish(SessionStatus.FAILED, ended.message or "the agent's turn failed")
            return
        await self._checkpoint()
        if ended.stop_reason in ("refusal", "max_tokens", "max_turn_requests"):
            await self._flusher.send(Post(f"The agent stopped: {ended.stop_reason}."))
        if self._config.git.auto_pr == "each_turn":
            await self._publish(asked=False)
        if self._queued:
            queued = self._queued.popleft()
            await self._prompt(queued.text, queued.attachments)
            return
        self._arm_idle_timer()

    def _arm_idle_timer(self) -> None:
        idle = float(self._config.session.idle_minutes) * 60
        self._idle_generation += 1
        generation = self._idle_generation
        if idle <= 0:
            self._finish(SessionStatus.COMPLETED, "")
            return
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        # Kept by the run's timer task (actors/timers.py): an idle session holds no task.
        self._idle_timer = call_at(
            trio.current_time() + idle,
            lambda: deliver(self._outbox, self._tasks, _IdleExpired(generation)),
        )

    async def _on_stream_lost(self, error: str | None) -> None:
        if self._restoring is not None:
            return  # the old sandbox's last words; a new one is on its way
        # Not knowing is not dead: an engine that is slow or failing to answer leaves the
        # reason at what is known, the lost connection.
        alive = True
        if self._handle is not None:
            with trio.move_on_after(10):
                try:
                    alive = await self._provider.is_alive(self._handle.id)
                except AnycodeError as exc:
                    log.warning("session %s: %s", short_id(self._id), exc)
        if not alive and self._handle is not None:
            await self._log_last_output()
            await self._lose_sandbox(await describe_loss(self._provider, self._handle.id))
        else:
            why = error or "its event stream ended"
            trouble = await failure_reason(self._provider, self._handle.id) if self._handle else ""
            if trouble:
                why = f"{why} ({trouble})"
            self._finish(SessionStatus.FAILED, f"lost the connection to the agent: {why}")

    # --- a lost sandbox -------------------------------------------------------------------------

    def _stream_name(self) -> str:
        """The stream actor's child id: a new one after each restore, while the old stream may
        still be stopping."""
        restores = self._continuity.restores
        return f"stream:{short_id(self._id)}" + (f":{restores}" if restores else "")

    async def _lose_sandbox(self, why: str) -> None:
        """The sandbox is gone: carry on in a new one from the last checkpoint, or end saying
        why that cannot be done."""
        if self._restoring is not None or self._outcome is not None:
            return
        cannot = await self._try_restore(why)
        if cannot:
            self._finish(SessionStatus.FAILED, _not_restored(why, cannot))

    async def _try_restore(self, why: str) -> str:
        """Start carrying the session into a new sandbox; "" once under way, else why not."""
        cannot = restore_impossible(
            self._config.sandbox.protocol, self._config.agent(self.session.agent)
        )
        if not cannot and self._agent_session_id is None:
            cannot = "the agent's session was never opened"
        if not cannot and self._agent_cannot_load:
            cannot = f"{self._agent_cannot_load} cannot load a session (no loadSession)"
        if cannot:
            return cannot
        found = await self._continuity.last()
        if isinstance(found, str):
            return found
        info, data = found
        cut_off = self._continuity.turns + 1 if self._turn_running else None
        self._restoring = _Restoring(trio.current_time(), info, why, cut_off)
        log.warning(
            "session %s: %s; restoring the end of turn %d in a new sandbox",
            short_id(self._id),
            why,
            info.turn,
        )
        if self._sink is not None:
            self._sink.retire()  # what the lost sandbox's stream still says goes nowhere
        self._stream_ready = False
        self._turn_running = False
        self._idle_generation += 1
        await self._flusher.send(EndStream(self._id))
        for interaction in await self._store.cancel_pending_interactions(self._id):
            prompt = self._prompts.pop(interaction.id, None)
            message_id = (prompt.message_id if prompt else None) or interaction.chat_message_id
            if prompt is not None:
                self._by_key.pop(prompt.key, None)
            if message_id:
                text = prompt.text if prompt else "Permission requested"
                await self._flusher.send(Edit(message_id, f"{text}\n\n⏹ The sandbox was lost."))
        self._restore_scope = trio.CancelScope()
        self.tasks.start_soon(self._remake_sandbox, data, self._stream_name())
        return ""

    async def _remake_sandbox(self, data: bytes, old_stream: str) -> None:
        """Stop the old stream, remove what is left of the old sandbox, make a new one and put
        the checkpoint into it. Runs beside the actor; reports `_Restored` or `_RestoreFailed`."""
        with contextlib.suppress(UnknownChild):
            await self._streams.terminate_child(old_stream)
        old_id = self._handle.id if self._handle is not None else self.session.sandbox_id
        with self._restore_scope:
            try:
                if old_id:
                    with trio.move_on_after(DESTROY_GRACE):
                        await self._provider.destroy(old_id)
                self._handle = None
                # Owned from its creation: a cancel now still has the cleanup remove it.
                self._handle = handle = await self._provider.create(self._restore_spec())
                await self._continuity.put_back(handle, data)
            except (AnycodeError, trio.TooSlowError) as exc:
                await self._outbox.send(
                    _RestoreFailed(f"its sandbox was lost and could not be restored: {exc}")
                )
                return
            await self._outbox.send(_Restored(handle))

    def _restore_spec(self) -> SandboxSpec:
        """The new sandbox: as the first one (so the agent works in the same folder); the
        checkpoint then brings the workspace back over what it starts with."""
        return SandboxSpec(
            session_id=self._id,
            agent=self.session.agent,
            protocol=self._config.sandbox.protocol,
            env=self._config.sandbox_env(self.session.agent),
            repo=self.session.repo,
            seeded=self._publisher is not None,
        )

    async def _on_restored(self, handle: SandboxHandle) -> None:
        restoring = self._restoring
        if self._outcome is not None or restoring is None:
            return  # cancelled meanwhile; cleanup removes the new sandbox
        self._handle = handle
        await self._store.set_sandbox(self._id, handle.id, handle.endpoint or "")
        seq = await self._store.last_seq(self._id) + 1
        info = restoring.info
        record = Raw(
            seq=seq,
            kind=RESTORED_KIND,
            payload={
                "from_turn": info.turn,
                "cut_off_turn": restoring.cut_off,
                "why": restoring.why,
                "sandbox": handle.id,
                "checkpoint_bytes": info.size,
            },
        )
        await self._store.append_event(self._id, record)
        self._events += 1
        secrets = [*self._config.sandbox_env(self.session.agent).values(), handle.token]
        self._redactor = OutputRedactor([s for s in secrets if s], last_seq=seq)
        assert self._agent_session_id is not None
        restoring.reopening = True
        resume = Resume(self._agent_session_id, seq, None, turn_running=False, load=True)
        await self._start_stream(self._streams, handle, resume)

    async def _on_reopened(self, restoring: _Restoring) -> None:
        self._restoring = None
        took = trio.current_time() - restoring.started
        line = (
            f"The sandbox was lost ({restoring.why}); restored from the end of turn "
            f"{restoring.info.turn}, in {took:.1f} s."
        )
        if restoring.cut_off is not None:
            line += f" Turn {restoring.cut_off} was cut off: send it again to have it repeated."
        await self._flusher.send(Post(line))
        if self._queued:
            await self._prompt(self._queued.popleft().text)
        else:
            self._arm_idle_timer()

    async def _checkpoint(self) -> None:
        """The end of a turn: what a new sandbox needs to carry on from here."""
        if self._handle is None or self._agent_session_id is None:
            return
        secrets = [*self._config.sandbox_env(self.session.agent).values(), self._handle.token]
        await self._continuity.take(
            self._handle,
            agent_session_id=self._agent_session_id,
            last_seq=await self._store.last_seq(self._id),
            secrets=[s for s in secrets if s],
        )

    async def _log_last_output(self) -> None:
        """Log the last lines of a sandbox that stopped on its own (killed for memory, an agent
        that crashed): the clue to why, which cleanup is about to remove with the sandbox. The
        provider hides the credentials it gave the sandbox."""
        if self._handle is None:
            return
        output = ""
        with trio.move_on_after(DEAD_SANDBOX_LOG_TIMEOUT):
            try:
                output = await self._provider.logs(self._handle.id, tail=DEAD_SANDBOX_LOG_LINES)
            except AnycodeError as exc:
                log.warning("session %s: no output of its sandbox: %s", short_id(self._id), exc)
        if output.strip():
            log.warning(
                "session %s: its sandbox %s stopped unexpectedly; its last output:\n%s",
                short_id(self._id),
                _short_sandbox(self._handle.id),
                output.rstrip(),
            )

    # --- the user -------------------------------------------------------------------------------

    async def _on_follow_up(self, follow_up: FollowUp) -> None:
        if self._stream_ready and not self._turn_running:
            # Not yet answered: if the session ends before the agent says a word, the sender
            # is told that this message went nowhere.
            self._unanswered = follow_up
            await self._prompt(follow_up.text, follow_up.attachments)
            return
        limit = self._config.session.max_queued_follow_ups
        if len(self._queued) >= limit:
            await self._flusher.send(
                Post(
                    f"Not queued: {limit} messages already wait for the agent "
                    "(session.max_queued_follow_ups). Send it again when its turn ends."
                )
            )
            return
        self._queued.append(follow_up)
        await self._flusher.send(
            Post("Queued: the agent gets this as soon as it finishes its current step.")
        )

    async def _on_cancel(self, cancel: Cancel) -> None:
        if cancel.sandbox_lost and self._outcome is None:
            if self._restoring is not None:
                return
            cannot = await self._try_restore(cancel.reason)
            if not cannot:
                return
            cancel = Cancel(_not_restored(cancel.reason, cannot), status=cancel.status)
        status = SessionStatus(cancel.status)
        self._finish(status, cancel.reason)
        self._start_scope.cancel()
        if self._fetching is not None:
            self._fetching.cancel()  # a download under way: its prompt will not go
        self._restore_scope.cancel()
        if self._stream is not None and self._stream_ready:
            # Ends the turn and answers every pending permission "cancelled", so the agent never
            # waits on a decision that will not come. Waited for: stopping the stream (next,
            # as the actor ends) would cut it off.
            told = trio.Event()
            with trio.move_on_after(5):
                if await self._to_stream(CancelTurn(told)):
                    await told.wait()

    async def _on_permission_answer(self, answer: PermissionAnswer) -> None:
        prompt = self._prompts.get(answer.interaction_id)
        press = answer.press
        if prompt is None or self._stream is None:
            await self._answer_press(press, "Already answered.")
            return
        option = prompt.options[answer.option_index]
        who = press.user.mention
        won = await self._store.resolve_interaction(
            answer.interaction_id, answer=option.option_id, resolved_by=who
        )
        if not won:
            await self._answer_press(press, "Already answered.")
            return
        del self._prompts[answer.interaction_id]
        label = OPTION_LABELS.get(option.kind, option.name)
        await self._to_stream(Respond(prompt.key, option.option_id))
        await self._answer_press(press, label)
        mark = DECISION_MARKS.get(option.kind, "🚫" if option.kind.startswith("reject") else "✅")
        message_id = prompt.message_id or press.message_id
        await self._flusher.send(
            Edit(message_id, f"{prompt.text}\n\n{mark} {label} (by {who})", buttons=None)
        )

    # --- files ----------------------------------------------------------------------------------

    async def _upload_outbox(self) -> None:
        if self._handle is None:
            return
        limits = self._config.session
        try:
            with trio.fail_after(30):
                listing = await self._provider.read_files(
                    self._handle, OUTBOX, max_bytes=limits.max_upload_mb * _MB
                )
        except (AnycodeError, trio.TooSlowError) as exc:
            log.warning("session %s: could not read the outbox: %s", short_id(self._id), exc)
            return
        uploads, not_sent = _plan_uploads(listing, limits, self._uploaded)
        if uploads and self._confirms is None:
            self._confirms, self._confirmed = trio.open_memory_channel[Posted](UPLOADS_IN_FLIGHT)
            self.tasks.start_soon(self._record_uploads, self._confirmed)
        for key, name, data in uploads:
            # Recorded once delivered (the flusher answers with Posted): a daemon killed before
            # that uploads it again after its restart, one killed after it does not.
            number = len(self._upload_keys)
            self._upload_keys.append(key)
            self._unconfirmed.add(number)
            tag = f"{UPLOAD_TAG}{number}"
            await self._flusher.send(Upload(name, data, tag=tag, reply_to=self._confirms))
        if not_sent:
            # One message for the turn, however many files stayed behind.
            await self._flusher.send(Post(_not_sent_text(not_sent)))

    async def _record_uploads(self, confirmed: trio.MemoryReceiveChannel[Posted]) -> None:
        async for posted in confirmed:
            await self._record_upload(posted)

    async def _record_upload(self, posted: Posted) -> None:
        number = int(posted.tag.removeprefix(UPLOAD_TAG))
        self._unconfirmed.discard(number)
        if posted.message_id is not None:
            name, size = self._upload_keys[number]
            await self._store.record_upload(self._id, name, size)

    async def _settle_uploads(self) -> None:
        """Wait (up to DRAIN_GRACE) for the files still on their way to the chat. Until they
        are delivered the sandbox, which holds them, stays and the session stays live in the
        store: a daemon killed meanwhile reattaches the session after its restart and sends
        the files again, where removing the sandbox first would lose them for good."""
        if self._confirmed is None:
            return
        with trio.move_on_after(DRAIN_GRACE):
            while self._unconfirmed:
                await self._record_upload(await self._confirmed.receive())

    # --- the repository -------------------------------------------------------------------------

    async def _publish(self, *, asked: bool) -> None:
        """Commit, push and open the pull request, and show the card (actors/publisher.py).
        `asked` (/pr) also says when there is nothing to do."""
        publisher, handle = self._publisher, self._handle
        if publisher is None or handle is None:
            if asked:
                await self._flusher.send(Post("This session has no repository to push to."))
            return
        if self._turn_running and asked:
            await self._flusher.send(Post("The agent is still working; /pr after its turn."))
            return
        await self._flusher.send(Flush(self._id))
        try:
            card = await publisher.publish(self._provider, handle)
        except AnycodeError as exc:
            log.warning("session %s: not published: %s", short_id(self._id), exc)
            await self._flusher.send(Post(f"Not published: {exc}"))
            return
        if card is None:
            if asked:
                await self._flusher.send(Post(f"Nothing new to push on `{publisher.branch}`."))
            return
        await self._show(card)

    async def _show_diff(self) -> None:
        publisher, handle = self._publisher, self._handle
        if handle is None:
            await self._flusher.send(Post("The session's sandbox is not ready yet."))
            return
        try:
            if publisher is not None:
                card = await publisher.diff(self._provider, handle)
            elif self._workspace is None:
                await self._flusher.send(Post(f"No diff: {_NO_EXEC_DIFF}"))
                return
            else:
                card = await self._workspace.diff(self._provider, handle)
        except AnycodeError as exc:
            await self._flusher.send(Post(f"No diff: {exc}"))
            return
        await self._show(card)

    async def _show_final_diff(self) -> None:
        """A session without a publisher that changed the workspace: the stat and the patch,
        before the sandbox (and the work in it) is removed."""
        if self._workspace is None or self._handle is None:
            return
        try:
            card = await self._workspace.final(self._provider, self._handle)
        except AnycodeError as exc:
            log.warning("session %s: no final diff: %s", short_id(self._id), exc)
            return
        if card is not None:
            await self._show(card)

    async def _show(self, card: Card) -> None:
        await self._flusher.send(Post(card.text))
        if card.patch is not None:
            await self._flusher.send(Upload(card.patch_name, card.patch))

    # --- the end --------------------------------------------------------------------------------

    def _take_the_rest(self) -> list[SessionInbox]:
        rest, self._deferred = self._deferred, []
        while True:
            try:
                rest.append(self._inbox.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return rest

    async def _answer_late(self, late: Sequence[SessionInbox]) -> None:
        """Tell the senders of what the session never got to: follow-ups it had queued or was
        given just before it ended, and presses that arrived too late."""
        undelivered = list(self._queued)
        if self._unanswered is not None:
            undelivered.insert(0, self._unanswered)
        for message in late:
            if isinstance(message, FollowUp):
                undelivered.append(message)
            elif isinstance(message, PermissionAnswer):
                await self._answer_press(message.press, "The session has ended.")
        self._queued.clear()
        for follow_up in undelivered:
            await self._flusher.send(
                Post(
                    f"Not delivered to the agent: “{_excerpt(follow_up.text)}” "
                    f"(from {follow_up.user.mention}): session `{short_id(self._id)}` ended. "
                    "Start a new one with /task <prompt>."
                )
            )

    async def _clean_up(self, late: Sequence[SessionInbox] = ()) -> None:
        # No outcome yet means the actor was stopped from outside: the daemon is shutting down.
        status, reason = self._outcome or (SessionStatus.CANCELLED, "the daemon is shutting down")
        try:
            pending = await self._store.cancel_pending_interactions(self._id)
        except StoreUnavailable as exc:
            # A failing database must not keep the sandbox alive or the chat uninformed.
            log.error("session %s: %s", short_id(self._id), exc)
            pending = []
        try:
            await self._settle_uploads()
        except StoreUnavailable as exc:
            log.error("session %s: delivered files not recorded: %s", short_id(self._id), exc)
        if (
            self._config.git.auto_pr == "on_end"
            and status == SessionStatus.COMPLETED
            and self._handle is not None
        ):
            with trio.move_on_after(self._config.git.timeout_secs):
                await self._publish(asked=False)
        with trio.move_on_after(FINAL_DIFF_GRACE):
            await self._show_final_diff()
        for interaction in pending:
            prompt = self._prompts.pop(interaction.id, None)
            message_id = (prompt.message_id if prompt else None) or interaction.chat_message_id
            if message_id:
                text = prompt.text if prompt else "Permission requested"
                await self._flusher.send(Edit(message_id, f"{text}\n\n⏹ The session ended."))
        if self._handle is not None:
            with trio.move_on_after(DESTROY_GRACE) as scope:
                try:
                    await self._provider.destroy(self._handle.id)
                except AnycodeError as exc:
                    log.error("session %s: sandbox not removed: %s", short_id(self._id), exc)
            if scope.cancelled_caught:
                log.error(
                    "session %s: removing sandbox %s took over %.0f s; the reaper will retry",
                    short_id(self._id),
                    self._handle.id[:12],
                    DESTROY_GRACE,
                )
        try:
            won = await self._store.transition(self._id, status, reason=reason or None)
        except StoreUnavailable as exc:
            # Not recorded: the chat is told all the same; recovery settles the record later.
            log.error("session %s: final status not recorded: %s", short_id(self._id), exc)
            won = True
        self._report()
        await self._flusher.send(EndStream(self._id))
        if won:
            await self._flusher.send(Post(_final_notice(self._id, status, reason)))
        await self._answer_late(late)
        drained = trio.Event()
        await self._flusher.send(Drain(drained))
        with trio.move_on_after(DRAIN_GRACE):
            await drained.wait()
        if self._publisher is not None:
            with trio.move_on_after(5):
                await self._publisher.aclose()
        with trio.move_on_after(5):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self._closed.send(SessionClosed(self._id, str(status)))


def _runs(events: Sequence[AgentEvent]) -> Iterator[list[AgentEvent]]:
    """`events` cut after each one that does more than add output (a permission, the end of a
    turn or of the connection): each run is stored and handled before the next is stored, as if
    that event had come alone."""
    run: list[AgentEvent] = []
    for event in events:
        run.append(event)
        if not _only_output(event):
            yield run
            run = []
    if run:
        yield run


def _only_output(event: AgentEvent) -> bool:
    """Whether handling `event` does nothing but store it and show its output."""
    return not isinstance(
        event, PermissionRequested | PermissionResolved | TurnEnded | ErrorEvent | SessionEnded
    )


_UNSAFE_NAME: Final = re.compile(r"[^A-Za-z0-9._-]+")


def _with_files(text: str, files: Sequence[PromptFile], notes: Sequence[str]) -> str:
    """The prompt's text, followed by where the files sent with it are."""
    if not files:
        return text
    lines = [f"- {f.path} ({f.mime_type}, {_size_text(f.size)})" for f in files]
    said = f"Files sent with this message are in {INBOX}/:\n" + "\n".join(lines)
    if notes:
        said += "\n" + "\n".join(notes)
    return f"{text}\n\n{said}" if text.strip() else said


def _continuity_for(config: Config, session_id: str, provider: SandboxProvider) -> Continuity:
    """Checkpoints beside the database, unless `session.checkpoint_max_mb` is 0."""
    max_mb = config.session.checkpoint_max_mb
    store = CheckpointStore.beside(config.database.path) if max_mb > 0 else None
    return Continuity(session_id, store, max_mb=max_mb, provider=provider)


def _not_restored(why: str, cannot: str) -> str:
    return f"{why}; not restored in a new sandbox: {cannot}"


def _took_it_up(event: AgentEvent) -> bool:
    """Whether `event` shows the agent working on the last prompt. An error, the end of the
    connection or a turn that failed says nothing of the kind: its sender is told at the end
    that the message went nowhere."""
    if isinstance(event, TurnEnded):
        return event.stop_reason != "error"
    return not isinstance(event, ErrorEvent | SessionEnded)


def _excerpt(text: str, limit: int = 80) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _short_sandbox(sandbox_id: str) -> str:
    """A container id's first 12 characters; a local sandbox's folder name; an ARN's task id."""
    if "/" in sandbox_id:
        return sandbox_id.rstrip("/").rsplit("/", 1)[-1][:32]
    return sandbox_id[:12]


def _final_notice(session_id: str, status: SessionStatus, reason: str) -> str:
    sid = short_id(session_id)
    if status == SessionStatus.COMPLETED:
        return f"Session `{sid}` completed."
    if status == SessionStatus.CANCELLED:
        return f"Session `{sid}` cancelled ({reason})." if reason else f"Session `{sid}` cancelled."
    return f"Session `{sid}` failed: {reason}" if reason else f"Session `{sid}` failed."


def _permission_text(request: PermissionRequested) -> str:
    lines = [f"Permission requested: {request.title or 'run a tool'}"]
    if request.input_summary and request.input_summary != request.title:
        lines.append(f"Command: {request.input_summary}")
    return "\n".join(lines)


def chat_text(event: StoredEvent) -> str | None:
    """What an agent event adds to the session's streamed message. A restarted daemon calls it
    on the events read back from the store, which are equal to the ones stored, so it re-sends
    exactly what a live one would have shown. Reasoning, unknown updates and stored events this
    code cannot read stay in the event log only."""
    if isinstance(event, TextDelta):
        return event.text
    if isinstance(event, ToolCall):
        what = event.title or event.tool_name or event.kind or "a tool"
        line = f"\n▸ {what}\n" if event.shows_line else ""
        if event.phase == "completed" and event.status == "failed":
            line += f"✗ {what} failed\n"
        return line or None
    return None


# --- outbox uploads -----------------------------------------------------------------------------

_MB: Final = 1024 * 1024
# The message about files not sent names this many; the rest are counted.
NOT_SENT_LISTED: Final = 10
# File names longer than this are shortened in that message.
NOT_SENT_NAME_CHARS: Final = 100


def _plan_uploads(
    listing: OutboxListing, limits: SessionConfig, done: set[tuple[str, int]]
) -> tuple[list[tuple[tuple[str, int], str, bytes]], list[str]]:
    """The files of `listing` to send this turn, as ((name, size), chat file name, data), and a
    line for each one that is not sent saying why: over `max_upload_mb` (never read), or past
    `max_upload_files` or `max_upload_total_mb` for the turn.

    Files are taken in name order; one that would pass the total is left out, a smaller one
    after it may still fit. A name and size seen in an earlier turn (in `done`, which this adds
    to) is not considered again, so nothing is sent or reported twice, and every further hard
    link of a file is merged into it without a word.
    """
    merged = dict(listing.links)
    entries: list[tuple[str, int, bytes | None]] = [
        *((file.name, file.size, file.data) for file in listing.files),
        *((name, size, None) for name, size in listing.too_big),
    ]
    entries.sort(key=lambda entry: entry[0])
    uploads: list[tuple[tuple[str, int], str, bytes]] = []
    not_sent: list[str] = []
    total = 0
    for name, size, data in entries:
        if name in merged or (name, size) in done:
            continue
        done.add((name, size))
        # A name is the agent's choice: nothing in it may disguise what the file is.
        shown = (clean_display_text(name) or "file").replace("/", "_")
        if data is None:
            why = f"is over the {limits.max_upload_mb} MB upload limit"
        elif len(uploads) >= limits.max_upload_files:
            why = f"is over the limit of {_count(limits.max_upload_files, 'file')} per turn"
        elif total + size > limits.max_upload_total_mb * _MB:
            why = f"would take this turn's uploads over {limits.max_upload_total_mb} MB"
        else:
            uploads.append(((name, size), shown, data))
            total += size
            continue
        if len(shown) > NOT_SENT_NAME_CHARS:
            shown = shown[: NOT_SENT_NAME_CHARS - 1] + "…"
        not_sent.append(f"{shown} ({_size_text(size)}) {why}; not sent.")
    return uploads, not_sent


def _not_sent_text(lines: list[str]) -> str:
    shown = lines[:NOT_SENT_LISTED]
    if len(lines) > len(shown):
        shown.append(f"…and {_count(len(lines) - len(shown), 'more file')} not sent.")
    return "\n".join(shown)


def _size_text(size: int) -> str:
    if size < 1024:
        return _count(size, "byte")
    if size < _MB:
        return f"{size / 1024:.0f} KB"
    return f"{size / _MB:.1f} MB"


def _count(number: int, thing: str) -> str:
    return f"{number} {thing}" if number == 1 else f"{number} {thing}s"


# --- redaction ----------------------------------------------------------------------------------


def _output_redactor(
    config: Config, agent: str, handle: SandboxHandle | None, recovered: Recovered | None
) -> OutputRedactor:
    """What hides the credentials of this session's sandbox in its agent's output: the values
    `_create_sandbox` injects (`sandbox_env`) and sandbox-agent's token, which the sandbox holds
    too. A recovered session's stored events are not fed to it again."""
    secrets = list(config.sandbox_env(agent).values())
    if handle is not None and handle.token:
        secrets.append(handle.token)
    return OutputRedactor(secrets, last_seq=recovered.resume.last_seq if recovered else 0)


__all__ = ["Recovered", "SessionActor", "SessionInbox"]
