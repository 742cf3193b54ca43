"""Threads, forum topics and files at the chat actor: a /task's files go to its session's start, a
follow-up's to the session; with `task_threads` a /task outside a thread is acknowledged in the
channel and its session handed to the thread under the acknowledgement; a thread that closes
moves its sessions' records to the main chat, whose plain messages and /cancel then reach them.

Each conversation runs a real chat actor and flusher over a recording platform, with the real
store (in memory) and the real session directory; sessions are stand-ins whose inboxes the tests
read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import trio

from anycode_actors.actors.chat import ChatActor, ChatInbox, Notice, StartHere
from anycode_actors.actors.directory import Register, SessionDirectory
from anycode_actors.actors.flusher import Flusher, ThreadClosed
from anycode_actors.actors.session_api import (
    Cancel,
    FollowUp,
    Recovered,
    SessionHandle,
    SessionMessage,
)
from anycode_actors.chat.auth import AccessPolicy
from anycode_actors.chat.base import Attachment, ChatRef, Command, Message
from anycode_actors.store import Session, Store
from tests.actor_fakes import ADA, BOB, RecordingChat, make_config, memory_store

CHANNEL = ChatRef("slack", "C1")
PHOTO = Attachment("image", "photo_7.jpg", "image/jpeg", "file-7", 6)
NOTES = Attachment("document", "notes.txt", "text/plain", "file-8", 5)


@dataclass
class Started:
    session: Session
    attachments: tuple[Attachment, ...]
    inbox: trio.MemoryReceiveChannel[SessionMessage]
    chat: ChatRef


@dataclass
class Unit:
    actor: ChatActor
    client: RecordingChat
    syncs: int = 0

    async def settle(self) -> list[str]:
        """Everything this conversation shows once its actor handled all sent so far."""
        self.syncs += 1
        marker = f"[sync {self.syncs}]"
        await self.actor.send(Notice(marker))
        await self.client.wait_for_text(marker)
        return [t for t in self.client.texts() if not t.startswith("[sync ")]


@dataclass
class Rig:
    """Chat units started on demand, as the router does, all sharing one directory."""

    nursery: trio.Nursery
    store: Store
    directory: SessionDirectory
    task_threads: bool = False
    units: dict[ChatRef, Unit] = field(default_factory=dict)
    started: list[Started] = field(default_factory=list)
    more: trio.Event = field(default_factory=trio.Event)

    async def unit(self, chat: ChatRef) -> Unit:
        if chat in self.units:
            return self.units[chat]
        client = RecordingChat()
        client.task_threads = self.task_threads
        inbox = trio.open_memory_channel[ChatInbox](ChatActor.inbox_size)
        flusher = Flusher(client, chat, debounce=0.1, notify=inbox[0].clone())

        async def start_session(
            session: Session,
            recovered: Recovered | None,
            attachments: tuple[Attachment, ...] = (),
            /,
        ) -> SessionHandle:
            send, receive = trio.open_memory_channel[SessionMessage](16)
            self.started.append(Started(session, attachments, receive, chat))
            self.more.set()
            self.more = trio.Event()
            handle = SessionHandle(session.id, session.user, send)
            await self.directory.send(Register(handle))
            return handle

        async def hand_over(to: ChatRef, message: ChatInbox) -> None:
            await (await self.unit(to)).actor.send(message)

        actor = ChatActor(
            chat,
            client=client,
            flusher=flusher.address(),
            store=self.store,
            config=make_config(),
            start_session=start_session,
            access=AccessPolicy.of(everyone=True),
            directory=self.directory.address(),
            hand_over=hand_over,
            inbox=inbox,
        )
        unit = self.units[chat] = Unit(actor, client)
        await self.nursery.start(flusher.run)
        await self.nursery.start(actor.run)
        return unit

    async def session(self, index: int) -> Started:
        with trio.fail_after(30):
            while len(self.started) <= index:
                await self.more.wait()
        return self.started[index]


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    async with memory_store() as store:
        yield store


async def rig_for(nursery: trio.Nursery, store: Store, *, task_threads: bool = False) -> Rig:
    directory = SessionDirectory()
    await nursery.start(directory.run)
    return Rig(nursery, store, directory, task_threads)


async def received(started: Started) -> SessionMessage:
    with trio.fail_after(30):
        return await started.inbox.receive()


async def test_a_tasks_files_go_to_its_session_and_a_follow_ups_files_to_the_session(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await rig_for(nursery, store)
    unit = await rig.unit(CHANNEL)
    await unit.actor.send(Command(CHANNEL, ADA, "task", "what is this?", "m1", (PHOTO,)))
    first = await rig.session(0)
    assert first.attachments == (PHOTO,)
    assert "Files: photo_7.jpg" in (await unit.settle())[0]
    await unit.actor.send(Message(CHANNEL, ADA, "", "m2", attachments=(NOTES,)))
    assert await received(first) == FollowUp("", ADA, (NOTES,))
    # A file posted in passing, by someone with no session, is nobody's business.
    await unit.actor.send(Message(CHANNEL, BOB, "", "m3", attachments=(NOTES,)))
    assert not any("No active session" in t for t in await unit.settle())


async def test_a_channel_task_runs_in_a_thread_under_its_acknowledgement(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await rig_for(nursery, store, task_threads=True)
    channel = await rig.unit(CHANNEL)
    await channel.actor.send(Command(CHANNEL, ADA, "task", "fix the build", "m1", (PHOTO,)))
    started = await rig.session(0)
    [ack] = [m for m, (t, _) in channel.client.messages.items() if "Starting" in t]
    thread = ChatRef("slack", "C1", ack)
    assert started.chat == thread  # the thread's unit runs it: its output goes there
    assert started.session.thread == ack and started.attachments == (PHOTO,)
    stored = await store.get_session(started.session.id)
    assert stored is not None and stored.thread == ack  # a restart takes it up there
    # A plain message in the thread is its follow-up; /cancel there takes it too.
    in_thread = rig.units[thread]
    await in_thread.actor.send(Message(thread, ADA, "and the tests", "m2"))
    assert await received(started) == FollowUp("and the tests", ADA)
    await in_thread.actor.send(Command(thread, ADA, "cancel", ""))
    assert isinstance(await received(started), Cancel)
    # /status in the channel sees the whole chat.
    await channel.actor.send(Command(CHANNEL, ADA, "status", ""))
    assert any(started.session.id[:8] in t for t in await channel.settle())


async def test_without_task_threads_a_channel_task_stays_in_the_channel(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await rig_for(nursery, store, task_threads=False)
    channel = await rig.unit(CHANNEL)
    await channel.actor.send(Command(CHANNEL, ADA, "task", "fix the build", "m1"))
    started = await rig.session(0)
    assert (started.chat, started.session.thread) == (CHANNEL, None)
    assert list(rig.units) == [CHANNEL]


async def test_a_closed_thread_moves_its_sessions_to_the_main_chat(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await rig_for(nursery, store)
    topic = ChatRef("telegram", "-100", "5")
    main = ChatRef("telegram", "-100")
    in_topic = await rig.unit(topic)
    await in_topic.actor.send(Command(topic, ADA, "task", "fix it", "m1"))
    started = await rig.session(0)
    assert started.session.thread == "5"
    main_unit = await rig.unit(main)
    # Before: a plain message in the main chat is not the topic session's.
    await main_unit.actor.send(Message(main, ADA, "hello?", "m2"))
    assert "No active session" in (await main_unit.settle())[-1]

    await in_topic.actor.send(ThreadClosed(topic))  # what the flusher says when it moves
    await in_topic.settle()
    stored = await store.get_session(started.session.id)
    assert stored is not None and stored.thread is None
    await main_unit.actor.send(Message(main, ADA, "still there?", "m3"))
    assert await received(started) == FollowUp("still there?", ADA)
    await main_unit.actor.send(Command(main, ADA, "cancel", ""))
    assert isinstance(await received(started), Cancel)
    # Someone else's message in the main chat does not reach it.
    await main_unit.actor.send(Message(main, BOB, "me too", "m4"))
    assert "No active session" in (await main_unit.settle())[-1]


async def test_start_here_runs_the_session_in_the_receiving_thread(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, store: Store
) -> None:
    rig = await rig_for(nursery, store)
    thread = ChatRef("slack", "C1", "1700000000.000100")
    session = await store.create_session(
        platform="slack",
        chat="C1",
        thread=thread.thread,
        user=ADA.id,
        agent="claude-code",
        prompt="fix it",
    )
    await (await rig.unit(thread)).actor.send(StartHere(session, (NOTES,)))
    started = await rig.session(0)
    assert (started.chat, started.attachments) == (thread, (NOTES,))
