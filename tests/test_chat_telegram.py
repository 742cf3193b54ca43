"""TelegramClient against the Telegram stand-in (tests/fakes/telegram.py), over real HTTP.

Time: the fake measures everything with ``trio.current_time()``, so tests that wait (long polls,
retry_after, backoff) use the ``autojump_clock`` fixture and take no real time; every wait is
bounded by ``trio.fail_after``. Request times are read from an httpx event hook, so "the next poll
came no earlier than retry_after" is measured where the client sends, not guessed.

A few update shapes the fake cannot inject through its test API (forum topics, photos, malformed
updates) are queued with its internal ``_enqueue``, which is exactly what ``inject_message`` does
after building the update.
"""

from __future__ import annotations

import itertools
import logging
import random
import traceback
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anycode_actors.chat import markdown
from anycode_actors.chat.auth import NOT_AUTHORIZED
from anycode_actors.chat.base import (
    Button,
    ButtonPress,
    ChatError,
    ChatEvent,
    ChatRef,
    ChatUnavailable,
    Command,
    FileTooLarge,
    Message,
    MessageGone,
    NotModified,
    RateLimited,
    ThreadGone,
    User,
)
from anycode_actors.chat.markdown import Rich
from anycode_actors.chat.telegram import (
    DEFAULT_COMMANDS,
    ONLY_TEXT,
    POLL_READ_MARGIN,
    PRESS_ANSWER_DEADLINE,
    REDACTED_TOKEN,
    RETRY_AFTER_MARGIN,
    TELEGRAM_LIMITS,
    TelegramClient,
)
from anycode_actors.config import TelegramConfig
from supervisors import Backoff
from tests.fakes.telegram import (
    MESSAGE_NOT_MODIFIED,
    FakeTelegram,
    FloodLimits,
    parse_markdown_v2,
    utf16_len,
)
from tests.fakes.telegram import User as TgUser

ADA = TgUser(111, "Ada", username="ada")
BOB = TgUser(222, "Bob")
GROUP = -1001234567890
ADA_CHAT = ChatRef("telegram", "111")
GROUP_CHAT = ChatRef("telegram", str(GROUP))
APPROVE = [[Button("Approve", "approve:1"), Button("Deny", "deny:1")]]
# No jitter, short delays: deterministic timings unless a test brings its own Backoff.
STEADY = Backoff(initial=2.0, factor=2.0, cap=16.0, jitter=0.0)


LOOSE = FloodLimits(private_burst=1000, private_rate=1000, global_burst=1000, global_rate=1000)


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeTelegram:
    telegram = FakeTelegram()
    await telegram.start(nursery)
    return telegram


@pytest.fixture
async def roomy(nursery: trio.Nursery) -> FakeTelegram:
    """A stand-in without flood control, for tests that send more than a few messages."""
    telegram = FakeTelegram(flood_limits=LOOSE)
    await telegram.start(nursery)
    return telegram


def make_config(
    fake: FakeTelegram, *, allowed: tuple[str, ...] = (), base_url: str | None = None
) -> TelegramConfig:
    return TelegramConfig.model_validate(
        {
            "bot_token": fake.token,
            "api_base_url": base_url or fake.base_url,
            "allowed_users": list(allowed),
            # Most tests are about the protocol, not access: an empty list lets everyone in.
            "allow_everyone": not allowed,
            "poll_timeout": 30,
        }
    )


@asynccontextmanager
async def connected(
    fake: FakeTelegram,
    *,
    allowed: tuple[str, ...] = (),
    backoff: Backoff = STEADY,
    http: httpx.AsyncClient | None = None,
    buffer: int = 16,
) -> AsyncIterator[tuple[TelegramClient, trio.MemoryReceiveChannel[ChatEvent]]]:
    """A client whose `run` is ready (getMe and setMyCommands done), and its events."""
    async with TelegramClient(
        make_config(fake, allowed=allowed), http=http, backoff=backoff
    ) as client:
        send, receive = trio.open_memory_channel[ChatEvent](buffer)
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run, send)
            try:
                yield client, receive
            finally:
                nursery.cancel_scope.cancel()


class Requests:
    """Every request an httpx client sends, when, and how it was answered (event hooks)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, float, httpx.Request]] = []
        self.status: dict[int, int] = {}  # id(request) → HTTP status

    async def on_request(self, request: httpx.Request) -> None:
        self.sent.append((request.url.path.rsplit("/", 1)[-1], trio.current_time(), request))

    async def on_response(self, response: httpx.Response) -> None:
        self.status[id(response.request)] = response.status_code

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        hooks: dict[str, list[Callable[..., Any]]] = {
            "request": [self.on_request],
            "response": [self.on_response],
        }
        return httpx.AsyncClient(event_hooks=hooks, **kwargs)

    def times(self, method: str) -> list[float]:
        return [time for name, time, _ in self.sent if name == method]

    def gaps(self, method: str) -> list[float]:
        return [later - earlier for earlier, later in itertools.pairwise(self.times(method))]

    def waits_after_failures(self, method: str) -> list[float]:
        """For each failed call of `method` (or one that never got an answer), the time until
        the next call of `method`."""
        calls = [(time, request) for name, time, request in self.sent if name == method]
        return [
            later - earlier
            for (earlier, request), (later, _) in itertools.pairwise(calls)
            if self.status.get(id(request), 0) != 200
        ]


class FailingTransport(httpx.AsyncBaseTransport):
    """Real HTTP, except that the first `failures` calls of `method` fail to connect, with an
    error text that includes the URL, as some httpx errors do."""

    def __init__(self, method: str, failures: int) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._method = method
        self.failures = failures

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.failures and request.url.path.endswith("/" + self._method):
            self.failures -= 1
            raise httpx.ConnectError(f"connection refused by {request.url}", request=request)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def receive(events: trio.MemoryReceiveChannel[ChatEvent], seconds: float = 60) -> ChatEvent:
    with trio.fail_after(seconds):
        return await events.receive()


def nothing_pending(events: trio.MemoryReceiveChannel[ChatEvent]) -> bool:
    try:
        events.receive_nowait()
    except trio.WouldBlock:
        return True
    return False


async def wait_for(fake: FakeTelegram, predicate: Callable[[], Any], seconds: float = 60) -> Any:
    with trio.fail_after(seconds):
        return await fake.wait_for(predicate)


def group_update(fake: FakeTelegram, message: dict[str, Any]) -> None:
    """Queue a `message` update the fake's test API cannot build (see the module docstring)."""
    fake._enqueue("message", {"message": message})


# ---- connecting ----------------------------------------------------------------------------------


async def test_run_asks_who_the_bot_is_and_registers_the_commands_before_ready(
    autojump_clock: trio.abc.Clock, fake: FakeTelegram
) -> None:
    async with connected(fake) as (client, _):
        assert client.bot_username == "anycode_test_bot"
        assert [call.method for call in fake.calls[:2]] == ["getme", "setmycommands"]
        assert fake.commands == {
            ("default", ""): [{"command": c, "description": d} for c, d in DEFAULT_COMMANDS]
        }
        assert [c for c, _ in DEFAULT_COMMANDS] == [
            "task",
            "status",
            "cancel",
            "diff",
            "pr",
            "agents",
            "help",
        ]
        with trio.fail_after(60):
            await fake.wait_until_polling()
    assert client.platform == "telegram"
    assert client.limits is TELEGRAM_LIMITS


async def test_the_poll_asks_only_for_messages_and_presses_with_a_read_timeout_above_it(
    autojump_clock: trio.abc.Clock, fake: FakeTelegram
) -> None:
    requests = Requests()
    async with (
        requests.client() as http,
        connected(fake, http=http),
    ):
        with trio.fail_after(60):
            await fake.wait_until_polling()
    [poll] = [request for name, _, request in requests.sent if name == "getUpdates"]
    body = httpx.Response(200, content=poll.content).json()
    assert body == {"timeout": 30, "allowed_updates": ["message", "callback_query"]}
    assert poll.extensions["timeout"]["read"] == 30 + POLL_READ_MARGIN


async def test_a_poll_timeout_above_50_is_clamped(fake: FakeTelegram) -> None:
    config = make_config(fake)
    unchecked = TelegramConfig.model_construct(**{**dict(config), "poll_timeout": 90})
    requests = Requests()
    async with (
        requests.client() as http,
        TelegramClient(unchecked, http=http) as client,
    ):
        send, _ = trio.open_memory_channel[ChatEvent](1)
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run, send)
            with trio.fail_after(10):
                await fake.wait_until_polling()
            nursery.cancel_scope.cancel()
    [poll] = [request for name, _, request in requests.sent if name == "getUpdates"]
    assert httpx.Response(200, content=poll.content).json()["timeout"] == 50
    assert poll.extensions["timeout"]["read"] == 50 + POLL_READ_MARGIN


async def test_a_rejected_token_is_fatal_with_a_clear_message(fake: FakeTelegram) -> None:
    fake.revoke_token()
    async with TelegramClient(make_config(fake)) as client:
        send, _ = trio.open_memory_channel[ChatEvent](1)
        with trio.fail_after(10), pytest.raises(ChatError) as raised:
            await client.run(send)
    message = str(raised.value)
    assert message.startswith("telegram.bot_token was rejected (401 Unauthorized)")
    assert "@BotFather" in message
    assert fake.token not in message
    assert fake.token.partition(":")[2] not in message
    assert [call.method for call in fake.calls] == ["getme"]  # no retries


async def test_a_token_revoked_while_polling_ends_run(
    autojump_clock: trio.abc.Clock, fake: FakeTelegram
) -> None:
    fake.fail_next("getUpdates", error_code=401)
    async with TelegramClient(make_config(fake), backoff=STEADY) as client:
        send, _ = trio.open_memory_channel[ChatEvent](1)
        with trio.fail_after(60), pytest.raises(ChatError, match="401 Unauthorized"):
            await client.run(send)
    assert len(fake.calls_to("getUpdates")) == 1


# ---- inbound -------------------------------------------------------------------------------------


async def test_long_poll_delivers_a_message_and_a_command(
    autojump_clock: trio.abc.Clock, fake: FakeTelegram
) -> None:
    async with connected(fake) as (_, events):
        with trio.fail_after(60):
            await fake.wait_until_polling()
        await trio.sleep(12)  # held for a while: delivery does not depend on a fresh poll
        fake.inject_message(ADA.id, ADA, "hello there")
        fake.inject_message(ADA.id, ADA, "/task fix the build\nand add a test")
        first = await receive(events)
        second = await receive(events)
    assert first == Message(ADA_CHAT, User("111", "@ada"), "hello there", message_id="1")
    assert second == Command(
        ADA_CHAT, User("111", "@ada"), "task", "fix the build\nand add a test", message_id="2"
    )


async def test_a_senders_full_name_is_their_first_and_last_name(
    autojump_clock: trio.abc.Clock, fake: FakeTelegram
) -> None:
    grace = TgUser(333, "Grace", username="grace", last_name="Hopper")
    async with connected(fake) as (_, events):
        fake.inject_message(grace.id, grace, "/task fix it")
        fake.inject_message(BOB.id, BOB, "/task fix it")
        by_grace = await receive(events)
        by_bob = await receive(events)
    assert isinstance(by_grace, Command) and isinstance(by_bob, Command)
    assert (by_grace.user.name, by_grace.user.full_name) == ("@grace", "Grace Hopper")
    assert by_grace.user.author_name == "Grace Hopper"
    # No last name, no username: the first name is both.
    assert (by_bob.user.name, by_bob.user.author_name) == ("Bob", "Bob")


async def test_each_update_is_delivered_once_across_polls(
    autojump_clock: trio.abc.Clock, fake: FakeTelegram
) -> None:
    async with connected(fake) as (_, events):
        fake.inject_message(ADA.id, ADA, "one")
        assert isinstance(first := await receive(events), Message) and first.text == "one"
        fake.inject_message(ADA.id, ADA, "two")
        assert isinstance(second := await receive(events), Message) and second.text == "two"
        await trio.sleep(200)  # several more long polls
        assert nothing_pending(events)
        assert fake.pending_updates == []
    offsets = [call.params.get("offset") for call in fake.calls_to("getUpdates")]
    assert offsets[0] is None
    assert len(set(offsets[1:])) == 2  # one offset per confirmed update, then it stays


async def test_commands_for_this_bot_are_parsed_and_for_other_bots_ignored(
    autojump_clock: trio.abc.Clock, fake: FakeTelegram
) -> None:
    async with connected(fake) as (_, events):
        for text in (
            "/task@anycode_test_bot fix",
            "/Status@AnyCode_Test_Bot",
            "/task@otherbot fix",
            "/cancel@otherbot",
            "done",
        ):
            fake.inject_message(GROUP, ADA, text, chat_type="supergroup")
        received = [await receive(events) for _ in range(3)]
        await trio.sleep(100)
        assert nothing_pending(events)
    assert received == [
        Command(GROUP_CHAT, User("111", "@ada"), "task", "fix", message_id="1"),
        Command(GROUP_CHAT, User("111", "@ada"), "status", "", message_id="2"),
        Message(GROUP_CHAT, User("111", "@ada"), "done", message_id="5"),
    ]


async def test_commands_are_cut_by_their_utf16_entity_and_only_at_the_start(
    autojump_clock: trio.abc.Clock, fake: FakeTelegram
) -> None:
    async with connected(fake) as (_, events):
        fake.inject_message(ADA.id, ADA, "/task@anycode_test_bot 🐛🚀 fix ünïcode 👩‍💻")
        fake.inject_message(ADA.id, ADA, "🚀 /task fix it")
        fake.inject_message(ADA.id, ADA, "/tmp/x is full")
        command = await receive(events)
        later = [await receive(events) for _ in range(2)]
    assert isinstance(command, Command)
    assert (command.name, command.args) == ("task", "🐛🚀 fix ünïcode 👩‍💻")
    # A command after an emoji is not at offset 0, and a path is no command.
    assert [(type(e), getattr(e, "text", None)) for e in later] == [
        (Message, "🚀 /task fix it"),
        (Message, "/tmp/x is full"),
    ]


async def test_a_reply_names_the_message_it_replies_to(
    autojump_clock: trio.abc.Clock, fake: FakeTelegram
) -> None:
    async with connected(fake) as (client, events):
        fake.add_chat(ADA.id, user=ADA)
        question = await client.send(ADA_CHAT, "Which branch?")
        fake.inject_message(ADA.id, ADA, "main", reply_to=int(question))
        answer = await receive(events)
    assert isinstance(answer, Message)
    assert (answer.text, answer.reply_to) == ("main", question)


async def test_forum_topics_are_threads_but_replies_in_plain_groups_are_not(
    autojump_clock: trio.abc.Clock, fake: FakeTelegram
) -> None:
    fake.add_chat(GROUP, "supergroup")
    ada = ADA.to_api()
    chat = {"id": GROUP, "type": "supergroup", "title": "Ops", "is_forum": True}
    topic_root = {"message_id": 7, "date": 0, "chat": chat, "from": ada}
    async with connected(fake) as (client, events):
        # In a forum topic every message "replies" to the topic's first message.
        group_update(
            fake,
            {
                "message_id": 9,
                "date": 0,
                "chat": chat,
                "from": ada,
                "text": "in the topic",
                "message_thread_id": 7,
                "is_topic_message": True,
                "reply_to_message": topic_root,
            },
        )
        # Outside forums, a reply also carries message_thread_id, but it is the same chat.
        group_update(
            fake,
            {
                "message_id": 10,
                "date": 0,
                "chat": {**chat, "is_forum": False},
                "from": ada,
                "text": "a reply",
                "message_thread_id": 7,
                "reply_to_message": topic_root,
            },
        )
        in_topic = await receive(events)
        reply = await receive(events)
        assert isinstance(in_topic, Message) and isinstance(reply, Message)
        await client.send(in_topic.chat, "answer in the topic")
    assert in_topic.chat == ChatRef("telegram", str(GROUP), thread="7")
    assert in_topic.reply_to is None
    assert reply.chat == GROUP_CHAT
    assert reply.reply_to == "7"
    assert fake.calls_to("sendMessage")[-1].params["message_thread_id"] == "7"


async def test_stickers_and_other_non_file_messages_are_not_forwarded(
    autojump_clock: trio.abc.Clock, fake: FakeTelegram
) -> None:
    fake.add_chat(ADA.id, user=ADA)
    fake.add_chat(GROUP, "supergroup")
    sticker = {"file_id": "CAAD", "file_unique_id": "u", "width": 512, "height": 512}
    private = {"id": ADA.id, "type": "private", "first_name": "Ada"}
    group = {"id": GROUP, "type": "supergroup", "title": "Ops"}
    async with connected(fake) as (_, events):
        group_update(
            fake,
            {
                "message_id": 50,
                "date": 0,
                "chat": private,
                "from": ADA.to_api(),
                "sticker": sticker,
            },
        )
        group_update(
            fake,
            {"message_id": 1, "date": 0, "chat": group, "from": ADA.to_api(), "sticker": sticker},
        )
        # A service message (someone joined) is no content at all.
        group_update(
            fake,
            {
                "message_id": 2,
                "date": 0,
                "chat": group,
                "from": BOB.to_api(),
                "new_chat_members": [BOB.to_api()],
            },
        )
        fake.inject_message(ADA.id, ADA, "text again")
        after = await receive(events)
        await wait_for(fake, lambda: fake.bot_messages(ADA.id))
    assert isinstance(after, Message) and after.text == "text again"
    [reply] = fake.bot_messages(ADA.id)
    assert (reply.text, reply.reply_to) == (ONLY_TEXT, None)  # the sticker is not in the fake
    assert fake.calls_to("sendMessage")[0].params["reply_parameters"] == (
        '{"message_id":50,"allow_sending_without_reply":true}'
    )
    assert fake.bot_messages(GROUP) == []


async def test_an_unreadable_update_is_skipped_and_polling_goes_on(
    autojump_clock: trio.abc.Clock, fake: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    async with connected(fake) as (_, events):
        group_update(fake, {"message_id": 1, "from": ADA.to_api(), "text": "no chat"})
        fake.inject_message(ADA.id, ADA, "fine")
        event = await receive(events)
    assert isinstance(event, Message) and event.text == "fine"
    assert "could not be read (KeyError" in caplog.text


async def test_a_press_is_forwarded_with_the_presser_and_answer_press_answers_it(
    autojump_clock: trio.abc.Clock, fake: FakeTelegram
) -> None:
    fake.add_chat(GROUP, "supergroup")
    async with connected(fake) as (client, events):
        question = await client.send(GROUP_CHAT, "Run rm -rf build?", buttons=APPROVE)
        query_id = fake.press(GROUP, BOB, int(question), "Deny")
        press = await receive(events)
        assert press == ButtonPress(GROUP_CHAT, User("222", "Bob"), question, "deny:1", query_id)
        assert isinstance(press, ButtonPress)
        await client.answer_press(press, "Denied")
        await client.answer_press(press, "again")  # too old now: logged, not raised
        await trio.sleep(PRESS_ANSWER_DEADLINE * 2)
    [answer] = fake.callback_answers
    assert (answer.query_id, answer.text, answer.show_alert) == (query_id, "Denied", False)


async def test_a_long_answer_is_shortened_to_200_characters(
    autojump_clock: trio.abc.Clock, fake: FakeTelegram
) -> None:
    fake.add_chat(ADA.id, user=ADA)
    async with connected(fake) as (client, events):
        question = await client.send(ADA_CHAT, "?", buttons=APPROVE)
        fake.press(ADA.id, ADA, int(question), "Approve")
        press = await receive(events)
        assert isinstance(press, ButtonPress)
        await client.answer_press(press, "x" * 300)
    [answer] = fake.callback_answers
    assert answer.text == "x" * 199 + "…"


async def test_a_press_nobody_answers_is_answered_by_the_client(
    autojump_clock: trio.abc.Clock, fake: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    fake.add_chat(ADA.id, user=ADA)
    async with connected(fake) as (client, events):
        question = await client.send(ADA_CHAT, "Approve?", buttons=APPROVE)
        query_id = fake.press(ADA.id, ADA, int(question), "Approve")
        pressed_at = trio.current_time()
        await receive(events)  # ... and never answered
        with trio.fail_after(60):
            answer = await fake.wait_for_callback_answer(query_id)
    assert trio.current_time() - pressed_at == pytest.approx(PRESS_ANSWER_DEADLINE, abs=0.1)
    assert answer.text == ""
    assert "was not answered within" in caplog.text


async def test_people_not_allowed_get_the_reply_and_reach_nobody(
    autojump_clock: trio.abc.Clock, fake: FakeTelegram
) -> None:
    fake.add_chat(GROUP, "supergroup")
    async with connected(fake, allowed=("111",)) as (client, events):
        question = await client.send(GROUP_CHAT, "Approve?", buttons=APPROVE)
        hello = fake.inject_message(BOB.id, BOB, "hello")
        task = fake.inject_message(BOB.id, BOB, "/task rm -rf /")
        query_id = fake.press(GROUP, BOB, int(question), "Approve")
        fake.inject_message(ADA.id, ADA, "I am allowed")
        first = await receive(events)
        answer = await wait_for(fake, lambda: fake.callback_answers)
        replies = await wait_for(fake, lambda: len(fake.bot_messages(BOB.id)) == 2 or None)
        await trio.sleep(60)
        assert nothing_pending(events)
    assert isinstance(first, Message) and first.text == "I am allowed"
    assert replies
    assert [(m.text, m.reply_to) for m in fake.bot_messages(BOB.id)] == [
        (NOT_AUTHORIZED, hello.message_id),
        (NOT_AUTHORIZED, task.message_id),
    ]
    assert NOT_AUTHORIZED == "You are not authorized to use this bot."
    [answer] = fake.callback_answers
    assert (answer.query_id, answer.text, answer.show_alert) == (query_id, NOT_AUTHORIZED, True)


async def test_everyone_is_allowed_with_allow_everyone(
    autojump_clock: trio.abc.Clock, fake: FakeTelegram
) -> None:
    async with connected(fake) as (_, events):
        fake.inject_message(BOB.id, BOB, "/help")
        event = await receive(events)
    assert event == Command(ChatRef("telegram", "222"), User("222", "Bob"), "help", "", "1")


async def test_updates_handed_on_are_confirmed_when_the_client_stops(
    autojump_clock: trio.abc.Clock, fake: FakeTelegram
) -> None:
    fake.add_chat(ADA.id, user=ADA)
    for text in ("first", "second"):
        fake.inject_message(ADA.id, ADA, text)
    async with TelegramClient(make_config(fake), backoff=STEADY) as client:
        send, events = trio.open_memory_channel[ChatEvent](1)
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run, send)
            # "first" fills the channel; the client waits to hand on "second".
            with trio.fail_after(60):
                while send.statistics().tasks_waiting_send == 0:  # noqa: ASYNC110
                    await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
        first = events.receive_nowait()
    assert isinstance(first, Message) and first.text == "first"
    # Only "second" is left on the server: the next start gets it, and only it.
    assert [u["message"]["text"] for u in fake.pending_updates] == ["second"]
    async with connected(fake) as (_, events):
        again = await receive(events)
        await trio.sleep(60)
        assert nothing_pending(events)
    assert isinstance(again, Message) and again.text == "second"


# ---- polling through failures --------------------------------------------------------------------


async def test_429_on_get_updates_waits_retry_after_before_the_next_poll(
    autojump_clock: trio.abc.Clock, fake: FakeTelegram
) -> None:
    fake.fail_next("getUpdates", retry_after=20)
    requests = Requests()
    async with (
        requests.client() as http,
        connected(fake, http=http) as (_, events),
    ):
        fake.inject_message(ADA.id, ADA, "after the wait")
        event = await receive(events)
    assert isinstance(event, Message) and event.text == "after the wait"
    gap = requests.gaps("getUpdates")[0]
    assert gap >= 20
    assert gap == pytest.approx(20 + RETRY_AFTER_MARGIN, abs=0.05)


async def test_a_conflict_is_logged_and_backed_off(
    autojump_clock: trio.abc.Clock, fake: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    fake.fail_next("getUpdates", error_code=409, times=2)
    requests = Requests()
    async with (
        requests.client() as http,
        connected(fake, http=http) as (_, events),
    ):
        fake.inject_message(ADA.id, ADA, "still here")
        event = await receive(events)
    assert isinstance(event, Message) and event.text == "still here"
    assert requests.gaps("getUpdates")[:2] == pytest.approx([2.0, 4.0], abs=0.05)
    conflicts = [r for r in caplog.records if "another instance is polling" in r.getMessage()]
    assert len(conflicts) == 2
    assert all(r.levelno == logging.WARNING for r in conflicts)
    assert "terminated by other getUpdates request" in conflicts[0].getMessage()


async def test_server_errors_back_off_with_jitter_then_recover_and_reset(
    autojump_clock: trio.abc.Clock, fake: FakeTelegram
) -> None:
    backoff = Backoff(initial=1.0, factor=2.0, cap=30.0, jitter=0.5, rng=random.Random(7))
    expected = Backoff(initial=1.0, factor=2.0, cap=30.0, jitter=0.5, rng=random.Random(7))
    fake.fail_next("getUpdates", error_code=502, times=3)
    requests = Requests()
    async with (
        requests.client() as http,
        connected(fake, http=http, backoff=backoff) as (_, events),
    ):
        fake.inject_message(ADA.id, ADA, "recovered")
        assert isinstance(event := await receive(events), Message) and event.text == "recovered"
        fake.fail_next("getUpdates", error_code=500)
        fake.inject_message(ADA.id, ADA, "again")
        assert isinstance(event := await receive(events), Message) and event.text == "again"
    delays = [expected.delay(0), expected.delay(1), expected.delay(2), expected.delay(0)]
    assert len(set(delays)) == 4  # jitter made every wait different
    # After a success the series starts again from the first delay.
    assert requests.waits_after_failures("getUpdates") == pytest.approx(delays, abs=0.01)


async def test_network_errors_back_off_without_leaking_the_url(
    autojump_clock: trio.abc.Clock, fake: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    transport = FailingTransport("getUpdates", failures=2)
    requests = Requests()
    async with (
        requests.client(transport=transport) as http,
        connected(fake, http=http) as (_, events),
    ):
        fake.inject_message(ADA.id, ADA, "through")
        event = await receive(events)
    assert isinstance(event, Message) and event.text == "through"
    assert requests.gaps("getUpdates")[:2] == pytest.approx([2.0, 4.0], abs=0.05)
    assert "getUpdates failed (could not reach Telegram for getUpdates: ConnectError" in caplog.text
    assert fake.token not in caplog.text
    assert REDACTED_TOKEN in caplog.text


async def test_startup_waits_for_telegram_to_come_back(
    autojump_clock: trio.abc.Clock, fake: FakeTelegram
) -> None:
    fake.fail_next("getMe", error_code=502, times=2)
    fake.fail_next("setMyCommands", retry_after=5)
    requests = Requests()
    async with (
        requests.client() as http,
        connected(fake, http=http) as (client, _),
    ):
        assert client.bot_username == "anycode_test_bot"
    assert requests.gaps("getMe") == pytest.approx([2.0, 4.0], abs=0.05)
    assert requests.gaps("setMyCommands") == pytest.approx([5 + RETRY_AFTER_MARGIN], abs=0.05)
    assert fake.commands


# ---- outbound ------------------------------------------------------------------------------------


async def test_send_with_buttons_and_reply_returns_the_message_id(fake: FakeTelegram) -> None:
    asked = fake.inject_message(ADA.id, ADA, "/task fix it")
    async with TelegramClient(make_config(fake)) as client:
        sent = await client.send(
            ADA_CHAT, "Approve the plan?", buttons=APPROVE, reply_to=str(asked.message_id)
        )
    view = fake.message(ADA.id, int(sent))
    assert sent == "2"
    assert view.text == "Approve the plan?"
    assert view.button_data() == ["approve:1", "deny:1"]
    assert [b.text for row in view.buttons for b in row] == ["Approve", "Deny"]
    assert view.reply_to == asked.message_id
    assert "parse_mode" not in fake.calls_to("sendMessage")[0].params  # plain by default


async def test_plain_text_is_never_mangled(fake: FakeTelegram) -> None:
    fake.add_chat(ADA.id, user=ADA)
    text = "Version 1.0 *not bold* _x_ [a](b) `c` \\ > # + - = | { } . !"
    async with TelegramClient(make_config(fake)) as client:
        sent = await client.send(ADA_CHAT, text)
    assert fake.message(ADA.id, int(sent)).text == text


async def test_edit_replaces_the_text_and_without_buttons_removes_them(
    fake: FakeTelegram,
) -> None:
    fake.add_chat(ADA.id, user=ADA)
    async with TelegramClient(make_config(fake)) as client:
        sent = await client.send(ADA_CHAT, "Approve?", buttons=APPROVE)
        await client.edit(ADA_CHAT, sent, "Approve? (still waiting)", buttons=APPROVE)
        assert fake.message(ADA.id, int(sent)).button_data() == ["approve:1", "deny:1"]
        await client.edit(ADA_CHAT, sent, "Approved by @ada")
    view = fake.message(ADA.id, int(sent))
    assert (view.text, view.buttons, view.edit_count) == ("Approved by @ada", (), 2)


async def test_an_identical_edit_is_skipped_without_calling_telegram(
    roomy: FakeTelegram,
) -> None:
    roomy.add_chat(ADA.id, user=ADA)
    async with TelegramClient(make_config(roomy)) as client:
        sent = await client.send(ADA_CHAT, "step 1", buttons=APPROVE)
        await client.edit(ADA_CHAT, sent, "step 1", buttons=APPROVE)  # as sent
        assert roomy.calls_to("editMessageText") == []
        await client.edit(ADA_CHAT, sent, "step 1")  # buttons go: a change
        await client.edit(ADA_CHAT, sent, "step 1")
        await client.edit(ADA_CHAT, sent, "step 2")
        await client.edit(ADA_CHAT, sent, "step 2")
        await client.edit(ADA_CHAT, sent, markdown.bold("step") + " 2")  # formatted: a change
    assert len(roomy.calls_to("editMessageText")) == 3
    assert all(call.status == 200 for call in roomy.calls)


async def test_not_modified_from_telegram_counts_as_done(fake: FakeTelegram) -> None:
    fake.add_chat(ADA.id, user=ADA)
    async with TelegramClient(make_config(fake)) as first:
        sent = await first.send(ADA_CHAT, "same")
    # A new client (a restarted daemon) does not know what the message shows.
    async with TelegramClient(make_config(fake)) as second:
        await second.edit(ADA_CHAT, sent, "same")
        await second.edit(ADA_CHAT, sent, "same")
    [call] = fake.calls_to("editMessageText")
    assert call.description is not None and "message is not modified" in call.description


async def test_429_on_send_and_edit_raises_rate_limited_and_is_not_retried(
    fake: FakeTelegram,
) -> None:
    fake.add_chat(ADA.id, user=ADA)
    async with TelegramClient(make_config(fake)) as client:
        sent = await client.send(ADA_CHAT, "first")
        fake.fail_next("sendMessage", retry_after=7)
        with pytest.raises(RateLimited) as limited:
            await client.send(ADA_CHAT, "second")
        assert limited.value.retry_after == 7
        assert limited.value.code == "Too Many Requests: retry after 7"
        fake.fail_next("editMessageText", retry_after=35)
        with pytest.raises(RateLimited) as limited:
            await client.edit(ADA_CHAT, sent, "first, edited")
        assert limited.value.retry_after == 35
        # The failed edit is not remembered as shown: the same edit is tried again.
        await client.edit(ADA_CHAT, sent, "first, edited")
    assert len(fake.calls_to("sendMessage")) == 2
    assert len(fake.calls_to("editMessageText")) == 2
    assert [m.text for m in fake.bot_messages(ADA.id)] == ["first, edited"]


async def test_the_fakes_own_flood_control_surfaces_as_rate_limited(fake: FakeTelegram) -> None:
    fake.add_chat(ADA.id, user=ADA)
    async with TelegramClient(make_config(fake)) as client:
        with pytest.raises(RateLimited) as limited:
            for i in range(100):
                await client.send(ADA_CHAT, f"m{i}")
    assert limited.value.retry_after >= 1
    assert limited.value.code.startswith("Too Many Requests: retry after ")
    assert len(fake.bot_messages(ADA.id)) == fake.flood_limits.private_burst
    assert TELEGRAM_LIMITS.burst <= fake.flood_limits.private_burst


async def test_refusals_raise_chat_error_with_telegrams_description(fake: FakeTelegram) -> None:
    fake.add_chat(ADA.id, user=ADA)
    async with TelegramClient(make_config(fake)) as client:
        with pytest.raises(ChatError) as unknown:
            await client.send(ChatRef("telegram", "999"), "hi")
        assert unknown.value.code == "Bad Request: chat not found"
        assert str(unknown.value) == "Telegram refused sendMessage: Bad Request: chat not found"
        fake.fail_next("sendMessage", error_code=502)
        with pytest.raises(ChatUnavailable, match="502 Bad Gateway"):
            await client.send(ADA_CHAT, "hi")
        fake.block(ADA.id)
        with pytest.raises(ChatError) as blocked:
            await client.send(ADA_CHAT, "hi")
        assert blocked.value.code == "Forbidden: bot was blocked by the user"


async def test_the_limits_are_telegrams(autojump_clock: trio.abc.Clock, fake: FakeTelegram) -> None:
    fake.add_chat(ADA.id, user=ADA)
    limits = TELEGRAM_LIMITS
    longest = "🐛" * limits.max_text_length  # code points, not UTF-16 units or bytes
    widest = [[Button(str(i), "é" * (limits.max_button_data_bytes // 2))] for i in range(2)]
    row = [Button(str(i), f"b{i}") for i in range(limits.max_buttons_per_row)]
    async with TelegramClient(make_config(fake)) as client:
        await client.send(ADA_CHAT, longest, buttons=widest)
        await client.send(ADA_CHAT, "row", buttons=[row])
        await trio.sleep(5)
        with pytest.raises(ChatError, match="message is too long"):
            await client.send(ADA_CHAT, "x" * (limits.max_text_length + 1))
        with pytest.raises(ChatError, match="BUTTON_DATA_INVALID"):
            too_wide = [[Button("x", "x" * (limits.max_button_data_bytes + 1))]]
            await client.send(ADA_CHAT, "too wide", buttons=too_wide)
    assert (limits.max_text_length, limits.max_button_data_bytes) == (4096, 64)
    assert limits.group_per_minute == 20


async def test_upload_sends_a_multipart_document(fake: FakeTelegram) -> None:
    fake.add_chat(ADA.id, user=ADA)
    content = b"line 1\nline 2\n\x00\xff" * 1000
    async with TelegramClient(make_config(fake)) as client:
        sent = await client.upload(ADA_CHAT, "build.log", content, caption="Build log")
        long = await client.upload(ADA_CHAT, "diff.patch", b"+x\n", caption="c" * 2000)
    first, second = fake.documents(ADA.id)
    assert (first.message_id, first.filename, first.content, first.caption) == (
        int(sent),
        "build.log",
        content,
        "Build log",
    )
    assert second.message_id == int(long)
    assert second.caption == "c" * 1023 + "…"
    assert fake.calls_to("sendDocument")[0].files == {"document": "build.log"}


async def test_telegrams_answers_become_the_typed_chat_errors(fake: FakeTelegram) -> None:
    fake.add_chat(ADA.id, user=ADA)
    fake.add_chat(BOB.id, user=BOB)
    async with TelegramClient(make_config(fake)) as client:
        sent = await client.send(ADA_CHAT, "Looking at the logs")
        fake.delete(ADA.id, int(sent))
        # Someone deleted the message: "Bad Request: message to edit not found".
        with pytest.raises(MessageGone) as gone:
            await client.edit(ADA_CHAT, sent, "Looking at the logs, found it")
        assert gone.value.code == "Bad Request: message to edit not found"
        # A message that exists but is not the bot's: a plain refusal, not a gone message.
        theirs = fake.inject_message(ADA.id, ADA, "my own words")
        with pytest.raises(ChatError) as refused:
            await client.edit(ADA_CHAT, str(theirs.message_id), "the bot's words")
        assert refused.value.code == "Bad Request: message can't be edited"
        assert not isinstance(refused.value, MessageGone | NotModified | RateLimited)
        # "message is not modified" from sendMessage (no edit to count as done) shows the type.
        fake.fail_next("sendMessage", error_code=400, description=MESSAGE_NOT_MODIFIED)
        with pytest.raises(NotModified) as same:
            await client.send(ADA_CHAT, "hello")
        assert same.value.code == MESSAGE_NOT_MODIFIED
        # Blocked by the person: a refusal, whatever the method.
        fake.block(BOB.id)
        with pytest.raises(ChatError) as blocked:
            await client.send(ChatRef("telegram", str(BOB.id)), "hi")
        assert not isinstance(blocked.value, MessageGone | NotModified | RateLimited)
        assert blocked.value.code == "Forbidden: bot was blocked by the user"
        # 429 pauses this chat only.
        fake.fail_next("editMessageText", retry_after=9)
        kept = await client.send(ADA_CHAT, "kept")
        with pytest.raises(RateLimited) as limited:
            await client.edit(ADA_CHAT, kept, "changed")
        assert (limited.value.retry_after, limited.value.scope) == (9.0, "chat")


async def test_groups_are_the_chats_with_negative_ids(fake: FakeTelegram) -> None:
    async with TelegramClient(make_config(fake)) as client:
        assert client.is_group(GROUP_CHAT)
        assert client.is_group(ChatRef("telegram", str(GROUP), "7"))  # a forum topic
        assert client.is_group(ChatRef("telegram", "-4012345678"))  # a basic group
        assert not client.is_group(ADA_CHAT)


# ---- MarkdownV2 ----------------------------------------------------------------------------------

# Telegram deletes "\r" from every text, so no text here has one.
_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\r"), max_size=40)
_LANGUAGE = st.sampled_from(["", "python", "diff", "c++", "objective-c"])
_URLS = st.sampled_from(["https://example.com/pr/1", "https://example.com/a)b\\c?d=(e)"])
_PARTS = st.one_of(
    _TEXT.map(markdown.text),
    _TEXT.map(markdown.bold),
    _TEXT.map(markdown.code),
    st.builds(markdown.pre, _TEXT, _LANGUAGE),
    st.builds(markdown.link, _TEXT, _URLS),
    _TEXT,
)


@given(_TEXT)
@settings(max_examples=500)
def test_any_escaped_text_parses_back_to_itself(text: str) -> None:
    assert parse_markdown_v2(markdown.escape(text)) == (text, [])


_ENTITY: dict[str, Callable[[str, str], Rich]] = {
    "Bold": lambda plain, _: markdown.bold(plain),
    "Code": lambda plain, _: markdown.code(plain),
    "Pre": lambda plain, _: markdown.pre(plain),
    "PreCode": lambda plain, language: markdown.pre(plain, language),
    "TextUrl": lambda plain, url: markdown.link(plain, url),
}


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["plain", *_ENTITY]),
            _TEXT,
            st.sampled_from(["python", "c++", "https://example.com/a)b\\c?d=(e)"]),
        ),
        max_size=6,
    )
)
@settings(max_examples=500)
def test_rich_text_displays_its_plain_text_with_one_entity_per_part(
    parts: list[tuple[str, str, str]],
) -> None:
    rich = Rich("", "")
    expected = []
    for kind, plain, extra in parts:
        if kind == "plain":
            rich += plain
            continue
        if kind == "TextUrl" and not extra.startswith("https:"):
            extra = "https://example.com/pr/1"
        if kind == "PreCode" and extra.startswith("https:"):
            extra = "diff"
        if plain:
            expected.append((kind, utf16_len(rich.plain), utf16_len(plain)))
        rich += _ENTITY[kind](plain, extra)
    shown, entities = parse_markdown_v2(rich.markdown_v2)
    assert shown == rich.plain
    assert sorted((e.type, e.offset, e.length) for e in entities) == sorted(expected)


def test_markdown_builders_escape_by_the_rules() -> None:
    assert markdown.escape("1.0 (beta) a_b*c! \\") == "1\\.0 \\(beta\\) a\\_b\\*c\\! \\\\"
    assert markdown.code("a`b\\c.d").markdown_v2 == "`a\\`b\\\\c.d`"
    assert markdown.pre("x = 1.0\n", "python").markdown_v2 == "```python\nx = 1.0\n```"
    assert markdown.link("PR #1", "https://x.io/a)b").markdown_v2 == (
        "[PR \\#1](https://x.io/a\\)b)"
    )
    assert ("Done in " + markdown.code("1.2s")).plain == "Done in 1.2s"
    with pytest.raises(ValueError, match="language"):
        markdown.pre("x", "py thon")


@given(st.lists(_PARTS, min_size=1, max_size=4))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
async def test_rich_text_sent_shows_what_the_same_plain_text_shows(
    parts: list[Rich | str],
) -> None:
    rich = markdown.join(parts)
    fake = FakeTelegram(flood_limits=LOOSE)
    async with trio.open_nursery() as nursery:
        await fake.start(nursery)
        fake.add_chat(ADA.id, user=ADA)
        async with TelegramClient(make_config(fake)) as client:
            try:
                plain = await client.send(ADA_CHAT, rich.plain)
            except ChatError as error:
                # Blank text is refused either way, with the same words.
                with pytest.raises(ChatError) as refused:
                    await client.send(ADA_CHAT, rich)
                assert refused.value.code == error.code
            else:
                formatted = await client.send(ADA_CHAT, rich)
                # Telegram strips leading blanks, but only those before the first entity.
                shown = fake.message(ADA.id, int(formatted)).text
                assert shown.lstrip(" \n") == fake.message(ADA.id, int(plain)).text
        nursery.cancel_scope.cancel()
    # MarkdownV2 was accepted at the first try: no fallback was needed.
    assert not any("can't parse entities" in (call.description or "") for call in fake.calls)


async def test_markdown_that_telegram_rejects_is_sent_as_plain_text(
    fake: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    fake.add_chat(ADA.id, user=ADA)
    hand_written = Rich("*Version* 1.0", "Version 1.0")  # the "." is not escaped
    async with TelegramClient(make_config(fake)) as client:
        sent = await client.send(ADA_CHAT, hand_written)
        await client.edit(ADA_CHAT, sent, Rich("*Version* 1.1", "Version 1.1"))
        formatted = await client.send(ADA_CHAT, markdown.bold("Version") + " 1.2")
    assert fake.message(ADA.id, int(sent)).text == "Version 1.1"
    first, fallback, _ = fake.calls_to("sendMessage")
    assert first.status == 400 and first.params["parse_mode"] == "MarkdownV2"
    assert first.description is not None and "can't parse entities" in first.description
    assert fallback.status == 200 and "parse_mode" not in fallback.params
    assert [call.status for call in fake.calls_to("editMessageText")] == [400, 200]
    assert "MarkdownV2 refused by sendMessage" in caplog.text
    view = fake.message(ADA.id, int(formatted))
    assert (view.text, view.entities) == (
        "Version 1.2",
        ({"offset": 0, "length": 7, "type": "bold"},),
    )


# ---- the token stays secret ----------------------------------------------------------------------


async def test_the_token_is_never_in_logs_or_error_texts(
    autojump_clock: trio.abc.Clock, fake: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = fake.token.partition(":")[2]
    errors: list[BaseException] = []
    async with connected(fake) as (client, events):
        fake.inject_message(ADA.id, ADA, "hello")
        await receive(events)
        fake.fail_next("sendMessage", retry_after=3)
        with pytest.raises(RateLimited) as limited:
            await client.send(ADA_CHAT, "hi")
        errors.append(limited.value)
        with pytest.raises(ChatError) as refused:
            await client.send(ChatRef("telegram", "999"), "hi")
        errors.append(refused.value)
    # Nothing listens on port 1: the connection itself fails.
    unreachable = make_config(fake, base_url="http://127.0.0.1:1")
    async with TelegramClient(unreachable) as client:
        with pytest.raises(ChatUnavailable) as down:
            await client.send(ADA_CHAT, "hi")
        errors.append(down.value)
    assert str(down.value).startswith("could not reach Telegram for sendMessage: ConnectError")
    assert down.value.__context__ is None and down.value.__cause__ is None
    for error in errors:
        shown = "".join(traceback.format_exception(error)) + repr(error)
        assert secret not in shown
    assert "HTTP Request: POST" in caplog.text  # httpx did log every request ...
    assert f"/bot{REDACTED_TOKEN}/getUpdates" in caplog.text  # ... with the token redacted
    assert secret not in caplog.text


async def test_httpx_logs_are_redacted_only_while_the_client_is_open(
    fake: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    httpx_logger = logging.getLogger("httpx")
    before = list(httpx_logger.filters)
    async with TelegramClient(make_config(fake)) as client:
        assert len(httpx_logger.filters) == len(before) + 1
        fake.add_chat(ADA.id, user=ADA)
        await client.send(ADA_CHAT, "hi")
    assert httpx_logger.filters == before
    assert f"/bot{REDACTED_TOKEN}/sendMessage" in caplog.text


# --- forum topics and files -----------------------------------------------------------------------


async def test_a_topic_is_a_thread_and_sends_to_it_land_in_the_topic(
    autojump_clock: trio.abc.Clock, fake: FakeTelegram
) -> None:
    fake.add_chat(GROUP, "supergroup", is_forum=True)
    topic = fake.create_topic(GROUP, "bugs")
    async with connected(fake) as (client, events):
        fake.inject_message(GROUP, ADA, "/task fix it", "supergroup", thread_id=topic)
        fake.inject_message(GROUP, ADA, "more", "supergroup", thread_id=topic)
        command, follow_up = await receive(events), await receive(events)
        chat = ChatRef("telegram", str(GROUP), str(topic))
        assert isinstance(command, Command) and command.chat == chat
        # The topic's first message is not something this message replies to.
        assert isinstance(follow_up, Message) and follow_up.reply_to is None
        await client.send(chat, "in the topic")
        await client.send(GROUP_CHAT, "in the main chat")
        await client.upload(chat, "a.txt", b"x")
    assert [m.text for m in fake.topic_messages(GROUP, topic) if m.from_bot] == ["in the topic", ""]
    assert [m.text for m in fake.topic_messages(GROUP, None) if m.from_bot] == ["in the main chat"]


async def test_closed_and_deleted_topics_raise_thread_gone(
    autojump_clock: trio.abc.Clock, fake: FakeTelegram
) -> None:
    fake.add_chat(GROUP, "supergroup", is_forum=True)
    closed, deleted = fake.create_topic(GROUP, "a"), fake.create_topic(GROUP, "b")
    async with connected(fake) as (client, _):
        sent = await client.send(ChatRef("telegram", str(GROUP), str(deleted)), "hello")
        fake.close_topic(GROUP, closed)
        fake.delete_topic(GROUP, deleted)
        with pytest.raises(ThreadGone) as refused:
            await client.send(ChatRef("telegram", str(GROUP), str(closed)), "hi")
        assert refused.value.code == "Bad Request: TOPIC_CLOSED"
        with pytest.raises(ThreadGone):
            await client.upload(ChatRef("telegram", str(GROUP), str(closed)), "a.txt", b"x")
        with pytest.raises(ThreadGone):
            await client.send(ChatRef("telegram", str(GROUP), str(deleted)), "hi")
        with pytest.raises(MessageGone):
            await client.edit(ChatRef("telegram", str(GROUP), str(deleted)), sent, "hello!")


async def test_photos_documents_and_voice_notes_arrive_as_attachments_and_download(
    autojump_clock: trio.abc.Clock, fake: FakeTelegram
) -> None:
    fake.add_chat(GROUP, "supergroup", is_forum=True)
    topic = fake.create_topic(GROUP, "bugs")
    async with connected(fake) as (client, events):
        fake.inject_file(
            GROUP,
            ADA,
            "photo",
            b"\xff\xd8jpeg",
            caption="/task what is this?",
            chat_type="supergroup",
            thread_id=topic,
        )
        fake.inject_file(
            ADA.id, ADA, "document", b"a,b\n", filename="data.csv", mime_type="text/csv"
        )
        fake.inject_file(ADA.id, ADA, "voice", b"OggS", caption="listen")
        fake.inject_file(ADA.id, ADA, "document", b"x", filename="huge.iso", size=30 * 1024 * 1024)
        task, document, voice, huge = [await receive(events) for _ in range(4)]
        assert isinstance(task, Command)
        assert (task.name, task.args, task.chat.thread) == ("task", "what is this?", str(topic))
        [image] = task.attachments
        assert (image.kind, image.mime_type, image.size) == ("image", "image/jpeg", 6)
        assert await client.download(image, 1024) == b"\xff\xd8jpeg"
        assert isinstance(document, Message) and document.text == ""
        assert [(a.kind, a.name, a.mime_type) for a in document.attachments] == [
            ("document", "data.csv", "text/csv")
        ]
        assert isinstance(voice, Message) and voice.text == "listen"
        assert [(a.kind, a.mime_type) for a in voice.attachments] == [("audio", "audio/ogg")]
        assert voice.attachments[0].name.endswith(".ogg")
        with pytest.raises(FileTooLarge):
            await client.download(document.attachments[0], 2)  # over the caller's cap
        assert isinstance(huge, Message)
        with pytest.raises(FileTooLarge):
            await client.download(huge.attachments[0], 100 * 1024 * 1024)  # over Telegram's
        # getFile's own refusal counts too, when the update did not say how big the file was.
        unsized = replace(huge.attachments[0], size=None)
        with pytest.raises(FileTooLarge):
            await client.download(unsized, 100 * 1024 * 1024)
    assert len(fake.downloads) == 1  # nothing over a limit was fetched
