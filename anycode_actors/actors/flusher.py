"""The flusher: the outbox of one chat, and the only caller of send/edit/upload for it.

Everything the daemon shows in a conversation goes through the chat's flusher as a message:
`Append` (a text delta of a live stream: one session's output), `Flush` and `EndStream` (an item
or turn finished, a question or permission is waiting, the session ended), `Post` (a standalone
message such as a notice or a permission prompt), `Edit` (replace a message, e.g. its buttons by
"✅ Allowed by @ada"), `Upload` (a file) and `Drain` (wait until everything queued so far has
been delivered).

Why one actor per chat: the platforms pace sends and edits per chat (Telegram about one a second
and 20 a minute in groups, Slack about one a second per channel) and answer 429 when pushed, so
exactly one place must own the pacing and decide what to do while it waits. What it does is
coalesce: work is kept as at most one pending operation per key (a stream, an edited message; a
post or an upload is its own key), a newer payload replaces the pending one but keeps its place in
line, and operations run in the order they were first queued. A slow or rate-limited chat therefore
ends up with a few operations carrying the latest text, never a backlog of stale edits.

Streams. A stream's message shows `shown`; deltas accumulate in `pending`. An operation is due
`debounce` seconds after the first undelivered delta, or at once after `Flush`/`EndStream`, when a
`Post`/`Upload` is queued after it (so text streamed before a permission prompt appears above it)
and on `Drain`. It then makes exactly one API call: it edits the message to `shown + pending`
(or sends it, if the stream has no message yet) when that fits in `max_text_length` minus a margin;
otherwise it fills the message up to the limit (cutting after the last newline in the second half
of the window, else after a space, else between code points, never inside a surrogate pair, a
combining sequence or an emoji sequence), leaves it as it is, and the rest is sent as a new message
by the next call. Shown text is never posted again (unless its message was deleted, below) and a
finished message is never overwritten.

Identical edits. Platforms trim whitespace at both ends of a message (Telegram strips spaces and
newlines), so an edit that only adds trailing whitespace would be refused as "message is not
modified". The flusher compares the visible (stripped) texts and makes no call when they are
equal; the whitespace stays in `shown` and goes out with the next visible change. Consequently
whitespace at the very end of a message may never be sent, which is also what the user would see.
A non-stream `Edit` with the same visible text and buttons as last set is skipped as well. Should a
client still raise `NotModified` (its platform removes a few more invisible characters than
`strip`), the call counts as done.

Pacing and failures. One token bucket per chat (`burst` tokens, refilled at `per_second`), and in
group chats a second one (also `burst` tokens) refilled at `group_per_minute`; a call needs a token
from both. With a budget, the group's bucket is not the flusher's own but a lane of the budget
shared by every thread of the group (`budget.group_lane`), since the platform counts the group's
limit for the group as a whole; a per-chat `RateLimited` then pauses that lane too. An
intermediate edit of a live stream (one nothing is queued behind) waits until the buckets are
full: streaming then costs one call per refill, and the burst is kept for what the user waits on
(a first message, a prompt, a stream's final text). A wait for a
token ends `PACING_SLACK` late rather than a rounding error early. On `RateLimited` the whole
chat pauses for exactly `retry_after` seconds and the operation keeps its
place (and keeps coalescing); after the pause one call may go at once, then the buckets refill at
their rates. On `ChatUnavailable` the chat pauses 1, 2, 4 … (at most 30) seconds between attempts;
after `MAX_ATTEMPTS` consecutive failures of one operation it is dropped with an ERROR log naming
the chat and the kind of operation (never the text). A stream edit whose message is gone
(`MessageGone`: someone deleted it) sends the stream's whole text as a new message; any other
refusal of a stream edit starts a new message with the undelivered text; any other refusal drops
that operation with a WARNING naming the platform's error code. A dropped `Post` or `Upload` still
answers its `reply_to`, with `message_id=None`. Each client decides which of its platform's
answers these types stand for; the flusher never reads an error's text.

A thread that goes away. When the chat is a thread or forum topic and the platform says it is
closed or deleted (`ThreadGone`), the flusher moves to the conversation's main chat for good:
it says so there (`THREAD_GONE_NOTICE`), tells its `notify` channel (`ThreadClosed`, so the chat
actor can move its sessions' records), and runs the refused operation again there, with nothing
dropped; a stream whose message was in the thread goes out whole as a new message, and an edit
of a message left in the thread is dropped (it cannot be edited any more).

Concurrency. The actor runs two tasks over state only it owns: one reads the inbox and folds each
message into the pending operations (no I/O, so senders never wait behind a slow API call), the
other runs due operations one at a time. While a call is in flight, new deltas for that stream
queue a fresh operation; whatever the call did not deliver (a failure, the rest of a split) goes
back in line at its old place, merged with it. The inbox is bounded, and reading pauses while
`max_pending` operations are queued (posts and uploads do not coalesce), so a flood of posts is
backpressure on the senders rather than memory.

Pending operations live on the object, like an `Actor`'s inbox: after a crash and restart the
queue is still there (only the call in flight is lost). Cancellation drops what is queued; send
`Drain` first (session end, daemon shutdown) and bound the wait with a timeout of your own.

    flusher = Flusher(client, chat, debounce=config.session.debounce_ms / 1000)
    await chats.start_child(flusher.spec(f"flusher:{chat.key}", restart=Restart.TRANSIENT))
    outbox = flusher.address()                  # handed to the chat and session actors
    await outbox.send(Append(session_id, "Reading the code"))
    await outbox.send(EndStream(session_id))
    with trio.move_on_after(10):
        await flusher.drain()
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import unicodedata
from collections import OrderedDict, deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Final, TypeAlias, TypeVar

import trio

from anycode_actors.actors.budget import (
    ROUTINE,
    URGENT,
    BudgetInbox,
    Lane,
    Pause,
    draw,
    group_lane,
)
from anycode_actors.chat.base import (
    Button,
    ChatClient,
    ChatError,
    ChatLimits,
    ChatRef,
    ChatUnavailable,
    MessageGone,
    NotModified,
    RateLimited,
    ThreadGone,
)
from supervisors import Actor, Backoff, ChildContext, current_child

__all__ = [
    "BACKOFF_CAP",
    "BACKOFF_INITIAL",
    "INBOX_SIZE",
    "MAX_ATTEMPTS",
    "MAX_PENDING",
    "PACING_SLACK",
    "REPLY_TIMEOUT",
    "TEXT_MARGIN",
    "THREAD_GONE_NOTICE",
    "Adopt",
    "Append",
    "AppendPieces",
    "Drain",
    "Edit",
    "EndStream",
    "Flush",
    "Flusher",
    "FlusherMessage",
    "FlusherStats",
    "Post",
    "Posted",
    "StreamStarted",
    "ThreadClosed",
    "Upload",
    "split_point",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

INBOX_SIZE: Final = 64
"""Messages the flusher's inbox holds; it is read continuously, so this only absorbs bursts."""
MAX_PENDING: Final = 64
"""Queued operations beyond which the flusher stops reading its inbox (posts do not coalesce)."""
TEXT_MARGIN: Final = 0.025
"""Share of the platform's text limit kept free: Telegram's 4096 becomes 3994 code points."""
MAX_ATTEMPTS: Final = 8
"""Consecutive `ChatUnavailable` failures after which one operation is dropped."""
BACKOFF_INITIAL: Final = 1.0
BACKOFF_CAP: Final = 30.0
"""Pause after the n-th consecutive `ChatUnavailable`: BACKOFF_INITIAL * 2**(n-1), capped."""
# Without jitter, so those pauses are exact.
_UNAVAILABLE_BACKOFF: Final = Backoff(
    initial=BACKOFF_INITIAL, factor=2.0, cap=BACKOFF_CAP, jitter=0
)
REPLY_TIMEOUT: Final = 10.0
"""How long delivering a `Posted` or `StreamStarted` may wait on a full channel before it is
dropped with a warning (the calls for the chat wait meanwhile)."""
REMEMBERED_MESSAGES: Final = 256
"""Messages whose last-set text and buttons are kept, to skip identical edits."""

THREAD_GONE_NOTICE: Final = (
    "The thread (or topic) this conversation was in has been closed or deleted: its sessions "
    "carry on here. Reply to their messages here to reach them."
)
"""Said in the main chat when the flusher's thread takes no more messages."""

PACING_SLACK: Final = 0.001
"""Seconds added to every wait for a token, so float rounding never makes a call a hair early
(the platform's bucket would answer 429 for it)."""

Rows: TypeAlias = tuple[tuple[Button, ...], ...]


# --- messages -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Posted:
    """Answer to a `Post` or `Upload` that carried `reply_to`: the id of the message it made
    (for a post split into several messages, the last one, which holds the buttons), or None if
    it could not be delivered."""

    tag: str
    message_id: str | None


@dataclass(frozen=True)
class StreamStarted:
    """Sent to the flusher's `notify` channel when a stream begins a new message: its text
    starts `offset` characters into the text of the `Append` marked `mark` (None: unmarked)."""

    stream: str
    message_id: str
    mark: int | None = None
    offset: int = 0


@dataclass(frozen=True)
class ThreadClosed:
    """Sent to the flusher's `notify` channel when the thread `chat` named is closed or deleted:
    from now on this flusher posts into the conversation's main chat."""

    chat: ChatRef


@dataclass(frozen=True)
class Adopt:
    """Continue `stream` in an existing message (a restarted daemon): the message is edited to
    the joined text of `pieces` (a no-op if it already shows it) and later Appends extend it.

    `pieces` are (mark, text) as the Appends that made the message carried them; the first
    text lacks its first `offset` characters, which are in the message before."""

    stream: str
    message_id: str
    pieces: tuple[tuple[int, str], ...]
    offset: int = 0


@dataclass(frozen=True)
class Append:
    """A text delta for the live message of `stream` (a session id). `mark` (the agent event's
    seq) lets `StreamStarted` say where a new message begins, for resuming after a crash."""

    stream: str
    text: str
    mark: int | None = None


@dataclass(frozen=True)
class AppendPieces:
    """Several text deltas for the live message of `stream` at once: as one `Append(stream,
    text, mark)` for each (mark, text) of `pieces`, in order."""

    stream: str
    pieces: tuple[tuple[int, str], ...]


@dataclass(frozen=True)
class Flush:
    """Show what `stream` has now: an item or turn completed, a question or permission waits."""

    stream: str


@dataclass(frozen=True)
class EndStream:
    """Flush `stream` and close its message: the next `Append` for it starts a new message."""

    stream: str


@dataclass(frozen=True)
class Post:
    """A standalone message (split into several if long; the buttons go on the last one).

    Anything streamed before it is shown first. With `reply_to`, a `Posted(tag, message_id)`
    follows once it is sent (e.g. the id of a permission prompt, to edit it later).
    """

    text: str
    buttons: Sequence[Sequence[Button]] = ()
    tag: str = ""
    reply_to: trio.MemorySendChannel[Posted] | None = None


@dataclass(frozen=True)
class Edit:
    """Replace a message's text and buttons (None or () for none). Latest wins per message.

    Meant for messages made by `Post` or for finished stream messages, not for the live message
    of a stream (the stream's next edit would overwrite it). Text over the limit is cut with "…".
    """

    message_id: str
    text: str
    buttons: Sequence[Sequence[Button]] | None = None


@dataclass(frozen=True)
class Upload:
    """A file for the conversation; answered like a `Post`."""

    filename: str
    data: bytes
    caption: str = ""
    tag: str = ""
    reply_to: trio.MemorySendChannel[Posted] | None = None


@dataclass(frozen=True)
class Drain:
    """Set `done` once everything queued before this message has been delivered (or dropped).

    Everything pending becomes due at once. Wait with a timeout: a chat paused by a long 429
    delivers late.
    """

    done: trio.Event


FlusherMessage: TypeAlias = (
    Append | AppendPieces | Adopt | Flush | EndStream | Post | Edit | Upload | Drain
)


@dataclass
class FlusherStats:
    """Counters of one flusher, for the console, benchmarks and tests."""

    calls: int = 0
    """API calls made, including the ones that failed."""
    sends: int = 0
    edits: int = 0
    uploads: int = 0
    rate_limited_count: int = 0
    skipped_identical: int = 0
    """Edits not made because the visible text (and buttons) would not change."""
    dropped: int = 0
    peak_pending: int = 0
    """The most operations ever queued at once (a slow chat must keep this at its key count)."""


# --- text -----------------------------------------------------------------------------------------


def _visible(text: str) -> str:
    """What a platform shows of `text`: whitespace at both ends is trimmed."""
    return text.strip()


_JOINING: Final = frozenset("\u200d\ufe0e\ufe0f")  # zero-width joiner, variation selectors


def _may_cut_before(text: str, index: int) -> bool:
    char, before = text[index], text[index - 1]
    if "\udc00" <= char <= "\udfff" and "\ud800" <= before <= "\udbff":
        return False  # a surrogate pair (text decoded with "surrogatepass")
    if before == "\u200d" or char in _JOINING or unicodedata.combining(char):
        return False
    return not "\U0001f3fb" <= char <= "\U0001f3ff"  # emoji skin-tone modifiers


def split_point(text: str, start: int, limit: int) -> int:
    """Where a message holding `text[:limit]` at most should end, never before `start`.

    `start` is what the message already shows (it is never taken back). The cut goes after the
    last newline that leaves the message between `max(start, limit // 2)` and `limit` long, else
    after the last such space, else at `limit`, moved back so as not to split a surrogate pair, a
    combining sequence or an emoji sequence. Only the second half is searched, so a message is
    not cut short by an early newline.
    """
    if len(text) <= limit:
        return len(text)
    floor = max(start, limit // 2)
    for separator in ("\n", " "):
        at = text.rfind(separator, max(floor - 1, 0), limit)
        if at >= 0:
            return at + 1  # may equal `start`: the message ends as it is
    cut = limit
    while cut > floor and not _may_cut_before(text, cut):
        cut -= 1
    return limit if cut == floor else cut


def _chunks(text: str, limit: int) -> list[str]:
    """A post's text as messages of at most `limit` code points; invisible chunks are left out."""
    chunks: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = split_point(rest, 0, limit)
        chunks.append(rest[:cut])
        rest = rest[cut:]
    chunks.append(rest)
    return [chunk for chunk in chunks if _visible(chunk)] or chunks[-1:]


def _rows(buttons: Sequence[Sequence[Button]] | None) -> Rows:
    return tuple(tuple(row) for row in buttons or ())


# --- pacing ---------------------------------------------------------------------------------------


class _TokenBucket:
    """Up to `capacity` tokens, refilled at `rate` per second of trio time; a call takes one."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, capacity: float, rate: float, now: float) -> None:
        self.capacity = capacity
        self.rate = rate
        self.tokens = capacity
        self.stamp = now

    def level(self, now: float) -> float:
        return min(self.capacity, self.tokens + max(0.0, now - self.stamp) * self.rate)

    def ready_at(self, now: float, need: float = 1.0) -> float:
        """When the bucket holds `need` tokens (`need` ≤ `capacity`)."""
        level = self.level(now)
        return now if level >= need else now + (need - level) / self.rate + PACING_SLACK

    def take(self, now: float) -> None:
        self.tokens = self.level(now) - 1
        self.stamp = max(self.stamp, now)

    def one_at(self, now: float, moment: float) -> None:
        """A pause until `moment`: then the bucket holds what refilling gives, but at most one
        token, so a single call goes first. (Before `moment` the level reads as that; the pause
        itself forbids calls until then.)"""
        self.tokens = min(1.0, self.level(now) + (moment - now) * self.rate)
        self.stamp = moment


# --- pending operations ---------------------------------------------------------------------------


@dataclass(eq=False)
class _Stream:
    """One stream's message: what it shows, and the deltas not delivered yet."""

    name: str
    uid: int
    message_id: str | None = None
    shown: str = ""
    pending: str = ""
    # (start, end) of each marked Append's text, and its mark; oldest first. They are
    # positions in the stream's text: their offset in `pending` is the position minus `base`,
    # so consuming text moves `base` and drops the marks that end before it, without touching
    # the others. A start below `base` means part of that text is already in an earlier message.
    marks: deque[tuple[int, int, int]] = field(default_factory=deque)
    base: int = 0

    def add_mark(self, start: int, end: int, mark: int) -> None:
        """Text of the Append `mark` is at offsets `start`..`end` of `pending`."""
        self.marks.append((self.base + start, self.base + end, mark))

    def consume(self, count: int) -> None:
        """`count` characters of `pending` are done with (shown, or refused for good)."""
        self.base += count
        marks = self.marks
        while marks and marks[0][1] <= self.base:
            marks.popleft()
        self.pending = self.pending[count:]

    def origin(self) -> tuple[int | None, int]:
        """Where `pending` begins: the mark of the Append holding its first character and how
        many characters of that Append's text came before it."""
        for start, end, mark in self.marks:
            if end > self.base:
                return mark, max(0, self.base - start)
        return None, 0

    def shift(self, count: int) -> None:
        """`count` characters are put back before `pending`."""
        self.base -= count


@dataclass(eq=False)
class _Op:
    """One pending API call. `seq` is the inbox sequence number of the oldest message whose
    effect it still owes: its place in line, and what a `Drain` waits for."""

    KIND: ClassVar[str] = ""
    key: Hashable
    seq: int
    due: float
    attempts: int = 0  # consecutive ChatUnavailable failures
    hurried: bool = False  # made due by a Flush, a later Post/Upload or a Drain


@dataclass(eq=False, kw_only=True)
class _StreamOp(_Op):
    KIND: ClassVar[str] = "stream"
    stream: _Stream
    taken: int = 0  # length of the pending text the call in flight covers


@dataclass(eq=False, kw_only=True)
class _EditOp(_Op):
    KIND: ClassVar[str] = "edit"
    message_id: str
    text: str
    buttons: Rows


@dataclass(eq=False, kw_only=True)
class _PostOp(_Op):
    KIND: ClassVar[str] = "post"
    chunks: list[str]
    buttons: Rows
    tag: str
    reply_to: trio.MemorySendChannel[Posted] | None


@dataclass(eq=False, kw_only=True)
class _UploadOp(_Op):
    KIND: ClassVar[str] = "upload"
    filename: str
    data: bytes
    caption: str
    tag: str
    reply_to: trio.MemorySendChannel[Posted] | None


# --- the actor ------------------------------------------------------------------------------------


class Flusher(Actor[FlusherMessage]):
    """The outbox of one chat. See the module docstring for the rules it follows.

    `debounce` is in seconds (`session.debounce_ms / 1000`). `limits` defaults to the client's.
    `notify`, if given, receives a `StreamStarted` whenever a stream begins a new message (the chat
    actor uses it to route replies to the right session).
    """

    inbox_size: ClassVar[int] = INBOX_SIZE

    def __init__(
        self,
        client: ChatClient,
        chat: ChatRef,
        *,
        debounce: float,
        limits: ChatLimits | None = None,
        inbox_size: int | None = None,
        notify: trio.MemorySendChannel[StreamStarted | ThreadClosed] | None = None,
        max_pending: int = MAX_PENDING,
        budget: trio.MemorySendChannel[BudgetInbox] | None = None,
        spoken_at: float | None = None,
    ) -> None:
        """`spoken_at`: when someone else last sent to this chat (the lobby, actors/lobby.py),
        in trio time; the chat's pacing counts that message as this flusher's own."""
        super().__init__(inbox_size=inbox_size)
        limits = limits or client.limits
        if debounce < 0:
            raise ValueError("debounce must be 0 or more seconds")
        if limits.per_second <= 0 or limits.burst < 1:
            raise ValueError("limits need per_second > 0 and burst >= 1")
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.client = client
        self.chat = chat
        self.debounce = debounce
        self.limits = limits
        self.max_len = limits.max_text_length - int(limits.max_text_length * TEXT_MARGIN)
        if self.max_len < 1:
            raise ValueError("max_text_length is too small")
        self.stats = FlusherStats()
        self._notify = notify
        self._budget = budget
        self._max_pending = max_pending
        self._seq = 0
        self._uids = itertools.count()
        self._ops: dict[Hashable, _Op] = {}
        self._inflight: _Op | None = None
        self._streams: dict[str, _Stream] = {}
        self._last_set: OrderedDict[str, tuple[str, Rows]] = OrderedDict()
        self._drains: list[tuple[int, trio.Event]] = []
        self._buckets: list[_TokenBucket] = []
        self._paused_until = -math.inf
        self._changed = trio.Event()
        self._room = trio.Event()
        self._context: ChildContext | None = None
        self._spoken_at = spoken_at
        self._winding_up = False
        # A group's limit holds for all its threads: with a budget, this flusher draws from the
        # group's lane there, shared with the other threads' flushers, instead of pacing it alone.
        self._group: tuple[str, Lane] | None = (
            group_lane(client, chat) if budget is not None else None
        )

    # --- public -----------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Operations queued now (not counting the call in flight)."""
        return len(self._ops)

    async def drain(self) -> None:
        """Wait until everything queued before this call has been delivered (or dropped).

        Bound it with a timeout of your own: a chat paused by a long 429 delivers late.
        """
        done = trio.Event()
        await self.send(Drain(done))
        await done.wait()

    def stop(self) -> None:
        """Stop reading: what was sent so far is delivered, at once; then `run` returns and
        closes the inbox. May be called from any task of the same Trio run."""
        # Not the base class's stop yet: its reader would end at once, with messages unread.
        self._winding_up = True
        self._changed.set()

    async def setup(self) -> None:
        self._context = current_child()
        if not self._buckets:
            now = trio.current_time()
            self._buckets.append(_TokenBucket(self.limits.burst, self.limits.per_second, now))
            if (
                self.limits.group_per_minute
                and self.client.is_group(self.chat)
                and self._group is None
            ):
                rate = self.limits.group_per_minute / 60
                self._buckets.append(_TokenBucket(self.limits.burst, rate, now))
            if self._spoken_at is not None:
                for bucket in self._buckets:
                    bucket.tokens = bucket.capacity - 1
                    bucket.stamp = min(now, self._spoken_at)
        self._report()
        self.tasks.start_soon(self._deliver_until_stopped)

    async def handle(self, message: FlusherMessage) -> None:
        """Fold one message into the pending operations. The next is read only when there is
        room: with `max_pending` operations queued, senders wait (backpressure)."""
        self._absorb(message)
        while len(self._ops) >= self._max_pending and not self._winding_up:
            self._room = trio.Event()
            await self._room.wait()

    async def _deliver_until_stopped(self) -> None:
        await self._deliver()
        # Stopped, and everything delivered: the run ends here, though its reader may still
        # be waiting for a message that will not come.
        super().stop()
        self.tasks.cancel_scope.cancel()

    def _absorb(self, message: FlusherMessage) -> None:
        queued = len(self._ops)
        self._seq += 1
        seq = self._seq
        now = trio.current_time()
        if isinstance(message, Append):
            if message.text:
                self._append(message.stream, ((message.mark, message.text),), seq, now)
        elif isinstance(message, AppendPieces):
            self._append(message.stream, message.pieces, seq, now)
        elif isinstance(message, Adopt):
            self._adopt(message, seq, now)
        elif isinstance(message, Flush):
            self._hurry(self._streams.get(message.stream), now)
        elif isinstance(message, EndStream):
            self._hurry(self._streams.pop(message.stream, None), now)
        elif isinstance(message, Post):
            self._hurry_streams_before(seq, now)
            chunks = _chunks(message.text, self.max_len)
            rows = _rows(message.buttons)
            reply_to = message.reply_to
            self._queue(
                _PostOp(
                    ("post", seq),
                    seq,
                    now,
                    chunks=chunks,
                    buttons=rows,
                    tag=message.tag,
                    reply_to=reply_to,
                )
            )
        elif isinstance(message, Edit):
            key = ("edit", message.message_id)
            pending = self._ops.get(key)
            if isinstance(pending, _EditOp):
                pending.text, pending.buttons = message.text, _rows(message.buttons)
                pending.due = min(pending.due, now)
            else:
                self._queue(
                    _EditOp(
                        key,
                        seq,
                        now,
                        message_id=message.message_id,
                        text=message.text,
                        buttons=_rows(message.buttons),
                    )
                )
        elif isinstance(message, Upload):
            self._hurry_streams_before(seq, now)
            self._queue(
                _UploadOp(
                    ("upload", seq),
                    seq,
                    now,
                    filename=message.filename,
                    data=message.data,
                    caption=message.caption,
                    tag=message.tag,
                    reply_to=message.reply_to,
                )
            )
        else:
            for op in self._ops.values():
                op.due, op.hurried = min(op.due, now), True
            self._drains.append((seq, message.done))
        self._settle_drains()
        self._changed.set()
        if len(self._ops) != queued:
            self._report()

    def _append(
        self, name: str, pieces: Sequence[tuple[int | None, str]], seq: int, now: float
    ) -> None:
        texts = [text for _, text in pieces if text]
        if not texts:
            return
        stream = self._streams.get(name)
        if stream is None:
            stream = _Stream(name, next(self._uids))
            self._streams[name] = stream
        start = len(stream.pending)
        for mark, text in pieces:
            if text and mark is not None:
                stream.add_mark(start, start + len(text), mark)
            start += len(text)
        stream.pending += "".join(texts)
        key = ("stream", stream.uid)
        if key not in self._ops:
            self._queue(_StreamOp(key, seq, now + self.debounce, stream=stream))

    def _adopt(self, message: Adopt, seq: int, now: float) -> None:
        # A fresh stream whose message already exists: it shows nothing as far as we know, so
        # the first call edits it to the full text (which the platform may already show).
        stream = _Stream(message.stream, next(self._uids), message_id=message.message_id)
        for index, (mark, text) in enumerate(message.pieces):
            start = len(stream.pending)
            stream.add_mark(start - (message.offset if index == 0 else 0), start + len(text), mark)
            stream.pending += text
        self._streams[message.stream] = stream
        self._queue(_StreamOp(("stream", stream.uid), seq, now, stream=stream))

    def _queue(self, op: _Op) -> None:
        self._ops[op.key] = op
        self.stats.peak_pending = max(self.stats.peak_pending, len(self._ops))

    def _hurry(self, stream: _Stream | None, now: float) -> None:
        if stream is not None:
            op = self._ops.get(("stream", stream.uid))
            if op is not None:
                op.due, op.hurried = min(op.due, now), True

    def _hurry_streams_before(self, seq: int, now: float) -> None:
        for op in self._ops.values():
            if isinstance(op, _StreamOp) and op.seq < seq:
                op.due, op.hurried = min(op.due, now), True

    # --- delivering -------------------------------------------------------------------------------

    async def _deliver(self) -> None:
        while True:
            now = trio.current_time()
            self._changed = trio.Event()
            if self._winding_up:
                self._absorb_the_rest(now)
                if not self._ops:
                    return
            op, wake = self._next(now)
            if op is None:
                with trio.move_on_at(wake):
                    await self._changed.wait()
                continue
            if self._budget is not None:
                lane = self.client.rate_lanes.get(_call_kind(op))
                drew = False
                if self._group is not None:
                    # The group's pace first, shared with the flushers of its other threads.
                    await draw(self._budget, self._group[0], self._priority(op), self._group[1])
                    drew = True
                if lane is not None:
                    # Waits while the bot's budget is short; meanwhile the reader goes on
                    # coalescing, so the call made after the grant carries the newest text.
                    await draw(self._budget, lane.name, self._priority(op))
                    drew = True
                if drew:
                    newest = self._ops.get(op.key)
                    if newest is None or self._paused_until > trio.current_time():
                        continue
                    op = newest
            await self._execute(op)

    def _absorb_the_rest(self, now: float) -> None:
        """When stopping: take in what is left in the inbox and make everything due."""
        while True:
            try:
                message = self._inbox.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            self._absorb(message)
        for op in self._ops.values():
            op.due = min(op.due, now)

    def _next(self, now: float) -> tuple[_Op | None, float]:
        """The operation to run now, or when to look again."""
        due = [op for op in self._ops.values() if op.due <= now]
        if not due:
            return None, min((op.due for op in self._ops.values()), default=math.inf)
        op = min(due, key=lambda op: op.seq)
        # An intermediate edit of a live stream waits for a full bucket, so streaming goes at
        # the steady rate and the burst stays for what the user waits on (see `_steady`).
        steady = self._steady(op)
        gate = max(
            self._paused_until,
            *(bucket.ready_at(now, bucket.capacity if steady else 1.0) for bucket in self._buckets),
        )
        if gate > now:
            return None, gate
        return op, now

    def _steady(self, op: _Op) -> bool:
        """Whether `op` is a routine edit that nothing waits behind: a live stream's message
        being extended, not hurried by a Flush, a later Post/Upload or a Drain. Spending the
        burst on those would only add calls (one edit a second shows the same text) and leave
        none for the next prompt or first message."""
        return not op.hurried and self._priority(op) == ROUTINE

    async def _execute(self, op: _Op) -> None:
        del self._ops[op.key]
        self._inflight = op
        try:
            if isinstance(op, _StreamOp):
                await self._run_stream(op)
            elif isinstance(op, _EditOp):
                await self._run_edit(op)
            elif isinstance(op, _PostOp):
                await self._run_post(op)
            elif isinstance(op, _UploadOp):
                await self._run_upload(op)
        except ThreadGone as error:
            await self._leave_thread(op, error)
        except RateLimited as error:
            self.stats.rate_limited_count += 1
            lane = None
            if error.scope == "bot" and self._budget is not None:
                lane = self.client.rate_lanes.get(_call_kind(op))
            if lane is not None and self._budget is not None:
                # Every chat must wait, not only this one: the budget pauses the lane.
                with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                    self._budget.send_nowait(Pause(lane.name, max(0.0, error.retry_after)))
            else:
                self._pause(max(0.0, error.retry_after))
                if self._group is not None and self._budget is not None:
                    # The group's other threads must wait too.
                    name, define = self._group
                    with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                        self._budget.send_nowait(Pause(name, max(0.0, error.retry_after), define))
            self._requeue(op)
        except ChatUnavailable as error:
            op.attempts += 1
            if op.attempts >= MAX_ATTEMPTS:
                log.error(
                    "flusher %s: dropped a %s operation after %d failed attempts (last: %s)",
                    self.chat.key,
                    op.KIND,
                    op.attempts,
                    error.code or type(error).__name__,
                )
                await self._drop(op)
            else:
                self._pause(_UNAVAILABLE_BACKOFF.delay(op.attempts - 1))
                self._requeue(op)
        finally:
            self._inflight = None
            self._room.set()
            self._settle_drains()
            self._report()

    async def _leave_thread(self, op: _Op, error: ThreadGone) -> None:
        """Move to the main chat for good and run `op` again there (see the module docstring)."""
        thread = self.chat
        if thread.thread is None:
            self._refused(op, error)  # a main chat cannot be left; nothing better to do
            if isinstance(op, _PostOp | _UploadOp):
                await self._reply(op.reply_to, Posted(op.tag, None))
            return
        self.chat = ChatRef(thread.platform, thread.chat_id)
        log.warning(
            "flusher %s: the thread is closed or deleted (%s); continuing in %s",
            thread.key,
            error.code or type(error).__name__,
            self.chat.key,
        )
        await self._reply(self._notify, ThreadClosed(thread))
        self._spend()
        try:
            await self.client.send(self.chat, THREAD_GONE_NOTICE)
            self.stats.sends += 1
        except ChatError as failed:
            log.warning("flusher %s: could not say so: %s", self.chat.key, failed)
        if isinstance(op, _EditOp):
            self._refused(op, error)  # the message stays in the thread, as it is
            return
        for other in (op, *self._ops.values()):
            if isinstance(other, _StreamOp) and other.stream.message_id is not None:
                # Its message is in the thread: the whole text goes out again, here.
                stream = other.stream
                stream.shift(len(stream.shown))
                stream.pending = stream.shown + stream.pending
                stream.message_id, stream.shown = None, ""
        op.due = min(op.due, trio.current_time())
        self._requeue(op)

    def _priority(self, op: _Op) -> int:
        """Intermediate edits of a live stream can wait; everything else the user is waiting
        for (a first message, a prompt, a decision, a stream's final text) goes first."""
        if isinstance(op, _StreamOp):
            live = self._streams.get(op.stream.name) is op.stream
            if live and op.stream.message_id is not None:
                return ROUTINE
        return URGENT

    def _spend(self) -> None:
        """Take a token for the call about to be made."""
        now = trio.current_time()
        for bucket in self._buckets:
            bucket.take(now)
        self.stats.calls += 1

    def _pause(self, seconds: float) -> None:
        now = trio.current_time()
        until = now + seconds
        if until > self._paused_until:
            self._paused_until = until
            for bucket in self._buckets:
                bucket.one_at(now, until)

    def _requeue(self, op: _Op) -> None:
        """Put back what a call did not deliver, in its old place, merged with anything newer."""
        newer = self._ops.get(op.key)
        if newer is not None:
            op.seq = min(op.seq, newer.seq)
            op.due = min(op.due, newer.due)
            if isinstance(op, _EditOp) and isinstance(newer, _EditOp):
                op.text, op.buttons = newer.text, newer.buttons
        self._queue(op)

    async def _drop(self, op: _Op) -> None:
        self.stats.dropped += 1
        if isinstance(op, _StreamOp):
            # A gap in the text: end the message so the next text starts below it, visibly.
            stream = op.stream
            stream.pending = stream.pending[op.taken :]
            stream.message_id, stream.shown = None, ""
        elif isinstance(op, _PostOp | _UploadOp):
            await self._reply(op.reply_to, Posted(op.tag, None))

    def _refused(self, op: _Op, error: ChatError) -> None:
        self.stats.dropped += 1
        log.warning(
            "flusher %s: the platform refused a %s operation (%s); dropped",
            self.chat.key,
            op.KIND,
            error.code or type(error).__name__,
        )

    # --- the operations ---------------------------------------------------------------------------

    async def _run_stream(self, op: _StreamOp) -> None:
        stream = op.stream
        op.taken = len(stream.pending)
        target = stream.shown + stream.pending
        cut = split_point(target, len(stream.shown), self.max_len)
        head = target[:cut]
        if _visible(head) == _visible(stream.shown):
            self.stats.skipped_identical += 1
            await trio.lowlevel.checkpoint()
        else:
            editing = stream.message_id is not None
            try:
                await self._stream_call(stream, head)
            except (RateLimited, ChatUnavailable, ThreadGone):
                raise
            except NotModified:
                pass  # the message shows `head` already
            except ChatError as error:
                self._stream_refused(op, error, editing)
                return
        op.attempts = 0
        consumed = cut - len(stream.shown)
        stream.consume(consumed)
        stream.shown = head
        if cut < len(target):
            stream.message_id, stream.shown = None, ""  # full: the rest goes to a new message
        if consumed < op.taken:
            self._requeue(op)  # the rest of what was due stays due, in its place

    async def _stream_call(self, stream: _Stream, text: str) -> None:
        self._spend()
        if stream.message_id is None:
            mark, offset = stream.origin()
            message_id = await self.client.send(self.chat, text)
            self.stats.sends += 1
            stream.message_id = message_id
            self._remember(message_id, text, ())
            await self._reply(self._notify, StreamStarted(stream.name, message_id, mark, offset))
        else:
            await self.client.edit(self.chat, stream.message_id, text)
            self.stats.edits += 1
            self._remember(stream.message_id, text, ())

    def _stream_refused(self, op: _StreamOp, error: ChatError, editing: bool) -> None:
        stream = op.stream
        if editing and isinstance(error, MessageGone):
            # Deleted by someone: the whole text goes out again, as a new message.
            stream.shift(len(stream.shown))
            stream.pending = stream.shown + stream.pending
        elif editing:
            log.warning(
                "flusher %s: a stream edit was refused (%s); continuing in a new message",
                self.chat.key,
                error.code or type(error).__name__,
            )
        else:
            self._refused(op, error)
            stream.consume(op.taken)
            return
        stream.message_id, stream.shown = None, ""
        op.due = min(op.due, trio.current_time())
        self._requeue(op)

    async def _run_edit(self, op: _EditOp) -> None:
        text = op.text
        if len(text) > self.max_len:
            cut = split_point(text, 0, self.max_len - 1)
            text = text[:cut] + "…"
        if self._last_set.get(op.message_id) == (_visible(text), op.buttons):
            self.stats.skipped_identical += 1
            await trio.lowlevel.checkpoint()
            return
        self._spend()
        try:
            await self.client.edit(self.chat, op.message_id, text, buttons=op.buttons or None)
        except (RateLimited, ChatUnavailable, ThreadGone):
            raise
        except NotModified:
            pass  # the message shows `text` already
        except ChatError as error:
            self._refused(op, error)
            return
        self.stats.edits += 1
        self._remember(op.message_id, text, op.buttons)

    async def _run_post(self, op: _PostOp) -> None:
        last = len(op.chunks) == 1
        buttons = op.buttons if last else ()
        self._spend()
        try:
            message_id = await self.client.send(self.chat, op.chunks[0], buttons=buttons)
        except (RateLimited, ChatUnavailable, ThreadGone):
            raise
        except ChatError as error:
            self._refused(op, error)
            await self._reply(op.reply_to, Posted(op.tag, None))
            return
        self.stats.sends += 1
        self._remember(message_id, op.chunks.pop(0), buttons)
        op.attempts = 0
        if op.chunks:
            self._requeue(op)
        else:
            await self._reply(op.reply_to, Posted(op.tag, message_id))

    async def _run_upload(self, op: _UploadOp) -> None:
        self._spend()
        try:
            message_id = await self.client.upload(self.chat, op.filename, op.data, op.caption)
        except (RateLimited, ChatUnavailable, ThreadGone):
            raise
        except ChatError as error:
            self._refused(op, error)
            await self._reply(op.reply_to, Posted(op.tag, None))
            return
        self.stats.uploads += 1
        await self._reply(op.reply_to, Posted(op.tag, message_id))

    # --- bookkeeping ------------------------------------------------------------------------------

    def _remember(self, message_id: str, text: str, buttons: Rows) -> None:
        self._last_set[message_id] = (_visible(text), buttons)
        self._last_set.move_to_end(message_id)
        while len(self._last_set) > REMEMBERED_MESSAGES:
            self._last_set.popitem(last=False)

    async def _reply(self, channel: trio.MemorySendChannel[T] | None, message: T) -> None:
        if channel is None:
            return
        try:
            try:
                channel.send_nowait(message)
            except trio.WouldBlock:
                with trio.move_on_after(REPLY_TIMEOUT) as waited:
                    await channel.send(message)
                if waited.cancelled_caught:
                    log.warning(
                        "flusher %s: nobody took a %s for %g s; dropped",
                        self.chat.key,
                        type(message).__name__,
                        REPLY_TIMEOUT,
                    )
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug(
                "flusher %s: a %s went to a closed channel", self.chat.key, type(message).__name__
            )

    def _settle_drains(self) -> None:
        if not self._drains:
            return
        owed = [op.seq for op in self._ops.values()]
        if self._inflight is not None:
            owed.append(self._inflight.seq)
        oldest = min(owed, default=math.inf)
        waiting = []
        for seq, done in self._drains:
            if oldest > seq:
                done.set()
            else:
                waiting.append((seq, done))
        self._drains = waiting

    def _report(self) -> None:
        if self._context is None:
            return
        stats = self.stats
        self._context.update(
            chat=self.chat.key,
            pending_ops=len(self._ops),
            sends=stats.sends,
            edits=stats.edits,
            uploads=stats.uploads,
            rate_limited=stats.rate_limited_count,
            skipped_identical=stats.skipped_identical,
            dropped=stats.dropped,
            paused=self._paused_until > trio.current_time(),
        )


def _call_kind(op: _Op) -> str:
    """Which of the client's rate lanes a call draws from."""
    if isinstance(op, _UploadOp):
        return "upload"
    if isinstance(op, _EditOp) or (isinstance(op, _StreamOp) and op.stream.message_id):
        return "edit"
    return "send"
