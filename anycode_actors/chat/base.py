"""What every chat platform client turns its traffic into, and what it offers the actors.

Inbound, a client produces `ChatEvent`s (a `Command`, a plain `Message` or a `ButtonPress`);
outbound it offers send / edit / buttons / answer a press / upload, each returning the platform's
message id. Platform numbers (text length, button data size, pacing) live in `ChatLimits`, so the
actors never hard-code one platform's limits.

Rate limits are not hidden inside the clients: a 429 surfaces as `RateLimited(retry_after)`,
because the flusher, the only caller of send/edit for a chat, must pause that chat and coalesce
what piles up meanwhile (latest edit wins) rather than block on an old payload.

Every refusal is a `ChatError`. A client turns the answers its platform gives in words (an error
code, a description) into the subclass that says what the caller must do about it, inside its own
module, so nothing outside `anycode_actors.chat` reads a platform's error text:

- `RateLimited`: wait `retry_after` seconds (this chat, or every call in the rate lane);
- `ChatUnavailable`: not reached or answered 5xx; retry with backoff;
- `MessageGone`: the message to edit or delete no longer exists (someone deleted it);
- `NotModified`: an edit that would leave the message as it is; it shows the text already;
- `ThreadGone`: the thread or forum topic the call was for is closed or deleted; the
  conversation's main chat still takes messages;
- `FileTooLarge`: a file a person sent is bigger than the caller (or the platform) will fetch;
- any other `ChatError`: a refusal that retrying the same call cannot fix.

Questions whose answer depends on the platform (is this conversation a group?) are answered by
the client too (`ChatClient.is_group`), never by comparing `ChatRef.platform` with a name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from anycode_actors.chat.auth import AccessPolicy
from anycode_actors.chat.text import clean_display_text
from anycode_actors.errors import AnycodeError


@dataclass(frozen=True)
class ChatRef:
    """One conversation: a Telegram chat, or a Slack channel (optionally one thread in it)."""

    platform: str  # "telegram" | "slack" | "console"
    chat_id: str
    thread: str | None = None  # Slack thread ts, Telegram message_thread_id

    @property
    def key(self) -> str:
        """A stable name for the conversation: the chat actor's id."""
        base = f"{self.platform}:{self.chat_id}"
        return f"{base}:{self.thread}" if self.thread else base


@dataclass(frozen=True)
class User:
    id: str
    name: str = ""  # display name or @username, for "answered by …"
    full_name: str = field(default="", compare=False)
    """The person's name as the platform shows it (Telegram: first and last name), if it
    says; the author name of the commits made for them. Not part of who the user is."""

    @property
    def author_name(self) -> str:
        """Who the commits of this person's tasks are by: their full name, else `name`, else
        the id."""
        return clean_display_text(self.full_name) or self.mention

    @property
    def mention(self) -> str:
        """The name to show ("answered by …"): without the control and bidi characters that
        could make it read as someone else's; the id when nothing is left of it."""
        return clean_display_text(self.name) or self.id


@dataclass(frozen=True)
class Attachment:
    """A file a person sent with a message: what it is, and how its client fetches it.

    `kind` is "image", "audio" (a voice note) or "document" (anything else); `ref` is the
    platform's handle for the bytes (a Telegram file_id, a Slack url_private), only meaningful
    to the client that made it (`ChatClient.download`). `size` is what the platform reported,
    None when it did not say."""

    kind: str
    name: str
    mime_type: str
    ref: str
    size: int | None = None


@dataclass(frozen=True)
class Command:
    """`/task fix it`: `name` is "task" (lower case, without / and @bot), `args` the rest.
    `attachments`: files sent with it (a Telegram caption, a Slack file share)."""

    chat: ChatRef
    user: User
    name: str
    args: str
    message_id: str = ""
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True)
class Message:
    """Plain text that is not a command. `reply_to` is the message id it replies to, if any.
    `attachments`: files sent with it; `text` may then be empty."""

    chat: ChatRef
    user: User
    text: str
    message_id: str = ""
    reply_to: str | None = None
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True)
class ButtonPress:
    """A press on one of our buttons. `press_id` answers it (Telegram callback query id)."""

    chat: ChatRef
    user: User
    message_id: str
    data: str
    press_id: str = ""


ChatEvent = Command | Message | ButtonPress


@dataclass(frozen=True)
class Button:
    label: str
    data: str  # must fit ChatLimits.max_button_data_bytes


@dataclass(frozen=True)
class ChatLimits:
    """A platform's numbers, as the actors need them."""

    max_text_length: int  # in code points, as the platforms count
    max_button_data_bytes: int
    max_buttons_per_row: int
    # Pacing of sends+edits for one chat: a token bucket of `burst` refilled at `per_second`.
    per_second: float
    burst: int
    # Group chats may be stricter (Telegram: 20 per minute).
    group_per_minute: float | None = None


@dataclass(frozen=True)
class RateLane:
    """A bot-wide limit that calls of some kinds share: `burst` calls, refilled at `per_second`.

    A client maps each kind of call ("send", "edit", "upload") to its lane; calls in lanes of
    the same `name` draw from one bucket, whichever chat they are for."""

    name: str
    per_second: float
    burst: int


class ChatError(AnycodeError):
    """A chat platform refused a call. `code` is the platform's own error (e.g. a Slack error
    code or a Telegram description); messages never contain tokens."""

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class RateLimited(ChatError):
    """429: nothing may be sent to this chat (or by this method) for `retry_after` seconds.

    `scope` says who must wait: "chat" (this conversation only) or "bot" (every call in the
    same rate lane, e.g. a Slack method's per-workspace tier)."""

    def __init__(
        self, retry_after: float, *, code: str = "rate_limited", scope: str = "chat"
    ) -> None:
        super().__init__(f"rate limited: retry after {retry_after:g} s", code=code)
        self.retry_after = retry_after
        self.scope = scope


class ChatUnavailable(ChatError):
    """The platform could not be reached or answered 5xx: worth retrying with backoff."""


class MessageGone(ChatError):
    """The message to edit or delete no longer exists (someone deleted it, or it never did)."""


class NotModified(ChatError):
    """An edit that would leave the message as it is: the message already shows that text and
    those buttons, so the edit counts as done."""


class ThreadGone(ChatError):
    """The thread or forum topic `chat.thread` names is closed or deleted: nothing more can be
    posted there, but the conversation's main chat (`ChatRef(platform, chat_id)`) still takes
    messages."""


class FileTooLarge(ChatError):
    """A file to download is over the size the caller accepts or the platform serves; `size`
    is its size in bytes when known."""

    def __init__(self, message: str, *, size: int | None = None, code: str = "too_large") -> None:
        super().__init__(message, code=code)
        self.size = size


class ChatClient(Protocol):
    """A connected chat platform."""

    platform: str
    limits: ChatLimits
    access: AccessPolicy
    # Bot-wide lanes by kind of call ("send", "edit", "upload"); a kind not listed is unpaced.
    rate_lanes: Mapping[str, RateLane]
    # Whether a /task outside a thread runs its session in a new thread under the
    # acknowledgement (Slack's `[slack] threads`); platforms without such threads say False.
    task_threads: bool

    def is_group(self, chat: ChatRef) -> bool:
        """Whether `chat` is a group conversation, paced at `limits.group_per_minute` too."""
        ...

    async def run(
        self,
        events: trio.MemorySendChannel[ChatEvent],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Receive from the platform forever, putting every authorised event into `events`.

        Reports ready once connected (bot identity known, commands registered).
        """
        ...

    async def send(
        self,
        chat: ChatRef,
        text: str,
        *,
        buttons: Sequence[Sequence[Button]] = (),
        reply_to: str | None = None,
    ) -> str:
        """Post a new message; returns its id."""
        ...

    async def edit(
        self,
        chat: ChatRef,
        message_id: str,
        text: str,
        *,
        buttons: Sequence[Sequence[Button]] | None = None,
    ) -> None:
        """Replace a message's text. `buttons=None` keeps none; pass rows to keep/replace them.

        Raises `MessageGone` when the message no longer exists, and may raise `NotModified` when
        it already shows this text and these buttons (the edit then counts as done).
        """
        ...

    async def answer_press(self, press: ButtonPress, text: str = "") -> None:
        """Acknowledge a button press (Telegram shows a progress bar until this is called)."""
        ...

    async def refuse(self, event: ChatEvent, text: str) -> None:
        """Tell only the person behind `event` that it was refused (not theirs, over a limit).

        Never raises `ChatError`: a refusal the platform would not deliver is logged, so the
        actor that refused carries on.
        """
        ...

    async def upload(self, chat: ChatRef, filename: str, data: bytes, caption: str = "") -> str:
        """Upload a file into the conversation; returns the message id."""
        ...

    async def download(self, attachment: Attachment, max_bytes: int) -> bytes:
        """The bytes of a file a person sent. Raises `FileTooLarge` when it is over `max_bytes`
        (or over what the platform lets bots fetch), another `ChatError` when it cannot be
        fetched."""
        ...
