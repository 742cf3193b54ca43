"""How many requests each chat client makes for 100 streamed edits in one chat, against the
stand-in's own rate limits, and how many 429s it gets (target 0). Run with `-m bench -s`.

The flusher (the only caller of send/edit for a chat) drives each real client over HTTP to the
real stand-in; the autojump clock runs the minute of streaming in well under a second.
"""

from __future__ import annotations

import httpx
import pytest
import trio

from anycode_actors.actors.flusher import Append, EndStream, Flusher
from anycode_actors.chat.base import ChatClient, ChatRef
from anycode_actors.chat.slack import SlackClient
from anycode_actors.chat.telegram import TelegramClient
from anycode_actors.config import SlackConfig, TelegramConfig
from tests.fakes.slack import FakeSlack
from tests.fakes.telegram import FakeTelegram, User

pytestmark = pytest.mark.bench

DELTAS = 100
EVERY = 0.25  # a delta every quarter second: 25 s of streaming
DEBOUNCE = 0.5  # session.debounce_ms = 500


async def stream(nursery: trio.Nursery, client: ChatClient, chat: ChatRef) -> None:
    flusher = Flusher(client, chat, debounce=DEBOUNCE)
    await nursery.start(flusher.run)
    for n in range(DELTAS):
        await flusher.send(Append("s", f"step {n:03d} of the fix\n"))
        await trio.sleep(EVERY)
    await flusher.send(EndStream("s"))
    with trio.fail_after(120):
        await flusher.drain()


async def stream_to_telegram(nursery: trio.Nursery) -> tuple[FakeTelegram, int]:
    """`stream` through the real Telegram client to the stand-in, in one private chat; the
    stand-in and that chat's id."""
    fake = FakeTelegram()
    await fake.start(nursery)
    ada = User(111, "Ada")
    fake.add_chat(ada.id, "private", user=ada)
    config = TelegramConfig.model_validate(
        {"bot_token": fake.token, "api_base_url": fake.base_url, "allow_everyone": True}
    )
    async with httpx.AsyncClient() as http, TelegramClient(config, http=http) as client:
        await stream(nursery, client, ChatRef("telegram", str(ada.id)))
    return fake, ada.id


async def test_bench_telegram_100_streamed_edits(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    fake, chat = await stream_to_telegram(nursery)
    calls = [c for c in fake.calls if c.method in ("sendmessage", "editmessagetext")]
    limited = [c for c in fake.calls if c.status == 429]
    text = "".join(m.text + "\n" for m in fake.bot_messages(chat))
    assert all(f"step {n:03d}" in text for n in range(DELTAS))
    print(
        f"\nTelegram: {len(calls)} requests (send + edit) for {DELTAS} deltas; 429s: {len(limited)}"
    )
    assert limited == []


async def test_bench_slack_100_streamed_edits(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    fake = FakeSlack()
    await fake.start(nursery)
    channel = fake.add_channel("general")
    config = SlackConfig(
        app_token=fake.app_token,
        bot_token=fake.bot_token,
        api_base_url=fake.api_url,
        allow_everyone=True,
    )
    async with httpx.AsyncClient() as http:
        client = SlackClient(config, http=http)
        await stream(nursery, client, ChatRef("slack", channel))
    calls = fake.calls_to("chat.postMessage") + fake.calls_to("chat.update")
    limited = [c for c in fake.calls if c.status == 429]
    text = "".join(m.visible_text + "\n" for m in fake.messages(channel))
    assert all(f"step {n:03d}" in text for n in range(DELTAS))
    print(
        f"\nSlack: {len(calls)} requests (post + update) for {DELTAS} deltas; 429s: {len(limited)}"
    )
    assert limited == []
