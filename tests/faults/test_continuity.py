"""Continuity across sandboxes (actors/checkpoint.py) with real parts: the real daemon, real
Docker, sandbox-agent + Claude Code in the test image, the scripted model, and the Telegram
stand-in as the user's eyes.

Turn 1 writes a file and the model's answer names a token; the sandbox is then lost (`docker rm
-f`, `docker kill` mid-turn, a real OOM kill, or removed while the daemon is down); the user's
follow-up is answered in a new sandbox that has the file, and the request the model gets for it
carries turn 1's messages (Claude Code loaded its session file back with `session/load`).
"""

from __future__ import annotations

import gzip
import re
import stat
import statistics
import uuid
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Final

import pytest
import trio

from anycode_actors.actors.checkpoint import CheckpointStore, checkpoint_names
from anycode_actors.agents import open_session
from anycode_actors.sandboxes.base import AgentProcess, SandboxSpec
from tests.e2e.harness import World
from tests.fakes.model import Bash, Delay, ModelScript, Text, Write
from tests.fakes.telegram import User
from tests.faults.agent_support import (
    bot_messages_after,
    chat_says,
    exec_in,
    fault_world,
    last_message_id,
    sandbox_of,
    session_record,
    start_task,
)
from tests.faults.test_daemon_kill import docker_world, remove_containers

pytestmark = pytest.mark.docker

ADA = User(111, "Ada", username="ada")
CHAT = ADA.id
TOKEN: Final = "kiwi-4711"
NOTES: Final = "/workspace/notes.txt"
RESTORED: Final = re.compile(r"restored from the end of turn (\d+), in ([0-9.]+) s")
HOG: Final = "python3 -c \"x = b'x' * (1536 << 20)\""
# As in test_agent_faults.py: the agent gate becomes the OOM killer's preferred victim, so the
# kill takes the container down.
HOG_MAIN: Final = (
    "for p in $(pgrep -f upstream-por[t]); do echo 1000 > /proc/$p/oom_score_adj; done; " + HOG
)


def script() -> ModelScript:
    s = ModelScript()
    s.add(
        "remember",
        [Text("Writing it down."), Write(NOTES, f"{TOKEN}\n")],
        [Text(f"Saved. The token is {TOKEN}.")],
    )
    s.add("recall", [Text("I remember ", "the token.")])
    s.add("slow", [Text("Working ", "on it."), Delay(60), Text("never shown")])
    s.add("hog", [Text("Loading ", "everything."), Bash(HOG_MAIN, description="Load it all")])
    return s


async def turn_one(world: World) -> tuple[str, str, int]:
    """/task [[remember]]: the session id, its container, and the chat position after turn 1's
    answer, once turn 1's checkpoint is stored."""
    before = last_message_id(world, CHAT)
    sid = await start_task(world, CHAT, ADA, "/task [[remember]] note the token")
    container = await sandbox_of(world, CHAT, sid)
    world.telegram.press(CHAT, ADA, await _permission_prompt(world, before), "Allow")
    try:
        await chat_says(world, CHAT, f"The token is {TOKEN}.", after=before, within=90)
    except trio.TooSlowError:
        print(transcript(world))
        raise
    session = await session_record(world, CHAT, sid)
    checkpoints = CheckpointStore.beside(world.config.database.path)
    with trio.fail_after(60):
        while True:
            if checkpoints.info(session.id) is not None:
                break
            await trio.sleep(0.1)
    return sid, container, last_message_id(world, CHAT)


async def follow_up_in_new_sandbox(world: World, sid: str, old: str, after: int) -> str:
    """Wait for the restore line, send the follow-up, check its answer, the file in the new
    sandbox and the model's request; the restore line."""
    try:
        line = await chat_says(
            world, CHAT, "restored from the end of turn", after=after, within=120
        )
    except trio.TooSlowError:
        print(transcript(world))
        raise
    found = RESTORED.search(line.text)
    assert found is not None and found.group(1) == "1", line.text
    new = await sandbox_of(world, CHAT, sid)
    assert new != old
    sent = last_message_id(world, CHAT)
    world.telegram.inject_message(CHAT, ADA, "[[recall]] what was the token?")
    await chat_says(world, CHAT, "I remember the token.", after=sent, within=90)
    code, output = await exec_in(world, new, ["cat", NOTES])
    assert (code, output.strip()) == (0, TOKEN)
    [request] = [
        r
        for r in world.model.message_requests
        if r.last_user is not None and "[[recall]]" in r.last_user.text
    ][-1:]
    history = str(request.messages)
    assert "[[remember]]" in history and f"The token is {TOKEN}." in history, history[:2000]
    return line.text


async def remove(world: World, container: str) -> None:
    await trio.to_thread.run_sync(partial(world.docker.api.remove_container, container, force=True))


async def kill(world: World, container: str) -> None:
    await trio.to_thread.run_sync(world.docker.api.kill, container)


def transcript(world: World, after: int = 0) -> str:
    return "\n".join(f"bot: {m.text}" for m in bot_messages_after(world, CHAT, after))


async def test_a_removed_idle_sandbox_is_restored_and_the_follow_up_has_turn_ones_history(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with fault_world(nursery, tmp_path, script(), idle_minutes=2) as world:
        sid, container, after = await turn_one(world)
        session = await session_record(world, CHAT, sid)
        checkpoints = CheckpointStore.beside(world.config.database.path)
        data = await checkpoints.data(session.id)
        names = checkpoint_names(data)
        assert "workspace/notes.txt" in names, names
        assert any(n.startswith("home/agent/.claude/projects/") for n in names), names
        # Private, and without the sandbox's token or the injected credentials.
        for path in checkpoints.root.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        handle = await world.daemon.provider.reattach(container)
        assert handle is not None and handle.token
        raw = gzip.decompress(data)
        secrets = [handle.token, *world.config.sandbox_env("claude-code").values()]
        for secret in (s for s in secrets if len(s) >= 8):
            assert secret.encode() not in raw, "a secret in the checkpoint"
        await remove(world, container)
        line = await follow_up_in_new_sandbox(world, sid, container, after)
        events = await world.daemon.store.events(session.id)
        assert any(getattr(e.event, "kind", "") == "anycode/restored" for e in events)
        print("\n[continuity] docker rm -f (idle):\n" + transcript(world))
        print(f"[continuity] {line}")
        tg = world.telegram
        tg.inject_message(CHAT, ADA, f"/cancel {sid}")
        await chat_says(world, CHAT, f"Session `{sid}` cancelled", after=after, within=30)
        await world.wait_until_no_containers(within=30)


async def test_a_sandbox_killed_mid_turn_is_restored_and_the_cut_off_turn_is_said(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with fault_world(nursery, tmp_path, script(), idle_minutes=2) as world:
        sid, container, after = await turn_one(world)
        world.telegram.inject_message(CHAT, ADA, "[[slow]] take your time")
        await chat_says(world, CHAT, "Working on it.", after=after, within=60)
        await kill(world, container)
        line = await follow_up_in_new_sandbox(world, sid, container, after)
        assert "Turn 2 was cut off" in line, line
        print(f"\n[continuity] docker kill mid-turn: {line}")
        world.telegram.inject_message(CHAT, ADA, f"/cancel {sid}")
        await chat_says(world, CHAT, f"Session `{sid}` cancelled", after=after, within=30)
        await world.wait_until_no_containers(within=30)


async def test_an_oom_killed_sandbox_is_restored(nursery: trio.Nursery, tmp_path: Path) -> None:
    async with fault_world(
        nursery, tmp_path, script(), idle_minutes=2, docker={"memory": "1g"}
    ) as world:
        sid, container, after = await turn_one(world)
        world.telegram.inject_message(CHAT, ADA, "[[hog]] load it all")
        prompt = await _permission_prompt(world, after)
        world.telegram.press(CHAT, ADA, prompt, "Allow")
        line = await follow_up_in_new_sandbox(world, sid, container, after)
        assert "Turn 2 was cut off" in line, line
        print(f"\n[continuity] OOM kill: {line}")
        world.telegram.inject_message(CHAT, ADA, f"/cancel {sid}")
        await chat_says(world, CHAT, f"Session `{sid}` cancelled", after=after, within=30)
        await world.wait_until_no_containers(within=30)


async def _permission_prompt(world: World, after: int) -> int:
    with trio.fail_after(90):
        message = await world.telegram.wait_for(
            lambda: next((m for m in bot_messages_after(world, CHAT, after) if m.buttons), None)
        )
    return message.message_id


async def test_a_sandbox_removed_while_the_daemon_is_down_is_restored_after_its_restart(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """`anycode run` killed with SIGKILL after turn 1, the container removed, the daemon
    started again: recovery finds the sandbox gone and the checkpoint there."""
    async with docker_world(nursery, tmp_path, script(), idle_minutes=2) as world:
        tg = world.telegram
        await world.daemon.start()
        await world.task("[[remember]] note the token")
        with trio.fail_after(90):
            prompt = await tg.wait_for(
                lambda: next((m for m in tg.bot_messages(CHAT) if m.buttons), None)
            )
        tg.press(CHAT, ADA, prompt.message_id, "Allow")
        await world.wait_for(f"The token is {TOKEN}.", within=90)
        checkpoints = CheckpointStore(tmp_path / "checkpoints")
        with trio.fail_after(60):
            while True:
                if checkpoints.session_ids():
                    break
                await trio.sleep(0.1)
        [old] = await world.containers()
        await world.daemon.kill()
        await remove_containers(world.daemon_id)
        await world.daemon.start()
        line = await world.wait_for("restored from the end of turn 1", within=120)
        print(f"\n[continuity] daemon killed, container removed: {line.text}")
        [new] = await world.containers()
        assert new != old
        tg.inject_message(CHAT, ADA, "[[recall]] what was the token?")
        await world.wait_for("I remember the token.", within=90)
        done = await trio.run_process(
            ["docker", "exec", new, "cat", NOTES], capture_stdout=True, check=False
        )
        assert (done.returncode, done.stdout.decode().strip()) == (0, TOKEN)
        assert world.model is not None
        [request] = [
            r
            for r in world.model.message_requests
            if r.last_user is not None and "[[recall]]" in r.last_user.text
        ][-1:]
        history = str(request.messages)
        assert "[[remember]]" in history and f"The token is {TOKEN}." in history
        tg.inject_message(CHAT, ADA, "/cancel")
        await world.wait_for("cancelled", within=30)
        assert await world.containers_after(30) == []
        assert await world.daemon.stop() == 0


# --- the figure ---------------------------------------------------------------------------------

BENCH_RUNS: Final = 3


async def cold_start(world: World) -> float:
    """Seconds from creating a sandbox of the same image to an open agent session in it."""
    provider = world.daemon.provider
    session_id = uuid.uuid4().hex
    spec = SandboxSpec(
        session_id=session_id,
        agent="claude-code",
        protocol="sandbox-agent",
        env=world.config.sandbox_env("claude-code"),
    )
    started = trio.current_time()
    handle = await provider.create(spec)
    try:

        async def no_spawn(argv: Sequence[str]) -> AgentProcess:
            raise AssertionError("sandbox-agent starts the agent itself")

        async with open_session(
            "sandbox-agent",
            agent=world.config.agent("claude-code"),
            handle=handle,
            spawn=no_spawn,
            session_id=session_id,
            acpx_permissions=world.config.sandbox.acpx_permissions,
        ):
            return trio.current_time() - started
    finally:
        await provider.destroy(handle.id)


@pytest.mark.bench
async def test_bench_restore_beside_a_cold_start(nursery: trio.Nursery, tmp_path: Path) -> None:
    """The restore figure the chat reports (loss noticed → the agent's session reloaded in a
    new sandbox), and the whole outage as the user sees it (`docker rm -f` → the restore line),
    beside a cold start of the same image (create → agent session open) in the same run."""
    restores: list[float] = []
    outages: list[float] = []
    colds: list[float] = []
    async with fault_world(nursery, tmp_path, script(), idle_minutes=2) as world:
        for _ in range(BENCH_RUNS):
            colds.append(await cold_start(world))
        for _ in range(BENCH_RUNS):
            sid, container, after = await turn_one(world)
            removed = trio.current_time()
            await remove(world, container)
            line = await chat_says(world, CHAT, "restored from the end", after=after, within=120)
            outages.append(trio.current_time() - removed)
            found = RESTORED.search(line.text)
            assert found is not None
            restores.append(float(found.group(2)))
            world.telegram.inject_message(CHAT, ADA, f"/cancel {sid}")
            await chat_says(world, CHAT, f"Session `{sid}` cancelled", after=after, within=30)
            await world.wait_until_no_containers(within=30)

    def figures(values: list[float]) -> str:
        runs = ", ".join(f"{value:.2f}" for value in values)
        return f"median {statistics.median(values):.2f} s (runs: {runs})"

    print(
        f"\n[bench] restore (reported): {figures(restores)}"
        f"\n[bench] docker rm -f → restore line: {figures(outages)}"
        f"\n[bench] cold start, same image: {figures(colds)}"
    )
