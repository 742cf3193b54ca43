"""Arbitrary inbound events through the router and the chat actors: nothing crashes, every input
gets an answer.

Hypothesis plays a whole group of people: commands with any text (unicode, 100 KB), plain
messages and replies, button presses with forged, replayed and foreign data, in several chats
and topics. After each event the test checks that the person got something back (a message, a
private refusal, a press answer) or that a session received it, and at the end that no actor
crashed and nothing was logged as an unexpected error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anycode_actors.actors.chat import ChatActor, ChatInbox, Notice
from anycode_actors.actors.directory import Register, SessionDirectory
from anycode_actors.actors.flusher import Flusher
from anycode_actors.actors.router import CommandRate, Deliver, Router
from anycode_actors.actors.session_api import Recovered, SessionHandle, SessionMessage
from anycode_actors.chat.auth import AccessPolicy
from anycode_actors.chat.base import ButtonPress, ChatEvent, ChatRef, Command, Message, User
from anycode_actors.config import Config, config_from_mapping
from anycode_actors.store import InteractionOption, Session
from tests.actor_fakes import RecordingChat, memory_store

PEOPLE = [User("111", "@ada"), User("222", "B\u202eob"), User("333", "@carol"), User("444", "")]
CHATS = [
    ChatRef("telegram", "-100777"),
    ChatRef("telegram", "-100777", "55"),
    ChatRef("telegram", "111"),
]
OPTIONS = (
    InteractionOption("allow", "Allow once", "allow_once"),
    InteractionOption("reject", "Reject", "reject_once"),
)
COMMANDS = ["task", "start", "status", "cancel", "agents", "help", "TASK", "frobnicate", ""]
# Placeholders for the ids of the interaction made at the start of each example.
VALID = "<valid>"


def _config() -> Config:
    return config_from_mapping(
        {
            "telegram": {
                "bot_token": "123456:ABCdefGHIjklMNOpqrsTUVwxyz012345678",
                "allowed_users": [p.id for p in PEOPLE],
                "admins": ["333"],
            },
            "session": {"debounce_ms": 500},
            # Pacing has its own tests; here every event must reach a chat actor.
            "limits": {"command_burst": 100_000, "max_sessions_per_user": 2},
        },
        environ={},
    )


texts = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=200),
    st.sampled_from(["", " ", "\u202e", "x" * 100_000, "/task", "acme/web", "\x00\x01"]),
)
button_data = st.one_of(
    st.text(max_size=80),
    st.sampled_from(
        [f"{VALID}:0", f"{VALID}:1", f"{VALID}:2", f"{VALID}:¹", "x:¹", ":0", "x:٣", "nope:0"]
    ),
)
people = st.sampled_from(PEOPLE)
chats = st.sampled_from(CHATS)
events = st.one_of(
    st.builds(
        lambda chat, user, name, args: Command(chat, user, name, args, "9"),
        chats,
        people,
        st.sampled_from(COMMANDS),
        texts,
    ),
    st.builds(
        lambda chat, user, text, reply: Message(chat, user, text, "9", reply),
        chats,
        people,
        texts,
        st.one_of(st.none(), st.sampled_from(["1", "2", "700"]), st.text(max_size=10)),
    ),
    st.builds(
        lambda chat, user, data: ButtonPress(chat, user, "42", data, "q"),
        chats,
        people,
        button_data,
    ),
)


@dataclass
class World:
    client: RecordingChat
    sessions: dict[str, trio.MemoryReceiveChannel[SessionMessage]]
    started: int = 0

    def answers(self) -> int:
        """Everything anyone got back so far, and everything a session received."""
        received = 0
        for inbox in self.sessions.values():
            received += inbox.statistics().current_buffer_used
        return (
            len(self.client.calls)
            + len(self.client.presses)
            + len(self.client.refusals)
            + self.started
            + received
        )


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def _play(script: list[ChatEvent]) -> None:
    config = _config()
    client = RecordingChat()
    world = World(client, {})
    async with memory_store() as store, trio.open_nursery() as nursery:
        directory = SessionDirectory()
        await nursery.start(directory.run)
        # One session of Ada's with a pending permission, as if she had started it earlier.
        owned = await store.create_session(
            platform="telegram", chat="-100777", user="111", agent="claude-code", prompt="x"
        )
        interaction = await store.create_interaction(
            owned.id, "permission", request_id="1", options=OPTIONS
        )
        send, world.sessions[owned.id] = trio.open_memory_channel[SessionMessage](1000)
        await directory.send(Register(SessionHandle(owned.id, "111", send)))

        async def start_session(session: Session, recovered: Recovered | None) -> SessionHandle:
            world.started += 1
            send, world.sessions[session.id] = trio.open_memory_channel[SessionMessage](1000)
            return SessionHandle(session.id, session.user, send)

        async def start_chat(
            chat: ChatRef, lobby_spoke_at: float | None
        ) -> trio.MemorySendChannel[ChatInbox]:
            inbox = trio.open_memory_channel[ChatInbox](ChatActor.inbox_size)
            flusher = Flusher(client, chat, debounce=0.5, notify=inbox[0].clone())
            actor = ChatActor(
                chat,
                client=client,
                flusher=flusher.address(),
                store=store,
                config=config,
                start_session=start_session,
                access=AccessPolicy.of(
                    config.telegram.allowed_users,  # type: ignore[union-attr]
                    admins=config.telegram.admins,  # type: ignore[union-attr]
                ),
                directory=directory.address(),
                inbox=inbox,
            )
            # Started straight in the test's nursery: a crash fails the test at once.
            await nursery.start(flusher.run)
            await nursery.start(actor.run)
            return actor.address()

        router = Router(start_chat, rate=CommandRate(1.0, config.limits.command_burst))
        await nursery.start(router.run)
        for n, event in enumerate(script):
            if isinstance(event, ButtonPress):
                data = event.data.replace(VALID, interaction.id)
                event = ButtonPress(event.chat, event.user, event.message_id, data, event.press_id)
            before = world.answers()
            await router.send(event)
            marker = f"[sync {n}]"
            await router.send(Deliver(event.chat, Notice(marker)))
            await client.wait_for_text(marker)
            silent = isinstance(event, Message) and not event.text.strip()
            if not silent:
                # The marker itself is one call; the event must have caused at least one more.
                assert world.answers() >= before + 2, f"no answer to {event!r:.300}"
        nursery.cancel_scope.cancel()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(script=st.lists(events, min_size=1, max_size=12))
def test_no_inbound_event_crashes_an_actor_and_each_gets_an_answer(
    script: list[ChatEvent],
) -> None:
    errors = _Errors()
    logging.getLogger("anycode_actors").addHandler(errors)
    try:
        trio.run(_play, script, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        logging.getLogger("anycode_actors").removeHandler(errors)
    assert [r.getMessage() for r in errors.records] == []
