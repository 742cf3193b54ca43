"""No chat waits on another: the router's policy for a backed-up chat, chat units that stop, and
chat actors that stop when their chat goes quiet."""

from __future__ import annotations

import trio
import trio.testing

from anycode_actors.actors.chat import ChatActor, ChatInbox, Notice
from anycode_actors.actors.flusher import Flusher
from anycode_actors.actors.lobby import Answer, LobbyInbox, Tell
from anycode_actors.actors.router import BUSY, FULL, LOBBY_SPACING, ChatStopped, Deliver, Router
from anycode_actors.actors.session import Recovered
from anycode_actors.actors.session_api import SessionClosed, SessionHandle, SessionMessage
from anycode_actors.chat.base import ButtonPress, ChatEvent, ChatRef, Command, Message
from anycode_actors.store import Session
from tests.actor_fakes import ADA, BOB, CHAT, OTHER_CHAT, RecordingChat, make_config, memory_store


class Chats:
    """Chat inboxes the test reads by hand (a chat actor that is slow or stuck)."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self.inboxes: dict[str, trio.MemoryReceiveChannel[ChatInbox]] = {}
        self.sends: dict[str, trio.MemorySendChannel[ChatInbox]] = {}
        self.started: list[str] = []
        self.told: list[tuple[ChatEvent, str]] = []
        self.answered: list[Command] = []
        self.lobby_spoke_at: dict[str, float | None] = {}
        self.lobby, self._lobby_inbox = trio.open_memory_channel[LobbyInbox](1000)

    async def read_lobby(self) -> None:
        async for message in self._lobby_inbox:
            if isinstance(message, Tell):
                self.told.append((message.event, message.text))
            else:
                assert isinstance(message, Answer)
                self.answered.append(message.command)

    async def start(
        self, chat: ChatRef, lobby_spoke_at: float | None = None
    ) -> trio.MemorySendChannel[ChatInbox]:
        send, self.inboxes[chat.key] = trio.open_memory_channel[ChatInbox](self.size)
        self.sends[chat.key] = send
        self.started.append(chat.key)
        self.lobby_spoke_at[chat.key] = lobby_spoke_at
        return send

    def drain(self, chat: ChatRef) -> list[ChatInbox]:
        got = []
        while True:
            try:
                got.append(self.inboxes[chat.key].receive_nowait())
            except trio.WouldBlock:
                return got


async def start_router(nursery: trio.Nursery, chats: Chats, backlog: int = 10) -> Router:
    router = Router(chats.start, lobby=chats.lobby, backlog=backlog)
    nursery.start_soon(chats.read_lobby)
    await nursery.start(router.run)
    return router


async def test_a_flooded_chat_never_delays_another_chat(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    chats = Chats(size=4)
    router = await start_router(nursery, chats, backlog=1000)
    for n in range(400):  # nobody reads chat A's inbox
        await router.send(Command(CHAT, ADA, "task", f"job {n}"))
    await router.send(Command(OTHER_CHAT, BOB, "status", ""))
    await trio.testing.wait_all_tasks_blocked()
    assert chats.drain(OTHER_CHAT) == [Command(OTHER_CHAT, BOB, "status", "")]


async def test_presses_follow_ups_and_cancels_wait_in_order_and_chatter_is_shed_once(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    chats = Chats(size=2)
    router = await start_router(nursery, chats)
    first = [Command(CHAT, ADA, "task", "one"), Command(CHAT, ADA, "task", "two")]
    waiting: list[ChatInbox] = [
        ButtonPress(CHAT, ADA, "7", "abc:0", "q1"),
        Message(CHAT, ADA, "and add tests"),
        Command(CHAT, ADA, "cancel", ""),
        Command(CHAT, ADA, "task", "three"),
    ]
    chatter = [Command(CHAT, BOB, "help", ""), Command(CHAT, BOB, "status", "")]
    for event in [*first, waiting[0], chatter[0], *waiting[1:], chatter[1]]:
        await router.send(event)  # type: ignore[arg-type]
    await router.send(Command(CHAT, ADA, "task", "three"))  # the same again: coalesced
    await router.send(Deliver(CHAT, Notice("the daemon restarted")))
    await trio.testing.wait_all_tasks_blocked()
    # Chatter was shed with one answer; nothing the session or the user needs was dropped.
    assert chats.told == [(chatter[0], BUSY)]
    got: list[ChatInbox] = []
    with trio.fail_after(10):
        while len(got) < 7:
            got.append(await chats.inboxes[CHAT.key].receive())
    assert got == [*first, *waiting, Notice("the daemon restarted")]
    await trio.testing.wait_all_tasks_blocked()
    assert chats.drain(CHAT) == []
    # Caught up: chatter goes through again.
    await router.send(Command(CHAT, BOB, "help", ""))
    await trio.testing.wait_all_tasks_blocked()
    assert chats.drain(CHAT) == [Command(CHAT, BOB, "help", "")]


async def test_a_full_backlog_tells_the_sender_their_message_was_not_delivered(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    chats = Chats(size=1)
    router = await start_router(nursery, chats, backlog=2)
    events = [Message(CHAT, ADA, f"note {n}") for n in range(5)]
    for event in events:
        await router.send(event)
    await trio.testing.wait_all_tasks_blocked()
    # One in the inbox, two waiting, two refused with a clear message.
    assert chats.told == [(events[3], FULL), (events[4], FULL)]


async def test_a_chat_unit_that_stopped_is_replaced_by_a_fresh_one(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    chats = Chats()
    router = await start_router(nursery, chats)
    await router.send(Command(CHAT, ADA, "status", ""))
    await trio.testing.wait_all_tasks_blocked()
    chats.inboxes[CHAT.key].close()  # the unit crashed for good, or its supervisor restarted
    await router.send(Command(CHAT, ADA, "task", "x"))
    await trio.testing.wait_all_tasks_blocked()
    assert chats.started == [CHAT.key, CHAT.key]
    assert chats.drain(CHAT) == [Command(CHAT, ADA, "task", "x")]


async def test_a_stopped_unit_is_forgotten_so_the_map_holds_only_live_chats(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    chats = Chats()
    router = await start_router(nursery, chats)
    await router.send(Command(CHAT, ADA, "status", ""))
    await trio.testing.wait_all_tasks_blocked()
    await router.send(ChatStopped(CHAT, chats.sends[CHAT.key]))
    await trio.testing.wait_all_tasks_blocked()
    assert router._lines == {}


async def test_the_backlog_of_a_unit_that_stopped_goes_to_its_successor(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    # Unbuffered inboxes: what the router hands over is taken at once, so closing an inbox
    # drops nothing that was in it (a unit that crashes with messages in its inbox loses them).
    chats = Chats(size=0)
    router = await start_router(nursery, chats)
    presses = [ButtonPress(CHAT, ADA, "7", f"abc:{n}", f"q{n}") for n in range(3)]
    for press in presses:
        await router.send(press)
    await trio.testing.wait_all_tasks_blocked()
    old = chats.inboxes[CHAT.key]
    assert await old.receive() == presses[0]
    old.close()
    await trio.testing.wait_all_tasks_blocked()
    assert chats.started == [CHAT.key, CHAT.key]
    got = [await chats.inboxes[CHAT.key].receive() for _ in range(2)]
    assert got == presses[1:]


# --- chat actors that go quiet ------------------------------------------------------------------


async def test_a_quiet_chat_actor_stops_but_not_while_a_session_is_live(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    client = RecordingChat()
    started: list[Session] = []

    async def start_session(session: Session, recovered: Recovered | None) -> SessionHandle:
        started.append(session)
        send, _ = trio.open_memory_channel[SessionMessage](16)
        return SessionHandle(session.id, session.user, send)

    told: list[float] = []
    async with memory_store() as store:
        flusher = Flusher(client, CHAT, debounce=0.5)
        actor = ChatActor(
            CHAT,
            client=client,
            flusher=flusher.address(),
            store=store,
            config=make_config(),
            start_session=start_session,
            idle_after=600,
            on_stop=lambda: told.append(trio.current_time()),
        )
        inbox = actor.address()
        await nursery.start(flusher.run)
        await nursery.start(actor.run)
        await inbox.send(Command(CHAT, ADA, "task", "fix it"))
        await trio.sleep(3600)  # an hour with a live session: still here
        assert not actor.stopped.is_set()
        await inbox.send(SessionClosed(started[0].id, "completed"))
        await trio.sleep(599)
        assert not actor.stopped.is_set()
        await trio.sleep(2)
        assert actor.stopped.is_set()
        assert len(told) == 1  # whoever runs its unit is told, once
        # Its inbox is closed: a sender learns at once that it must start a new unit.
        try:
            inbox.send_nowait(Notice("hello?"))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        else:
            raise AssertionError("the stopped actor's inbox still takes messages")


async def test_a_stateless_command_from_a_chat_without_a_unit_is_answered_by_the_lobby(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    chats = Chats()
    router = await start_router(nursery, chats)
    questions = [Command(CHAT, ADA, "help", ""), Command(OTHER_CHAT, BOB, "hepl", "")]
    for question in questions:
        await router.send(question)
    await trio.testing.wait_all_tasks_blocked()
    # No chat unit for a question whose answer needs no conversation.
    assert chats.started == []
    assert chats.answered == questions
    assert router._lines == {}
    # A second question within the spacing goes to a unit, whose flusher paces the chat,
    # counting the lobby's answer.
    asked_at = trio.current_time()
    await router.send(Command(CHAT, ADA, "agents", ""))
    await trio.testing.wait_all_tasks_blocked()
    assert chats.started == [CHAT.key]
    assert chats.lobby_spoke_at[CHAT.key] == asked_at
    assert chats.drain(CHAT) == [Command(CHAT, ADA, "agents", "")]
    # After the spacing, a chat without a unit is the lobby's again.
    await trio.sleep(LOBBY_SPACING)
    await router.send(Command(OTHER_CHAT, BOB, "help", ""))
    await trio.testing.wait_all_tasks_blocked()
    assert chats.answered[-1] == Command(OTHER_CHAT, BOB, "help", "")
    assert chats.started == [CHAT.key]


async def test_a_stateless_command_in_a_chat_with_a_unit_goes_to_the_unit(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    chats = Chats()
    router = await start_router(nursery, chats)
    await router.send(Command(CHAT, ADA, "task", "go"))
    await router.send(Command(CHAT, ADA, "help", ""))
    await trio.testing.wait_all_tasks_blocked()
    assert chats.answered == []
    assert chats.drain(CHAT) == [Command(CHAT, ADA, "task", "go"), Command(CHAT, ADA, "help", "")]
