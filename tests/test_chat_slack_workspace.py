"""SlackClient serves one workspace: envelopes from another workspace the app is installed in
arrive over the same socket, and are acked but never reach the actors (issue 10).

Against the Slack stand-in, whose `team_id` arguments make an envelope come from elsewhere."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
import trio

from anycode_actors.chat.base import Button, ButtonPress, ChatEvent, ChatRef, Command, Message
from tests.fakes.slack import Delivery, FakeSlack
from tests.slack_rig import ADA, BOB, WAIT, connected, http, slack  # noqa: F401 - fixtures

OTHER_TEAM = "T0OTHER"
THIRD_TEAM = "T0THIRD"


def message_event(channel: str, user: str, text: str, ts: str) -> dict[str, Any]:
    return {
        "type": "message",
        "user": user,
        "text": text,
        "ts": ts,
        "channel": channel,
        "channel_type": "channel",
    }


async def acked(slack: FakeSlack, delivery: Delivery) -> None:
    with trio.fail_after(WAIT):
        await slack.wait_for(lambda: delivery.state == "acked")


async def no_event(events: trio.MemoryReceiveChannel[ChatEvent], within: float = 10.0) -> None:
    with trio.move_on_after(within):
        event = await events.receive()
        pytest.fail(f"unexpected event {event}")


def foreign_logs(caplog: pytest.LogCaptureFixture, team: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "anycode_actors.chat.slack" and team in r.getMessage()
    ]


async def test_an_event_from_another_workspace_is_acked_ignored_and_logged_once(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    slack: FakeSlack,
    http: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="anycode_actors.chat.slack")
    general = slack.add_channel("general")
    _, events = await connected(nursery, slack, http)

    first = await slack.deliver_event(
        message_event(general, ADA, "/task steal the keys", "1700000001.000100"),
        team_id=OTHER_TEAM,
    )
    await acked(slack, first)
    await no_event(events)
    [logged] = foreign_logs(caplog, OTHER_TEAM)
    assert logged.levelno == logging.WARNING
    assert slack.team_id in logged.getMessage()  # names the workspace the bot does serve

    second = await slack.deliver_event(
        message_event(general, BOB, "hello?", "1700000002.000100"), team_id=OTHER_TEAM
    )
    await acked(slack, second)
    await no_event(events)
    assert len(foreign_logs(caplog, OTHER_TEAM)) == 1  # once per team, not once per event
    # Acked in time, so Slack never redelivers them.
    assert [len(d.attempts) for d in (first, second)] == [1, 1]

    own = await slack.user_message(general, ADA, "/task fix the build")
    await acked(slack, own.deliveries[0])
    with trio.fail_after(WAIT):
        event = await events.receive()
    assert isinstance(event, Command)
    assert (event.name, event.args, event.user.id) == ("task", "fix the build", ADA)
    assert not slack.calls_to(
        "chat.postMessage"
    )  # nobody was answered on the foreign team's behalf


async def test_each_foreign_workspace_is_logged_once(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    slack: FakeSlack,
    http: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="anycode_actors.chat.slack")
    general = slack.add_channel("general")
    _, events = await connected(nursery, slack, http)
    for index, team in enumerate([OTHER_TEAM, THIRD_TEAM, OTHER_TEAM, THIRD_TEAM]):
        delivery = await slack.deliver_event(
            message_event(general, ADA, "hi", f"17000000{index:02d}.000100"), team_id=team
        )
        await acked(slack, delivery)
    await no_event(events)
    assert len(foreign_logs(caplog, OTHER_TEAM)) == 1
    assert len(foreign_logs(caplog, THIRD_TEAM)) == 1


async def test_a_slash_command_from_another_workspace_is_acked_without_an_answer(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    _, events = await connected(nursery, slack, http)

    foreign = await slack.slash_command(general, ADA, "/task", "steal the keys", team_id=OTHER_TEAM)
    await acked(slack, foreign)
    await no_event(events)
    assert foreign.ack_payload is None  # the ack shows the person nothing
    assert slack.ephemerals(ADA) == []

    own = await slack.slash_command(general, ADA, "/task", "fix it")
    await acked(slack, own)
    with trio.fail_after(WAIT):
        event = await events.receive()
    assert isinstance(event, Command)
    assert (event.name, event.args) == ("task", "fix it")


async def test_a_button_press_from_another_workspace_is_acked_and_ignored(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    client, events = await connected(nursery, slack, http)
    ts = await client.send(ChatRef("slack", general), "Allow?", buttons=[[Button("Allow", "a:1")]])

    foreign = await slack.press_button(general, BOB, ts, value="a:1", team_id=OTHER_TEAM)
    assert foreign.payload["team"]["id"] == OTHER_TEAM
    assert foreign.payload["user"]["team_id"] == OTHER_TEAM
    await acked(slack, foreign)
    await no_event(events)

    own = await slack.press_button(general, BOB, ts, value="a:1")
    await acked(slack, own)
    with trio.fail_after(WAIT):
        event = await events.receive()
    assert isinstance(event, ButtonPress)
    assert (event.user.id, event.data, event.message_id) == (BOB, "a:1", ts)


async def test_an_interaction_without_team_falls_back_to_the_users_team(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    """`team` names the workspace an interaction came from; a payload without it still names
    the presser's team in `user.team_id`."""
    general = slack.add_channel("general")
    client, events = await connected(nursery, slack, http)
    ts = await client.send(ChatRef("slack", general), "Allow?", buttons=[[Button("Allow", "a:1")]])
    foreign = await slack.press_button(general, BOB, ts, value="a:1", team_id=OTHER_TEAM)
    # The same interaction with its `team` left out.
    payload = {k: v for k, v in foreign.payload.items() if k != "team"}
    delivery = await slack._deliver("interactive", payload)
    await acked(slack, delivery)
    await no_event(events)


async def test_an_event_from_the_bots_own_workspace_is_handled_as_before(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    _, events = await connected(nursery, slack, http)
    delivery = await slack.deliver_event(
        message_event(general, ADA, "plain words", "1700000001.000100"), team_id=slack.team_id
    )
    await acked(slack, delivery)
    with trio.fail_after(WAIT):
        event = await events.receive()
    assert isinstance(event, Message)
    assert (event.text, event.user.id) == ("plain words", ADA)
