"""/task from Slack to a real sandboxed Claude Code and back, as people in the workspace see it.

The daemon runs with Slack as its only platform against the Slack stand-in (Web API over HTTP,
Socket Mode over a real WebSocket); the sandbox, the agent stack and the scripted model are the
same real things as in the Telegram end-to-end tests.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trio

from anycode_actors.chat.auth import NOT_AUTHORIZED
from tests.e2e.harness import SlackWorld, running_slack_world
from tests.fakes.model import Bash, Delay, ModelScript, Text
from tests.fakes.slack import Message

pytestmark = pytest.mark.docker

ADA = "U0ADA"
BOB = "U0BOB"
STARTING = "Starting claude-code session"


def script() -> ModelScript:
    s = ModelScript()
    s.add(
        "make-file",
        [
            # Pauses longer than the debounce, so the text reaches Slack in several edits.
            Text("I will create "),
            Delay(1.0),
            Text("the file "),
            Delay(1.0),
            Text("now."),
            # A command Claude Code proposes an "always allow" rule for (`git init *`), so all
            # three buttons show; for `touch` it proposes none.
            Bash("git init -q made", description="Create it"),
        ],
        [Delay(0.2), Text("Created ", "made.txt. ", "All done.")],
    )
    s.add("hello", [Text("Hello ", "there.")])
    return s


def setup_people(world: SlackWorld) -> str:
    """Ada and Bob in #general, where the app is a member; returns the channel id."""
    world.slack.add_user("ada", id=ADA)
    world.slack.add_user("bob", id=BOB)
    return world.slack.add_channel("general")


def starting_messages(world: SlackWorld, channel: str) -> list[Message]:
    return [m for m in world.slack.bot_messages(channel) if STARTING in m.visible_text]


def session_id(message: Message) -> str:
    found = re.search(r"session `([0-9a-f]{8})`", message.visible_text)
    assert found is not None, message.visible_text
    return found.group(1)


def no_failed_deliveries(world: SlackWorld) -> None:
    """Every envelope the app got was acked in time: none redelivered or shown as timed out."""
    late = [d for d in world.slack.deliveries if d.state in ("failed", "timed_out")]
    assert late == []
    assert all(a.on_time for a in world.slack.acks if a.known)


async def test_a_slash_command_streams_asks_permission_runs_the_tool_and_cleans_up(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with running_slack_world(nursery, tmp_path, script()) as world:
        assert world.config.platforms() == ("slack",)
        slack = world.slack
        general = setup_people(world)
        command = await slack.slash_command(
            general, ADA, "/task", "[[make-file]] please create a file"
        )
        with trio.fail_after(10):
            await slack.wait_for(lambda: command.state == "acked")
        # An empty ack: the answer is a real message the bot can edit, not a response payload.
        assert command.ack_payload is None
        with trio.fail_after(20):
            started = await slack.wait_for_message(general, containing=STARTING)
        sid = session_id(started)
        assert started.ephemeral_to is None and started.thread_ts is None
        assert "Prompt: [[make-file]] please create a file" in started.visible_text

        with trio.fail_after(120):
            prompt = await slack.wait_for(
                lambda: next((m for m in slack.bot_messages(general) if m.buttons), None)
            )
        assert prompt.visible_text.startswith("Permission requested")
        # [slack] threads (the default): the session runs in a thread under the acknowledgement.
        assert prompt.thread_ts == started.ts
        labels = sorted(b.text for b in prompt.buttons)  # in the order the agent offers them
        assert labels == ["Allow", "Allow for this session", "Deny"]
        # The text streamed before the request is above it, and got there by edits.
        streamed = next(
            m
            for m in slack.bot_messages(general)
            if "I will create the file now." in m.visible_text
        )
        assert float(streamed.ts) < float(prompt.ts)
        versions = [v.text for v in streamed.history]
        assert any("I will create" in v and "now." not in v for v in versions), versions
        assert any(c.params.get("ts") == streamed.ts for c in slack.calls_to("chat.update"))

        allow = next(b for b in prompt.buttons if b.text == "Allow")
        press = await slack.press_button(general, ADA, prompt.ts, value=allow.value)
        with trio.fail_after(10):
            await slack.wait_for(lambda: press.state == "acked")
        with trio.fail_after(120):
            done = await slack.wait_for_message(general, containing=f"Session `{sid}` completed.")
        assert done.thread_ts == started.ts

        transcript = "\n".join(slack.transcript(general))
        assert "Created made.txt. All done." in transcript, transcript
        decided = slack.message(general, prompt.ts)
        assert decided.buttons == []
        assert decided.visible_text.startswith("Permission requested")
        assert "Allow (by ada)" in decided.visible_text
        # Only Ada is told, as Slack shows an interaction's answer.
        assert any(m.visible_text == "Allow" for m in slack.messages(general, viewer=ADA))
        assert not any(m.visible_text == "Allow" for m in slack.messages(general, viewer=BOB))
        results = [r for req in world.model.message_requests for r in req.tool_results]
        assert results and not any(r.is_error for r in results)
        assert len(starting_messages(world, general)) == 1
        no_failed_deliveries(world)
        await world.wait_until_no_containers()


async def test_a_mention_starts_one_session_that_completes(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with running_slack_world(nursery, tmp_path, script()) as world:
        slack = world.slack
        general = setup_people(world)
        post = await slack.app_mention(general, ADA, "/task [[hello]] greet me")
        # Slack sends the mention twice (as `message` and as `app_mention`); both are acked.
        assert [d.payload["event"]["type"] for d in post.deliveries] == ["message", "app_mention"]
        with trio.fail_after(10):
            await slack.wait_for(lambda: all(d.state == "acked" for d in post.deliveries))
        with trio.fail_after(30):
            started = await slack.wait_for_message(general, containing=STARTING)
        sid = session_id(started)
        assert "Prompt: [[hello]] greet me" in started.visible_text
        with trio.fail_after(120):
            done = await slack.wait_for_message(general, containing=f"Session `{sid}` completed.")
        assert done.thread_ts == started.ts and started.thread_ts is None
        assert any("Hello there." in m.visible_text for m in slack.bot_messages(general))
        assert len(starting_messages(world, general)) == 1, slack.transcript(general)
        assert await world.daemon.store.active_sessions("slack", general) == []
        no_failed_deliveries(world)
        await world.wait_until_no_containers()


async def test_someone_not_allowed_is_told_so_and_starts_nothing(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with running_slack_world(nursery, tmp_path, script(), allowed_users=[ADA]) as world:
        slack = world.slack
        general = setup_people(world)

        command = await slack.slash_command(general, BOB, "/task", "[[hello]] greet me")
        with trio.fail_after(10):
            await slack.wait_for(lambda: command.state == "acked")
        refusal = next(m for m in slack.messages(general, viewer=BOB) if m.bot_id)
        # The slash command's answer: only Bob sees it.
        assert refusal.visible_text == NOT_AUTHORIZED and refusal.ephemeral_to == BOB
        assert not any(m.bot_id for m in slack.messages(general, viewer=ADA))

        mention = await slack.app_mention(general, BOB, "/task [[hello]] greet me")
        with trio.fail_after(10):
            answered = await slack.wait_for(
                lambda: [
                    m
                    for m in slack.bot_messages(general)
                    if m.thread_ts == mention.ts and m.visible_text == NOT_AUTHORIZED
                ]
            )
        assert len(answered) == 1  # the mention came twice and is answered once

        # Ada's /status goes through the same chat after Bob's attempts: had one of them started
        # a session, its "Starting" message would be there before this answer.
        status = await slack.slash_command(general, ADA, "/status")
        with trio.fail_after(20):
            await slack.wait_for(lambda: status.state == "acked")
            await slack.wait_for_message(general, containing="No active sessions.")
        assert starting_messages(world, general) == []
        assert world.model.message_requests == []
        assert await world.daemon.store.active_sessions() == []
        assert await trio.to_thread.run_sync(world.containers) == []
        no_failed_deliveries(world)
