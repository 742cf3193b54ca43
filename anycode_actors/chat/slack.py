"""Slack: Socket Mode over trio-websocket for what people do, the Web API over httpx for replies.

Inbound, one reader task per WebSocket acks every envelope at once and never waits for the
actors: it translates the envelope (a pure, synchronous step), queues the result in a small
buffer of its own and acks, with no checkpoint in between. A separate forwarder task moves the
buffer into the actors' `events` channel and may block there as long as it likes. A reader that
blocked on a full `events` channel would stop reading the socket, and trio-websocket, whose queue
would then fill, would stop answering Slack's pings: Slack would drop the socket and redeliver.
The buffer belongs to the client, not to one `run`: Slack never sends an acked envelope again,
so what a run that ended (`link_disabled`) had not handed on yet goes first in the next run.

If even the client's own buffer is full, the actors are far behind and the envelope is shed:
events and button presses are left unacknowledged, so Slack delivers the event again a few
seconds later and shows the person a warning on the button; a slash command is acked with
`BUSY_TEXT`, which the person sees in place of Slack's "operation_timeout".

Slack redelivers events whose ack it did not see, and sends a person's @mention twice (as
`message` and as `app_mention`, with the same `ts`), so envelopes are de-duplicated by envelope
id, event id and (channel, ts), in bounded LRU sets.

The bot serves the one workspace its token belongs to (auth.test's `team_id`). An app installed
in several workspaces gets all their envelopes over the same socket; those from another
workspace are acked, so Slack does not redeliver them, and otherwise ignored.

Connections: `apps.connections.open` (app token) hands out a one-time URL for every connection.
A `disconnect` frame (`refresh_requested`, `warning`, …) opens the next connection at once while
the old one keeps reading until Slack closes it (or `RETIRE_GRACE` passes); `link_disabled`
(Socket Mode switched off in the app's settings) ends `run` with a `ChatError`. A heartbeat ping
notices a dead socket that no error would ever report. A lost connection is replaced at once;
if that fails too (or the new one does not last), the next tries wait the `Backoff`'s growing
delays, which start over once a connection has stayed up for `backoff.reset_after` seconds.

A `/task` carries the person's name as their Slack profile shows it (`User.full_name`, the
author of the commits made for them): users.info (https://docs.slack.dev/reference/methods/users.info,
Tier 4, the `users:read` scope), asked by the forwarder, once per person while the answer is
remembered. Without the scope the app does not ask again and the name stays empty.

Outbound text is plain text: `&`, `<` and `>` are escaped, so nothing an agent writes can turn
into a link or a mention, while Slack's mrkdwn (`*bold*`, `code`) still renders. Every message
is sent as section blocks holding the text (so the text stays visible next to buttons) plus one
actions block per row of buttons, and `text` as the notification fallback.

Files people share (a `message` event of subtype `file_share`,
https://api.slack.com/events/message/file_share) arrive as the `Attachment`s of the `Command` or
`Message` their text makes; `download` fetches one from its `url_private` with the bot token in
an `Authorization: Bearer` header (https://api.slack.com/types/file#authentication), and only
from Slack's own hosts, so the token never goes anywhere else.

Threads: a message in a thread names it (`thread_ts`), which becomes `ChatRef.thread`, and what
is sent to that ChatRef goes into the thread. With `[slack] threads` (the default), `task_threads`
asks the actors to run a /task posted in a channel in a thread under its acknowledgement.

Web API refusals (`{"ok": false, "error": code}`) become `ChatError`s whose `code` is Slack's:
`ratelimited` (or HTTP 429) raises `RateLimited`, 5xx and no answer `ChatUnavailable`, and
`message_not_found` ("No message exists with the requested timestamp",
https://api.slack.com/methods/chat.update#errors) `MessageGone`. chat.update lists no "not
modified" error (same page), so this client never raises `NotModified`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Final

import httpx
import trio
import trio_websocket
from wsproto.utilities import LocalProtocolError

from anycode_actors.chat._recent import Recent
from anycode_actors.chat.auth import NOT_AUTHORIZED, AccessPolicy
from anycode_actors.chat.base import (
    Attachment,
    Button,
    ButtonPress,
    ChatError,
    ChatEvent,
    ChatLimits,
    ChatRef,
    ChatUnavailable,
    Command,
    FileTooLarge,
    Message,
    MessageGone,
    RateLane,
    RateLimited,
    User,
)
from anycode_actors.config import SlackConfig
from supervisors import Backoff

__all__ = [
    "BUSY_TEXT",
    "HEARTBEAT_INTERVAL",
    "HEARTBEAT_TIMEOUT",
    "INBOUND_BUFFER",
    "RETIRE_GRACE",
    "SLACK_LIMITS",
    "SlackClient",
]

log = logging.getLogger(__name__)

PLATFORM: Final = "slack"

# --- limits (https://docs.slack.dev/reference/block-kit/blocks/section-block) --------------------
# A section block holds 3000 characters, so a message within the limit normally fits in one
# section. Escaping can lengthen the text; the rest then goes into further sections (a message
# may have 50 blocks), cut at a newline where possible.
SECTION_TEXT_LIMIT: Final = 3000
MAX_BLOCKS: Final = 50
# `text` "limit … to 4,000 characters"; with blocks it is only the notification fallback.
FALLBACK_TEXT_LIMIT: Final = 4000
BUTTON_LABEL_LIMIT: Final = 75
# Bot-wide lanes: Web API tiers count per method per workspace
# (https://api.slack.com/docs/rate-limits): chat.update is Tier 3 (50+ a minute), the file upload
# methods Tier 4 (100+). chat.postMessage is limited per channel (the flusher's own pacing) plus
# an undocumented workspace-wide limit; 300 a minute stands in for it.
SLACK_LANES: Final[Mapping[str, RateLane]] = MappingProxyType(
    {
        "send": RateLane("chat.postMessage", 5.0, 60),
        "edit": RateLane("chat.update", 50 / 60, 20),
        "upload": RateLane("files", 100 / 60, 20),
    }
)
SLACK_LIMITS: Final = ChatLimits(
    max_text_length=SECTION_TEXT_LIMIT,
    max_button_data_bytes=2000,  # a button's `value`: 2000 characters
    max_buttons_per_row=25,  # elements of one actions block
    # chat.postMessage: "one message per second per channel"; short bursts pass.
    per_second=1.0,
    burst=3,
)

# --- Socket Mode ----------------------------------------------------------------------------------
# Slack retries an unacked event about every 3 s, three times, and keeps routing into a dead
# socket until its own pings time out: a socket that died silently must be noticed and replaced
# within ~9 s or the events sent meanwhile are lost. Ping every 5 s, give up 3 s without a pong
# (node-slack-sdk: 5 s and 5 s), then reconnect at once.
HEARTBEAT_INTERVAL: Final = 5.0
HEARTBEAT_TIMEOUT: Final = 3.0
# Slack sends hello right after the handshake.
HELLO_TIMEOUT: Final = 10.0
CONNECT_TIMEOUT: Final = 10.0
# Closing waits for Slack's close frame this long; a dead socket is then simply cut.
CLOSE_TIMEOUT: Final = 2.0
# Our reader never blocks on the actors, so trio-websocket's queue stays short; a few frames of
# room let it keep answering pings while an ack is being written.
MESSAGE_QUEUE_SIZE: Final = 8
# Slack documents no frame size. A frame over the limit closes the socket, and the redelivery
# would close the next one too, so the limit is far above any payload seen (~50 KB).
MAX_MESSAGE_SIZE: Final = 16 * 2**20
# Slack closes a socket about 10 s after its disconnect frame; if it does not, we do.
RETIRE_GRACE: Final = 30.0
# Envelopes read but not yet forwarded to the actors.
INBOUND_BUFFER: Final = 64
# Remembered envelope ids, event ids and (channel, ts) pairs.
SEEN_CAPACITY: Final = 4096
# response_urls of recent button presses, for answer_press (a URL lives 30 minutes).
RESPONSE_URLS_KEPT: Final = 512
# Foreign workspaces already logged; beyond this many the oldest may be logged again.
FOREIGN_TEAMS_KEPT: Final = 256
# People whose profile name is remembered, and for how long.
FULL_NAMES_KEPT: Final = 512
FULL_NAME_TTL: Final = 3600.0
# How long a /task waits for the person's profile name before it goes on without it.
FULL_NAME_TIMEOUT: Final = 5.0
# users.info answers that asking again will not change (a missing scope, a token not allowed).
NAMES_UNAVAILABLE_CODES: Final = frozenset(
    {"missing_scope", "not_allowed_token_type", "no_permission", "invalid_auth"}
)
BUSY_TEXT: Final = "The bot is busy right now; please try again in a moment."
# After the immediate first retry: 1 s doubling to 30 s, each wait up to 10% shorter, and from
# 1 s again once a connection has lasted 30 s.
RECONNECT_INITIAL: Final = 1.0
RECONNECT_FACTOR: Final = 2.0
RECONNECT_CAP: Final = 30.0
RECONNECT_JITTER: Final = 0.1
RECONNECT_HEALTHY_AFTER: Final = 30.0

# --- Web API --------------------------------------------------------------------------------------
HTTP_TIMEOUT: Final = 30.0
DOWNLOAD_TIMEOUT: Final = httpx.Timeout(120.0, connect=10.0)
#: Where Slack serves files (url_private), besides the Web API's own host.
SLACK_FILES_HOST: Final = "files.slack.com"
# slack_sdk waits this long on a 429 without Retry-After (apps.connections.open).
DEFAULT_RETRY_AFTER: Final = 30.0
# Slack's own failures, worth another try; any other ok:false code is final.
TRANSIENT_CODES: Final = frozenset(
    {"internal_error", "fatal_error", "service_unavailable", "request_timeout", "ratelimited"}
)

# "No message exists with the requested timestamp" (chat.update, chat.delete):
# https://api.slack.com/methods/chat.update#errors.
MESSAGE_GONE_CODES: Final = frozenset({"message_not_found"})

# trio-websocket lets wsproto's LocalProtocolError escape when a frame (our ack or ping, or its
# own pong) meets a socket that is already closing (python-trio/trio-websocket#175, #184): for
# us that is one more way a socket ends.
_CLOSED: Final = (trio_websocket.ConnectionClosed, LocalProtocolError)
_SOCKET_ERRORS: Final = (
    *_CLOSED,
    trio_websocket.HandshakeError,
    trio.BrokenResourceError,
    trio.TooSlowError,
    OSError,
)
_COMMAND: Final = re.compile(r"/([A-Za-z][\w-]*)(?:\s+(.*))?", re.DOTALL)
_MARKUP: Final = re.compile(r"<([^<>]*)>")


class SlackClient:
    """The bot in one Slack workspace: a `ChatClient` over Socket Mode and the Web API.

    Use it as ``await nursery.start(client.run, events)``; `send`, `edit`, `answer_press`,
    `refuse` and `upload` may be called from any task, also while `run` is reconnecting. Call
    `aclose` at the end if the client made its own HTTP client.
    """

    def __init__(
        self,
        config: SlackConfig,
        *,
        http: httpx.AsyncClient | None = None,
        backoff: Backoff | None = None,
        inbound_buffer: int = INBOUND_BUFFER,
    ) -> None:
        if inbound_buffer < 1:
            raise ValueError(f"inbound_buffer must be at least 1, got {inbound_buffer}")
        self.platform = PLATFORM
        self.limits = SLACK_LIMITS
        self.task_threads = config.threads
        self._app_token = config.app_token
        self._bot_token = config.bot_token
        self.access = AccessPolicy.of(
            config.allowed_users, everyone=config.allow_everyone, admins=config.admins
        )
        self.rate_lanes: Mapping[str, RateLane] = SLACK_LANES
        self._api = config.api_base_url.rstrip("/")
        # Where url_private may point for the bot token to be sent along.
        self._file_hosts = frozenset({httpx.URL(self._api).host, SLACK_FILES_HOST})
        self._owns_http = http is None
        # Tokens go into each request's headers, never into the client's defaults: the upload
        # URL must not receive them.
        self._http = http or httpx.AsyncClient(timeout=HTTP_TIMEOUT)
        self._backoff = backoff or Backoff(
            initial=RECONNECT_INITIAL,
            factor=RECONNECT_FACTOR,
            cap=RECONNECT_CAP,
            jitter=RECONNECT_JITTER,
            reset_after=RECONNECT_HEALTHY_AFTER,
        )
        self._bot_user_id = ""
        self._bot_id = ""
        self._team_id = ""
        self._foreign_teams: Recent[str, None] = Recent(FOREIGN_TEAMS_KEPT)
        self._seen: Recent[tuple[str, ...], None] = Recent(SEEN_CAPACITY)
        self._response_urls: Recent[str, str] = Recent(RESPONSE_URLS_KEPT)
        self._full_names: Recent[str, tuple[float, str]] = Recent(FULL_NAMES_KEPT)
        self._names_unavailable = False
        self._links = 0
        # Acked envelopes on their way to the actors, and the one being handed on right now.
        self._inbox, self._inbox_out = trio.open_memory_channel[_Inbound](inbound_buffer)
        self._handing_on: _Inbound | None = None

    async def aclose(self) -> None:
        """Close the HTTP client if this client made it."""
        if self._owns_http:
            await self._http.aclose()

    # --- inbound ----------------------------------------------------------------------------------
    async def run(
        self,
        events: trio.MemorySendChannel[ChatEvent],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Receive from Slack until cancelled; ready after auth.test and the first hello.

        Raises `ChatError` when it cannot go on: a token Slack refuses (the message names the
        config key, never the token) or Socket Mode switched off (`link_disabled`).
        """
        await self._identify()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._forward, events)
            fatal = await self._stay_connected(nursery, task_status)
            nursery.cancel_scope.cancel()
        raise fatal

    async def _identify(self) -> None:
        """auth.test: who we are, so that our own messages are not taken for a person's."""
        failures = 0
        while True:
            try:
                me = await self._call("auth.test", self._bot_token.get_secret_value(), {})
                break
            except ChatError as exc:
                if not _transient(exc):
                    raise _refused_token("slack.bot_token", "auth.test", exc) from exc
                await self._pause("auth.test", exc, failures)
                failures += 1
        self._bot_user_id = str(me.get("user_id") or "")
        self._bot_id = str(me.get("bot_id") or "")
        self._team_id = str(me.get("team_id") or "")
        log.info(
            "Slack: signed in as %s (%s) in workspace %s",
            me.get("user", "?"),
            self._bot_user_id,
            self._team_id or "?",
        )

    async def _stay_connected(
        self, nursery: trio.Nursery, task_status: trio.TaskStatus[None]
    ) -> ChatError:
        """Keep one live Socket Mode connection; return only the error that ends `run`."""
        failures = 0
        started = False
        retiring: _Link | None = None
        while True:
            try:
                url = await self._connections_open()
                link = _Link(self._next_link())
                await nursery.start(self._run_link, url, link)
            except ChatError as exc:
                if not _transient(exc):
                    return exc
                await self._pause("Socket Mode connection", exc, failures)
                failures += 1
                continue
            except _SOCKET_ERRORS as exc:
                await self._pause("Socket Mode connection", exc, failures)
                failures += 1
                continue
            if not started:
                started = True
                task_status.started()
            if retiring is not None:
                nursery.start_soon(self._retire, retiring)
                retiring = None

            await link.done.wait()
            if link.fatal is not None:
                return link.fatal
            if link.planned:
                # Slack asked for a new connection; the old one still reads until it closes.
                failures = 0
                retiring = link
                continue
            assert link.ready_at is not None
            if trio.current_time() - link.ready_at >= self._backoff.reset_after:
                failures = 0
            await self._pause("Socket Mode connection", link.reason, failures)
            failures += 1

    def _next_link(self) -> int:
        self._links += 1
        return self._links

    async def _connections_open(self) -> str:
        """A one-time WebSocket URL; every connection needs a fresh one."""
        try:
            opened = await self._call(
                "apps.connections.open", self._app_token.get_secret_value(), {}
            )
        except ChatError as exc:
            if _transient(exc):
                raise
            raise _refused_token("slack.app_token", "apps.connections.open", exc) from exc
        url = opened.get("url")
        if not isinstance(url, str) or not url:
            raise ChatUnavailable("Slack apps.connections.open gave no url", code="no_url")
        return url

    async def _pause(self, what: str, why: BaseException | str, failures: int) -> None:
        """Wait before the next try: none after the first failure (a connection that was fine
        until now is replaced at once), then the backoff's delays."""
        delay = self._backoff.delay(failures - 1) if failures else 0.0
        if isinstance(why, RateLimited):
            delay = max(delay, why.retry_after)
        reason = why if isinstance(why, str) else _describe(why)
        log.warning("Slack: %s failed (%s); retrying in %.1f s", what, reason, delay)
        await trio.sleep(delay)

    async def _retire(self, link: _Link) -> None:
        await trio.sleep(RETIRE_GRACE)
        link.scope.cancel()

    async def _run_link(self, url: str, link: _Link, *, task_status: trio.TaskStatus[None]) -> None:
        """One WebSocket: ready once Slack said hello; then read until it ends."""
        try:
            with link.scope:
                async with trio_websocket.open_websocket_url(
                    url,
                    message_queue_size=MESSAGE_QUEUE_SIZE,
                    max_message_size=MAX_MESSAGE_SIZE,
                    connect_timeout=CONNECT_TIMEOUT,
                    disconnect_timeout=CLOSE_TIMEOUT,
                ) as ws:
                    with trio.fail_after(HELLO_TIMEOUT):
                        first = await _next_frame(ws)
                    if first.get("type") != "hello":
                        raise _not_hello(first)
                    link.ready_at = trio.current_time()
                    log.info(
                        "Slack: Socket Mode connection %d open (%s of this app)",
                        link.number,
                        first.get("num_connections", "?"),
                    )
                    task_status.started()
                    async with trio.open_nursery() as inner:
                        inner.start_soon(self._heartbeat, ws, link)
                        link.end(await self._read(ws, link))
                        inner.cancel_scope.cancel()
        except _SOCKET_ERRORS as exc:
            if link.ready_at is None:
                raise
            link.end(_describe(exc))  # closing failed; the socket is cut either way
        finally:
            link.end("closed")
            if link.ready_at is not None:
                log.info("Slack: Socket Mode connection %d closed (%s)", link.number, link.reason)

    async def _heartbeat(self, ws: trio_websocket.WebSocketConnection, link: _Link) -> None:
        """Ping; a socket whose pong does not come back is dead, whatever TCP believes."""
        while True:
            await trio.sleep(HEARTBEAT_INTERVAL)
            try:
                with trio.fail_after(HEARTBEAT_TIMEOUT):
                    await ws.ping()
            except _CLOSED:
                return  # the reader sees it too
            except trio.TooSlowError:
                link.end(f"no pong within {HEARTBEAT_TIMEOUT:g} s")
                link.scope.cancel()
                return

    async def _read(self, ws: trio_websocket.WebSocketConnection, link: _Link) -> str:
        """Read frames until the socket closes; return why it ended."""
        try:
            while True:
                frame = await _next_frame(ws)
                kind = frame.get("type")
                if kind == "disconnect":
                    reason = str(frame.get("reason") or "")
                    if reason == "link_disabled":
                        link.end(
                            "link_disabled",
                            fatal=ChatError(
                                "Slack turned Socket Mode off for this app (disconnect: "
                                "link_disabled); enable Socket Mode in the app's settings and "
                                "restart",
                                code="link_disabled",
                            ),
                        )
                        return "link_disabled"
                    log.info("Slack: connection %d: disconnect (%s)", link.number, reason)
                    link.end(f"disconnect: {reason}", planned=True)
                elif "envelope_id" in frame:
                    await self._on_envelope(ws, frame)
                elif kind != "hello":
                    log.debug("Slack: ignoring a %r frame", kind)
        except _CLOSED as exc:
            return _describe(exc)

    async def _on_envelope(
        self, ws: trio_websocket.WebSocketConnection, envelope: dict[str, Any]
    ) -> None:
        envelope_id = str(envelope["envelope_id"])
        kind = str(envelope.get("type") or "")
        payload = envelope.get("payload")
        if not isinstance(payload, dict):
            payload = {}
        keys = _dedupe_keys(envelope_id, kind, payload)
        if any(key in self._seen for key in keys):
            log.debug("Slack: %s envelope seen before; acked and dropped", kind)
            await _ack(ws, envelope_id)
            return
        inbox = self._inbox
        room = inbox.statistics()
        if room.current_buffer_used >= room.max_buffer_size:
            if kind == "slash_commands":
                for key in keys:
                    self._seen.put(key, None)
                await _ack(ws, envelope_id, {"text": BUSY_TEXT})
            else:
                log.warning(
                    "Slack: %d envelopes wait for the actors; a %s envelope is left unacked",
                    room.current_buffer_used,
                    kind,
                )
            return
        try:
            inbound, reply = self._translate(kind, payload)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning("Slack: dropping a malformed %s envelope (%s)", kind, _describe(exc))
            inbound, reply = None, None
        for key in keys:
            self._seen.put(key, None)
        # No checkpoint between queueing and acking: the ack never waits for the actors.
        if inbound is not None:
            inbox.send_nowait(inbound)
        await _ack(ws, envelope_id, reply)

    async def _forward(self, events: trio.MemorySendChannel[ChatEvent]) -> None:
        """Hand events to the actors (this may wait) and answer people who may not use the bot.

        An event leaves `_handing_on` only once the actors have it, so one that a run ended
        (cancelled) in the middle of handing on is handed on first by the next run."""
        while True:
            if self._handing_on is None:
                self._handing_on = await self._inbox_out.receive()
            item = self._handing_on
            if isinstance(item, _Refusal):
                self._handing_on = None  # said at most once
                try:
                    await self._refuse(item)
                except ChatError as exc:
                    log.warning("Slack: could not tell a user they are not authorized: %s", exc)
            else:
                if isinstance(item, Command) and item.name == "task" and not item.user.full_name:
                    item = await self._with_full_name(item)
                    self._handing_on = item
                await events.send(item)
                self._handing_on = None

    async def _with_full_name(self, command: Command) -> Command:
        """`command` with its sender's profile name, when Slack tells it in time."""
        name = await self._full_name(command.user.id)
        if not name:
            return command
        return dataclasses.replace(command, user=dataclasses.replace(command.user, full_name=name))

    async def _full_name(self, user_id: str) -> str:
        """The person's real name (else display name) from their profile; "" when unknown."""
        if self._names_unavailable:
            return ""
        now = trio.current_time()
        known = self._full_names.get(user_id)
        if known is not None and now - known[0] < FULL_NAME_TTL:
            return known[1]
        body: dict[str, Any] | None = None
        with trio.move_on_after(FULL_NAME_TIMEOUT):
            try:
                body = await self._call(
                    "users.info", self._bot_token.get_secret_value(), {"user": user_id}
                )
            except ChatError as exc:
                if exc.code in NAMES_UNAVAILABLE_CODES:
                    self._names_unavailable = True
                    log.info("Slack: no profile names (%s); commits name the Slack user", exc)
                else:
                    log.debug("Slack: no profile name for %s: %s", user_id, exc)
        if body is None:
            return ""
        user: dict[str, Any] = body["user"] if isinstance(body.get("user"), dict) else {}
        profile: dict[str, Any] = user["profile"] if isinstance(user.get("profile"), dict) else {}
        name = next(
            (
                str(value).strip()
                for value in (
                    profile.get("real_name"),
                    user.get("real_name"),
                    profile.get("display_name"),
                )
                if isinstance(value, str) and value.strip()
            ),
            "",
        )
        self._full_names.put(user_id, (now, name))
        return name

    async def _refuse(self, refusal: _Refusal) -> None:
        if refusal.response_url:
            await self._respond(refusal.response_url, NOT_AUTHORIZED)
        else:
            await self.send(refusal.chat, NOT_AUTHORIZED)

    # --- translation: Slack payloads → ChatEvent ------------------------------------------------
    def _translate(
        self, kind: str, payload: dict[str, Any]
    ) -> tuple[_Inbound | None, dict[str, Any] | None]:
        """The item to forward, if any, and the ack payload, if any."""
        team = _team_of(kind, payload)
        if team and self._team_id and team != self._team_id:
            self._ignore_team(team)
            return None, None
        if kind == "events_api":
            return self._translate_event(payload), None
        if kind == "slash_commands":
            return self._translate_command(payload)
        if kind == "interactive":
            return self._translate_interaction(payload), None
        return None, None

    def _ignore_team(self, team: str) -> None:
        """One Socket Mode connection carries the events of every workspace the app is
        installed in, but the bot token, the allow-list and the sessions belong to one: the
        rest are acked (so Slack does not redeliver them) and dropped, logged once per team."""
        if team in self._foreign_teams:
            return
        self._foreign_teams.put(team, None)
        log.warning(
            "Slack: ignoring everything from workspace %s; this bot serves workspace %s only "
            "(is the app installed in another workspace too?)",
            team,
            self._team_id,
        )

    def _translate_event(self, payload: dict[str, Any]) -> _Inbound | None:
        event = payload.get("event")
        if payload.get("type") != "event_callback" or not isinstance(event, dict):
            return None
        kind = event.get("type")
        if kind not in ("message", "app_mention"):
            return None
        # Edits, joins, bot posts (ours come back with bot_id) and the hidden message_replied
        # that arrives without its subtype are not something a person said; file shares are.
        subtype = event.get("subtype")
        if (subtype and subtype != "file_share") or event.get("hidden") or event.get("bot_id"):
            return None
        user = event.get("user")
        if not isinstance(user, str) or not user or user == self._bot_user_id:
            return None
        text = str(event.get("text") or "")
        ts = str(event["ts"])
        thread = _thread(ts, event.get("thread_ts"))
        chat = ChatRef(PLATFORM, str(event["channel"]), thread)
        direct = event.get("channel_type") == "im"
        mention = f"<@{self._bot_user_id}"
        plain = _plain_text(self._strip_mention(text))
        if not self.access.may_use(user):
            # Channel chatter is not addressed to the bot and gets no answer.
            if (
                direct
                or kind == "app_mention"
                or mention in text
                or _COMMAND.fullmatch(plain.strip())
            ):
                reply_in = chat if direct else ChatRef(PLATFORM, chat.chat_id, thread or ts)
                return _Refusal(reply_in)
            return None
        parsed = _parse_text(chat, User(user), plain, ts, reply_to=thread)
        attachments = _attachments(event.get("files"))
        if not attachments:
            return parsed
        return replace(parsed, attachments=attachments)

    def _translate_command(
        self, payload: dict[str, Any]
    ) -> tuple[_Inbound | None, dict[str, Any] | None]:
        user = str(payload["user_id"])
        if not self.access.may_use(user):
            # The ack payload is the reply the person sees, only to them.
            return None, {"text": NOT_AUTHORIZED}
        chat = ChatRef(PLATFORM, str(payload["channel_id"]))
        name = str(payload["command"]).lstrip("/").lower()
        args = _plain_text(str(payload.get("text") or "")).strip()
        command = Command(chat, User(user, str(payload.get("user_name") or "")), name, args)
        # The ack stays empty: the actors answer with chat.postMessage, which they can edit.
        return command, None

    def _translate_interaction(self, payload: dict[str, Any]) -> _Inbound | None:
        if payload.get("type") != "block_actions":
            return None
        action = next(
            (
                a
                for a in payload.get("actions") or []
                if isinstance(a, dict) and a.get("type") == "button" and "value" in a
            ),
            None,
        )
        if action is None:
            return None
        person = payload["user"]
        container = payload.get("container") or {}
        message = payload.get("message") or {}
        channel = container.get("channel_id") or (payload.get("channel") or {}).get("id")
        message_ts = str(container.get("message_ts") or message.get("ts") or "")
        thread = _thread(message_ts, container.get("thread_ts") or message.get("thread_ts"))
        chat = ChatRef(PLATFORM, str(channel), thread)
        response_url = str(payload.get("response_url") or "")
        user_id = str(person["id"])
        if not self.access.may_use(user_id):
            return _Refusal(chat, response_url) if response_url else _Refusal(chat)
        press_id = str(payload.get("trigger_id") or action.get("action_ts") or "")
        if press_id and response_url:
            self._response_urls.put(press_id, response_url)
        name = str(person.get("username") or person.get("name") or "")
        return ButtonPress(chat, User(user_id, name), message_ts, str(action["value"]), press_id)

    def _strip_mention(self, text: str) -> str:
        """`<@BOT> fix it` → `fix it`: a mention that addresses the bot is not part of the text."""
        if not self._bot_user_id:
            return text
        lead = re.match(rf"\s*<@{re.escape(self._bot_user_id)}(?:\|[^>]*)?>[\s,:]*", text)
        return text[lead.end() :] if lead else text

    def is_group(self, chat: ChatRef) -> bool:
        """Never: Slack paces chat.postMessage per channel, whatever kind of conversation it is
        (https://api.slack.com/docs/rate-limits), so no stricter group pace applies."""
        return False

    # --- outbound ---------------------------------------------------------------------------------
    async def send(
        self,
        chat: ChatRef,
        text: str,
        *,
        buttons: Sequence[Sequence[Button]] = (),
        reply_to: str | None = None,
    ) -> str:
        """chat.postMessage; returns the message's ts.

        Slack has no quoted replies: `reply_to` puts the message in the thread of that message
        when `chat` names no thread.
        """
        params = {"channel": chat.chat_id, **_content(text, buttons)}
        thread = chat.thread or reply_to
        if thread:
            params["thread_ts"] = thread
        posted = await self._call("chat.postMessage", self._bot_token.get_secret_value(), params)
        return str(posted["ts"])

    async def edit(
        self,
        chat: ChatRef,
        message_id: str,
        text: str,
        *,
        buttons: Sequence[Sequence[Button]] | None = None,
    ) -> None:
        """chat.update. The blocks are always replaced, so `buttons=None` removes the buttons
        and keeps the text visible."""
        params = {"channel": chat.chat_id, "ts": message_id, **_content(text, buttons or ())}
        await self._call("chat.update", self._bot_token.get_secret_value(), params)

    async def answer_press(self, press: ButtonPress, text: str = "") -> None:
        """Slack needs no answer: the envelope's ack already was one, so without `text` this
        makes no call. With `text`, only the person who pressed sees it (posted to the press's
        response_url, Slack's counterpart of Telegram's callback toast); presses too old to be
        remembered are answered silently."""
        if not text:
            return
        url = self._response_urls.get(press.press_id)
        if url is None:
            log.debug("Slack: no response_url kept for press %s", press.press_id)
            return
        await self._respond(url, text)

    async def refuse(self, event: ChatEvent, text: str) -> None:
        """chat.postEphemeral: only the person behind `event` sees `text`, in the event's thread
        if it is in one (a press, a message and a command alike).

        Never raises `ChatError`: a refusal Slack would not deliver (the person left the
        channel, a 429, Slack down) is logged, and whoever refused goes on as before.
        """
        pieces = _split(_escape(text), FALLBACK_TEXT_LIMIT - 1)
        params = {
            "channel": event.chat.chat_id,
            "user": event.user.id,
            "text": pieces[0] + "…" if len(pieces) > 1 else "".join(pieces),
        }
        if event.chat.thread:
            params["thread_ts"] = event.chat.thread
        try:
            await self._call("chat.postEphemeral", self._bot_token.get_secret_value(), params)
        except ChatError as exc:
            log.warning(
                "Slack: could not tell %s in %s that it was refused (%s)",
                event.user.id,
                event.chat.key,
                _describe(exc),
            )

    async def upload(self, chat: ChatRef, filename: str, data: bytes, caption: str = "") -> str:
        """Files upload v2: getUploadURLExternal → POST the bytes → completeUploadExternal.

        Returns the file id (F…), not a message ts: Slack shares the file in the conversation
        asynchronously and completeUploadExternal does not say in which message.
        """
        token = self._bot_token.get_secret_value()
        ticket = await self._call(
            "files.getUploadURLExternal", token, {"filename": filename, "length": str(len(data))}
        )
        file_id, upload_url = str(ticket["file_id"]), str(ticket["upload_url"])
        # Raw bytes and no token, as slack_sdk does: the URL itself is the credential.
        response = await self._post(
            "file upload",
            upload_url,
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        if response.status_code != 200:
            raise ChatError(
                f"Slack file upload failed: HTTP {response.status_code}",
                code=f"http_{response.status_code}",
            )
        params = {
            "files": json.dumps([{"id": file_id, "title": filename}]),
            "channel_id": chat.chat_id,
        }
        if chat.thread:
            params["thread_ts"] = chat.thread
        if caption:
            params["initial_comment"] = _escape(caption)
        await self._call("files.completeUploadExternal", token, params)
        return file_id

    async def download(self, attachment: Attachment, max_bytes: int) -> bytes:
        """GET the file's url_private with the bot token (only on Slack's hosts); raises
        `FileTooLarge` over `max_bytes`, before fetching when Slack reported the size."""
        if attachment.size is not None and attachment.size > max_bytes:
            raise FileTooLarge(f"{attachment.name} is over {max_bytes} bytes", size=attachment.size)
        try:
            url = httpx.URL(attachment.ref)
        except httpx.InvalidURL:
            raise ChatError(f"{attachment.name} has no usable URL", code="bad_url") from None
        if url.scheme not in ("https", "http") or url.host not in self._file_hosts:
            raise ChatError(
                f"{attachment.name} is not on Slack's file host; not fetched", code="foreign_url"
            )
        token = self._bot_token.get_secret_value()
        headers = {"Authorization": f"Bearer {token}"}
        failure: ChatError
        try:
            async with self._http.stream(
                "GET", url, headers=headers, timeout=DOWNLOAD_TIMEOUT
            ) as response:
                if response.status_code != 200:
                    # A redirect is Slack's sign-in page: the token was not accepted for it.
                    failure = ChatError(
                        f"Slack answered the download of {attachment.name} with HTTP "
                        f"{response.status_code} (does the app have the files:read scope?)",
                        code=f"http_{response.status_code}",
                    )
                else:
                    data = bytearray()
                    async for chunk in response.aiter_bytes():
                        data += chunk
                        if len(data) > max_bytes:
                            raise FileTooLarge(
                                f"{attachment.name} is over {max_bytes} bytes", size=len(data)
                            )
                    return bytes(data)
        except httpx.HTTPError as exc:
            failure = ChatUnavailable(
                f"Slack file download: no answer ({type(exc).__name__})", code="unreachable"
            )
        raise failure

    # --- HTTP -------------------------------------------------------------------------------------
    async def _call(self, method: str, token: str, params: dict[str, str]) -> dict[str, Any]:
        """One Web API call, form-encoded (files.getUploadURLExternal takes no JSON)."""
        response = await self._post(
            method,
            f"{self._api}/{method}",
            data=params,
            headers={"Authorization": f"Bearer {token}"},
        )
        try:
            body = response.json()
        except ValueError:
            body = None
        status = response.status_code
        if not isinstance(body, dict):
            if status == 200:
                raise ChatUnavailable(f"Slack {method}: the answer is not JSON", code="not_json")
            raise ChatError(f"Slack {method} failed: HTTP {status}", code=f"http_{status}")
        if body.get("ok") is not True:
            code = str(body.get("error") or "unknown_error")
            if code == "ratelimited":
                raise RateLimited(_retry_after(response), code=code, scope=_rate_scope(method))
            if code in MESSAGE_GONE_CODES:
                raise MessageGone(f"Slack {method} failed: {code}", code=code)
            needed = f" (needs the scope {body['needed']})" if body.get("needed") else ""
            raise ChatError(f"Slack {method} failed: {code}{needed}", code=code)
        return body

    async def _respond(self, response_url: str, text: str) -> None:
        """A message only the person who acted sees, through their interaction's response_url."""
        body = {"text": _escape(text), "response_type": "ephemeral", "replace_original": False}
        response = await self._post("response_url", response_url, json=body)
        if response.status_code != 200:
            try:
                code = str(response.json().get("error") or "")
            except (ValueError, AttributeError):
                code = ""
            code = code or f"http_{response.status_code}"
            raise ChatError(f"Slack response_url failed: {code}", code=code)

    async def _post(self, what: str, url: str, **kwargs: Any) -> httpx.Response:
        """POST and map the transport's failures: 429 → RateLimited (Slack's usual answer; its
        scope by `_rate_scope(what)`), 5xx and no answer → ChatUnavailable. Messages name the
        call, never a URL or token."""
        try:
            response = await self._http.post(url, **kwargs)
        except httpx.HTTPError as exc:
            raise ChatUnavailable(
                f"Slack {what}: no answer ({type(exc).__name__})", code="unreachable"
            ) from exc
        if response.status_code == 429:
            raise RateLimited(_retry_after(response), code="ratelimited", scope=_rate_scope(what))
        if response.status_code >= 500:
            raise ChatUnavailable(
                f"Slack {what}: HTTP {response.status_code}", code=f"http_{response.status_code}"
            )
        return response


# --- connection state -----------------------------------------------------------------------------
@dataclass(eq=False)
class _Link:
    """One Socket Mode connection, as the connect loop sees it."""

    number: int
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    # Set once the connect loop must move on: the link ended, or Slack asked for a new one.
    done: trio.Event = field(default_factory=trio.Event)
    ready_at: float | None = None
    reason: str = ""
    planned: bool = False
    fatal: ChatError | None = None

    def end(self, reason: str, *, planned: bool = False, fatal: ChatError | None = None) -> None:
        """Record why the link is over; the first reason wins."""
        if self.done.is_set():
            return
        self.reason, self.planned, self.fatal = reason, planned, fatal
        self.done.set()


@dataclass(frozen=True)
class _Refusal:
    """Someone not in allowed_users addressed the bot: answer them here."""

    chat: ChatRef
    response_url: str = ""


_Inbound = Command | Message | ButtonPress | _Refusal


# --- helpers --------------------------------------------------------------------------------------
async def _next_frame(ws: trio_websocket.WebSocketConnection) -> dict[str, Any]:
    """The next JSON object Slack sends; anything else is skipped."""
    while True:
        raw = await ws.get_message()
        try:
            frame = json.loads(raw)
        except ValueError:
            log.debug("Slack: skipping a frame that is not JSON")
            continue
        if isinstance(frame, dict):
            return frame


async def _ack(
    ws: trio_websocket.WebSocketConnection,
    envelope_id: str,
    payload: dict[str, Any] | None = None,
) -> None:
    frame: dict[str, Any] = {"envelope_id": envelope_id}
    if payload:
        frame["payload"] = payload
    await ws.send_message(json.dumps(frame))


def _not_hello(frame: dict[str, Any]) -> ChatError:
    reason = str(frame.get("reason") or frame.get("type") or "unknown")
    if reason == "link_disabled":
        return ChatError(
            "Slack turned Socket Mode off for this app (link_disabled); enable Socket Mode in "
            "the app's settings and restart",
            code=reason,
        )
    # e.g. too_many_websockets: worth another try later.
    return ChatUnavailable(f"Slack sent {reason} instead of hello", code=reason)


def _dedupe_keys(envelope_id: str, kind: str, payload: dict[str, Any]) -> list[tuple[str, ...]]:
    keys: list[tuple[str, ...]] = [("envelope", envelope_id)]
    if kind == "events_api":
        if payload.get("event_id"):
            keys.append(("event", str(payload["event_id"])))
        event = payload.get("event")
        # A person's @mention comes as `message` and as `app_mention`, with the same ts; so does
        # one that shares files (the `message` then has the subtype file_share).
        if not isinstance(event, dict) or event.get("subtype") not in (None, "", "file_share"):
            return keys
        if event.get("type") in ("message", "app_mention") and event.get("ts"):
            keys.append(("message", str(event.get("channel")), str(event["ts"])))
    return keys


def _team_of(kind: str, payload: dict[str, Any]) -> str:
    """The workspace an envelope comes from, "" if it names none. Interactions carry `team.id`,
    "the workspace … the interaction originated from", and `user.team_id`, which is an org id
    (E…) under Enterprise Grid
    (https://docs.slack.dev/reference/interaction-payloads/block_actions-payload)."""
    if kind == "interactive":
        team = payload.get("team")
        if isinstance(team, dict) and team.get("id"):
            return str(team["id"])
        user = payload.get("user")
        return str(user.get("team_id") or "") if isinstance(user, dict) else ""
    return str(payload.get("team_id") or "")


def _thread(ts: str, thread_ts: object) -> str | None:
    """The thread a message is in. A parent with replies carries its own ts as thread_ts."""
    if isinstance(thread_ts, str) and thread_ts and thread_ts != ts:
        return thread_ts
    return None


def _attachments(files: object) -> tuple[Attachment, ...]:
    """The files of a file share (https://api.slack.com/types/file) that can be fetched."""
    if not isinstance(files, list):
        return ()
    found = []
    for file in files:
        if not isinstance(file, dict) or not isinstance(file.get("url_private"), str):
            continue  # a file the app may not see comes as {"id", "mode": "hidden_by_limit"}
        mime = str(file.get("mimetype") or "application/octet-stream")
        name = str(file.get("name") or file.get("id") or "file")
        kind = (
            "image"
            if mime.startswith("image/")
            else "audio"
            if mime.startswith("audio/")
            else "document"
        )
        size = file.get("size")
        found.append(
            Attachment(
                kind, name, mime, file["url_private"], size if isinstance(size, int) else None
            )
        )
    return tuple(found)


def _parse_text(
    chat: ChatRef, user: User, text: str, ts: str, *, reply_to: str | None
) -> Command | Message:
    """`/task fix it` typed as a message is a command too: slash commands do not work in threads."""
    command = _COMMAND.fullmatch(text.strip())
    if command:
        name, args = command.group(1).lower(), (command.group(2) or "").strip()
        return Command(chat, user, name, args, message_id=ts)
    return Message(chat, user, text, message_id=ts, reply_to=reply_to)


def _plain_text(text: str) -> str:
    """What the person typed, from Slack's markup: links show their label, channels their name,
    `&lt;` is `<` again. User mentions stay `<@U…>`."""

    def markup(match: re.Match[str]) -> str:
        target, _, label = match.group(1).partition("|")
        if target.startswith("@"):
            return f"<{target}>"
        if target.startswith("#"):
            return f"#{label}" if label else target
        if target.startswith("!"):
            return label or "@" + target[1:].partition("^")[0]
        return label or target

    text = _MARKUP.sub(markup, text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _escape(text: str) -> str:
    """Slack's mrkdwn escaping: only these three, never the whole text
    (https://docs.slack.dev/messaging/formatting-message-text#escaping)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _utf16_len(text: str) -> int:
    # Slack's counting is undocumented; UTF-16 units are never fewer than code points.
    return len(text.encode("utf-16-le")) // 2


def _split(text: str, limit: int) -> list[str]:
    """Cut escaped text into pieces of at most `limit` UTF-16 units, never inside an entity such
    as `&amp;`. A newline in the second half of a piece is a better cut: it is dropped, since
    consecutive sections start on a new line anyway."""
    pieces: list[str] = []
    while _utf16_len(text) > limit:
        cut, used = 0, 0
        for char in text:
            used += 2 if ord(char) > 0xFFFF else 1
            if used > limit:
                break
            cut += 1
        entity = text.rfind("&", max(0, cut - 4), cut)
        if entity != -1 and text.find(";", entity) >= cut:
            cut = entity
        newline = text.rfind("\n", cut // 2, cut)
        if newline > 0:
            pieces.append(text[:newline])
            text = text[newline + 1 :]
        else:
            pieces.append(text[:cut])
            text = text[cut:]
    if text:
        pieces.append(text)
    return pieces


def _content(text: str, buttons: Sequence[Sequence[Button]]) -> dict[str, str]:
    """`text` and `blocks` of a message: the text in sections, then one actions block per row."""
    escaped = _escape(text)
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": piece}}
        for piece in _split(escaped, SECTION_TEXT_LIMIT)
    ]
    for row_index, row in enumerate(buttons):
        if not row:
            continue
        if len(row) > SLACK_LIMITS.max_buttons_per_row:
            raise ValueError(
                f"a row has {len(row)} buttons; Slack allows {SLACK_LIMITS.max_buttons_per_row}"
            )
        blocks.append(
            {
                "type": "actions",
                "block_id": f"buttons-{row_index}",
                "elements": [
                    _button(button, f"button-{row_index}-{index}")
                    for index, button in enumerate(row)
                ],
            }
        )
    if len(blocks) > MAX_BLOCKS:
        raise ValueError(f"the message needs {len(blocks)} blocks; Slack allows {MAX_BLOCKS}")
    fallback = _split(escaped, FALLBACK_TEXT_LIMIT - 1)
    return {
        "text": fallback[0] + "…" if len(fallback) > 1 else escaped,
        "blocks": json.dumps(blocks, ensure_ascii=False),
    }


def _button(button: Button, action_id: str) -> dict[str, Any]:
    if len(button.data.encode()) > SLACK_LIMITS.max_button_data_bytes:
        raise ValueError(
            f"button data is {len(button.data.encode())} bytes; Slack allows "
            f"{SLACK_LIMITS.max_button_data_bytes}"
        )
    label = button.label
    if len(label) > BUTTON_LABEL_LIMIT:
        label = label[: BUTTON_LABEL_LIMIT - 1] + "…"
    return {
        "type": "button",
        "text": {"type": "plain_text", "text": label},
        "action_id": action_id,
        "value": button.data,
    }


def _retry_after(response: httpx.Response) -> float:
    try:
        seconds = float(response.headers.get("Retry-After", ""))
    except ValueError:
        return DEFAULT_RETRY_AFTER
    return seconds if seconds >= 0 else DEFAULT_RETRY_AFTER


def _rate_scope(method: str) -> str:
    """Who waits out a 429 of `method`. Web API tiers count per method per workspace, so every
    chat waits; chat.postMessage is limited per channel (https://api.slack.com/docs/rate-limits).
    """
    return "chat" if method == "chat.postMessage" else "bot"


def _transient(exc: ChatError) -> bool:
    return isinstance(exc, (ChatUnavailable, RateLimited)) or exc.code in TRANSIENT_CODES


def _refused_token(key: str, method: str, exc: ChatError) -> ChatError:
    kind = (
        "Bot User OAuth Token (xoxb-…)"
        if key == "slack.bot_token"
        else ("App-Level Token (xapp-…) with connections:write")
    )
    variable = "ANYCODE_SLACK_BOT_TOKEN" if key == "slack.bot_token" else "ANYCODE_SLACK_APP_TOKEN"
    return ChatError(
        f"Slack refused {key}: {method} failed with {exc.code}; set the app's {kind} in "
        f"config.toml or {variable}",
        code=exc.code,
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio_websocket.ConnectionClosed):
        reason = exc.reason
        return f"closed ({reason.code} {reason.name})" if reason is not None else "closed"
    if isinstance(exc, ChatError):
        return str(exc)
    return type(exc).__name__
