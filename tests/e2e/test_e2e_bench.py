"""Figures for the actor system, measured end to end in one run (run with `-m bench -s`).

- time from the /task update reaching the Telegram stand-in to the prompt reaching the agent
  (the scripted model receiving Claude Code's first request for it: an upper bound that includes
  sandbox creation, sandbox-agent's health, ACP initialize and session/new);
- edits and 429s per session as the stand-in counted them.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import trio

from tests.e2e.harness import running_world
from tests.fakes.model import Delay, ModelScript, Text
from tests.fakes.telegram import User

pytestmark = [pytest.mark.docker, pytest.mark.bench]

RUNS = 5


def script() -> ModelScript:
    steps: list[object] = []
    for i in range(60):
        steps += [Text(f"word{i} "), Delay(0.05)]
    s = ModelScript()
    s.add("stream", steps)
    return s


async def test_bench_task_to_agent_latency_and_edits(nursery: trio.Nursery, tmp_path: Path) -> None:
    async with running_world(nursery, tmp_path, script()) as world:
        tg = world.telegram
        with trio.fail_after(60):
            await tg.wait_until_polling()
        latencies = []
        edits = []
        for run in range(RUNS):
            user = User(1000 + run, f"user{run}")
            before = len(tg.calls_to("editMessageText"))
            start = trio.current_time()
            tg.inject_message(user.id, user, f"/task [[stream]] run {run}")
            with trio.fail_after(120):
                await world.model.wait_for_request(
                    lambda r, n=run: r.is_messages and f"run {n}" in str(r.body)
                )
            latencies.append(trio.current_time() - start)
            with trio.fail_after(120):
                await tg.wait_for_message(user.id, containing="completed")
            edits.append(len(tg.calls_to("editMessageText")) - before)
        rate_limited = [c for c in tg.calls if c.status == 429]
        print([(c.method, c.params.get("chat_id"), c.description) for c in rate_limited])
        print(
            f"\n/task → prompt at the model: median {statistics.median(latencies):.2f} s, "
            f"max {max(latencies):.2f} s over {RUNS} runs"
        )
        print(f"edits per session: {edits}; 429s received: {len(rate_limited)}")
