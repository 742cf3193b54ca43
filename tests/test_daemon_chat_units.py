"""A chat's unit (its flusher and chat actor) in the running daemon: it ends once the chat has
been quiet for `session.chat_idle_minutes`, and the next message of the chat starts a fresh one.
The whole daemon against the Telegram stand-in, on the autojump clock."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.fakes.telegram import FakeTelegram, User
from tests.test_bench_isolation import bench_config, chat_units, running_daemon


async def test_a_quiet_chat_unit_ends_and_the_next_message_starts_a_fresh_one(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    telegram = FakeTelegram()
    await telegram.start(nursery)
    config = bench_config(telegram=telegram, tmp=tmp_path)
    idle = float(config.session.chat_idle_minutes) * 60
    ada = User(4242, "ada")
    async with running_daemon(monkeypatch, telegram, config) as daemon:
        telegram.inject_message(ada.id, ada, "/status")
        with trio.fail_after(60):
            await telegram.wait_for_message(ada.id, containing="session")
        assert chat_units(daemon.registry.snapshot()) == 1
        await trio.sleep(idle + 60)
        assert chat_units(daemon.registry.snapshot()) == 0
        router = daemon.registry.get("root/router")
        assert router is not None and router.info.get("chats") == 0
        telegram.inject_message(ada.id, ada, "/status")
        with trio.fail_after(60):
            await telegram.wait_for(
                lambda: len([m for m in telegram.bot_messages(ada.id) if "session" in m.text]) >= 2
            )
        assert chat_units(daemon.registry.snapshot()) == 1
