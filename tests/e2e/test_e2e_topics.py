"""Forum topics and files, end to end: the daemon against the Telegram stand-in, a real Docker
sandbox with sandbox-agent and Claude Code, and the scripted model.

- Two topics of one forum group each run a session; follow-ups typed in each topic, interleaved,
  reach only that topic's session, and each session's output shows only in its topic.
- A photo sent with /task (its caption) reaches the model as an image content block.
- A document sent with /task lands in /workspace/inbox/ and the agent reads it from there.
- A topic deleted while its session runs: the rest goes to the main chat, where a plain
  message then reaches the session.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
import trio

from anycode_actors.actors.flusher import THREAD_GONE_NOTICE
from tests.e2e.harness import World, running_world
from tests.fakes.model import Delay, ModelScript, Text, ToolUse
from tests.fakes.telegram import User

pytestmark = pytest.mark.docker

ADA = User(111, "Ada", username="ada")
BOB = User(222, "Bob", username="bob")
GROUP = -1004242
# The smallest valid PNG: one transparent pixel.
PIXEL = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
NOTES = b"The build breaks because of a missing semicolon on line 42.\n"


def script() -> ModelScript:
    s = ModelScript()
    s.add("alpha", [Text("Alpha ", "here.")])
    s.add("beta", [Text("Beta ", "here.")])
    s.add("look", [Text("I see ", "a picture.")])
    s.add("long", [Text("Part one."), Delay(4), Text(" Part two.")])
    s.add(
        "read",
        [Text("Reading it."), ToolUse("Read", {"file_path": "/workspace/inbox/notes.txt"})],
        [Text("It says: missing semicolon.")],
    )
    return s


async def in_topic(world: World, topic: int, containing: str, within: float = 180) -> str:
    with trio.fail_after(within):
        message = await world.telegram.wait_for_message(GROUP, containing, topic=topic)
    return message.text


def session_id(text: str) -> str:
    found = re.search(r"session `([0-9a-f]{8})`", text)
    assert found is not None, text
    return found.group(1)


async def test_two_topics_of_one_group_run_their_own_sessions_and_nothing_crosses(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with running_world(nursery, tmp_path, script(), idle_minutes=0.5) as world:
        tg = world.telegram
        tg.add_chat(GROUP, "supergroup", is_forum=True)
        first, second = tg.create_topic(GROUP, "frontend"), tg.create_topic(GROUP, "backend")
        with trio.fail_after(30):
            await tg.wait_until_polling()
        tg.inject_message(GROUP, ADA, "/task [[alpha]] one", "supergroup", thread_id=first)
        tg.inject_message(GROUP, BOB, "/task [[beta]] two", "supergroup", thread_id=second)
        alpha = session_id(await in_topic(world, first, "Starting claude-code session"))
        beta = session_id(await in_topic(world, second, "Starting claude-code session"))
        assert alpha != beta
        await in_topic(world, first, "Alpha here.")
        await in_topic(world, second, "Beta here.")
        # Interleaved follow-ups: plain messages in each topic, no replies.
        tg.inject_message(GROUP, ADA, "alpha follow-up 1", "supergroup", thread_id=first)
        tg.inject_message(GROUP, BOB, "beta follow-up 1", "supergroup", thread_id=second)
        await in_topic(world, first, "You said: alpha follow-up 1")
        await in_topic(world, second, "You said: beta follow-up 1")
        tg.inject_message(GROUP, BOB, "beta follow-up 2", "supergroup", thread_id=second)
        tg.inject_message(GROUP, ADA, "alpha follow-up 2", "supergroup", thread_id=first)
        await in_topic(world, second, "You said: beta follow-up 2")
        await in_topic(world, first, "You said: alpha follow-up 2")
        await in_topic(world, first, f"Session `{alpha}` completed")
        await in_topic(world, second, f"Session `{beta}` completed")

        shown = {
            topic: "\n".join(m.text for m in tg.topic_messages(GROUP, topic) if m.from_bot)
            for topic in (first, second, None)
        }
        assert "Alpha here." in shown[first] and "Alpha here." not in shown[second]
        assert "Beta here." in shown[second] and "Beta here." not in shown[first]
        assert "beta" not in shown[first] and "alpha" not in shown[second]
        assert shown[None] == ""  # nothing went to the main chat
        store = world.daemon.store
        for sid, topic in ((alpha, first), (beta, second)):
            session = await store.find_session_by_prefix("telegram", str(GROUP), sid)
            assert session is not None and session.thread == str(topic)
        print("\n".join(["", "--- transcript of the two-topic test ---", *tg.transcript(GROUP)]))
        await world.wait_until_no_containers()


async def test_an_image_sent_with_task_reaches_the_model_as_an_image_block(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with running_world(nursery, tmp_path, script()) as world:
        tg = world.telegram
        with trio.fail_after(30):
            await tg.wait_until_polling()
        tg.inject_file(ADA.id, ADA, "photo", PIXEL, caption="/task [[look]] what is this?")
        with trio.fail_after(180):
            await tg.wait_for_message(ADA.id, containing="I see a picture.")
            await tg.wait_for_message(ADA.id, containing="completed")
        images = [
            block
            for request in world.model.message_requests
            for message in request.messages
            if message.get("role") == "user" and isinstance(message.get("content"), list)
            for block in message["content"]
            if isinstance(block, dict) and block.get("type") == "image"
        ]
        assert images, "no image content block reached the model"
        assert base64.b64decode(images[0]["source"]["data"]) == PIXEL
        assert tg.downloads  # fetched through getFile and the file path


async def test_a_document_lands_in_the_inbox_and_the_agent_reads_it(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with running_world(nursery, tmp_path, script()) as world:
        tg = world.telegram
        with trio.fail_after(30):
            await tg.wait_until_polling()
        tg.inject_file(
            ADA.id,
            ADA,
            "document",
            NOTES,
            filename="notes.txt",
            mime_type="text/plain",
            caption="/task [[read]] what does it say?",
        )
        with trio.fail_after(180):
            await tg.wait_for_message(ADA.id, containing="It says: missing semicolon.")
        results = [r for request in world.model.message_requests for r in request.tool_results]
        assert any("missing semicolon on line 42" in r.content for r in results), results
        prompt = next(
            request.last_user.text
            for request in world.model.message_requests
            if request.scenario == "read" and request.last_user is not None
        )
        assert "/workspace/inbox/notes.txt" in prompt


async def test_a_topic_deleted_mid_session_moves_it_to_the_main_chat_with_nothing_lost(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with running_world(nursery, tmp_path, script(), idle_minutes=0.5) as world:
        tg = world.telegram
        tg.add_chat(GROUP, "supergroup", is_forum=True)
        topic = tg.create_topic(GROUP, "ops")
        with trio.fail_after(30):
            await tg.wait_until_polling()
        tg.inject_message(GROUP, ADA, "/task [[long]] go", "supergroup", thread_id=topic)
        sid = session_id(await in_topic(world, topic, "Starting claude-code session"))
        await in_topic(world, topic, "Part one.")
        tg.delete_topic(GROUP, topic)
        with trio.fail_after(180):
            await tg.wait_for_message(GROUP, THREAD_GONE_NOTICE)
            await tg.wait_for_message(GROUP, "Part one. Part two.")
        main = tg.topic_messages(GROUP, None)
        assert all(m.thread_id is None for m in main)
        stored = await world.daemon.store.find_session_by_prefix("telegram", str(GROUP), sid)
        assert stored is not None and stored.thread is None
        tg.inject_message(GROUP, ADA, "are you still there?", "supergroup")
        with trio.fail_after(180):
            await tg.wait_for_message(GROUP, "You said: are you still there?")
            await tg.wait_for_message(GROUP, f"Session `{sid}` completed")
        await world.wait_until_no_containers()
