"""The flusher: one chat's outbox. Deltas coalesce into debounced edits, long text continues in a
new message, posts keep their place after streamed text, edits coalesce latest-wins, the chat is
paced by token buckets, 429s pause it for exactly retry_after, and a slow chat never builds a
backlog.

Most tests drive an in-memory `RecordingChat` that behaves like a strict platform: it refuses an
edit that changes nothing visible (`NotModified`), empty and over-long texts, and edits of deleted
messages (`MessageGone`), and it records every call with its trio time. The last tests run the real
`TelegramClient` against the Telegram stand-in over HTTP, with the stand-in's own flood limits.
Every test runs under the autojump clock, so the times asserted are exact.
"""

from __future__ import annotations

import itertools
import logging
import random
import re
import statistics
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from anycode_actors.actors.budget import Budget, Lane
from anycode_actors.actors.flusher import (
    MAX_ATTEMPTS,
    THREAD_GONE_NOTICE,
    Append,
    AppendPieces,
    Drain,
    Edit,
    EndStream,
    Flush,
    Flusher,
    Post,
    Posted,
    StreamStarted,
    ThreadClosed,
    Upload,
    split_point,
)
from anycode_actors.chat.base import (
    Button,
    ChatError,
    ChatLimits,
    ChatRef,
    ChatUnavailable,
    MessageGone,
    NotModified,
    RateLimited,
)
from anycode_actors.chat.telegram import TELEGRAM_LIMITS, TelegramClient
from anycode_actors.config import TelegramConfig
from supervisors import Registry, Supervisor
from tests.fakes.telegram import FakeTelegram
from tests.fakes.telegram import User as TgUser

Rows = tuple[tuple[Button, ...], ...]

CHAT = ChatRef("telegram", "111")
GROUP = ChatRef("telegram", "-1001234")
LIMITS = ChatLimits(
    max_text_length=100,
    max_button_data_bytes=64,
    max_buttons_per_row=8,
    per_second=1.0,
    burst=3,
    group_per_minute=20,
)
MAX_LEN = 98  # LIMITS.max_text_length less the 2.5 % margin
ALLOW = ((Button("Allow", "p1:0"), Button("Deny", "p1:1")),)


# --- a strict in-memory platform ------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    at: float
    kind: str  # "send" | "edit" | "upload"
    message_id: str
    text: str
    buttons: Rows = ()


class RecordingChat:
    """A `ChatClient` that records calls and refuses what a strict platform refuses. The chats in
    `groups` are group conversations."""

    platform = "test"

    def __init__(
        self,
        limits: ChatLimits = LIMITS,
        *,
        latency: float = 0.0,
        groups: Collection[ChatRef] = (GROUP,),
    ) -> None:
        self.limits = limits
        self.latency = latency
        self.groups = groups
        self.calls: list[Call] = []
        self.messages: dict[str, tuple[str, Rows]] = {}
        self.deleted: set[str] = set()
        self.failures: list[ChatError] = []
        self.not_modified = 0
        self.refused = 0
        self.failed: set[int] = set()  # indexes into `calls`
        self._ids = itertools.count(1)

    def fail_next(self, *errors: ChatError) -> None:
        self.failures.extend(errors)

    def texts(self) -> list[str]:
        return [text for mid, (text, _) in self.messages.items() if mid not in self.deleted]

    def times(self, kind: str | None = None) -> list[float]:
        return [call.at for call in self.calls if kind is None or call.kind == kind]

    async def _enter(self, call: Call) -> None:
        self.calls.append(call)
        if self.latency:
            await trio.sleep(self.latency)
        else:
            await trio.lowlevel.checkpoint()
        if self.failures:
            self.failed.add(len(self.calls) - 1)
            raise self.failures.pop(0)
        if len(call.text) > self.limits.max_text_length or not call.text.strip():
            self.refused += 1
            raise ChatError("Bad Request: message is too long or empty", code="bad_text")

    def is_group(self, chat: ChatRef) -> bool:
        return chat in self.groups

    async def run(self, events: object, *, task_status: object = None) -> None:
        raise AssertionError("the flusher never receives; it only sends")

    async def send(
        self,
        chat: ChatRef,
        text: str,
        *,
        buttons: Sequence[Sequence[Button]] = (),
        reply_to: str | None = None,
    ) -> str:
        rows = tuple(tuple(row) for row in buttons)
        message_id = str(next(self._ids))
        await self._enter(Call(trio.current_time(), "send", message_id, text, rows))
        self.messages[message_id] = (text, rows)
        return message_id

    async def edit(
        self,
        chat: ChatRef,
        message_id: str,
        text: str,
        *,
        buttons: Sequence[Sequence[Button]] | None = None,
    ) -> None:
        rows = tuple(tuple(row) for row in buttons or ())
        await self._enter(Call(trio.current_time(), "edit", message_id, text, rows))
        if message_id not in self.messages or message_id in self.deleted:
            raise MessageGone("the message is gone", code="gone")
        old_text, old_rows = self.messages[message_id]
        if (old_text.strip(), old_rows) == (text.strip(), rows):
            self.not_modified += 1
            raise NotModified("the message shows this already", code="same")
        self.messages[message_id] = (text, rows)

    async def answer_press(self, press: object, text: str = "") -> None:
        raise AssertionError("the flusher never answers button presses")

    async def upload(self, chat: ChatRef, filename: str, data: bytes, caption: str = "") -> str:
        message_id = str(next(self._ids))
        self.calls.append(Call(trio.current_time(), "upload", message_id, caption))
        await trio.lowlevel.checkpoint()
        if self.failures:
            raise self.failures.pop(0)
        self.messages[message_id] = (f"[{filename}: {len(data)} bytes] {caption}", ())
        return message_id


async def start(
    nursery: trio.Nursery,
    client: RecordingChat | TelegramClient,
    chat: ChatRef = CHAT,
    *,
    debounce: float = 0.5,
    **kwargs: object,
) -> Flusher:
    flusher = Flusher(client, chat, debounce=debounce, **kwargs)  # type: ignore[arg-type]
    await nursery.start(flusher.run)
    return flusher


def close(expected: object) -> object:
    """Equal up to the flusher's PACING_SLACK (a millisecond added to waits for a token)."""
    return pytest.approx(expected, abs=0.01)


def arrived_in_order(original: str, messages: list[str]) -> bool:
    """`original` is the messages in order, with only whitespace (which platforms trim at the
    ends of a message) allowed between them: nothing lost, nothing repeated."""
    pattern = r"\s*" + r"\s*".join(re.escape(m) for m in messages) + r"\s*"
    return re.fullmatch(pattern, original) is not None


# --- streams --------------------------------------------------------------------------------------


async def test_deltas_coalesce_into_one_message_edited_only_when_the_text_changes(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    chat = RecordingChat()
    flusher = await start(nursery, chat)
    for delta in ("Reading ", "the ", "code"):
        await flusher.send(Append("s1", delta))
        await trio.sleep(0.1)
    await trio.sleep(1)
    await flusher.send(Append("s1", "\n"))  # invisible on its own: no edit
    await flusher.send(Flush("s1"))
    await trio.sleep(1)
    await flusher.send(Append("s1", "Found it."))
    await trio.sleep(1)
    assert [(c.kind, c.text) for c in chat.calls] == [
        ("send", "Reading the code"),
        ("edit", "Reading the code\nFound it."),
    ]
    assert chat.not_modified == 0
    assert flusher.stats.sends == 1
    assert flusher.stats.edits == 1
    assert flusher.stats.skipped_identical == 1


async def test_the_first_call_waits_exactly_the_debounce_and_later_deltas_ride_along(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    chat = RecordingChat()
    flusher = await start(nursery, chat, debounce=0.5)
    t0 = trio.current_time()
    await flusher.send(Append("s1", "a"))
    await trio.sleep(0.4)
    await flusher.send(Append("s1", "b"))
    await trio.sleep(0.3)  # the send went at t0 + 0.5 with "ab"
    await flusher.send(Append("s1", "c"))  # t0 + 0.7: due at t0 + 1.2
    await trio.sleep(0.2)
    await flusher.send(Append("s1", "d"))
    await trio.sleep(2)
    assert [(c.kind, c.text) for c in chat.calls] == [("send", "ab"), ("edit", "abcd")]
    # Exact: waiting for the debounce carries no pacing slack. The edit, due at t0 + 1.2, is
    # an intermediate one: it waits for the bucket to be full again (one call a second).
    assert chat.calls[0].at - t0 == pytest.approx(0.5)
    assert chat.calls[1].at - t0 == close(1.5)


async def test_streaming_goes_at_the_steady_rate_and_keeps_the_burst_for_a_prompt(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    chat = RecordingChat()
    flusher = await start(nursery, chat, debounce=0.25)
    t0 = trio.current_time()
    for n in range(20):  # five seconds of deltas, four a second, all in one message
        await flusher.send(Append("s1", f"x{n:02d} "))
        await trio.sleep(0.25)
    times = [c.at - t0 for c in chat.calls]
    assert [c.kind for c in chat.calls] == ["send"] + ["edit"] * (len(times) - 1)
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(times))
    assert len(times) == 5  # 0.25, 1.25, 2.25, 3.25, 4.25: the send, then one edit a second
    await flusher.send(Post("Allow `rm`?", buttons=ALLOW, tag="p1"))
    asked = trio.current_time()
    await flusher.drain()
    # The post hurried the stream's last text out and went right after it: the burst was kept.
    assert [c.at for c in chat.calls[-2:]] == [asked, asked]
    assert [c.kind for c in chat.calls[-2:]] == ["edit", "send"]
    assert chat.texts() == ["".join(f"x{n:02d} " for n in range(20)), "Allow `rm`?"]


async def test_flush_and_end_stream_deliver_at_once_and_end_stream_starts_a_new_message(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    chat = RecordingChat()
    flusher = await start(nursery, chat, debounce=5)
    t0 = trio.current_time()
    await flusher.send(Append("s1", "step one"))
    await flusher.send(Flush("s1"))
    await trio.sleep(0.1)
    await flusher.send(Append("s1", ", done"))
    await flusher.send(EndStream("s1"))
    await trio.sleep(0.1)
    await flusher.send(Append("s1", "next turn"))
    await trio.sleep(10)
    assert [(c.kind, c.text) for c in chat.calls] == [
        ("send", "step one"),
        ("edit", "step one, done"),
        ("send", "next turn"),
    ]
    assert [c.at - t0 for c in chat.calls] == pytest.approx([0, 0.1, 5.2])
    assert chat.calls[1].message_id != chat.calls[2].message_id


async def test_each_stream_in_a_chat_has_its_own_message(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    chat = RecordingChat()
    flusher = await start(nursery, chat)
    await flusher.send(Append("s1", "first session"))
    await flusher.send(Append("s2", "second session"))
    await trio.sleep(1)
    await flusher.send(Append("s2", " goes on"))
    await flusher.send(Append("s1", " too"))
    await trio.sleep(3)  # two intermediate edits: one a second, from a full bucket
    assert chat.texts() == ["first session too", "second session goes on"]


async def test_text_over_the_limit_continues_in_a_new_message_split_at_a_newline(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    chat = RecordingChat()
    flusher = await start(nursery, chat)
    lines = [f"line {n:02d} of the answer\n" for n in range(12)]  # 20 code points each
    original = "".join(lines)
    for line in lines:
        await flusher.send(Append("s1", line))
        await trio.sleep(0.3)
    await flusher.send(EndStream("s1"))
    await trio.sleep(10)
    texts = chat.texts()
    assert "".join(texts) == original
    assert texts[0] == "".join(lines[:4])  # 80 code points: a fifth line would pass 98
    assert all(text.endswith("\n") and len(text) <= MAX_LEN for text in texts)
    # A finished message is never touched again: every call goes to the newest message.
    newest = ""
    for call in chat.calls:
        if call.kind == "send":
            newest = call.message_id
        assert call.message_id == newest
    assert chat.not_modified == 0


async def test_a_burst_over_the_limit_takes_one_call_per_message_paced_by_the_bucket(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    chat = RecordingChat()
    flusher = await start(nursery, chat)
    t0 = trio.current_time()
    original = "x" * (MAX_LEN * 5 + 7)
    await flusher.send(Append("s1", original))
    await flusher.send(Flush("s1"))
    await trio.sleep(10)
    assert "".join(chat.texts()) == original
    assert [c.kind for c in chat.calls] == ["send"] * 6
    assert [c.at - t0 for c in chat.calls] == close([0, 0, 0, 1, 2, 3])


@settings(max_examples=60, deadline=None)
@given(
    deltas=st.lists(
        st.lists(
            st.sampled_from(
                [
                    "a",
                    "word",
                    "longerword",
                    " ",
                    "\n",
                    "\n\n",
                    "\t",
                    "é",
                    "e\u0301",
                    "👍🏽",
                    "👨\u200d👩\u200d👧",
                    "y" * 45,
                ]
            ),
            min_size=1,
            max_size=6,
        ).map("".join),
        min_size=1,
        max_size=40,
    ),
    gaps=st.lists(st.sampled_from([0.0, 0.05, 0.3, 1.0, 2.5]), min_size=1, max_size=40),
    flushes=st.sets(st.integers(0, 39), max_size=8),
    limit=st.integers(8, 160),
)
def test_any_chunking_at_any_limit_shows_every_delta_once_in_order(
    deltas: list[str], gaps: list[float], flushes: set[int], limit: int
) -> None:
    limits = ChatLimits(limit, 64, 8, per_second=1.0, burst=3)
    chat = RecordingChat(limits)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            flusher = await start(nursery, chat, limits=limits)
            for index, delta in enumerate(deltas):
                await flusher.send(Append("s1", delta))
                if index in flushes:
                    await flusher.send(Flush("s1"))
                await trio.sleep(gaps[index % len(gaps)])
            await flusher.send(EndStream("s1"))
            with trio.fail_after(10_000):
                await flusher.drain()
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    original = "".join(deltas)
    texts = chat.texts()
    assert arrived_in_order(original, texts), (original, texts)
    max_len = limit - int(limit * 0.025)
    assert all(len(text) <= max_len for text in texts)
    assert chat.not_modified == 0
    assert chat.refused == 0
    newest = ""
    for call in chat.calls:
        newest = call.message_id if call.kind == "send" else newest
        assert call.message_id == newest


def test_split_point_prefers_a_newline_then_a_space_and_never_breaks_a_character() -> None:
    assert split_point("short", 0, 10) == 5
    assert split_point("aaaa\nbbbb cccc", 0, 10) == 5
    assert split_point("aaaa bbbbbbbbbb", 0, 10) == 5
    assert split_point("a\nbbbbbbbbbbbbbb", 0, 10) == 10  # a newline in the first half is ignored
    assert split_point("aaaa\nbbbbbbbbbb", 7, 10) == 10  # never takes back what is shown
    assert split_point("aaaaaaaa👍🏽", 0, 9) == 8  # not between the emoji and its skin tone
    assert split_point("aaaaaaae\u0301x", 0, 8) == 7  # not between a letter and its accent
    family = "aaaaaa👨\u200d👩\u200d👧"
    assert split_point(family + "b", 0, 10) == 6
    assert split_point("aaaaaaaa\ud83d\ude00", 0, 9) == 8  # a surrogate pair stays together


# --- posts, edits, uploads ------------------------------------------------------------------------


async def test_a_post_after_streamed_text_appears_below_it(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    chat = RecordingChat()
    flusher = await start(nursery, chat, debounce=2)
    await flusher.send(Append("s1", "I will delete the build folder."))
    await flusher.send(Post("Allow `rm -rf build`?", ALLOW))
    await trio.sleep(0.1)
    await flusher.send(Append("s1", " Waiting."))  # the stream's message is above the prompt
    await trio.sleep(5)
    assert [(c.kind, c.text, c.buttons) for c in chat.calls] == [
        ("send", "I will delete the build folder.", ()),
        ("send", "Allow `rm -rf build`?", ALLOW),
        ("edit", "I will delete the build folder. Waiting.", ()),
    ]


async def test_posted_carries_the_id_of_the_message_with_the_buttons(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    chat = RecordingChat()
    flusher = await start(nursery, chat)
    replies, answers = trio.open_memory_channel[Posted](4)
    long_prompt = "\n".join(f"option {n}: " + "z" * 30 for n in range(6))  # 3 messages
    await flusher.send(Post(long_prompt, ALLOW, tag="perm:7", reply_to=replies))
    with trio.fail_after(30):
        posted = await answers.receive()
    assert posted.tag == "perm:7"
    assert [c.buttons for c in chat.calls] == [(), (), ALLOW]
    assert posted.message_id == chat.calls[-1].message_id
    assert "".join(chat.texts()) == long_prompt


async def test_edits_coalesce_latest_wins_while_the_chat_is_paused(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    chat = RecordingChat()
    flusher = await start(nursery, chat)
    replies, answers = trio.open_memory_channel[Posted](4)
    await flusher.send(Post("Allow?", ALLOW, reply_to=replies))
    prompt = (await answers.receive()).message_id
    assert prompt is not None
    chat.fail_next(RateLimited(10))
    await flusher.send(Post("another notice"))
    await trio.sleep(1)
    for text in ("⏳ checking", "⏳ still checking", "✅ Allowed by @ada"):
        await flusher.send(Edit(prompt, text))
        await trio.sleep(1)
    assert len(chat.calls) == 2  # paused: nothing went out
    await trio.sleep(20)
    edits = [(c.message_id, c.text, c.buttons) for c in chat.calls if c.kind == "edit"]
    assert edits == [(prompt, "✅ Allowed by @ada", ())]
    assert chat.texts()[0] == "✅ Allowed by @ada"


async def test_an_edit_that_arrives_while_a_failing_edit_is_in_flight_wins(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    chat = RecordingChat(latency=1.0)
    flusher = await start(nursery, chat)
    replies, answers = trio.open_memory_channel[Posted](4)
    await flusher.send(Post("Allow?", ALLOW, reply_to=replies))
    prompt = (await answers.receive()).message_id
    assert prompt is not None
    chat.fail_next(RateLimited(5))
    await flusher.send(Edit(prompt, "⏳ checking"))
    await trio.sleep(0.5)  # that edit is in flight now, and will get a 429
    await flusher.send(Edit(prompt, "✅ Allowed by @ada"))
    await trio.sleep(20)
    edits = [c.text for c in chat.calls if c.kind == "edit"]
    assert edits == ["⏳ checking", "✅ Allowed by @ada"]  # the old text is not retried
    assert chat.texts() == ["✅ Allowed by @ada"]


async def test_an_edit_that_changes_nothing_is_not_made(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    chat = RecordingChat()
    flusher = await start(nursery, chat)
    replies, answers = trio.open_memory_channel[Posted](4)
    await flusher.send(Post("Allow?", ALLOW, reply_to=replies))
    prompt = (await answers.receive()).message_id
    assert prompt is not None
    await flusher.send(Edit(prompt, "Allow? ", ALLOW))  # same visible text and buttons
    await trio.sleep(1)
    await flusher.send(Edit(prompt, "Allowed"))
    await trio.sleep(1)
    await flusher.send(Edit(prompt, "Allowed"))
    await trio.sleep(1)
    assert [(c.kind, c.text) for c in chat.calls] == [("send", "Allow?"), ("edit", "Allowed")]
    assert flusher.stats.skipped_identical == 2
    assert chat.not_modified == 0


async def test_an_upload_is_answered_with_its_message_id(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    chat = RecordingChat()
    flusher = await start(nursery, chat)
    replies, answers = trio.open_memory_channel[Posted](4)
    await flusher.send(Append("s1", "Here is the diff:"))
    await flusher.send(Upload("fix.diff", b"--- a\n+++ b\n", "the fix", "diff", replies))
    posted = await answers.receive()
    assert [c.kind for c in chat.calls] == ["send", "upload"]
    assert posted == Posted("diff", chat.calls[1].message_id)
    assert flusher.stats.uploads == 1


async def test_a_refused_post_is_dropped_and_answered_with_no_id(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    chat = RecordingChat()
    flusher = await start(nursery, chat)
    replies, answers = trio.open_memory_channel[Posted](4)
    chat.fail_next(ChatError("Forbidden: bot was blocked by the user", code="Forbidden: blocked"))
    await flusher.send(Post("secret plan", tag="t", reply_to=replies))
    await flusher.send(Post("next"))
    assert await answers.receive() == Posted("t", None)
    await trio.sleep(1)
    assert chat.texts() == ["next"]
    assert flusher.stats.dropped == 1
    assert "Forbidden: blocked" in caplog.text
    assert "secret plan" not in caplog.text


# --- pacing and failures --------------------------------------------------------------------------


async def test_a_429_pauses_the_chat_for_exactly_retry_after(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    chat = RecordingChat()
    flusher = await start(nursery, chat)
    t0 = trio.current_time()
    chat.fail_next(RateLimited(7))
    await flusher.send(Post("notice"))
    await trio.sleep(1)
    await flusher.send(Append("s1", "streamed meanwhile"))
    await flusher.send(Flush("s1"))
    await trio.sleep(20)
    assert [c.text for c in chat.calls] == ["notice", "notice", "streamed meanwhile"]
    # The retry exactly at retry_after, then one token a second again.
    assert [c.at - t0 for c in chat.calls] == close([0, 7, 8])
    assert chat.calls[1].at - t0 == pytest.approx(7)
    assert flusher.stats.rate_limited_count == 1


async def test_the_bucket_paces_n_messages_over_n_minus_burst_seconds(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    chat = RecordingChat()
    flusher = await start(nursery, chat)
    t0 = trio.current_time()
    for n in range(10):
        await flusher.send(Post(f"message {n}"))
    await trio.sleep(60)
    assert [t - t0 for t in chat.times()] == close([0, 0, 0, 1, 2, 3, 4, 5, 6, 7])
    assert chat.texts() == [f"message {n}" for n in range(10)]


async def test_a_message_the_lobby_sent_just_before_counts_against_the_chats_pace(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    chat = RecordingChat()
    t0 = trio.current_time()
    flusher = await start(nursery, chat, spoken_at=t0)
    for n in range(5):
        await flusher.send(Post(f"message {n}"))
    await trio.sleep(60)
    # The lobby's message took one of the burst of 3.
    assert [t - t0 for t in chat.times()] == close([0, 0, 1, 2, 3])


async def test_group_chats_are_paced_at_20_a_minute(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    chat = RecordingChat()
    flusher = await start(nursery, chat, GROUP)
    t0 = trio.current_time()
    for n in range(8):
        await flusher.send(Post(f"message {n}"))
    await trio.sleep(60)
    assert [t - t0 for t in chat.times()] == close([0, 0, 0, 3, 6, 9, 12, 15])


@pytest.mark.parametrize(("groups", "gaps"), [((CHAT,), [0, 0, 0, 3, 6]), ((), [0, 0, 0, 1, 2])])
async def test_group_pacing_follows_the_clients_answer_not_the_chat_id(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    groups: tuple[ChatRef, ...],
    gaps: list[float],
) -> None:
    chat = RecordingChat(groups=groups)
    flusher = await start(nursery, chat, CHAT)
    t0 = trio.current_time()
    for n in range(5):
        await flusher.send(Post(f"message {n}"))
    await trio.sleep(60)
    assert [t - t0 for t in chat.times()] == close(gaps)


async def test_an_unavailable_platform_is_retried_with_backoff_then_succeeds(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    chat = RecordingChat()
    flusher = await start(nursery, chat)
    t0 = trio.current_time()
    chat.fail_next(*(ChatUnavailable("502", code="HTTP 502") for _ in range(3)))
    await flusher.send(Post("hello"))
    await trio.sleep(30)
    assert [t - t0 for t in chat.times()] == close([0, 1, 3, 7])
    assert chat.texts() == ["hello"]


async def test_an_operation_that_keeps_failing_is_dropped_with_an_error_log(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    chat = RecordingChat()
    flusher = await start(nursery, chat)
    replies, answers = trio.open_memory_channel[Posted](4)
    t0 = trio.current_time()
    chat.fail_next(*(ChatUnavailable("down", code="timeout") for _ in range(MAX_ATTEMPTS)))
    with caplog.at_level(logging.ERROR, logger="anycode_actors.actors.flusher"):
        await flusher.send(Post("the secret text", tag="p", reply_to=replies))
        assert await answers.receive() == Posted("p", None)
    # Pauses of 1, 2, 4, 8, 16 and then at most 30 seconds between attempts.
    assert [t - t0 for t in chat.times()] == close([0, 1, 3, 7, 15, 31, 61, 91])
    assert flusher.stats.dropped == 1
    assert "telegram:111" in caplog.text
    assert "post" in caplog.text
    assert "the secret text" not in caplog.text


async def test_a_deleted_stream_message_is_sent_again_in_full_as_a_new_one(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    chat = RecordingChat()
    flusher = await start(nursery, chat)
    await flusher.send(Append("s1", "first part"))
    await trio.sleep(1)
    chat.deleted.add(chat.calls[0].message_id)
    await flusher.send(Append("s1", ", second part"))
    await trio.sleep(5)
    assert [c.kind for c in chat.calls] == ["send", "edit", "send"]
    assert chat.texts() == ["first part, second part"]


async def test_a_refused_stream_edit_continues_in_a_new_message(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    chat = RecordingChat()
    flusher = await start(nursery, chat)
    await flusher.send(Append("s1", "first part"))
    await trio.sleep(1)
    chat.fail_next(ChatError("Bad Request: message can't be edited", code="cant_edit"))
    await flusher.send(Append("s1", ", second part"))
    await trio.sleep(5)
    assert chat.texts() == ["first part", ", second part"]


async def test_only_message_gone_sends_the_stream_again_whatever_the_error_says(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    """The flusher acts on the error's type: a plain `ChatError` worded like a vanished message
    is just a refusal, and a `MessageGone` with any wording resends the whole text."""
    chat = RecordingChat()
    flusher = await start(nursery, chat)
    await flusher.send(Append("s1", "one"))
    await trio.sleep(1)
    chat.fail_next(
        ChatError("message to edit not found", code="Bad Request: message to edit not found")
    )
    await flusher.send(Append("s1", " two"))
    await trio.sleep(5)
    assert chat.texts() == ["one", " two"]  # a new message with the undelivered text only
    chat.fail_next(MessageGone("whatever the platform said", code="x"))
    await flusher.send(Append("s1", " three"))
    await trio.sleep(5)
    assert chat.texts() == ["one", " two", " two three"]  # the whole stream's text again


async def test_not_modified_counts_as_done_for_stream_and_message_edits(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    chat = RecordingChat()
    flusher = await start(nursery, chat)
    replies, answers = trio.open_memory_channel[Posted](4)
    await flusher.send(Post("Run `pytest`?", ALLOW, tag="p", reply_to=replies))
    posted = await answers.receive()
    assert posted.message_id is not None
    await flusher.send(Append("s1", "streamed"))
    await trio.sleep(1)
    chat.fail_next(
        NotModified("same", code="same"), NotModified("the message is not modified", code="")
    )
    await flusher.send(Edit(posted.message_id, "Run `pytest`?\n✅ Allowed"))
    await flusher.send(Append("s1", " more"))
    await flusher.send(Flush("s1"))
    await trio.sleep(5)
    # Both calls were made and refused as "not modified": counted as delivered, nothing dropped,
    # nothing repeated, and the same content is not sent again.
    assert [c.kind for c in chat.calls] == ["send", "send", "edit", "edit"]
    assert flusher.stats.dropped == 0
    assert "refused" not in caplog.text
    await flusher.send(Edit(posted.message_id, "Run `pytest`?\n✅ Allowed"))
    await flusher.send(Flush("s1"))
    await trio.sleep(5)
    assert len(chat.calls) == 4
    assert flusher.stats.skipped_identical >= 1


# --- backlog, drain, supervision ------------------------------------------------------------------


async def test_a_slow_chat_makes_a_bounded_number_of_calls_and_never_builds_a_backlog(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    chat = RecordingChat(TELEGRAM_LIMITS, latency=2.0)
    flusher = await start(nursery, chat, limits=TELEGRAM_LIMITS, inbox_size=4)
    t0 = trio.current_time()
    deltas = [f"t{n} " for n in range(1000)]  # 4890 code points: two messages
    for delta in deltas:
        await flusher.send(Append("s1", delta))
        await trio.sleep(0.05)
    streamed = trio.current_time() - t0
    await flusher.send(EndStream("s1"))
    with trio.fail_after(60):
        await flusher.drain()
    assert streamed == close(50)  # the sender never waited behind a slow call
    assert flusher.stats.calls <= 50 / 2 + 4
    assert flusher.stats.peak_pending == 1
    assert arrived_in_order("".join(deltas), chat.texts())
    assert len(chat.texts()) == 2


async def test_a_thousand_deltas_at_once_make_two_calls(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    chat = RecordingChat(TELEGRAM_LIMITS, latency=2.0)
    flusher = await start(nursery, chat, limits=TELEGRAM_LIMITS, inbox_size=4)
    t0 = trio.current_time()
    for n in range(1000):
        await flusher.send(Append("s1", f"{n} "))
    assert trio.current_time() == t0
    await flusher.send(Flush("s1"))
    with trio.fail_after(60):
        await flusher.drain()
    assert [c.kind for c in chat.calls] == ["send"]
    assert chat.texts() == ["".join(f"{n} " for n in range(1000))]


async def test_posts_beyond_max_pending_wait_in_the_inbox(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    chat = RecordingChat()
    flusher = await start(nursery, chat, inbox_size=2, max_pending=4)
    sent = 0

    async def flood() -> None:
        nonlocal sent
        for n in range(20):
            await flusher.send(Post(f"notice {n}"))
            sent += 1

    nursery.start_soon(flood)
    await trio.sleep(0.5)
    # 3 went out at once (the burst), 4 are queued, 2 wait in the inbox, one sender waits.
    assert sent == 3 + 4 + 2
    assert flusher.pending == 4
    await trio.sleep(30)
    assert sent == 20
    assert chat.texts() == [f"notice {n}" for n in range(20)]
    assert flusher.stats.peak_pending == 4


async def test_drain_waits_until_everything_queued_before_it_is_delivered(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    chat = RecordingChat()
    flusher = await start(nursery, chat, debounce=3)
    t0 = trio.current_time()
    chat.fail_next(RateLimited(5))
    await flusher.send(Post("first"))
    await flusher.send(Append("s1", "streamed"))
    await flusher.send(Post("second"))
    await flusher.drain()
    assert trio.current_time() - t0 == close(7)  # 429 at 0; after the pause 5, 6 and 7 s
    assert chat.texts() == ["first", "streamed", "second"]
    done = trio.Event()
    t1 = trio.current_time()
    await flusher.send(Drain(done))  # nothing queued: done at once
    await trio.testing.wait_all_tasks_blocked()
    assert done.is_set()
    assert trio.current_time() == t1


async def test_drain_is_not_held_up_by_another_stream_that_keeps_streaming(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    chat = RecordingChat()
    flusher = await start(nursery, chat)

    async def chatty() -> None:
        for n in itertools.count():
            await flusher.send(Append("other", f"{n} "))
            await trio.sleep(0.1)

    nursery.start_soon(chatty)
    await trio.sleep(2)
    await flusher.send(Append("s1", "last words"))
    await flusher.send(EndStream("s1"))
    t0 = trio.current_time()
    with trio.fail_after(5):
        await flusher.drain()
    assert trio.current_time() - t0 < 4
    assert "last words" in chat.texts()


async def test_new_stream_messages_are_announced(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    chat = RecordingChat()
    notify, announced = trio.open_memory_channel[StreamStarted](8)
    flusher = Flusher(chat, CHAT, debounce=0.5, notify=notify)
    await nursery.start(flusher.run)
    await flusher.send(Append("s1", "y" * 150))  # two messages
    await flusher.send(EndStream("s1"))
    await flusher.drain()
    sends = [c.message_id for c in chat.calls if c.kind == "send"]
    assert [announced.receive_nowait() for _ in sends] == [StreamStarted("s1", m) for m in sends]
    assert len(sends) == 2


@pytest.mark.parametrize("together", [False, True])
async def test_pieces_appended_at_once_stream_like_appends_one_by_one(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, together: bool
) -> None:
    # 330 characters in pieces of 7 to 60: several messages, each one starting inside a piece;
    # a new message says in which piece (its mark) and how far into it, whichever way the
    # pieces came.
    sizes = [7, 60, 13, 41, 9, 55, 30, 8, 47, 60]
    pieces = tuple(
        (mark, "".join(chr(ord("a") + mark) for _ in range(size)))
        for mark, size in enumerate(sizes, start=1)
    )
    chat = RecordingChat()
    notify, announced = trio.open_memory_channel[StreamStarted](16)
    flusher = await start(nursery, chat, notify=notify)
    if together:
        await flusher.send(AppendPieces("s1", pieces[:4]))
        await flusher.send(AppendPieces("s1", ((11, ""), *pieces[4:])))
    else:
        for mark, text in pieces:
            await flusher.send(Append("s1", text, mark=mark))
    await flusher.send(EndStream("s1"))
    await flusher.drain()
    texts = chat.texts()
    assert "".join(texts) == "".join(text for _, text in pieces)
    assert len(texts) >= 4
    expected = []
    position = 0
    for text in texts:
        begins = 0
        for mark, piece in pieces:
            if begins <= position < begins + len(piece):
                expected.append((mark, position - begins))
            begins += len(piece)
        position += len(text)
    started = [announced.receive_nowait() for _ in texts]
    assert [(s.mark, s.offset) for s in started] == expected
    assert any(offset > 0 for _, offset in expected)


async def test_the_registry_shows_the_inbox_and_the_counters(
    autojump_clock: trio.abc.Clock,
) -> None:
    chat = RecordingChat()
    registry = Registry()
    flusher = Flusher(chat, CHAT, debounce=0.5, inbox_size=8)
    root = Supervisor([flusher.spec("flusher:telegram:111")], registry=registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(root.run)
        await flusher.send(Append("s1", "hello"))
        await flusher.send(Post("notice"))
        await trio.sleep(1)
        entry = registry.get("root/flusher:telegram:111")
        assert entry is not None
        assert entry.inbox_capacity == 8
        assert entry.info["sends"] == 2
        assert entry.info["pending_ops"] == 0
        assert entry.info["chat"] == "telegram:111"
        nursery.cancel_scope.cancel()


async def test_stop_delivers_what_was_sent_at_once_then_returns(
    autojump_clock: trio.abc.Clock,
) -> None:
    chat = RecordingChat()
    flusher = Flusher(chat, CHAT, debounce=10)
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(flusher.run)
        await flusher.send(Append("s1", "bye"))
        await flusher.send(Post("stopped"))
        flusher.stop()
    assert trio.current_time() == close(t0)
    assert chat.texts() == ["bye", "stopped"]
    with pytest.raises(trio.BrokenResourceError):
        await flusher.send(Post("too late"))


# --- against the Telegram stand-in ----------------------------------------------------------------

ADA = TgUser(111, "Ada", username="ada")
TG_GROUP = -1001234567890


class Requests:
    """Every request the client sends: (Bot API method, trio time), via an httpx event hook."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, float]] = []

    async def hook(self, request: httpx.Request) -> None:
        self.sent.append((request.url.path.rsplit("/", 1)[-1], trio.current_time()))

    def times(self, method: str) -> list[float]:
        return [at for name, at in self.sent if name == method]


@asynccontextmanager
async def telegram(
    nursery: trio.Nursery,
) -> AsyncIterator[tuple[FakeTelegram, TelegramClient, Requests]]:
    fake = FakeTelegram()  # its default flood limits: burst 3, 1/s per chat, 20/min in groups
    await fake.start(nursery)
    fake.add_chat(ADA.id, "private", user=ADA)
    fake.add_chat(TG_GROUP, "supergroup")
    requests = Requests()
    config = TelegramConfig.model_validate(
        {"bot_token": fake.token, "api_base_url": fake.base_url, "allow_everyone": True}
    )
    async with (
        httpx.AsyncClient(event_hooks={"request": [requests.hook]}) as http,
        TelegramClient(config, http=http) as client,
    ):
        yield fake, client, requests


def errors(fake: FakeTelegram) -> list[tuple[int, str | None]]:
    return [(c.status, c.description) for c in fake.calls if c.status != 200]


async def test_telegram_a_long_answer_arrives_as_two_messages_with_no_refused_call(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    async with telegram(nursery) as (fake, client, _):
        flusher = await start(nursery, client, ChatRef("telegram", str(ADA.id)))
        lines = [f"{n:03d} the agent explains a step of the fix 🛠️ in detail" for n in range(110)]
        original = "\n".join(lines)
        assert len(original) > 4096
        for start_at in range(0, len(original), 13):
            await flusher.send(Append("s1", original[start_at : start_at + 13]))
            await trio.sleep(0.05)
        await flusher.send(EndStream("s1"))
        with trio.fail_after(60):
            await flusher.drain()
        texts = [m.text for m in fake.bot_messages(ADA.id)]
        assert len(texts) == 2
        assert "\n".join(texts) == original  # cut at a newline, which Telegram trims
        assert all(len(text) <= 4096 for text in texts)
        assert errors(fake) == []  # no "message is not modified", no 429
        assert len(fake.calls_to("editMessageText")) > 10


async def test_telegram_a_permission_prompt_is_posted_and_its_buttons_replaced(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    async with telegram(nursery) as (fake, client, _):
        flusher = await start(nursery, client, ChatRef("telegram", str(ADA.id)))
        replies, answers = trio.open_memory_channel[Posted](4)
        await flusher.send(Append("s1", "I need to run the tests."))
        await flusher.send(Post("Run `pytest`?", ALLOW, tag="perm:1", reply_to=replies))
        posted = await answers.receive()
        assert posted.message_id is not None
        prompt = fake.message(ADA.id, int(posted.message_id))
        assert prompt.text == "Run `pytest`?"
        assert prompt.button_data() == ["p1:0", "p1:1"]
        await flusher.send(Edit(posted.message_id, "Run `pytest`?\n✅ Allowed by @ada"))
        await flusher.send(Edit(posted.message_id, "Run `pytest`?\n✅ Allowed by @ada"))
        await flusher.drain()
        prompt = fake.message(ADA.id, int(posted.message_id))
        assert prompt.text == "Run `pytest`?\n✅ Allowed by @ada"
        assert prompt.buttons == ()
        assert [m.text for m in fake.bot_messages(ADA.id)] == [
            "I need to run the tests.",
            "Run `pytest`?\n✅ Allowed by @ada",
        ]
        assert len(fake.calls_to("editMessageText")) == 1
        assert errors(fake) == []


async def test_telegram_a_429_pauses_the_chat_for_retry_after_and_coalesces_meanwhile(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    async with telegram(nursery) as (fake, client, requests):
        flusher = await start(nursery, client, ChatRef("telegram", str(ADA.id)))
        fake.fail_next("sendMessage", retry_after=7)
        await flusher.send(Post("Starting claude session"))
        for n in range(30):
            await flusher.send(Append("s1", f"step {n}. "))
            await trio.sleep(0.1)
        await flusher.send(EndStream("s1"))
        await flusher.drain()
        sends = requests.times("sendMessage")
        assert sends[1] - sends[0] == close(7)
        assert [(c.status, c.method) for c in fake.calls] == [
            (429, "sendmessage"),
            (200, "sendmessage"),
            (200, "sendmessage"),  # the whole stream in one message, no edits queued up
        ]
        assert [m.text for m in fake.bot_messages(ADA.id)] == [
            "Starting claude session",
            "".join(f"step {n}. " for n in range(30)).rstrip(),
        ]
        assert flusher.stats.rate_limited_count == 1


async def test_telegram_a_busy_group_never_hits_the_flood_limits(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    async with telegram(nursery) as (fake, client, _):
        flusher = await start(nursery, client, ChatRef("telegram", str(TG_GROUP)))
        for n in range(600):
            await flusher.send(Append("s1", f"{n} "))
            await flusher.send(Append("s2", f"{n}. "))
            if n % 100 == 99:
                await flusher.send(Post(f"checkpoint {n}"))
            await trio.sleep(0.1)
        await flusher.send(EndStream("s1"))
        await flusher.send(EndStream("s2"))
        with trio.fail_after(120):
            await flusher.drain()
        assert errors(fake) == []
        texts = [m.text for m in fake.bot_messages(TG_GROUP)]
        assert "".join(f"{n} " for n in range(600)).rstrip() in texts
        assert "".join(f"{n}. " for n in range(600)).rstrip() in texts
        assert len(fake.calls) <= 3 + 60 / 3 + 6


async def test_telegram_a_deleted_stream_message_is_sent_again_as_a_new_one(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    async with telegram(nursery) as (fake, client, _):
        chat = ChatRef("telegram", str(ADA.id))
        flusher = await start(nursery, client, chat)
        await flusher.send(Append("s1", "Looking at the logs"))
        await flusher.send(Flush("s1"))
        await flusher.drain()
        [first] = fake.bot_messages(ADA.id)
        fake.delete(ADA.id, first.message_id)
        await flusher.send(Append("s1", ", found the bug."))
        await flusher.send(EndStream("s1"))
        await flusher.drain()
        assert [m.text for m in fake.bot_messages(ADA.id)] == [
            "Looking at the logs, found the bug."
        ]
        assert [(c.status, c.description) for c in fake.calls if c.status != 200] == [
            (400, "Bad Request: message to edit not found")
        ]


@pytest.mark.parametrize("how", ["closed", "deleted"])
async def test_telegram_a_topic_that_goes_away_moves_the_output_to_the_main_chat(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, how: str
) -> None:
    async with telegram(nursery) as (fake, client, _):
        fake.add_chat(TG_GROUP, "supergroup", is_forum=True)
        topic = fake.create_topic(TG_GROUP, "bugs")
        thread = ChatRef("telegram", str(TG_GROUP), str(topic))
        notify_in, notify_out = trio.open_memory_channel[StreamStarted | ThreadClosed](10)
        flusher = await start(nursery, client, thread, notify=notify_in)
        await flusher.send(Append("s1", "Looking at the logs"))
        await flusher.send(Flush("s1"))
        await flusher.drain()
        (fake.close_topic if how == "closed" else fake.delete_topic)(TG_GROUP, topic)
        await flusher.send(Append("s1", ", found the bug."))
        await flusher.send(EndStream("s1"))
        posted_in, posted_out = trio.open_memory_channel[Posted](1)
        await flusher.send(Post("Allow the edit?", ALLOW, tag="p1", reply_to=posted_in))
        await flusher.drain()
        main = [m.text for m in fake.topic_messages(TG_GROUP, None) if m.from_bot]
        in_topic = [m.text for m in fake.topic_messages(TG_GROUP, topic) if m.from_bot]
        if how == "closed":
            # Its message is still there and can still be edited: the stream ends in it.
            assert in_topic == ["Looking at the logs, found the bug."]
            assert main == [THREAD_GONE_NOTICE, "Allow the edit?"]
        else:
            # Deleted with the topic: the whole text goes out again, in the main chat.
            assert in_topic == []
            assert main == [
                THREAD_GONE_NOTICE,
                "Looking at the logs, found the bug.",
                "Allow the edit?",
            ]
        assert (await posted_out.receive()).message_id is not None
        assert flusher.chat == ChatRef("telegram", str(TG_GROUP))
        reports = [notify_out.receive_nowait() for _ in range(2)]
        assert isinstance(reports[0], StreamStarted)
        assert reports[1] == ThreadClosed(thread)
        # Later output goes straight to the main chat.
        await flusher.send(Post("Done."))
        await flusher.drain()
        assert fake.topic_messages(TG_GROUP, None)[-1].text == "Done."
        assert flusher.stats.dropped == 0


# --- benchmark (run with -m bench) ----------------------------------------------------------------


def _bench(
    chat_ref: ChatRef, sessions: int, *, throttle_at: float | None = None
) -> dict[str, float]:
    """Agents streaming ~200 code points a second each for five minutes into one chat: an item
    completes (Flush) about once a second, a turn ends (EndStream) once a minute. Calls take
    0.15 s. Lag is from an Append to the end of the first call that shows its text."""
    minutes = 5
    chat = RecordingChat(TELEGRAM_LIMITS, latency=0.15)
    owners: dict[str, str] = {}
    appended: dict[str, list[tuple[float, int]]] = {}  # stream → (time, non-space code points)
    rng = random.Random(7)
    figures: dict[str, float] = {}

    async def agent(flusher: Flusher, stream: str) -> None:
        count = 0
        log = appended.setdefault(stream, [])
        turn_ends = 60.0
        while trio.current_time() < minutes * 60:
            text = " ".join("word" * rng.randint(1, 2) for _ in range(rng.randint(1, 3))) + " "
            if rng.random() < 0.1:
                text += "\n"
            count += len("".join(text.split()))
            await flusher.send(Append(stream, text))
            log.append((trio.current_time(), count))
            if rng.random() < 0.05:
                await flusher.send(Flush(stream))
            if trio.current_time() >= turn_ends:
                await flusher.send(EndStream(stream))
                turn_ends += 60
            await trio.sleep(0.05)
        await flusher.send(EndStream(stream))

    async def throttle() -> None:
        assert throttle_at is not None
        await trio.sleep(throttle_at)
        chat.fail_next(RateLimited(30))

    async def main() -> None:
        notify, announced = trio.open_memory_channel[StreamStarted](1000)
        async with trio.open_nursery() as nursery:
            flusher = await start(nursery, chat, chat_ref, limits=TELEGRAM_LIMITS, notify=notify)
            if throttle_at is not None:
                nursery.start_soon(throttle)
            async with trio.open_nursery() as agents:
                for n in range(sessions):
                    agents.start_soon(agent, flusher, f"s{n}")
            await flusher.drain()
            figures["done at"] = trio.current_time()
            figures["peak pending"] = flusher.stats.peak_pending
            figures["skipped"] = flusher.stats.skipped_identical
            nursery.cancel_scope.cancel()
        while True:
            try:
                started = announced.receive_nowait()
            except trio.WouldBlock:
                break
            owners[started.message_id] = started.stream

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert chat.not_modified == chat.refused == 0
    shown: dict[str, list[tuple[float, int]]] = {stream: [] for stream in appended}
    done: dict[str, int] = dict.fromkeys(appended, 0)
    current: dict[str, str] = {}
    last_text: dict[str, str] = {}
    for index, call in enumerate(chat.calls):
        if index in chat.failed:
            continue
        stream = owners[call.message_id]
        if call.kind == "send" and stream in current:
            done[stream] += len("".join(last_text[current[stream]].split()))
        current[stream] = call.message_id
        last_text[call.message_id] = call.text
        visible = done[stream] + len("".join(call.text.split()))
        shown[stream].append((call.at + chat.latency, visible))
    lags = sorted(
        next(t for t, seen in shown[stream] if seen >= count) - at
        for stream, entries in appended.items()
        for at, count in entries
    )
    return {
        "deltas": sum(len(v) for v in appended.values()),
        "calls": len(chat.calls),
        "per min": len(chat.calls) / (figures["done at"] / 60),
        "messages": len(chat.messages),
        **figures,
        "lag p50": statistics.median(lags),
        "lag p95": lags[int(len(lags) * 0.95)],
        "lag max": lags[-1],
    }


@pytest.mark.bench
def test_bench_agents_streaming_into_telegram_chats() -> None:
    rows = {
        "private, 1 session": _bench(CHAT, 1),
        "private, 1 session, a 429 of 30 s": _bench(CHAT, 1, throttle_at=60),
        "private, 3 sessions": _bench(CHAT, 3),
        "group, 1 session": _bench(GROUP, 1),
        "group, 3 sessions": _bench(GROUP, 3),
    }
    print()
    for name, figures in rows.items():
        print(f"{name:34s} " + "  ".join(f"{k} {v:g}" for k, v in figures.items()))


async def test_telegram_three_busy_topics_of_one_group_share_its_pace_with_no_429(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    """Telegram's 20 a minute holds for the whole group: the topics' flushers draw from one
    lane of the budget, so together they stay within it, and every word arrives once."""
    async with telegram(nursery) as (fake, client, _):
        fake.add_chat(TG_GROUP, "supergroup", is_forum=True)
        topics = [fake.create_topic(TG_GROUP, name) for name in ("ui", "api", "db")]
        budget = Budget(
            {lane.name: Lane(lane.per_second, lane.burst) for lane in client.rate_lanes.values()}
        )
        await nursery.start(budget.run)
        flushers = [
            await start(
                nursery,
                client,
                ChatRef("telegram", str(TG_GROUP), str(topic)),
                budget=budget.address(),
            )
            for topic in topics
        ]
        for n in range(300):
            for index, flusher in enumerate(flushers):
                await flusher.send(Append("s1", f"{index}:{n} "))
            await trio.sleep(0.1)
        for flusher in flushers:
            await flusher.send(EndStream("s1"))
        with trio.fail_after(600):
            for flusher in flushers:
                await flusher.drain()
        assert errors(fake) == []  # no 429 from the group's bucket
        for index, topic in enumerate(topics):
            texts = [m.text for m in fake.topic_messages(TG_GROUP, topic) if m.from_bot]
            expected = "".join(f"{index}:{n} " for n in range(300))
            assert arrived_in_order(expected, texts), texts
