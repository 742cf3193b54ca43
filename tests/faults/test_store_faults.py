"""Issue 11, part A: the SQLite store failing under a running daemon.

The daemon is the real one (`anycode_actors.daemon.Daemon`, in this process) with the real store
on a file (its worker thread, its 10 s busy timeout), the real `TelegramClient` against the
Telegram stand-in, and the local provider running the scripted ACP agent
(`anycode_actors.cli.demo_agent`: it streams a short introduction, then asks for a permission). The
fault is in SQLite only:

- locked: another process holds `BEGIN EXCLUSIVE` on the database for a little longer than the
  store's busy timeout, while Ada's session streams;
- full: the database lives on a tmpfs of 1 MiB, mounted for the test (this needs root; the
  alternative, RLIMIT_FSIZE in a subprocess daemon, makes SQLite report an I/O error rather than
  a full disk), and a filler file takes the rest of it while Ada's session streams.

Expected: the daemon keeps running, the affected session fails cleanly and its chat is told why,
other chats keep working. Where the daemon falls short, the test checks everything else, then
reports the gap with `pytest.xfail`. Each test's docstring records what happened.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest
import trio

from anycode_actors.agents import TextDelta
from anycode_actors.config import config_from_mapping
from anycode_actors.daemon import Daemon
from anycode_actors.store import (
    DEFAULT_BUSY_TIMEOUT,
    DatabaseLocked,
    DiskFull,
    SessionStatus,
    Store,
    StoreUnavailable,
)
from supervisors import ChildEntry
from tests.docker_support import require_or_skip
from tests.fakes.telegram import FakeTelegram, MessageView, User
from tests.faults.gaps import expect_known_gaps

ADA: Final = User(111, "Ada", username="ada")
BOB: Final = User(222, "Bob", username="bob")
CAROL: Final = User(333, "Carol", username="carol")
#: Seconds between the scripted agent's chunks (three words each): its answer takes about 4 s.
CHUNK_DELAY: Final = 0.2
#: The lock outlasts the busy timeout by this much, so a write that starts waiting just after
#: the lock was taken fails for certain (with exactly 10 s it may or may not).
LOCK_MARGIN: Final = 2.0
STEP: Final = 60.0
FINAL_NOTICE: Final = re.compile(r"Session `[0-9a-f]{8}` (?:completed|failed|cancelled)[^\n]*")
#: The other process: takes the write lock, says so, holds it, lets go.
LOCKER: Final = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("ROLLBACK")
"""


@dataclass
class World:
    telegram: FakeTelegram
    daemon: Daemon
    database: Path
    sandboxes: Path

    async def task(self, user: User, prompt: str) -> None:
        self.telegram.inject_message(user.id, user, f"/task {prompt}")
        await trio.lowlevel.checkpoint()

    async def wait_for(self, user: User, fragment: str, within: float = STEP) -> MessageView:
        with trio.fail_after(within):
            return await self.telegram.wait_for_message(user.id, containing=fragment)

    def shown(self, user: User) -> str:
        return "\n".join(m.text for m in self.telegram.bot_messages(user.id))

    def final_notices(self, user: User) -> list[str]:
        return FINAL_NOTICE.findall(self.shown(user))

    async def sessions(self) -> dict[str, tuple[str, str | None, str | None]]:
        """Every session, by chat: (status, reason, sandbox id), read by another connection."""

        def read() -> dict[str, tuple[str, str | None, str | None]]:
            uri = f"file:{self.database}?mode=ro"
            with closing(sqlite3.connect(uri, uri=True)) as db:
                rows = db.execute("SELECT chat, status, reason, sandbox_id FROM sessions")
                return {chat: (status, reason, sandbox) for chat, status, reason, sandbox in rows}

        return await trio.to_thread.run_sync(read)

    def restarts(self) -> dict[str, int]:
        """Restarts of the daemon's static children (a crash that reached the tree)."""
        return {
            entry.path: entry.restarts
            for entry in self.daemon.registry.snapshot()
            if entry.path.count("/") == 1 and entry.restarts
        }

    def agents(self, sandbox: str) -> list[int]:
        """Running processes of the sandbox's agent (their environment names its folder)."""
        marker = f"ANYCODE_STATE_DIR={sandbox}/".encode()
        found = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    if marker in (proc / "environ").read_bytes():
                        state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
                        if state not in ("Z", "X"):
                            found.append(int(proc.name))
                except OSError:
                    continue
        return found


@asynccontextmanager
async def store_world(nursery: trio.Nursery, tmp: Path, database: Path) -> AsyncIterator[World]:
    """The daemon with its database at `database`, running and polling the stand-in."""
    telegram = FakeTelegram()
    url = await telegram.start(nursery)
    sandboxes = tmp / "sandboxes"
    agent = [sys.executable, "-m", "anycode_actors.cli.demo_agent", "--delay", str(CHUNK_DELAY)]
    config = config_from_mapping(
        {
            "telegram": {
                "bot_token": telegram.token,
                "api_base_url": url,
                "poll_timeout": 5,
                "allow_everyone": True,
            },
            "database": {"path": str(database)},
            "admin": {"socket": str(tmp / "anycode.sock")},
            "sandbox": {"provider": "local", "protocol": "acp"},
            "local": {"workdir": str(sandboxes), "allow_unsandboxed": True},
            "agents": {"default_agent": "demo", "demo": {"acp_command": agent}},
            "session": {"debounce_ms": 100, "idle_minutes": 10},
        },
        environ={},
        base_dir=tmp,
    )
    # A short grace, so the watchdog settles a record its actor could not end within the test.
    daemon = Daemon(config, watchdog_interval=2.0, orphan_age=4.0)
    async with trio.open_nursery() as inner:
        await inner.start(daemon.run)
        try:
            with trio.fail_after(STEP):
                await telegram.wait_until_polling()
            yield World(telegram, daemon, database, sandboxes)
        finally:
            inner.cancel_scope.cancel()


async def streaming(world: World, user: User) -> None:
    """`user` starts a task; returns once the first words of the answer are shown."""
    await world.task(user, "hello")
    await world.wait_for(user, "Hello! I am")


async def works(world: World, user: User) -> None:
    """`user`'s task runs: the whole answer streams and its permission prompt shows."""
    await world.wait_for(user, "so I ask you first.")
    await world.wait_for(user, "Permission requested")


def test_the_database_locked_by_another_process_while_a_session_streams(tmp_path: Path) -> None:
    """Another process holds the write lock for 12 s (the busy timeout, 10 s, plus 2) while
    Ada's session streams; Bob starts a task during the lock, Carol after it.

    What happens: Ada's first event write waits the 10 s busy timeout and raises
    DatabaseLocked; her session fails with "the database failed: the database is locked by
    another program (waited 10 s)", stops the agent, removes its folder and writes its status
    once the lock is gone. Sessions lost: 1 (Ada's, ended with a message). Words: those shown
    before the lock stay; the rest of the answer is never shown, none repeated. Leaked:
    nothing. Bob's /task waits for the lock (every store call queues behind the one blocked
    write), then runs normally; so does Carol's. The daemon's tree: no restarts. (Before the
    fix: the session actor crashed, and its cleanup said "cancelled (the daemon is shutting
    down)".)
    """
    expect_known_gaps(locked_while_a_session_streams, tmp_path)


async def locked_while_a_session_streams(nursery: trio.Nursery, tmp_path: Path) -> list[str]:
    async with store_world(nursery, tmp_path, tmp_path / "anycode.db") as world:
        await streaming(world, ADA)
        lock_for = DEFAULT_BUSY_TIMEOUT + LOCK_MARGIN
        locker = await trio.lowlevel.open_process(
            [sys.executable, "-c", LOCKER, str(world.database), str(lock_for)],
            stdout=subprocess.PIPE,
        )
        try:
            assert locker.stdout is not None
            said = b""
            with trio.fail_after(STEP):
                while not said.endswith(b"\n"):
                    said += await locker.stdout.receive_some()
            assert said == b"locked\n"
            # Ada's next chunk comes within CHUNK_DELAY: her write is first in the queue.
            await trio.sleep(5 * CHUNK_DELAY)
            await world.task(BOB, "hello")
            with trio.fail_after(lock_for + STEP):
                await locker.wait()
        finally:
            if locker.returncode is None:
                locker.kill()
        await world.task(CAROL, "hello")

        with trio.fail_after(STEP):
            await world.telegram.wait_for(lambda: world.final_notices(ADA) or None)
        await works(world, BOB)
        await works(world, CAROL)
        sessions = await world.sessions()
        status, reason, sandbox = sessions[str(ADA.id)]
        assert SessionStatus(status).is_terminal
        assert sandbox is not None and not await trio.Path(sandbox).exists()
        assert world.agents(sandbox) == []
        assert sessions[str(BOB.id)][0] == sessions[str(CAROL.id)][0] == "running"
        assert world.restarts() == {}
        notice = next(m.text for m in world.telegram.bot_messages(ADA.id) if "Session `" in m.text)
    if "database" not in notice:
        return [
            f"Ada was told {notice!r} (stored reason {reason!r}), not that the database was "
            "locked: her session actor crashed on the store's error instead of failing the "
            "session"
        ]
    return []


@contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[None]:
    """A tmpfs of `size` at `path` for the block (mounting needs root)."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        error = mounted.stderr.decode(errors="replace").strip()
        require_or_skip(f"the disk-full test mounts a small tmpfs, which needs root: {error}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(path: Path) -> int:
    """Write zeros to `path` until the disk is full; the bytes written."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while True:
            written += os.write(fd, bytes(64 * 1024))
    except OSError:
        return written
    finally:
        os.close(fd)


def test_the_disk_holding_the_database_fills_up_while_a_session_streams(tmp_path: Path) -> None:
    """The database's filesystem (a 1 MiB tmpfs) fills up while Ada's session streams; Bob
    starts a task while it is full, Carol after space was freed.

    What happens: Ada's next event write raises DiskFull; her session fails, says why ("the
    database failed: the disk that holds the database is full"), stops the agent and removes
    the sandbox. Its final status cannot be written on the full disk, so the record stays
    active until the watchdog finds it without an actor (and without a sandbox) for its grace
    and fails it. Sessions lost: 1 (Ada's, ended with a message). Words: those shown before the
    disk filled stay, the rest is never shown, none repeated. Leaked: nothing. Bob's /task is
    answered "Sorry, that cannot be done right now: the disk that holds the database is full."
    Carol's task, after space was freed, runs normally. The daemon's tree: no restarts. (Before
    the fix: Ada's actor crashed, no notice, the record stayed "running" for good, Bob got
    "could not be handled".)
    """
    expect_known_gaps(disk_full_while_a_session_streams, tmp_path)


async def disk_full_while_a_session_streams(nursery: trio.Nursery, tmp_path: Path) -> list[str]:
    mount = tmp_path / "db"
    with small_filesystem(mount, "1m"):
        async with store_world(nursery, tmp_path, mount / "anycode.db") as world:
            await streaming(world, ADA)
            filler = mount / "filler"
            assert await trio.to_thread.run_sync(fill, filler) > 0
            await world.task(BOB, "hello")
            await world.wait_for(BOB, "cannot be done right now")
            with trio.fail_after(STEP):
                # Ada's session actor has ended, one way or another.
                while any(e.path.startswith("root/sessions/session:") for e in live(world)):  # noqa: ASYNC110
                    await trio.sleep(0.1)
            told = world.final_notices(ADA)
            await trio.to_thread.run_sync(filler.unlink)
            await world.task(CAROL, "hello")
            await works(world, CAROL)
            # Her actor could not write its end on the full disk: the watchdog settles the
            # record once it has had no actor for the grace (orphan_age).
            with trio.move_on_after(STEP):
                while not SessionStatus((await world.sessions())[str(ADA.id)][0]).is_terminal:  # noqa: ASYNC110 - polls another connection
                    await trio.sleep(0.5)

            sessions = await world.sessions()
            status, _, sandbox = sessions[str(ADA.id)]
            assert sandbox is not None and not await trio.Path(sandbox).exists()
            assert world.agents(sandbox) == []
            assert str(BOB.id) not in sessions
            assert world.restarts() == {}
            gaps = []
            if not told:
                gaps.append(f"Ada was never told (she saw {world.shown(ADA)!r})")
            elif "disk" not in told[0]:
                gaps.append(f"Ada was told {told[0]!r}, not that the disk is full")
            if not SessionStatus(status).is_terminal:
                gaps.append(f"her session is still {status!r} in the store")
            if "disk" not in world.shown(BOB):
                gaps.append(f"Bob was told {world.shown(BOB).splitlines()[-1]!r}, not why")
    return gaps


def live(world: World) -> list[ChildEntry]:
    return [e for e in world.daemon.registry.snapshot() if str(e.state) == "running"]


# --- what the store says (fast: no daemon) -----------------------------------------------------


async def test_a_write_that_outwaits_the_busy_timeout_raises_database_locked(
    tmp_path: Path,
) -> None:
    """The store's error says what happened, in words for a chat; the sqlite3 error is kept
    as the cause. The write is not made."""
    path = tmp_path / "anycode.db"
    async with Store.open(path, busy_timeout=0.2) as store:
        session = await store.create_session(
            platform="telegram", chat="1", user="1", agent="demo", prompt="hi"
        )
        with closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN EXCLUSIVE")
            with pytest.raises(DatabaseLocked) as caught:
                await store.append_event(session.id, TextDelta(seq=1, text="hi"))
            other.execute("ROLLBACK")
        assert isinstance(caught.value, StoreUnavailable)
        assert str(caught.value) == "the database is locked by another program (waited 0.2 s)"
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        assert await store.last_seq(session.id) == 0
        assert await store.append_event(session.id, TextDelta(seq=1, text="hi"))


async def test_a_write_to_a_full_disk_raises_disk_full_and_the_store_recovers(
    tmp_path: Path,
) -> None:
    mount = tmp_path / "db"
    with small_filesystem(mount, "512k"):
        async with Store.open(mount / "anycode.db") as store:
            session = await store.create_session(
                platform="telegram", chat="1", user="1", agent="demo", prompt="hi"
            )
            filler = mount / "filler"
            await trio.to_thread.run_sync(fill, filler)
            with pytest.raises(DiskFull, match="the disk that holds the database is full"):
                for seq in range(1, 1000):
                    await store.append_event(session.id, TextDelta(seq=seq, text="x" * 500))
            stored = await store.last_seq(session.id)
            await trio.to_thread.run_sync(filler.unlink)
            assert await store.append_event(session.id, TextDelta(seq=stored + 1, text="y"))
            assert await store.last_seq(session.id) == stored + 1
