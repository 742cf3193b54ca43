"""In-memory collaborators for unit tests of the actors: a chat platform that records every call,
a sandbox provider whose delays and failures a test controls, a scripted agent session, and the
real Store with its SQLite calls made on the Trio thread.

Everything here is deterministic under the autojump clock: no worker threads, no sockets, so the
clock jumps only when the actors really wait (a debounce, a timeout, an idle timer).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, TypeVarTuple

import pytest
import trio

from anycode_actors.actors import stream as stream_module
from anycode_actors.agents import (
    AgentEvent,
    AsksUser,
    OpenedSession,
    PermissionMode,
    PermissionOption,
    PermissionRequested,
    PermissionResolved,
    Resume,
    SessionEnded,
    TextDelta,
    TurnEnded,
)
from anycode_actors.agents.acp import Turn
from anycode_actors.agents.events import PromptFile
from anycode_actors.chat.auth import AccessPolicy
from anycode_actors.chat.base import (
    Attachment,
    Button,
    ButtonPress,
    ChatError,
    ChatEvent,
    ChatLimits,
    ChatRef,
    FileTooLarge,
    RateLane,
    User,
)
from anycode_actors.config import Config, config_from_mapping
from anycode_actors.errors import (
    AgentClosedError,
    AgentError,
    PermissionAnswerError,
    TurnInProgressError,
)
from anycode_actors.sandboxes.base import (
    AgentProcess,
    OutboxListing,
    SandboxError,
    SandboxFile,
    SandboxHandle,
    SandboxInfo,
    SandboxSpec,
)
from anycode_actors.store import Store

T = TypeVar("T")
Ts = TypeVarTuple("Ts")
Rows = tuple[tuple[Button, ...], ...]

CHAT = ChatRef("telegram", "111")
OTHER_CHAT = ChatRef("telegram", "222")
ADA = User("111", "@ada")
BOB = User("222", "@bob")
# Far more than any test needs: pacing is the flusher's own tests' business.
GENEROUS = ChatLimits(
    max_text_length=4096,
    max_button_data_bytes=64,
    max_buttons_per_row=8,
    per_second=1000.0,
    burst=1000,
)
ALLOW_ONCE = PermissionOption(option_id="allow", name="Allow once", kind="allow_once")
ALLOW_ALWAYS = PermissionOption(option_id="always", name="Always allow", kind="allow_always")
REJECT_ONCE = PermissionOption(option_id="reject", name="Reject", kind="reject_once")


def make_config(**session: Any) -> Config:
    """A valid configuration (Telegram, sandbox-agent, the built-in agents); `session` settings
    override the defaults, e.g. `idle_minutes=0`."""
    return config_from_mapping(
        {
            "telegram": {"bot_token": "123456:ABCdefGHIjklMNOpqrsTUVwxyz012345678"},
            "session": {"debounce_ms": 500, **session},
        },
        environ={},
    )


def iso_ago(seconds: float) -> str:
    """An ISO 8601 UTC timestamp `seconds` of wall-clock time ago (sandbox creation times)."""
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat(timespec="microseconds")


# --- the store ----------------------------------------------------------------------------------


class InlineStore(Store):
    """The real Store, its SQLite calls made on the Trio thread instead of a worker thread.

    An in-memory database answers in microseconds, and without worker threads the autojump clock
    never jumps while a query is under way (it would fire timeouts that never fire in real life).
    Open it like the Store: `async with InlineStore.open(":memory:") as store`.
    """

    async def _call(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        await trio.lowlevel.checkpoint()
        return self._guarded(fn, *args)


@asynccontextmanager
async def memory_store() -> AsyncIterator[Store]:
    async with InlineStore.open(":memory:") as store:
        yield store


# --- the chat platform --------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    at: float
    kind: str  # "send" | "edit" | "upload" | "refuse"
    message_id: str
    text: str
    buttons: Rows = ()


class RecordingChat:
    """A `ChatClient` that records sends, edits, press answers and uploads, with generous limits.

    `messages` holds what the chat shows now (message id → text and buttons); `calls` holds every
    call in order with its trio time. `wait_until` waits for a condition without polling.
    """

    platform = "telegram"
    access = AccessPolicy.open()
    rate_lanes: Mapping[str, RateLane] = {}
    task_threads = False

    def __init__(self, limits: ChatLimits = GENEROUS) -> None:
        self.limits = limits
        self.calls: list[Call] = []
        self.messages: dict[str, tuple[str, Rows]] = {}
        self.presses: list[tuple[ButtonPress, str]] = []
        self.uploads: list[tuple[str, bytes, str]] = []
        self.refusals: list[tuple[ChatEvent, str]] = []
        # What `download` serves, by Attachment.ref; a ChatError stands for a failed fetch.
        self.files: dict[str, bytes | ChatError] = {}
        # Seconds each `download` takes (a large file on a slow link).
        self.download_delay = 0.0
        self._ids = itertools.count(1)
        self._changed = trio.Event()

    # -- for tests

    def seed(self, message_id: str, text: str) -> None:
        """A message the bot sent before the test began (a daemon that restarted)."""
        self.messages[message_id] = (text, ())

    def texts(self) -> list[str]:
        """The texts the chat shows, oldest message first."""
        return [text for text, _ in self.messages.values()]

    def message_with(self, fragment: str) -> str | None:
        """The id of the first message whose text contains `fragment`."""
        return next((mid for mid, (text, _) in self.messages.items() if fragment in text), None)

    def text_of(self, message_id: str) -> str:
        return self.messages[message_id][0]

    def buttons_of(self, message_id: str) -> Rows:
        return self.messages[message_id][1]

    def press_answers(self) -> list[str]:
        return [text for _, text in self.presses]

    async def wait_until(self, condition: Callable[[], T | None], within: float = 600) -> T:
        """Wait until `condition()` is truthy (checked after every call) and return it."""
        with trio.fail_after(within):
            while True:
                value = condition()
                if value:
                    return value
                await self._changed.wait()

    async def wait_for_text(self, fragment: str, within: float = 600) -> str:
        """Wait for a message containing `fragment`; return its id."""
        return await self.wait_until(lambda: self.message_with(fragment), within)

    def _record(self, call: Call) -> None:
        self.calls.append(call)
        self._changed.set()
        self._changed = trio.Event()

    # -- ChatClient

    def is_group(self, chat: ChatRef) -> bool:
        """As Telegram answers it: group chats have negative ids."""
        return chat.chat_id.startswith("-")

    async def run(self, events: object, *, task_status: object = None) -> None:
        raise AssertionError("events are handed to the actors directly in these tests")

    async def send(
        self,
        chat: ChatRef,
        text: str,
        *,
        buttons: Sequence[Sequence[Button]] = (),
        reply_to: str | None = None,
    ) -> str:
        await trio.lowlevel.checkpoint()
        rows = tuple(tuple(row) for row in buttons)
        message_id = str(next(self._ids))
        self.messages[message_id] = (text, rows)
        self._record(Call(trio.current_time(), "send", message_id, text, rows))
        return message_id

    async def edit(
        self,
        chat: ChatRef,
        message_id: str,
        text: str,
        *,
        buttons: Sequence[Sequence[Button]] | None = None,
    ) -> None:
        await trio.lowlevel.checkpoint()
        rows = tuple(tuple(row) for row in buttons or ())
        self.messages[message_id] = (text, rows)
        self._record(Call(trio.current_time(), "edit", message_id, text, rows))

    async def answer_press(self, press: ButtonPress, text: str = "") -> None:
        await trio.lowlevel.checkpoint()
        self.presses.append((press, text))
        self._changed.set()
        self._changed = trio.Event()

    async def refuse(self, event: ChatEvent, text: str) -> None:
        """Only the person behind `event` sees `text`; a refused press counts as answered."""
        await trio.lowlevel.checkpoint()
        self.refusals.append((event, text))
        if isinstance(event, ButtonPress):
            self.presses.append((event, text))
        self._record(Call(trio.current_time(), "refuse", "", text))

    async def upload(self, chat: ChatRef, filename: str, data: bytes, caption: str = "") -> str:
        await trio.lowlevel.checkpoint()
        message_id = str(next(self._ids))
        self.uploads.append((filename, data, caption))
        self.messages[message_id] = (f"[file {filename}]", ())
        self._record(Call(trio.current_time(), "upload", message_id, filename))
        return message_id

    async def download(self, attachment: Attachment, max_bytes: int) -> bytes:
        await trio.lowlevel.checkpoint()
        if self.download_delay:
            await trio.sleep(self.download_delay)
        found = self.files.get(attachment.ref)
        if found is None:
            raise ChatError(f"no file {attachment.ref}", code="not_found")
        if isinstance(found, ChatError):
            raise found
        if len(found) > max_bytes:
            raise FileTooLarge(f"{attachment.name} is too large", size=len(found))
        return found


# --- the sandbox provider -----------------------------------------------------------------------


class FakeProvider:
    """A `SandboxProvider` keeping its sandboxes in a dict.

    `create` makes the sandbox exist at once and returns after `create_delay`; cancelled
    meanwhile it removes the sandbox again (the contract: never leave one behind), unless
    `uninterruptible_create` is set, which models a provider whose create, once begun, always
    finishes and returns its handle. `is_alive_delay`/`is_alive_error` and
    `list_delay`/`list_error` make the engine slow or failing; `kill` makes a sandbox stop.
    `outbox` is what `read_files` finds in the sandbox's outbox folder; `links` names its hard
    links (name → the name of the file it links to; both are in `outbox`). `output` is what
    `logs` answers (the last `tail` lines of it).
    """

    name = "fake"
    can_exec = True  # its exec fails instead: a checkpoint is tried, and logged as failed

    def __init__(
        self,
        *,
        create_delay: float = 0.0,
        create_error: Exception | None = None,
        uninterruptible_create: bool = False,
    ) -> None:
        self.create_delay = create_delay
        self.create_error = create_error
        self.uninterruptible_create = uninterruptible_create
        self.is_alive_delay = 0.0
        self.is_alive_error: Exception | None = None
        self.list_delay = 0.0
        self.list_error: Exception | None = None
        self.destroy_error: Exception | None = None
        self.sandboxes: dict[str, SandboxInfo] = {}
        self.stopped: set[str] = set()
        self.troubles: dict[str, str] = {}
        self.specs: list[SandboxSpec] = []
        self.destroyed: list[str] = []
        self.outbox: dict[str, bytes] = {}
        self.links: dict[str, str] = {}
        self.output = ""
        self.reads = 0
        self.written: dict[str, bytes] = {}  # path → data, from write_file
        self._ids = itertools.count(1)

    # -- for tests

    @property
    def alive(self) -> list[str]:
        return [sid for sid in self.sandboxes if sid not in self.stopped]

    def add(self, session_id: str, *, created_at: str | None = None) -> SandboxHandle:
        """A sandbox that already runs (made by an earlier daemon, or leaked)."""
        sandbox_id = f"sbx-{next(self._ids)}"
        self.sandboxes[sandbox_id] = SandboxInfo(
            sandbox_id, session_id, "claude-code", True, created_at or iso_ago(0)
        )
        return self._handle(sandbox_id, session_id)

    def kill(self, sandbox_id: str) -> None:
        """The sandbox stops by itself (crash, OOM): it still exists but is not alive."""
        self.stopped.add(sandbox_id)

    def _handle(self, sandbox_id: str, session_id: str) -> SandboxHandle:
        return SandboxHandle(
            id=sandbox_id,
            session_id=session_id,
            provider=self.name,
            endpoint="http://sandbox.invalid:2468",
            token="not-a-secret",
        )

    # -- SandboxProvider

    async def create(self, spec: SandboxSpec) -> SandboxHandle:
        self.specs.append(spec)
        handle = self.add(spec.session_id)
        try:
            with trio.CancelScope(shield=self.uninterruptible_create):
                await trio.sleep(self.create_delay)
            if self.create_error is not None:
                raise self.create_error
        except BaseException:
            self.sandboxes.pop(handle.id, None)
            raise
        return handle

    async def destroy(self, sandbox_id: str) -> None:
        await trio.lowlevel.checkpoint()
        if self.destroy_error is not None:
            raise self.destroy_error
        self.destroyed.append(sandbox_id)
        self.sandboxes.pop(sandbox_id, None)
        self.stopped.discard(sandbox_id)

    async def is_alive(self, sandbox_id: str) -> bool:
        await trio.sleep(self.is_alive_delay)
        if self.is_alive_error is not None:
            raise self.is_alive_error
        return sandbox_id in self.sandboxes and sandbox_id not in self.stopped

    async def failure_reason(self, sandbox_id: str) -> str:
        await trio.lowlevel.checkpoint()
        if sandbox_id in self.troubles:
            return self.troubles[sandbox_id]
        return "it was removed" if sandbox_id not in self.sandboxes else ""

    async def logs(self, sandbox_id: str, tail: int = 200) -> str:
        await trio.lowlevel.checkpoint()
        return "\n".join(self.output.splitlines()[-tail:] if tail > 0 else [])

    async def list(self) -> list[SandboxInfo]:
        await trio.sleep(self.list_delay)
        if self.list_error is not None:
            raise self.list_error
        return [
            dataclasses.replace(info, alive=info.id not in self.stopped)
            for info in self.sandboxes.values()
        ]

    async def exec(
        self,
        handle: SandboxHandle,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> AgentProcess:
        raise SandboxError("the fake provider runs no processes; the agent is faked instead")

    async def reattach(self, sandbox_id: str) -> SandboxHandle | None:
        await trio.lowlevel.checkpoint()
        info = self.sandboxes.get(sandbox_id)
        if info is None or sandbox_id in self.stopped:
            return None
        return self._handle(sandbox_id, info.session_id)

    async def read_files(
        self, handle: SandboxHandle, path: str, *, max_bytes: int
    ) -> OutboxListing:
        await trio.lowlevel.checkpoint()
        self.reads += 1
        files = sorted(self.outbox.items())
        return OutboxListing(
            files=tuple(SandboxFile(name, data) for name, data in files if len(data) <= max_bytes),
            too_big=tuple((name, len(data)) for name, data in files if len(data) > max_bytes),
            links=tuple(sorted(self.links.items())),
        )

    async def write_file(self, handle: SandboxHandle, path: str, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        if handle.id not in self.sandboxes:
            raise SandboxError(f"sandbox {handle.id} does not exist (any more)")
        self.written[path] = data


# --- the agent ----------------------------------------------------------------------------------


def said(*chunks: str, stop_reason: str = "end_turn") -> list[AgentEvent]:
    """A turn that streams `chunks` and ends."""
    return [*(TextDelta(text=chunk) for chunk in chunks), TurnEnded(stop_reason=stop_reason)]


def asks(
    key: str = "0",
    title: str = "Run touch ok.txt",
    command: str = "touch ok.txt",
    options: Iterable[PermissionOption] = (ALLOW_ONCE, ALLOW_ALWAYS, REJECT_ONCE),
) -> PermissionRequested:
    """A permission request (a draft: the agent numbers it)."""
    return PermissionRequested(
        key=key,
        request_id=int(key) if key.isdigit() else key,
        tool_call_id=f"tool-{key}",
        title=title,
        input_summary=command,
        options=tuple(options),
    )


class FakeAgent:
    """An `AgentSession` that plays scripted turns and numbers its events like the real ones.

    Each `prompt` plays the next turn of `turns` (event drafts, seq 0). A turn pauses after a
    `PermissionRequested` until it is answered (`respond_permission`) or the turn is cancelled;
    a turn without a `TurnEnded` keeps running until the test `emit`s more. `prompt` refuses to
    start a turn while one runs, as the real protocol does, so a session that prompts too early
    is caught.
    """

    def __init__(
        self,
        turns: Iterable[Sequence[AgentEvent]] = (),
        *,
        session_id: str = "agent-session-1",
        connect_error: AgentError | None = None,
        permissions: PermissionMode | None = None,
        can_load: bool | None = None,
    ) -> None:
        self.session_id = session_id
        self.can_load = can_load
        self.connect_error = connect_error
        self.permissions = AsksUser() if permissions is None else permissions
        self.prompts: list[str] = []
        self.prompt_files: list[tuple[PromptFile, ...]] = []  # by prompt
        self.responses: list[tuple[str, str]] = []
        self.cancels = 0
        self.connects: list[Resume | None] = []
        self.delivered: list[AgentEvent] = []
        self._turns = deque(list(turn) for turn in turns)
        self._held: list[AgentEvent] = []
        self._pending: dict[str, PermissionRequested] = {}
        self._running = False
        self._ended = False
        self._seq = 0
        self._send, self._receive = trio.open_memory_channel[AgentEvent](math.inf)
        self._changed = trio.Event()

    # -- for tests

    def emit(self, *drafts: AgentEvent) -> None:
        """The agent says more, now (numbered in order)."""
        self._play(list(drafts))

    def redeliver(self, event: AgentEvent) -> None:
        """Deliver an event already delivered (same seq), as a reconnecting transport may."""
        self._send.send_nowait(event)

    def end(self, reason: str = "connection_lost", message: str = "") -> None:
        """The connection ends: a last SessionEnded, then no more events."""
        self._play([SessionEnded(reason=reason, message=message)])  # type: ignore[arg-type]
        self._ended = True
        self._send.close()

    def vanish(self) -> None:
        """The event stream just stops, without a SessionEnded."""
        self._ended = True
        self._send.close()

    async def wait_until(self, condition: Callable[[], bool], within: float = 600) -> None:
        with trio.fail_after(within):
            while not condition():
                await self._changed.wait()

    async def wait_for_prompts(self, count: int, within: float = 600) -> None:
        await self.wait_until(lambda: len(self.prompts) >= count, within)

    # -- AgentSession

    @property
    def events(self) -> trio.MemoryReceiveChannel[AgentEvent]:
        return self._receive

    @property
    def turn_running(self) -> bool:
        return self._running

    async def prompt(self, text: str, files: Sequence[PromptFile] = ()) -> Turn:
        await trio.lowlevel.checkpoint()
        if self._ended:
            raise AgentClosedError("the session has ended")
        if self._running:
            raise TurnInProgressError("still answering the previous prompt")
        self.prompts.append(text)
        self.prompt_files.append(tuple(files))
        self._running = True
        self._changed_now()
        if self._turns:
            self._play(self._turns.popleft())
        return Turn()

    async def cancel(self) -> None:
        await trio.lowlevel.checkpoint()
        self.cancels += 1
        self._changed_now()
        for key in list(self._pending):
            del self._pending[key]
            self._play([PermissionResolved(key=key, outcome="cancelled", by="cancel")])
        if self._running:
            self._held = []
            self._play([TurnEnded(stop_reason="cancelled")])

    async def respond_permission(self, key: str, option_id: str) -> None:
        await trio.lowlevel.checkpoint()
        request = self._pending.pop(key, None)
        if request is None:
            raise PermissionAnswerError(f"no pending permission request {key}")
        option = next(o for o in request.options if o.option_id == option_id)
        self.responses.append((key, option_id))
        self._changed_now()
        held, self._held = self._held, []
        resolved = PermissionResolved(
            key=key, outcome="selected", option_id=option_id, option_kind=option.kind, by="user"
        )
        self._play([resolved, *held])

    async def cancel_permission(self, key: str) -> None:
        await trio.lowlevel.checkpoint()
        if self._pending.pop(key, None) is None:
            raise PermissionAnswerError(f"no pending permission request {key}")
        self._play([PermissionResolved(key=key, outcome="cancelled", by="cancel")])

    # -- inside

    def connected(self, resume: Resume | None) -> None:
        self.connects.append(resume)
        self._seq = resume.last_seq if resume is not None else 0
        if resume is not None:
            self._running = resume.turn_running
            self._pending = {p.key: p for p in resume.permissions}
        self._changed_now()

    def _play(self, drafts: list[AgentEvent]) -> None:
        for index, draft in enumerate(drafts):
            self._seq += 1
            event = dataclasses.replace(draft, seq=self._seq)
            self.delivered.append(event)
            if isinstance(event, TurnEnded):
                self._running = False
            self._send.send_nowait(event)
            if isinstance(event, PermissionRequested):
                self._pending[event.key] = event
                self._held = drafts[index + 1 :]
                break
        self._changed_now()

    def _changed_now(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


def use_agents(
    monkeypatch: pytest.MonkeyPatch,
    make_agent: Callable[[], FakeAgent],
    agent_name: str = "fake-agent",
) -> None:
    """Make every stream actor open a session of a new `make_agent()` instead of a protocol."""

    @asynccontextmanager
    async def open_scripted(
        protocol: str, *, resume: Resume | None = None, **_: Any
    ) -> AsyncIterator[OpenedSession]:
        await trio.lowlevel.checkpoint()
        agent = make_agent()
        if agent.connect_error is not None:
            raise agent.connect_error
        agent.connected(resume)
        yield OpenedSession(
            agent, agent.session_id, agent_name, agent.permissions, can_load=agent.can_load
        )

    monkeypatch.setattr(stream_module, "open_session", open_scripted)


def use_agent(monkeypatch: pytest.MonkeyPatch, agent: FakeAgent) -> None:
    """Make every session actor's stream talk to `agent` instead of opening a protocol."""
    use_agents(monkeypatch, lambda: agent)
