"""Who may steer whose session, quotas, the command rate, and what reaches a session from another
thread: the chat actor, router and session directory as a team would meet them.

Each test starts from what a person does in a group chat and checks what they and the session see.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio

from anycode_actors.actors.chat import (
    NOT_YOURS_TO_ANSWER,
    ChatActor,
    ChatInbox,
    Notice,
    parse_button_data,
)
from anycode_actors.actors.directory import Register, SessionDirectory
from anycode_actors.actors.flusher import Flusher
from anycode_actors.actors.lobby import LobbyInbox, Tell
from anycode_actors.actors.router import SLOW_DOWN, CommandRate, Router
from anycode_actors.actors.session_api import (
    Cancel,
    FollowUp,
    PermissionAnswer,
    Recovered,
    SessionHandle,
    SessionMessage,
)
from anycode_actors.chat.auth import AccessPolicy
from anycode_actors.chat.base import ButtonPress, ChatEvent, ChatRef, Command, Message, User
from anycode_actors.config import Config, config_from_mapping
from anycode_actors.store import (
    InteractionOption,
    Quota,
    QuotaExceeded,
    QuotaKind,
    Session,
    SessionStatus,
    Store,
)
from tests.actor_fakes import ADA, BOB, CHAT, RecordingChat, memory_store

CAROL = User("333", "@carol")  # an admin in these tests
GROUP = ChatRef("telegram", "-100777")
TOPIC = ChatRef("telegram", "-100777", "55")  # another topic of the same group
OPTIONS = (
    InteractionOption("allow", "Allow once", "allow_once"),
    InteractionOption("reject", "Reject", "reject_once"),
)


def config(**limits: Any) -> Config:
    return config_from_mapping(
        {
            "telegram": {
                "bot_token": "123456:ABCdefGHIjklMNOpqrsTUVwxyz012345678",
                "allowed_users": [ADA.id, BOB.id],
                "admins": [CAROL.id],
            },
            "session": {"debounce_ms": 500, "max_concurrent": 5},
            "limits": limits,
        },
        environ={},
    )


class Rig:
    """A chat actor of `chat` with its flusher, a recording client and a session stand-in."""

    def __init__(self, chat: ChatRef, store: Store, client: RecordingChat) -> None:
        self.chat = chat
        self.store = store
        self.client = client
        self.inboxes: dict[str, trio.MemoryReceiveChannel[SessionMessage]] = {}
        self.actor: ChatActor
        self._syncs = 0

    async def start_session(self, session: Session, recovered: Recovered | None) -> SessionHandle:
        send, receive = trio.open_memory_channel[SessionMessage](16)
        self.inboxes[session.id] = receive
        return SessionHandle(session.id, session.user, send)

    async def say(self, text: str, user: User) -> None:
        if text.startswith("/"):
            name, _, args = text[1:].partition(" ")
            await self.actor.send(Command(self.chat, user, name, args, message_id="9"))
        else:
            await self.actor.send(Message(self.chat, user, text, message_id="9"))

    async def settle(self) -> None:
        self._syncs += 1
        marker = f"[sync {self._syncs}]"
        await self.actor.send(Notice(marker))
        await self.client.wait_for_text(marker)

    async def replies(self) -> list[str]:
        await self.settle()
        return [t for t in self.client.texts() if not t.startswith("[sync ")]

    def refusals_to(self, user: User) -> list[str]:
        return [text for event, text in self.client.refusals if event.user == user]

    def received(self, session_id: str) -> list[SessionMessage]:
        got = []
        while True:
            try:
                got.append(self.inboxes[session_id].receive_nowait())
            except trio.WouldBlock:
                return got


async def start_rig(
    nursery: trio.Nursery,
    store: Store,
    cfg: Config,
    chat: ChatRef = GROUP,
    directory: SessionDirectory | None = None,
) -> Rig:
    client = RecordingChat()
    rig = Rig(chat, store, client)
    inbox = trio.open_memory_channel[ChatInbox](ChatActor.inbox_size)
    flusher = Flusher(client, chat, debounce=0.5, notify=inbox[0].clone())
    assert cfg.telegram is not None
    access = AccessPolicy.of(
        cfg.telegram.allowed_users,
        everyone=cfg.telegram.allow_everyone,
        admins=cfg.telegram.admins,
    )
    rig.actor = ChatActor(
        chat,
        client=client,
        flusher=flusher.address(),
        store=store,
        config=cfg,
        start_session=rig.start_session,
        access=access,
        directory=directory.address() if directory is not None else None,
        inbox=inbox,
    )
    await nursery.start(flusher.run)
    await nursery.start(rig.actor.run)
    return rig


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    async with memory_store() as store:
        yield store


async def only_session(rig: Rig) -> str:
    await rig.settle()
    [session_id] = rig.inboxes
    return session_id


# --- who may steer whose session ----------------------------------------------------------------


async def test_a_plain_message_never_reaches_someone_elses_session(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_rig(nursery, store, config())
    await rig.say("/task fix the login bug", ADA)
    session_id = await only_session(rig)
    await rig.say("actually, delete everything", BOB)
    assert (await rig.replies())[-1] == "No active session. Start one with /task <prompt>"
    assert rig.received(session_id) == []
    await rig.say("and add a test", ADA)
    await rig.settle()
    assert rig.received(session_id) == [FollowUp("and add a test", ADA)]


async def test_a_reply_to_someone_elses_session_is_refused_privately(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_rig(nursery, store, config())
    await rig.say("/task fix the login bug", ADA)
    session_id = await only_session(rig)
    # The flusher reports the message the session streams into; a reply to it is routed there.
    from anycode_actors.actors.flusher import StreamStarted

    await rig.actor.send(StreamStarted(session_id, "700", None, 0))
    await rig.actor.send(Message(GROUP, BOB, "rm -rf it", message_id="9", reply_to="700"))
    await rig.settle()
    assert rig.received(session_id) == []
    [refusal] = rig.refusals_to(BOB)
    assert refusal.startswith(f"Session `{session_id[:8]}` is not yours")


async def test_cancel_of_someone_elses_session_is_refused_and_the_session_is_untouched(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_rig(nursery, store, config())
    await rig.say("/task fix the login bug", ADA)
    session_id = await only_session(rig)
    await rig.say(f"/cancel {session_id[:6]}", BOB)
    await rig.settle()
    assert rig.received(session_id) == []
    assert rig.refusals_to(BOB) == [
        f"Session `{session_id[:8]}` is not yours: only the person who started it or an admin "
        "can cancel it."
    ]
    session = await store.get_session(session_id)
    assert session is not None and session.status == SessionStatus.PENDING
    # Without an id, Bob's /cancel means Bob's newest session: he has none.
    await rig.say("/cancel", BOB)
    assert (await rig.replies())[-1] == "No active session to cancel."
    assert rig.received(session_id) == []


async def test_an_admin_may_cancel_any_session_and_answer_any_button(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_rig(nursery, store, config())
    await rig.say("/task fix the login bug", ADA)
    session_id = await only_session(rig)
    interaction = await store.create_interaction(
        session_id, "permission", request_id="1", options=OPTIONS
    )
    await rig.actor.send(ButtonPress(GROUP, BOB, "42", f"{interaction.id}:0", press_id="b"))
    await rig.actor.send(ButtonPress(GROUP, CAROL, "42", f"{interaction.id}:0", press_id="c"))
    await rig.settle()
    assert rig.refusals_to(BOB) == [NOT_YOURS_TO_ANSWER]
    [answer] = rig.received(session_id)
    assert isinstance(answer, PermissionAnswer) and answer.press.user == CAROL
    # Carol has no session of her own: her bare /cancel takes the newest one in the chat.
    await rig.say("/cancel", CAROL)
    await rig.settle()
    assert rig.received(session_id) == [Cancel("by @carol")]
    assert rig.refusals_to(CAROL) == []


async def test_cancel_from_another_topic_reaches_the_live_session_not_the_record(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    """The review's bug: the record went cancelled while the actor and its sandbox ran on."""
    directory = SessionDirectory()
    await nursery.start(directory.run)
    home = await start_rig(nursery, store, config(), chat=GROUP, directory=directory)
    other = await start_rig(nursery, store, config(), chat=TOPIC, directory=directory)
    # What the daemon does when a session starts: the directory learns its inbox.
    await home.say("/task fix the login bug", ADA)
    session_id = await only_session(home)
    inbox = home.inboxes[session_id]
    forward, _ = trio.open_memory_channel[SessionMessage](0)
    send, receive = trio.open_memory_channel[SessionMessage](16)
    await directory.send(Register(SessionHandle(session_id, ADA.id, send)))
    await store.transition(session_id, SessionStatus.STARTING)
    await store.transition(session_id, SessionStatus.RUNNING)

    await other.say(f"/cancel {session_id[:8]}", ADA)
    with trio.fail_after(10):
        delivered = await receive.receive()
    assert delivered == Cancel("by @ada")
    session = await store.get_session(session_id)
    # Only the session's own actor may end it; it is still running until it does.
    assert session is not None and session.status == SessionStatus.RUNNING
    assert [t for t in await other.replies() if "cancelled" in t] == []
    forward.close()
    inbox.close()


async def test_a_forged_button_never_crashes_the_chat_actor(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_rig(nursery, store, config())
    forged = [
        "x:¹",
        "x:٣",
        "x:1٣",
        ":1",
        "x:",
        "x:-1",
        "x:99999",
        "a" * 70 + ":1",
        "x:1:2",
        "\x00:1",
    ]
    for data in forged:
        assert parse_button_data(data) is None, data
        await rig.actor.send(ButtonPress(GROUP, ADA, "42", data, press_id="p"))
    await rig.settle()
    assert [text for _, text in rig.client.presses] == ["This button is no longer valid."] * len(
        forged
    )
    await rig.say("/help", ADA)
    assert "Commands:" in (await rig.replies())[-1]


# --- quotas ---------------------------------------------------------------------------------------


async def test_a_user_at_their_session_limit_in_other_chats_gets_no_new_one(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_rig(nursery, store, config(max_sessions_per_user=2))
    for chat in ("1", "2"):  # two sessions in other chats
        await store.create_session(
            platform="telegram", chat=chat, user=ADA.id, agent="claude-code", prompt="x"
        )
    await rig.say("/task one more", ADA)
    [reply] = await rig.replies()
    assert reply.startswith(
        "You have 2 active sessions, the limit per person (limits.max_sessions_per_user = 2). "
        "A slot frees when one ends, at the latest at "
    )
    assert rig.inboxes == {}
    assert len(await store.active_sessions()) == 2
    # Someone else is not affected.
    await rig.say("/task mine", BOB)
    await rig.settle()
    assert len(rig.inboxes) == 1


async def test_the_daemons_capacity_is_shared_by_everyone(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await start_rig(nursery, store, config(max_sessions_total=1))
    await rig.say("/task first", ADA)
    await rig.say("/task second", BOB)
    replies = await rig.replies()
    assert any(
        r.startswith("The bot is at capacity: 1 active sessions (limits.max_sessions_total = 1).")
        for r in replies
    )
    assert len(rig.inboxes) == 1


async def test_the_daily_task_limit_survives_a_restart_and_says_when_the_next_slot_frees(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # A real SQLite file and its worker thread, so real time: no autojump clock here.
    path = tmp_path / "anycode.db"
    async with Store.open(path) as store:
        for _ in range(2):
            session = await store.create_session(
                platform="telegram", chat="-100777", user=ADA.id, agent="claude-code", prompt="x"
            )
            await store.transition(session.id, SessionStatus.CANCELLED)
    # The first of them was 23 hours ago: the next slot frees an hour from now.
    started = datetime.now(UTC) - timedelta(hours=23)
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE sessions SET created_at = ? WHERE rowid = 1",
            (started.isoformat(timespec="microseconds"),),
        )
    async with Store.open(path) as store:  # a restarted daemon
        rig = await start_rig(nursery, store, config(max_tasks_per_user_per_day=2))
        await rig.say("/task third", ADA)
        [reply] = await rig.replies()
        frees = (started + timedelta(hours=24)).strftime("%H:%M UTC")
        assert reply.startswith(
            "You have started 2 tasks in the last 24 hours, the daily limit "
            "(limits.max_tasks_per_user_per_day = 2)."
        )
        assert frees in reply
        assert rig.inboxes == {}
        await rig.say("/status", ADA)
        assert (await rig.replies())[-1].endswith(
            "Your usage: 0 of 3 active sessions, 2 of 2 tasks in the last 24 hours."
        )


async def test_racing_creators_never_exceed_a_quota(tmp_path: Path) -> None:
    """Two daemons' worth of store connections, twenty racing /task: exactly the limit wins."""
    path = tmp_path / "anycode.db"
    won: list[str] = []
    refused: list[QuotaKind] = []
    async with Store.open(path) as first, Store.open(path) as second:

        async def create(store: Store, n: int) -> None:
            try:
                session = await store.create_session(
                    platform="slack",
                    chat=f"C{n}",
                    user="U1",
                    agent="claude-code",
                    prompt="x",
                    quota=Quota(per_user=3),
                )
                won.append(session.id)
            except QuotaExceeded as over:
                refused.append(over.kind)

        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(create, first if n % 2 else second, n)
    assert len(won) == 3
    assert refused == [QuotaKind.PER_USER] * 17


# --- pacing ---------------------------------------------------------------------------------------


async def test_a_flooding_user_is_told_once_to_slow_down_and_others_are_not_slowed(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    inboxes: dict[str, trio.MemoryReceiveChannel[ChatInbox]] = {}
    told: list[tuple[ChatEvent, str]] = []

    async def start_chat(
        chat: ChatRef, lobby_spoke_at: float | None
    ) -> trio.MemorySendChannel[ChatInbox]:
        send, inboxes[chat.key] = trio.open_memory_channel[ChatInbox](1000)
        return send

    lobby, lobby_inbox = trio.open_memory_channel[LobbyInbox](100)

    async def read_lobby() -> None:
        async for message in lobby_inbox:
            assert isinstance(message, Tell)
            told.append((message.event, message.text))

    nursery.start_soon(read_lobby)
    router = Router(start_chat, rate=CommandRate(per_second=1.0, burst=5), lobby=lobby)
    await nursery.start(router.run)
    for _ in range(50):
        await router.send(Command(CHAT, ADA, "status", ""))
    await router.send(Command(CHAT, BOB, "status", ""))
    await router.send(ButtonPress(CHAT, ADA, "1", "x:0"))  # presses are never paced
    await trio.testing.wait_all_tasks_blocked()

    def drain() -> list[ChatInbox]:
        got = []
        while True:
            try:
                got.append(inboxes[CHAT.key].receive_nowait())
            except trio.WouldBlock:
                return got

    got = drain()
    assert sum(isinstance(m, Command) and m.user == ADA for m in got) == 5
    assert sum(isinstance(m, Command) and m.user == BOB for m in got) == 1
    assert sum(isinstance(m, ButtonPress) for m in got) == 1
    assert told == [(Command(CHAT, ADA, "status", ""), SLOW_DOWN)]
    # Still flooding at 2 a second: dropped without another word.
    for _ in range(20):
        await trio.sleep(0.5)
        await router.send(Command(CHAT, ADA, "status", ""))
    await trio.testing.wait_all_tasks_blocked()
    assert drain() == []
    assert len(told) == 1
    # Once they stop, they are welcome again.
    await trio.sleep(15)
    await router.send(Command(CHAT, ADA, "status", ""))
    await trio.testing.wait_all_tasks_blocked()
    assert [m for m in drain() if isinstance(m, Command)] == [Command(CHAT, ADA, "status", "")]


async def test_people_who_went_quiet_are_forgotten_by_the_command_rate(
    autojump_clock: trio.abc.Clock,
) -> None:
    rate = CommandRate(per_second=1.0, burst=5)
    for n in range(100):
        assert rate.admit(f"telegram:{n}") == (True, False)
    for _ in range(10):
        rate.admit("telegram:flooder")
    await trio.sleep(2)
    rate.forget_quiet()
    # Everyone who sent once has refilled; the flooder is still in debt and still paced.
    assert list(rate._buckets) == ["telegram:flooder"]
    assert rate.admit("telegram:flooder") == (False, False)
    await trio.sleep(20)
    rate.forget_quiet()
    assert rate._buckets == {}
