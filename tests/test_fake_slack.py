"""The Slack stand-in, driven the way an app drives Slack: httpx for the Web API and a
trio-websocket client for Socket Mode. Timing tests use the autojump clock, so the 3-second ack
deadline, redeliveries and connection lifetimes pass in microseconds of real time."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio
import trio_websocket

from tests.fakes.slack import ACK_DEADLINE, DisconnectReason, FakeSlack

ADA = "U0ADA"
BOB = "U0BOB"


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


async def call(
    http: httpx.AsyncClient,
    slack: FakeSlack,
    method: str,
    *,
    token: str | None = "bot",
    form: dict[str, Any] | None = None,
    body: dict[str, Any] | None = None,
) -> httpx.Response:
    """POST like slack_sdk: Bearer token, form-encoded unless a JSON body is given."""
    headers = {}
    if token is not None:
        real = {"bot": slack.bot_token, "app": slack.app_token}.get(token, token)
        headers["Authorization"] = f"Bearer {real}"
    if body is not None:
        return await http.post(slack.api_url + method, json=body, headers=headers)
    return await http.post(slack.api_url + method, data=form or {}, headers=headers)


async def api(
    http: httpx.AsyncClient, slack: FakeSlack, method: str, **form: Any
) -> dict[str, Any]:
    response = await call(http, slack, method, form=form)
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


async def socket_url(http: httpx.AsyncClient, slack: FakeSlack) -> str:
    opened = (await call(http, slack, "apps.connections.open", token="app")).json()
    assert opened["ok"] is True
    url: str = opened["url"]
    return url


async def frame(ws: trio_websocket.WebSocketConnection) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(await ws.get_message())
    return result


async def ack(
    ws: trio_websocket.WebSocketConnection, envelope: dict[str, Any], **extra: Any
) -> None:
    await ws.send_message(json.dumps({"envelope_id": envelope["envelope_id"], **extra}))


# --- Socket Mode: connecting ----------------------------------------------------------------------
async def test_connections_open_returns_a_socket_url_that_says_hello(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    response = await call(http, slack, "apps.connections.open", token="app")
    assert response.status_code == 200
    url = response.json()["url"]
    assert re.fullmatch(r"ws://127\.0\.0\.1:\d+/link/\?ticket=[\w-]+&app_id=A0FAKEAPP", url)

    async with trio_websocket.open_websocket_url(url) as ws:
        hello = await frame(ws)
        assert hello["type"] == "hello"
        assert hello["connection_info"] == {"app_id": slack.app_id}
        assert hello["num_connections"] == 1
        assert hello["debug_info"]["approximate_connection_time"] == 3600
        assert re.fullmatch(
            r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}", hello["debug_info"]["started"]
        )
        await slack.wait_for(lambda: len(slack.open_connections) == 1)

        async with trio_websocket.open_websocket_url(await socket_url(http, slack)) as second:
            assert (await frame(second))["num_connections"] == 2


async def test_every_open_gives_a_fresh_ticket_that_works_once(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    first, second = await socket_url(http, slack), await socket_url(http, slack)
    assert first != second
    async with trio_websocket.open_websocket_url(first) as ws:
        assert (await frame(ws))["type"] == "hello"
    with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
        async with trio_websocket.open_websocket_url(first):
            pass
    assert rejected.value.status_code == 401
    async with trio_websocket.open_websocket_url(second) as ws:
        assert (await frame(ws))["type"] == "hello"


async def test_connections_open_wants_the_app_token_in_the_header(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    async def error(**kwargs: Any) -> str:
        response = await call(http, slack, "apps.connections.open", **kwargs)
        assert response.status_code == 200
        assert response.json()["ok"] is False
        code: str = response.json()["error"]
        return code

    assert await error(token=None) == "not_authed"
    assert await error(token="bot") == "not_allowed_token_type"
    assert await error(token="xapp-not_the_right_one") == "invalid_auth"
    assert await error(token=None, form={"token": slack.app_token}) == "invalid_auth"
    got = await http.get(
        slack.api_url + "apps.connections.open",
        headers={"Authorization": f"Bearer {slack.app_token}"},
    )
    assert got.json() == {"ok": False, "error": "insecure_request"}
    assert slack.tickets_issued == []


async def test_debug_reconnects_shortens_the_connection_to_360_seconds(
    slack: FakeSlack, http: httpx.AsyncClient, autojump_clock: trio.testing.MockClock
) -> None:
    url = await socket_url(http, slack) + "&debug_reconnects=true"
    async with trio_websocket.open_websocket_url(url) as ws:
        hello = await frame(ws)
        assert hello["debug_info"]["approximate_connection_time"] == 360
        opened = trio.current_time()
        disconnect = await frame(ws)
        assert disconnect["type"] == "disconnect"
        assert disconnect["reason"] == "refresh_requested"
        assert trio.current_time() - opened == pytest.approx(360)


async def test_an_eleventh_connection_is_told_too_many_websockets(
    nursery: trio.Nursery, http: httpx.AsyncClient
) -> None:
    slack = FakeSlack(max_connections=1)
    await nursery.start(slack.serve)
    async with trio_websocket.open_websocket_url(await socket_url(http, slack)) as first:
        assert (await frame(first))["type"] == "hello"
        async with trio_websocket.open_websocket_url(await socket_url(http, slack)) as second:
            refused = await frame(second)
            assert refused["type"] == "disconnect"
            assert refused["reason"] == "too_many_websockets"
            with pytest.raises(trio_websocket.ConnectionClosed):
                await second.get_message()


# --- Socket Mode: envelopes and acks --------------------------------------------------------------
async def test_a_user_message_arrives_as_an_events_api_envelope_and_the_ack_settles_it(
    slack: FakeSlack, http: httpx.AsyncClient, autojump_clock: trio.testing.MockClock
) -> None:
    general = slack.add_channel("general")
    async with trio_websocket.open_websocket_url(await socket_url(http, slack)) as ws:
        await frame(ws)
        post = await slack.user_message(general, ADA, "fix the build")
        envelope = await frame(ws)
        assert envelope["type"] == "events_api"
        assert envelope["accepts_response_payload"] is False
        assert (envelope["retry_attempt"], envelope["retry_reason"]) == (0, "")
        payload = envelope["payload"]
        assert payload["type"] == "event_callback"
        assert payload["team_id"] == slack.team_id
        assert payload["api_app_id"] == slack.app_id
        assert payload["event_id"].startswith("Ev")
        assert isinstance(payload["event_time"], int)
        assert payload["authorizations"][0]["user_id"] == slack.bot_user_id
        event = payload["event"]
        assert event["type"] == "message"
        assert "subtype" not in event
        assert (event["user"], event["text"], event["channel"]) == (ADA, "fix the build", general)
        assert event["ts"] == event["event_ts"] == post.ts
        assert event["channel_type"] == "channel"
        assert "bot_id" not in event

        await ack(ws, envelope)
        delivery = post.deliveries[0]
        await slack.wait_for(lambda: delivery.state == "acked")
        assert slack.acks[-1].on_time is True
        with trio.move_on_after(ACK_DEADLINE * 10) as quiet:
            await ws.get_message()
        assert quiet.cancelled_caught, "an acked envelope was delivered again"
        assert len(delivery.attempts) == 1


async def test_an_unacked_event_is_redelivered_after_three_seconds_with_retry_attempt(
    slack: FakeSlack, http: httpx.AsyncClient, autojump_clock: trio.testing.MockClock
) -> None:
    general = slack.add_channel("general")
    async with trio_websocket.open_websocket_url(await socket_url(http, slack)) as ws:
        await frame(ws)
        post = await slack.user_message(general, ADA, "hello?")
        first = await frame(ws)
        sent = trio.current_time()
        again = await frame(ws)
        assert trio.current_time() - sent == pytest.approx(ACK_DEADLINE)
        assert again["retry_attempt"] == 1
        assert again["retry_reason"] == "timeout"
        assert again["envelope_id"] != first["envelope_id"]
        assert again["payload"]["event_id"] == first["payload"]["event_id"]
        assert again["payload"]["event"] == first["payload"]["event"]

        await ack(ws, first)  # too late: that delivery already timed out
        await ack(ws, again)
        delivery = post.deliveries[0]
        await slack.wait_for(lambda: delivery.state == "acked")
        assert [a.on_time for a in slack.acks] == [False, True]


async def test_redelivery_stops_after_three_retries(
    slack: FakeSlack, http: httpx.AsyncClient, autojump_clock: trio.testing.MockClock
) -> None:
    general = slack.add_channel("general")
    async with trio_websocket.open_websocket_url(await socket_url(http, slack)) as ws:
        await frame(ws)
        start = trio.current_time()
        post = await slack.user_message(general, ADA, "anyone?")
        seen = []
        for _ in range(4):
            envelope = await frame(ws)
            seen.append((envelope["retry_attempt"], round(trio.current_time() - start, 3)))
        assert seen == [(0, 0), (1, 3), (2, 6), (3, 9)]
        delivery = post.deliveries[0]
        await slack.wait_for(lambda: delivery.state == "failed")
        assert trio.current_time() - start == pytest.approx(12)


async def test_an_event_sent_while_no_socket_is_open_arrives_as_a_retry(
    slack: FakeSlack, http: httpx.AsyncClient, autojump_clock: trio.testing.MockClock
) -> None:
    general = slack.add_channel("general")
    post = await slack.user_message(general, ADA, "while you were away")
    assert post.deliveries[0].attempts[0].connection_id is None
    async with trio_websocket.open_websocket_url(await socket_url(http, slack)) as ws:
        await frame(ws)
        envelope = await frame(ws)
        assert envelope["retry_attempt"] == 1
        assert envelope["payload"]["event"]["text"] == "while you were away"


async def test_a_slash_command_ack_payload_is_the_reply_the_user_sees(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    async with trio_websocket.open_websocket_url(await socket_url(http, slack)) as ws:
        await frame(ws)
        delivery = await slack.slash_command(general, ADA, "/task", "fix org/repo login")
        envelope = await frame(ws)
        assert envelope["type"] == "slash_commands"
        assert envelope["accepts_response_payload"] is True
        assert "retry_attempt" not in envelope
        payload = envelope["payload"]
        assert payload["command"] == "/task"
        assert payload["text"] == "fix org/repo login"
        assert (payload["channel_id"], payload["channel_name"]) == (general, "general")
        assert (payload["user_id"], payload["user_name"]) == (ADA, "ada")
        assert (payload["team_id"], payload["team_domain"]) == (slack.team_id, slack.team_domain)
        assert payload["api_app_id"] == slack.app_id
        assert payload["response_url"].startswith(slack.base_url)
        assert payload["trigger_id"]

        await ack(ws, envelope, payload={"text": "Starting a sandbox…"})
        await slack.wait_for(lambda: delivery.state == "acked")
    assert delivery.ack_payload == {"text": "Starting a sandbox…"}
    [reply] = slack.messages(general, viewer=ADA)
    assert reply.visible_text == "Starting a sandbox…"
    assert reply.ephemeral_to == ADA
    assert slack.messages(general, viewer=BOB) == []


async def test_an_unacked_slash_command_is_not_retried_and_the_user_sees_operation_timeout(
    slack: FakeSlack, http: httpx.AsyncClient, autojump_clock: trio.testing.MockClock
) -> None:
    general = slack.add_channel("general")
    async with trio_websocket.open_websocket_url(await socket_url(http, slack)) as ws:
        await frame(ws)
        delivery = await slack.slash_command(general, ADA, "/task", "slow")
        envelope = await frame(ws)
        await slack.wait_for(lambda: delivery.state == "timed_out")
        with trio.move_on_after(ACK_DEADLINE * 10) as quiet:
            await ws.get_message()
        assert quiet.cancelled_caught, "a slash command was redelivered"
        await ack(ws, envelope, payload={"text": "too late"})
        await slack.wait_for(lambda: len(slack.acks) == 1)
    assert slack.acks[0].on_time is False
    assert [m.visible_text for m in slack.messages(general, viewer=ADA)] == [
        '/task failed with the error "operation_timeout"'
    ]


async def test_a_mention_sends_both_message_and_app_mention(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    async with trio_websocket.open_websocket_url(await socket_url(http, slack)) as ws:
        await frame(ws)
        post = await slack.app_mention(general, ADA, "deploy please")
        message, mention = await frame(ws), await frame(ws)
        for envelope in (message, mention):
            await ack(ws, envelope)
    assert message["payload"]["event"]["type"] == "message"
    assert mention["payload"]["event"]["type"] == "app_mention"
    assert mention["payload"]["event"]["text"] == f"<@{slack.bot_user_id}> deploy please"
    assert "channel_type" not in mention["payload"]["event"]
    assert message["payload"]["event"]["ts"] == mention["payload"]["event"]["ts"] == post.ts
    assert message["payload"]["event_id"] != mention["payload"]["event_id"]
    user_element = mention["payload"]["event"]["blocks"][0]["elements"][0]["elements"][0]
    assert user_element == {"type": "user", "user_id": slack.bot_user_id}


async def test_a_thread_reply_carries_thread_ts_and_parent_user_id(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    parent = await slack.user_message(general, BOB, "the parent")
    async with trio_websocket.open_websocket_url(await socket_url(http, slack)) as ws:
        await frame(ws)
        reply = await slack.user_message(general, ADA, "a reply", thread_ts=parent.ts)
        event = (await frame(ws))["payload"]["event"]
    assert event["thread_ts"] == parent.ts != event["ts"] == reply.ts
    assert event["parent_user_id"] == BOB
    assert [m.ts for m in slack.messages(general, thread_ts=parent.ts)] == [parent.ts, reply.ts]


async def test_the_bots_own_posts_and_edits_come_back_as_events(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    async with trio_websocket.open_websocket_url(await socket_url(http, slack)) as ws:
        await frame(ws)
        posted = await api(http, slack, "chat.postMessage", channel=general, text="working…")
        echo = (await frame(ws))["payload"]["event"]
        assert echo["type"] == "message"
        assert "subtype" not in echo
        assert (echo["user"], echo["bot_id"]) == (slack.bot_user_id, slack.bot_id)
        assert echo["bot_profile"]["id"] == slack.bot_id
        assert echo["ts"] == posted["ts"]

        await api(http, slack, "chat.update", channel=general, ts=posted["ts"], text="done")
        changed = (await frame(ws))["payload"]["event"]
        assert changed["subtype"] == "message_changed"
        assert changed["message"]["text"] == "done"
        assert changed["previous_message"]["text"] == "working…"


# --- Socket Mode: disconnects and dead sockets ----------------------------------------------------
async def test_refresh_requested_moves_traffic_to_the_new_connection_and_closes_the_old(
    slack: FakeSlack, http: httpx.AsyncClient, autojump_clock: trio.testing.MockClock
) -> None:
    general = slack.add_channel("general")
    async with trio_websocket.open_websocket_url(await socket_url(http, slack)) as old:
        await frame(old)
        await slack.send_disconnect("refresh_requested")
        told = await frame(old)
        assert told == {
            "type": "disconnect",
            "reason": "refresh_requested",
            "debug_info": {"host": told["debug_info"]["host"]},
        }
        told_at = trio.current_time()
        async with trio_websocket.open_websocket_url(await socket_url(http, slack)) as new:
            await frame(new)
            await slack.user_message(general, ADA, "after the refresh")
            envelope = await frame(new)
            assert envelope["payload"]["event"]["text"] == "after the refresh"
            await ack(new, envelope)
            with pytest.raises(trio_websocket.ConnectionClosed):
                await old.get_message()
            assert trio.current_time() - told_at == pytest.approx(slack.disconnect_grace)
            await slack.wait_for(lambda: len(slack.open_connections) == 1)


@pytest.mark.parametrize("reason", ["warning", "link_disabled"])
async def test_other_disconnect_reasons_have_the_documented_shape(
    slack: FakeSlack, http: httpx.AsyncClient, reason: DisconnectReason
) -> None:
    async with trio_websocket.open_websocket_url(await socket_url(http, slack)) as ws:
        await frame(ws)
        await slack.send_disconnect(reason, close_after=None)
        told = await frame(ws)
    assert (told["type"], told["reason"]) == ("disconnect", reason)
    assert told["debug_info"]["host"].startswith("wss-")


async def test_a_reset_connection_is_seen_at_once_as_closed(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    async with trio_websocket.open_websocket_url(await socket_url(http, slack)) as ws:
        await frame(ws)
        await slack.drop_connection()
        with trio.fail_after(5), pytest.raises(trio_websocket.ConnectionClosed) as closed:
            await ws.get_message()
        assert closed.value.reason is not None
        assert closed.value.reason.code == 1006  # abnormal closure: no close frame


async def test_a_blackholed_connection_answers_no_pings_and_swallows_envelopes(
    slack: FakeSlack, http: httpx.AsyncClient, autojump_clock: trio.testing.MockClock
) -> None:
    general = slack.add_channel("general")
    async with trio_websocket.open_websocket_url(await socket_url(http, slack)) as dead:
        await frame(dead)
        dead_conn = await slack.wait_until_connected()
        await slack.drop_connection(mode="blackhole")
        blackholed_at = trio.current_time()
        with trio.move_on_after(5) as heartbeat:
            await dead.ping()
        assert heartbeat.cancelled_caught, "a dead socket answered a ping"

        async with trio_websocket.open_websocket_url(await socket_url(http, slack)) as live:
            await frame(live)
            live_conn = slack.open_connections[-1]
            post = await slack.user_message(general, ADA, "is anyone there")
            envelope = await frame(live)
            await ack(live, envelope)
            await slack.wait_for(lambda: post.deliveries[0].state == "acked")
            # Slack cannot tell the socket is dead: the first attempt went into the black hole.
            assert envelope["retry_attempt"] == 1
            assert envelope["payload"]["event"]["text"] == "is anyone there"
            attempts = post.deliveries[0].attempts
            assert [a.connection_id for a in attempts] == [dead_conn.id, live_conn.id]
            with trio.move_on_after(1) as nothing:
                await dead.get_message()
            assert nothing.cancelled_caught, "the black hole let a frame through"

            # Slack's own pings go unanswered, so it gives up on the socket in the end.
            await slack.wait_for(lambda: not dead_conn.is_open)
            interval, patience = slack.server_ping_interval, slack.server_pong_timeout
            assert interval is not None
            assert trio.current_time() - blackholed_at <= interval + patience
            assert live_conn.is_open


async def test_slack_pings_its_clients(
    slack: FakeSlack, http: httpx.AsyncClient, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio_websocket.open_websocket_url(await socket_url(http, slack)) as ws:
        await frame(ws)
        conn = await slack.wait_until_connected()
        start = trio.current_time()
        await slack.wait_for(lambda: conn.pongs >= 2)
        interval = slack.server_ping_interval
        assert interval is not None
        assert trio.current_time() - start == pytest.approx(2 * interval)
        assert conn.is_open


async def test_a_raw_event_can_be_delivered(slack: FakeSlack, http: httpx.AsyncClient) -> None:
    general = slack.add_channel("general")
    async with trio_websocket.open_websocket_url(await socket_url(http, slack)) as ws:
        await frame(ws)
        event = {"type": "member_joined_channel", "user": BOB, "channel": general}
        delivery = await slack.deliver_event(event)
        envelope = await frame(ws)
        await ack(ws, envelope)
        assert await slack.wait_for(lambda: delivery.state == "acked")
    assert envelope["payload"]["event"]["type"] == "member_joined_channel"
    assert envelope["payload"]["event"]["team"] == slack.team_id
    assert envelope["payload"]["event_id"] == delivery.event_id


async def test_message_replied_arrives_without_its_subtype_when_asked_for(
    nursery: trio.Nursery, http: httpx.AsyncClient
) -> None:
    slack = FakeSlack(emit_message_replied=True)
    await slack.start(nursery)
    general = slack.add_channel("general")
    parent = await slack.user_message(general, BOB, "the parent")
    async with trio_websocket.open_websocket_url(await socket_url(http, slack)) as ws:
        await frame(ws)
        reply = await slack.user_message(general, ADA, "a reply", thread_ts=parent.ts)
        assert len(reply.deliveries) == 2
        message, replied = await frame(ws), await frame(ws)
        await ack(ws, message)
        await ack(ws, replied)
    hidden = replied["payload"]["event"]
    assert hidden["type"] == "message"
    assert "subtype" not in hidden and "user" not in hidden and "text" not in hidden
    assert hidden["hidden"] is True
    assert hidden["message"]["ts"] == parent.ts
    assert hidden["message"]["reply_count"] == 1


# --- Web API --------------------------------------------------------------------------------------
async def test_auth_test_names_the_bot_user_and_bot_id(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    assert await api(http, slack, "auth.test") == {
        "ok": True,
        "url": "https://fakeworkspace.slack.com/",
        "team": "Fake Workspace",
        "user": "anycode",
        "team_id": slack.team_id,
        "user_id": slack.bot_user_id,
        "bot_id": slack.bot_id,
        "is_enterprise_install": False,
    }


async def test_post_message_and_update_change_what_people_see(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    first = await api(http, slack, "chat.postMessage", channel=general, text="thinking…")
    assert first["ok"] is True
    assert first["channel"] == general
    assert re.fullmatch(r"\d{10}\.\d{6}", first["ts"])
    assert first["message"]["bot_id"] == slack.bot_id
    assert first["message"]["text"] == "thinking…"
    second = await api(
        http, slack, "chat.postMessage", channel="#general", text="more", thread_ts=first["ts"]
    )
    assert float(second["ts"]) > float(first["ts"])
    assert second["message"]["thread_ts"] == first["ts"]

    updated = await api(http, slack, "chat.update", channel=general, ts=first["ts"], text="done ✅")
    assert updated == {
        "ok": True,
        "channel": general,
        "ts": first["ts"],
        "text": "done ✅",
        "message": updated["message"],
    }
    message = slack.message(general, first["ts"])
    assert message.visible_text == "done ✅"
    assert [v.text for v in message.history] == ["thinking…", "done ✅"]
    assert slack.transcript(general) == [
        f"{first['ts']} anycode: done ✅ (edited)",
        f"{second['ts']} anycode: more (in thread {first['ts']})",
    ]


async def test_with_blocks_the_text_is_only_a_fallback_and_buttons_are_listed(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    buttons = {
        "type": "actions",
        "block_id": "perm",
        "elements": [
            {
                "type": "button",
                "text": {"type": "plain_text", "text": "Allow"},
                "action_id": "allow",
                "value": "p1:allow",
            },
            {
                "type": "button",
                "text": {"type": "plain_text", "text": "Deny"},
                "action_id": "deny",
                "value": "p1:deny",
            },
        ],
    }
    only_buttons = await api(
        http,
        slack,
        "chat.postMessage",
        channel=general,
        text="Run rm -rf build?",
        blocks=json.dumps([buttons]),
    )
    question = {"type": "section", "text": {"type": "mrkdwn", "text": "Run `rm -rf build`?"}}
    # JSON bodies carry blocks as a list (slack_sdk's chat.postMessage does this).
    with_text = (
        await call(
            http,
            slack,
            "chat.postMessage",
            body={"channel": general, "text": "Run rm?", "blocks": [question, buttons]},
        )
    ).json()
    assert with_text["ok"] is True

    hidden = slack.message(general, only_buttons["ts"])
    assert hidden.visible_text == ""
    assert [(b.text, b.value) for b in hidden.buttons] == [
        ("Allow", "p1:allow"),
        ("Deny", "p1:deny"),
    ]
    shown = slack.message(general, with_text["ts"])
    assert shown.visible_text == "Run `rm -rf build`?"
    assert [b.action_id for b in shown.buttons] == ["allow", "deny"]


async def test_pressing_a_button_sends_block_actions(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    slack.echo_bot_messages = False  # only the click travels over the socket here
    blocks = [
        {"type": "section", "text": {"type": "mrkdwn", "text": "Allow?"}},
        {
            "type": "actions",
            "block_id": "b1",
            "elements": [
                {
                    "type": "button",
                    "text": {"type": "plain_text", "text": "Allow"},
                    "action_id": "allow",
                    "value": "yes",
                }
            ],
        },
    ]
    posted = await api(
        http, slack, "chat.postMessage", channel=general, text="Allow?", blocks=json.dumps(blocks)
    )
    async with trio_websocket.open_websocket_url(await socket_url(http, slack)) as ws:
        await frame(ws)
        delivery = await slack.press_button(general, ADA, posted["ts"], value="yes")
        envelope = await frame(ws)
        await ack(ws, envelope)
        await slack.wait_for(lambda: delivery.state == "acked")
    assert envelope["type"] == "interactive"
    payload = envelope["payload"]
    assert payload["type"] == "block_actions"
    assert payload["user"]["id"] == ADA
    assert payload["channel"] == {"id": general, "name": "general"}
    assert payload["container"]["message_ts"] == posted["ts"]
    assert payload["message"]["ts"] == posted["ts"]
    assert payload["message"]["blocks"] == blocks
    [action] = payload["actions"]
    assert (action["type"], action["action_id"], action["block_id"], action["value"]) == (
        "button",
        "allow",
        "b1",
        "yes",
    )
    assert action["text"]["text"] == "Allow"
    assert payload["response_url"] and payload["trigger_id"]

    await api(
        http, slack, "chat.update", channel=general, ts=posted["ts"], text="Allowed", blocks="[]"
    )
    assert slack.message(general, posted["ts"]).buttons == []
    with pytest.raises(LookupError):
        await slack.press_button(general, ADA, posted["ts"], value="yes")


async def test_response_url_replies_and_its_use_limit(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    delivery = await slack.slash_command(general, ADA, "/status")
    url = delivery.payload["response_url"]
    first = await http.post(url, json={"text": "all good", "response_type": "in_channel"})
    assert (first.status_code, first.text) == (200, "ok")
    assert [m.visible_text for m in slack.messages(general, viewer=BOB)] == ["all good"]
    for _ in range(4):
        assert (await http.post(url, json={"text": "again"})).status_code == 200
    sixth = await http.post(url, json={"text": "once too often"})
    assert sixth.status_code == 404
    assert sixth.json() == {"ok": False, "error": "used_url"}


async def test_an_action_response_url_can_replace_the_message(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    slack.echo_bot_messages = False
    button = {
        "type": "button",
        "text": {"type": "plain_text", "text": "Stop"},
        "action_id": "stop",
    }
    blocks = [
        {"type": "section", "text": {"type": "mrkdwn", "text": "Running"}, "accessory": button}
    ]
    posted = await api(
        http, slack, "chat.postMessage", channel=general, text="Running", blocks=json.dumps(blocks)
    )
    delivery = await slack.press_button(general, ADA, posted["ts"], action_id="stop")
    replaced = await http.post(
        delivery.payload["response_url"], json={"replace_original": True, "text": "Stopped"}
    )
    assert (replaced.status_code, replaced.text) == (200, "ok")
    message = slack.message(general, posted["ts"])
    assert (message.visible_text, message.buttons, message.edited) == ("Stopped", [], True)


async def test_posting_to_a_user_id_lands_in_their_dm(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    dm = slack.add_channel("ada", kind="im", user=ADA)
    posted = await api(http, slack, "chat.postMessage", channel=ADA, text="your task is done")
    assert posted["channel"] == dm
    assert dm.startswith("D")
    assert (await slack.wait_for_message(dm, "done")).ts == posted["ts"]


async def test_files_upload_v2_puts_the_file_in_the_channel(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    thread = await api(http, slack, "chat.postMessage", channel=general, text="task started")
    data = b"diff --git a/x b/x\n"
    ticket = await api(
        http, slack, "files.getUploadURLExternal", filename="changes.diff", length=str(len(data))
    )
    assert ticket["ok"] is True
    assert ticket["file_id"].startswith("F")
    assert ticket["upload_url"].startswith(slack.base_url)

    premature = await api(
        http, slack, "files.completeUploadExternal", files=json.dumps([{"id": ticket["file_id"]}])
    )
    assert premature == {"ok": False, "error": "file_not_found"}

    uploaded = await http.post(
        ticket["upload_url"], content=data
    )  # raw bytes, no auth, as slack_sdk
    assert (uploaded.status_code, uploaded.text) == (200, f"OK - {len(data)}")

    done = await api(
        http,
        slack,
        "files.completeUploadExternal",
        files=json.dumps([{"id": ticket["file_id"], "title": "The diff"}]),
        channel_id=general,
        initial_comment="Here is the diff",
        thread_ts=thread["ts"],
    )
    assert done == {"ok": True, "files": [{"id": ticket["file_id"], "title": "The diff"}]}
    shared = slack.messages(general)[-1]
    assert shared.visible_text == "Here is the diff"
    assert shared.thread_ts == thread["ts"]
    assert [(f.filename, f.title, f.data) for f in shared.files] == [
        ("changes.diff", "The diff", data)
    ]


async def test_upload_v2_details_json_refused_multipart_accepted(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    as_json = await call(
        http, slack, "files.getUploadURLExternal", body={"filename": "a.txt", "length": 3}
    )
    assert as_json.json() == {"ok": False, "error": "invalid_arguments"}
    empty = await api(http, slack, "files.getUploadURLExternal", filename="a.txt", length="0")
    assert empty == {"ok": False, "error": "missing_argument"}

    ticket = await api(http, slack, "files.getUploadURLExternal", filename="a.txt", length="3")
    uploaded = await http.post(ticket["upload_url"], files={"file": ("a.txt", b"abc")})
    assert (uploaded.status_code, uploaded.text) == (200, "OK - 3")
    assert slack.files[ticket["file_id"]].data == b"abc"
    private = await api(
        http, slack, "files.completeUploadExternal", files=json.dumps([{"id": ticket["file_id"]}])
    )
    assert private["ok"] is True
    assert slack.files[ticket["file_id"]].shared_in == []


async def test_posting_faster_than_once_a_second_per_channel_gets_429_with_retry_after(
    slack: FakeSlack, http: httpx.AsyncClient, autojump_clock: trio.testing.MockClock
) -> None:
    busy, quiet = slack.add_channel("busy"), slack.add_channel("quiet")
    for n in range(3):  # the burst
        assert (await api(http, slack, "chat.postMessage", channel=busy, text=f"{n}"))["ok"] is True
    limited = await call(http, slack, "chat.postMessage", form={"channel": busy, "text": "3"})
    assert limited.status_code == 429
    assert limited.json() == {"ok": False, "error": "ratelimited"}
    retry_after = int(limited.headers["Retry-After"])
    assert retry_after >= 1
    assert (await api(http, slack, "chat.postMessage", channel=quiet, text="elsewhere"))[
        "ok"
    ] is True

    await trio.sleep(retry_after)
    assert (await api(http, slack, "chat.postMessage", channel=busy, text="3"))["ok"] is True
    assert [m.text for m in slack.messages(busy)] == ["0", "1", "2", "3"]


async def test_injected_failures_use_slacks_shapes(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    slack.fail_next("chat.postMessage", times=2, retry_after=7)
    slack.fail_next("chat.postMessage", "internal_error")
    for _ in range(2):
        limited = await call(
            http, slack, "chat.postMessage", form={"channel": general, "text": "x"}
        )
        assert (limited.status_code, limited.headers["Retry-After"]) == (429, "7")
        assert limited.json() == {"ok": False, "error": "ratelimited"}
    failed = await call(http, slack, "chat.postMessage", form={"channel": general, "text": "x"})
    assert failed.status_code == 200
    assert failed.json() == {"ok": False, "error": "internal_error"}
    assert (await api(http, slack, "chat.postMessage", channel=general, text="x"))["ok"] is True
    assert [c.status for c in slack.calls_to("chat.postMessage")] == [429, 429, 200, 200]


async def test_bad_tokens_get_the_real_auth_errors(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")

    async def post(as_token: str | None, **form: Any) -> dict[str, Any]:
        response = await call(
            http,
            slack,
            "chat.postMessage",
            token=as_token,
            form={"channel": general, "text": "x", **form},
        )
        assert response.status_code == 200  # logical errors are HTTP 200
        result: dict[str, Any] = response.json()
        return result

    assert await post(None) == {"ok": False, "error": "not_authed"}
    assert await post("xoxb-revoked_or_made_up") == {"ok": False, "error": "invalid_auth"}
    assert await post("app") == {"ok": False, "error": "not_allowed_token_type"}
    assert (await post(None, token=slack.bot_token))["ok"] is True  # a form `token` still works
    assert slack.messages(general)[0].text == "x"


async def test_channel_errors(slack: FakeSlack, http: httpx.AsyncClient) -> None:
    outside = slack.add_channel("outside", member=False)
    archived = slack.add_channel("old", archived=True)
    assert await api(http, slack, "chat.postMessage", channel="C404", text="x") == {
        "ok": False,
        "error": "channel_not_found",
    }
    assert (await api(http, slack, "chat.postMessage", channel=outside, text="x"))[
        "error"
    ] == "not_in_channel"
    assert (await api(http, slack, "chat.postMessage", channel=archived, text="x"))[
        "error"
    ] == "is_archived"


async def test_text_over_4000_characters_is_msg_too_long(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    fits = await api(http, slack, "chat.postMessage", channel=general, text="é" * 4000)
    assert fits["ok"] is True
    too_long = await api(http, slack, "chat.postMessage", channel=general, text="é" * 4001)
    assert too_long == {"ok": False, "error": "msg_too_long"}
    edit = await api(http, slack, "chat.update", channel=general, ts=fits["ts"], text="x" * 4001)
    assert edit == {"ok": False, "error": "msg_too_long"}
    assert slack.message(general, fits["ts"]).text == "é" * 4000


async def test_a_message_needs_text_or_blocks(slack: FakeSlack, http: httpx.AsyncClient) -> None:
    general = slack.add_channel("general")
    assert await api(http, slack, "chat.postMessage", channel=general) == {
        "ok": False,
        "error": "no_text",
    }
    assert (await api(http, slack, "chat.postMessage", channel=general, text="", blocks="[]"))[
        "error"
    ] == "no_text"
    posted = await api(http, slack, "chat.postMessage", channel=general, text="x")
    assert (await api(http, slack, "chat.update", channel=general, ts=posted["ts"]))[
        "error"
    ] == "no_text"


async def test_invalid_blocks_are_refused_with_pointers(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    slack.rate_limits["chat.postMessage"] = None  # four posts in a row here
    divider = {"type": "divider"}
    too_many = await api(
        http,
        slack,
        "chat.postMessage",
        channel=general,
        text="x",
        blocks=json.dumps([divider] * 51),
    )
    assert too_many["error"] == "invalid_blocks"
    long_section = [{"type": "section", "text": {"type": "mrkdwn", "text": "y" * 3001}}]
    too_long = await api(
        http, slack, "chat.postMessage", channel=general, text="x", blocks=json.dumps(long_section)
    )
    assert too_long["error"] == "invalid_blocks"
    assert too_long["response_metadata"]["messages"] == [
        "[ERROR] must be less than 3001 characters [json-pointer:/blocks/0/text/text]"
    ]
    not_json = await api(http, slack, "chat.postMessage", channel=general, text="x", blocks="[{")
    assert not_json == {"ok": False, "error": "invalid_blocks_format"}
    assert (
        await api(
            http,
            slack,
            "chat.postMessage",
            channel=general,
            text="x",
            blocks=json.dumps([divider] * 50),
        )
    )["ok"]
    assert len(slack.messages(general)) == 1


async def test_chat_update_errors(slack: FakeSlack, http: httpx.AsyncClient) -> None:
    general = slack.add_channel("general")
    theirs = await slack.user_message(general, ADA, "my own words")
    assert await api(http, slack, "chat.update", channel=general, ts="1.000001", text="x") == {
        "ok": False,
        "error": "message_not_found",
    }
    assert (await api(http, slack, "chat.update", channel=general, ts=theirs.ts, text="x"))[
        "error"
    ] == "cant_update_message"
    assert (await api(http, slack, "chat.update", channel="C404", ts=theirs.ts, text="x"))[
        "error"
    ] == "channel_not_found"
    assert slack.message(general, theirs.ts).text == "my own words"


async def test_an_unknown_method_is_unknown_method(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    assert await api(http, slack, "chat.frobnicate") == {
        "ok": False,
        "error": "unknown_method",
        "req_method": "chat.frobnicate",
    }


async def test_users_info_gives_the_profile_and_needs_users_read(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    grace = slack.add_user("grace", real_name="Grace Hopper", display_name="amazing grace")
    answer = await api(http, slack, "users.info", user=grace)
    assert answer["ok"] is True
    user = answer["user"]
    assert (user["id"], user["name"], user["real_name"]) == (grace, "grace", "Grace Hopper")
    assert (user["profile"]["real_name"], user["profile"]["display_name"]) == (
        "Grace Hopper",
        "amazing grace",
    )
    assert await api(http, slack, "users.info", user="U0NOBODY") == {
        "ok": False,
        "error": "user_not_found",
    }
    slack.users_read = False
    refused = await api(http, slack, "users.info", user=grace)
    assert (refused["ok"], refused["error"], refused["needed"]) == (
        False,
        "missing_scope",
        "users:read",
    )


async def test_a_file_share_carries_files_whose_url_private_wants_the_bot_token(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    parent = await slack.user_message(general, BOB, "the parent")
    async with trio_websocket.open_websocket_url(await socket_url(http, slack)) as ws:
        await frame(ws)
        await slack.share_files(
            general,
            ADA,
            "have a look",
            [("shot.png", "image/png", b"\x89PNG")],
            thread_ts=parent.ts,
        )
        event = (await frame(ws))["payload"]["event"]
    assert (event["subtype"], event["text"], event["thread_ts"]) == (
        "file_share",
        "have a look",
        parent.ts,
    )
    (shared,) = event["files"]
    assert (shared["name"], shared["mimetype"], shared["size"]) == ("shot.png", "image/png", 4)
    url = shared["url_private"]
    fetched = await http.get(url, headers={"Authorization": f"Bearer {slack.bot_token}"})
    assert (fetched.status_code, fetched.content) == (200, b"\x89PNG")
    anonymous = await http.get(url)
    assert anonymous.status_code == 302  # to the sign-in page, never the file
    app_token = await http.get(url, headers={"Authorization": f"Bearer {slack.app_token}"})
    assert app_token.status_code == 302
    assert [token for _, token in slack.file_fetches] == [slack.bot_token, None, slack.app_token]
