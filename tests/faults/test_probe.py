import trio
from pathlib import Path
import pytest
from tests.faults.support import *


async def test_probe_tg(autojump_clock, nursery, tmp_path: Path, monkeypatch) -> None:
    async with telegram_conversation(nursery, tmp_path, monkeypatch) as talk:
        await start_telegram_task(talk)
        for i in range(1, 4):
            await talk.send_note(i)
            await trio.sleep(5)
        await talk.wait_for_prompts(4)
        await talk.wait_for_shown(answer_for("note 3"))
        await trio.sleep(5)
        print("\n".join(talk.telegram.transcript(ADA.id)))
        talk.assert_every_answer_shown_once()
        talk.assert_every_note_asked_once()


async def test_probe_slack(autojump_clock, nursery, tmp_path: Path, monkeypatch) -> None:
    async with slack_conversation(nursery, tmp_path, monkeypatch) as talk:
        await start_slack_task(talk)
        for i in range(1, 4):
            await talk.send_note(i)
            await trio.sleep(5)
        await talk.wait_for_prompts(4)
        await talk.wait_for_shown(answer_for("note 3"))
        await trio.sleep(5)
        print("\n".join(talk.slack.transcript(talk.channel)))
        talk.assert_every_answer_shown_once()
        talk.assert_every_note_asked_once()
