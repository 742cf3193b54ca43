"""`open_session`: the one door to an agent, whatever protocol the sandbox speaks.

Each protocol is opened for real against a local stand-in: ACP over stdio against the demo agent
(`python -m anycode_actors.cli.demo_agent`), acpx with processes that play its short commands, and
sandbox-agent against the in-process `FakeSandboxAgent` of test_agents_sandbox_agent_http.py.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
import trio

from anycode_actors.agents import (
    AcpClient,
    AcpSession,
    AcpxSession,
    AnswersByPolicy,
    AsksUser,
    OpenedSession,
    Resume,
    TextDelta,
    open_acp_client,
    open_sandbox_agent_transport,
    open_session,
)
from anycode_actors.agents import session as session_module
from anycode_actors.cli.demo_agent import AGENT_NAME
from anycode_actors.config import AgentConfig
from anycode_actors.errors import AgentError
from anycode_actors.sandboxes.base import AgentProcess, SandboxHandle
from anycode_actors.sandboxes.process import LocalProcess
from tests.actor_fakes import asks, make_config
from tests.test_agents_sandbox_agent_http import BASE, SESSION, TOKEN, FakeSandboxAgent, Turn

SESSION_ID = "0123456789abcdef0123456789abcdef"
DEMO_AGENT = (sys.executable, "-m", "anycode_actors.cli.demo_agent", "--delay", "0")


def claude() -> AgentConfig:
    return make_config().agent("claude-code")


def handle(endpoint: str | None = None) -> SandboxHandle:
    return SandboxHandle(
        id="sandbox-1",
        session_id=SESSION_ID,
        provider="local",
        endpoint=endpoint,
        token=TOKEN if endpoint else "",
        workdir="/workspace",
    )


class Spawner:
    """Starts `run_instead` (or a process that exits at once) for every argv it is asked for,
    and remembers what it was asked."""

    def __init__(self, run_instead: Sequence[str] = (sys.executable, "-c", "")) -> None:
        self.run_instead = tuple(run_instead)
        self.argvs: list[tuple[str, ...]] = []

    async def __call__(self, argv: Sequence[str]) -> AgentProcess:
        self.argvs.append(tuple(argv))
        return await LocalProcess.start(self.run_instead)


def through_fake_server(
    monkeypatch: pytest.MonkeyPatch, server: FakeSandboxAgent
) -> list[tuple[str, dict[str, Any]]]:
    """Route `open_session`'s sandbox-agent client to `server`; returns the calls it makes."""
    calls: list[tuple[str, dict[str, Any]]] = []

    @asynccontextmanager
    async def client_through_fake(base_url: str, **options: Any) -> AsyncIterator[AcpClient]:
        calls.append((base_url, options))
        async with (
            open_sandbox_agent_transport(
                base_url, http_transport=server.transport, **options
            ) as transport,
            open_acp_client(transport) as client,
        ):
            yield client

    monkeypatch.setattr(session_module, "open_sandbox_agent_client", client_through_fake)
    return calls


async def test_acp_runs_the_agents_command_in_the_sandbox_and_asks_the_user() -> None:
    spawn = Spawner(DEMO_AGENT)
    async with open_session(
        "acp",
        agent=claude(),
        handle=handle(),
        spawn=spawn,
        session_id=SESSION_ID,
        acpx_permissions="approve-all",
    ) as opened:
        assert type(opened.session) is AcpSession
        assert opened.agent_name == AGENT_NAME
        assert opened.agent_session_id == opened.session.session_id != ""
        assert opened.permissions == AsksUser()
        await opened.session.prompt("hello")
        first = await opened.session.events.receive()
        assert isinstance(first, TextDelta) and first.seq == 1
    assert spawn.argvs == [("claude-agent-acp",)]


async def test_acpx_opens_a_named_session_that_answers_by_its_policy() -> None:
    spawn = Spawner()
    async with open_session(
        "acpx",
        agent=claude(),
        handle=handle(),
        spawn=spawn,
        session_id=SESSION_ID,
        acpx_permissions="deny-all",
    ) as opened:
        assert type(opened.session) is AcpxSession
        assert opened.agent_name == "acpx"
        # No prompt yet, so acpx has not said its ACP session id: the name stands for it.
        assert opened.agent_session_id == f"anycode-{SESSION_ID[:12]}"
        assert opened.permissions == AnswersByPolicy("acpx", "deny-all")
    [created, closed] = spawn.argvs
    assert "--deny-all" in created
    assert created[-4:] == ("sessions", "new", "--name", f"anycode-{SESSION_ID[:12]}")
    assert closed[-3:] == ("sessions", "close", f"anycode-{SESSION_ID[:12]}")


async def test_sandbox_agent_opens_a_new_session_on_the_sessions_own_server(
    nursery: trio.Nursery, autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = FakeSandboxAgent(nursery)
    calls = through_fake_server(monkeypatch, server)
    spawn = Spawner()
    async with open_session(
        "sandbox-agent",
        agent=claude(),
        handle=handle(BASE),
        spawn=spawn,
        session_id=SESSION_ID,
        acpx_permissions="approve-all",
    ) as opened:
        assert type(opened.session) is AcpSession
        assert (opened.agent_session_id, opened.agent_name) == (SESSION, "fake")
        assert opened.permissions == AsksUser()
    [(base_url, options)] = calls
    assert base_url == BASE
    assert options["server_id"] == f"anycode-{SESSION_ID[:16]}"
    assert (options["token"], options["agent"]) == (TOKEN, "claude")
    assert (options["attach"], options["delete_on_close"]) == (False, False)
    assert [body["method"] for _, body in server.posts] == ["initialize", "session/new"]
    assert spawn.argvs == []


def _open_resumed(resume: Resume) -> AbstractAsyncContextManager[OpenedSession]:
    """The sandbox-agent session of `resume`, as a session actor would reopen it."""
    return open_session(
        "sandbox-agent",
        agent=claude(),
        handle=handle(BASE),
        spawn=Spawner(),
        session_id=SESSION_ID,
        acpx_permissions="approve-all",
        resume=resume,
    )


async def test_sandbox_agent_reattaches_where_the_resume_left_off(
    nursery: trio.Nursery, autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = FakeSandboxAgent(nursery)
    for word in ["seen ", "unseen "]:
        server.text(word)
    calls = through_fake_server(monkeypatch, server)
    pending = dataclasses.replace(asks("3"), seq=4)
    resume = Resume(SESSION, last_seq=7, cursor="1", turn_running=True, permissions=(pending,))
    async with _open_resumed(resume) as opened:
        assert type(opened.session) is AcpSession
        assert (opened.agent_session_id, opened.agent_name) == (SESSION, "claude")
        assert opened.session.turn_running
        event = await opened.session.events.receive()
        assert (event.seq, event.cursor) == (8, "2")
        assert isinstance(event, TextDelta) and event.text == "unseen "
        # The request still waiting from before the restart can be answered.
        await opened.session.respond_permission("3", "allow")
    [(_, options)] = calls
    assert (options["attach"], options["last_event_id"]) == (True, "1")
    # Attached: no initialize, no session/new; only the answer to request 3.
    [(_, answer)] = server.posts
    assert (answer["id"], answer["result"]["outcome"]["optionId"]) == (3, "allow")
    # A restarted daemon makes sure the sandbox-agent answers before it attaches.
    assert len(server.health_times) == 1


async def test_a_session_the_pool_prepared_is_attached_without_a_health_check(
    nursery: trio.Nursery, autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = FakeSandboxAgent(nursery, turns=[Turn(["done"])])
    calls = through_fake_server(monkeypatch, server)
    resume = Resume(SESSION, last_seq=0, cursor=None, turn_running=False, prepared=True)
    async with _open_resumed(resume) as opened:
        assert opened.agent_session_id == SESSION
        await opened.session.prompt("go")
    [(_, options)] = calls
    assert (options["attach"], options["check_health"]) == (True, False)
    assert server.health_times == []
    assert [body["method"] for _, body in server.posts] == ["session/prompt"]


async def test_an_unknown_protocol_is_refused_before_anything_starts() -> None:
    spawn = Spawner()
    with pytest.raises(AgentError, match=r"unknown agent protocol 'telnet' \(known: sandbox-agent"):
        open_session(
            "telnet",  # type: ignore[arg-type]
            agent=claude(),
            handle=handle(),
            spawn=spawn,
            session_id=SESSION_ID,
            acpx_permissions="approve-all",
        )
    assert spawn.argvs == []
