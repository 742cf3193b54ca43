"""`ChatClient.refuse`: telling only the person behind an event that it was refused (a button
that is not theirs, a limit reached), on every platform; and that a refusal which cannot be
delivered is logged, never raised into the actor that refused.

Telegram and Slack run against their stand-ins over real HTTP (and Socket Mode for Slack);
waits use the autojump clock."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import trio
from rich.console import Console

from anycode_actors.chat.base import (
    Button,
    ButtonPress,
    ChatEvent,
    ChatRef,
    Command,
    Message,
    User,
)
from anycode_actors.chat.console import CONSOLE_CHAT, CONSOLE_USER, ConsoleChat
from anycode_actors.chat.telegram import PRESS_ANSWER_DEADLINE, PRESS_ANSWER_MAX, TelegramClient
from anycode_actors.config import TelegramConfig
from supervisors import Backoff
from tests.fakes.slack import FakeSlack
from tests.fakes.telegram import FakeTelegram
from tests.fakes.telegram import User as TgUser
from tests.slack_rig import ADA, BOB, http, slack  # noqa: F401 - fixtures
from tests.slack_rig import connected as slack_connected

WAIT = 30.0  # virtual seconds under the autojump clock
STEADY = Backoff(initial=1.0, factor=2.0, cap=30.0, jitter=0.0, reset_after=30.0)
NOT_YOURS = "Only @ada can answer this."

# --- Telegram -------------------------------------------------------------------------------------
TG_ADA = TgUser(111, "Ada", username="ada")
TG_BOB = TgUser(222, "Bob")
GROUP = -1001234567890
TG_ADA_CHAT = ChatRef("telegram", "111")
TG_GROUP_CHAT = ChatRef("telegram", str(GROUP))


@pytest.fixture
async def telegram(nursery: trio.Nursery) -> FakeTelegram:
    fake = FakeTelegram()
    await fake.start(nursery)
    return fake


@asynccontextmanager
async def telegram_client(
    fake: FakeTelegram,
) -> AsyncIterator[tuple[TelegramClient, trio.MemoryReceiveChannel[ChatEvent]]]:
    config = TelegramConfig.model_validate(
        {
            "bot_token": fake.token,
            "api_base_url": fake.base_url,
            "allow_everyone": True,
            "poll_timeout": 30,
        }
    )
    async with TelegramClient(config, backoff=STEADY) as client:
        send, receive = trio.open_memory_channel[ChatEvent](16)
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run, send)
            try:
                yield client, receive
            finally:
                nursery.cancel_scope.cancel()


async def receive(events: trio.MemoryReceiveChannel[ChatEvent]) -> ChatEvent:
    with trio.fail_after(WAIT):
        return await events.receive()


async def test_telegram_a_refused_press_answers_the_pressers_callback_with_the_text(
    autojump_clock: trio.abc.Clock, telegram: FakeTelegram
) -> None:
    telegram.add_chat(GROUP, "supergroup")
    async with telegram_client(telegram) as (client, events):
        question = await client.send(
            TG_GROUP_CHAT, "Allow?", buttons=[[Button("Allow", "a:1"), Button("Deny", "a:2")]]
        )
        query_id = telegram.press(GROUP, TG_BOB, int(question), "Allow")
        press = await receive(events)
        assert isinstance(press, ButtonPress)
        await client.refuse(press, NOT_YOURS)
        # The client does not answer it a second time when its own deadline passes.
        await trio.sleep(60)
    [answer] = telegram.callback_answers
    assert (answer.query_id, answer.text, answer.show_alert) == (query_id, NOT_YOURS, False)
    # Nothing was posted in the group: only Bob saw the toast.
    assert [m.text for m in telegram.bot_messages(GROUP)] == ["Allow?"]


async def test_telegram_a_long_refusal_of_a_press_is_cut_to_200_characters(
    autojump_clock: trio.abc.Clock, telegram: FakeTelegram
) -> None:
    telegram.add_chat(TG_ADA.id, user=TG_ADA)
    async with telegram_client(telegram) as (client, events):
        question = await client.send(TG_ADA_CHAT, "?", buttons=[[Button("Go", "go")]])
        telegram.press(TG_ADA.id, TG_ADA, int(question), "Go")
        press = await receive(events)
        assert isinstance(press, ButtonPress)
        await client.refuse(press, "🚫" * 300)  # astral characters: one code point each
    [answer] = telegram.callback_answers
    assert len(answer.text) == PRESS_ANSWER_MAX
    assert answer.text == "🚫" * (PRESS_ANSWER_MAX - 1) + "…"


async def test_telegram_a_refused_command_gets_a_reply_to_it(
    autojump_clock: trio.abc.Clock, telegram: FakeTelegram
) -> None:
    telegram.add_chat(GROUP, "supergroup")
    async with telegram_client(telegram) as (client, events):
        sent = telegram.inject_message(GROUP, TG_BOB, "/cancel 3", chat_type="supergroup")
        command = await receive(events)
        assert isinstance(command, Command)
        await client.refuse(command, "Session 3 is not yours.")
    [reply] = telegram.bot_messages(GROUP)
    assert (reply.text, reply.reply_to) == ("Session 3 is not yours.", sent.message_id)


async def test_telegram_a_refused_message_whose_original_is_gone_is_sent_unquoted(
    autojump_clock: trio.abc.Clock, telegram: FakeTelegram
) -> None:
    telegram.add_chat(TG_ADA.id, user=TG_ADA)
    async with telegram_client(telegram) as (client, events):
        telegram.inject_message(TG_ADA.id, TG_ADA, "more please")
        message = await receive(events)
        assert isinstance(message, Message)
        telegram.delete(TG_ADA.id, int(message.message_id))
        await client.refuse(message, "You have reached your limit of sessions.")
    [reply] = telegram.bot_messages(TG_ADA.id)
    assert (reply.text, reply.reply_to) == ("You have reached your limit of sessions.", None)


async def test_telegram_a_reply_refused_as_not_found_is_sent_again_plainly(
    autojump_clock: trio.abc.Clock, telegram: FakeTelegram
) -> None:
    telegram.add_chat(TG_ADA.id, user=TG_ADA)
    async with telegram_client(telegram) as (client, events):
        sent = telegram.inject_message(TG_ADA.id, TG_ADA, "/task x")
        command = await receive(events)
        telegram.fail_next(
            "sendMessage",
            error_code=400,
            description="Bad Request: message to be replied not found",
        )
        await client.refuse(command, "No.")
    first, second = telegram.calls_to("sendMessage")
    assert first.status == 400 and str(sent.message_id) in first.params["reply_parameters"]
    assert second.status == 200 and "reply_parameters" not in second.params
    [reply] = telegram.bot_messages(TG_ADA.id)
    assert (reply.text, reply.reply_to) == ("No.", None)


async def test_telegram_a_refusal_in_a_forum_topic_stays_in_the_topic(
    autojump_clock: trio.abc.Clock, telegram: FakeTelegram
) -> None:
    telegram.add_chat(GROUP, "supergroup")
    async with telegram_client(telegram) as (client, _):
        sent = telegram.inject_message(GROUP, TG_BOB, "/task x", chat_type="supergroup")
        # The stand-in has no forum topics; the event names one as the client would read it.
        in_topic = Command(
            ChatRef("telegram", str(GROUP), thread="7"),
            User(str(TG_BOB.id), "Bob"),
            "task",
            "x",
            str(sent.message_id),
        )
        await client.refuse(in_topic, "No.")
    [call] = telegram.calls_to("sendMessage")
    assert call.params["message_thread_id"] == "7"
    assert str(sent.message_id) in call.params["reply_parameters"]


async def test_telegram_undeliverable_refusals_are_logged_not_raised(
    autojump_clock: trio.abc.Clock, telegram: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    telegram.add_chat(TG_ADA.id, user=TG_ADA)
    async with telegram_client(telegram) as (client, events):
        question = await client.send(TG_ADA_CHAT, "?", buttons=[[Button("Go", "go")]])
        telegram.inject_message(TG_ADA.id, TG_ADA, "/task x")
        command = await receive(events)
        telegram.press(TG_ADA.id, TG_ADA, int(question), "Go")
        press = await receive(events)

        telegram.fail_next("sendMessage", retry_after=30)
        await client.refuse(command, "over the limit")  # 429
        telegram.fail_next("answerCallbackQuery", retry_after=30)
        await client.refuse(press, "not yours")  # 429 on the press
        telegram.block(TG_ADA.id)
        await client.refuse(command, "over the limit")  # 403 blocked
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    refused = [w for w in warnings if "refused" in w]
    assert len(refused) == 3
    assert any("blocked" in w for w in refused)
    assert all(telegram.token not in r.getMessage() for r in caplog.records)


async def test_telegram_a_press_whose_refusal_failed_still_stops_its_progress_bar(
    autojump_clock: trio.abc.Clock, telegram: FakeTelegram
) -> None:
    telegram.add_chat(TG_ADA.id, user=TG_ADA)
    async with telegram_client(telegram) as (client, events):
        question = await client.send(TG_ADA_CHAT, "?", buttons=[[Button("Go", "go")]])
        query_id = telegram.press(TG_ADA.id, TG_ADA, int(question), "Go")
        press = await receive(events)
        assert isinstance(press, ButtonPress)
        telegram.fail_next("answerCallbackQuery", retry_after=1)
        await client.refuse(press, "not yours")
        await trio.sleep(PRESS_ANSWER_DEADLINE + 1)
    [answer] = telegram.callback_answers
    assert (answer.query_id, answer.text) == (query_id, "")


# --- Slack ----------------------------------------------------------------------------------------


async def test_slack_a_refused_message_is_shown_only_to_its_author(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general", members=[ADA, BOB])
    client, events = await slack_connected(nursery, slack, http)
    await slack.user_message(general, BOB, "/task one more")
    command = await receive(events)
    assert isinstance(command, Command)
    await client.refuse(command, "You have reached your limit of 2 sessions.")

    [call] = slack.calls_to("chat.postEphemeral")
    assert (call.params["channel"], call.params["user"]) == (general, BOB)
    assert "thread_ts" not in call.params
    [seen] = slack.ephemerals(BOB, general)
    assert seen.visible_text == "You have reached your limit of 2 sessions."
    assert slack.ephemerals(ADA) == []
    assert not [m for m in slack.messages(general, viewer=ADA) if m.bot_id]
    assert not slack.calls_to("chat.postMessage")


async def test_slack_a_refused_press_is_answered_only_to_the_presser(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general", members=[ADA, BOB])
    client, events = await slack_connected(nursery, slack, http)
    ts = await client.send(ChatRef("slack", general), "Allow?", buttons=[[Button("Allow", "a:1")]])
    await slack.press_button(general, BOB, ts, value="a:1")
    press = await receive(events)
    assert isinstance(press, ButtonPress)
    await client.refuse(press, NOT_YOURS)

    [seen] = slack.ephemerals(BOB)
    assert seen.visible_text == NOT_YOURS
    assert slack.ephemerals(ADA) == []
    assert [m.visible_text for m in slack.bot_messages(general) if not m.ephemeral_to] == ["Allow?"]
    assert slack.message(general, ts).buttons  # the question itself is untouched


async def test_slack_a_refusal_in_a_thread_stays_in_the_thread(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general", members=[ADA, BOB])
    client, events = await slack_connected(nursery, slack, http)
    parent = await slack.user_message(general, ADA, "the session's thread")
    await receive(events)
    await slack.user_message(general, BOB, "/cancel", thread_ts=parent.ts)
    command = await receive(events)
    assert isinstance(command, Command) and command.chat.thread == parent.ts
    await client.refuse(command, "This session is not yours.")

    assert slack.calls_to("chat.postEphemeral")[0].params["thread_ts"] == parent.ts
    [seen] = slack.ephemerals(BOB)
    assert (seen.visible_text, seen.thread_ts) == ("This session is not yours.", parent.ts)


async def test_slack_a_refused_slash_command_is_answered_ephemerally(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    client, events = await slack_connected(nursery, slack, http)
    await slack.slash_command(general, BOB, "/task", "again")
    command = await receive(events)
    await client.refuse(command, "Too many sessions <@U0ADA> & co.")
    [seen] = slack.ephemerals(BOB)
    # Escaped like every text the bot sends: no mention, no link.
    assert seen.text == "Too many sessions &lt;@U0ADA&gt; &amp; co."


async def test_slack_undeliverable_refusals_are_logged_not_raised(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    slack: FakeSlack,
    http: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    general = slack.add_channel("general")
    client, events = await slack_connected(nursery, slack, http)
    await slack.user_message(general, BOB, "/task x")
    command = await receive(events)

    slack.leave_channel(general, BOB)
    await client.refuse(command, "no")  # user_not_in_channel
    slack.join_channel(general, BOB)
    slack.fail_next("chat.postEphemeral", retry_after=5)
    await client.refuse(command, "no")  # 429
    slack.fail_next("chat.postEphemeral", "internal_error", http_status=500)
    await client.refuse(command, "no")  # Slack down

    assert slack.ephemerals(BOB) == []
    refused = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "refused" in r.getMessage()
    ]
    assert len(refused) == 3
    assert "user_not_in_channel" in refused[0]
    assert "rate limited" in refused[1]
    texts = caplog.text
    assert slack.bot_token not in texts and slack.app_token not in texts


# --- the console ----------------------------------------------------------------------------------
async def test_the_console_prints_a_refusal_like_any_message() -> None:
    output = io.StringIO()
    console = Console(file=output, width=120, color_system=None, highlight=False, soft_wrap=True)
    chat = ConsoleChat(console)
    command = Command(CONSOLE_CHAT, CONSOLE_USER, "task", "x", "1")
    press = ButtonPress(CONSOLE_CHAT, CONSOLE_USER, "2", "a:1", "3")
    await chat.refuse(command, "You have reached your limit of sessions.")
    await chat.refuse(press, "That button is not yours.")
    lines = output.getvalue().splitlines()
    assert "bot › You have reached your limit of sessions." in lines
    assert "bot › That button is not yours." in lines
