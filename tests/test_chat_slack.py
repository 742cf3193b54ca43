"""SlackClient against the Slack stand-in: a real WebSocket for Socket Mode, real HTTP for the
Web API. Timing tests use the autojump clock, so the 3-second ack deadline, redeliveries,
heartbeats and reconnect backoff pass in microseconds of real time."""

from __future__ import annotations

import itertools
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import httpx
import pytest
import trio
import trio.testing

from anycode_actors.chat.auth import NOT_AUTHORIZED, AccessPolicy
from anycode_actors.chat.base import (
    Attachment,
    Button,
    ButtonPress,
    ChatClient,
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
    User,
)
from anycode_actors.chat.slack import (
    BUSY_TEXT,
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TIMEOUT,
    RETIRE_GRACE,
    SLACK_LIMITS,
    SlackClient,
)
from anycode_actors.config import SlackConfig
from supervisors import Backoff
from tests.fakes.slack import Connection, FakeSlack
from tests.fakes.slack import Message as SlackMessage

ADA = "U0ADA"
BOB = "U0BOB"
# Jitter off so that delays are exact: 1, 2, 4, … seconds; healthy after 30 s.
BACKOFF = Backoff(initial=1.0, factor=2.0, cap=30.0, jitter=0.0, reset_after=30.0)
WAIT = 30.0  # bound on any single wait; virtual seconds under the autojump clock
T = TypeVar("T")


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


def config(slack: FakeSlack, **overrides: Any) -> SlackConfig:
    settings: dict[str, Any] = {
        "app_token": slack.app_token,
        "bot_token": slack.bot_token,
        "api_base_url": slack.api_url,
        # Most tests are about the protocol, not access: no allow-list lets everyone in.
        "allow_everyone": not overrides.get("allowed_users"),
        **overrides,
    }
    return SlackConfig(**settings)


def client_for(slack: FakeSlack, http: httpx.AsyncClient, **overrides: Any) -> SlackClient:
    inbound_buffer = overrides.pop("inbound_buffer", None)
    extra = {} if inbound_buffer is None else {"inbound_buffer": inbound_buffer}
    return SlackClient(config(slack, **overrides), http=http, backoff=BACKOFF, **extra)


async def start(
    nursery: trio.Nursery, client: SlackClient, *, events_size: int = 16
) -> trio.MemoryReceiveChannel[ChatEvent]:
    send, receive = trio.open_memory_channel[ChatEvent](events_size)
    with trio.fail_after(WAIT):
        await nursery.start(client.run, send)
    return receive


async def connected(
    nursery: trio.Nursery, slack: FakeSlack, http: httpx.AsyncClient, **overrides: Any
) -> tuple[SlackClient, trio.MemoryReceiveChannel[ChatEvent]]:
    client = client_for(slack, http, **overrides)
    return client, await start(nursery, client)


async def next_event(events: trio.MemoryReceiveChannel[ChatEvent]) -> ChatEvent:
    with trio.fail_after(WAIT):
        return await events.receive()


async def no_event(events: trio.MemoryReceiveChannel[ChatEvent], within: float = 10.0) -> None:
    with trio.move_on_after(within):
        event = await events.receive()
        pytest.fail(f"unexpected event {event}")


async def until(slack: FakeSlack, predicate: Callable[[], T | None], within: float = WAIT) -> T:
    with trio.fail_after(within):
        return await slack.wait_for(predicate)


async def live_connection(slack: FakeSlack) -> Connection:
    with trio.fail_after(WAIT):
        return await slack.wait_until_connected()


async def first_bot_message(slack: FakeSlack, channel: str) -> SlackMessage:
    with trio.fail_after(WAIT):
        return await slack.wait_for_message(channel)


async def run_until_error(client: SlackClient, events_size: int = 16) -> ChatError:
    """Run the client to its end; it must end with a ChatError."""
    send, _receive = trio.open_memory_channel[ChatEvent](events_size)
    with trio.fail_after(WAIT), pytest.raises(ChatError) as raised:
        await client.run(send)
    return raised.value


# --- connecting -----------------------------------------------------------------------------------
async def test_run_signs_in_with_the_bot_token_and_is_ready_after_hello(
    nursery: trio.Nursery, slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    slack_client = client_for(slack, http)
    client: ChatClient = slack_client  # SlackClient offers what the actors expect
    assert client.platform == "slack"
    assert client.limits == SLACK_LIMITS
    await start(nursery, slack_client)
    [signed_in] = slack.calls_to("auth.test")
    assert signed_in.token == slack.bot_token
    [opened] = slack.calls_to("apps.connections.open")
    assert opened.token == slack.app_token
    [connection] = slack.open_connections
    assert connection.ticket == slack.tickets_issued[0]


async def test_auth_test_is_retried_while_slack_is_unavailable(
    nursery: trio.Nursery,
    slack: FakeSlack,
    http: httpx.AsyncClient,
    autojump_clock: trio.testing.MockClock,
) -> None:
    slack.fail_next("auth.test", "internal_error", times=2, http_status=503)
    began = trio.current_time()
    await connected(nursery, slack, http)
    assert [c.status for c in slack.calls_to("auth.test")] == [503, 503, 200]
    assert trio.current_time() - began == pytest.approx(0 + 1)


async def test_a_refused_bot_token_is_fatal_and_named_by_its_config_key(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    wrong = "xoxb-not_the_real_bot_token_123"
    error = await run_until_error(client_for(slack, http, bot_token=wrong))
    assert error.code == "invalid_auth"
    assert "slack.bot_token" in str(error)
    assert wrong not in str(error) and slack.bot_token not in str(error)
    assert slack.calls_to("apps.connections.open") == []


async def test_a_refused_app_token_is_fatal_and_named_by_its_config_key(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    wrong = "xapp-not-the-real-app-token-123"
    error = await run_until_error(client_for(slack, http, app_token=wrong))
    assert error.code == "invalid_auth"
    assert "slack.app_token" in str(error)
    assert wrong not in str(error)
    assert len(slack.calls_to("apps.connections.open")) == 1


# --- inbound: messages ----------------------------------------------------------------------------
async def test_a_persons_message_becomes_a_message_event_and_is_acked_in_time(
    nursery: trio.Nursery, slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    _, events = await connected(nursery, slack, http)
    post = await slack.user_message(general, ADA, "fix the build")
    assert await next_event(events) == Message(
        ChatRef("slack", general), User(ADA), "fix the build", message_id=post.ts
    )
    await until(slack, lambda: post.deliveries[0].state == "acked")
    assert [a.on_time for a in slack.acks] == [True]


async def test_a_thread_reply_names_its_thread(
    nursery: trio.Nursery, slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    parent = await slack.user_message(general, BOB, "the parent")
    _, events = await connected(nursery, slack, http)
    reply = await slack.user_message(general, ADA, "and more", thread_ts=parent.ts)
    event = await next_event(events)
    assert event == Message(
        ChatRef("slack", general, parent.ts),
        User(ADA),
        "and more",
        message_id=reply.ts,
        reply_to=parent.ts,
    )
    assert event.chat.key == f"slack:{general}:{parent.ts}"


async def test_slack_markup_is_turned_back_into_what_the_person_typed(
    nursery: trio.Nursery, slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    _, events = await connected(nursery, slack, http)
    typed = (
        "fix <https://github.com/org/repo|github.com/org/repo> &amp; <https://x.dev/a> "
        "in <#C123|general> if a &lt; b, ask <@U0BOB>"
    )
    await slack.user_message(general, ADA, typed)
    event = await next_event(events)
    assert isinstance(event, Message)
    assert (
        event.text == "fix github.com/org/repo & https://x.dev/a in #general if a < b, ask <@U0BOB>"
    )


async def test_our_own_posts_and_edits_are_not_taken_for_a_persons(
    nursery: trio.Nursery, slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    client, events = await connected(nursery, slack, http)
    ts = await client.send(ChatRef("slack", general), "working…")
    await client.edit(ChatRef("slack", general), ts, "done")
    # Both echoes (the post and its message_changed) reach the client and are acked.
    await until(
        slack,
        lambda: (
            sum(
                d.state == "acked" and d.payload["event"].get("channel") == general
                for d in slack.deliveries
            )
            == 2
        ),
    )
    await slack.user_message(general, ADA, "thanks")
    event = await next_event(events)
    assert isinstance(event, Message) and event.text == "thanks"


async def test_a_mention_arrives_twice_but_is_handled_once(
    nursery: trio.Nursery,
    slack: FakeSlack,
    http: httpx.AsyncClient,
    autojump_clock: trio.testing.MockClock,
) -> None:
    general = slack.add_channel("general")
    _, events = await connected(nursery, slack, http)
    post = await slack.app_mention(general, ADA, "deploy please")
    assert [d.payload["event"]["type"] for d in post.deliveries] == ["message", "app_mention"]
    assert await next_event(events) == Message(
        ChatRef("slack", general), User(ADA), "deploy please", message_id=post.ts
    )
    await until(slack, lambda: all(d.state == "acked" for d in post.deliveries))
    await no_event(events)


async def test_a_mention_followed_by_a_command_is_a_command(
    nursery: trio.Nursery, slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    _, events = await connected(nursery, slack, http)
    post = await slack.app_mention(general, ADA, "/task fix org/repo login")
    assert await next_event(events) == Command(
        ChatRef("slack", general), User(ADA), "task", "fix org/repo login", message_id=post.ts
    )


async def test_a_mention_in_a_direct_message_is_not_lost(
    nursery: trio.Nursery, slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    dm = slack.add_channel("ada", kind="im", user=ADA)
    _, events = await connected(nursery, slack, http)
    post = await slack.user_message(dm, ADA, f"<@{slack.bot_user_id}> hi there")
    assert len(post.deliveries) == 1  # Slack sends no app_mention in a DM
    event = await next_event(events)
    assert isinstance(event, Message) and event.text == "hi there"


async def test_a_slash_style_message_in_a_thread_is_a_command(
    nursery: trio.Nursery, slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    parent = await slack.user_message(general, ADA, "a task")
    _, events = await connected(nursery, slack, http)
    typed = await slack.user_message(general, ADA, "/Status  now", thread_ts=parent.ts)
    assert await next_event(events) == Command(
        ChatRef("slack", general, parent.ts), User(ADA), "status", "now", message_id=typed.ts
    )
    await slack.user_message(general, ADA, "/usr/bin/env is missing", thread_ts=parent.ts)
    event = await next_event(events)
    assert isinstance(event, Message) and event.text == "/usr/bin/env is missing"


# --- inbound: slash commands and buttons ----------------------------------------------------------
async def test_a_slash_command_is_acked_in_time_and_becomes_a_command(
    nursery: trio.Nursery, slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    _, events = await connected(nursery, slack, http)
    delivery = await slack.slash_command(general, ADA, "/task", "fix org/repo login")
    assert await next_event(events) == Command(
        ChatRef("slack", general), User(ADA, "ada"), "task", "fix org/repo login"
    )
    await until(slack, lambda: delivery.state == "acked")
    [ack] = slack.acks
    assert ack.on_time and ack.payload is None
    assert slack.messages(general, viewer=ADA) == []  # the actors answer, not the ack


async def test_a_task_carries_the_senders_profile_name_asked_once(
    nursery: trio.Nursery, slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    grace = slack.add_user("grace", real_name="Grace Hopper", display_name="grace")
    general = slack.add_channel("general")
    _, events = await connected(nursery, slack, http)
    await slack.slash_command(general, grace, "/task", "fix it")
    first = await next_event(events)
    await slack.user_message(general, grace, "/task and again")
    second = await next_event(events)
    await slack.user_message(general, grace, "/status")
    status = await next_event(events)
    assert isinstance(first, Command) and isinstance(second, Command)
    assert isinstance(status, Command)
    assert (first.user.full_name, first.user.author_name) == ("Grace Hopper", "Grace Hopper")
    assert second.user.full_name == "Grace Hopper"
    assert status.user.full_name == ""  # only a task needs it
    assert len(slack.calls_to("users.info")) == 1


async def test_without_users_read_a_task_goes_on_with_the_user_name_and_is_not_asked_again(
    nursery: trio.Nursery, slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    slack.users_read = False
    general = slack.add_channel("general")
    _, events = await connected(nursery, slack, http)
    for text in ("fix it", "and again"):
        await slack.slash_command(general, ADA, "/task", text)
        command = await next_event(events)
        assert isinstance(command, Command)
        assert (command.user.full_name, command.user.author_name) == ("", "ada")
    assert len(slack.calls_to("users.info")) == 1


async def test_a_button_press_becomes_a_button_press(
    nursery: trio.Nursery, slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    client, events = await connected(nursery, slack, http)
    parent = await slack.user_message(general, ADA, "a task")
    assert isinstance(await next_event(events), Message)
    chat = ChatRef("slack", general, parent.ts)
    buttons = [[Button("Allow", "p1:allow"), Button("Deny", "p1:deny")]]
    ts = await client.send(chat, "Run `rm -rf build`?", buttons=buttons)

    delivery = await slack.press_button(general, ADA, ts, value="p1:deny")
    press = await next_event(events)
    assert isinstance(press, ButtonPress)
    assert (press.chat, press.user, press.message_id, press.data) == (
        chat,
        User(ADA, "ada"),
        ts,
        "p1:deny",
    )
    assert press.press_id == delivery.payload["trigger_id"]
    await until(slack, lambda: delivery.state == "acked")


async def test_answering_a_press_needs_no_call_and_text_is_shown_only_to_the_presser(
    nursery: trio.Nursery, slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    client, events = await connected(nursery, slack, http)
    ts = await client.send(ChatRef("slack", general), "Allow?", buttons=[[Button("Yes", "y")]])
    await slack.press_button(general, ADA, ts, value="y")
    press = await next_event(events)
    assert isinstance(press, ButtonPress)

    calls = len(slack.calls)
    await client.answer_press(press)
    assert len(slack.calls) == calls
    assert len(slack.messages(general)) == 1

    await client.answer_press(press, "Someone else answered first")
    [note] = [m for m in slack.messages(general, viewer=ADA) if m.ephemeral_to]
    assert note.visible_text == "Someone else answered first"
    assert note.ephemeral_to == ADA
    assert slack.messages(general, viewer=BOB) == [slack.message(general, ts)]


# --- inbound: acks, backpressure and redelivery ---------------------------------------------------
async def test_acks_do_not_wait_for_a_slow_consumer(
    nursery: trio.Nursery,
    slack: FakeSlack,
    http: httpx.AsyncClient,
    autojump_clock: trio.testing.MockClock,
) -> None:
    general = slack.add_channel("general")
    client = client_for(slack, http)
    events = await start(nursery, client, events_size=0)  # nobody reads for now
    posts = [await slack.user_message(general, ADA, f"message {n}") for n in range(5)]
    deliveries = [p.deliveries[0] for p in posts]
    await until(slack, lambda: all(d.state == "acked" for d in deliveries))
    assert all(ack.on_time for ack in slack.acks)
    await trio.sleep(30)  # well past any redelivery
    assert [len(d.attempts) for d in deliveries] == [1] * 5
    texts = []
    for _ in posts:
        event = await next_event(events)
        assert isinstance(event, Message)
        texts.append(event.text)
    assert texts == [f"message {n}" for n in range(5)]
    await no_event(events)


async def test_when_the_client_is_swamped_events_wait_for_redelivery_and_commands_hear_busy(
    nursery: trio.Nursery,
    slack: FakeSlack,
    http: httpx.AsyncClient,
    autojump_clock: trio.testing.MockClock,
) -> None:
    general = slack.add_channel("general")
    client = client_for(slack, http, inbound_buffer=1)
    events = await start(nursery, client, events_size=0)
    first = await slack.user_message(general, ADA, "first")  # held by the forwarder
    second = await slack.user_message(general, ADA, "second")  # fills the buffer
    await until(slack, lambda: second.deliveries[0].state == "acked")
    third = await slack.user_message(general, ADA, "third")  # no room: not acked
    command = await slack.slash_command(general, ADA, "/task", "later")
    await until(slack, lambda: command.state == "acked")
    assert command.ack_payload == {"text": BUSY_TEXT}
    [busy] = slack.messages(general, viewer=ADA)[-1:]
    assert busy.visible_text == BUSY_TEXT and busy.ephemeral_to == ADA

    texts = []
    for _ in range(3):
        event = await next_event(events)
        assert isinstance(event, Message)
        texts.append(event.text)
    assert texts == ["first", "second", "third"]
    third_attempts = third.deliveries[0].attempts
    assert len(third_attempts) >= 2 and third_attempts[0].acked_at is None
    await until(slack, lambda: third.deliveries[0].state == "acked")
    assert first.deliveries[0].state == "acked"
    await no_event(events)


async def test_a_redelivered_event_is_forwarded_once(
    nursery: trio.Nursery,
    slack: FakeSlack,
    http: httpx.AsyncClient,
    autojump_clock: trio.testing.MockClock,
) -> None:
    general = slack.add_channel("general")
    _, events = await connected(nursery, slack, http)
    slack.ack_deadline = 0.0  # every ack is late, so Slack sends the event again and again
    post = await slack.user_message(general, ADA, "only once")
    delivery = post.deliveries[0]
    await until(slack, lambda: delivery.state == "failed")
    assert [a.retry_attempt for a in delivery.attempts] == [0, 1, 2, 3]
    event = await next_event(events)
    assert isinstance(event, Message) and event.text == "only once"
    await no_event(events)
    # Every copy was acked, so Slack would not keep sending it.
    acked = {a.envelope_id for a in slack.acks}
    assert {a.envelope_id for a in delivery.attempts} <= acked


async def test_the_same_envelope_twice_is_acked_twice_and_forwarded_once(
    nursery: trio.Nursery,
    slack: FakeSlack,
    http: httpx.AsyncClient,
    autojump_clock: trio.testing.MockClock,
) -> None:
    general = slack.add_channel("general")
    _, events = await connected(nursery, slack, http)
    delivery = await slack.slash_command(general, ADA, "/task", "once")
    assert isinstance(await next_event(events), Command)
    [connection] = slack.open_connections
    envelope = connection.sent[-1]
    assert envelope["envelope_id"] == delivery.attempts[0].envelope_id
    await connection.ws.send_message(json.dumps(envelope))
    await until(slack, lambda: len(slack.acks) == 2)
    assert {a.envelope_id for a in slack.acks} == {envelope["envelope_id"]}
    await no_event(events)


# --- connection lifecycle -------------------------------------------------------------------------
async def test_refresh_requested_moves_to_a_fresh_connection_without_losing_an_event(
    nursery: trio.Nursery,
    slack: FakeSlack,
    http: httpx.AsyncClient,
    autojump_clock: trio.testing.MockClock,
) -> None:
    general = slack.add_channel("general")
    _, events = await connected(nursery, slack, http)
    [old] = slack.open_connections
    await slack.send_disconnect("refresh_requested")
    post = await slack.user_message(general, ADA, "during the refresh")
    event = await next_event(events)
    assert isinstance(event, Message) and event.text == "during the refresh"
    await until(slack, lambda: not old.is_open)
    [new] = slack.open_connections
    assert len(slack.tickets_issued) == 2 and new.ticket == slack.tickets_issued[1]
    assert post.deliveries[0].state == "acked"
    await slack.user_message(general, ADA, "after it")
    event = await next_event(events)
    assert isinstance(event, Message) and event.text == "after it"
    await no_event(events)


async def test_a_warning_opens_the_next_connection_before_the_old_one_closes(
    nursery: trio.Nursery,
    slack: FakeSlack,
    http: httpx.AsyncClient,
    autojump_clock: trio.testing.MockClock,
) -> None:
    general = slack.add_channel("general")
    _, events = await connected(nursery, slack, http)
    [old] = slack.open_connections
    await slack.send_disconnect("warning", close_after=10)
    new = await until(slack, lambda: next((c for c in slack.open_connections if c != old), None))
    assert old.is_open, "the old connection was closed before the new one said hello"
    await until(slack, lambda: not old.is_open)
    assert new.is_open
    await slack.user_message(general, ADA, "still here")
    event = await next_event(events)
    assert isinstance(event, Message) and event.text == "still here"


async def test_an_old_connection_slack_leaves_open_is_closed_after_the_grace(
    nursery: trio.Nursery,
    slack: FakeSlack,
    http: httpx.AsyncClient,
    autojump_clock: trio.testing.MockClock,
) -> None:
    await connected(nursery, slack, http)
    [old] = slack.open_connections
    await slack.send_disconnect("refresh_requested", close_after=None)
    await until(slack, lambda: len(slack.open_connections) == 2)
    replaced_at = trio.current_time()
    await until(slack, lambda: not old.is_open, within=RETIRE_GRACE + 5)
    assert trio.current_time() - replaced_at == pytest.approx(RETIRE_GRACE, abs=0.5)
    assert len(slack.open_connections) == 1


async def test_a_black_holed_socket_is_noticed_by_the_heartbeat(
    nursery: trio.Nursery,
    slack: FakeSlack,
    http: httpx.AsyncClient,
    autojump_clock: trio.testing.MockClock,
) -> None:
    general = slack.add_channel("general")
    _, events = await connected(nursery, slack, http)
    [dead] = slack.open_connections
    await slack.drop_connection(mode="blackhole")
    dropped_at = trio.current_time()
    post = await slack.user_message(general, ADA, "into the void")
    live = await until(slack, lambda: next((c for c in slack.connections if c != dead), None))
    await live_connection(slack)
    noticed = live.opened_at - dropped_at
    assert noticed <= HEARTBEAT_INTERVAL + HEARTBEAT_TIMEOUT + 0.5
    # Sooner than Slack itself gives up on the socket.
    assert slack.server_ping_interval is not None
    assert noticed < slack.server_ping_interval + slack.server_pong_timeout
    event = await next_event(events)
    assert isinstance(event, Message) and event.text == "into the void"
    assert [a.connection_id for a in post.deliveries[0].attempts][-1] == live.id
    await no_event(events)


async def test_failed_connects_are_retried_at_once_then_with_growing_delays(
    nursery: trio.Nursery,
    slack: FakeSlack,
    http: httpx.AsyncClient,
    autojump_clock: trio.testing.MockClock,
) -> None:
    slack.fail_next("apps.connections.open", "internal_error", times=3)
    slack.fail_next("apps.connections.open", "internal_error", http_status=503)
    await connected(nursery, slack, http)
    opens = slack.calls_to("apps.connections.open")
    assert [c.status for c in opens] == [200, 200, 200, 503, 200]
    assert [round(b.at - a.at, 3) for a, b in itertools.pairwise(opens)] == [0, 1, 2, 4]


async def test_a_lost_connection_is_replaced_at_once_and_a_flapping_one_backs_off(
    nursery: trio.Nursery,
    slack: FakeSlack,
    http: httpx.AsyncClient,
    autojump_clock: trio.testing.MockClock,
) -> None:
    await connected(nursery, slack, http)

    async def reconnect_delay() -> float:
        opens = len(slack.calls_to("apps.connections.open"))
        await slack.drop_connection(mode="reset")
        dropped_at = trio.current_time()
        await until(slack, lambda: len(slack.calls_to("apps.connections.open")) > opens)
        delay = slack.calls_to("apps.connections.open")[opens].at - dropped_at
        await live_connection(slack)
        return round(delay, 3)

    assert [await reconnect_delay() for _ in range(4)] == [0, 1, 2, 4]
    await trio.sleep(BACKOFF.reset_after)  # a healthy connection: the next loss starts over
    assert await reconnect_delay() == 0


async def test_a_rate_limited_connect_waits_for_retry_after(
    nursery: trio.Nursery,
    slack: FakeSlack,
    http: httpx.AsyncClient,
    autojump_clock: trio.testing.MockClock,
) -> None:
    slack.fail_next("apps.connections.open", retry_after=20)
    await connected(nursery, slack, http)
    first, second = slack.calls_to("apps.connections.open")
    assert first.status == 429
    assert second.at - first.at == pytest.approx(20)


async def test_link_disabled_ends_run_with_a_clear_error(
    nursery: trio.Nursery,
    slack: FakeSlack,
    http: httpx.AsyncClient,
    autojump_clock: trio.testing.MockClock,
) -> None:
    client = client_for(slack, http)
    outcome: list[ChatError] = []

    async def run(*, task_status: trio.TaskStatus[None]) -> None:
        send, _receive = trio.open_memory_channel[ChatEvent](1)
        try:
            await client.run(send, task_status=task_status)
        except ChatError as exc:
            outcome.append(exc)

    await nursery.start(run)
    await slack.send_disconnect("link_disabled", close_after=None)
    with trio.fail_after(WAIT):
        await until(slack, lambda: outcome)
    [error] = outcome
    assert error.code == "link_disabled"
    assert "Socket Mode" in str(error)
    await trio.sleep(60)
    assert len(slack.calls_to("apps.connections.open")) == 1
    await until(slack, lambda: not slack.open_connections)


# --- outbound -------------------------------------------------------------------------------------
async def test_a_message_with_buttons_keeps_its_text_visible(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    client = client_for(slack, http)
    buttons = [[Button("Allow", "p1:allow"), Button("Deny", "p1:deny")], [Button("Stop", "stop")]]
    ts = await client.send(ChatRef("slack", general), "Run `rm -rf build`?", buttons=buttons)
    message = slack.message(general, ts)
    assert message.visible_text == "Run `rm -rf build`?"
    assert message.text == "Run `rm -rf build`?"  # the notification fallback
    assert [(b.text, b.value) for b in message.buttons] == [
        ("Allow", "p1:allow"),
        ("Deny", "p1:deny"),
        ("Stop", "stop"),
    ]
    assert len({b.action_id for b in message.buttons}) == 3


async def test_edit_without_buttons_removes_them_and_keeps_the_text(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    client = client_for(slack, http)
    chat = ChatRef("slack", general)
    ts = await client.send(chat, "Allow?", buttons=[[Button("Yes", "y"), Button("No", "n")]])
    await client.edit(chat, ts, "Allow? (answered: yes)")
    message = slack.message(general, ts)
    assert (message.visible_text, message.buttons, message.edited) == (
        "Allow? (answered: yes)",
        [],
        True,
    )
    await client.edit(chat, ts, "Again?", buttons=[[Button("Retry", "r")]])
    assert [(b.text, b.value) for b in slack.message(general, ts).buttons] == [("Retry", "r")]
    assert slack.message(general, ts).visible_text == "Again?"


async def test_text_is_escaped_so_agent_output_never_becomes_a_mention_or_link(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    client = client_for(slack, http)
    ts = await client.send(ChatRef("slack", general), "if a < b && c > d: <!channel>")
    escaped = "if a &lt; b &amp;&amp; c &gt; d: &lt;!channel&gt;"
    message = slack.message(general, ts)
    assert (message.text, message.visible_text) == (escaped, escaped)


async def test_text_that_outgrows_a_section_is_split_across_sections(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    slack.rate_limits["chat.postMessage"] = None
    client = client_for(slack, http)
    chat = ChatRef("slack", general)
    lines = "a<b\n" * (SLACK_LIMITS.max_text_length // 4)  # 3000 characters, 5250 escaped
    no_newlines = "<" * SLACK_LIMITS.max_text_length
    emoji = "😀" * 2000  # 2000 code points, 4000 UTF-16 units
    for text in (lines, no_newlines, emoji):
        ts = await client.send(chat, text, buttons=[[Button("OK", "ok")]])
        message = slack.message(general, ts)
        sections = [b["text"]["text"] for b in message.blocks or [] if b["type"] == "section"]
        assert len(sections) > 1
        assert all(len(s.encode("utf-16-le")) // 2 <= 3000 for s in sections)
        escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        joiner = "\n" if text is lines else ""
        assert joiner.join(sections) == escaped
        assert len(message.text) <= 4000
        assert [b.value for b in message.buttons] == ["ok"]


async def test_buttons_outside_slacks_limits_are_refused_before_any_call(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    client = client_for(slack, http)
    chat = ChatRef("slack", general)
    too_much = "x" * (SLACK_LIMITS.max_button_data_bytes + 1)
    with pytest.raises(ValueError, match="button data"):
        await client.send(chat, "pick", buttons=[[Button("A", too_much)]])
    wide = [Button(str(n), str(n)) for n in range(SLACK_LIMITS.max_buttons_per_row + 1)]
    with pytest.raises(ValueError, match="row"):
        await client.send(chat, "pick", buttons=[wide])
    assert slack.calls == []
    # A long label is only display: it is shortened to Slack's 75 characters.
    ts = await client.send(chat, "pick", buttons=[[Button("L" * 100, "fits")]])
    [button] = slack.message(general, ts).buttons
    assert len(button.text) == 75 and button.value == "fits"


async def test_replies_go_to_the_chats_thread_or_start_one_under_reply_to(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    client = client_for(slack, http)
    parent = await slack.user_message(general, ADA, "the task")
    in_thread = await client.send(ChatRef("slack", general, parent.ts), "working on it")
    assert slack.message(general, in_thread).thread_ts == parent.ts
    other = await slack.user_message(general, ADA, "another")
    replied = await client.send(ChatRef("slack", general), "on it", reply_to=other.ts)
    assert slack.message(general, replied).thread_ts == other.ts


async def test_upload_goes_through_files_upload_v2(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    client = client_for(slack, http)
    parent = await slack.user_message(general, ADA, "the task")
    data = b"diff --git a/x b/x\n+<new>\n"
    file_id = await client.upload(
        ChatRef("slack", general, parent.ts), "changes.diff", data, "Here is the diff"
    )
    assert [c.method for c in slack.calls] == [
        "files.getUploadURLExternal",
        "files.completeUploadExternal",
    ]
    uploaded = slack.files[file_id]
    assert (uploaded.filename, uploaded.data, uploaded.completed) == ("changes.diff", data, True)
    [(channel, message_ts)] = uploaded.shared_in
    shared = slack.message(channel, message_ts)
    assert (channel, shared.thread_ts, shared.visible_text) == (
        general,
        parent.ts,
        "Here is the diff",
    )


async def test_a_429_is_rate_limited_with_retry_after(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    client = client_for(slack, http)
    chat = ChatRef("slack", general)
    slack.fail_next("chat.postMessage", retry_after=7)
    with pytest.raises(RateLimited) as limited:
        await client.send(chat, "hello")
    assert limited.value.retry_after == 7.0
    ts = await client.send(chat, "hello")
    slack.fail_next("chat.update", retry_after=3)
    with pytest.raises(RateLimited) as limited:
        await client.edit(chat, ts, "hello again")
    assert limited.value.retry_after == 3.0


async def test_ok_false_is_a_chat_error_with_slacks_code(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    outside = slack.add_channel("outside", member=False)
    general = slack.add_channel("general")
    client = client_for(slack, http)
    with pytest.raises(ChatError) as refused:
        await client.send(ChatRef("slack", outside), "hello")
    assert refused.value.code == "not_in_channel"
    assert "chat.postMessage" in str(refused.value) and "not_in_channel" in str(refused.value)
    assert not isinstance(refused.value, (RateLimited, ChatUnavailable))
    with pytest.raises(MessageGone) as missing:
        await client.edit(ChatRef("slack", general), "1.000001", "x")
    assert missing.value.code == "message_not_found"


async def test_slacks_answers_become_the_typed_chat_errors(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    quiet = slack.add_channel("quiet", member=False)
    client = client_for(slack, http)
    chat = ChatRef("slack", general)
    ts = await client.send(chat, "Looking at the logs")
    # Someone deleted the message: chat.update answers message_not_found.
    slack.message(general, ts).deleted = True
    with pytest.raises(MessageGone) as gone:
        await client.edit(chat, ts, "Looking at the logs, found it")
    assert gone.value.code == "message_not_found"
    # A person's message exists but is not ours to change: a plain refusal, not a gone message.
    post = await slack.user_message(quiet, ADA, "mine")
    with pytest.raises(ChatError) as refused:
        await client.edit(ChatRef("slack", quiet), post.message.ts, "ours now")
    assert refused.value.code == "cant_update_message"
    assert type(refused.value) is ChatError
    # Slack has no "not modified": an edit that changes nothing is simply accepted.
    kept = await client.send(chat, "same")
    await client.edit(chat, kept, "same")
    await client.edit(chat, kept, "same")
    assert [call.status for call in slack.calls_to("chat.update")][-2:] == [200, 200]
    assert slack.message(general, kept).visible_text == "same"
    # 429: chat.postMessage is paced per channel, chat.update per workspace (Slack's tiers).
    slack.fail_next("chat.postMessage", retry_after=4)
    with pytest.raises(RateLimited) as per_chat:
        await client.send(chat, "hello")
    slack.fail_next("chat.update", retry_after=6)
    with pytest.raises(RateLimited) as per_bot:
        await client.edit(chat, kept, "changed")
    assert (per_chat.value.retry_after, per_chat.value.scope) == (4.0, "chat")
    assert (per_bot.value.retry_after, per_bot.value.scope) == (6.0, "bot")
    for error in (gone.value, refused.value, per_chat.value, per_bot.value):
        assert not isinstance(error, NotModified)


async def test_slack_has_no_group_pacing(slack: FakeSlack, http: httpx.AsyncClient) -> None:
    client = client_for(slack, http)
    assert not client.is_group(ChatRef("slack", slack.add_channel("general")))
    assert not client.is_group(ChatRef("slack", slack.add_channel("ops", kind="group")))


async def test_server_errors_and_no_answer_are_unavailable(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    slack.fail_next("chat.postMessage", "internal_error", http_status=503)
    with pytest.raises(ChatUnavailable) as failed:
        await client_for(slack, http).send(ChatRef("slack", general), "hello")
    assert failed.value.code == "http_503"

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    nowhere = client_for(slack, http, api_base_url=f"http://127.0.0.1:{port}/api")
    with pytest.raises(ChatUnavailable) as unreachable:
        await nowhere.send(ChatRef("slack", general), "hello")
    assert unreachable.value.code == "unreachable"


# --- allowed users --------------------------------------------------------------------------------
def test_an_empty_allowed_list_lets_nobody_in_unless_everyone_is_allowed() -> None:
    assert not AccessPolicy.of(()).may_use("U0ANYONE")
    assert AccessPolicy.of((), everyone=True).may_use("U0ANYONE")
    assert AccessPolicy.of([ADA]).may_use(ADA)
    assert not AccessPolicy.of([ADA]).may_use(BOB)
    assert AccessPolicy.of((), admins=[BOB]).may_use(BOB)
    assert NOT_AUTHORIZED == "You are not authorized to use this bot."


async def test_an_unauthorized_message_gets_the_reply_and_never_reaches_the_actors(
    nursery: trio.Nursery,
    slack: FakeSlack,
    http: httpx.AsyncClient,
    autojump_clock: trio.testing.MockClock,
) -> None:
    general = slack.add_channel("general")
    bobs_dm = slack.add_channel("bob", kind="im", user=BOB)
    _, events = await connected(nursery, slack, http, allowed_users=(ADA,))

    await slack.user_message(bobs_dm, BOB, "hello bot")
    reply = await first_bot_message(slack, bobs_dm)
    assert (reply.visible_text, reply.thread_ts) == (NOT_AUTHORIZED, None)

    mention = await slack.app_mention(general, BOB, "/task do something")
    reply = await first_bot_message(slack, general)
    assert (reply.visible_text, reply.thread_ts) == (NOT_AUTHORIZED, mention.ts)

    await slack.user_message(general, BOB, "just chatting with people")
    await slack.user_message(general, ADA, "from ada")
    event = await next_event(events)
    assert isinstance(event, Message) and event.text == "from ada"
    await no_event(events)
    # One answer per addressed message: none for the chatter, one for the doubled mention.
    assert [m.visible_text for m in slack.bot_messages(general)] == [NOT_AUTHORIZED]
    assert [m.visible_text for m in slack.bot_messages(bobs_dm)] == [NOT_AUTHORIZED]


async def test_an_unauthorized_slash_command_is_answered_in_its_ack(
    nursery: trio.Nursery,
    slack: FakeSlack,
    http: httpx.AsyncClient,
    autojump_clock: trio.testing.MockClock,
) -> None:
    general = slack.add_channel("general")
    _, events = await connected(nursery, slack, http, allowed_users=(ADA,))
    delivery = await slack.slash_command(general, BOB, "/task", "do something")
    await until(slack, lambda: delivery.state == "acked")
    assert delivery.ack_payload == {"text": NOT_AUTHORIZED}
    [reply] = slack.messages(general, viewer=BOB)
    assert (reply.visible_text, reply.ephemeral_to) == (NOT_AUTHORIZED, BOB)
    await no_event(events)


async def test_an_unauthorized_button_press_is_answered_only_to_the_presser(
    nursery: trio.Nursery,
    slack: FakeSlack,
    http: httpx.AsyncClient,
    autojump_clock: trio.testing.MockClock,
) -> None:
    general = slack.add_channel("general")
    client, events = await connected(nursery, slack, http, allowed_users=(ADA,))
    ts = await client.send(ChatRef("slack", general), "Allow?", buttons=[[Button("Yes", "y")]])
    await slack.press_button(general, BOB, ts, value="y")
    reply = await until(
        slack, lambda: next((m for m in slack.messages(general) if m.ephemeral_to == BOB), None)
    )
    assert reply.visible_text == NOT_AUTHORIZED
    assert slack.messages(general, viewer=ADA) == [slack.message(general, ts)]
    await no_event(events, within=5)

    await slack.press_button(general, ADA, ts, value="y")
    press = await next_event(events)
    assert isinstance(press, ButtonPress) and press.user.id == ADA


# --- secrets --------------------------------------------------------------------------------------
async def test_tokens_never_appear_in_logs_or_errors(
    nursery: trio.Nursery,
    slack: FakeSlack,
    http: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
) -> None:
    caplog.set_level(logging.DEBUG)
    general = slack.add_channel("general")
    errors: list[BaseException] = []
    slack.fail_next("apps.connections.open", "internal_error")
    client, events = await connected(nursery, slack, http)
    await slack.user_message(general, ADA, "hi")
    await next_event(events)
    await slack.drop_connection()
    await until(slack, lambda: len(slack.calls_to("apps.connections.open")) == 3)
    for failure, status in (("ratelimited", None), ("invalid_auth", None), ("x", 503)):
        slack.fail_next("chat.postMessage", failure, http_status=status)
        with pytest.raises(ChatError) as raised:
            await client.send(ChatRef("slack", general), "x")
        errors.append(raised.value)
    errors.append(await run_until_error(client_for(slack, http, bot_token="xoxb-wrong_secret")))
    errors.append(await run_until_error(client_for(slack, http, app_token="xapp-wrong-secret")))

    secrets = (slack.bot_token, slack.app_token, "xoxb-wrong_secret", "xapp-wrong-secret")
    assert "Slack" in caplog.text  # the client did log
    texts = [caplog.text, *(repr(e) for e in errors), *(str(e) for e in errors)]
    texts += [str(e.__cause__) for e in errors]
    for secret in secrets:
        assert all(secret not in text for text in texts), secret


async def test_shared_files_arrive_as_attachments_fetched_with_the_bot_token(
    nursery: trio.Nursery, slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    client, events = await connected(nursery, slack, http)
    assert client.task_threads is True  # [slack] threads defaults to true
    await slack.share_files(
        general,
        ADA,
        "/task what is in these?",
        [("shot.png", "image/png", b"\x89PNG"), ("notes.txt", "text/plain", b"hello")],
    )
    task = await next_event(events)
    assert isinstance(task, Command) and task.args == "what is in these?"
    image, notes = task.attachments
    assert (image.kind, image.name, image.size) == ("image", "shot.png", 4)
    assert (notes.kind, notes.mime_type) == ("document", "text/plain")
    assert await client.download(image, 100) == b"\x89PNG"
    with pytest.raises(FileTooLarge):
        await client.download(notes, 3)
    assert slack.file_fetches == [(image.ref.split("/")[-2].split("-")[1], slack.bot_token)]

    await slack.share_files(general, ADA, "", [("log.txt", "text/plain", b"x")])
    plain = await next_event(events)
    assert isinstance(plain, Message) and plain.text == ""
    assert [a.name for a in plain.attachments] == ["log.txt"]
    # The token never goes to a host that is not Slack's.
    elsewhere = Attachment("document", "x", "text/plain", "https://example.com/files-pri/T-F/x")
    with pytest.raises(ChatError) as refused:
        await client.download(elsewhere, 100)
    assert refused.value.code == "foreign_url"
    assert len(slack.file_fetches) == 1


async def test_threads_false_is_read_from_the_config(
    slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    assert client_for(slack, http, threads=False).task_threads is False


async def test_a_mention_that_shares_files_is_one_command(
    nursery: trio.Nursery, slack: FakeSlack, http: httpx.AsyncClient
) -> None:
    general = slack.add_channel("general")
    _, events = await connected(nursery, slack, http)
    post = await slack.share_files(
        general,
        ADA,
        f"<@{slack.bot_user_id}> /task look",
        [("shot.png", "image/png", b"\x89PNG")],
    )
    assert [d.payload["event"]["type"] for d in post.deliveries] == ["message", "app_mention"]
    task = await next_event(events)
    assert isinstance(task, Command) and [a.name for a in task.attachments] == ["shot.png"]
    await no_event(events)
