"""Telegram: long polling getUpdates for what people do, Bot API methods for the replies.

`TelegramClient` is the `ChatClient` for one bot. ``await nursery.start(client.run, events)``
asks getMe who the bot is (its username decides which ``/cmd@bot`` commands are ours), registers
the command menu with setMyCommands, reports ready, and then long-polls getUpdates forever,
turning each update into a `Command`, `Message` or `ButtonPress` (Bot API reference:
https://core.telegram.org/bots/api#getupdates). `send`, `edit`, `answer_press`, `refuse` and
`upload` may be called from any task meanwhile.

Errors, as the daemon sees them:

- 429 on an outbound call raises `RateLimited(retry_after)`. The client never retries it: the
  caller (the flusher) owns the wait, pauses that chat and coalesces what piles up. The poll loop
  waits `retry_after` itself, never less.
- 5xx and network failures raise `ChatUnavailable`; the poll loop backs off with jitter
  (`supervisors.Backoff`) and starts again from the first delay after a success.
- 409 on getUpdates (another instance polls with this token, or a webhook is set) is logged as a
  warning naming the cause, then backed off like a network failure.
- 401 is fatal: `run` raises `ChatError` saying that ``telegram.bot_token`` was rejected.
- A message that no longer exists ("message to edit not found", "message to delete not found")
  raises `MessageGone`; an edit to the text and buttons the message already has ("message is not
  modified") raises `NotModified`, which `edit` treats as done.
- Any other refusal raises `ChatError` whose `code` is Telegram's description.

The Bot API documents `error_code` and `description` but not the descriptions' wording
(https://core.telegram.org/bots/api#making-requests). The phrases matched here are those of the
Bot API server, https://github.com/tdlib/telegram-bot-api (telegram-bot-api/Client.cpp:
`check_message` answers "<message purpose> not found", `fail_query_with_error` words
MESSAGE_NOT_MODIFIED and QUERY_ID_INVALID), and of TDLib's entity parser behind it ("Can't parse
entities", https://github.com/tdlib/td).

The token is part of every URL (``/bot<token>/<method>``), so URLs never reach a log or an
exception: httpx errors are replaced by errors that name the method only, and a filter on the
"httpx" logger (which logs each request's URL at INFO) redacts the token for as long as the
client is open.

Text is sent as plain text unless it is a `markdown.Rich`; then it goes as MarkdownV2 and, should
Telegram answer "can't parse entities", is sent again as the plain text it displays. An edit that
would change nothing (same text and buttons as this client last set) is skipped, so "message is
not modified" is never provoked; if Telegram says it anyway, the edit counts as done.

People the access policy (`allowed_users`, `admins`, `allow_everyone`) does not let in never
reach the actors: their commands and messages get the reply `NOT_AUTHORIZED`, their button
presses an alert with it.
Every button press is answered: refused ones at once, forwarded ones by the consumer through
`answer_press`, and any press still unanswered after `PRESS_ANSWER_DEADLINE` by the client.

Photos, documents and voice notes are forwarded as the `Attachment`s of a `Command` (when their
caption is one) or a `Message` (the caption, maybe empty); `download` fetches one with getFile
and the file path (https://core.telegram.org/bots/api#getfile: bots fetch at most 20 MB). Other
non-text messages (stickers, locations) are not forwarded; in a private chat the client replies
`ONLY_TEXT`, in groups it stays silent. An album (photos or documents sent together) arrives as
one message per part, all with the same ``media_group_id``
(https://core.telegram.org/bots/api#message); the client holds the parts until none has come for
`ALBUM_QUIET` seconds and hands them on as one `Command` or `Message` with every attachment: the
part whose caption is a command makes it a command, the other captions follow its arguments (or
make the message's text). Someone the access policy keeps out is told so once per album. The
updates of an album held back are confirmed to Telegram with the next poll; an album still held
when the client stops is handed on then, one a daemon killed outright held is lost.

Forum topics: a message in a topic of a forum supergroup names its topic (`message_thread_id`
with `is_topic_message`), which becomes `ChatRef.thread`; what is sent to that ChatRef goes
into the topic. A topic that was closed ("TOPIC_CLOSED") or deleted ("message thread not
found", as the Bot API server words TDLib's errors) raises `ThreadGone`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import mimetypes
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import httpx
import trio

from anycode_actors.chat._download import read_capped
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
    NotModified,
    RateLane,
    RateLimited,
    ThreadGone,
    User,
)
from anycode_actors.chat.markdown import Rich
from anycode_actors.config import TelegramConfig
from anycode_actors.steps import step
from supervisors import Backoff

__all__ = [
    "DEFAULT_COMMANDS",
    "DOWNLOAD_MAX_BYTES",
    "NOT_AUTHORIZED",
    "ONLY_TEXT",
    "PLATFORM",
    "TELEGRAM_LIMITS",
    "TelegramClient",
]

log = logging.getLogger(__name__)

PLATFORM: Final = "telegram"

#: Telegram's numbers (https://core.telegram.org/bots/api#sendmessage and the Bot FAQ,
#: https://core.telegram.org/bots/faq#my-bot-is-hitting-limits-how-do-i-avoid-this). Text is
#: counted in code points; sends and edits share one budget per chat: about one a second with
#: short bursts, 20 a minute in groups.
#: Telegram publishes no burst size, so it is kept small.
TELEGRAM_LIMITS: Final = ChatLimits(
    max_text_length=4096,
    max_button_data_bytes=64,
    max_buttons_per_row=8,
    per_second=1.0,
    burst=3,
    group_per_minute=20,
)
#: How many calls the bot may make at once before its per-second rate applies.
BOT_BURST: Final = 10
#: A document's caption, and the text of an answer to a button press, in code points
#: (https://core.telegram.org/bots/api#senddocument, #answercallbackquery).
CAPTION_MAX: Final = 1024
PRESS_ANSWER_MAX: Final = 200

#: The commands shown in Telegram's menu. The chat actor also accepts /start as /task.
DEFAULT_COMMANDS: Final[tuple[tuple[str, str], ...]] = (
    ("task", "Start a coding task: /task [agent] <prompt>"),
    ("status", "List active sessions"),
    ("cancel", "Cancel a session: /cancel [id]"),
    ("diff", "Show a session's changes: /diff [id]"),
    ("pr", "Push a session's changes as a pull request: /pr [id]"),
    ("agents", "List available agents"),
    ("help", "Show what this bot can do"),
)

ONLY_TEXT: Final = "Only text, photos, documents and voice notes are supported."
#: "For the moment, bots can download files of up to 20MB in size"
#: (https://core.telegram.org/bots/api#getfile).
DOWNLOAD_MAX_BYTES: Final = 20 * 1024 * 1024
DOWNLOAD_TIMEOUT: Final = httpx.Timeout(120.0, connect=10.0)

#: The Bot API server holds a long poll for at most 50 s: it clamps getUpdates' timeout to
#: LONG_POLL_MAX_TIMEOUT (https://github.com/tdlib/telegram-bot-api, telegram-bot-api/Client.h).
LONG_POLL_MAX: Final = 50
#: The HTTP read timeout of a long poll exceeds the poll itself by this much, so a poll that
#: Telegram answers on time is never cut off by httpx.
POLL_READ_MARGIN: Final = 15.0
HTTP_TIMEOUT: Final = httpx.Timeout(30.0, connect=10.0)
UPLOAD_TIMEOUT: Final = httpx.Timeout(120.0, connect=10.0)
#: Only these updates are asked for; everything else (edits, reactions, members) is not needed.
ALLOWED_UPDATES: Final = ("message", "callback_query")

#: A 429 without retry_after (never seen from Telegram, but a proxy might) waits this long.
RETRY_AFTER_DEFAULT: Final = 5.0
#: The poll loop waits this much beyond retry_after, as python-telegram-bot does: clocks differ.
RETRY_AFTER_MARGIN: Final = 0.5
#: Backoff of the poll loop after network failures, 5xx and conflicts.
NETWORK_BACKOFF_INITIAL: Final = 1.0
NETWORK_BACKOFF_FACTOR: Final = 2.0
NETWORK_BACKOFF_CAP: Final = 30.0
NETWORK_BACKOFF_JITTER: Final = 0.5

#: The parts of an album are collected until none has come for this long (Telegram sends them
#: one message each, within moments).
ALBUM_QUIET: Final = 1.0
#: How many albums are remembered, to tell someone who may not use the bot once per album.
ALBUMS_REMEMBERED: Final = 256

#: A forwarded press the consumer has not answered by then is answered by the client, so the
#: user's progress bar always stops. Telegram accepts answers for some seconds only.
PRESS_ANSWER_DEADLINE: Final = 10.0
#: How many messages' last text and buttons are remembered to skip identical edits.
SENT_REMEMBERED: Final = 4096
#: On shutdown, confirming the updates already handed on may take this long.
SHUTDOWN_CONFIRM_TIMEOUT: Final = 5.0

#: What replaces the token in httpx's log lines.
REDACTED_TOKEN: Final = "<bot token>"

# Message contents that are a person's own non-text message (not a service message).
_MEDIA_KEYS: Final = frozenset(
    {
        "animation",
        "audio",
        "contact",
        "dice",
        "document",
        "location",
        "photo",
        "poll",
        "sticker",
        "venue",
        "video",
        "video_note",
        "voice",
    }
)


class TelegramClient:
    """One Telegram bot: a `ChatClient` over long polling and the Bot API.

    `http` and `backoff` are for tests and for sharing a connection pool; by default the client
    makes its own HTTP client (closed by `aclose`, or by leaving ``async with``) and backs off
    1 s, 2 s, 4 s … up to 30 s, each shortened by up to half at random.
    """

    def __init__(
        self,
        config: TelegramConfig,
        *,
        http: httpx.AsyncClient | None = None,
        backoff: Backoff | None = None,
        commands: Sequence[tuple[str, str]] = DEFAULT_COMMANDS,
    ) -> None:
        self.platform = PLATFORM
        self.limits = TELEGRAM_LIMITS
        # Forum topics are made by people; a /task in the main chat stays there.
        self.task_threads = False
        self._token = config.bot_token.get_secret_value()
        self._base_url = config.api_base_url.rstrip("/")
        self.access = AccessPolicy.of(
            config.allowed_users, everyone=config.allow_everyone, admins=config.admins
        )
        # One bucket for every call of the bot, whatever the chat (sends and edits share it).
        lane = RateLane("bot", float(config.bot_requests_per_second), BOT_BURST)
        self.rate_lanes: Mapping[str, RateLane] = {"send": lane, "edit": lane, "upload": lane}
        self._poll_timeout = min(max(config.poll_timeout, 1), LONG_POLL_MAX)
        self._poll_http_timeout = httpx.Timeout(
            HTTP_TIMEOUT.connect or 10.0, read=self._poll_timeout + POLL_READ_MARGIN
        )
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(timeout=HTTP_TIMEOUT)
        self._backoff = backoff or Backoff(
            initial=NETWORK_BACKOFF_INITIAL,
            factor=NETWORK_BACKOFF_FACTOR,
            cap=NETWORK_BACKOFF_CAP,
            jitter=NETWORK_BACKOFF_JITTER,
        )
        self._commands = tuple(commands)
        self._bot_username: str | None = None
        # (chat id, message id) → (text, reply markup) this client last set on the message.
        self._shown: Recent[tuple[str, str], tuple[str | Rich, str]] = Recent(SENT_REMEMBERED)
        # Forwarded presses not answered yet → when the client answers them itself.
        self._unanswered: dict[str, float] = {}
        self._press_arrived = trio.Event()
        # Albums being collected, by (chat key, media_group_id), in the order they began.
        self._albums: dict[tuple[str, str], _Album] = {}
        self._album_arrived = trio.Event()
        self._albums_refused: Recent[tuple[str, str], bool] = Recent(ALBUMS_REMEMBERED)
        self._redactor = _RedactToken(self._token)
        logging.getLogger("httpx").addFilter(self._redactor)

    async def __aenter__(self) -> TelegramClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if this client made it; stop redacting httpx's log."""
        try:
            if self._owns_http:
                await self._http.aclose()
        finally:
            logging.getLogger("httpx").removeFilter(self._redactor)

    @property
    def bot_username(self) -> str | None:
        """The bot's @username without the @, known once `run` is ready."""
        return self._bot_username

    def is_group(self, chat: ChatRef) -> bool:
        """Groups, supergroups and channels have negative Bot API ids, people positive ones
        (https://core.telegram.org/api/bots/ids); groups are paced at 20 messages a minute
        (https://core.telegram.org/bots/faq#my-bot-is-hitting-limits-how-do-i-avoid-this)."""
        return chat.chat_id.startswith("-")

    # --- inbound ----------------------------------------------------------------------------------

    async def run(
        self,
        events: trio.MemorySendChannel[ChatEvent],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Receive from Telegram until cancelled; ready after getMe and setMyCommands.

        Raises `ChatError` when it cannot go on: a token Telegram rejects (401), or a refusal
        that retrying cannot fix. Network failures and 5xx are retried with backoff, also before
        ready.
        """
        me = await self._call_until_answered("getMe", {})
        if not isinstance(me, dict) or not isinstance(me.get("username"), str):
            raise ChatError("Telegram getMe did not name the bot", code="no_username")
        self._bot_username = me["username"]
        await self._register_commands()
        log.info("Telegram: connected as @%s", self._bot_username)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._answer_forgotten_presses)
            nursery.start_soon(self._hand_on_albums, events)
            task_status.started()
            fatal = await self._poll(events)
            nursery.cancel_scope.cancel()
        raise fatal

    async def _register_commands(self) -> None:
        commands = [{"command": name, "description": text} for name, text in self._commands]
        try:
            await self._call_until_answered("setMyCommands", {"commands": commands})
        except _ApiError as error:
            # The menu is a convenience; the bot works without it.
            log.warning("Telegram: setMyCommands was refused (%s); no command menu", error.code)

    async def _call_until_answered(self, method: str, params: dict[str, Any]) -> Any:
        """`_call`, waiting out 429s and retrying network failures and 5xx with backoff."""
        failures = 0
        while True:
            try:
                return await self._call(method, params)
            except RateLimited as limited:
                delay = limited.retry_after + RETRY_AFTER_MARGIN
                log.warning("Telegram: %s rate limited; retrying in %.1f s", method, delay)
            except ChatUnavailable as error:
                delay = self._backoff.delay(failures)
                failures += 1
                log.warning("Telegram: %s failed (%s); retrying in %.1f s", method, error, delay)
            await trio.sleep(delay)

    async def _poll(self, events: trio.MemorySendChannel[ChatEvent]) -> ChatError:
        """getUpdates until a refusal that retrying cannot fix, which it returns (so that `run`
        raises it as it is, not inside an ExceptionGroup).

        An update is confirmed (by the next call's offset) only after it has been handed on, so
        a restart never loses one."""
        offset: int | None = None
        confirmed: int | None = None
        failures = 0
        try:
            while True:
                params: dict[str, Any] = {
                    "timeout": self._poll_timeout,
                    "allowed_updates": list(ALLOWED_UPDATES),
                }
                if offset is not None:
                    params["offset"] = offset
                confirmed = offset
                try:
                    updates = await self._call(
                        "getUpdates", params, http_timeout=self._poll_http_timeout
                    )
                    if not isinstance(updates, list):
                        raise ChatUnavailable("Telegram getUpdates answered without a list")
                except RateLimited as limited:
                    delay = limited.retry_after + RETRY_AFTER_MARGIN
                    log.warning("Telegram: getUpdates rate limited; polling again in %.1f s", delay)
                    await trio.sleep(delay)
                    continue
                except ChatUnavailable as error:
                    delay = self._backoff.delay(failures)
                    failures += 1
                    log.warning(
                        "Telegram: getUpdates failed (%s); polling again in %.1f s", error, delay
                    )
                    await trio.sleep(delay)
                    continue
                except _ApiError as error:
                    if error.error_code != 409:
                        return error
                    delay = self._backoff.delay(failures)
                    failures += 1
                    log.warning(
                        "Telegram: another instance is polling with this bot token, or a webhook "
                        "is set (%s). Stop the other instance or delete the webhook; polling "
                        "again in %.1f s",
                        error.code,
                        delay,
                    )
                    await trio.sleep(delay)
                    continue
                except ChatError as error:
                    return error  # 401, or a refusal that polling again would only repeat
                failures = 0
                if updates:
                    step("update")
                for update in updates:
                    update_id = update.get("update_id") if isinstance(update, dict) else None
                    if not isinstance(update_id, int):
                        log.warning("Telegram: skipped an update without update_id")
                        continue
                    await self._handle(update, events)
                    offset = max(offset or 0, update_id + 1)
        finally:
            self._hand_on_every_album(events)
            if offset is not None and offset != confirmed:
                await self._confirm(offset)

    async def _confirm(self, offset: int) -> None:
        """Tell Telegram that every update before `offset` was handled, as the daemon stops."""
        with trio.move_on_after(SHUTDOWN_CONFIRM_TIMEOUT, shield=True):
            try:
                await self._call("getUpdates", {"offset": offset, "timeout": 0, "limit": 1})
            except ChatError as error:
                log.warning("Telegram: could not confirm the last updates (%s)", error)
            except RuntimeError:  # the HTTP client was closed first; Telegram will resend them
                log.warning("Telegram: could not confirm the last updates (HTTP client closed)")

    async def _handle(
        self, update: dict[str, Any], events: trio.MemorySendChannel[ChatEvent]
    ) -> None:
        try:
            inbound = self._translate(update)
        except (KeyError, TypeError, ValueError) as error:
            log.warning(
                "Telegram: skipped update %s that could not be read (%s: %s)",
                update.get("update_id"),
                type(error).__name__,
                error,
            )
            return
        album = _media_group(update)
        if album is not None and isinstance(inbound, Command | Message) and inbound.attachments:
            self._collect(inbound, album)
            return
        if album is not None and isinstance(inbound, _Reply):
            key = (inbound.chat.key, album)
            if key in self._albums_refused:
                return  # told once for the whole album
            self._albums_refused.put(key, True)
        if isinstance(inbound, _Reply):
            await self._reply_itself(inbound)
        elif isinstance(inbound, _Answer):
            await self._answer_itself(inbound)
        elif inbound is not None:
            if isinstance(inbound, ButtonPress):
                self._unanswered[inbound.press_id] = trio.current_time() + PRESS_ANSWER_DEADLINE
                self._press_arrived.set()
            else:
                # The sender's album came first: it goes first, complete, since its parts are
                # all sent before anything the person types next.
                await self._hand_on_albums_of(inbound.chat, inbound.user, events)
            await events.send(inbound)

    def _translate(self, update: dict[str, Any]) -> ChatEvent | _Reply | _Answer | None:
        if isinstance(update.get("message"), dict):
            return self._translate_message(update["message"])
        if isinstance(update.get("callback_query"), dict):
            return self._translate_press(update["callback_query"])
        return None

    def _translate_message(self, message: dict[str, Any]) -> ChatEvent | _Reply | None:
        sender = message.get("from")
        if not isinstance(sender, dict) or sender.get("is_bot"):
            return None
        chat = _chat_ref(message)
        user = _user(sender)
        message_id = str(message["message_id"])
        text = message.get("text")
        entities = message.get("entities")
        attachments = _attachments(message)
        if attachments:
            text = message.get("caption")
            text = text if isinstance(text, str) else ""
            entities = message.get("caption_entities")
        if not isinstance(text, str):
            private = message["chat"].get("type") == "private"
            if not private or not _MEDIA_KEYS & message.keys():
                return None  # service messages, and stickers posted in groups
            if not self.access.may_use(user.id):
                return _Reply(chat, NOT_AUTHORIZED, message_id)
            return _Reply(chat, ONLY_TEXT, message_id)
        command = _parse_command(text, entities)
        ours = ("", (self._bot_username or "").lower())
        if command is not None and command[1].lower() not in ours:
            return None  # /cmd@otherbot is for another bot in the group
        if not self.access.may_use(user.id):
            return _Reply(chat, NOT_AUTHORIZED, message_id)
        if command is not None:
            name, _, args = command
            return Command(chat, user, name, args, message_id, attachments)
        return Message(
            chat, user, text, message_id, reply_to=_reply_to(message), attachments=attachments
        )

    def _translate_press(self, query: dict[str, Any]) -> ButtonPress | _Answer:
        press_id = str(query["id"])
        user = _user(query["from"])
        message = query.get("message")
        data = query.get("data")
        if not isinstance(message, dict) or not isinstance(data, str):
            return _Answer(press_id, "", alert=False)  # inline-mode or game buttons: not ours
        if not self.access.may_use(user.id):
            return _Answer(press_id, NOT_AUTHORIZED, alert=True)
        return ButtonPress(_chat_ref(message), user, str(message["message_id"]), data, press_id)

    async def _reply_itself(self, reply: _Reply) -> None:
        try:
            await self.send(reply.chat, reply.text, reply_to=reply.reply_to)
        except ChatError as error:
            log.warning("Telegram: could not reply in %s (%s)", reply.chat.key, error)

    async def _answer_itself(self, answer: _Answer) -> None:
        try:
            await self._answer(answer.press_id, answer.text, alert=answer.alert)
        except ChatError as error:
            log.warning("Telegram: could not answer a button press (%s)", error)

    def _collect(self, part: Command | Message, album: str) -> None:
        key = (part.chat.key, album)
        held = self._albums.get(key)
        due = trio.current_time() + ALBUM_QUIET
        if held is None:
            self._albums[key] = _Album([part], due)
        else:
            held.parts.append(part)
            held.due = due
        self._album_arrived.set()

    async def _hand_on_albums(self, events: trio.MemorySendChannel[ChatEvent]) -> None:
        """Hand on each album once none of its parts has come for `ALBUM_QUIET` seconds."""
        while True:
            if not self._albums:
                self._album_arrived = trio.Event()
                await self._album_arrived.wait()
                continue
            key, held = min(self._albums.items(), key=lambda item: item[1].due)
            if trio.current_time() < held.due:
                with trio.move_on_at(held.due):
                    self._album_arrived = trio.Event()
                    await self._album_arrived.wait()
                continue
            del self._albums[key]
            await events.send(_merge_album(held.parts))

    async def _hand_on_albums_of(
        self, chat: ChatRef, user: User, events: trio.MemorySendChannel[ChatEvent]
    ) -> None:
        for key, held in list(self._albums.items()):
            if key[0] == chat.key and held.parts[0].user.id == user.id:
                del self._albums[key]
                await events.send(_merge_album(held.parts))

    def _hand_on_every_album(self, events: trio.MemorySendChannel[ChatEvent]) -> None:
        """As the client stops: hand on what is held, as far as the consumer takes it now."""
        albums, self._albums = list(self._albums.values()), {}
        for held in albums:
            try:
                events.send_nowait(_merge_album(held.parts))
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                log.warning("Telegram: an album of %d files was not handed on", len(held.parts))

    async def _answer_forgotten_presses(self) -> None:
        """Answer forwarded presses nobody answered in time; Telegram would spin forever."""
        while True:
            if not self._unanswered:
                self._press_arrived = trio.Event()
                await self._press_arrived.wait()
                continue
            # All presses get the same deadline, so the oldest entry is due first.
            press_id, due = next(iter(self._unanswered.items()))
            if trio.current_time() < due:
                await trio.sleep_until(due)
                continue
            del self._unanswered[press_id]
            log.warning(
                "Telegram: a button press was not answered within %g s; answering it",
                PRESS_ANSWER_DEADLINE,
            )
            await self._answer_itself(_Answer(press_id, "", alert=False))

    # --- outbound ---------------------------------------------------------------------------------

    async def send(
        self,
        chat: ChatRef,
        text: str | Rich,
        *,
        buttons: Sequence[Sequence[Button]] = (),
        reply_to: str | None = None,
    ) -> str:
        """sendMessage; returns the new message's id. `text` is plain unless it is a `Rich`."""
        params = _target(chat)
        markup = _keyboard(buttons)
        if markup is not None:
            params["reply_markup"] = markup
        if reply_to:
            # Still send if the message replied to was deleted meanwhile.
            params["reply_parameters"] = {
                "message_id": int(reply_to),
                "allow_sending_without_reply": True,
            }
        sent = await self._with_text("sendMessage", params, text)
        message_id = str(sent["message_id"])
        self._shown.put((chat.chat_id, message_id), (text, _markup_key(markup)))
        return message_id

    async def edit(
        self,
        chat: ChatRef,
        message_id: str,
        text: str | Rich,
        *,
        buttons: Sequence[Sequence[Button]] | None = None,
    ) -> None:
        """editMessageText. Without `buttons` the message keeps none (this removes buttons).

        Skipped when the text and buttons equal what this client last set on the message.
        """
        markup = _keyboard(buttons or ())
        key = (chat.chat_id, message_id)
        content = (text, _markup_key(markup))
        if self._shown.get(key) == content:
            log.debug("Telegram: skipped an edit that changes nothing")
            return
        params: dict[str, Any] = {
            "chat_id": _chat_id(chat.chat_id),
            "message_id": int(message_id),
        }
        if markup is not None:
            params["reply_markup"] = markup
        try:
            await self._with_text("editMessageText", params, text)
        except NotModified as error:
            log.debug("Telegram: edit changed nothing (%s)", error.code)
        self._shown.put(key, content)

    async def answer_press(self, press: ButtonPress, text: str = "") -> None:
        """answerCallbackQuery: stops the progress bar, shows `text` briefly (≤ 200 chars).

        A press that is too old to answer (Telegram allows a few seconds) is not an error.
        """
        if not press.press_id:
            return
        self._unanswered.pop(press.press_id, None)
        await self._answer(press.press_id, text, alert=False)

    async def refuse(self, event: ChatEvent, text: str) -> None:
        """Tell the person behind `event` that it was refused: a press is answered with `text`
        (the toast only the presser sees, cut to 200 characters); a command or message gets a
        reply to it, in its topic. Telegram has nothing private in a group, so the reply is the
        closest it offers: it names the message it answers.

        Never raises `ChatError`: a refusal Telegram would not deliver (429, blocked, the press
        too old) is logged, and whoever refused goes on as before.
        """
        try:
            if isinstance(event, ButtonPress):
                if event.press_id:
                    await self._answer(event.press_id, text, alert=False)
                    # Only once it is answered: else the client still stops the progress bar
                    # itself at PRESS_ANSWER_DEADLINE.
                    self._unanswered.pop(event.press_id, None)
            else:
                await self._reply(event.chat, text, event.message_id)
        except ChatError as error:
            log.warning(
                "Telegram: could not tell user %s in %s that it was refused (%s)",
                event.user.id,
                event.chat.key,
                error,
            )

    async def _reply(self, chat: ChatRef, text: str, message_id: str) -> None:
        """sendMessage replying to `message_id`, or plainly if that message is gone."""
        text = _shorten(text, TELEGRAM_LIMITS.max_text_length)
        if not message_id:
            await self.send(chat, text)
            return
        try:
            # send() sets allow_sending_without_reply
            # (https://core.telegram.org/bots/api#replyparameters); should a server answer
            # "message to be replied not found" anyway (Client.cpp, see the module docstring),
            # the refusal still goes out, unquoted.
            await self.send(chat, text, reply_to=message_id)
        except _ApiError as error:
            if "message to be replied not found" not in error.code:
                raise
            await self.send(chat, text)

    async def upload(self, chat: ChatRef, filename: str, data: bytes, caption: str = "") -> str:
        """sendDocument as multipart; returns the message id. Captions are cut to 1024."""
        params = _target(chat)
        if caption:
            params["caption"] = _shorten(caption, CAPTION_MAX)
        mime = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        sent = await self._call(
            "sendDocument",
            params,
            files={"document": (filename, data, mime)},
            http_timeout=UPLOAD_TIMEOUT,
        )
        return str(sent["message_id"])

    async def download(self, attachment: Attachment, max_bytes: int) -> bytes:
        """getFile, then the file's bytes from ``/file/bot<token>/<file_path>``
        (https://core.telegram.org/bots/api#getfile). Raises `FileTooLarge` over `max_bytes` or
        the 20 MB bots may fetch, before fetching anything when the size is known."""
        limit = min(max_bytes, DOWNLOAD_MAX_BYTES)
        if attachment.size is not None and attachment.size > limit:
            raise FileTooLarge(f"{attachment.name} is over {limit} bytes", size=attachment.size)
        try:
            described = await self._call("getFile", {"file_id": attachment.ref})
        except _ApiError as error:
            if "file is too big" in error.code.lower():
                raise FileTooLarge(f"{attachment.name} is over 20 MB", code=error.code) from None
            raise
        size = described.get("file_size") if isinstance(described, dict) else None
        path = described.get("file_path") if isinstance(described, dict) else None
        if isinstance(size, int) and size > limit:
            raise FileTooLarge(f"{attachment.name} is over {limit} bytes", size=size)
        if not isinstance(path, str) or not path:
            raise ChatError(f"Telegram gave no path for {attachment.name}", code="no_file_path")
        url = f"{self._base_url}/file/bot{self._token}/{path}"
        failure: ChatError
        try:
            async with self._http.stream("GET", url, timeout=DOWNLOAD_TIMEOUT) as response:
                if response.status_code != 200:
                    failure = ChatError(
                        f"Telegram answered the download of {attachment.name} with HTTP "
                        f"{response.status_code}",
                        code=f"HTTP {response.status_code}",
                    )
                else:
                    return await read_capped(response, limit, attachment.name)
        except httpx.TimeoutException:
            failure = ChatUnavailable(
                f"Telegram did not send {attachment.name} in time", code="timeout"
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            reason = self._redactor.redact(str(exc)) or "no details"
            failure = ChatUnavailable(
                f"could not download {attachment.name} from Telegram: {type(exc).__name__}: "
                f"{reason}",
                code=type(exc).__name__,
            )
        raise failure

    async def _answer(self, press_id: str, text: str, *, alert: bool) -> None:
        params: dict[str, Any] = {"callback_query_id": press_id}
        if text:
            params["text"] = _shorten(text, PRESS_ANSWER_MAX)
        if alert:
            params["show_alert"] = True
        try:
            await self._call("answerCallbackQuery", params)
        except _ApiError as error:
            # QUERY_ID_INVALID, as the Bot API server words it (see the module docstring).
            if "query is too old" not in error.code:
                raise
            log.debug("Telegram: button press too old to answer (%s)", error.code)

    async def _with_text(self, method: str, params: dict[str, Any], text: str | Rich) -> Any:
        """Call `method` with `text`: plain, or MarkdownV2 falling back to its plain text."""
        if not isinstance(text, Rich):
            return await self._call(method, {**params, "text": text})
        try:
            return await self._call(
                method, {**params, "text": text.markdown_v2, "parse_mode": "MarkdownV2"}
            )
        except _ApiError as error:
            # TDLib's MarkdownV2 parser refused the text (see the module docstring).
            if "can't parse entities" not in error.code.lower():
                raise
            log.warning(
                "Telegram: MarkdownV2 refused by %s (%s); sent as plain", method, error.code
            )
        return await self._call(method, {**params, "text": text.plain})

    # --- HTTP -------------------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        params: dict[str, Any],
        *,
        files: dict[str, tuple[str, bytes, str]] | None = None,
        http_timeout: httpx.Timeout = HTTP_TIMEOUT,
    ) -> Any:
        """POST one Bot API method; its `result`, or the matching `ChatError`.

        Errors name the method, never the URL: the URL holds the token. httpx's exceptions are
        not chained either (their text and request carry the URL).
        """
        url = f"{self._base_url}/bot{self._token}/{method}"
        request: dict[str, Any] = {"timeout": http_timeout}
        if files:
            # Multipart fields are strings; objects travel as JSON text
            # (https://core.telegram.org/bots/api#making-requests).
            request["data"] = {
                key: value if isinstance(value, str) else json.dumps(value)
                for key, value in params.items()
            }
            request["files"] = files
        else:
            request["json"] = params
        failure: ChatError
        try:
            response = await self._http.post(url, **request)
        except httpx.TimeoutException:
            failure = ChatUnavailable(f"Telegram did not answer {method} in time", code="timeout")
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            reason = self._redactor.redact(str(exc)) or "no details"
            failure = ChatUnavailable(
                f"could not reach Telegram for {method}: {type(exc).__name__}: {reason}",
                code=type(exc).__name__,
            )
        else:
            return _result(method, response)
        raise failure


# --- answers --------------------------------------------------------------------------------------


#: 400 descriptions for a message id that names no message (any more): the Bot API server's
#: `check_message` says "<purpose> not found" (Client.cpp, see the module docstring).
_GONE_PHRASES: Final = ("message to edit not found", "message to delete not found")
#: MESSAGE_NOT_MODIFIED, as `fail_query_with_error` words it (Client.cpp).
_NOT_MODIFIED_PHRASE: Final = "message is not modified"
#: A forum topic that takes no more messages: deleted (or never there), "message thread not
#: found"; closed, TDLib's TOPIC_CLOSED (or TOPIC_DELETED), passed on in upper case.
_THREAD_GONE_PHRASES: Final = ("message thread not found", "topic_closed", "topic_deleted")


class _ApiError(ChatError):
    """Telegram refused a call with a 4xx other than 401 and 429; `code` is its description."""

    def __init__(self, method: str, error_code: int, description: str) -> None:
        super().__init__(f"Telegram refused {method}: {description}", code=description)
        self.error_code = error_code


def _result(method: str, response: httpx.Response) -> Any:
    """The `result` of a Bot API answer, or the error it stands for
    (https://core.telegram.org/bots/api#making-requests, #responseparameters)."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "ok" not in body:
        message = f"Telegram answered {method} with HTTP {status} and no Bot API body"
        if status >= 500 or status == 429:
            raise ChatUnavailable(message, code=f"HTTP {status}")
        raise ChatError(
            f"{message}; is telegram.api_base_url a Bot API server?", code=f"HTTP {status}"
        )
    if body["ok"] is True:
        return body.get("result")
    error_code = body.get("error_code")
    if not isinstance(error_code, int):
        error_code = status
    description = str(body.get("description") or f"HTTP {status}")
    parameters = body.get("parameters")
    retry_after = parameters.get("retry_after") if isinstance(parameters, dict) else None
    if error_code == 429:
        if not isinstance(retry_after, int | float):
            retry_after = _header_seconds(response.headers.get("retry-after"))
        raise RateLimited(float(retry_after), code=description)
    if error_code == 401:
        raise ChatError(
            "telegram.bot_token was rejected (401 Unauthorized): the token is wrong or was "
            "revoked. Copy the current token from @BotFather (/mybots → API Token).",
            code=description,
        )
    if error_code >= 500:
        raise ChatUnavailable(
            f"Telegram answered {method} with {error_code} {description}", code=description
        )
    if error_code == 400:
        lowered = description.lower()
        if any(phrase in lowered for phrase in _GONE_PHRASES):
            raise MessageGone(f"Telegram refused {method}: {description}", code=description)
        if _NOT_MODIFIED_PHRASE in lowered:
            raise NotModified(f"Telegram refused {method}: {description}", code=description)
        if any(phrase in lowered for phrase in _THREAD_GONE_PHRASES):
            raise ThreadGone(f"Telegram refused {method}: {description}", code=description)
    raise _ApiError(method, error_code, description)


def _header_seconds(value: str | None) -> float:
    try:
        seconds = float(value) if value is not None else RETRY_AFTER_DEFAULT
    except ValueError:
        seconds = RETRY_AFTER_DEFAULT
    return max(seconds, 0.0)


class _RedactToken(logging.Filter):
    """Replaces the bot token in log records, for loggers that print URLs (httpx)."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self._token = token

    def redact(self, text: str) -> str:
        return text.replace(self._token, REDACTED_TOKEN)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self._token in message:
            record.msg = self.redact(message)
            record.args = None
        return True


# --- translation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Reply:
    """A message the client answers itself (not authorized, not text)."""

    chat: ChatRef
    text: str
    reply_to: str


@dataclass
class _Album:
    """The parts of an album received so far, and when to hand them on if no more come."""

    parts: list[Command | Message]
    due: float


def _media_group(update: dict[str, Any]) -> str | None:
    message = update.get("message")
    group = message.get("media_group_id") if isinstance(message, dict) else None
    return str(group) if isinstance(group, str | int) else None


def _merge_album(parts: Sequence[Command | Message]) -> Command | Message:
    """One event for an album: every part's attachments, in order; the first part whose caption
    is a command makes it one, and the other captions follow."""
    attachments = tuple(a for part in parts for a in part.attachments)
    command = next((part for part in parts if isinstance(part, Command)), None)
    captions = [
        part.text.strip() for part in parts if isinstance(part, Message) and part.text.strip()
    ]
    if command is not None:
        args = "\n\n".join(text for text in (command.args.strip(), *captions) if text)
        return dataclasses.replace(command, args=args, attachments=attachments)
    first = parts[0]
    assert isinstance(first, Message)
    return dataclasses.replace(first, text="\n\n".join(captions), attachments=attachments)


@dataclass(frozen=True)
class _Answer:
    """A button press the client answers itself."""

    press_id: str
    text: str
    alert: bool


def _parse_command(text: str, entities: object) -> tuple[str, str, str] | None:
    """(name, bot, args) if `text` starts with a bot_command entity, as python-telegram-bot
    decides: only entities[0], only at offset 0. Entity offsets and lengths count UTF-16
    units, so the command is cut from the UTF-16 encoding, not from the str."""
    if not isinstance(entities, list) or not entities or not isinstance(entities[0], dict):
        return None
    first = entities[0]
    if first.get("type") != "bot_command" or first.get("offset") != 0:
        return None
    units = text.encode("utf-16-le")
    cut = 2 * int(first["length"])
    command = units[:cut].decode("utf-16-le")
    args = units[cut:].decode("utf-16-le").strip()
    name, _, bot = command.removeprefix("/").partition("@")
    return name.lower(), bot, args


def _chat_ref(message: dict[str, Any]) -> ChatRef:
    """The conversation of a message. Only forum topics are threads of their own: in other
    supergroups every reply carries a message_thread_id too, but belongs to the chat."""
    thread = message.get("message_thread_id") if message.get("is_topic_message") else None
    return ChatRef(
        PLATFORM, str(message["chat"]["id"]), str(thread) if thread is not None else None
    )


def _attachments(message: dict[str, Any]) -> tuple[Attachment, ...]:
    """The photo (its largest size), document or voice note of a message
    (https://core.telegram.org/bots/api#message), as attachments to fetch with getFile."""
    number = message.get("message_id")
    photo = message.get("photo")
    if isinstance(photo, list) and photo and isinstance(photo[-1], dict):
        largest = photo[-1]
        return (
            Attachment(
                "image",
                f"photo_{number}.jpg",
                "image/jpeg",
                str(largest["file_id"]),
                _size(largest),
            ),
        )
    document = message.get("document")
    if isinstance(document, dict):
        mime = str(document.get("mime_type") or "application/octet-stream")
        name = str(document.get("file_name") or f"document_{number}")
        kind = "image" if mime.startswith("image/") else "document"
        return (Attachment(kind, name, mime, str(document["file_id"]), _size(document)),)
    voice = message.get("voice")
    if isinstance(voice, dict):
        mime = str(voice.get("mime_type") or "audio/ogg")
        extension = mimetypes.guess_extension(mime) or ".ogg"
        name = f"voice_{number}{'.ogg' if extension == '.oga' else extension}"
        return (Attachment("audio", name, mime, str(voice["file_id"]), _size(voice)),)
    return ()


def _size(file: dict[str, Any]) -> int | None:
    size = file.get("file_size")
    return size if isinstance(size, int) else None


def _reply_to(message: dict[str, Any]) -> str | None:
    replied = message.get("reply_to_message")
    if not isinstance(replied, dict):
        return None
    replied_id = replied.get("message_id")
    if message.get("is_topic_message") and replied_id == message.get("message_thread_id"):
        return None  # in a forum topic, every message "replies" to the topic's first message
    return str(replied_id)


def _user(sender: dict[str, Any]) -> User:
    username = sender.get("username")
    name = f"@{username}" if username else str(sender.get("first_name") or "")
    # https://core.telegram.org/bots/api#user: first_name always, last_name optional.
    full = " ".join(str(sender.get(key) or "") for key in ("first_name", "last_name")).strip()
    return User(str(sender["id"]), name, full)


# --- requests -------------------------------------------------------------------------------------


def _chat_id(chat_id: str) -> int | str:
    """Numeric ids as numbers; a channel's "@name" as it is."""
    try:
        return int(chat_id)
    except ValueError:
        return chat_id


def _target(chat: ChatRef) -> dict[str, Any]:
    params: dict[str, Any] = {"chat_id": _chat_id(chat.chat_id)}
    if chat.thread:
        params["message_thread_id"] = int(chat.thread)
    return params


def _keyboard(rows: Sequence[Sequence[Button]]) -> dict[str, Any] | None:
    inline = [
        [{"text": button.label, "callback_data": button.data} for button in row]
        for row in rows
        if row
    ]
    return {"inline_keyboard": inline} if inline else None


def _markup_key(markup: dict[str, Any] | None) -> str:
    return json.dumps(markup, sort_keys=True) if markup else ""


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
