"""The /task flows a user meets besides the happy path: cancel, timeout, follow-ups, several chats,
and somebody else's finger on a permission button. Real Docker, real agent stack, scripted model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trio

from tests.e2e.harness import World, running_world
from tests.fakes.model import Bash, Delay, ModelScript, Text, Write
from tests.fakes.telegram import MessageView, User

pytestmark = pytest.mark.docker

ADA = User(111, "Ada", username="ada")
BOB = User(222, "Bob", username="bob")
GROUP = -100123


def script() -> ModelScript:
    s = ModelScript()
    s.add("slow", [Text("Thinking ", "about it."), Delay(60), Text("never shown")])
    s.add("hello", [Text("Hello ", "there.")])
    s.add("count", [Text("One, ", "two, ", "three.")])
    s.add(
        "perm",
        [Text("Let me run it."), Bash("touch ok.txt", description="Create ok.txt")],
        [Text("Ran it.")],
    )
    s.add(
        "report",
        [Text("Writing a report."), Write("/workspace/outbox/report.md", "# Report\nAll good.\n")],
        [Text("The report is in the outbox.")],
    )
    return s


async def started(
    world: World, chat: int, user: User, text: str, chat_type: str = "private"
) -> str:
    tg = world.telegram
    with trio.fail_after(30):
        await tg.wait_until_polling()
    tg.inject_message(chat, user, text, chat_type=chat_type)
    with trio.fail_after(30):
        message = await tg.wait_for_message(chat, containing="Starting claude-code session")
    found = re.search(r"session `([0-9a-f]{8})`", message.text)
    assert found is not None
    return found.group(1)


async def no_containers_left(world: World) -> None:
    await world.wait_until_no_containers()


async def test_cancel_while_starting_destroys_the_container(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with running_world(nursery, tmp_path, script()) as world:
        sid = await started(world, ADA.id, ADA, "/task [[slow]] think")
        world.telegram.inject_message(ADA.id, ADA, "/cancel")
        with trio.fail_after(60):
            await world.telegram.wait_for_message(ADA.id, containing=f"Session `{sid}` cancelled")
        await no_containers_left(world)
        session = await world.daemon.store.find_session_by_prefix("telegram", str(ADA.id), sid)
        assert session is not None and session.status == "cancelled"


async def test_cancel_while_running_ends_the_turn_and_destroys_the_container(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with running_world(nursery, tmp_path, script()) as world:
        sid = await started(world, ADA.id, ADA, "/task [[slow]] think")
        with trio.fail_after(120):
            await world.telegram.wait_for_message(ADA.id, containing="Thinking about it.")
        world.telegram.inject_message(ADA.id, ADA, f"/cancel {sid[:4]}")
        with trio.fail_after(60):
            await world.telegram.wait_for_message(ADA.id, containing=f"Session `{sid}` cancelled")
        await no_containers_left(world)
        assert "never shown" not in "\n".join(world.telegram.transcript(ADA.id))


async def test_a_session_past_its_timeout_is_stopped_and_the_chat_is_told_why(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with running_world(nursery, tmp_path, script(), timeout_minutes=0.15) as world:
        sid = await started(world, ADA.id, ADA, "/task [[slow]] think")
        with trio.fail_after(120):
            done = await world.telegram.wait_for_message(ADA.id, containing=f"`{sid}` failed")
        assert "timed out after 0.15 min" in done.text
        await no_containers_left(world)


async def test_a_follow_up_message_continues_the_same_session(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with running_world(nursery, tmp_path, script(), idle_minutes=0.25) as world:
        tg = world.telegram
        sid = await started(world, ADA.id, ADA, "/task [[hello]] greet me")
        with trio.fail_after(120):
            await tg.wait_for_message(ADA.id, containing="Hello there.")
        tg.inject_message(ADA.id, ADA, "and what about tests?")
        with trio.fail_after(120):
            await tg.wait_for_message(ADA.id, containing="You said: and what about tests?")
        with trio.fail_after(120):
            await tg.wait_for_message(ADA.id, containing=f"Session `{sid}` completed")
        # One agent session served both prompts.
        prompts = {r.scenario for r in world.model.message_requests}
        assert "hello" in prompts
        await no_containers_left(world)


async def test_two_chats_run_sessions_at_the_same_time(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with running_world(nursery, tmp_path, script()) as world:
        tg = world.telegram
        with trio.fail_after(30):
            await tg.wait_until_polling()
        tg.inject_message(ADA.id, ADA, "/task [[hello]] one")
        tg.inject_message(BOB.id, BOB, "/task [[count]] two")
        with trio.fail_after(180):
            await tg.wait_for_message(ADA.id, containing="completed")
            await tg.wait_for_message(BOB.id, containing="completed")
        assert any("Hello there." in m.text for m in tg.bot_messages(ADA.id))
        assert not any("Hello there." in m.text for m in tg.bot_messages(BOB.id))
        assert any("One, two, three." in m.text for m in tg.bot_messages(BOB.id))
        await no_containers_left(world)


async def test_files_left_in_the_outbox_are_uploaded_to_the_chat(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with running_world(nursery, tmp_path, script()) as world:
        tg = world.telegram
        await started(world, ADA.id, ADA, "/task [[report]] write a report")
        prompt = await _permission_prompt(world, ADA.id)
        tg.press(ADA.id, ADA, prompt.message_id, "Allow")
        with trio.fail_after(120):
            document = await tg.wait_for_document(ADA.id, "report.md")
        assert document.content == b"# Report\nAll good.\n"
        with trio.fail_after(60):
            await tg.wait_for_message(ADA.id, containing="completed")


async def test_only_the_person_who_started_the_task_can_answer_its_permission(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with running_world(nursery, tmp_path, script()) as world:
        tg = world.telegram
        await started(world, GROUP, ADA, "/task [[perm]] run it", chat_type="supergroup")
        prompt = await _permission_prompt(world, GROUP)
        query = tg.press(GROUP, BOB, prompt.message_id, "Allow")
        with trio.fail_after(30):
            answer = await tg.wait_for_callback_answer(query)
        assert "not yours" in answer.text
        assert tg.message(GROUP, prompt.message_id).buttons  # still waiting for Ada
        query = tg.press(GROUP, ADA, prompt.message_id, "Deny")
        with trio.fail_after(30):
            answer = await tg.wait_for_callback_answer(query)
        assert answer.text == "Deny"
        with trio.fail_after(120):
            await tg.wait_for_message(GROUP, containing="completed")
        decided = tg.message(GROUP, prompt.message_id)
        assert decided.buttons == () and "Deny (by @ada)" in decided.text


async def _permission_prompt(world: World, chat: int) -> MessageView:
    tg = world.telegram
    with trio.fail_after(120):
        return await tg.wait_for(
            lambda: next((m for m in tg.bot_messages(chat) if m.buttons), None)
        )
