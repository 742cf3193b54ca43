"""The HTTP API as one more chat platform.

To the daemon, the API is a `ChatClient` like Telegram's or Slack's, with platform name "api":
`ApiPlatform.run` serves the HTTP app (hypercorn's trio worker, https://hypercorn.readthedocs.io,
an ASGI server that runs natively on Trio) as the supervised "api" child of the tree, and every
request that changes something becomes a `ChatEvent` put into the router, exactly as a chat
message would be. So API sessions are started, paced, counted against `[limits]`, owned, steered
and cancelled by the same router, chat, session, stream and flusher actors as chat sessions, and
nothing in those actors knows about HTTP.

The design, and why:

- **One conversation per API session.** A task is a `/task` `Command` in the conversation
  `ChatRef("api", <user>, <request id>)`: the chat id is the person (so `session.max_concurrent`
  counts per person, as in a private chat), and the thread is a fresh id per request, so each
  session has its own chat actor and flusher, and the session's record carries the request id as
  its `thread`. Follow-ups (`Message`), answers (`ButtonPress` with the same button data the chat
  platforms get) and cancels (`/cancel <id>`) go to that conversation, where the chat actor
  applies the ownership rules it applies everywhere.
- **What the chat actor says back** (the flusher's sends and edits) is not kept: the API's
  clients read the session's *stored event log* instead, which is what a resumable stream needs
  (every event has a stable id, its `seq`). The one reply the API waits for is the first message
  in a new request's conversation: the chat actor says "Starting …" once the session is
  recorded (the API then answers 201 with it), or says why not (a quota: 429). Refusals (`refuse`)
  of a request are answered the same way.
- **Live events.** `GET /v1/sessions/{id}/events` replays the event log after `Last-Event-ID`
  and then follows it; the flusher's sends and edits for the session's conversation are its
  notification that something new was stored (it edits only after the stream actor stored the
  event), with a short poll as the fallback. Files the agent leaves in its outbox are uploaded to
  the conversation like any chat's: they are kept here in memory (bounded) and served at
  `/v1/sessions/{id}/files/{name}`.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import itertools
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import trio

from anycode_actors.chat.auth import AccessPolicy
from anycode_actors.chat.base import (
    Attachment,
    Button,
    ButtonPress,
    ChatError,
    ChatEvent,
    ChatLimits,
    ChatRef,
    RateLane,
)
from anycode_actors.config import ApiConfig, Config
from anycode_actors.errors import AnycodeError

if TYPE_CHECKING:
    from anycode_actors.actors.admin import TreeSnapshot
    from anycode_actors.store import Store

__all__ = ["API_LIMITS", "PLATFORM", "ApiPlatform", "ApiTokenMissing", "StoredFile", "hash_token"]

log = logging.getLogger(__name__)

PLATFORM: Final = "api"
#: Nothing is sent over a network per message: generous numbers, as for the terminal.
API_LIMITS: Final = ChatLimits(
    max_text_length=4000,
    max_button_data_bytes=64,
    max_buttons_per_row=8,
    per_second=50.0,
    burst=50,
)
#: Conversations whose outbox files are kept, oldest forgotten first.
FILES_KEPT_FOR: Final = 64


def hash_token(token: str) -> str:
    """The SHA-256 of a bearer token as lower-case hex, as `token_sha256` holds it."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class StoredFile:
    name: str
    data: bytes
    caption: str = ""


@dataclass
class _Conversation:
    """What the API keeps of one conversation: a wake-up for its event streams, its files."""

    changed: trio.Event = field(default_factory=trio.Event)
    files: list[StoredFile] = field(default_factory=list)


class ApiPlatform:
    """A `ChatClient` whose people are `[api.users]` and whose chats are HTTP requests."""

    platform = PLATFORM
    limits = API_LIMITS
    rate_lanes: Mapping[str, RateLane] = {}
    task_threads = False

    def __init__(
        self,
        config: Config,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        assert config.api is not None, "ApiPlatform needs an [api] table"
        self.config = config
        self.api: ApiConfig = config.api
        self.access = AccessPolicy.of(self.api.users, admins=self.api.admins)
        self._digests = _token_digests(self.api, os.environ if environ is None else environ)
        self.urls: list[str] = []
        """Where the server listens, once `run` reported ready (`http://127.0.0.1:7080`)."""
        self._store: Store | None = None
        self._snapshot: Callable[[], TreeSnapshot] | None = None
        self._ids = itertools.count(1)
        self._conversations: OrderedDict[str, _Conversation] = OrderedDict()
        # Request id (a conversation's thread, or an event's message id) → who waits for the
        # first thing the daemon says about it.
        self._waiters: dict[str, trio.MemorySendChannel[str]] = {}

    def attach(self, store: Store, snapshot: Callable[[], TreeSnapshot]) -> None:
        """Give the platform what its HTTP routes read: the store and the live tree. The daemon
        calls this once the store is open, before the tree starts."""
        self._store, self._snapshot = store, snapshot

    # --- who is asking ----------------------------------------------------------------------------

    def user_for(self, token: str) -> str | None:
        """The user whose token this is, or None. Every configured digest is compared, in
        constant time, whichever matches, so the time taken tells nothing about the tokens."""
        given = hash_token(token).encode()
        found = None
        for digest, user in self._digests.items():
            if hmac.compare_digest(given, digest.encode()):
                found = user
        return found

    # --- for the HTTP app -------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        assert self._store is not None, "ApiPlatform.attach was not called"
        return self._store

    def tree(self) -> TreeSnapshot:
        assert self._snapshot is not None, "ApiPlatform.attach was not called"
        return self._snapshot()

    def new_request_id(self) -> str:
        return f"r{next(self._ids)}-{os.urandom(6).hex()}"

    def expect(self, request_id: str) -> trio.MemoryReceiveChannel[str]:
        """Start listening for what the daemon says in (or about) request `request_id`."""
        send, receive = trio.open_memory_channel[str](8)
        self._waiters[request_id] = send
        return receive

    def forget(self, request_id: str) -> None:
        waiter = self._waiters.pop(request_id, None)
        if waiter is not None:
            waiter.close()

    def changed(self, chat_key: str) -> trio.Event:
        """Set at the next send, edit or upload in the conversation `chat_key`."""
        return self._conversation(chat_key).changed

    def files(self, chat_key: str) -> list[StoredFile]:
        conversation = self._conversations.get(chat_key)
        return list(conversation.files) if conversation is not None else []

    # --- ChatClient -------------------------------------------------------------------------------

    def is_group(self, chat: ChatRef) -> bool:
        """Never: each conversation is one person's request."""
        return False

    async def run(
        self,
        events: trio.MemorySendChannel[ChatEvent],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve the HTTP app until cancelled; ready once listening."""
        from hypercorn.config import Config as HypercornConfig
        from hypercorn.trio import serve

        from anycode_actors.api.app import ApiApp

        app = ApiApp(self, events)
        server = HypercornConfig()
        server.bind = [self.api.listen]
        server.accesslog = None  # no request lines in the logs (and never a header)
        server.errorlog = logging.getLogger("anycode_actors.api.server")
        server.graceful_timeout = 1.0
        server.keep_alive_timeout = 75.0
        async with trio.open_nursery() as nursery:
            self.urls = await nursery.start(serve, app, server)
            log.info("HTTP API listening on %s", ", ".join(self.urls))
            task_status.started()

    async def send(
        self,
        chat: ChatRef,
        text: str,
        *,
        buttons: Sequence[Sequence[Button]] = (),
        reply_to: str | None = None,
    ) -> str:
        if chat.thread is not None:
            self._tell_waiter(chat.thread, text)
        self._touch(chat.key)
        return str(next(self._ids))

    async def edit(
        self,
        chat: ChatRef,
        message_id: str,
        text: str,
        *,
        buttons: Sequence[Sequence[Button]] | None = None,
    ) -> None:
        self._touch(chat.key)

    async def answer_press(self, press: ButtonPress, text: str = "") -> None:
        if text:
            self._tell_waiter(press.press_id, text)

    async def refuse(self, event: ChatEvent, text: str) -> None:
        request_id = event.press_id if isinstance(event, ButtonPress) else event.message_id
        self._tell_waiter(request_id, text)

    async def upload(self, chat: ChatRef, filename: str, data: bytes, caption: str = "") -> str:
        conversation = self._conversation(chat.key)
        conversation.files.append(StoredFile(filename, data, caption))
        self._touch(chat.key)
        return str(next(self._ids))

    async def download(self, attachment: Attachment, max_bytes: int) -> bytes:
        """The API takes no files in, so there is never one to fetch."""
        raise ChatError(f"the API has no file {attachment.name!r}", code="no_files")

    # --- inside -----------------------------------------------------------------------------------

    def _tell_waiter(self, request_id: str, text: str) -> None:
        waiter = self._waiters.get(request_id)
        if waiter is not None:
            with contextlib.suppress(
                trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError
            ):
                waiter.send_nowait(text)

    def _conversation(self, chat_key: str) -> _Conversation:
        conversation = self._conversations.get(chat_key)
        if conversation is None:
            conversation = self._conversations[chat_key] = _Conversation()
            while len(self._conversations) > FILES_KEPT_FOR:
                self._conversations.popitem(last=False)
        self._conversations.move_to_end(chat_key)
        return conversation

    def _touch(self, chat_key: str) -> None:
        conversation = self._conversation(chat_key)
        conversation.changed.set()
        conversation.changed = trio.Event()


class ApiTokenMissing(AnycodeError):
    """An `[api.users.<name>] token_env` names a variable that is not set."""


def _token_digests(api: ApiConfig, environ: Mapping[str, str]) -> dict[str, str]:
    """SHA-256 hex of each user's token → the user."""
    digests: dict[str, str] = {}
    missing = []
    for name, user in api.users.items():
        if user.token_sha256 is not None:
            digests[user.token_sha256] = name
            continue
        assert user.token_env is not None
        token = environ.get(user.token_env, "").strip()
        if not token:
            missing.append(f"{user.token_env} (api.users.{name}.token_env)")
            continue
        digests[hash_token(token)] = name
    if missing:
        raise ApiTokenMissing(
            "these API token variables are not set: " + ", ".join(missing) + "; export them "
            "before starting anycode, or use token_sha256"
        )
    return digests
