"""A Slack client connected to the Slack stand-in, for tests that need one: two people (Ada and
Bob) in the workspace, and the fixtures `slack` and `http` (import them into the test module)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from anycode_actors.chat.base import ChatEvent
from anycode_actors.chat.slack import SlackClient
from anycode_actors.config import SlackConfig
from supervisors import Backoff
from tests.fakes.slack import FakeSlack

ADA = "U0ADA"
BOB = "U0BOB"
WAIT = 30.0  # virtual seconds under the autojump clock
STEADY = Backoff(initial=1.0, factor=2.0, cap=30.0, jitter=0.0, reset_after=30.0)


@pytest.fixture
async def slack(nursery: trio.Nursery) -> FakeSlack:
    fake = FakeSlack()
    await fake.start(nursery)
    fake.add_user("ada", id=ADA)
    fake.add_user("bob", id=BOB)
    return fake


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def connected(
    nursery: trio.Nursery, slack: FakeSlack, http: httpx.AsyncClient
) -> tuple[SlackClient, trio.MemoryReceiveChannel[ChatEvent]]:
    """A running client that lets everyone in, and the channel its events arrive on."""
    config = SlackConfig.model_validate(
        {
            "app_token": slack.app_token,
            "bot_token": slack.bot_token,
            "api_base_url": slack.api_url,
            "allow_everyone": True,
        }
    )
    client = SlackClient(config, http=http, backoff=STEADY)
    send, events = trio.open_memory_channel[ChatEvent](16)
    with trio.fail_after(WAIT):
        await nursery.start(client.run, send)
    return client, events
