"""A local stand-in for Slack: the Web API over HTTP and Socket Mode over a real WebSocket.

Slack cannot be reached from the test machines, so this fake follows Slack's documentation
closely enough that a client which works against it should work against Slack: the same URLs
relative to its base, the same JSON shapes, the same `ok:false` error codes, the same 429 +
`Retry-After`, the same 3-second ack deadline and redelivery of unacknowledged events. Comments
cite it by these tags:

- B2 Socket Mode: https://docs.slack.dev/apis/events-api/using-socket-mode
- B3 response_url: https://docs.slack.dev/interactivity/handling-user-interaction
- B4 Web API methods, rate limits and message formatting: https://docs.slack.dev/reference/methods,
  https://docs.slack.dev/apis/web-api/rate-limits, https://docs.slack.dev/messaging

Start it in a test's nursery; it serves until the nursery is cancelled::

    slack = FakeSlack()
    await nursery.start(slack.serve)
    # Point the app at slack.api_url (instead of https://slack.com/api/) with slack.app_token
    # and slack.bot_token, and start it.
    general = slack.add_channel("general")
    post = await slack.user_message(general, "U0ADA", "hello")
    await slack.wait_for(lambda: post.deliveries[0].state == "acked")
    assert "hello" in slack.transcript(general)

Time comes from `trio.current_time()`, so tests may use the `autojump_clock` fixture: the ack
deadline, redelivery, server pings and connection lifetimes are all Trio deadlines. The peers
talk over loopback, where a write is readable by the other side at once, so the clock does not
jump past an ack that is already on its way.

Where Slack documents nothing, the fake makes a choice and says so in the constant's comment
("Undocumented"). Those values are constructor arguments.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import itertools
import json
import math
import socket
import struct
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal, TypeVar
from urllib.parse import parse_qs, quote, urlsplit

import trio
import trio_websocket
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from wsproto.utilities import LocalProtocolError

from tests.fakes._http import serve_asgi

# --- Socket Mode ------------------------------------------------------------------------------
# "you only have 3 seconds to respond before Slack registers a timeout error" (Bolt docs, B2).
ACK_DEADLINE: Final = 3.0
# Undocumented for Socket Mode. Over HTTP Slack retries an event 3 times; Socket Mode logs show
# `retry_attempt` 1..3 about 3-4 s apart (python-slack-events-api#93, bolt-js#2487), i.e. each
# retry goes out as soon as the previous deadline passes. One entry per retry: the extra wait
# after the missed deadline.
REDELIVERY_DELAYS: Final = (0.0, 0.0, 0.0)
# The value seen in real Socket Mode traces (bolt-js#2487, python-slack-events-api#93, and the
# captured envelopes in slack_sdk's tests). The reference also quotes "http_timeout" from a
# hand-written example in bolt-python#1484; clients should treat the reason as opaque.
RETRY_REASON: Final = "timeout"
# "up to 10 open WebSocket connections" [SM].
MAX_CONNECTIONS: Final = 10
# hello's approximate_connection_time; `debug_reconnects=true` shortens a connection to 360 s [SM].
CONNECTION_LIFETIME: Final = 3600.0
DEBUG_CONNECTION_LIFETIME: Final = 360.0
# Slack pings its clients (node-slack-sdk expects a server ping at least every 30 s).
# Undocumented: the interval, and how long Slack waits for a pong before dropping the socket.
SERVER_PING_INTERVAL: Final = 10.0
SERVER_PONG_TIMEOUT: Final = 20.0
# Undocumented: how long after a `disconnect` frame Slack closes the socket itself. [SM] says a
# `warning` comes "about 10 seconds before the disconnect"; the same grace is used for all.
DISCONNECT_GRACE: Final = 10.0
# How long the fake waits for the client's answer to its close frame before cutting the TCP.
CLOSE_HANDSHAKE_TIMEOUT: Final = 1.0
DisconnectReason = Literal["warning", "refresh_requested", "link_disabled", "too_many_websockets"]
DropMode = Literal["reset", "blackhole"]
T = TypeVar("T")

# --- Web API ----------------------------------------------------------------------------------
# "The `text` field cannot exceed 4,000 characters" (chat.update errors, docs.slack.dev 2026-05;
# seratch in ChatGPT-in-Slack#102: posting >4K text "could result in the error").
TEXT_LIMIT: Final = 4000
MAX_BLOCKS: Final = 50  # "up to 50 blocks in each message"
MAX_ATTACHMENTS: Final = 100  # too_many_attachments: "A maximum of 100 attachments"
ALT_TXT_LIMIT: Final = 1000  # alt_txt_too_large
# response_url: "at most 5 POSTs within 30 minutes" (B3).
RESPONSE_URL_USES: Final = 5
RESPONSE_URL_TTL: Final = 30 * 60.0
BOT_TOKEN_METHODS: Final = frozenset(
    {
        "auth.test",
        "chat.postMessage",
        "chat.postEphemeral",
        "chat.update",
        "files.getUploadURLExternal",
        "files.completeUploadExternal",
        "users.info",
    }
)
APP_TOKEN_METHODS: Final = frozenset({"apps.connections.open"})
KNOWN_BLOCK_TYPES: Final = frozenset(
    {
        "actions",
        "context",
        "context_actions",
        "divider",
        "file",
        "header",
        "image",
        "input",
        "markdown",
        "rich_text",
        "section",
        "table",
        "video",
    }
)


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: `per_minute` calls refill evenly; up to `burst` may be spent at once."""

    per_minute: float
    burst: int


# Tiers count "per method per workspace per app": Tier 3 = 50+/min, Tier 4 = 100+/min (B4).
# Slack tolerates bursts but publishes no size; a tier's burst is its per-minute count.
TIER_3: Final = RateLimit(50, 50)
TIER_4: Final = RateLimit(100, 100)
# chat.postMessage: "one message per second per channel", bursts tolerated (size undocumented).
POST_MESSAGE_PER_CHANNEL: Final = RateLimit(60, 3)
DEFAULT_RATE_LIMITS: Final[Mapping[str, RateLimit | None]] = MappingProxyType(
    {
        # The reference says Tier 1; the method page (docs.slack.dev, 2026-05) says Tier 3.
        "apps.connections.open": TIER_3,
        "auth.test": None,  # "Special rate limits apply"; generous, not modelled
        "chat.postMessage": POST_MESSAGE_PER_CHANNEL,  # keyed by channel
        "chat.postEphemeral": TIER_4,  # https://api.slack.com/methods/chat.postEphemeral
        "chat.update": TIER_3,
        "files.getUploadURLExternal": TIER_4,
        "files.completeUploadExternal": TIER_4,
        "users.info": TIER_4,  # https://docs.slack.dev/reference/methods/users.info
    }
)


# --- What tests look at -----------------------------------------------------------------------
@dataclass(frozen=True)
class Button:
    text: str
    action_id: str | None
    value: str | None
    block_id: str | None
    style: str | None = None
    url: str | None = None


@dataclass
class SlackFile:
    id: str
    filename: str
    length: int
    alt_txt: str | None = None
    snippet_type: str | None = None
    title: str | None = None
    data: bytes | None = None  # None until the bytes are POSTed to the upload URL
    completed: bool = False
    shared_in: list[tuple[str, str]] = field(default_factory=list)  # (channel, message ts)
    mimetype: str = ""


@dataclass(frozen=True)
class Version:
    """One state of a message: the first post, then one per chat.update."""

    at: float
    text: str
    blocks: list[dict[str, Any]] | None


@dataclass
class Message:
    channel: str
    ts: str
    user: str
    text: str
    blocks: list[dict[str, Any]] | None = None
    attachments: list[dict[str, Any]] | None = None
    bot_id: str | None = None
    thread_ts: str | None = None
    reply_broadcast: bool = False
    subtype: str | None = None
    files: list[SlackFile] = field(default_factory=list)
    ephemeral_to: str | None = None  # only this user sees it
    deleted: bool = False
    edited_ts: str | None = None
    history: list[Version] = field(default_factory=list)

    @property
    def edited(self) -> bool:
        return len(self.history) > 1

    @property
    def visible_text(self) -> str:
        """What a person reads: with blocks, `text` is only the notification fallback (B4)."""
        if self.blocks:
            parts = [t for block in self.blocks for t in _block_texts(block)]
        else:
            parts = [self.text] if self.text else []
        parts += [a["text"] for a in self.attachments or [] if isinstance(a.get("text"), str)]
        return "\n".join(parts)

    @property
    def buttons(self) -> list[Button]:
        return [b for block in self.blocks or [] for b in _block_buttons(block)]

    def to_api(self, fake: FakeSlack) -> dict[str, Any]:
        """The message object Slack returns from the Web API and inside events."""
        out: dict[str, Any] = {"type": "message"}
        if self.subtype:
            out["subtype"] = self.subtype
        out["user"] = self.user
        out["text"] = self.text
        out["ts"] = self.ts
        out["team"] = fake.team_id
        if self.bot_id:
            out["bot_id"] = self.bot_id
            out["app_id"] = fake.app_id
            out["bot_profile"] = fake.bot_profile
        if self.blocks is not None:
            out["blocks"] = self.blocks
        if self.attachments:
            out["attachments"] = self.attachments
        if self.thread_ts:
            out["thread_ts"] = self.thread_ts
        if self.files:
            out["files"] = [{"id": f.id, "name": f.filename, "title": f.title} for f in self.files]
            out["upload"] = True
        if self.edited_ts:
            out["edited"] = {"user": self.user, "ts": self.edited_ts}
        return out


@dataclass
class Channel:
    id: str
    name: str
    kind: Literal["channel", "group", "im", "mpim"] = "channel"
    member: bool = True  # is the bot in it
    archived: bool = False
    user: str | None = None  # the other party of an im
    messages: list[Message] = field(default_factory=list)
    # People in the conversation (the bot is `member`): chat.postEphemeral reaches only them.
    members: set[str] = field(default_factory=set)


@dataclass
class Attempt:
    """One send of an envelope. A redelivery is a new attempt with a new envelope_id."""

    envelope: dict[str, Any]
    sent_at: float
    deadline: float
    connection_id: int | None  # None: no connection could take it, so it was lost
    acked_at: float | None = None
    ack_payload: dict[str, Any] | None = None
    timed_out: bool = False
    acked: trio.Event = field(default_factory=trio.Event, repr=False)

    @property
    def envelope_id(self) -> str:
        return str(self.envelope["envelope_id"])

    @property
    def retry_attempt(self) -> int:
        return int(self.envelope.get("retry_attempt", 0))


@dataclass
class Delivery:
    """One payload Slack wants the app to see, across its redeliveries."""

    kind: Literal["events_api", "slash_commands", "interactive"]
    payload: dict[str, Any]
    attempts: list[Attempt] = field(default_factory=list)
    # pending → acked | failed (events: retries exhausted) | timed_out (commands, interactions)
    state: Literal["pending", "acked", "failed", "timed_out"] = "pending"

    @property
    def event_id(self) -> str | None:
        return self.payload.get("event_id")

    @property
    def ack_payload(self) -> dict[str, Any] | None:
        acked = [a for a in self.attempts if a.acked.is_set()]
        return acked[0].ack_payload if acked else None


@dataclass(frozen=True)
class Ack:
    envelope_id: str
    payload: dict[str, Any] | None
    at: float
    on_time: bool
    connection_id: int
    known: bool  # False: no envelope with this id was ever sent
    lost: bool = False  # dropped on Slack's side (`lose_acks`): it settled nothing


@dataclass
class Connection:
    id: int
    ticket: str
    opened_at: float
    ws: trio_websocket.WebSocketConnection = field(repr=False)
    stream: _TappedStream = field(repr=False)
    lifetime: float | None
    ready: bool = False  # hello sent; envelopes may be routed here
    closed_at: float | None = None
    disconnect_reason: str | None = None  # set once a disconnect frame was sent
    pongs: int = 0
    sent: list[dict[str, Any]] = field(default_factory=list)
    received: list[str | bytes] = field(default_factory=list)
    nursery: trio.Nursery | None = field(default=None, repr=False)

    @property
    def is_open(self) -> bool:
        return self.closed_at is None

    @property
    def host(self) -> str:
        return f"applink-{self.id}"


@dataclass(frozen=True)
class ApiCall:
    method: str
    params: dict[str, Any]
    token: str | None
    at: float
    status: int
    body: dict[str, Any]


@dataclass
class UserPost:
    """A message a person wrote, and the envelopes Slack sent the app about it."""

    message: Message
    deliveries: list[Delivery]

    @property
    def ts(self) -> str:
        return self.message.ts


@dataclass
class _ResponseUrl:
    channel: str
    user: str
    created_at: float
    message_ts: str | None = None
    uses: int = 0


@dataclass
class _Injected:
    error: str
    retry_after: int
    http_status: int
    remaining: int


class _ApiError(Exception):
    def __init__(self, code: str, **extra: Any) -> None:
        super().__init__(code)
        self.code = code
        self.extra = extra


class _TappedStream(trio.abc.Stream):
    """A TCP stream the fake can cut (RST) or turn into a black hole.

    trio-websocket's `serve_websocket` hides the stream, so the fake accepts TCP itself and wraps
    each stream with `trio_websocket.wrap_server_stream`. A black hole is a dead peer: nothing
    the server writes arrives and nothing the client writes is read, pongs included, so only a
    client heartbeat can notice it.
    """

    def __init__(self, inner: trio.SocketStream) -> None:
        self._inner = inner
        self.blackholed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.blackholed:
            await trio.lowlevel.checkpoint()
            return
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        while True:
            data = await self._inner.receive_some(max_bytes)
            # EOF still passes: the client gave up on the socket, so the task can end.
            if not self.blackholed or not data:
                return data

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def reset(self) -> None:
        """Close with a TCP RST: the peer sees a broken connection, not a close frame."""
        with contextlib.suppress(OSError):  # already closed
            self._inner.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await self._inner.aclose()


class FakeSlack:
    """One workspace with one app installed, as seen by that app and by the people in it.

    The app only ever sees HTTP (`api_url`) and the WebSocket URLs apps.connections.open hands
    out. Tests use the plain Python side:

    - setup: `add_channel`, `add_user`, `join_channel`, `leave_channel`, `fail_next`,
      `rate_limits`;
    - people: `user_message`, `app_mention`, `slash_command`, `press_button`, `deliver_event`
      (the last three may come from another workspace the app is installed in: `team_id`);
    - Socket Mode: `send_disconnect`, `drop_connection`, `lose_acks`, `connections`,
      `open_connections`, `deliveries` (with their attempts), `acks`;
    - what people see: `messages`, `bot_messages`, `message`, `transcript`, `files`,
      `ephemerals` (what only one person was shown);
    - the Web API log: `calls`, `calls_to`;
    - waiting: `wait_for`, `wait_for_message`, `wait_until_connected`.
    """

    def __init__(
        self,
        *,
        app_token: str = "xapp-fake_app_token",
        bot_token: str = "xoxb-fake_bot_token",
        team_id: str = "T0FAKE",
        team_domain: str = "fakeworkspace",
        team_name: str = "Fake Workspace",
        app_id: str = "A0FAKEAPP",
        bot_id: str = "B0FAKEBOT",
        bot_user_id: str = "U0FAKEBOT",
        bot_name: str = "anycode",
        epoch: float = 1_700_000_000.0,
        ack_deadline: float = ACK_DEADLINE,
        redelivery_delays: Iterable[float] = REDELIVERY_DELAYS,
        retry_reason: str = RETRY_REASON,
        max_connections: int = MAX_CONNECTIONS,
        connection_lifetime: float | None = CONNECTION_LIFETIME,
        server_ping_interval: float | None = SERVER_PING_INTERVAL,
        server_pong_timeout: float = SERVER_PONG_TIMEOUT,
        disconnect_grace: float = DISCONNECT_GRACE,
        rate_limits: Mapping[str, RateLimit | None] | None = None,
        text_limit: int = TEXT_LIMIT,
        echo_bot_messages: bool = True,
        emit_message_replied: bool = False,
    ) -> None:
        """
        `epoch` is the wall-clock time (for `ts` and `event_time`) at which the fake starts, so
        timestamps are deterministic. `echo_bot_messages` sends the bot's own posts and edits
        back as `message` events, as Slack does (checklist D2). `emit_message_replied` also
        sends the parent-update event Slack emits for a thread reply, which arrives without
        its `subtype` (B3: check `thread_ts` instead).
        """
        self.app_token = app_token
        self.bot_token = bot_token
        self.team_id = team_id
        self.team_domain = team_domain
        self.team_name = team_name
        self.app_id = app_id
        self.bot_id = bot_id
        self.bot_user_id = bot_user_id
        self.bot_name = bot_name
        self.ack_deadline = ack_deadline
        self.redelivery_delays = tuple(redelivery_delays)
        self.retry_reason = retry_reason
        self.max_connections = max_connections
        self.connection_lifetime = connection_lifetime
        self.server_ping_interval = server_ping_interval
        self.server_pong_timeout = server_pong_timeout
        self.disconnect_grace = disconnect_grace
        self.rate_limits: dict[str, RateLimit | None] = {
            **DEFAULT_RATE_LIMITS,
            **(rate_limits or {}),
        }
        self.text_limit = text_limit
        self.echo_bot_messages = echo_bot_messages
        self.emit_message_replied = emit_message_replied
        self._epoch = epoch
        # Verification token carried in payloads (deprecated by Slack, still sent).
        self.verification_token = "fakeverificationtoken"

        self.channels: dict[str, Channel] = {}
        self.users: dict[str, str] = {}  # id → name
        # id → (real name, display name) of the user's profile, for users.info.
        self.profiles: dict[str, tuple[str, str]] = {}
        # Whether the bot token holds the `users:read` scope users.info needs.
        self.users_read = True
        self.files: dict[str, SlackFile] = {}
        # Every GET of a url_private: (file id, the bearer token it carried).
        self.file_fetches: list[tuple[str, str | None]] = []
        self.deliveries: list[Delivery] = []
        self.acks: list[Ack] = []
        self.connections: list[Connection] = []
        self._calls: list[ApiCall] = []
        self.tickets_issued: list[str] = []

        self._t0: float | None = None
        self._last_ts_micros = 0
        self._ids = itertools.count(1)
        self._tickets: set[str] = set()  # issued, not yet used
        self._attempts: dict[str, tuple[Delivery, Attempt]] = {}
        self._uploads: dict[str, str] = {}  # upload token → file id
        self._response_urls: dict[str, _ResponseUrl] = {}
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # key → (tokens, at)
        self._injected: dict[str, list[_Injected]] = {}
        self._acks_to_lose = 0
        self._round_robin = itertools.count()
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._echo_send, self._echo_recv = trio.open_memory_channel[dict[str, Any]](1000)
        self._http_port = 0
        self._ws_port = 0
        self._app = Starlette(
            routes=[
                Route("/api/{method}", self._http_api, methods=["GET", "POST"]),
                Route("/upload/v1/{token}", self._http_upload, methods=["POST"]),
                Route("/files-pri/{key}/{name}", self._http_file, methods=["GET"]),
                Route("/response/{token}", self._http_response_url, methods=["POST"]),
            ]
        )

    # --- lifecycle ----------------------------------------------------------------------------
    async def serve(
        self, *, task_status: trio.TaskStatus[FakeSlack] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve HTTP and Socket Mode until cancelled. Use ``await nursery.start(fake.serve)``."""
        self._t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            served = await nursery.start(serve_asgi, self._app)
            self._http_port = served.port
            serve_tcp = functools.partial(trio.serve_tcp, self._on_tcp, 0, host="127.0.0.1")
            listeners = await nursery.start(serve_tcp)
            self._ws_port = listeners[0].socket.getsockname()[1]
            nursery.start_soon(self._echo_loop)
            task_status.started(self)

    async def start(self, nursery: trio.Nursery) -> str:
        """Serve inside `nursery` (as FakeTelegram.start does); return the base URL."""
        await nursery.start(self.serve)
        return self.base_url

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._http_port}"

    @property
    def api_url(self) -> str:
        """The counterpart of ``https://slack.com/api/``: append the method name."""
        return f"{self.base_url}/api/"

    # --- workspace setup ----------------------------------------------------------------------
    def add_channel(
        self,
        name: str,
        *,
        id: str | None = None,
        kind: Literal["channel", "group", "im", "mpim"] = "channel",
        member: bool = True,
        archived: bool = False,
        user: str | None = None,
        members: Iterable[str] = (),
    ) -> str:
        """Create a conversation and return its id. For an im, `user` is the person.

        `members` are the people in it; whoever posts, runs a command or presses a button in a
        conversation is in it too (nobody can act in one they are not in).
        """
        prefix = {"channel": "C", "group": "G", "im": "D", "mpim": "G"}[kind]
        channel_id = id or f"{prefix}{next(self._ids):09d}"
        chan = Channel(channel_id, name, kind, member, archived, user)
        self.channels[channel_id] = chan
        for person in (*members, *([user] if user else [])):
            self._ensure_user(person)
            chan.members.add(person)
        return channel_id

    def join_channel(self, channel: str, user: str) -> None:
        self._ensure_user(user)
        self._channel(channel).members.add(user)

    def leave_channel(self, channel: str, user: str) -> None:
        self._channel(channel).members.discard(user)

    def add_user(
        self, name: str, *, id: str | None = None, real_name: str = "", display_name: str = ""
    ) -> str:
        user_id = id or f"U{next(self._ids):09d}"
        self.users[user_id] = name
        self.profiles[user_id] = (real_name, display_name)
        return user_id

    # --- what people do -----------------------------------------------------------------------
    async def user_message(
        self, channel: str, user: str, text: str, *, thread_ts: str | None = None
    ) -> UserPost:
        """A person posts; the app gets `message`, plus `app_mention` if the bot is mentioned."""
        chan = self._channel(channel)
        self.join_channel(chan.id, user)
        message = Message(
            channel=chan.id, ts=self._next_ts(), user=user, text=text, thread_ts=thread_ts
        )
        message.history.append(Version(self._now(), text, None))
        chan.messages.append(message)
        self._notify()
        deliveries: list[Delivery] = []
        if not chan.member:
            return UserPost(message, deliveries)
        client_msg_id = str(uuid.uuid4())
        blocks = [_rich_text_block(text)]
        event: dict[str, Any] = {
            "client_msg_id": client_msg_id,
            "type": "message",
            "text": text,
            "user": user,
            "ts": message.ts,
            "blocks": blocks,
            "team": self.team_id,
            "channel": chan.id,
            "event_ts": message.ts,
            "channel_type": chan.kind,
        }
        parent = self._find(chan, thread_ts) if thread_ts else None
        if thread_ts:
            event["thread_ts"] = thread_ts
            if parent:
                event["parent_user_id"] = parent.user
        deliveries.append(await self._deliver_event(event))
        if f"<@{self.bot_user_id}>" in text and chan.kind != "im":
            mention = {
                k: v for k, v in event.items() if k not in ("channel_type", "parent_user_id")
            }
            mention["type"] = "app_mention"
            deliveries.append(await self._deliver_event(mention))
        if thread_ts and parent and self.emit_message_replied:
            deliveries.append(await self._deliver_event(self._message_replied_event(chan, parent)))
        return UserPost(message, deliveries)

    async def share_files(
        self,
        channel: str,
        user: str,
        text: str,
        files: Sequence[tuple[str, str, bytes]],
        *,
        thread_ts: str | None = None,
    ) -> UserPost:
        """A person shares files (name, mimetype, bytes) with a message: the app gets a
        `message` event with subtype `file_share` and a `files` list whose `url_private` serves
        the bytes only with the bot token in an `Authorization: Bearer` header
        (https://api.slack.com/types/file#authentication, https://api.slack.com/events/message/file_share)."""
        chan = self._channel(channel)
        self.join_channel(chan.id, user)
        shared: list[SlackFile] = []
        for name, mimetype, data in files:
            file_id = f"F{next(self._ids):010d}"
            entry = SlackFile(file_id, name, len(data), title=name, data=data, completed=True)
            entry.mimetype = mimetype
            self.files[file_id] = entry
            shared.append(entry)
        message = Message(
            channel=chan.id,
            ts=self._next_ts(),
            user=user,
            text=text,
            thread_ts=thread_ts,
            subtype="file_share",
            files=shared,
        )
        message.history.append(Version(self._now(), text, None))
        chan.messages.append(message)
        for entry in shared:
            entry.shared_in.append((chan.id, message.ts))
        self._notify()
        deliveries: list[Delivery] = []
        if not chan.member:
            return UserPost(message, deliveries)
        event: dict[str, Any] = {
            "type": "message",
            "subtype": "file_share",
            "text": text,
            "user": user,
            "ts": message.ts,
            "files": [self._file_object(entry) for entry in shared],
            "upload": False,
            "display_as_bot": False,
            "team": self.team_id,
            "channel": chan.id,
            "event_ts": message.ts,
            "channel_type": chan.kind,
        }
        if thread_ts:
            event["thread_ts"] = thread_ts
        deliveries.append(await self._deliver_event(event))
        if f"<@{self.bot_user_id}>" in text and chan.kind != "im":
            # The mention comes again as app_mention, without the subtype but with the files.
            mention = {k: v for k, v in event.items() if k not in ("channel_type", "subtype")}
            mention["type"] = "app_mention"
            deliveries.append(await self._deliver_event(mention))
        return UserPost(message, deliveries)

    def _file_object(self, entry: SlackFile) -> dict[str, Any]:
        """A file object (https://api.slack.com/types/file) as events carry it."""
        key = f"{self.team_id}-{entry.id}"
        private = f"{self.base_url}/files-pri/{key}/{quote(entry.filename)}"
        return {
            "id": entry.id,
            "created": int(self._epoch + self._now()),
            "name": entry.filename,
            "title": entry.title or entry.filename,
            "mimetype": entry.mimetype,
            "filetype": entry.filename.rpartition(".")[2] if "." in entry.filename else "binary",
            "user": "",
            "size": entry.length,
            "mode": "hosted",
            "is_external": False,
            "url_private": private,
            "url_private_download": f"{private}?download=1",
        }

    async def _http_file(self, request: Request) -> Response:
        """`url_private`: the bytes for a request with a bot token; without one Slack answers
        with a redirect to its sign-in page, which is what the fake does too."""
        team, _, file_id = request.path_params["key"].partition("-")
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else None
        entry = self.files.get(file_id)
        self.file_fetches.append((file_id, token))
        self._notify()
        if token != self.bot_token:
            location = f"https://{self.team_domain}.slack.com/?redir=%2Ffiles-pri%2F{file_id}"
            return Response(status_code=302, headers={"location": location})
        if team != self.team_id or entry is None or entry.data is None:
            return PlainTextResponse("Not Found", status_code=404)
        return Response(entry.data, media_type=entry.mimetype or "application/octet-stream")

    async def app_mention(
        self, channel: str, user: str, text: str, *, thread_ts: str | None = None
    ) -> UserPost:
        """A person writes ``<@bot> text``: Slack sends both `message` and `app_mention`."""
        mention = f"<@{self.bot_user_id}>"
        full = text if mention in text else f"{mention} {text}"
        return await self.user_message(channel, user, full, thread_ts=thread_ts)

    async def deliver_event(self, event: dict[str, Any], *, team_id: str | None = None) -> Delivery:
        """Send any Events API `event` (wrapped in an event_callback envelope).

        `team_id` makes it come from another workspace the app is installed in: one Socket Mode
        app receives the events of all its installations.
        """
        return await self._deliver_event(dict(event), team_id=team_id)

    async def slash_command(
        self,
        channel: str,
        user: str,
        command: str,
        text: str = "",
        *,
        team_id: str | None = None,
    ) -> Delivery:
        """A person runs `command`; `team_id` as in `deliver_event`."""
        chan = self._channel(channel)
        team = team_id or self.team_id
        self._acting(chan, user, team)
        payload = {
            "token": self.verification_token,
            "team_id": team,
            "team_domain": self.team_domain if team == self.team_id else team.lower(),
            "channel_id": chan.id,
            "channel_name": chan.name if chan.kind != "im" else "directmessage",
            "user_id": user,
            "user_name": self.users[user],
            "command": command,
            "text": text,
            "api_app_id": self.app_id,
            "is_enterprise_install": "false",
            "response_url": self._new_response_url(chan.id, user),
            "trigger_id": self._trigger_id(),
        }
        return await self._deliver("slash_commands", payload)

    async def press_button(
        self,
        channel: str,
        user: str,
        message_ts: str,
        *,
        value: str | None = None,
        action_id: str | None = None,
        team_id: str | None = None,
    ) -> Delivery:
        """A person clicks a button that is on the message now (it must match value/action_id).

        `team_id` as in `deliver_event`: then `team.id` and `user.team_id` name that workspace.
        """
        chan = self._channel(channel)
        team = team_id or self.team_id
        self._acting(chan, user, team)
        message = self._find(chan, message_ts)
        if message is None or message.deleted:
            raise LookupError(f"no message {message_ts} in {chan.id}")
        matches = [
            b
            for b in message.buttons
            if (value is None or b.value == value)
            and (action_id is None or b.action_id == action_id)
        ]
        if not matches:
            raise LookupError(f"no button value={value!r} action_id={action_id!r} on {message_ts}")
        button = matches[0]
        action: dict[str, Any] = {
            "action_id": button.action_id,
            "block_id": button.block_id,
            "text": {"type": "plain_text", "text": button.text, "emoji": True},
            "type": "button",
            "action_ts": self._next_ts(),
        }
        if button.value is not None:
            action["value"] = button.value
        if button.style:
            action["style"] = button.style
        container: dict[str, Any] = {
            "type": "message",
            "message_ts": message.ts,
            "channel_id": chan.id,
            "is_ephemeral": message.ephemeral_to is not None,
        }
        if message.thread_ts:
            container["thread_ts"] = message.thread_ts
        payload: dict[str, Any] = {
            "type": "block_actions",
            "user": {
                "id": user,
                "username": self.users[user],
                "name": self.users[user],
                "team_id": team,
            },
            "api_app_id": self.app_id,
            "token": self.verification_token,
            "container": container,
            "trigger_id": self._trigger_id(),
            "team": {
                "id": team,
                "domain": self.team_domain if team == self.team_id else team.lower(),
            },
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": chan.id, "name": chan.name},
            "message": message.to_api(self),
            "state": {"values": {}},
            "response_url": self._new_response_url(chan.id, user, message.ts),
            "actions": [action],
        }
        return await self._deliver("interactive", payload)

    # --- connection control -------------------------------------------------------------------
    async def send_disconnect(
        self,
        reason: DisconnectReason = "refresh_requested",
        connection: Connection | None = None,
        *,
        close_after: float | Literal["default"] | None = "default",
    ) -> None:
        """Send a `disconnect` frame to `connection` (default: every open one).

        Slack then stops routing envelopes to it and closes it after `close_after` seconds
        (default: the fake's `disconnect_grace`; None leaves it open).
        """
        grace = self.disconnect_grace if close_after == "default" else close_after
        targets = (
            [connection] if connection else [c for c in self.connections if c.ready and c.is_open]
        )
        for conn in targets:
            await self._disconnect(conn, reason, grace)

    async def drop_connection(
        self, connection: Connection | None = None, *, mode: DropMode = "reset"
    ) -> None:
        """Kill `connection` (default: every open one) without a close frame.

        "reset" sends a TCP RST, which the client notices at once. "blackhole" keeps the socket
        open but silent both ways, like a dead network path: only a heartbeat notices it. Slack
        still routes envelopes into the black hole until its own pings time out.
        """
        targets = [connection] if connection else [c for c in self.connections if c.is_open]
        for conn in targets:
            if mode == "blackhole":
                conn.stream.blackholed = True
            else:
                await conn.stream.reset()
        self._notify()

    def lose_acks(self, times: int = 1) -> None:
        """Lose the next `times` acks of known envelopes on Slack's side.

        The app acked, but Slack never registers it (the frame was lost between its edge and
        the event router), so the envelope counts as unacknowledged: an event is redelivered
        after the deadline with a new envelope_id and `retry_attempt` + 1 (B2), a slash command
        or button press times out. Such acks are in `acks` with `lost=True`.
        """
        self._acks_to_lose += times

    @property
    def open_connections(self) -> list[Connection]:
        return [c for c in self.connections if c.ready and c.is_open]

    # --- failures -----------------------------------------------------------------------------
    def fail_next(
        self,
        method: str,
        error: str = "ratelimited",
        *,
        times: int = 1,
        retry_after: int = 1,
        http_status: int | None = None,
    ) -> None:
        """Make the next `times` calls of `method` fail.

        "ratelimited" answers HTTP 429 with `Retry-After: retry_after`, as Slack does; any other
        code is an HTTP 200 `{"ok":false,"error":error}` unless `http_status` says otherwise.
        """
        status = http_status or (429 if error == "ratelimited" else 200)
        self._injected.setdefault(method, []).append(_Injected(error, retry_after, status, times))

    # --- views --------------------------------------------------------------------------------
    def messages(
        self,
        channel: str,
        *,
        thread_ts: str | None = None,
        viewer: str | None = None,
    ) -> list[Message]:
        """Messages in `channel` in order, without deleted ones.

        With `thread_ts`, only that thread (parent first). With `viewer`, only what that person
        sees: ephemeral messages meant for someone else are left out.
        """
        out = []
        for m in self._channel(channel).messages:
            if m.deleted:
                continue
            if viewer is not None and m.ephemeral_to not in (None, viewer):
                continue
            if thread_ts is not None and thread_ts not in (m.ts, m.thread_ts):
                continue
            out.append(m)
        return out

    def message(self, channel: str, ts: str) -> Message:
        found = self._find(self._channel(channel), ts)
        if found is None:
            raise LookupError(f"no message {ts} in {channel}")
        return found

    def transcript(self, channel: str) -> list[str]:
        """One line per visible message, for assertions and failure output."""
        lines = []
        for m in self.messages(channel):
            who = self.bot_name if m.bot_id else self.users.get(m.user, m.user)
            line = f"{m.ts} {who}: {m.visible_text}"
            if m.buttons:
                line += (
                    " ["
                    + " | ".join(f"{b.text}({b.value or b.action_id})" for b in m.buttons)
                    + "]"
                )
            if m.files:
                line += " [files: " + ", ".join(f.filename for f in m.files) + "]"
            if m.thread_ts and m.thread_ts != m.ts:
                line += f" (in thread {m.thread_ts})"
            if m.ephemeral_to:
                line += f" (only visible to {m.ephemeral_to})"
            if m.edited:
                line += " (edited)"
            lines.append(line)
        return lines

    def bot_messages(self, channel: str) -> list[Message]:
        return [m for m in self.messages(channel) if m.bot_id]

    def ephemerals(self, user: str, channel: str | None = None) -> list[Message]:
        """Messages only `user` was shown (chat.postEphemeral, response_url replies, Slackbot),
        in every conversation or in `channel`, oldest first. Nobody else ever sees these."""
        chans = [self._channel(channel)] if channel else list(self.channels.values())
        found = [m for c in chans for m in c.messages if m.ephemeral_to == user and not m.deleted]
        return sorted(found, key=lambda m: float(m.ts))

    @property
    def calls(self) -> list[ApiCall]:
        """Every Web API call, answered or refused, in order."""
        return list(self._calls)

    def calls_to(self, method: str) -> list[ApiCall]:
        return [c for c in self._calls if c.method == method]

    async def wait_for(self, predicate: Callable[[], T | None]) -> T:
        """Wait until `predicate()` is truthy and return its value.

        Re-checked after every change the fake sees (an API call, a frame, a timer); no polling.
        Wrap in `trio.fail_after` to bound the wait.
        """
        while True:
            changed = self._changed
            value = predicate()
            if value:
                return value
            await changed.wait()

    async def wait_for_message(
        self, channel: str, containing: str = "", *, from_bot: bool = True
    ) -> Message:
        """The first message (by default the bot's) whose visible text has `containing`."""
        return await self.wait_for(
            lambda: next(
                (
                    m
                    for m in self.messages(channel)
                    if bool(m.bot_id) == from_bot and containing in m.visible_text
                ),
                None,
            )
        )

    async def wait_until_connected(self) -> Connection:
        """Until the app has a Socket Mode connection that said hello."""
        return await self.wait_for(lambda: next(iter(self.open_connections), None))

    # --- internals: time and ids --------------------------------------------------------------
    def _now(self) -> float:
        return trio.current_time()

    def _epoch_micros(self, at: float) -> int:
        start = self._t0 if self._t0 is not None else at
        return round((self._epoch + (at - start)) * 1_000_000)

    def _next_ts(self) -> str:
        """Slack ts: "seconds.micros", unique and increasing within the workspace."""
        micros = max(self._epoch_micros(self._now()), self._last_ts_micros + 1)
        self._last_ts_micros = micros
        return _format_ts(micros)

    def _trigger_id(self) -> str:
        return f"{next(self._ids)}.{self.team_id[1:]}.{uuid.uuid4().hex}"

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    @property
    def bot_profile(self) -> dict[str, Any]:
        return {
            "id": self.bot_id,
            "app_id": self.app_id,
            "name": self.bot_name,
            "deleted": False,
            "team_id": self.team_id,
            "icons": {},
        }

    def _ensure_user(self, user: str) -> None:
        self.users.setdefault(user, user.lower())

    def _acting(self, chan: Channel, user: str, team: str) -> None:
        """Someone acts in `chan`, so they are in it; the channels of another workspace the app
        is installed in are not modelled."""
        if team == self.team_id:
            self.join_channel(chan.id, user)
        else:
            self._ensure_user(user)

    def _channel(self, channel: str) -> Channel:
        chan = self._resolve_channel(channel)
        if chan is None:
            raise LookupError(f"no channel {channel}")
        return chan

    def _resolve_channel(self, ref: str) -> Channel | None:
        """A channel id, a name with or without '#', or a user id (their DM with the app)."""
        if ref in self.channels:
            return self.channels[ref]
        name = ref.removeprefix("#")
        for chan in self.channels.values():
            if (chan.kind != "im" and chan.name == name) or (
                chan.kind == "im" and chan.user == ref
            ):
                return chan
        return None

    @staticmethod
    def _find(chan: Channel, ts: str | None) -> Message | None:
        return next((m for m in chan.messages if m.ts == ts), None)

    # --- internals: Socket Mode delivery ------------------------------------------------------
    def _event_payload(self, event: dict[str, Any], team_id: str | None = None) -> dict[str, Any]:
        team = team_id or self.team_id
        event.setdefault("team", team)
        event.setdefault("event_ts", event.get("ts") or self._next_ts())
        context = {"et": event.get("type"), "tid": team, "cid": event.get("channel")}
        encoded = base64.urlsafe_b64encode(json.dumps(context).encode()).decode().rstrip("=")
        return {
            "token": self.verification_token,
            "team_id": team,
            "context_team_id": team,
            "api_app_id": self.app_id,
            "event": event,
            "type": "event_callback",
            "event_id": f"Ev{next(self._ids):010d}",
            "event_time": self._epoch_micros(self._now()) // 1_000_000,
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": team,
                    "user_id": self.bot_user_id,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
            "event_context": f"4-{encoded}",
        }

    async def _deliver_event(
        self, event: dict[str, Any], *, team_id: str | None = None
    ) -> Delivery:
        return await self._deliver("events_api", self._event_payload(event, team_id))

    async def _deliver(
        self, kind: Literal["events_api", "slash_commands", "interactive"], payload: dict[str, Any]
    ) -> Delivery:
        if self._nursery is None:
            raise RuntimeError("FakeSlack is not serving; start it with nursery.start(fake.serve)")
        delivery = Delivery(kind, payload)
        self.deliveries.append(delivery)
        await self._send_attempt(delivery, 0, "")
        self._nursery.start_soon(self._watch, delivery)
        return delivery

    async def _send_attempt(
        self, delivery: Delivery, retry_attempt: int, retry_reason: str
    ) -> None:
        envelope: dict[str, Any] = {
            "envelope_id": str(uuid.uuid4()),
            "payload": delivery.payload,
            "type": delivery.kind,
            # Commands and interactions may be answered in the ack [SM]; events may not.
            "accepts_response_payload": delivery.kind != "events_api",
        }
        if delivery.kind == "events_api":
            envelope["retry_attempt"] = retry_attempt
            envelope["retry_reason"] = retry_reason
        now = self._now()
        conn = self._pick_connection()
        attempt = Attempt(envelope, now, now + self.ack_deadline, conn.id if conn else None)
        delivery.attempts.append(attempt)
        self._attempts[attempt.envelope_id] = (delivery, attempt)
        self._notify()
        if conn is not None:
            # Lost with the socket if it closes now; the deadline then passes unacked.
            with contextlib.suppress(trio_websocket.ConnectionClosed):
                await self._send_frame(conn, envelope)

    def _pick_connection(self) -> Connection | None:
        """Any ready connection that was not told to go away [SM: "sent to *any*"]."""
        usable = [
            c for c in self.connections if c.ready and c.is_open and c.disconnect_reason is None
        ]
        if not usable:
            return None
        return usable[next(self._round_robin) % len(usable)]

    async def _watch(self, delivery: Delivery) -> None:
        while True:
            attempt = delivery.attempts[-1]
            with trio.move_on_at(attempt.deadline):
                await attempt.acked.wait()
            if attempt.acked.is_set():
                delivery.state = "acked"
                self._notify()
                return
            attempt.timed_out = True
            retries = attempt.retry_attempt
            if delivery.kind == "events_api" and retries < len(self.redelivery_delays):
                await trio.sleep(self.redelivery_delays[retries])
                await self._send_attempt(delivery, retries + 1, self.retry_reason)
                continue
            if delivery.kind == "events_api":
                delivery.state = "failed"
            else:
                delivery.state = "timed_out"
                if delivery.kind == "slash_commands":
                    # What Slackbot shows the person (bolt-js#1727, OpsKnight#256).
                    command = delivery.payload["command"]
                    self._add_ephemeral(
                        delivery.payload["channel_id"],
                        delivery.payload["user_id"],
                        f'{command} failed with the error "operation_timeout"',
                        user="USLACKBOT",
                    )
            self._notify()
            return

    def _on_client_frame(self, conn: Connection, raw: str | bytes) -> None:
        conn.received.append(raw)
        try:
            frame = json.loads(raw)
        except ValueError:
            return
        if not isinstance(frame, dict) or "envelope_id" not in frame:
            return
        envelope_id = str(frame["envelope_id"])
        payload = frame.get("payload")
        now = self._now()
        found = self._attempts.get(envelope_id)
        on_time = False
        lost = found is not None and self._acks_to_lose > 0
        if lost:
            self._acks_to_lose -= 1
            assert found is not None
            on_time = now <= found[1].deadline
        elif found is not None:
            delivery, attempt = found
            if attempt.acked_at is None:
                attempt.acked_at = now
                attempt.ack_payload = payload if isinstance(payload, dict) else None
                on_time = not attempt.timed_out and now <= attempt.deadline
                if on_time:
                    attempt.acked.set()
                    if delivery.kind == "slash_commands" and attempt.ack_payload:
                        self._show_command_response(delivery.payload, attempt.ack_payload)
        self.acks.append(
            Ack(envelope_id, payload, now, on_time, conn.id, found is not None, lost=lost)
        )
        self._notify()

    def _show_command_response(self, command: dict[str, Any], response: dict[str, Any]) -> None:
        """The ack payload of a slash command is the reply the person sees [SM]."""
        if not response.get("text") and not response.get("blocks"):
            return
        chan = self._channel(command["channel_id"])
        in_channel = response.get("response_type") == "in_channel"
        message = Message(
            channel=chan.id,
            ts=self._next_ts(),
            user=self.bot_user_id,
            text=str(response.get("text") or ""),
            blocks=response.get("blocks"),
            bot_id=self.bot_id,
            ephemeral_to=None if in_channel else command["user_id"],
        )
        message.history.append(Version(self._now(), message.text, message.blocks))
        chan.messages.append(message)

    def _add_ephemeral(self, channel: str, to: str, text: str, *, user: str) -> None:
        chan = self._channel(channel)
        message = Message(
            channel=chan.id, ts=self._next_ts(), user=user, text=text, ephemeral_to=to
        )
        message.history.append(Version(self._now(), text, None))
        chan.messages.append(message)

    def _message_replied_event(self, chan: Channel, parent: Message) -> dict[str, Any]:
        replies = [m for m in chan.messages if m.thread_ts == parent.ts and m.ts != parent.ts]
        inner = parent.to_api(self)
        inner["thread_ts"] = parent.ts
        inner["reply_count"] = len(replies)
        inner["latest_reply"] = replies[-1].ts if replies else parent.ts
        ts = self._next_ts()
        # Slack's documented bug: no "subtype": "message_replied" over the Events API.
        return {
            "type": "message",
            "message": inner,
            "hidden": True,
            "channel": chan.id,
            "ts": ts,
            "event_ts": ts,
        }

    async def _echo_loop(self) -> None:
        """Deliver the bot's own messages back in the order they happened."""
        async for event in self._echo_recv:
            await self._deliver_event(event)

    def _echo(self, chan: Channel, event: dict[str, Any]) -> None:
        if self.echo_bot_messages and chan.member:
            event["channel"] = chan.id
            event["channel_type"] = chan.kind
            self._echo_send.send_nowait(event)

    # --- internals: Socket Mode connections ---------------------------------------------------
    async def _on_tcp(self, stream: trio.SocketStream) -> None:
        tapped = _TappedStream(stream)
        try:
            async with trio.open_nursery() as nursery:
                request = await trio_websocket.wrap_server_stream(nursery, tapped)
                query = parse_qs(urlsplit(request.path).query)
                ticket = (query.get("ticket") or [""])[0]
                if not request.path.startswith("/link") or ticket not in self._tickets:
                    # A reused or made-up ticket (undocumented: Slack's exact answer).
                    await request.reject(401, body=b"invalid ticket")
                    await tapped.aclose()
                    nursery.cancel_scope.cancel()
                    return
                self._tickets.discard(ticket)
                debug = query.get("debug_reconnects") == ["true"]
                ws = await request.accept()
                lifetime = DEBUG_CONNECTION_LIFETIME if debug else self.connection_lifetime
                conn = Connection(next(self._ids), ticket, self._now(), ws, tapped, lifetime)
                self.connections.append(conn)
                try:
                    await self._run_connection(conn)
                finally:
                    conn.closed_at = self._now()
                    self._notify()
                    with trio.CancelScope(shield=True):
                        await self._close(conn)
                    nursery.cancel_scope.cancel()
        except* (
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            trio_websocket.ConnectionClosed,
            # trio-websocket answers a client's ping that arrives while the server is closing
            # with a pong wsproto refuses (python-trio/trio-websocket#184). Slack does not fall
            # over when a client pings during a close, so neither may the fake.
            LocalProtocolError,
        ):
            pass  # the client went away mid-handshake

    async def _close(self, conn: Connection) -> None:
        """Close frame and handshake if the peer answers; otherwise cut the TCP."""
        if not conn.stream.blackholed:
            with trio.move_on_after(CLOSE_HANDSHAKE_TIMEOUT):
                await conn.ws.aclose()
                return
        await conn.stream.reset()

    async def _run_connection(self, conn: Connection) -> None:
        async with trio.open_nursery() as nursery:
            conn.nursery = nursery
            try:
                if len(self.open_connections) >= self.max_connections:
                    # Undocumented what Slack does on the 11th; the SDK mocks know this reason.
                    await self._send_frame(
                        conn, self._disconnect_frame(conn, "too_many_websockets")
                    )
                    return
                hello = {
                    "type": "hello",
                    "connection_info": {"app_id": self.app_id},
                    "num_connections": len(self.open_connections) + 1,
                    "debug_info": {
                        "host": conn.host,
                        "started": _format_started(self._epoch_micros(conn.opened_at)),
                        "build_number": 54,
                        "approximate_connection_time": int(conn.lifetime or CONNECTION_LIFETIME),
                    },
                }
                await self._send_frame(conn, hello)
                conn.ready = True
                self._notify()
                if self.server_ping_interval:
                    nursery.start_soon(self._ping_loop, conn, self.server_ping_interval)
                if conn.lifetime:
                    nursery.start_soon(self._expire, conn, conn.lifetime)
                while True:
                    self._on_client_frame(conn, await conn.ws.get_message())
            except trio_websocket.ConnectionClosed:
                pass
            finally:
                nursery.cancel_scope.cancel()

    async def _ping_loop(self, conn: Connection, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            with trio.move_on_after(self.server_pong_timeout):
                try:
                    await conn.ws.ping()
                except trio_websocket.ConnectionClosed:
                    return
                conn.pongs += 1
                self._notify()
                continue
            # No pong: Slack gives up on the socket.
            await conn.stream.reset()
            return

    async def _expire(self, conn: Connection, lifetime: float) -> None:
        await trio.sleep(lifetime)
        if conn.disconnect_reason is None:
            await self._disconnect(conn, "refresh_requested", self.disconnect_grace)

    def _disconnect_frame(self, conn: Connection, reason: str) -> dict[str, Any]:
        return {
            "type": "disconnect",
            "reason": reason,
            "debug_info": {"host": f"wss-{conn.id}.slack.com"},
        }

    async def _disconnect(self, conn: Connection, reason: str, close_after: float | None) -> None:
        conn.disconnect_reason = reason
        self._notify()
        try:
            await self._send_frame(conn, self._disconnect_frame(conn, reason))
        except trio_websocket.ConnectionClosed:
            return
        if close_after is not None and conn.nursery is not None:
            conn.nursery.start_soon(self._close_later, conn, close_after)

    async def _close_later(self, conn: Connection, delay: float) -> None:
        await trio.sleep(delay)
        await self._close(conn)

    async def _send_frame(self, conn: Connection, frame: dict[str, Any]) -> None:
        conn.sent.append(frame)
        await conn.ws.send_message(json.dumps(frame))

    # --- internals: Web API over HTTP ---------------------------------------------------------
    async def _http_api(self, request: Request) -> Response:
        method = request.path_params["method"]
        header = request.headers.get("authorization", "")
        header_token = header[7:].strip() if header.lower().startswith("bearer ") else None
        params: dict[str, Any] = dict(request.query_params)
        is_json = False
        try:
            is_json = await self._read_params(request, params)
        except _ApiError as err:
            return self._record(method, params, header_token, 200, {"ok": False, "error": err.code})
        param_token = params.pop("token", None)
        token = header_token or param_token

        if method not in BOT_TOKEN_METHODS | APP_TOKEN_METHODS:
            body = {"ok": False, "error": "unknown_method", "req_method": method}
            return self._record(method, params, token, 200, body)
        if method in APP_TOKEN_METHODS and request.method != "POST":
            return self._record(
                method, params, token, 200, {"ok": False, "error": "insecure_request"}
            )
        auth_error = self._auth_error(method, header_token, param_token)
        if auth_error:
            return self._record(method, params, token, 200, {"ok": False, "error": auth_error})

        injected = self._take_injected(method)
        if injected is not None:
            headers = (
                {"Retry-After": str(injected.retry_after)} if injected.http_status == 429 else {}
            )
            body = {"ok": False, "error": injected.error}
            return self._record(method, params, token, injected.http_status, body, headers)
        retry_after = self._take_rate(method, params)
        if retry_after is not None:
            body = {"ok": False, "error": "ratelimited"}
            return self._record(method, params, token, 429, body, {"Retry-After": str(retry_after)})

        handler = {
            "apps.connections.open": self._apps_connections_open,
            "auth.test": self._auth_test,
            "chat.postMessage": self._chat_post_message,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.update": self._chat_update,
            "files.getUploadURLExternal": self._files_get_upload_url_external,
            "files.completeUploadExternal": self._files_complete_upload_external,
            "users.info": self._users_info,
        }[method]
        try:
            body = handler(params, is_json)
        except _ApiError as err:
            body = {"ok": False, "error": err.code, **err.extra}
        return self._record(method, params, token, 200, body)

    async def _read_params(self, request: Request, params: dict[str, Any]) -> bool:
        """Merge the body into `params` (query, form, multipart or JSON, as Slack accepts)."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/json":
            raw = await request.body()
            if not raw:
                return True
            try:
                body = json.loads(raw)
            except ValueError:
                raise _ApiError("invalid_json") from None
            if not isinstance(body, dict):
                raise _ApiError("invalid_json")
            # A JSON body cannot carry the token; it must be in the Authorization header.
            body.pop("token", None)
            params.update(body)
            return True
        if ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
            form = await request.form()
            for key, value in form.multi_items():
                if not isinstance(value, UploadFile):
                    params[key] = value
        return False

    def _auth_error(
        self, method: str, header_token: str | None, param_token: str | None
    ) -> str | None:
        if method in APP_TOKEN_METHODS:
            # "Remember to send the token in the Authorization header, not as a parameter" [SM];
            # a form/query token is refused with invalid_auth (python-slack-sdk#1877).
            if header_token is None:
                return "invalid_auth" if param_token else "not_authed"
            if header_token == self.app_token:
                return None
            return "not_allowed_token_type" if header_token == self.bot_token else "invalid_auth"
        token = header_token or param_token
        if token is None:
            return "not_authed"
        if token == self.bot_token:
            return None
        return "not_allowed_token_type" if token == self.app_token else "invalid_auth"

    def _take_injected(self, method: str) -> _Injected | None:
        queue = self._injected.get(method)
        if not queue:
            return None
        head = queue[0]
        head.remaining -= 1
        if head.remaining <= 0:
            queue.pop(0)
        return head

    def _take_rate(self, method: str, params: dict[str, Any]) -> int | None:
        """Spend one call from the method's bucket; return Retry-After seconds if empty."""
        limit = self.rate_limits.get(method)
        if limit is None:
            return None
        scope = ""
        if method == "chat.postMessage":
            chan = self._resolve_channel(str(params.get("channel", "")))
            scope = chan.id if chan else str(params.get("channel", ""))
        rate = limit.per_minute / 60.0
        now = self._now()
        tokens, at = self._buckets.get((method, scope), (float(limit.burst), now))
        tokens = min(float(limit.burst), tokens + (now - at) * rate)
        if tokens >= 1.0:
            self._buckets[(method, scope)] = (tokens - 1.0, now)
            return None
        self._buckets[(method, scope)] = (tokens, now)
        return max(1, math.ceil((1.0 - tokens) / rate))

    def _record(
        self,
        method: str,
        params: dict[str, Any],
        token: str | None,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> Response:
        self._calls.append(ApiCall(method, params, token, self._now(), status, body))
        self._notify()
        return JSONResponse(
            body, status_code=status, headers=headers, media_type="application/json; charset=utf-8"
        )

    # --- Web API methods ----------------------------------------------------------------------
    def _apps_connections_open(self, params: dict[str, Any], is_json: bool) -> dict[str, Any]:
        ticket = str(uuid.uuid4())
        self._tickets.add(ticket)
        self.tickets_issued.append(ticket)
        url = f"ws://127.0.0.1:{self._ws_port}/link/?ticket={ticket}&app_id={self.app_id}"
        return {"ok": True, "url": url}

    def _auth_test(self, params: dict[str, Any], is_json: bool) -> dict[str, Any]:
        return {
            "ok": True,
            "url": f"https://{self.team_domain}.slack.com/",
            "team": self.team_name,
            "user": self.bot_name,
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _users_info(self, params: dict[str, Any], is_json: bool) -> dict[str, Any]:
        """users.info (https://docs.slack.dev/reference/methods/users.info): the user object
        with its profile; `missing_scope` naming `users:read` without it."""
        if not self.users_read:
            raise _ApiError("missing_scope", needed="users:read", provided="chat:write")
        user_id = str(params.get("user") or "")
        if user_id not in self.users:
            raise _ApiError("user_not_found")
        real, display = self.profiles.get(user_id, ("", ""))
        return {
            "ok": True,
            "user": {
                "id": user_id,
                "team_id": self.team_id,
                "name": self.users[user_id],
                "deleted": False,
                "real_name": real,
                "is_bot": False,
                "profile": {
                    "real_name": real,
                    "real_name_normalized": real,
                    "display_name": display,
                    "display_name_normalized": display,
                },
            },
        }

    def _writable_channel(self, ref: Any) -> Channel:
        chan = self._resolve_channel(str(ref)) if ref else None
        if chan is None:
            raise _ApiError("channel_not_found")
        if chan.archived:
            raise _ApiError("is_archived")
        if not chan.member:
            raise _ApiError("not_in_channel")
        return chan

    def _check_text(self, text: str) -> None:
        if len(text) > self.text_limit:
            raise _ApiError("msg_too_long")

    def _chat_post_message(self, params: dict[str, Any], is_json: bool) -> dict[str, Any]:
        chan = self._writable_channel(params.get("channel"))
        text = str(params.get("text") or "")
        blocks = _parse_blocks(params.get("blocks"))
        attachments = _parse_attachments(params.get("attachments"))
        if not text and not blocks and not attachments:
            raise _ApiError("no_text")
        self._check_text(text)
        thread_ts = str(params["thread_ts"]) if params.get("thread_ts") else None
        message = Message(
            channel=chan.id,
            ts=self._next_ts(),
            user=self.bot_user_id,
            text=text,
            blocks=blocks,
            attachments=attachments,
            bot_id=self.bot_id,
            thread_ts=thread_ts,
            reply_broadcast=_truthy(params.get("reply_broadcast")),
        )
        message.history.append(Version(self._now(), text, blocks))
        chan.messages.append(message)
        api = message.to_api(self)
        self._echo(chan, {**api, "event_ts": message.ts})
        return {"ok": True, "channel": chan.id, "ts": message.ts, "message": api}

    def _chat_post_ephemeral(self, params: dict[str, Any], is_json: bool) -> dict[str, Any]:
        """chat.postEphemeral (https://api.slack.com/methods/chat.postEphemeral): a message in
        `channel` that only `user` sees, answered `{"ok":true,"message_ts":…}`.

        No event reports it (an ephemeral message is not in the channel's history), and it
        cannot be edited with chat.update. "Ephemeral messages in threads are only shown if
        there is already an active thread": with a `thread_ts` that has no replies the call
        succeeds but nobody is shown anything.
        """
        chan = self._writable_channel(params.get("channel"))
        text = str(params.get("text") or "")
        blocks = _parse_blocks(params.get("blocks"))
        attachments = _parse_attachments(params.get("attachments"))
        if not text and not blocks and not attachments:
            raise _ApiError("no_text")
        self._check_text(text)
        # "The user should be in the channel specified by the channel argument";
        # user_not_in_channel: "Intended recipient is not in the specified channel". Undocumented:
        # a missing or unknown user is answered the same way (they are in no channel).
        user = str(params.get("user") or "")
        if user not in chan.members:
            raise _ApiError("user_not_in_channel")
        thread_ts = str(params["thread_ts"]) if params.get("thread_ts") else None
        message = Message(
            channel=chan.id,
            ts=self._next_ts(),
            user=self.bot_user_id,
            text=text,
            blocks=blocks,
            attachments=attachments,
            bot_id=self.bot_id,
            thread_ts=thread_ts,
            ephemeral_to=user,
        )
        message.history.append(Version(self._now(), text, blocks))
        active = thread_ts is None or any(
            m.thread_ts == thread_ts and m.ts != thread_ts and not m.deleted for m in chan.messages
        )
        if active:
            chan.messages.append(message)
        self._notify()
        return {"ok": True, "message_ts": message.ts}

    def _chat_update(self, params: dict[str, Any], is_json: bool) -> dict[str, Any]:
        chan = self._resolve_channel(str(params.get("channel") or ""))
        if chan is None:
            raise _ApiError("channel_not_found")
        message = self._find(chan, str(params.get("ts") or ""))
        if message is None or message.deleted:
            raise _ApiError("message_not_found")
        if message.user != self.bot_user_id or message.ephemeral_to is not None:
            raise _ApiError("cant_update_message")
        if chan.archived:
            raise _ApiError("is_inactive")
        has_text = "text" in params
        has_blocks = "blocks" in params
        text = str(params.get("text") or "")
        # Leaving out `blocks` keeps the old ones; `[]` removes them (B4).
        blocks = _parse_blocks(params["blocks"]) if has_blocks else message.blocks
        if not has_text and not has_blocks and not params.get("attachments"):
            raise _ApiError("no_text")
        if not text and not blocks and not params.get("attachments"):
            raise _ApiError("no_text")
        self._check_text(text)
        previous = message.to_api(self)
        message.text = text
        message.blocks = blocks
        if "attachments" in params:
            message.attachments = _parse_attachments(params.get("attachments"))
        message.history.append(Version(self._now(), text, blocks))
        event_ts = message.edited_ts = self._next_ts()
        api = message.to_api(self)
        self._echo(
            chan,
            {
                "type": "message",
                "subtype": "message_changed",
                "message": api,
                "previous_message": previous,
                "hidden": True,
                "ts": event_ts,
                "event_ts": event_ts,
            },
        )
        return {"ok": True, "channel": chan.id, "ts": message.ts, "text": text, "message": api}

    def _files_get_upload_url_external(
        self, params: dict[str, Any], is_json: bool
    ) -> dict[str, Any]:
        if is_json:
            # Form-only: a JSON body "earns invalid_arguments" (observed, Octember/earshot#10).
            raise _ApiError("invalid_arguments")
        filename = str(params.get("filename") or "")
        try:
            length = int(str(params.get("length", "")))
        except ValueError:
            raise _ApiError("invalid_arguments") from None
        if not filename or length < 0:
            raise _ApiError("invalid_arguments")
        if length == 0:
            raise _ApiError("missing_argument")  # "Typically only occurs when the length is 0"
        alt_txt = params.get("alt_txt")
        if alt_txt is not None and len(str(alt_txt)) > ALT_TXT_LIMIT:
            raise _ApiError("alt_txt_too_large")
        file_id = f"F{next(self._ids):010d}"
        snippet = params.get("snippet_type")
        self.files[file_id] = SlackFile(
            file_id,
            filename,
            length,
            str(alt_txt) if alt_txt else None,
            str(snippet) if snippet else None,
        )
        token = uuid.uuid4().hex
        self._uploads[token] = file_id
        self._notify()
        return {"ok": True, "upload_url": f"{self.base_url}/upload/v1/{token}", "file_id": file_id}

    def _files_complete_upload_external(
        self, params: dict[str, Any], is_json: bool
    ) -> dict[str, Any]:
        raw = params.get("files")
        try:
            entries = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            raise _ApiError("invalid_arguments") from None
        if not isinstance(entries, list) or not entries:
            raise _ApiError("invalid_arguments")
        chosen: list[tuple[SlackFile, str | None]] = []
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                raise _ApiError("invalid_arguments")
            found = self.files.get(entry["id"])
            if found is None or found.data is None:
                # "Could not find the file from the upload ticket."
                raise _ApiError("file_not_found")
            chosen.append((found, entry.get("title")))
        refs = [str(params["channel_id"])] if params.get("channel_id") else []
        if not refs and params.get("channels"):
            refs = [r.strip() for r in str(params["channels"]).split(",") if r.strip()]
        targets: list[Channel] = []
        for ref in refs:
            chan = self._resolve_channel(ref)
            if chan is None:
                raise _ApiError("channel_not_found")
            if not chan.member:
                raise _ApiError("not_in_channel")
            targets.append(chan)
        comment = str(params.get("initial_comment") or "")
        # "If the initial_comment field is provided, the blocks field is ignored".
        blocks = None if comment else _parse_blocks(params.get("blocks"))
        self._check_text(comment)
        for slack_file, title in chosen:
            slack_file.title = str(title) if title else slack_file.filename
            slack_file.completed = True
        # With no channel the file stays private (B4).
        for chan in targets:
            thread_ts = str(params["thread_ts"]) if params.get("thread_ts") else None
            message = Message(
                channel=chan.id,
                ts=self._next_ts(),
                user=self.bot_user_id,
                text=comment,
                blocks=blocks,
                bot_id=self.bot_id,
                thread_ts=thread_ts,
                subtype="file_share",
                files=[f for f, _ in chosen],
            )
            message.history.append(Version(self._now(), comment, blocks))
            chan.messages.append(message)
            for slack_file, _ in chosen:
                slack_file.shared_in.append((chan.id, message.ts))
            self._echo(chan, {**message.to_api(self), "event_ts": message.ts})
        return {"ok": True, "files": [{"id": f.id, "title": f.title} for f, _ in chosen]}

    # --- upload URL and response_url ----------------------------------------------------------
    async def _http_upload(self, request: Request) -> Response:
        file_id = self._uploads.get(request.path_params["token"])
        if file_id is None:
            return PlainTextResponse("Not Found", status_code=404)
        ctype = request.headers.get("content-type", "").lower()
        data: bytes | None = None
        if ctype.startswith("multipart/form-data"):
            form = await request.form()
            for _, value in form.multi_items():
                if isinstance(value, UploadFile):
                    data = await value.read()
                    break
        if data is None:
            data = await request.body()
        self.files[file_id].data = data
        self._notify()
        # "raw bytes or … multipart form encoded. Slack will return HTTP 200".
        return PlainTextResponse(f"OK - {len(data)}")

    def _new_response_url(self, channel: str, user: str, message_ts: str | None = None) -> str:
        """A command's URL posts new replies; an action's may also replace or delete its message."""
        token = uuid.uuid4().hex
        self._response_urls[token] = _ResponseUrl(channel, user, self._now(), message_ts)
        return f"{self.base_url}/response/{token}"

    async def _http_response_url(self, request: Request) -> Response:
        entry = self._response_urls.get(request.path_params["token"])
        if entry is None:
            return PlainTextResponse("Not Found", status_code=404)
        # Undocumented: the exact answer past the limits (error names as seen in the wild).
        if self._now() - entry.created_at > RESPONSE_URL_TTL:
            return JSONResponse({"ok": False, "error": "expired_url"}, status_code=404)
        if entry.uses >= RESPONSE_URL_USES:
            return JSONResponse({"ok": False, "error": "used_url"}, status_code=404)
        try:
            body = json.loads(await request.body())
        except ValueError:
            return PlainTextResponse("invalid_payload", status_code=400)
        if not isinstance(body, dict):
            return PlainTextResponse("invalid_payload", status_code=400)
        entry.uses += 1
        chan = self._channel(entry.channel)
        original = self._find(chan, entry.message_ts) if entry.message_ts else None
        if original is not None and _truthy(body.get("delete_original")):
            original.deleted = True
        elif original is not None and _truthy(body.get("replace_original")):
            original.text = str(body.get("text") or "")
            original.blocks = body.get("blocks")
            original.history.append(Version(self._now(), original.text, original.blocks))
            original.edited_ts = self._next_ts()
        else:
            in_channel = body.get("response_type") == "in_channel"
            message = Message(
                channel=chan.id,
                ts=self._next_ts(),
                user=self.bot_user_id,
                text=str(body.get("text") or ""),
                blocks=body.get("blocks"),
                bot_id=self.bot_id,
                thread_ts=body.get("thread_ts"),
                ephemeral_to=None if in_channel else entry.user,
            )
            message.history.append(Version(self._now(), message.text, message.blocks))
            chan.messages.append(message)
        self._notify()
        return PlainTextResponse("ok")


# --- Block Kit ------------------------------------------------------------------------------------
def _parse_blocks(raw: Any) -> list[dict[str, Any]] | None:
    """Decode and validate `blocks` (a JSON string in forms, a list in JSON bodies)."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise _ApiError("invalid_blocks_format") from None
    if not isinstance(raw, list):
        raise _ApiError("invalid_blocks_format")
    errors = _block_errors(raw)
    if errors:
        # Slack lists each problem with a JSON pointer, e.g.
        # "[ERROR] must be less than 3001 characters [json-pointer:/blocks/0/text/text]".
        raise _ApiError(
            "invalid_blocks",
            errors=errors,
            response_metadata={"messages": [f"[ERROR] {e}" for e in errors]},
        )
    return raw


def _parse_attachments(raw: Any) -> list[dict[str, Any]] | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise _ApiError("invalid_attachments") from None
    if not isinstance(raw, list) or not all(isinstance(a, dict) for a in raw):
        raise _ApiError("invalid_attachments")
    if len(raw) > MAX_ATTACHMENTS:
        raise _ApiError("too_many_attachments")
    return raw


def _block_errors(blocks: list[Any]) -> list[str]:
    """The Block Kit limits of B4 (slack_sdk's model limits), as Slack-style messages."""
    errors: list[str] = []
    if len(blocks) > MAX_BLOCKS:
        errors.append(f"no more than {MAX_BLOCKS} items allowed [json-pointer:/blocks]")
    block_ids: set[str] = set()
    for i, block in enumerate(blocks):
        path = f"/blocks/{i}"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            errors.append(f"missing required field: type [json-pointer:{path}]")
            continue
        kind = block["type"]
        if kind not in KNOWN_BLOCK_TYPES:
            errors.append(f"unsupported type: {kind} [json-pointer:{path}/type]")
            continue
        block_id = block.get("block_id")
        if block_id is not None:
            errors += _length_errors(block_id, 255, f"{path}/block_id")
            if block_id in block_ids:
                errors.append(f"duplicate block_id [json-pointer:{path}/block_id]")
            block_ids.add(str(block_id))
        if kind == "section":
            text, fields = block.get("text"), block.get("fields")
            if text is None and not fields:
                errors.append(f"must provide either text or fields [json-pointer:{path}]")
            if text is not None:
                errors += _text_errors(text, 3000, f"{path}/text")
            if fields is not None:
                if not isinstance(fields, list) or len(fields) > 10:
                    errors.append(f"no more than 10 items allowed [json-pointer:{path}/fields]")
                else:
                    for j, item in enumerate(fields):
                        errors += _text_errors(item, 2000, f"{path}/fields/{j}")
            accessory = block.get("accessory")
            if isinstance(accessory, dict) and accessory.get("type") == "button":
                errors += _button_errors(accessory, f"{path}/accessory")
        elif kind == "header":
            errors += _text_errors(block.get("text"), 150, f"{path}/text", plain_only=True)
        elif kind == "markdown":
            errors += _length_errors(block.get("text"), 12000, f"{path}/text", required=True)
        elif kind in ("actions", "context"):
            limit = 25 if kind == "actions" else 10
            elements = block.get("elements")
            if not isinstance(elements, list) or not elements:
                errors.append(f"must provide at least 1 item [json-pointer:{path}/elements]")
                continue
            if len(elements) > limit:
                errors.append(f"no more than {limit} items allowed [json-pointer:{path}/elements]")
            action_ids: set[str] = set()
            for j, element in enumerate(elements):
                epath = f"{path}/elements/{j}"
                if not isinstance(element, dict):
                    errors.append(f"must be an object [json-pointer:{epath}]")
                    continue
                if element.get("type") == "button":
                    errors += _button_errors(element, epath)
                action_id = element.get("action_id")
                if action_id is not None:
                    if action_id in action_ids:
                        errors.append(f"duplicate action_id [json-pointer:{epath}/action_id]")
                    action_ids.add(str(action_id))
    return errors


def _length_errors(value: Any, limit: int, path: str, *, required: bool = False) -> list[str]:
    if value is None:
        return [f"missing required field [json-pointer:{path}]"] if required else []
    if not isinstance(value, str):
        return [f"must be a string [json-pointer:{path}]"]
    if len(value) > limit:
        return [f"must be less than {limit + 1} characters [json-pointer:{path}]"]
    if required and not value:
        return [f"must be more than 0 characters [json-pointer:{path}]"]
    return []


def _text_errors(obj: Any, limit: int, path: str, *, plain_only: bool = False) -> list[str]:
    if not isinstance(obj, dict) or obj.get("type") not in ("plain_text", "mrkdwn"):
        return [f"must be a text object [json-pointer:{path}]"]
    if plain_only and obj["type"] != "plain_text":
        return [f"must be plain_text [json-pointer:{path}/type]"]
    return _length_errors(obj.get("text"), limit, f"{path}/text", required=True)


def _button_errors(element: dict[str, Any], path: str) -> list[str]:
    errors = _text_errors(element.get("text"), 75, f"{path}/text", plain_only=True)
    errors += _length_errors(element.get("value"), 2000, f"{path}/value")
    errors += _length_errors(element.get("action_id"), 255, f"{path}/action_id")
    errors += _length_errors(element.get("url"), 3000, f"{path}/url")
    return errors


def _block_texts(block: dict[str, Any]) -> list[str]:
    """The readable text of one block, in display order."""
    kind = block.get("type")
    out: list[str] = []
    if kind in ("section", "header"):
        text = block.get("text")
        if isinstance(text, dict) and isinstance(text.get("text"), str):
            out.append(text["text"])
        for item in block.get("fields") or []:
            if isinstance(item, dict) and isinstance(item.get("text"), str):
                out.append(item["text"])
    elif kind == "context":
        for element in block.get("elements") or []:
            if isinstance(element, dict) and isinstance(element.get("text"), str):
                out.append(element["text"])
    elif kind == "markdown" and isinstance(block.get("text"), str):
        out.append(block["text"])
    elif kind == "rich_text":
        out.append("".join(_rich_text(block.get("elements") or [])))
    return [t for t in out if t]


def _rich_text(elements: list[Any]) -> Iterable[str]:
    for element in elements:
        if not isinstance(element, dict):
            continue
        if element.get("type") in ("text", "link") and isinstance(element.get("text"), str):
            yield element["text"]
        elif element.get("type") == "link":
            yield str(element.get("url", ""))
        elif element.get("type") == "user":
            yield f"<@{element.get('user_id')}>"
        elif isinstance(element.get("elements"), list):
            yield from _rich_text(element["elements"])


def _block_buttons(block: dict[str, Any]) -> list[Button]:
    elements: list[Any] = []
    if block.get("type") == "actions":
        elements = list(block.get("elements") or [])
    elif block.get("type") == "section" and isinstance(block.get("accessory"), dict):
        elements = [block["accessory"]]
    return [
        Button(
            text=str((e.get("text") or {}).get("text", "")),
            action_id=e.get("action_id"),
            value=e.get("value"),
            block_id=block.get("block_id"),
            style=e.get("style"),
            url=e.get("url"),
        )
        for e in elements
        if isinstance(e, dict) and e.get("type") == "button"
    ]


def _rich_text_block(text: str) -> dict[str, Any]:
    """The `blocks` Slack attaches to a person's message (mentions become user elements)."""
    elements: list[dict[str, Any]] = []
    rest = text
    while rest:
        start = rest.find("<@")
        end = rest.find(">", start) if start >= 0 else -1
        if start < 0 or end < 0:
            elements.append({"type": "text", "text": rest})
            break
        if start:
            elements.append({"type": "text", "text": rest[:start]})
        elements.append({"type": "user", "user_id": rest[start + 2 : end]})
        rest = rest[end + 1 :]
    block_id = uuid.uuid4().hex[:5]
    return {
        "type": "rich_text",
        "block_id": block_id,
        "elements": [{"type": "rich_text_section", "elements": elements}],
    }


# --- small helpers --------------------------------------------------------------------------------
def _format_ts(micros: int) -> str:
    return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


def _format_started(micros: int) -> str:
    seconds, rest = divmod(micros, 1_000_000)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds)) + f".{rest // 1000:03d}"


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() in ("1", "true", "yes")
    return bool(value)
