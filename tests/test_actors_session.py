"""The session actor: one task in one sandbox, from creation to removal, on the autojump clock.

It runs with its real flusher and stream actor, a recording chat platform, the real store (in
memory), the fake provider and a scripted agent session in place of the protocol (the stream's
`open_session` is replaced), so what is checked is what the user sees in the chat, what the store
records and what the sandbox and the agent are told.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pytest
import trio
import trio.testing

from anycode_actors.actors.flusher import Flusher
from anycode_actors.actors.session import SessionActor
from anycode_actors.actors.session_api import (
    Cancel,
    FollowUp,
    PermissionAnswer,
    Recovered,
    SessionClosed,
    ShowDiff,
)
from anycode_actors.actors.stream import (
    EVENTS_PER_REPORT,
    AgentEventsArrived,
    StreamActor,
    StreamEnded,
    StreamReady,
    StreamReport,
)
from anycode_actors.agents import (
    AgentEvent,
    AnswersByPolicy,
    ErrorEvent,
    PermissionResolved,
    Resume,
    TextDelta,
    ToolCall,
    TurnEnded,
)
from anycode_actors.chat.base import Attachment, ButtonPress, ChatError, User
from anycode_actors.errors import AgentError
from anycode_actors.sandboxes.base import SandboxError, SandboxHandle
from anycode_actors.store import (
    InteractionOption,
    InteractionStatus,
    Session,
    SessionStatus,
    Store,
)
from supervisors import Registry, Restart, Supervisor
from tests.actor_fakes import (
    ADA,
    CHAT,
    FakeAgent,
    FakeProvider,
    RecordingChat,
    asks,
    make_config,
    memory_store,
    said,
    use_agent,
)

MB = 1024 * 1024


@dataclass
class SessionRig:
    """One session actor and everything it talks to."""

    nursery: trio.Nursery
    store: Store
    client: RecordingChat
    flusher: Flusher
    provider: FakeProvider
    agent: FakeAgent
    session: Session
    actor: SessionActor | None = None
    _closed: trio.MemoryReceiveChannel[SessionClosed] | None = None

    @property
    def sid(self) -> str:
        return self.session.id

    @property
    def short(self) -> str:
        return self.session.id[:8]

    async def send(self, message: FollowUp | Cancel | PermissionAnswer | ShowDiff) -> None:
        assert self.actor is not None
        await self.actor.send(message)

    async def closed(self, within: float = 600) -> SessionClosed:
        """Wait until the session has ended and cleaned up."""
        assert self._closed is not None
        with trio.fail_after(within):
            return await self._closed.receive()

    async def status(self) -> tuple[SessionStatus, str | None]:
        stored = await self.store.get_session(self.sid)
        assert stored is not None
        return stored.status, stored.reason


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    async with memory_store() as store:
        yield store


async def start_session(
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    agent: FakeAgent,
    provider: FakeProvider | None = None,
    *,
    session: Session | None = None,
    recovered: Recovered | None = None,
    client: RecordingChat | None = None,
    attachments: tuple[Attachment, ...] = (),
    **settings: float,
) -> SessionRig:
    """Start a session actor for a fresh `/task fix the login bug` (or `session`)."""
    config = make_config(**{"idle_minutes": 0, **settings})
    use_agent(monkeypatch, agent)
    client = client or RecordingChat()
    flusher = Flusher(client, CHAT, debounce=config.session.debounce_ms / 1000)
    await nursery.start(flusher.run)
    if session is None:
        session = await store.create_session(
            platform=CHAT.platform,
            chat=CHAT.chat_id,
            user=ADA.id,
            agent="claude-code",
            prompt="fix the login bug",
        )
    provider = provider or FakeProvider()
    rig = SessionRig(nursery, store, client, flusher, provider, agent, session)
    closed_send, rig._closed = trio.open_memory_channel[SessionClosed](4)
    rig.actor = SessionActor(
        session,
        chat=CHAT,
        flusher=flusher.address(),
        closed=closed_send,
        store=store,
        provider=provider,
        config=config,
        answer_press=client.answer_press,
        recovered=recovered,
        download=client.download,
        attachments=attachments,
    )
    # Under a supervisor, as in the daemon: the actor supervises its stream actor.
    sessions = Supervisor(name="sessions", registry=Registry())
    await nursery.start(sessions.run)
    await sessions.start_child(
        rig.actor.spec(f"session:{session.id[:8]}", restart=Restart.TEMPORARY, shutdown=90)
    )
    return rig


def press(message_id: str, data: str, user: User = ADA) -> ButtonPress:
    return ButtonPress(CHAT, user, message_id, data, press_id="q")


# --- the happy path -----------------------------------------------------------------------------


async def test_a_task_goes_from_pending_through_starting_and_running_to_completed(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = FakeAgent([[TextDelta(text="Looking at it. ")]])
    provider = FakeProvider(create_delay=5)
    rig = await start_session(nursery, store, monkeypatch, agent, provider)
    assert rig.session.status == SessionStatus.PENDING
    await trio.sleep(1)
    assert await rig.status() == (SessionStatus.STARTING, None)
    await agent.wait_for_prompts(1)
    assert agent.prompts == ["fix the login bug"]
    assert await rig.status() == (SessionStatus.RUNNING, None)
    [spec] = provider.specs
    assert (spec.session_id, spec.agent, spec.protocol) == (rig.sid, "claude-code", "sandbox-agent")
    stored = await store.get_session(rig.sid)
    assert stored is not None
    assert stored.sandbox_id == provider.alive[0]
    assert stored.agent_session_id == "agent-session-1"
    agent.emit(TextDelta(text="Fixed."), TurnEnded(stop_reason="end_turn"))
    closed = await rig.closed()
    assert closed == SessionClosed(rig.sid, "completed")
    assert await rig.status() == (SessionStatus.COMPLETED, None)
    assert provider.alive == []
    assert provider.destroyed == [stored.sandbox_id]


class SlowGitProvider(FakeProvider):
    """Its `exec` (the git that records the /diff starting point) takes 2 s, then fails."""

    def __init__(self) -> None:
        super().__init__()
        self.execs: list[tuple[float, float]] = []  # (started, ended), trio time

    async def exec(self, handle: Any, argv: Any, env: Any = None, cwd: Any = None) -> Any:
        started = trio.current_time()
        await trio.sleep(2)
        self.execs.append((started, trio.current_time()))
        raise SandboxError("git is slow here, then gone")


class TimedAgent(FakeAgent):
    """Remembers when it was connected and when it was prompted (trio time)."""

    connected_at = prompted_at = -1.0

    def connected(self, resume: Any) -> None:
        self.connected_at = trio.current_time()
        super().connected(resume)

    async def prompt(self, text: str, files: Sequence[Any] = ()) -> Any:
        self.prompted_at = trio.current_time()
        return await super().prompt(text, files)


async def test_the_diff_starting_point_is_recorded_while_the_agent_starts_before_its_prompt(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = TimedAgent([said("done")])
    provider = SlowGitProvider()
    rig = await start_session(nursery, store, monkeypatch, agent, provider)
    assert await rig.closed() == SessionClosed(rig.sid, "completed")
    [(started, ended), *_] = provider.execs
    assert started <= agent.connected_at < ended  # the agent started meanwhile
    assert agent.prompted_at >= ended  # and was asked nothing before the starting point
    assert agent.prompts == ["fix the login bug"]


async def test_every_agent_event_is_stored_with_its_seq(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tool = ToolCall(tool_call_id="t1", phase="started", title="Read login.py")
    agent = FakeAgent(
        [
            [
                TextDelta(text="Reading. "),
                tool,
                TextDelta(text="Done."),
                TurnEnded(stop_reason="end_turn"),
            ]
        ]
    )
    rig = await start_session(nursery, store, monkeypatch, agent)
    await rig.closed()
    events = await store.events(rig.sid)
    assert [e.event for e in events] == [
        TextDelta(seq=1, text="Reading. "),
        replace(tool, seq=2),
        TextDelta(seq=3, text="Done."),
        TurnEnded(seq=4, stop_reason="end_turn"),
    ]
    assert [e.seq for e in events] == [1, 2, 3, 4]
    stored = await store.get_session(rig.sid)
    assert stored is not None and stored.last_event_seq == 4


async def test_the_output_streams_into_the_chat_and_the_final_notice_follows_it(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = FakeAgent([[TextDelta(text="Hello "), TextDelta(text="there.")]])
    rig = await start_session(nursery, store, monkeypatch, agent)
    output = await rig.client.wait_for_text("Hello there.")
    tool = ToolCall(tool_call_id="t1", phase="started", title="Run pytest")
    agent.emit(tool, *said("All green."))
    await rig.closed()
    assert rig.client.texts() == [
        "Hello there.\n▸ Run pytest\nAll green.",
        f"Session `{rig.short}` completed.",
    ]
    # One message for the output, sent once and then edited as more came; the notice after it.
    calls = [(c.kind, c.message_id, c.text) for c in rig.client.calls]
    assert calls == [
        ("send", output, "Hello there."),
        ("edit", output, "Hello there.\n▸ Run pytest\nAll green."),
        ("send", rig.client.message_with("completed."), f"Session `{rig.short}` completed."),
    ]


async def test_a_follow_up_while_a_turn_runs_is_queued_and_sent_when_the_turn_ends(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = FakeAgent([[TextDelta(text="Working...")], said("Tests added.")])
    rig = await start_session(nursery, store, monkeypatch, agent)
    await agent.wait_for_prompts(1)
    await rig.send(FollowUp("add tests too", ADA))
    await rig.client.wait_for_text("Queued: the agent gets this as soon as it finishes")
    await trio.sleep(5)
    assert agent.prompts == ["fix the login bug"]  # not while the first turn runs
    agent.emit(TurnEnded(stop_reason="end_turn"))
    await agent.wait_for_prompts(2)
    assert agent.prompts == ["fix the login bug", "add tests too"]
    await rig.closed()
    assert await rig.status() == (SessionStatus.COMPLETED, None)
    assert "Tests added." in "\n".join(rig.client.texts())


async def test_a_follow_up_before_the_agent_is_ready_waits_for_the_first_turn(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = FakeAgent([said("First."), said("Second.")])
    rig = await start_session(nursery, store, monkeypatch, agent, FakeProvider(create_delay=10))
    await rig.send(FollowUp("and then this", ADA))
    await rig.closed()
    assert agent.prompts == ["fix the login bug", "and then this"]


async def test_with_idle_minutes_the_session_waits_for_follow_ups_then_completes(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = FakeAgent([said("Done."), said("Also done.")])
    rig = await start_session(nursery, store, monkeypatch, agent, idle_minutes=1)
    await rig.client.wait_for_text("Done.")
    await trio.sleep(50)
    assert await rig.status() == (SessionStatus.RUNNING, None)
    await rig.send(FollowUp("one more thing", ADA))
    await agent.wait_for_prompts(2)
    turn_over = trio.current_time()
    await rig.client.wait_for_text("Also done.")
    # The idle time starts again from the end of the second turn.
    await trio.sleep(59 - (trio.current_time() - turn_over))
    assert await rig.status() == (SessionStatus.RUNNING, None)
    await rig.closed(within=5)
    assert await rig.status() == (SessionStatus.COMPLETED, None)
    assert rig.client.texts()[-1] == f"Session `{rig.short}` completed."
    assert rig.provider.alive == []


async def test_an_agent_error_is_shown_and_the_session_goes_on(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = FakeAgent([[ErrorEvent(message="rate limited by the model"), *said("Recovered.")]])
    rig = await start_session(nursery, store, monkeypatch, agent)
    await rig.closed()
    texts = rig.client.texts()
    assert "Agent error: rate limited by the model" in texts
    assert "Recovered." in texts
    assert await rig.status() == (SessionStatus.COMPLETED, None)


async def test_a_turn_that_fails_fails_the_session_with_its_message(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = FakeAgent([[TurnEnded(stop_reason="error", message="the model is overloaded")]])
    rig = await start_session(nursery, store, monkeypatch, agent)
    assert await rig.closed() == SessionClosed(rig.sid, "failed")
    assert await rig.status() == (SessionStatus.FAILED, "the model is overloaded")
    assert rig.client.texts()[-1] == f"Session `{rig.short}` failed: the model is overloaded"


# --- permissions --------------------------------------------------------------------------------


async def test_a_permission_request_shows_buttons_and_the_starters_answer_reaches_the_agent(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = FakeAgent([[TextDelta(text="Let me run it."), asks("0"), *said(" Ran it.")]])
    rig = await start_session(nursery, store, monkeypatch, agent)
    prompt_id = await rig.client.wait_for_text("Permission requested")
    [interaction] = await store.unresolved_interactions(rig.sid)
    assert rig.client.text_of(prompt_id) == (
        "Permission requested: Run touch ok.txt\nCommand: touch ok.txt"
    )
    [row] = rig.client.buttons_of(prompt_id)
    assert [b.label for b in row] == ["Allow", "Allow for this session", "Deny"]
    assert [b.data for b in row] == [f"{interaction.id}:{i}" for i in range(3)]
    # The text streamed before the request is shown above it.
    assert rig.client.texts().index("Let me run it.") < rig.client.texts().index(
        rig.client.text_of(prompt_id)
    )
    await rig.send(PermissionAnswer(interaction.id, 0, press(prompt_id, row[0].data)))
    await agent.wait_until(lambda: bool(agent.responses))
    assert agent.responses == [("0", "allow")]
    await rig.closed()
    resolved = await store.get_interaction(interaction.id)
    assert resolved is not None
    assert (resolved.status, resolved.answer, resolved.resolved_by) == (
        InteractionStatus.RESOLVED,
        "allow",
        "@ada",
    )
    assert resolved.chat_message_id == prompt_id
    assert rig.client.text_of(prompt_id) == (
        "Permission requested: Run touch ok.txt\nCommand: touch ok.txt\n\n✅ Allow (by @ada)"
    )
    assert rig.client.buttons_of(prompt_id) == ()
    assert rig.client.press_answers() == ["Allow"]
    assert "Ran it." in "\n".join(rig.client.texts())
    assert rig.client.message_with("Permissions follow") is None


async def test_an_agent_that_answers_by_policy_says_so_once_and_shows_no_buttons(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    request = dataclasses.replace(asks("0"), policy="deny-all")
    agent = FakeAgent(
        [[TextDelta(text="Let me run it."), request]],
        permissions=AnswersByPolicy("acpx", "deny-all"),
    )
    rig = await start_session(nursery, store, monkeypatch, agent)
    note = await rig.client.wait_for_text("Permissions follow")
    assert rig.client.text_of(note) == (
        "Permissions follow acpx's deny-all policy; no buttons will be shown."
    )
    await agent.wait_for_prompts(1)
    agent.emit(
        PermissionResolved(
            key="0", outcome="selected", option_id="reject", option_kind="reject_once", by="policy"
        ),
        *said(" It was refused."),
    )
    await rig.closed()
    texts = rig.client.texts()
    assert texts.index(rig.client.text_of(note)) == 0
    assert "It was refused." in "\n".join(texts)
    assert all(buttons == () for _, buttons in rig.client.messages.values())
    assert not any("Permission requested" in text for text in texts)
    assert await store.unresolved_interactions(rig.sid) == []
    assert agent.responses == []


async def test_a_second_answer_to_a_permission_is_already_answered(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = FakeAgent([[asks("0"), TextDelta(text="Thinking it over.")]])
    rig = await start_session(nursery, store, monkeypatch, agent)
    prompt_id = await rig.client.wait_for_text("Permission requested")
    [interaction] = await store.unresolved_interactions(rig.sid)
    await rig.send(PermissionAnswer(interaction.id, 2, press(prompt_id, f"{interaction.id}:2")))
    await rig.send(PermissionAnswer(interaction.id, 0, press(prompt_id, f"{interaction.id}:0")))
    await rig.client.wait_until(lambda: len(rig.client.presses) == 2)
    assert rig.client.press_answers() == ["Deny", "Already answered."]
    assert agent.responses == [("0", "reject")]
    await rig.client.wait_until(lambda: "🚫 Deny (by @ada)" in rig.client.text_of(prompt_id))
    resolved = await store.get_interaction(interaction.id)
    assert resolved is not None and resolved.answer == "reject"


async def test_cancel_while_running_cancels_the_turn_and_removes_the_sandbox(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = FakeAgent([[TextDelta(text="Let me run it."), asks("0")]])
    rig = await start_session(nursery, store, monkeypatch, agent)
    prompt_id = await rig.client.wait_for_text("Permission requested")
    [interaction] = await store.unresolved_interactions(rig.sid)
    assert rig.provider.alive
    await rig.send(Cancel("by @ada"))
    assert await rig.closed() == SessionClosed(rig.sid, "cancelled")
    # The agent was told (which answers its pending permission "cancelled").
    assert agent.cancels == 1
    assert any(isinstance(e, PermissionResolved) and e.by == "cancel" for e in agent.delivered)
    assert rig.provider.alive == []
    assert await rig.status() == (SessionStatus.CANCELLED, "by @ada")
    ended = await store.get_interaction(interaction.id)
    assert ended is not None and ended.status == InteractionStatus.CANCELLED
    assert rig.client.buttons_of(prompt_id) == ()
    assert rig.client.text_of(prompt_id).endswith("⏹ The session ended.")
    assert rig.client.texts()[-1] == f"Session `{rig.short}` cancelled (by @ada)."


async def test_an_idle_session_waits_for_its_timer_and_uploads_without_tasks_of_its_own(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = FakeAgent([said("Done.")])
    rig = await start_session(nursery, store, monkeypatch, agent, idle_minutes=60)
    await rig.client.wait_for_text("Done.")
    await trio.sleep(1)
    names, stack = [], [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        assert task is not None
        names.append(task.coro.__qualname__)
        for child in task.child_nurseries:
            stack.extend(child.child_tasks)
    assert not [n for n in names if "SessionActor" in n and "run" not in n.split(".")[-1]]
    await trio.sleep(3600)  # the idle time is kept all the same
    assert await rig.closed() == SessionClosed(rig.sid, "completed")


class NoExecProvider(FakeProvider):
    """Sandboxes that cannot run a command (as on ECS)."""

    can_exec = False


async def test_without_exec_the_workspace_is_not_compared_and_nothing_is_logged_per_session(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    agent = FakeAgent([said("Done.")])
    provider = NoExecProvider()
    with caplog.at_level(logging.WARNING, logger="anycode_actors.actors.session"):
        rig = await start_session(
            nursery, store, monkeypatch, agent, provider, idle_minutes=60, checkpoint_max_mb=0
        )
        await rig.client.wait_for_text("Done.")
        await rig.send(ShowDiff(ADA))
        await rig.client.wait_for_text("No diff")
        await rig.send(Cancel("by @ada"))
        await rig.closed()
    assert [r.getMessage() for r in caplog.records] == []
    assert (
        "No diff: the workspace is compared with git inside the sandbox, and these sandboxes "
        "cannot run commands" in rig.client.texts()
    )


async def test_cancel_while_starting_removes_the_sandbox_being_made(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = FakeAgent([said("never")])
    provider = FakeProvider(create_delay=120)
    rig = await start_session(nursery, store, monkeypatch, agent, provider)
    await trio.sleep(2)
    assert await rig.status() == (SessionStatus.STARTING, None)
    assert len(provider.alive) == 1  # being made
    await rig.send(Cancel("by @ada"))
    assert await rig.closed(within=30) == SessionClosed(rig.sid, "cancelled")
    assert provider.alive == []
    assert agent.prompts == []
    assert await rig.status() == (SessionStatus.CANCELLED, "by @ada")
    assert rig.client.texts() == [f"Session `{rig.short}` cancelled (by @ada)."]


async def test_cancel_during_a_create_that_cannot_be_interrupted_still_removes_the_sandbox(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Creating a sandbox changes the world and may finish although the session was cancelled.
    agent = FakeAgent([said("never")])
    provider = FakeProvider(create_delay=20, uninterruptible_create=True)
    rig = await start_session(nursery, store, monkeypatch, agent, provider)
    await trio.sleep(2)
    await rig.send(Cancel("by @ada"))
    await rig.closed()
    assert len(provider.specs) == 1
    assert provider.alive == []
    assert agent.prompts == []
    assert await rig.status() == (SessionStatus.CANCELLED, "by @ada")


async def test_a_sandbox_that_cannot_be_created_fails_the_session_with_the_reason(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = FakeAgent()
    provider = FakeProvider(create_error=SandboxError("image anycode-sandbox:latest not found"))
    rig = await start_session(nursery, store, monkeypatch, agent, provider)
    assert await rig.closed() == SessionClosed(rig.sid, "failed")
    reason = "could not start: image anycode-sandbox:latest not found"
    assert await rig.status() == (SessionStatus.FAILED, reason)
    assert rig.client.texts() == [f"Session `{rig.short}` failed: {reason}"]
    assert provider.alive == []
    assert agent.connects == []


async def test_an_agent_that_never_comes_up_fails_the_session_and_the_sandbox_goes(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = FakeAgent(connect_error=AgentError("sandbox-agent is not healthy"))
    rig = await start_session(nursery, store, monkeypatch, agent)
    assert await rig.closed() == SessionClosed(rig.sid, "failed")
    status, reason = await rig.status()
    assert status == SessionStatus.FAILED
    assert reason is not None and "sandbox-agent is not healthy" in reason
    assert rig.provider.alive == []


async def test_a_lost_agent_stream_with_a_dead_sandbox_fails_the_session(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = FakeAgent([[TextDelta(text="Working...")]])
    rig = await start_session(nursery, store, monkeypatch, agent)
    await rig.client.wait_for_text("Working...")
    [sandbox] = rig.provider.alive
    rig.provider.kill(sandbox)
    agent.end("connection_lost", "the event stream ended")
    assert await rig.closed() == SessionClosed(rig.sid, "failed")
    # Lost in its first turn, it has no checkpoint to be carried into a new sandbox with.
    reason = (
        "the sandbox stopped unexpectedly; not restored in a new sandbox: no turn had ended "
        "yet, so there was no checkpoint"
    )
    assert await rig.status() == (SessionStatus.FAILED, reason)
    assert rig.client.texts()[-1] == f"Session `{rig.short}` failed: {reason}"
    assert rig.provider.sandboxes == {}  # the stopped sandbox is removed all the same


async def test_a_lost_sandbox_of_an_agent_that_cannot_load_sessions_ends_the_session_saying_so(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a turn ended, but the agent said it cannot load a session (`loadSession` false,
    like the demo agent): no new sandbox is made."""
    agent = FakeAgent(
        [[TextDelta(text="Done."), TurnEnded(stop_reason="end_turn")]], can_load=False
    )
    rig = await start_session(nursery, store, monkeypatch, agent, idle_minutes=5)
    await rig.client.wait_for_text("Done.")
    [sandbox] = rig.provider.alive
    rig.provider.kill(sandbox)
    agent.end("connection_lost", "the event stream ended")
    assert await rig.closed() == SessionClosed(rig.sid, "failed")
    reason = (
        "the sandbox stopped unexpectedly; not restored in a new sandbox: fake-agent cannot "
        "load a session (no loadSession)"
    )
    assert await rig.status() == (SessionStatus.FAILED, reason)
    assert rig.provider.sandboxes == {}


async def test_the_last_output_of_a_sandbox_that_died_is_logged_before_it_is_removed(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    agent = FakeAgent([[TextDelta(text="Working...")]])
    rig = await start_session(nursery, store, monkeypatch, agent)
    await rig.client.wait_for_text("Working...")
    [sandbox] = rig.provider.alive
    rig.provider.output = "".join(f"line {n}\n" for n in range(100)) + "Killed\n"
    rig.provider.kill(sandbox)
    with caplog.at_level(logging.WARNING, logger="anycode_actors.actors.session"):
        agent.end("connection_lost", "the event stream ended")
        assert await rig.closed() == SessionClosed(rig.sid, "failed")
    [record] = [r for r in caplog.records if "last output" in r.getMessage()]
    assert record.getMessage().endswith("line 99\nKilled")
    assert "line 60\n" not in record.getMessage()  # only the last DEAD_SANDBOX_LOG_LINES
    assert rig.provider.sandboxes == {}


async def test_a_lost_agent_stream_with_a_live_sandbox_fails_with_the_reason(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = FakeAgent([[TextDelta(text="Working...")]])
    rig = await start_session(nursery, store, monkeypatch, agent)
    await rig.client.wait_for_text("Working...")
    agent.end("agent_exited", "claude exited with code 1")
    await rig.closed()
    assert await rig.status() == (
        SessionStatus.FAILED,
        "lost the connection to the agent: claude exited with code 1",
    )
    assert rig.provider.alive == []


async def test_a_lost_agent_stream_while_the_engine_cannot_say_fails_with_the_reason(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = FakeAgent([[TextDelta(text="Working...")]])
    rig = await start_session(nursery, store, monkeypatch, agent)
    await rig.client.wait_for_text("Working...")
    rig.provider.is_alive_error = SandboxError("Docker engine not reachable")
    agent.end("connection_lost", "the event stream broke off")
    assert await rig.closed() == SessionClosed(rig.sid, "failed")
    assert await rig.status() == (
        SessionStatus.FAILED,
        "lost the connection to the agent: the event stream broke off",
    )


async def test_an_agent_stream_that_stops_without_a_word_fails_with_a_readable_reason(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = FakeAgent([[TextDelta(text="Working...")]])
    rig = await start_session(nursery, store, monkeypatch, agent)
    await rig.client.wait_for_text("Working...")
    agent.vanish()
    assert await rig.closed() == SessionClosed(rig.sid, "failed")
    status, reason = await rig.status()
    assert status == SessionStatus.FAILED
    assert reason is not None and reason.startswith("lost the connection to the agent: ")
    assert "None" not in reason
    assert rig.provider.alive == []


async def test_a_timeout_from_the_watchdog_fails_the_session_and_says_why(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = FakeAgent([[TextDelta(text="Thinking...")]])
    rig = await start_session(nursery, store, monkeypatch, agent, timeout_minutes=30)
    await rig.client.wait_for_text("Thinking...")
    # What the watchdog sends, through the session directory, when the session is too old.
    await rig.send(Cancel("timed out after 30 min", status="failed"))
    assert await rig.closed() == SessionClosed(rig.sid, "failed")
    assert await rig.status() == (SessionStatus.FAILED, "timed out after 30 min")
    assert rig.client.texts()[-1] == f"Session `{rig.short}` failed: timed out after 30 min"
    assert agent.cancels == 1
    assert rig.provider.alive == []


async def test_a_cancelled_session_is_cancelled_once_and_later_messages_change_nothing(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = FakeAgent([[TextDelta(text="Working...")]])
    rig = await start_session(nursery, store, monkeypatch, agent)
    await rig.client.wait_for_text("Working...")
    await rig.send(Cancel("by @ada"))
    await rig.send(Cancel("timed out after 30 min", status="failed"))
    await rig.closed()
    assert await rig.status() == (SessionStatus.CANCELLED, "by @ada")
    notices = [t for t in rig.client.texts() if t.startswith("Session `")]
    assert notices == [f"Session `{rig.short}` cancelled (by @ada)."]


# --- events delivered twice ---------------------------------------------------------------------


async def test_an_event_delivered_twice_is_stored_and_shown_once(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = FakeAgent([[TextDelta(text="Once.")]])
    rig = await start_session(nursery, store, monkeypatch, agent)
    await rig.client.wait_for_text("Once.")
    agent.redeliver(agent.delivered[-1])  # a reconnecting stream repeats the last event
    agent.emit(asks("0"))
    agent.redeliver(agent.delivered[-1])
    agent.emit(TurnEnded(stop_reason="end_turn"))
    await rig.closed()
    assert [e.seq for e in await store.events(rig.sid)] == [1, 2, 3]
    assert rig.client.texts()[0] == "Once."
    prompts = [t for t in rig.client.texts() if t.startswith("Permission requested")]
    assert len(prompts) == 1


# --- files --------------------------------------------------------------------------------------


async def test_files_in_the_outbox_are_uploaded_once_and_too_big_ones_are_named(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = FakeAgent([said("Report written."), said("Nothing new.")])
    provider = FakeProvider()
    provider.outbox = {"report.md": b"# Report\n", "dump.bin": b"x" * (2 * MB)}
    rig = await start_session(
        nursery, store, monkeypatch, agent, provider, idle_minutes=1, max_upload_mb=1
    )
    await agent.wait_until(lambda: len(agent.delivered) == 2)
    await rig.client.wait_until(lambda: rig.client.uploads)
    await rig.send(FollowUp("anything else?", ADA))
    await rig.client.wait_for_text("Nothing new.")
    await trio.sleep(1)
    await rig.send(Cancel("by @ada"))
    await rig.closed()
    assert provider.reads == 2  # the outbox was read after each turn
    assert rig.client.uploads == [("report.md", b"# Report\n", "")]
    too_big = [t for t in rig.client.texts() if "upload limit" in t]
    assert too_big == ["dump.bin (2.0 MB) is over the 1 MB upload limit; not sent."]


# --- recovery -----------------------------------------------------------------------------------


async def test_a_recovered_session_adopts_its_message_and_streams_new_output_into_it(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What the previous run left: a running session, two stored deltas, and a chat message
    # that got only the first of them before the daemon died.
    session = await store.create_session(
        platform=CHAT.platform, chat=CHAT.chat_id, user=ADA.id, agent="claude-code", prompt="go"
    )
    await store.transition(session.id, SessionStatus.STARTING)
    await store.transition(session.id, SessionStatus.RUNNING)
    provider = FakeProvider()
    handle = provider.add(session.id)
    await store.set_sandbox(session.id, handle.id, handle.endpoint or "")
    await store.set_agent_session_id(session.id, "agent-session-1")
    await store.append_event(session.id, TextDelta(seq=1, text="Hello "))
    await store.append_event(session.id, TextDelta(seq=2, text="world"))
    await store.set_stream_message(session.id, "900", 1, 0)
    stored = await store.get_session(session.id)
    assert stored is not None
    client = RecordingChat()
    client.seed("900", "Hello")
    resume = Resume("agent-session-1", last_seq=2, cursor="c-2", turn_running=True)
    agent = FakeAgent()
    rig = await start_session(
        nursery,
        store,
        monkeypatch,
        agent,
        provider,
        session=stored,
        recovered=Recovered(handle, resume),
        client=client,
    )
    await client.wait_until(lambda: client.text_of("900") == "Hello world")
    await agent.wait_until(lambda: bool(agent.connects))
    assert agent.connects == [resume]
    assert provider.specs == []  # no new sandbox
    agent.emit(TextDelta(text=", again."), TurnEnded(stop_reason="end_turn"))
    await rig.closed()
    edits = [(c.message_id, c.text) for c in client.calls if c.kind == "edit"]
    assert edits == [("900", "Hello world"), ("900", "Hello world, again.")]
    assert client.texts() == ["Hello world, again.", f"Session `{rig.short}` completed."]
    assert [e.seq for e in await store.events(session.id)] == [1, 2, 3, 4]
    assert await rig.status() == (SessionStatus.COMPLETED, None)
    assert provider.alive == []


async def test_a_recovered_session_keeps_its_pending_permission_answerable(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    session = await store.create_session(
        platform=CHAT.platform, chat=CHAT.chat_id, user=ADA.id, agent="claude-code", prompt="go"
    )
    await store.transition(session.id, SessionStatus.STARTING)
    await store.transition(session.id, SessionStatus.RUNNING)
    provider = FakeProvider()
    handle = provider.add(session.id)
    request = asks("5")
    await store.append_event(session.id, replace(request, seq=1))
    options = [InteractionOption(o.option_id, o.name, o.kind) for o in request.options]
    interaction = await store.create_interaction(
        session.id, "permission", request_id="5", tool_call_id="tool-5", options=options
    )
    await store.set_interaction_message(interaction.id, "901")
    stored = await store.get_session(session.id)
    assert stored is not None
    client = RecordingChat()
    client.seed("901", "Permission requested: Run touch ok.txt\nCommand: touch ok.txt")
    resume = Resume(
        "agent-session-1", last_seq=1, cursor=None, turn_running=True, permissions=(request,)
    )
    agent = FakeAgent()
    rig = await start_session(
        nursery,
        store,
        monkeypatch,
        agent,
        provider,
        session=stored,
        recovered=Recovered(handle, resume),
        client=client,
    )
    await agent.wait_until(lambda: bool(agent.connects))
    await rig.send(PermissionAnswer(interaction.id, 0, press("901", f"{interaction.id}:0")))
    await agent.wait_until(lambda: bool(agent.responses))
    assert agent.responses == [("5", "allow")]
    agent.emit(TurnEnded(stop_reason="end_turn"))
    await rig.closed()
    assert client.text_of("901").endswith("✅ Allow (by @ada)")


async def test_the_follow_up_queue_is_bounded_and_the_sender_is_told(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = FakeAgent([[TextDelta(text="Working...")], said("one"), said("two")])
    rig = await start_session(nursery, store, monkeypatch, agent, max_queued_follow_ups=2)
    await agent.wait_for_prompts(1)
    for text in ("one", "two", "three"):
        await rig.send(FollowUp(text, ADA))
    await rig.client.wait_for_text("Not queued: 2 messages already wait for the agent")
    agent.emit(TurnEnded(stop_reason="end_turn"))
    await agent.wait_for_prompts(3)
    await rig.closed()
    assert agent.prompts == ["fix the login bug", "one", "two"]


async def test_follow_ups_a_session_never_got_to_are_answered_when_it_ends(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A message that reaches a session while it is ending is never dropped in silence."""
    agent = FakeAgent([[TextDelta(text="Working...")]])
    rig = await start_session(nursery, store, monkeypatch, agent)
    await rig.client.wait_for_text("Working...")
    await rig.send(FollowUp("and add a test", ADA))  # queued behind the running turn
    await rig.client.wait_for_text("Queued:")
    [sandbox] = rig.provider.alive
    rig.provider.kill(sandbox)  # `docker rm -f`: the stream ends, the session fails
    agent.end("connection_lost", "the event stream ended")
    await rig.send(FollowUp("are you there?", ADA))  # arrives while it is ending
    await rig.closed()
    texts = rig.client.texts()
    failed = next(
        i
        for i, text in enumerate(texts)
        if text.startswith(f"Session `{rig.short}` failed: the sandbox stopped unexpectedly")
    )
    late = [t for t in texts[failed:] if t.startswith("Not delivered to the agent")]
    assert late == [
        f"Not delivered to the agent: “and add a test” (from @ada): session `{rig.short}` "
        "ended. Start a new one with /task <prompt>.",
        f"Not delivered to the agent: “are you there?” (from @ada): session `{rig.short}` "
        "ended. Start a new one with /task <prompt>.",
    ]


async def test_a_follow_up_the_agent_never_answered_is_reported_when_the_stream_is_lost(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = FakeAgent([said("Done."), []])
    rig = await start_session(nursery, store, monkeypatch, agent, idle_minutes=10)
    await rig.client.wait_for_text("Done.")
    await rig.send(FollowUp("now deploy it", ADA))
    await agent.wait_for_prompts(2)
    agent.end("connection_lost", "the event stream ended")
    await rig.closed()
    assert any(
        t.startswith("Not delivered to the agent: “now deploy it”") for t in rig.client.texts()
    )


async def test_a_recovered_session_whose_turn_had_ended_sends_the_files_not_yet_delivered(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Killed while its outbox uploads were queued: after the restart the files the chat never
    got are sent, and the one it did get is not sent again."""
    session = await store.create_session(
        platform=CHAT.platform, chat=CHAT.chat_id, user=ADA.id, agent="claude-code", prompt="go"
    )
    await store.transition(session.id, SessionStatus.STARTING)
    await store.transition(session.id, SessionStatus.RUNNING)
    provider = FakeProvider()
    provider.outbox = {"sent.txt": b"already there", "report.md": b"# the report"}
    handle = provider.add(session.id)
    await store.set_sandbox(session.id, handle.id, handle.endpoint or "")
    await store.set_agent_session_id(session.id, "agent-session-1")
    await store.append_event(session.id, TextDelta(seq=1, text="Done."))
    await store.append_event(session.id, TurnEnded(seq=2, stop_reason="end_turn"))
    await store.record_upload(session.id, "sent.txt", len(b"already there"))
    stored = await store.get_session(session.id)
    assert stored is not None
    resume = Resume("agent-session-1", last_seq=2, cursor="c-2", turn_running=False)
    rig = await start_session(
        nursery,
        store,
        monkeypatch,
        FakeAgent(),
        provider,
        session=stored,
        recovered=Recovered(handle, resume),
        idle_minutes=10,
    )
    await rig.client.wait_until(lambda: rig.client.uploads)
    await trio.sleep(1)  # the flusher's answer reaches the session, which records it
    await rig.send(Cancel("by @ada"))
    await rig.closed()
    assert [name for name, _, _ in rig.client.uploads] == ["report.md"]
    assert await store.uploads(session.id) == {
        ("sent.txt", len(b"already there")),
        ("report.md", len(b"# the report")),
    }


# --- files sent with the task and with follow-ups -----------------------------------------------


async def test_files_are_written_into_the_inbox_and_go_with_the_prompt(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = FakeAgent([[TextDelta(text="A cat."), TurnEnded(stop_reason="end_turn")], []])
    client = RecordingChat()
    client.files = {"p": b"\xff\xd8jpeg", "v": b"OggS", "d": b"a,b\n"}
    photo = Attachment("image", "photo_7.jpg", "image/jpeg", "p", 6)
    voice = Attachment("audio", "voice_8.ogg", "audio/ogg", "v", 4)
    provider = FakeProvider()
    rig = await start_session(
        nursery,
        store,
        monkeypatch,
        agent,
        provider,
        client=client,
        attachments=(photo, voice),
        idle_minutes=10,
    )
    await agent.wait_for_prompts(1)
    assert provider.written == {
        "/workspace/inbox/photo_7.jpg": b"\xff\xd8jpeg",
        "/workspace/inbox/voice_8.ogg": b"OggS",
    }
    [image, audio] = agent.prompt_files[0]
    assert (image.path, image.mime_type, image.data) == (
        "/workspace/inbox/photo_7.jpg",
        "image/jpeg",
        b"\xff\xd8jpeg",
    )
    assert (audio.path, audio.data) == ("/workspace/inbox/voice_8.ogg", None)
    prompt = agent.prompts[0]
    assert prompt.startswith("fix the login bug\n\nFiles sent with this message are in")
    assert "/workspace/inbox/voice_8.ogg is a voice note" in prompt
    assert "not transcribed" in prompt

    # A follow-up's file with the same name gets a name of its own.
    again = Attachment("document", "photo_7.jpg", "image/jpeg", "d", 4)
    await rig.actor.send(FollowUp("and this one?", ADA, (again,)))
    await agent.wait_for_prompts(2)
    assert "/workspace/inbox/2-photo_7.jpg" in provider.written
    assert [f.path for f in agent.prompt_files[1]] == ["/workspace/inbox/2-photo_7.jpg"]
    assert agent.prompts[1].startswith("and this one?\n\n")


async def test_a_file_too_big_or_unreadable_is_left_out_with_a_word_and_the_text_still_goes(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = FakeAgent([[TextDelta(text="ok"), TurnEnded(stop_reason="end_turn")]])
    client = RecordingChat()
    client.files = {
        "big": b"x" * (2 * 1024 * 1024),
        "broken": ChatError("HTTP 500", code="http_500"),
    }
    big = Attachment("document", "big.bin", "application/octet-stream", "big")
    broken = Attachment("image", "shot.png", "image/png", "broken")
    provider = FakeProvider()
    await start_session(
        nursery,
        store,
        monkeypatch,
        agent,
        provider,
        client=client,
        attachments=(big, broken),
        max_download_mb=1,
    )
    await agent.wait_for_prompts(1)
    assert agent.prompts == ["fix the login bug"]
    assert agent.prompt_files == [()]
    assert provider.written == {}
    await client.wait_for_text("Not given to the agent")
    [told] = [t for t in client.texts() if "Not given to the agent" in t]
    assert "big.bin: over 1 MB (session.max_download_mb)" in told
    assert "shot.png: could not be fetched" in told


async def test_a_follow_up_of_files_that_all_fail_asks_the_agent_nothing(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = FakeAgent([[TextDelta(text="ok"), TurnEnded(stop_reason="end_turn")]])
    client = RecordingChat()
    rig = await start_session(nursery, store, monkeypatch, agent, client=client, idle_minutes=10)
    await agent.wait_for_prompts(1)
    await client.wait_for_text("ok")
    lost = Attachment("document", "gone.txt", "text/plain", "missing")
    await rig.actor.send(FollowUp("", ADA, (lost,)))
    await client.wait_for_text("Not given to the agent")
    await rig.actor.send(FollowUp("and now?", ADA))
    await agent.wait_for_prompts(2)
    assert agent.prompts == ["fix the login bug", "and now?"]


async def test_cancel_during_a_slow_download_answers_at_once_and_the_agent_gets_nothing_more(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = FakeAgent([[TextDelta(text="ok"), TurnEnded(stop_reason="end_turn")], []])
    client = RecordingChat()
    client.files = {"big": b"x" * 1000}
    rig = await start_session(nursery, store, monkeypatch, agent, client=client, idle_minutes=10)
    await agent.wait_for_prompts(1)
    await client.wait_for_text("ok")
    client.download_delay = 100  # a large file on a slow link
    big = Attachment("document", "big.bin", "application/octet-stream", "big")
    await rig.actor.send(FollowUp("look at this", ADA, (big,)))
    await trio.sleep(1)
    # Meanwhile a follow-up queues behind the prompt being fetched, in order.
    await rig.send(FollowUp("and then this", ADA))
    await client.wait_for_text("Queued")
    asked = trio.current_time()
    await rig.send(Cancel("by @ada"))
    assert await rig.closed(within=10) == SessionClosed(rig.sid, "cancelled")
    assert trio.current_time() - asked < 10  # not after the download
    await trio.sleep(200)  # long past when the download would have ended
    assert agent.prompts == ["fix the login bug"]
    assert rig.provider.written == {}
    assert await rig.status() == (SessionStatus.CANCELLED, "by @ada")
    told = "\n".join(client.texts())
    assert "Not delivered to the agent: “look at this”" in told
    assert "Not delivered to the agent: “and then this”" in told


async def test_a_prompt_with_slow_files_goes_before_the_follow_ups_sent_while_they_came(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = FakeAgent(
        [
            [TextDelta(text="ok"), TurnEnded(stop_reason="end_turn")],
            [TextDelta(text="seen"), TurnEnded(stop_reason="end_turn")],
            [TextDelta(text="done"), TurnEnded(stop_reason="end_turn")],
        ]
    )
    client = RecordingChat()
    client.files = {"d": b"a,b\n"}
    rig = await start_session(nursery, store, monkeypatch, agent, client=client, idle_minutes=10)
    await agent.wait_for_prompts(1)
    await client.wait_for_text("ok")
    client.download_delay = 30
    notes = Attachment("document", "notes.csv", "text/csv", "d", 4)
    await rig.actor.send(FollowUp("read this", ADA, (notes,)))
    await trio.sleep(1)
    await rig.send(FollowUp("then fix it", ADA))
    await agent.wait_for_prompts(3)
    assert agent.prompts[1].startswith("read this\n\n")
    assert agent.prompts[2] == "then fix it"
    assert [f.path for f in agent.prompt_files[1]] == ["/workspace/inbox/notes.csv"]


async def test_events_queued_together_are_stored_together_and_a_follow_up_among_them_waits(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = FakeAgent([[TextDelta(text="a ")], said("Done.")])
    batches: list[list[int]] = []
    gate = trio.Event()
    append_events = store.append_events

    async def slow_first(session_id: str, events: Sequence[AgentEvent]) -> list[bool]:
        batches.append([event.seq for event in events])
        if len(batches) == 1:
            await gate.wait()
        return await append_events(session_id, events)

    monkeypatch.setattr(store, "append_events", slow_first)
    rig = await start_session(nursery, store, monkeypatch, agent)
    await agent.wait_for_prompts(1)
    await trio.sleep(1)
    agent.emit(*(TextDelta(text=f"w{n} ") for n in range(10)))
    await trio.sleep(1)  # all ten wait in the session's inbox, behind the first event
    await rig.send(FollowUp("more", ADA))
    agent.emit(TextDelta(text="z"), TurnEnded(stop_reason="end_turn"))
    await trio.sleep(1)
    gate.set()
    await rig.closed()
    assert batches[:3] == [[1], list(range(2, 12)), [12, 13]]
    assert agent.prompts == ["fix the login bug", "more"]
    text = "\n".join(rig.client.texts())
    assert "a " + "".join(f"w{n} " for n in range(10)) + "z" in text
    assert "Queued" in text
    assert [e.seq for e in await store.events(rig.sid)] == list(range(1, 16))


async def test_a_burst_is_stored_and_handled_in_runs_ending_at_each_event_that_does_more(
    autojump_clock: trio.abc.Clock,
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # All five come in one report from the stream actor; the error is stored and shown before
    # anything after it is stored, as if it had come alone.
    agent = FakeAgent(
        [
            [
                TextDelta(text="a "),
                TextDelta(text="b "),
                ErrorEvent(message="rate limited"),
                TextDelta(text="c"),
                TurnEnded(stop_reason="end_turn"),
            ]
        ]
    )
    batches: list[list[int]] = []
    append_events = store.append_events

    async def recording(session_id: str, events: Sequence[AgentEvent]) -> list[bool]:
        batches.append([event.seq for event in events])
        return await append_events(session_id, events)

    monkeypatch.setattr(store, "append_events", recording)
    rig = await start_session(nursery, store, monkeypatch, agent)
    await rig.closed()
    assert batches == [[1, 2, 3], [4, 5]]
    texts = rig.client.texts()
    assert texts[0].startswith("a b ")
    assert "Agent error: rate limited" in texts
    assert "a b c" in "\n".join(texts)
    assert [e.seq for e in await store.events(rig.sid)] == [1, 2, 3, 4, 5]


async def test_the_stream_actor_forwards_a_burst_in_order_in_bounded_reports(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = FakeAgent()
    use_agent(monkeypatch, agent)
    config = make_config()
    reports_in, reports_out = trio.open_memory_channel[StreamReport](1)
    actor = StreamActor(
        session_id="s" * 32,
        handle=SandboxHandle(id="sb", session_id="s" * 32, provider="fake", endpoint="x"),
        provider=FakeProvider(),
        agent=config.agent("claude-code"),
        sandbox=config.sandbox,
        reports=reports_in,
    )
    nursery.start_soon(actor.run)
    assert isinstance(await reports_out.receive(), StreamReady)
    count = EVENTS_PER_REPORT * 2 + 10
    agent.emit(*(TextDelta(text=str(n)) for n in range(count)))
    agent.end()
    await trio.testing.wait_all_tasks_blocked()
    # A full report channel holds the stream actor back: one report waits in the channel, one
    # in the actor's hands, and the rest (ten texts and the SessionEnded) with the agent.
    assert agent.events.statistics().current_buffer_used == 11
    sizes: list[int] = []
    seqs: list[int] = []
    async for report in reports_out:
        if isinstance(report, StreamEnded):
            break
        assert isinstance(report, AgentEventsArrived)
        sizes.append(len(report.events))
        seqs += [event.seq for event in report.events]
    # Everything queued went in full reports, in order, nothing lost.
    assert sizes == [EVENTS_PER_REPORT, EVENTS_PER_REPORT, 11]
    assert seqs == list(range(1, count + 2))  # and the SessionEnded
