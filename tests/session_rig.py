"""One session actor with a configuration of the test's choosing (credentials included), its real
flusher and a recording chat, the fake provider and a scripted agent: for tests of what the
session does with the agent's output and files. tests/test_actors_session.py has the full rig."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import trio

from anycode_actors.actors.flusher import Flusher
from anycode_actors.actors.publisher import Publisher
from anycode_actors.actors.session import SessionActor
from anycode_actors.actors.session_api import SessionClosed
from anycode_actors.config import Config, config_from_mapping
from anycode_actors.store import Session, Store
from supervisors import Registry, Restart, Supervisor
from tests.actor_fakes import ADA, CHAT, FakeAgent, FakeProvider, RecordingChat, use_agent

TELEGRAM_TOKEN = "123456:ABCdefGHIjklMNOpqrsTUVwxyz012345678"


def config_with(env: dict[str, str] | None = None, /, **session: Any) -> Config:
    """Telegram and the built-in agents; `env` is claude-code's credentials, `session` the
    session settings (idle_minutes 0 unless given)."""
    data: dict[str, Any] = {
        "telegram": {"bot_token": TELEGRAM_TOKEN},
        "session": {"debounce_ms": 500, "idle_minutes": 0, **session},
    }
    if env:
        data["agents"] = {"claude-code": {"env": env}}
    return config_from_mapping(data, environ={})


@dataclass
class Rig:
    session: Session
    client: RecordingChat
    provider: FakeProvider
    actor: SessionActor
    closed: trio.MemoryReceiveChannel[SessionClosed]

    async def wait_closed(self, within: float = 600) -> SessionClosed:
        with trio.fail_after(within):
            return await self.closed.receive()


async def start(
    nursery: trio.Nursery,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    agent: FakeAgent,
    config: Config,
    provider: FakeProvider | None = None,
    publisher: Publisher | None = None,
) -> Rig:
    """Start a session actor for `/task fix the login bug` under a supervisor, as the daemon
    does."""
    use_agent(monkeypatch, agent)
    client = RecordingChat()
    flusher = Flusher(client, CHAT, debounce=config.session.debounce_ms / 1000)
    await nursery.start(flusher.run)
    session = await store.create_session(
        platform=CHAT.platform,
        chat=CHAT.chat_id,
        user=ADA.id,
        agent="claude-code",
        prompt="fix the login bug",
    )
    provider = provider or FakeProvider()
    closed_send, closed_receive = trio.open_memory_channel[SessionClosed](4)
    actor = SessionActor(
        session,
        chat=CHAT,
        flusher=flusher.address(),
        closed=closed_send,
        store=store,
        provider=provider,
        config=config,
        answer_press=client.answer_press,
        publisher=publisher,
    )
    sessions = Supervisor(name="sessions", registry=Registry())
    await nursery.start(sessions.run)
    await sessions.start_child(
        actor.spec(f"session:{session.id[:8]}", restart=Restart.TEMPORARY, shutdown=90)
    )
    return Rig(session, client, provider, actor, closed_receive)
