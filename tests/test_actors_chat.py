"""The chat actor: one conversation's commands, routing and button presses, in order.

The actor runs with its real flusher, a recording chat platform, the real store (in memory) and a
stand-in for starting sessions that hands out inboxes the tests read, so every reply is checked
as the user would see it and every message for a session as the session would receive it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from anycode_actors.actors.chat import (
    NOT_YOURS_TO_ANSWER,
    ChatActor,
    ChatInbox,
    Notice,
    Reattach,
)
from anycode_actors.actors.commands import HELP_TEXT
from anycode_actors.actors.flusher import Flusher, StreamStarted
from anycode_actors.actors.session_api import (
    Cancel,
    FollowUp,
    PermissionAnswer,
    Recovered,
    SessionClosed,
    SessionHandle,
    SessionMessage,
)
from anycode_actors.agents import Resume
from anycode_actors.chat.auth import AccessPolicy
from anycode_actors.chat.base import ButtonPress, ChatRef, Command, Message, User
from anycode_actors.config import Config
from anycode_actors.store import InteractionOption, Session, SessionStatus, Store
from tests.actor_fakes import (
    ADA,
    BOB,
    CHAT,
    OTHER_CHAT,
    FakeProvider,
    RecordingChat,
    make_config,
    memory_store,
)

CAROL = User("333", "@carol")
OPTIONS = (
    InteractionOption("allow", "Allow once", "allow_once"),
    InteractionOption("reject", "Reject", "reject_once"),
)


@dataclass
class Started:
    session: Session
    recovered: Recovered | None
    inbox: trio.MemoryReceiveChannel[SessionMessage]


@dataclass
class ChatRig:
    """A running chat actor and everything around it."""

    actor: ChatActor
    client: RecordingChat
    store: Store
    started: list[Started] = field(default_factory=list)
    start_delay: float = 0.0
    _syncs: int = 0

    async def start_session(self, session: Session, recovered: Recovered | None) -> SessionHandle:
        await trio.sleep(self.start_delay)
        send, receive = trio.open_memory_channel[SessionMessage](16)
        self.started.append(Started(session, recovered, receive))
        return SessionHandle(session.id, session.user, send)

    async def command(self, text: str, user: User = ADA, chat: ChatRef = CHAT) -> None:
        name, _, args = text.removeprefix("/").partition(" ")
        await self.actor.send(Command(chat, user, name, args))

    async def message(self, text: str, user: User = ADA, reply_to: str | None = None) -> None:
        await self.actor.send(Message(CHAT, user, text, reply_to=reply_to))

    async def settle(self) -> None:
        """Wait until the actor has handled everything sent so far (it handles in order)."""
        self._syncs += 1
        marker = f"[sync {self._syncs}]"
        await self.actor.send(Notice(marker))
        await self.client.wait_for_text(marker)

    async def replies(self) -> list[str]:
        """Every message the chat shows, sync markers left out, once the actor has settled."""
        await self.settle()
        return [t for t in self.client.texts() if not t.startswith("[sync ")]

    async def press(self, data: str, user: User = ADA, message_id: str = "42") -> str:
        """Press a button; return how the press was answered."""
        before = len(self.client.presses)
        await self.actor.send(ButtonPress(CHAT, user, message_id, data, press_id="q"))
        await self.client.wait_until(lambda: len(self.client.presses) > before)
        return self.client.presses[-1][1]

    async def received(self, index: int) -> SessionMessage:
        """The next message the index-th started session received."""
        if index >= len(self.started):
            await self.settle()
        with trio.fail_after(60):
            return await self.started[index].inbox.receive()

    def nothing_for(self, index: int) -> bool:
        """Whether the index-th started session has received nothing (yet)."""
        try:
            self.started[index].inbox.receive_nowait()
        except trio.WouldBlock:
            return True
        return False


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    async with memory_store() as store:
        yield store


async def start_chat(
    nursery: trio.Nursery,
    store: Store,
    config: Config | None = None,
    *,
    admins: Sequence[str] = (),
) -> ChatRig:
    config = config or make_config()
    client = RecordingChat()
    inbox = trio.open_memory_channel[ChatInbox](ChatActor.inbox_size)
    flusher = Flusher(client, CHAT, debounce=0.5, notify=inbox[0].clone())
    rig: ChatRig

    async def start_session(session: Session, recovered: Recovered | None) -> SessionHandle:
        return await rig.start_session(session, recovered)

    actor = ChatActor(
        CHAT,
        client=client,
        flusher=flusher.address(),
        store=store,
        config=config,
        start_session=start_session,
        access=AccessPolicy.of(everyone=True, admins=admins),
        inbox=inbox,
    )
    rig = ChatRig(actor, client, store)
    await nursery.start(flusher.run)
    await nursery.start(actor.run)
    return rig


async def session_in_store(
    store: Store, chat: ChatRef = CHAT, user: User = ADA, **kw: Any
) -> Session:
    return await store.create_session(
        platform=chat.platform,
        chat=chat.chat_id,
        user=user.id,
        agent=kw.pop("agent", "claude-code"),
        prompt=kw.pop("prompt", "fix it"),
        **kw,
    )


# --- commands -----------------------------------------------------------------------------------


async def test_help_shows_the_commands(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_chat(nursery, store)
    await rig.command("/help")
    assert await rig.replies() == [HELP_TEXT]
    assert HELP_TEXT.startswith("Anycode Bot - Run coding agents from chat\n\nCommands:\n")


async def test_agents_lists_the_default_and_hides_agents_that_cannot_run_with_the_protocol(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    # goose has no sandbox-agent id: under the default protocol it cannot run.
    rig = await start_chat(nursery, store)
    await rig.command("/agents")
    assert await rig.replies() == ["Available agents:\n- claude-code (default)\n- codex"]


async def test_a_command_in_capitals_is_understood(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_chat(nursery, store)
    await rig.command("/HELP")
    assert await rig.replies() == [HELP_TEXT]


async def test_an_unknown_command_points_to_help(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_chat(nursery, store)
    await rig.command("/frobnicate now")
    assert await rig.replies() == ["Unknown command. Try /help."]


async def test_task_without_arguments_gets_the_usage(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_chat(nursery, store)
    await rig.command("/task   ")
    assert await rig.replies() == ["Usage: /task [agent] <prompt>"]
    assert rig.started == []
    assert await store.active_sessions() == []


async def test_task_with_an_agent_but_no_prompt_asks_for_the_prompt(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_chat(nursery, store)
    await rig.command("/task codex")
    assert await rig.replies() == ["Please provide a prompt after the agent name."]
    assert rig.started == []


async def test_task_records_a_pending_session_announces_it_and_starts_its_actor(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_chat(nursery, store)
    await rig.command("/task codex fix the login bug in acme/web")
    replies = await rig.replies()
    [started] = rig.started
    session = started.session
    assert (session.agent, session.prompt, session.user) == (
        "codex",
        "fix the login bug in acme/web",
        ADA.id,
    )
    assert session.repo == "https://github.com/acme/web.git"
    assert session.user_name == ADA.author_name == "@ada"  # no full name given: the mention
    assert session.status == SessionStatus.PENDING
    assert started.recovered is None
    assert replies == [
        f"Starting codex session `{session.id[:8]}`...\n"
        "Prompt: fix the login bug in acme/web\n"
        "Repository: https://github.com/acme/web.git"
    ]


async def test_task_whose_first_word_is_no_agent_runs_the_default_agent_with_the_whole_prompt(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_chat(nursery, store)
    await rig.command("/task frobnicate the widget")
    replies = await rig.replies()
    [started] = rig.started
    assert (started.session.agent, started.session.prompt) == (
        "claude-code",
        "frobnicate the widget",
    )
    assert replies == [
        f"Starting claude-code session `{started.session.id[:8]}`...\nPrompt: frobnicate the widget"
    ]


async def test_task_for_an_agent_that_cannot_run_with_the_protocol_is_refused_clearly(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_chat(nursery, store)
    await rig.command("/task goose tidy up")
    assert await rig.replies() == [
        "goose cannot run with the sandbox-agent protocol here. Try /agents for the ones that can."
    ]
    assert rig.started == []
    assert await store.active_sessions() == []


async def test_task_beyond_max_concurrent_is_refused_and_creates_nothing(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_chat(nursery, store, make_config(max_concurrent=2))
    await session_in_store(store)
    await session_in_store(store)
    await session_in_store(store, chat=OTHER_CHAT)  # another chat's sessions do not count
    await rig.command("/task one more")
    [reply] = await rig.replies()
    assert reply.startswith(
        "Too many active sessions in this chat (2, session.max_concurrent = 2)."
    )
    assert "/cancel ends one now." in reply
    assert rig.started == []
    assert await store.count_active(CHAT.platform, CHAT.chat_id) == 2


async def test_status_lists_the_active_sessions_newest_first(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_chat(nursery, store)
    await rig.command("/status")
    assert await rig.replies() == [
        "No active sessions.\n"
        "Your usage: 0 of 3 active sessions, 0 of 50 tasks in the last 24 hours."
    ]
    older = await session_in_store(store, agent="codex")
    newer = await session_in_store(store)
    await store.transition(newer.id, SessionStatus.STARTING)
    done = await session_in_store(store)
    await store.transition(done.id, SessionStatus.CANCELLED)
    await rig.command("/status")
    replies = await rig.replies()

    def line(session: Session, status: str) -> str:
        created = session.created_at.strftime("%Y-%m-%d %H:%M UTC")
        return f"- `{session.id[:8]}` | {session.agent} | {status} | {created}"

    assert replies[-1] == "\n".join(
        [
            "Active sessions:",
            line(newer, "starting"),
            line(older, "pending"),
            # The cancelled one still counts for the day, not as active.
            "Your usage: 2 of 3 active sessions, 3 of 50 tasks in the last 24 hours.",
        ]
    )


# --- plain messages -----------------------------------------------------------------------------


async def test_a_message_without_a_session_says_how_to_start_one(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_chat(nursery, store)
    await rig.message("hello?")
    assert await rig.replies() == ["No active session. Start one with /task <prompt>"]


async def test_an_empty_message_is_ignored_without_a_reply(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_chat(nursery, store)
    await rig.message("   \n ")
    assert await rig.replies() == []


async def test_a_message_goes_to_the_most_recent_live_session_as_a_follow_up(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_chat(nursery, store)
    await rig.command("/task first")
    await rig.command("/task second")
    await rig.message("and the tests too", user=ADA)
    assert await rig.received(1) == FollowUp("and the tests too", ADA)
    assert rig.nothing_for(0)


async def test_a_reply_to_an_older_sessions_output_goes_to_that_session(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_chat(nursery, store)
    await rig.command("/task first")
    await rig.command("/task second")
    await rig.settle()
    first = rig.started[0].session.id
    # The flusher began a message of the first session's output.
    await rig.actor.send(StreamStarted(first, "77", mark=3, offset=5))
    await rig.message("this one, please", reply_to="77")
    assert await rig.received(0) == FollowUp("this one, please", ADA)
    assert rig.nothing_for(1)
    stored = await store.get_session(first)
    assert stored is not None
    assert (stored.stream_message_id, stored.stream_mark, stored.stream_offset) == ("77", 3, 5)


async def test_a_reply_to_a_message_of_an_ended_session_goes_to_the_most_recent_one(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_chat(nursery, store)
    await rig.command("/task first")
    await rig.command("/task second")
    await rig.settle()
    first = rig.started[0].session.id
    await rig.actor.send(StreamStarted(first, "77"))
    await rig.actor.send(SessionClosed(first, "completed"))
    await rig.message("more", reply_to="77")
    assert await rig.received(1) == FollowUp("more", ADA)


async def test_after_its_only_session_closed_a_message_says_there_is_none(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_chat(nursery, store)
    await rig.command("/task first")
    await rig.settle()
    await rig.actor.send(SessionClosed(rig.started[0].session.id, "completed"))
    await rig.message("anything else?")
    replies = await rig.replies()
    assert replies[-1] == "No active session. Start one with /task <prompt>"


async def test_two_fast_messages_in_one_chat_are_handled_in_order(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_chat(nursery, store)
    rig.start_delay = 3.0  # starting the session takes a while
    await rig.command("/task first")
    await rig.message("right after")  # must wait for the session, not race past it
    assert await rig.received(0) == FollowUp("right after", ADA)
    assert "No active session" not in "\n".join(await rig.replies())


# --- cancel -------------------------------------------------------------------------------------


async def test_cancel_without_arguments_cancels_the_newest_session(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_chat(nursery, store)
    await rig.command("/task first")
    await rig.command("/task second")
    await rig.command("/cancel")
    assert await rig.received(1) == Cancel("by @ada")
    assert rig.nothing_for(0)


async def test_cancel_by_prefix_reaches_that_session(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_chat(nursery, store)
    await rig.command("/task first")
    await rig.command("/task second")
    await rig.settle()
    await rig.command(f"/cancel {rig.started[0].session.id[:8]}")
    assert await rig.received(0) == Cancel("by @ada")
    assert rig.nothing_for(1)


async def test_cancel_with_nothing_to_cancel_says_so(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_chat(nursery, store)
    await rig.command("/cancel")
    await rig.command("/cancel abc123")
    assert await rig.replies() == ["No active session to cancel."] * 2


async def test_cancel_with_an_ambiguous_prefix_asks_for_more_of_it(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_chat(nursery, store)
    # Seventeen ids in sixteen hex digits: two of them start alike.
    sessions = [await session_in_store(store) for _ in range(17)]
    by_first: dict[str, list[str]] = {}
    for session in sessions:
        by_first.setdefault(session.id[0], []).append(session.id)
    prefix, ids = next((p, ids) for p, ids in by_first.items() if len(ids) > 1)
    await rig.command(f"/cancel {prefix}")
    [reply] = await rig.replies()
    assert reply.startswith(f"`{prefix}` matches several sessions (")
    assert reply.endswith("); type more of it.")
    for session_id in ids:
        assert f"`{session_id[:8]}`" in reply
    assert all(s.status == SessionStatus.PENDING for s in await store.active_sessions())


async def test_cancel_of_a_session_whose_actor_is_gone_settles_it_in_the_store(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_chat(nursery, store)
    orphan = await session_in_store(store)
    await store.transition(orphan.id, SessionStatus.STARTING)
    await rig.command(f"/cancel {orphan.id[:6]}")
    assert await rig.replies() == [f"Session `{orphan.id[:8]}` cancelled."]
    stored = await store.get_session(orphan.id)
    assert stored is not None
    assert (stored.status, stored.reason) == (SessionStatus.CANCELLED, "by @ada")


async def test_cancel_of_a_session_that_just_ended_is_answered_and_the_chat_goes_on(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_chat(nursery, store)
    await rig.command("/task first")
    await rig.settle()
    session = rig.started[0].session
    # The session actor finished and closed its inbox; its SessionClosed is still on the way.
    await store.transition(session.id, SessionStatus.FAILED)
    await rig.started[0].inbox.aclose()
    await rig.command("/cancel")
    await rig.message("and now?")
    await rig.command("/help")
    replies = await rig.replies()
    assert replies[1:] == [
        f"Session `{session.id[:8]}` has already ended.",
        "No active session. Start one with /task <prompt>",
        HELP_TEXT,
    ]


async def test_a_message_for_a_session_that_just_ended_goes_to_the_one_still_running(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_chat(nursery, store)
    await rig.command("/task first")
    await rig.command("/task second")
    await rig.settle()
    await rig.started[1].inbox.aclose()  # ended; its SessionClosed is still on the way
    await rig.message("the older one, then")
    assert await rig.received(0) == FollowUp("the older one, then", ADA)


async def test_a_press_for_a_session_that_just_ended_is_already_answered(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_chat(nursery, store)
    await rig.command("/task run it")
    await rig.settle()
    interaction = await interaction_for(store, rig.started[0].session)
    await rig.started[0].inbox.aclose()
    assert await rig.press(f"{interaction}:0") == "Already answered."


# --- buttons ------------------------------------------------------------------------------------


async def interaction_for(store: Store, session: Session) -> str:
    interaction = await store.create_interaction(
        session.id, "permission", request_id="0", options=OPTIONS
    )
    return interaction.id


async def test_a_press_by_the_starter_reaches_the_session_as_an_answer(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_chat(nursery, store)
    await rig.command("/task run it")
    await rig.settle()
    interaction = await interaction_for(store, rig.started[0].session)
    await rig.actor.send(ButtonPress(CHAT, ADA, "42", f"{interaction}:1", press_id="q"))
    answer = await rig.received(0)
    assert answer == PermissionAnswer(
        interaction, 1, ButtonPress(CHAT, ADA, "42", f"{interaction}:1", press_id="q")
    )
    assert rig.client.presses == []  # the session answers the press, once it has acted on it


@pytest.mark.parametrize("data", ["garbage", "", ":", "abc:", "abc:x", "nosuchid:0", "a:b:-1"])
async def test_a_press_with_data_we_never_made_is_no_longer_valid(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store, data: str
) -> None:
    rig = await start_chat(nursery, store)
    assert await rig.press(data) == "This button is no longer valid."


async def test_a_press_on_an_option_the_interaction_does_not_have_is_no_longer_valid(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_chat(nursery, store)
    await rig.command("/task run it")
    await rig.settle()
    interaction = await interaction_for(store, rig.started[0].session)
    assert await rig.press(f"{interaction}:7") == "This button is no longer valid."
    assert rig.nothing_for(0)


async def test_a_press_on_an_interaction_of_another_chat_is_not_yours(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_chat(nursery, store)
    elsewhere = await session_in_store(store, chat=OTHER_CHAT)
    interaction = await interaction_for(store, elsewhere)
    assert "not yours" in await rig.press(f"{interaction}:0")


async def test_a_press_by_someone_else_is_not_theirs_to_answer_but_an_admins(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_chat(nursery, store, admins=[CAROL.id])
    await rig.command("/task run it")
    await rig.settle()
    interaction = await interaction_for(store, rig.started[0].session)
    answer = await rig.press(f"{interaction}:0", user=BOB)
    assert answer == NOT_YOURS_TO_ANSWER
    assert rig.nothing_for(0)
    # An admin may answer for the starter.
    await rig.actor.send(ButtonPress(CHAT, CAROL, "42", f"{interaction}:0"))
    received = await rig.received(0)
    assert isinstance(received, PermissionAnswer) and received.press.user == CAROL


async def test_a_press_on_an_answered_interaction_is_already_answered(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_chat(nursery, store)
    await rig.command("/task run it")
    await rig.settle()
    interaction = await interaction_for(store, rig.started[0].session)
    assert await store.resolve_interaction(interaction, answer="allow", resolved_by="@ada")
    assert await rig.press(f"{interaction}:0") == "Already answered."
    assert rig.nothing_for(0)


async def test_a_press_for_a_session_that_has_ended_is_already_answered(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_chat(nursery, store)
    await rig.command("/task run it")
    await rig.settle()
    session = rig.started[0].session
    interaction = await interaction_for(store, session)
    await rig.actor.send(SessionClosed(session.id, "cancelled"))
    assert await rig.press(f"{interaction}:0") == "Already answered."


# --- what the daemon itself says ----------------------------------------------------------------


async def test_a_notice_is_posted_in_the_chat(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_chat(nursery, store)
    await rig.actor.send(Notice("Session `abcdef12` failed: its sandbox was gone."))
    assert await rig.replies() == ["Session `abcdef12` failed: its sandbox was gone."]


async def test_a_reattached_session_is_started_again_and_takes_follow_ups(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_chat(nursery, store)
    session = await session_in_store(store)
    handle = FakeProvider().add(session.id)
    recovered = Recovered(handle, Resume("agent-1", last_seq=4, cursor=None, turn_running=False))
    await rig.actor.send(Reattach(session, recovered))
    await rig.message("still there?")
    assert await rig.received(0) == FollowUp("still there?", ADA)
    assert rig.started[0].recovered == recovered
    assert await rig.replies() == [
        f"The daemon restarted; session `{session.id[:8]}` continues where it was."
    ]


async def test_a_session_that_cannot_be_started_is_failed_and_the_user_told(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    from supervisors import SupervisorNotRunning

    rig = await start_chat(nursery, store)

    async def refuse(session: Session, recovered: Recovered | None) -> SessionHandle:
        raise SupervisorNotRunning("the sessions supervisor is not running")

    rig.start_session = refuse  # type: ignore[method-assign]
    await rig.command("/task fix the build")
    replies = await rig.replies()
    assert replies[-1].endswith("could not start: the daemon is stopping. Try again in a moment.")
    assert await store.active_sessions() == []  # nothing pending to count against the limit
