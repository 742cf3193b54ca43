"""The warm pool against the real things: a `/task` runs in a sandbox the pool made ready (Docker,
sandbox-agent and Claude Code already up, the ACP session open), its answer streams as usual, the
pool makes another, and when the daemon stops every pooled container is removed."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from anycode_actors.actors.pool import POOL_PREFIX
from tests.e2e.harness import running_world
from tests.fakes.model import ModelScript, Text
from tests.fakes.telegram import User

pytestmark = pytest.mark.docker

ADA = User(111, "Ada", username="ada")


async def test_a_task_takes_a_ready_sandbox_from_the_pool(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    script = ModelScript()
    script.add("hello", [Text("Hello ", "from the pool.")])
    sections = {"pool": {"agents": {"claude-code": 1}}}
    async with running_world(nursery, tmp_path, script, sections=sections) as world:
        pool = world.daemon.pool
        assert pool is not None
        with trio.fail_after(180):
            while pool.ready("claude-code") < 1:  # noqa: ASYNC110 - polls the pool
                await trio.sleep(0.1)
        [pooled] = pool.held()
        tg = world.telegram
        with trio.fail_after(30):
            await tg.wait_until_polling()
        tg.inject_message(ADA.id, ADA, "/task [[hello]] say hello")
        with trio.fail_after(120):
            await tg.wait_for_message(ADA.id, containing="Hello from the pool.")
            await tg.wait_for_message(ADA.id, containing="completed")
        assert pool.claims == 1
        with trio.fail_after(180):
            while pool.ready("claude-code") < 1:  # noqa: ASYNC110 - the pool made another
                await trio.sleep(0.1)
        labels = [c.labels.get("anycode.session", "") for c in world.containers()]
        assert labels and all(label.startswith(POOL_PREFIX) for label in labels)
        assert pooled not in {c.id for c in world.containers()}  # removed with its session
    # The daemon stopped: the pool drained.
    assert world.containers() == []
