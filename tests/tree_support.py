"""A supervision tree shaped like the daemon's, with two sessions that report what
SessionActor reports, and an admin server: for the admin and console tests, without Docker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import trio

from anycode_actors.actors.admin import AdminServer
from supervisors import Actor, Backoff, ChildSpec, Registry, Restart, Supervisor, current_child

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


class WallClock:
    """A wall clock the test moves by hand, so started_at and uptimes are exact."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class FakeSession(Actor["str | trio.Event"]):
    """Reports into the registry what SessionActor._report does. A message is a number of
    new events, "crash", or an Event to set once everything sent before it is handled."""

    def __init__(self, session: str, chat: str, agent: str, sandbox: str | None) -> None:
        super().__init__(inbox_size=16)
        self.session = session
        self.chat = chat
        self.agent = agent
        self.sandbox = sandbox
        self.status = "starting"
        self.events = 0

    async def setup(self) -> None:
        self._report()

    async def handle(self, message: str | trio.Event) -> None:
        if isinstance(message, trio.Event):
            message.set()
        elif message == "crash":
            raise RuntimeError("boom")
        else:
            self.status = "running"
            self.events += int(message)
            self._report()

    async def settle(self) -> None:
        """Wait until every message sent so far is handled."""
        done = trio.Event()
        await self.send(done)
        await done.wait()

    def _report(self) -> None:
        context = current_child()
        assert context is not None
        context.update(
            session=self.session,
            chat=self.chat,
            agent=self.agent,
            status=self.status,
            sandbox=self.sandbox,
            events=self.events,
        )


async def _forever(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    task_status.started()
    await trio.sleep_forever()


class TwoSessionTree:
    """root → store, sessions → two sessions, admin: the daemon's shape, without Docker."""

    def __init__(self, sock: Path) -> None:
        self.clock = WallClock()
        self.registry = Registry(wall_clock=self.clock)
        self.sessions = Supervisor(name="sessions", backoff=Backoff(initial=0, jitter=0))
        self.server = AdminServer(self.registry, sock, daemon_id="d0123456789a")
        self.root = Supervisor(
            [
                ChildSpec("store", _forever, kind="worker"),
                self.sessions.spec("sessions"),
                ChildSpec("admin", self.server.run, kind="worker"),
            ],
            registry=self.registry,
        )
        self.first = FakeSession("ab12cd34-1111", "telegram:1001", "claude-code", "1a2b3c4d5e6f")
        self.second = FakeSession("ef56ab78-2222", "slack:C0123ABCD", "codex", None)

    async def start(self, nursery: trio.Nursery) -> None:
        await nursery.start(self.root.run)
        self.clock.now = T0 + timedelta(minutes=5)
        await self.sessions.start_child(
            self.first.spec("session:ab12cd34", restart=Restart.TRANSIENT)
        )
        self.clock.now = T0 + timedelta(minutes=6)
        await self.sessions.start_child(
            self.second.spec("session:ef56ab78", restart=Restart.TEMPORARY)
        )
        await self.first.send("17")
        await self.first.send("25")
        with trio.fail_after(5):
            await self.first.settle()
        self.clock.now = T0 + timedelta(hours=1, minutes=2, seconds=3)
