"""`anycode run` as a real process: killed mid-stream and started again, and stopped by SIGTERM.

The daemon runs as a subprocess with a config file, exactly as an operator runs it; the chat
stand-in and the scripted model run in the test; the agent runs in real Docker sandboxes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from anycode_actors.config import dump_toml
from tests.docker_support import require_or_skip
from tests.e2e.harness import e2e_config_data, image_or_skip
from tests.fakes._http import Served, serve_asgi
from tests.fakes.model import Delay, ModelScript, ScriptedModel, Text, docker_bridge_gateway
from tests.fakes.telegram import FakeTelegram, User

pytestmark = pytest.mark.docker

ADA = User(111, "Ada", username="ada")
BOB = User(222, "Bob", username="bob")
WORDS = [f"w{i:02d}" for i in range(40)]


def script() -> ModelScript:
    steps: list[object] = []
    for word in WORDS:
        steps += [Text(f"{word} "), Delay(0.12)]
    s = ModelScript()
    s.add("long", steps)
    s.add("slow", [Text("Thinking ", "about it."), Delay(60), Text("never shown")])
    return s


class Process:
    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.process: trio.Process | None = None

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANYCODE_")}
        handle = self.log.open("ab")
        self.process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "anycode_actors", "run", "--config", str(self.config)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
        )
        handle.close()

    async def stop(self, signum: int, within: float = 60) -> int:
        assert self.process is not None
        self.process.send_signal(signum)
        with trio.fail_after(within):
            return await self.process.wait()


@asynccontextmanager
async def world(
    nursery: trio.Nursery, tmp: Path
) -> AsyncIterator[tuple[FakeTelegram, Process, str]]:
    await trio.to_thread.run_sync(image_or_skip)
    gateway = await trio.to_thread.run_sync(docker_bridge_gateway)
    if gateway is None:
        require_or_skip("Docker's bridge network has no gateway address")
    telegram = FakeTelegram()
    url = await telegram.start(nursery)
    served: Served = await nursery.start(serve_asgi, ScriptedModel(script()).app, gateway)
    data = e2e_config_data(tmp, url, telegram.token, served.base_url)
    config = tmp / "config.toml"
    config.write_text(dump_toml(data))
    daemon = Process(config, tmp / "daemon.log")
    try:
        yield telegram, daemon, str(tmp)
    finally:
        if daemon.process is not None and daemon.process.returncode is None:
            daemon.process.kill()
            await daemon.process.wait()


def words_shown(telegram: FakeTelegram, chat: int) -> list[str]:
    text = " ".join(m.text for m in telegram.bot_messages(chat))
    return re.findall(r"\bw\d\d\b", text)


async def test_a_daemon_killed_mid_stream_resumes_with_nothing_lost_or_repeated(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with world(nursery, tmp_path) as (tg, daemon, _):
        await daemon.start()
        with trio.fail_after(60):
            await tg.wait_until_polling()
        tg.inject_message(ADA.id, ADA, "/task [[long]] count for me")
        with trio.fail_after(120):
            await tg.wait_for(lambda: len(words_shown(tg, ADA.id)) >= 8 or None)
        await daemon.stop(signal.SIGKILL)
        shown_before = words_shown(tg, ADA.id)
        assert 8 <= len(shown_before) < len(WORDS), "killed mid-stream"

        await daemon.start()
        with trio.fail_after(180):
            await tg.wait_for_message(ADA.id, containing="completed")
        assert any("continues where it was" in m.text for m in tg.bot_messages(ADA.id))
        assert words_shown(tg, ADA.id) == WORDS
        assert await daemon.stop(signal.SIGTERM) == 0


async def test_sigterm_with_two_live_sessions_tells_both_chats_and_leaves_no_container(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with world(nursery, tmp_path) as (tg, daemon, _):
        await daemon.start()
        with trio.fail_after(60):
            await tg.wait_until_polling()
        tg.inject_message(ADA.id, ADA, "/task [[slow]] one")
        tg.inject_message(BOB.id, BOB, "/task [[slow]] two")
        with trio.fail_after(120):
            await tg.wait_for_message(ADA.id, containing="Thinking about it.")
            await tg.wait_for_message(BOB.id, containing="Thinking about it.")
        assert await daemon.stop(signal.SIGTERM) == 0
        for chat in (ADA.id, BOB.id):
            assert any(
                "cancelled (the daemon is shutting down)" in m.text for m in tg.bot_messages(chat)
            )
        log = (tmp_path / "daemon.log").read_text()
        daemon_id = re.search(r"daemon id (d[0-9a-f]+)", log)
        assert daemon_id is not None
        left = await trio.run_process(
            ["docker", "ps", "-aq", "--filter", f"label=anycode.daemon={daemon_id.group(1)}"],
            capture_stdout=True,
        )
        assert left.stdout.decode().split() == []
