"""The Slack stand-in's chat.postEphemeral (https://api.slack.com/methods/chat.postEphemeral),
driven over HTTP as an app drives Slack, and its envelopes from another workspace."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio

from tests.fakes.slack import FakeSlack

ADA = "U0ADA"
BOB = "U0BOB"
CARL = "U0CARL"


@pytest.fixture
async def slack(nursery: trio.Nursery) -> FakeSlack:
    fake = FakeSlack()
    await fake.start(nursery)
    fake.add_user("ada", id=ADA)
    fake.add_user("bob", id=BOB)
    fake.add_user("carl", id=CARL)
    return fake


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def ephemeral(
    http: httpx.AsyncClient, slack: FakeSlack, *, json_body: bool = False, **args: Any
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {slack.bot_token}"}
    url = slack.api_url + "chat.postEphemeral"
    if json_body:
        response = await http.post(url, json=args, headers=headers)
    else:
        response = await http.post(url, data=args, headers=headers)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


async def test_an_ephemeral_message_is_shown_only_to_its_user(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general", members=[ADA, BOB])
    answer = await ephemeral(http, slack, channel=general, user=ADA, text="only for you")
    assert answer["ok"] is True
    assert set(answer) == {"ok", "message_ts"}
    [shown] = slack.ephemerals(ADA)
    assert (shown.ts, shown.visible_text, shown.bot_id) == (
        answer["message_ts"],
        "only for you",
        slack.bot_id,
    )
    assert slack.ephemerals(BOB) == []
    assert [m.visible_text for m in slack.messages(general, viewer=BOB)] == []
    assert slack.transcript(general)[0].endswith("(only visible to U0ADA)")


async def test_an_ephemeral_message_is_not_an_event_and_cannot_be_edited(
    autojump_clock: trio.abc.Clock, slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general", members=[ADA])
    answer = await ephemeral(http, slack, channel=general, user=ADA, text="psst")
    await trio.sleep(1)
    assert slack.deliveries == []  # the bot's ordinary posts come back as events; this does not
    headers = {"Authorization": f"Bearer {slack.bot_token}"}
    update = await http.post(
        slack.api_url + "chat.update",
        data={"channel": general, "ts": answer["message_ts"], "text": "changed"},
        headers=headers,
    )
    assert update.json() == {"ok": False, "error": "cant_update_message"}


async def test_blocks_and_a_json_body_are_accepted(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general", members=[ADA])
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*no*"}}]
    form = await ephemeral(
        http, slack, channel=general, user=ADA, text="no", blocks=json.dumps(blocks)
    )
    body = await ephemeral(http, slack, json_body=True, channel=general, user=ADA, blocks=blocks)
    assert form["ok"] and body["ok"]
    assert [m.visible_text for m in slack.ephemerals(ADA)] == ["*no*", "*no*"]


async def test_the_recipient_must_be_in_the_channel(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general", members=[ADA])
    assert await ephemeral(http, slack, channel=general, user=CARL, text="hi") == {
        "ok": False,
        "error": "user_not_in_channel",
    }
    assert await ephemeral(http, slack, channel=general, text="hi") == {
        "ok": False,
        "error": "user_not_in_channel",
    }
    slack.leave_channel(general, ADA)
    assert (await ephemeral(http, slack, channel=general, user=ADA, text="hi"))["error"] == (
        "user_not_in_channel"
    )
    slack.join_channel(general, CARL)
    assert (await ephemeral(http, slack, channel=general, user=CARL, text="hi"))["ok"] is True
    assert slack.ephemerals(ADA) == []


async def test_acting_in_a_channel_makes_a_person_a_member(
    autojump_clock: trio.abc.Clock, slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    dm = slack.add_channel("ada", kind="im", user=ADA)
    await slack.user_message(general, BOB, "hello")
    await slack.slash_command(general, CARL, "/task")
    assert (await ephemeral(http, slack, channel=general, user=BOB, text="a"))["ok"] is True
    assert (await ephemeral(http, slack, channel=general, user=CARL, text="b"))["ok"] is True
    assert (await ephemeral(http, slack, channel=dm, user=ADA, text="c"))["ok"] is True
    assert (await ephemeral(http, slack, channel=dm, user=BOB, text="d"))["ok"] is False


async def test_channel_and_content_errors(slack: FakeSlack, http: httpx.AsyncClient) -> None:
    general = slack.add_channel("general", members=[ADA])
    outside = slack.add_channel("outside", members=[ADA], member=False)
    old = slack.add_channel("old", members=[ADA], archived=True)

    async def error(**args: Any) -> str:
        answer = await ephemeral(http, slack, **args)
        assert answer["ok"] is False
        return str(answer["error"])

    assert await error(channel="C404", user=ADA, text="x") == "channel_not_found"
    assert await error(user=ADA, text="x") == "channel_not_found"
    assert await error(channel=outside, user=ADA, text="x") == "not_in_channel"
    assert await error(channel=old, user=ADA, text="x") == "is_archived"
    assert await error(channel=general, user=ADA) == "no_text"
    assert await error(channel=general, user=ADA, text="x" * 4001) == "msg_too_long"
    assert slack.ephemerals(ADA) == []


async def test_in_a_thread_it_is_shown_only_if_the_thread_is_active(
    autojump_clock: trio.abc.Clock, slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general", members=[ADA])
    lonely = await slack.user_message(general, ADA, "no replies yet")
    busy = await slack.user_message(general, ADA, "a thread")
    await slack.user_message(general, ADA, "a reply", thread_ts=busy.ts)

    hidden = await ephemeral(http, slack, channel=general, user=ADA, text="x", thread_ts=lonely.ts)
    shown = await ephemeral(http, slack, channel=general, user=ADA, text="y", thread_ts=busy.ts)
    assert hidden["ok"] is True and shown["ok"] is True
    [seen] = slack.ephemerals(ADA)
    assert (seen.visible_text, seen.thread_ts) == ("y", busy.ts)


async def test_ephemeral_messages_are_rate_limited_by_their_tier(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general", members=[ADA])
    slack.fail_next("chat.postEphemeral", retry_after=7)
    response = await http.post(
        slack.api_url + "chat.postEphemeral",
        data={"channel": general, "user": ADA, "text": "x"},
        headers={"Authorization": f"Bearer {slack.bot_token}"},
    )
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert response.json() == {"ok": False, "error": "ratelimited"}


async def test_envelopes_can_come_from_another_workspace(
    autojump_clock: trio.abc.Clock, slack: FakeSlack
) -> None:
    general = slack.add_channel("general")
    event = await slack.deliver_event(
        {"type": "message", "user": ADA, "text": "hi", "ts": "1.000001", "channel": general},
        team_id="T0OTHER",
    )
    assert event.payload["team_id"] == event.payload["context_team_id"] == "T0OTHER"
    assert event.payload["event"]["team"] == "T0OTHER"
    assert event.payload["authorizations"][0]["team_id"] == "T0OTHER"
    command = await slack.slash_command(general, ADA, "/task", team_id="T0OTHER")
    assert command.payload["team_id"] == "T0OTHER"
    own = await slack.slash_command(general, ADA, "/task")
    assert own.payload["team_id"] == slack.team_id
