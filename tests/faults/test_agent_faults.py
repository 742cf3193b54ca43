"""Fault injection on the agent/sandbox side (issue 11): the real daemon, real Docker, the real
sandbox-agent + Claude Code, the scripted model, and the Telegram stand-in as the user's eyes.

Every test breaks one thing while a session runs and then checks the same five things:
sessions lost (a session that ended without the chat being told, or one the store still calls
active), words lost or repeated, sandboxes leaked (a container left with the daemon's label),
what the user saw, and that the chat can start a new task at once. Each prints a one-line
summary (`pytest -s`).

Real time throughout (real Docker), so waits are bounded and scripts are short: the watchdog
sweeps every 2 s here (30 s by default), which is what bounds how soon a dead sandbox is noticed.
"""

from __future__ import annotations

import re
from contextlib import AbstractAsyncContextManager
from functools import partial
from pathlib import Path
from typing import Any, Final

import pytest
import trio
from docker.client import DockerClient

from anycode_actors.agents import TextDelta
from anycode_actors.config import Config
from anycode_actors.sandboxes.docker import API_TIMEOUT, DockerProvider
from anycode_actors.store import SessionStatus
from tests.e2e.harness import World
from tests.fakes.model import Bash, Delay, ModelScript, Text
from tests.fakes.telegram import MessageView, User
from tests.faults.agent_support import (
    EngineProxy,
    ProxiedAgentProvider,
    a_new_task_works,
    bot_messages_after,
    chat_says,
    chat_says_any,
    container_state,
    exec_in,
    fault_world,
    last_message_id,
    said_after,
    sandbox_of,
    session_record,
    start_task,
    unsettled_sessions,
)

pytestmark = pytest.mark.docker

ADA = User(111, "Ada", username="ada")
CHAT = ADA.id

#: One turn of this many words, a word every DRIP_PAUSE s: long enough (about 32 s) for 20 cuts,
#: each followed by the transport's 1 s reconnect wait.
DRIP_WORDS: Final = [f"w{index:03d} " for index in range(250)]
DRIP_PAUSE: Final = 0.13
SSE_CUTS: Final = 20
#: How long the stream runs between a reconnect and the next cut.
BETWEEN_CUTS: Final = 0.2
#: Enough for Claude Code, its ACP adapter and sandbox-agent (about 400 MB together), not for
#: the command below on top of them.
OOM_LIMIT: Final = "1g"
HOG: Final = "python3 -c \"x = b'x' * (1536 << 20)\""
# The kernel's OOM killer takes the process with the highest badness: the memory hog itself,
# and the sandbox lives on. To have the OOM kill take the container down, the command first
# makes the sandbox's main process (the agent gate, the child tini waits for) the preferred
# victim (oom_score_adj 1000; raising it needs no privilege). `[t]` keeps pgrep from matching
# the shell that runs this, whose children (the hog) would inherit the mark.
HOG_MAIN: Final = (
    "for p in $(pgrep -f upstream-por[t]); do echo 1000 > /proc/$p/oom_score_adj; done; " + HOG
)
#: How long the engine is unreachable. Every engine call fails at once with "connection
#: refused" whatever the length, so 10 s shows the same as 30 s; it only has to outlast the
#: in-flight session's end (about 6 s in), and stay under the provider's cleanup bound (30 s).
ENGINE_OUTAGE: Final = 10.0
STOPPED: Final = "the sandbox stopped unexpectedly"


def script() -> ModelScript:
    s = ModelScript()
    s.add("hello", [Text("Hello ", "there.")])
    s.add("slow", [Text("Working ", "on it."), Delay(60), Text("never shown")])
    s.add("long", [Text("Working ", "on it."), Delay(6), Text(" Finished.")])
    s.add("drip", [step for word in DRIP_WORDS for step in (Text(word), Delay(DRIP_PAUSE))])
    s.add(
        "hog",
        [Text("Loading ", "everything."), Bash(HOG, description="Load it all")],
        [Text("Carrying ", "on.")],
    )
    s.add(
        "hog-main",
        [Text("Loading ", "everything."), Bash(HOG_MAIN, description="Load it all")],
        [Text("never shown")],
    )
    return s


def fault_world_for(
    nursery: trio.Nursery, tmp_path: Path, **options: Any
) -> AbstractAsyncContextManager[World]:
    return fault_world(nursery, tmp_path, script(), **options)


def summary(fault: str, **facts: Any) -> None:
    print(
        f"\n[fault] {fault}: " + "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in facts.items())
    )


async def ends_with_notice(
    world: World, sid: str, text: str, *, after: int, within: float = 30
) -> MessageView:
    """The session's final notice (the first "Session `sid` …" after `after`), which must
    contain `text`."""
    notice = await chat_says(world, CHAT, f"Session `{sid}` ", after=after, within=within)
    assert text in notice.text, notice.text
    return notice


async def assert_settled(world: World) -> None:
    """No session lost: none is still active in the store, and no sandbox is left."""
    assert await unsettled_sessions(world) == []
    await world.wait_until_no_containers(within=30)


async def remove_by_hand(world: World, container: str) -> None:
    """`docker rm -f`."""
    await trio.to_thread.run_sync(partial(world.docker.api.remove_container, container, force=True))


async def permission_prompt(world: World, after: int) -> MessageView:
    tg = world.telegram
    with trio.fail_after(60):
        return await tg.wait_for(
            lambda: next((m for m in bot_messages_after(world, CHAT, after) if m.buttons), None)
        )


# --- 1. the SSE stream cut ----------------------------------------------------------------------


async def test_an_sse_stream_cut_20_times_in_one_turn_shows_every_word_exactly_once(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A TCP proxy between the daemon and the sandbox's agent port resets every connection (RST
    both ways) 20 times during one turn of 250 words, each time once the stream has been back
    for 0.2 s; the first cut also takes the open session/prompt POST.

    Measured: sessions lost 0; words lost 0, repeated 0 (in the event log and in the chat: the
    transport resumes with Last-Event-ID and drops replayed ids); sandboxes leaked 0. The user
    sees the words stream into one message and "Session `…` completed."; nothing about the cuts.
    A new /task answers at once.
    """
    proxied: list[ProxiedAgentProvider] = []

    def make_provider(config: Config, daemon_id: str) -> ProxiedAgentProvider:
        provider = ProxiedAgentProvider(DockerProvider(config.docker, daemon_id), nursery)
        proxied.append(provider)
        return provider

    async with fault_world_for(nursery, tmp_path, make_provider=make_provider) as world:
        before = last_message_id(world, CHAT)
        sid = await start_task(world, CHAT, ADA, "/task [[drip]] count slowly")
        session = await session_record(world, CHAT, sid)
        await chat_says(world, CHAT, "w000", after=before, within=60)
        proxy = proxied[0].proxies[session.id]
        cuts: list[int] = []
        first_cut_at, accepted_before = trio.current_time(), proxy.accepted
        for _ in range(SSE_CUTS):
            accepted = proxy.accepted
            cuts.append(proxy.cut_all())
            # The next cut only once the daemon is back on the stream (a new connection).
            with trio.fail_after(30):
                while proxy.accepted == accepted:  # noqa: ASYNC110 - polls the proxy
                    await trio.sleep(0.02)
            await trio.sleep(BETWEEN_CUTS)
        ended_before_last_cut = any("completed" in t for t in said_after(world, CHAT, before))
        cutting = trio.current_time() - first_cut_at
        reconnects = proxy.accepted - accepted_before
        await ends_with_notice(world, sid, "completed", after=before, within=90)

        events = await world.daemon.store.events(session.id)
        stored = [e.event.text for e in events if isinstance(e.event, TextDelta)]
        shown = re.findall(r"w\d{3}", " ".join(said_after(world, CHAT, before)))
        expected = [word.strip() for word in DRIP_WORDS]
        lost = len(set(expected) - set(shown))
        repeated = len(shown) - len(set(shown))
        record = await session_record(world, CHAT, sid)
        await assert_settled(world)
        await a_new_task_works(world, CHAT, ADA)
        await assert_settled(world)
    summary(
        "SSE cut",
        runs=1,
        cuts=f"{len(cuts)} in {cutting:.0f} s ({sum(cuts)} connections reset, "
        f"{reconnects} reconnects)",
        sessions_lost=0,
        words=f"{len(expected)} sent, {len(shown)} shown, lost {lost}, repeated {repeated}",
        leaked=0,
    )
    assert not ended_before_last_cut, "the turn ended before the last cut: make the drip longer"
    assert all(count >= 1 for count in cuts), cuts
    assert stored == DRIP_WORDS
    assert (lost, repeated) == (0, 0)
    assert shown == expected
    assert record.status == SessionStatus.COMPLETED


# --- 2. sandbox-agent or its gate killed --------------------------------------------------------


KILLS: Final = {
    "sandbox-agent": ["pkill", "-KILL", "-x", "sandbox-agent"],
    "the agent gate": ["pkill", "-KILL", "-f", "upstream-por[t]"],
}


async def test_sandbox_agent_or_its_gate_killed_in_the_container_ends_the_session_clearly(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """`docker exec … pkill -KILL` of sandbox-agent, then (another session) of the agent gate in
    front of it, mid-turn.

    Measured: either way the container stops at once (the gate exits with its child, or is the
    child tini waits for), exit code 137. Sessions lost 0; words lost 0 (what streamed before the
    kill stays; nothing after it existed); sandboxes leaked 0. The user sees "Session `…` failed:
    the sandbox stopped unexpectedly." within about 3 s (the watchdog's next sweep). A new /task
    answers at once.
    """
    seen: dict[str, float] = {}
    async with fault_world_for(nursery, tmp_path) as world:
        for what, command in KILLS.items():
            before = last_message_id(world, CHAT)
            sid = await start_task(world, CHAT, ADA, "/task [[slow]] work on it")
            container = await sandbox_of(world, CHAT, sid)
            await chat_says(world, CHAT, "Working on it.", after=before, within=60)
            code, output = await exec_in(world, container, command)
            assert code == 0, f"{what} was not killed: {output}"
            killed_at = trio.current_time()
            await ends_with_notice(world, sid, f"failed: {STOPPED}", after=before)
            seen[what] = trio.current_time() - killed_at
            assert (await session_record(world, CHAT, sid)).status == SessionStatus.FAILED
            shown = "\n".join(said_after(world, CHAT, before))
            assert "Working on it." in shown and "never shown" not in shown
            await assert_settled(world)
        await a_new_task_works(world, CHAT, ADA)
        await assert_settled(world)
    summary(
        "sandbox-agent / gate killed",
        runs=len(KILLS),
        sessions_lost=0,
        leaked=0,
        user_saw=f"'failed: {STOPPED}' after "
        + ", ".join(f"{what} {delay:.1f} s" for what, delay in seen.items()),
    )


# --- 3. out of memory ---------------------------------------------------------------------------


async def test_an_out_of_memory_sandbox_ends_the_session_clearly_and_leaves_no_container(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A real OOM kill by the kernel, not `docker kill`: `docker.memory = "1g"` (with 64m the
    agent itself cannot run: the next test) and a scripted turn in which the agent runs a
    command that fills 1.5 GB.

    Measured, first session: the kernel kills the command itself; the agent gets the failed
    tool result, the user sees "✗ … failed", the agent's next words and "completed": an OOM
    inside the sandbox is no sandbox fault. Second session: the command first makes the
    sandbox's main process (the agent gate) the OOM killer's choice; the container stops
    (OOMKilled true, exit 137) and the user sees "Session `…` failed: the sandbox stopped
    unexpectedly: it ran out of memory (limit 1 GiB)" within about 3 s. Sessions lost 0,
    sandboxes leaked 0, and a new /task answers at once.
    """
    tg_seen: dict[str, str] = {}
    async with fault_world_for(nursery, tmp_path, docker={"memory": OOM_LIMIT}) as world:
        tg = world.telegram
        # The command is killed, the sandbox lives on.
        before = last_message_id(world, CHAT)
        sid = await start_task(world, CHAT, ADA, "/task [[hog]] load everything")
        prompt = await permission_prompt(world, before)
        tg.press(CHAT, ADA, prompt.message_id, "Allow")
        await chat_says(world, CHAT, "Carrying on.", after=before, within=60)
        await ends_with_notice(world, sid, "completed", after=before)
        results = [r for q in world.model.message_requests for r in q.tool_results]
        assert results and results[-1].is_error, results
        assert any("failed" in t and "python3" in t for t in said_after(world, CHAT, before))
        tg_seen["command"] = "✗ … failed, Carrying on., completed"
        await assert_settled(world)

        # The sandbox's main process is killed: the container stops.
        before = last_message_id(world, CHAT)
        sid = await start_task(world, CHAT, ADA, "/task [[hog-main]] load everything")
        container = await sandbox_of(world, CHAT, sid)
        prompt = await permission_prompt(world, before)
        tg.press(CHAT, ADA, prompt.message_id, "Allow")
        state = None
        with trio.fail_after(60):
            while state is None or state["Running"]:
                state = await container_state(world, container)
                assert state is not None, "removed before it was seen stopped"
                await trio.sleep(0.1)
        assert (state["OOMKilled"], state["ExitCode"]) == (True, 137), state
        notice = await ends_with_notice(
            world, sid, f"failed: {STOPPED}: it ran out of memory (limit 1 GiB)", after=before
        )
        tg_seen["main process"] = notice.text
        assert "never shown" not in "\n".join(said_after(world, CHAT, before))
        await assert_settled(world)
        await a_new_task_works(world, CHAT, ADA)
        await assert_settled(world)
    summary(
        "OOM (real, memory = 1g)",
        runs=2,
        sessions_lost=0,
        leaked=0,
        user_saw=tg_seen,
    )


async def test_a_sandbox_too_small_for_the_agent_fails_each_session_at_once(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """`docker.memory = "64m"`, the brief's tiny limit: sandbox-agent and the gate start (about
    35 MB), then the kernel kills the agent (Claude Code and its ACP adapter need about 400 MB)
    as soon as the first prompt starts it; claude-agent-acp 0.101.0 is killed while it starts,
    before it answers `initialize`, and only sandbox-agent's event stream says so. The container
    lives on.

    Measured: the user sees "Session `…` failed: lost the connection to the agent: the agent
    process exited: killed by a signal (a process in it ran out of memory (limit 64 MiB))"
    about 2 s after /task (the container's cgroup counts the kernel's OOM kills); a second
    /task fails the same way at once, it does not hang.
    Sessions lost 0, sandboxes leaked 0.
    """
    seen: list[str] = []
    async with fault_world_for(nursery, tmp_path, docker={"memory": "64m"}) as world:
        for _ in range(2):
            before = last_message_id(world, CHAT)
            sid = await start_task(world, CHAT, ADA, "/task [[hello]] are you there?")
            notice = await ends_with_notice(
                world, sid, "failed: lost the connection to the agent", after=before
            )
            assert "a process in it ran out of memory (limit 64 MiB)" in notice.text, notice.text
            seen.append(notice.text)
            assert "Hello there." not in "\n".join(said_after(world, CHAT, before))
            await assert_settled(world)
    summary("OOM (memory = 64m)", runs=2, sessions_lost=0, leaked=0, user_saw=seen[-1])


# --- 4. the container removed by hand -----------------------------------------------------------


async def test_a_container_removed_by_hand_ends_the_session_and_a_new_task_starts_at_once(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """`docker rm -f` of a session's container mid-turn.

    Measured: sessions lost 0; words lost 0 (the text before the removal stays); sandboxes
    leaked 0 (it is gone, and the daemon's own removal finds nothing and does not complain).
    The user sees "Session `…` failed: the sandbox stopped unexpectedly" within about 3 s, and a
    /task sent right after that notice answers at once.
    """
    async with fault_world_for(nursery, tmp_path) as world:
        before = last_message_id(world, CHAT)
        sid = await start_task(world, CHAT, ADA, "/task [[slow]] work on it")
        container = await sandbox_of(world, CHAT, sid)
        await chat_says(world, CHAT, "Working on it.", after=before, within=60)
        await remove_by_hand(world, container)
        removed_at = trio.current_time()
        await ends_with_notice(world, sid, f"failed: {STOPPED}", after=before)
        told_after = trio.current_time() - removed_at
        assert (await session_record(world, CHAT, sid)).status == SessionStatus.FAILED
        assert "Working on it." in "\n".join(said_after(world, CHAT, before))
        started_at = trio.current_time()
        await a_new_task_works(world, CHAT, ADA)
        answered_after = trio.current_time() - started_at
        await assert_settled(world)
    summary(
        "docker rm -f",
        runs=1,
        sessions_lost=0,
        leaked=0,
        user_saw=f"'failed: {STOPPED}' after {told_after:.1f} s; "
        f"a new /task answered in {answered_after:.1f} s",
    )


# --- 5. a follow-up that reaches a session while it ends ----------------------------------------


FOLLOW_UP_DELAYS: Final = (1.0, 5.0)


async def test_a_follow_up_sent_while_the_session_ends_is_answered_never_dropped(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """An idle session (its turn is over; `idle_minutes = 2`, so it waits for a follow-up) loses
    its container (`docker rm -f`); the user's follow-up comes 1 s later and, in a second
    session, 5 s later (it has ended). 1 s always lands while the session lives: the watchdog
    notices within its 2 s sweep, and the session then spends at least 1.75 s telling the dead
    agent to cancel (four POST attempts) before it ends.

    Measured: at 1 s the session takes the follow-up, ends (the watchdog finds the sandbox
    gone) and says "Not delivered to the agent: “…” (from @ada): session `…` ended. Start a new
    one with /task <prompt>." after its "failed: the sandbox stopped unexpectedly"; at 5 s the
    chat answers "No active session. Start one with /task <prompt>". Each follow-up gets exactly
    one answer. Sessions lost 0, sandboxes leaked 0, and a new /task answers at once.
    """
    follow_up = "and what about tests?"
    answers: dict[float, str] = {}
    # Without checkpoints: the lost sandbox ends the session (tests/faults/test_continuity.py
    # has the session carried into a new sandbox instead).
    async with fault_world_for(nursery, tmp_path, idle_minutes=2, checkpoint_max_mb=0) as world:
        tg = world.telegram
        for delay in FOLLOW_UP_DELAYS:
            before = last_message_id(world, CHAT)
            sid = await start_task(world, CHAT, ADA, "/task [[hello]] greet me")
            container = await sandbox_of(world, CHAT, sid)
            await chat_says(world, CHAT, "Hello there.", after=before, within=60)
            await trio.sleep(0.5)  # the turn's end reached the session: it idles
            await remove_by_hand(world, container)
            await trio.sleep(delay)
            sent = last_message_id(world, CHAT)
            tg.inject_message(CHAT, ADA, follow_up)
            pattern = (
                rf"Not delivered to the agent: “{re.escape(follow_up)}”.*"
                rf"session `{sid}` ended.*/task|No active session.*/task"
            )
            answer = await chat_says_any(world, CHAT, pattern, after=sent, within=30)
            answers[delay] = answer.text
            await ends_with_notice(world, sid, f"failed: {STOPPED}", after=before)
            await trio.sleep(1)  # a second answer would come by now
            said = said_after(world, CHAT, sent)
            assert len([t for t in said if re.search(pattern, t, re.DOTALL)]) == 1, said
            await assert_settled(world)
        sid = await a_new_task_works(world, CHAT, ADA, completes=False)
        before = last_message_id(world, CHAT)
        tg.inject_message(CHAT, ADA, f"/cancel {sid}")
        await ends_with_notice(world, sid, "cancelled", after=before)
        await assert_settled(world)
    summary(
        "follow-up while ending",
        runs=len(FOLLOW_UP_DELAYS),
        sessions_lost=0,
        leaked=0,
        user_saw={f"{delay:g} s": text for delay, text in answers.items()},
    )
    assert "Not delivered" in answers[FOLLOW_UP_DELAYS[0]], answers


# --- 6. the Docker engine unreachable -----------------------------------------------------------


async def test_an_unreachable_docker_engine_refuses_new_tasks_and_recovers_when_it_returns(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The daemon's docker client talks to the engine through a TCP proxy in front of its Unix
    socket; the proxy goes down (connection refused) for 10 s while a session streams.

    Measured: the session in flight is not touched (its agent is reached on its published port,
    not through the engine; the watchdog's failed liveness checks count as alive): /status
    lists it as running, its turn finishes, and its "completed" notice comes once its sandbox
    is removed, which the provider retries until the engine answers. A /task during the outage
    gets "Session `…` failed: could not start, sandboxes cannot be created right now (could
    not create a container from image …: cannot reach the Docker engine (is dockerd running,
    and may this user use its socket?)). Nothing ran; send the task again in a few minutes.".
    When the engine is back a new /task answers at once. Sessions lost 0, sandboxes leaked 0.
    """
    engine = EngineProxy()
    await engine.start(nursery)

    def make_provider(config: Config, daemon_id: str) -> DockerProvider:
        def client() -> DockerClient:
            return DockerClient(base_url=engine.base_url, timeout=int(API_TIMEOUT))

        return DockerProvider(config.docker, daemon_id, client_factory=client)

    async with fault_world_for(nursery, tmp_path, make_provider=make_provider) as world:
        tg = world.telegram
        before = last_message_id(world, CHAT)
        in_flight = await start_task(world, CHAT, ADA, "/task [[long]] work on it")
        await sandbox_of(world, CHAT, in_flight)
        await chat_says(world, CHAT, "Working on it.", after=before, within=60)

        engine.down()
        down_at = trio.current_time()
        during = last_message_id(world, CHAT)
        refused = await start_task(world, CHAT, ADA, "/task [[hello]] during the outage")
        refusal = await ends_with_notice(
            world, refused, "cannot reach the Docker engine", after=during
        )
        refused_after = trio.current_time() - down_at
        asked = last_message_id(world, CHAT)
        tg.inject_message(CHAT, ADA, "/status")
        status = await chat_says(world, CHAT, "Active sessions:", after=asked)
        assert f"`{in_flight}` | claude-code | running" in status.text, status.text
        await chat_says(world, CHAT, "Working on it. Finished.", after=before, within=30)
        await trio.sleep_until(down_at + ENGINE_OUTAGE)
        leftover_during_outage = len(await trio.to_thread.run_sync(world.containers))

        await engine.up()
        up_at = trio.current_time()
        await ends_with_notice(world, in_flight, "completed", after=before, within=40)
        completed_after_up = trio.current_time() - up_at
        await world.wait_until_no_containers(within=30)
        removed_after_up = trio.current_time() - up_at
        await a_new_task_works(world, CHAT, ADA)
        await assert_settled(world)
        statuses = {
            sid: (await session_record(world, CHAT, sid)).status for sid in (in_flight, refused)
        }
    summary(
        f"Docker engine unreachable for {ENGINE_OUTAGE:g} s",
        runs=1,
        sessions_lost=0,
        leaked=f"0 ({leftover_during_outage} container kept during the outage, removed "
        f"{removed_after_up:.1f} s after the engine returned)",
        user_saw=f"refusal after {refused_after:.1f} s: {refusal.text!r}; the in-flight "
        f"session completed {completed_after_up:.1f} s after the engine returned",
    )
    assert statuses == {in_flight: SessionStatus.COMPLETED, refused: SessionStatus.FAILED}
    assert "sandboxes cannot be created right now" in refusal.text
    assert "send the task again in a few minutes" in refusal.text
