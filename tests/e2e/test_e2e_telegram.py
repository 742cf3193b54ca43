"""/task from Telegram to a real sandboxed Claude Code and back, as a user sees it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trio

from tests.e2e.harness import running_world
from tests.fakes.model import Bash, Delay, ModelScript, Text
from tests.fakes.telegram import User

pytestmark = pytest.mark.docker

ADA = User(111, "Ada", username="ada")
CHAT = 111


def permission_script() -> ModelScript:
    script = ModelScript()
    script.add(
        "make-file",
        [
            Text("I will create ", "the file ", "now."),
            Bash("touch made.txt", description="Create it"),
        ],
        [Delay(0.2), Text("Created ", "made.txt. ", "All done.")],
    )
    return script


async def test_a_task_streams_asks_permission_runs_the_tool_and_cleans_up(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with running_world(nursery, tmp_path, permission_script()) as world:
        tg = world.telegram
        with trio.fail_after(30):
            await tg.wait_until_polling()
        tg.inject_message(CHAT, ADA, "/task [[make-file]] please create a file")
        with trio.fail_after(20):
            started = await tg.wait_for_message(CHAT, containing="Starting claude-code session")
        session_id = re.search(r"session `([0-9a-f]{8})`", started.text)
        assert session_id is not None
        with trio.fail_after(120):
            prompt = await tg.wait_for(
                lambda: next((m for m in tg.bot_messages(CHAT) if m.buttons), None)
            )
        assert prompt.text.startswith("Permission requested")
        labels = [b.text for row in prompt.buttons for b in row]
        assert "Allow" in labels and "Deny" in labels
        assert any("I will create the file now." in m.text for m in tg.bot_messages(CHAT))
        tg.press(CHAT, ADA, prompt.message_id, "Allow")
        with trio.fail_after(120):
            await tg.wait_for_message(CHAT, containing="completed")
        transcript = "\n".join(tg.transcript(CHAT))
        assert "Created made.txt. All done." in transcript
        decided = tg.message(CHAT, prompt.message_id)
        assert decided.buttons == ()
        assert "Allow (by @ada)" in decided.text
        results = [r for req in world.model.message_requests for r in req.tool_results]
        assert results and not any(r.is_error for r in results)
        await world.wait_until_no_containers()
