"""The agent protocols against the real agent stack: no mock of any agent.

sandbox-agent, Claude Code, claude-agent-acp and acpx at the versions of
anycode_actors/agents/stack.txt (installed from npm by tests/agent_stack.py) run as local
processes against the scripted model
(tests/fakes/model.py), offline. The same scenarios run through sandbox-agent (HTTP + SSE) and
through stdio ACP; acpx runs them under its permission policies. A TCP proxy cuts sandbox-agent's
event stream mid-turn to prove that no delta is lost or repeated.

Real processes, real time: every test is bounded with `trio.fail_after`, never the autojump clock.
Figures (time to first text): ``pytest tests/test_agents_real.py -m bench -s``.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
import trio

from anycode_actors.agents import (
    AcpClient,
    AcpSession,
    AcpxLaunch,
    AcpxSession,
    AgentEvent,
    PermissionRequested,
    PermissionResolved,
    ReconnectPolicy,
    SessionEnded,
    TextDelta,
    ToolCall,
    TurnEnded,
    open_acp_client,
    open_acpx_session,
    open_local_stdio_client,
    open_sandbox_agent_client,
    open_sandbox_agent_transport,
)
from anycode_actors.errors import (
    AgentAuthError,
    AgentClosedError,
    AgentNotReadyError,
    PermissionAnswerError,
    TurnInProgressError,
)
from anycode_actors.sandboxes.process import LocalProcess
from tests.agent_stack import AgentStack, requires_agent_stack
from tests.fakes._http import serve_asgi
from tests.fakes.model import Bash, Delay, ModelScript, RecordedRequest, ScriptedModel, Text
from tests.fakes.tcp_proxy import TcpProxy

#: Seconds any one test of the real stack may take (a turn takes about 1 s, acpx about 5 s).
REAL_BOUND: Final = 120.0
STOP_GRACE: Final = 3.0
TOKEN: Final = "sa-test-token-" + "5f3c9a1e" * 4
AGENT: Final = "claude"

DRIP_WORDS: Final = [f"w{index:03d} " for index in range(100)]

SCRIPT = ModelScript()
SCRIPT.add("hello", [Text("Hello ", "from ", "the agent")])
SCRIPT.add(
    "allow",
    [Text("Creating it."), Bash("touch allowed.txt", description="Create a file")],
    [Text("done")],
)
SCRIPT.add("reject", [Bash("touch rejected.txt")], [Text("understood")])
# Claude Code offers "allow always" only with a rule it proposes for the command ("git init *");
# for `touch` it proposes none, and claude-agent-acp then offers allow once and reject only.
SCRIPT.add(
    "always",
    [Bash("git init -q first")],
    [Bash("git init -q second")],
    [Text("both done")],
)
SCRIPT.add("pending", [Text("About to run."), Bash("touch never.txt")], [Text("never")])
SCRIPT.add("slow", [Text("first "), Delay(60), Text("never")])
SCRIPT.add("drip", [step for word in DRIP_WORDS for step in (Text(word), Delay(0.05))])


@pytest.fixture(scope="session")
def agent_stack() -> AgentStack:
    return requires_agent_stack()


@dataclass
class Rig:
    """The scripted model and the folders and environment of one test."""

    stack: AgentStack
    model: ScriptedModel
    env: dict[str, str]
    work: Path
    logs: Path


@pytest.fixture
async def rig(agent_stack: AgentStack, nursery: trio.Nursery, tmp_path: Path) -> Rig:
    model = ScriptedModel(SCRIPT)
    served = await nursery.start(serve_asgi, model.app, "127.0.0.1")
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    return Rig(agent_stack, model, agent_stack.offline_env(served.base_url, home), work, tmp_path)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    process: trio.Process
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@asynccontextmanager
async def sandbox_agent_server(rig: Rig, *, token: str = TOKEN) -> AsyncIterator[Server]:
    """`sandbox-agent server` on a free loopback port, in its own process group (the ACP adapter
    and Claude Code it starts are stopped with it)."""
    port = free_port()
    log_path = rig.logs / f"sandbox-agent-{port}.log"
    with log_path.open("wb") as log:
        process = await trio.lowlevel.open_process(
            [
                str(rig.stack.sandbox_agent),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--token",
                token,
                "--no-telemetry",
            ],
            env=rig.env,
            cwd=rig.work,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:
        yield Server(process, port)
    finally:
        with trio.CancelScope(shield=True):
            stop_group(process)
            with trio.move_on_after(STOP_GRACE):
                await process.wait()
            stop_group(process, signal.SIGKILL)
            await process.wait()


def stop_group(process: trio.Process, signum: int = signal.SIGTERM) -> None:
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


@asynccontextmanager
async def acp_client(rig: Rig, transport: str) -> AsyncIterator[AcpClient]:
    if transport == "sandbox-agent":
        async with (
            sandbox_agent_server(rig) as server,
            open_sandbox_agent_client(server.url, token=TOKEN, agent=AGENT) as client,
        ):
            yield client
    else:
        async with open_local_stdio_client(
            [str(rig.stack.claude_agent_acp)], env=rig.env, cwd=rig.work
        ) as client:
            yield client


OnEvent = Callable[[AgentEvent], Awaitable[None]]


async def run_turn(
    session: AcpSession | AcpxSession, prompt: str, on_event: OnEvent | None = None
) -> list[AgentEvent]:
    """Prompt, and collect the events up to and including TurnEnded."""
    turn = await session.prompt(prompt)
    events: list[AgentEvent] = []
    async for event in session.events:
        events.append(event)
        if on_event is not None:
            await on_event(event)
        if isinstance(event, TurnEnded | SessionEnded):
            break
    assert turn.done
    return events


def choose(session: AcpSession, kind: str) -> OnEvent:
    async def answer(event: AgentEvent) -> None:
        if isinstance(event, PermissionRequested):
            option = event.option(kind)
            assert option is not None, event.options
            await session.respond_permission(event.key, option.option_id)

    return answer


def ended(events: list[AgentEvent]) -> TurnEnded:
    """The TurnEnded that closes `events`."""
    last = events[-1]
    assert isinstance(last, TurnEnded), last
    return last


def texts(events: list[AgentEvent]) -> list[str]:
    return [event.text for event in events if isinstance(event, TextDelta)]


def of(kind: type, events: list[AgentEvent]) -> list[Any]:
    return [event for event in events if isinstance(event, kind)]


def assert_numbered(events: list[AgentEvent], first: int = 1) -> None:
    assert [event.seq for event in events] == list(range(first, first + len(events)))


def assistant_texts(request: RecordedRequest) -> list[str]:
    found = []
    for message in request.messages:
        if message.get("role") == "assistant":
            for block in message.get("content") or []:
                if isinstance(block, dict) and block.get("type") == "text":
                    found.append(block["text"])
    return found


TRANSPORTS = ["sandbox-agent", "stdio"]


# --- the same scenarios through sandbox-agent and through stdio --------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_prompt_streams_its_text_deltas_in_order(rig: Rig, transport: str) -> None:
    with trio.fail_after(REAL_BOUND):
        async with acp_client(rig, transport) as client:
            info = await client.initialize()
            session = await client.new_session(str(rig.work))
            events = await run_turn(session, "[[hello]]")
    assert info.agent_name == "@agentclientprotocol/claude-agent-acp"
    assert texts(events) == ["Hello ", "from ", "the agent"]
    assert events[-1] == TurnEnded(
        seq=events[-1].seq, cursor=events[-1].cursor, stop_reason="end_turn"
    )
    assert_numbered(events)
    if transport == "sandbox-agent":
        cursors = [int(event.cursor) for event in events if event.cursor is not None]
        assert cursors == sorted(cursors)
        assert len(cursors) == len(events)
    else:
        assert all(event.cursor is None for event in events)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_an_allowed_bash_call_runs_the_command(rig: Rig, transport: str) -> None:
    with trio.fail_after(REAL_BOUND):
        async with acp_client(rig, transport) as client:
            await client.initialize()
            session = await client.new_session(str(rig.work))
            events = await run_turn(session, "[[allow]]", choose(session, "allow_once"))
    assert (rig.work / "allowed.txt").exists()
    [requested] = of(PermissionRequested, events)
    assert requested.input_summary == "touch allowed.txt"
    assert {o.kind for o in requested.options} >= {"allow_once", "reject_once"}
    [resolved] = of(PermissionResolved, events)
    assert (resolved.key, resolved.outcome, resolved.option_kind, resolved.by) == (
        requested.key,
        "selected",
        "allow_once",
        "user",
    )
    completed = [call for call in of(ToolCall, events) if call.phase == "completed"]
    assert [(c.status, c.kind, c.tool_name) for c in completed] == [
        ("completed", "execute", "Bash")
    ]
    assert texts(events) == ["Creating it.", "done"]
    assert ended(events).stop_reason == "end_turn"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_rejected_bash_call_does_not_run(rig: Rig, transport: str) -> None:
    with trio.fail_after(REAL_BOUND):
        async with acp_client(rig, transport) as client:
            await client.initialize()
            session = await client.new_session(str(rig.work))
            events = await run_turn(session, "[[reject]]", choose(session, "reject_once"))
    assert not (rig.work / "rejected.txt").exists()
    [resolved] = of(PermissionResolved, events)
    assert resolved.option_kind == "reject_once"
    [failed] = [call for call in of(ToolCall, events) if call.phase == "completed"]
    assert failed.failed
    # A rejection does not end the turn: the model hears of it and answers.
    assert texts(events) == ["understood"]
    assert ended(events).stop_reason == "end_turn"
    [rejection] = rig.model.message_requests[1].tool_results
    assert rejection.is_error


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_allow_always_is_offered_and_holds_for_the_session(rig: Rig, transport: str) -> None:
    with trio.fail_after(REAL_BOUND):
        async with acp_client(rig, transport) as client:
            await client.initialize()
            session = await client.new_session(str(rig.work))
            events = await run_turn(session, "[[always]]", choose(session, "allow_always"))
    assert (rig.work / "first" / ".git").is_dir()
    assert (rig.work / "second" / ".git").is_dir()
    assert len(of(PermissionRequested, events)) == 1  # the second command was not asked about
    assert of(PermissionResolved, events)[0].option_kind == "allow_always"
    assert texts(events) == ["both done"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_follow_up_prompt_continues_the_same_session(rig: Rig, transport: str) -> None:
    with trio.fail_after(REAL_BOUND):
        async with acp_client(rig, transport) as client:
            await client.initialize()
            session = await client.new_session(str(rig.work))
            first_turn = await session.prompt("[[hello]]")
            with pytest.raises(TurnInProgressError):
                await session.prompt("too early")
            first = []
            async for event in session.events:
                first.append(event)
                if isinstance(event, TurnEnded):
                    break
            assert await first_turn.wait() == "end_turn"
            second = await run_turn(session, "what did you say?")
    assert texts(first) == ["Hello ", "from ", "the agent"]
    assert "".join(texts(second)) == "You said: what did you say?"
    assert_numbered(first + second)
    follow_up = rig.model.message_requests[-1]
    assert follow_up.last_user is not None
    assert follow_up.last_user.text == "what did you say?"
    assert "Hello from the agent" in assistant_texts(follow_up)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cancel_answers_the_pending_permission_and_ends_the_turn(
    rig: Rig, transport: str
) -> None:
    with trio.fail_after(REAL_BOUND):
        async with acp_client(rig, transport) as client:
            await client.initialize()
            session = await client.new_session(str(rig.work))

            async def cancel_when_asked(event: AgentEvent) -> None:
                if isinstance(event, PermissionRequested):
                    assert session.pending_permissions == (event,)
                    await session.cancel()

            events = await run_turn(session, "[[pending]]", cancel_when_asked)
            assert session.pending_permissions == ()
    [resolved] = of(PermissionResolved, events)
    assert (resolved.outcome, resolved.by) == ("cancelled", "cancel")
    assert ended(events).stop_reason == "cancelled"
    assert not (rig.work / "never.txt").exists()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cancel_mid_text_ends_the_turn(rig: Rig, transport: str) -> None:
    with trio.fail_after(REAL_BOUND):
        async with acp_client(rig, transport) as client:
            await client.initialize()
            session = await client.new_session(str(rig.work))

            async def cancel_on_text(event: AgentEvent) -> None:
                if isinstance(event, TextDelta):
                    await session.cancel()

            started = trio.current_time()
            events = await run_turn(session, "[[slow]]", cancel_on_text)
            elapsed = trio.current_time() - started
    assert texts(events) == ["first "]
    assert ended(events).stop_reason == "cancelled"
    assert elapsed < 30  # the model would have kept the turn open for a minute
    [request] = rig.model.message_requests
    assert not request.completed


async def test_the_first_prompt_after_a_cancel_gets_its_own_answer(rig: Rig) -> None:
    with trio.fail_after(REAL_BOUND):
        async with acp_client(rig, "stdio") as client:
            await client.initialize()
            session = await client.new_session(str(rig.work))

            async def cancel_on_text(event: AgentEvent) -> None:
                if isinstance(event, TextDelta):
                    await session.cancel()

            await run_turn(session, "[[slow]]", cancel_on_text)
            after = await run_turn(session, "[[hello]]")
    assert texts(after) == ["Hello ", "from ", "the agent"]


# --- sandbox-agent only ------------------------------------------------------------------------


async def test_a_cut_event_stream_loses_and_repeats_no_delta(
    rig: Rig, nursery: trio.Nursery
) -> None:
    cut_at = (15, 40, 65)
    with trio.fail_after(REAL_BOUND):
        async with sandbox_agent_server(rig) as server:
            proxy = TcpProxy("127.0.0.1", server.port)
            await nursery.start(proxy.serve)
            async with (
                open_sandbox_agent_transport(proxy.url, token=TOKEN, agent=AGENT) as transport,
                open_acp_client(transport) as client,
            ):
                await client.initialize()
                session = await client.new_session(str(rig.work))
                received: list[str] = []
                cuts: list[int] = []

                async def cut(event: AgentEvent) -> None:
                    if isinstance(event, TextDelta):
                        received.append(event.text)
                        if len(received) in cut_at:
                            cuts.append(proxy.cut_all())

                events = await run_turn(session, "[[drip]]", cut)
    lost = len(set(DRIP_WORDS) - set(received))
    duplicated = len(received) - len(set(received))
    print(
        f"\nSSE cut {len(cut_at)} times mid-turn ({sum(cuts)} connections reset, "
        f"{transport.stats.reconnects} reconnects, {transport.stats.duplicates_dropped} replayed "
        f"events dropped): {len(DRIP_WORDS)} deltas sent, {len(received)} received, "
        f"lost {lost}, duplicated {duplicated}"
    )
    assert (lost, duplicated) == (0, 0)
    assert received == DRIP_WORDS
    assert all(count >= 1 for count in cuts)
    assert transport.stats.reconnects >= len(cut_at)
    assert ended(events).stop_reason == "end_turn"
    assert_numbered(events)


async def test_a_restarted_daemon_reattaches_and_resumes_after_its_last_event(rig: Rig) -> None:
    with trio.fail_after(REAL_BOUND):
        async with sandbox_agent_server(rig) as server:
            url = server.url
            before: list[AgentEvent] = []
            async with (
                open_sandbox_agent_transport(
                    url, token=TOKEN, agent=AGENT, delete_on_close=False
                ) as transport,
                open_acp_client(transport) as client,
            ):
                await client.initialize()
                session = await client.new_session(str(rig.work))
                await session.prompt("[[drip]]")
                async for event in session.events:
                    before.append(event)
                    if len(texts(before)) == 20:
                        break
                server_id = transport.server_id
            # The "daemon" is gone; the agent kept going. A new one attaches with what it stored.
            stored = before[-1]
            async with (
                open_sandbox_agent_transport(
                    url,
                    token=TOKEN,
                    agent=AGENT,
                    server_id=server_id,
                    attach=True,
                    last_event_id=stored.cursor,
                ) as transport,
                open_acp_client(transport) as client,
            ):
                session = client.attach_session(
                    session.session_id, first_seq=stored.seq + 1, turn_running=True
                )
                after = []
                async for event in session.events:
                    after.append(event)
                    if isinstance(event, TurnEnded):
                        break
    assert texts(before) + texts(after) == DRIP_WORDS
    assert_numbered(before + after)
    assert ended(after).stop_reason == "end_turn"


async def test_a_server_that_is_not_there_gives_a_clear_bounded_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with trio.fail_after(30), pytest.raises(AgentNotReadyError) as caught:
        async with open_sandbox_agent_client(url, token=TOKEN, agent=AGENT, health_timeout=2):
            pass
    assert time.monotonic() - started < 5
    assert f"sandbox-agent at {url} was not healthy within 2 s" in str(caught.value)
    assert "ConnectError" in str(caught.value)


async def test_a_server_that_dies_mid_turn_ends_the_session_within_its_retries(rig: Rig) -> None:
    policy = ReconnectPolicy(initial_delay=0.2, max_retries=3)
    with trio.fail_after(REAL_BOUND):
        async with (
            sandbox_agent_server(rig) as server,
            open_sandbox_agent_client(
                server.url,
                token=TOKEN,
                agent=AGENT,
                reconnect=policy,
            ) as client,
        ):
            await client.initialize()
            session = await client.new_session(str(rig.work))
            turn = await session.prompt("[[slow]]")
            events = []
            died = math.inf
            async for event in session.events:
                events.append(event)
                if isinstance(event, TextDelta):
                    stop_group(server.process, signal.SIGKILL)
                    died = trio.current_time()
            noticed = trio.current_time() - died
            ended = events[-1]
            with pytest.raises(AgentClosedError):
                await turn.wait()
    assert isinstance(ended, SessionEnded)
    assert ended.reason == "connection_lost"
    assert "3 reconnects failed" in ended.message
    assert noticed < 10  # 0.2 + 0.4 + 0.8 s of waits, plus the failed connects


async def test_a_wrong_token_is_refused_with_a_clear_error(rig: Rig) -> None:
    with trio.fail_after(REAL_BOUND):
        async with sandbox_agent_server(rig) as server:
            with pytest.raises(AgentAuthError) as caught:
                async with open_sandbox_agent_client(
                    server.url,
                    token="not-the-token",
                    agent=AGENT,
                ):
                    pass
    assert "refused the token" in str(caught.value)
    assert "not-the-token" not in str(caught.value)


# --- acpx, with its policies -------------------------------------------------------------------


def acpx_launch(rig: Rig, policy: Any) -> AcpxLaunch:
    return AcpxLaunch(
        cwd=str(rig.work),
        policy=policy,
        agent_command=(str(rig.stack.claude_agent_acp),),
        executable=str(rig.stack.acpx),
    )


def local_spawn(rig: Rig) -> Callable[[Any], Awaitable[LocalProcess]]:
    async def spawn(argv: Any) -> LocalProcess:
        return await LocalProcess.start(argv, env=rig.env, cwd=rig.work)

    return spawn


async def test_acpx_approve_all_runs_the_command_and_a_follow_up_continues(rig: Rig) -> None:
    with trio.fail_after(REAL_BOUND):
        async with open_acpx_session(acpx_launch(rig, "approve-all"), local_spawn(rig)) as session:
            events = await run_turn(session, "[[allow]]")
            [requested] = of(PermissionRequested, events)
            with pytest.raises(PermissionAnswerError, match="approve-all policy"):
                await session.respond_permission(requested.key, "allow")
            first_session = session.session_id
            second = await run_turn(session, "what did you say?")
            second_session = session.session_id
    assert (rig.work / "allowed.txt").exists()
    assert requested.policy == "approve-all"
    [resolved] = of(PermissionResolved, events)
    assert (resolved.outcome, resolved.option_kind, resolved.by) == (
        "selected",
        "allow_once",
        "policy",
    )
    assert texts(events) == ["Creating it.", "done"]
    assert ended(events).stop_reason == "end_turn"
    assert "what did you say?" in "".join(texts(second))
    assert first_session is not None
    assert first_session == second_session
    assert "done" in assistant_texts(rig.model.message_requests[-1])
    assert_numbered(events + second)


@pytest.mark.parametrize("policy", ["deny-all", "approve-reads"])
async def test_acpx_policies_that_refuse_commands(rig: Rig, policy: str) -> None:
    with trio.fail_after(REAL_BOUND):
        async with open_acpx_session(acpx_launch(rig, policy), local_spawn(rig)) as session:
            events = await run_turn(session, "[[reject]]")
    assert not (rig.work / "rejected.txt").exists()
    [requested] = of(PermissionRequested, events)
    assert requested.policy == policy
    [resolved] = of(PermissionResolved, events)
    assert (resolved.option_kind, resolved.by) == ("reject_once", "policy")
    assert texts(events) == ["understood"]
    assert ended(events).stop_reason == "end_turn"


async def test_acpx_cancel_mid_text_ends_the_turn(rig: Rig) -> None:
    with trio.fail_after(REAL_BOUND):
        async with open_acpx_session(acpx_launch(rig, "approve-all"), local_spawn(rig)) as session:

            async def cancel_on_text(event: AgentEvent) -> None:
                if isinstance(event, TextDelta):
                    await session.cancel()

            events = await run_turn(session, "[[slow]]", cancel_on_text)
    assert texts(events) == ["first "]
    assert ended(events).stop_reason == "cancelled"


# --- figures: pytest tests/test_agents_real.py -m bench -s -------------------------------------

BENCH_RUNS: Final = 5


@pytest.mark.bench
async def test_bench_initialize_to_first_text_delta(rig: Rig) -> None:
    figures: dict[str, list[float]] = {transport: [] for transport in TRANSPORTS}
    for transport in TRANSPORTS:
        for _ in range(BENCH_RUNS):
            with trio.fail_after(REAL_BOUND):
                async with acp_client(rig, transport) as client:
                    started = time.monotonic()
                    await client.initialize()
                    session = await client.new_session(str(rig.work))
                    await session.prompt("[[hello]]")
                    first_text: float | None = None
                    async for event in session.events:
                        if isinstance(event, TextDelta) and first_text is None:
                            first_text = time.monotonic() - started
                        if isinstance(event, TurnEnded):
                            break
                    assert first_text is not None
                    figures[transport].append(first_text)
    print()
    for transport, times in figures.items():
        print(
            f"{transport}: initialize → first text delta, median of {BENCH_RUNS} runs "
            f"{statistics.median(times):.2f} s (runs in order: "
            f"{', '.join(f'{t:.2f}' for t in times)})"
        )
    assert all(len(times) == BENCH_RUNS for times in figures.values())
