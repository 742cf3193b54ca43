"""The rich view of the actor tree, `anycode tree` and `anycode run --console`."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pexpect  # type: ignore[import-untyped]
import pytest
import trio
from rich.console import Console

from anycode_actors.actors.admin import (
    AdminAddress,
    AdminServer,
    DaemonInfo,
    TreeSnapshot,
    fetch_snapshot,
)
from anycode_actors.cli import main
from anycode_actors.cli.console import TreeView, format_duration, snapshot_json
from supervisors import ChildEntry, ChildSpec, ChildState, Registry
from tests.fakes.telegram import FakeTelegram
from tests.tree_support import TwoSessionTree

T0 = "2025-01-01T12:00:00.000+00:00"


def entry(
    path: str,
    kind: str,
    state: ChildState = ChildState.RUNNING,
    *,
    restarts: int = 0,
    error: str | None = None,
    started: str | None = T0,
    inbox: tuple[int, int | None] | None = None,
    **info: object,
) -> ChildEntry:
    depth, capacity = inbox if inbox is not None else (None, None)
    return ChildEntry(path, kind, state, restarts, error, started, depth, capacity, info)  # type: ignore[arg-type]


def fixed_snapshot() -> TreeSnapshot:
    """A daemon an hour in: two sessions, a crashed router, a telegram client in backoff."""
    session = "root/sessions/session:ab12cd34"
    entries = (
        entry("root", "supervisor"),
        entry("root/store", "worker"),
        entry("root/watchdog", "actor", inbox=(0, 64), watched=2, reaped=0),
        entry("root/chats", "supervisor"),
        entry("root/chats/chat:telegram:1001", "supervisor"),
        entry(
            "root/chats/chat:telegram:1001/flusher",
            "actor",
            inbox=(0, 256),
            chat="telegram:1001",
            pending_ops=0,
            sends=3,
            edits=12,
            paused=False,
        ),
        entry(
            "root/chats/chat:telegram:1001/actor",
            "actor",
            inbox=(1, 64),
            chat="telegram:1001",
            live_sessions=2,
        ),
        entry("root/sessions", "supervisor"),
        entry(
            session,
            "actor",
            started="2025-01-01T12:55:00.000+00:00",
            inbox=(0, 64),
            session="ab12cd34-1111",
            chat="telegram:1001",
            agent="claude-code",
            status="running",
            sandbox="1a2b3c4d5e6f",
            events=42,
        ),
        entry(f"{session}/streams", "supervisor", started="2025-01-01T12:55:01.000+00:00"),
        entry(
            f"{session}/streams/stream:ab12cd34",
            "worker",
            started="2025-01-01T12:55:01.000+00:00",
            turn_running=True,
        ),
        entry(
            "root/sessions/session:ef56ab78",
            "actor",
            started="2025-01-01T13:02:00.000+00:00",
            inbox=(60, 64),
            session="ef56ab78-2222",
            chat="slack:C0123ABCD",
            agent="codex",
            status="starting",
            sandbox=None,
            events=0,
        ),
        entry(
            "root/router",
            "actor",
            restarts=1,
            error="RuntimeError: boom while routing an update from a chat that nobody knows "
            "about yet",
            started="2025-01-01T13:01:00.000+00:00",
            inbox=(0, 64),
        ),
        entry("root/recovery", "worker", ChildState.STOPPED),
        entry("root/admin", "worker"),
        entry(
            "root/telegram",
            "worker",
            ChildState.RESTARTING,
            restarts=3,
            error="TelegramError: 401 Unauthorized",
        ),
    )
    daemon = DaemonInfo("d0123456789a", "0.1.0", 4242, T0, 3723.5)
    return TreeSnapshot(daemon, "2025-01-01T13:02:03.500+00:00", entries)


def render(snapshot: TreeSnapshot, width: int = 80) -> str:
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(TreeView(snapshot))
    return console.export_text()


EXPECTED_80 = """\
anycode d0123456789a · 0.1.0 · pid 4242 · up 1h02m · 16 children · 2 sessions
ACTOR                                   KIND       STATE          UP RST   INBOX
root                                    supervisor running     1h02m   0       -
├─ store                                worker     running     1h02m   0       -
├─ watchdog                             actor      running     1h02m   0    0/64
│    watched 2 · reaped 0
├─ chats                                supervisor running     1h02m   0       -
│  └─ chat:telegram:1001                supervisor running     1h02m   0       -
│     ├─ flusher                        actor      running     1h02m   0   0/256
│     │    chat telegram:1001 · pending_ops 0 · sends 3 · edits 12
│     └─ actor                          actor      running     1h02m   0    1/64
│          chat telegram:1001 · live_sessions 2
├─ sessions                             supervisor running     1h02m   0       -
│  ├─ session:ab12cd34                  actor      running     7m03s   0    0/64
│  │  │ running · 42 events · claude-code · sandbox 1a2b3c4d5e6f · telegram:1001
│  │  └─ streams                        supervisor running     7m02s   0       -
│  │     └─ stream:ab12cd34             worker     running     7m02s   0       -
│  │          turn_running
│  └─ session:ef56ab78                  actor      running        3s   0   60/64
│       starting · 0 events · codex · sandbox - · slack:C0123ABCD
├─ router                               actor      running     1m03s   1    0/64
│    ✗ RuntimeError: boom while routing an update from a chat that nobody knows…
├─ recovery                             worker     stopped         -   0       -
├─ admin                                worker     running     1h02m   0       -
└─ telegram                             worker     restarting      -   3       -
     ✗ TelegramError: 401 Unauthorized
"""


def test_the_view_at_80_columns_is_a_tree_cut_at_the_edge_never_wrapped() -> None:
    text = render(fixed_snapshot())
    assert text == EXPECTED_80
    assert all(len(line) <= 80 for line in text.splitlines())


@pytest.mark.parametrize("width", [40, 60, 100, 160])
def test_no_line_is_ever_wider_than_the_console(width: int) -> None:
    lines = render(fixed_snapshot(), width).splitlines()
    assert len(lines) == len(EXPECTED_80.splitlines())  # one line each: nothing wrapped
    assert all(len(line) <= width for line in lines)
    assert lines[2].startswith("root")


def test_a_wide_console_shows_every_detail_in_full() -> None:
    text = render(fixed_snapshot(), 160)
    assert (
        "✗ RuntimeError: boom while routing an update from a chat that nobody knows about yet\n"
        in text
    )
    assert "running · 42 events · claude-code · sandbox 1a2b3c4d5e6f · telegram:1001\n" in text


def test_a_restarted_actor_shows_its_restarts_and_last_error() -> None:
    lines = render(fixed_snapshot()).splitlines()
    (router,) = [i for i, line in enumerate(lines) if line.startswith("├─ router ")]
    assert lines[router].split()[-2:] == ["1", "0/64"]
    assert lines[router + 1].startswith("│    ✗ RuntimeError: boom")
    assert lines[router + 1].endswith("…")


def test_the_view_handles_a_tree_without_its_parents() -> None:
    orphan = entry("root/sessions/session:x/streams", "supervisor", ChildState.STARTING)
    snapshot = TreeSnapshot(fixed_snapshot().daemon, T0, (orphan,))
    lines = render(snapshot).splitlines()
    assert lines[2].split() == ["streams", "supervisor", "starting", "-", "0", "-"]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (59.9, "59s"),
        (60, "1m00s"),
        (3599, "59m59s"),
        (3600, "1h00m"),
        (86399, "23h59m"),
        (86400, "1d00h"),
        (99 * 86400 + 3 * 3600, "99d03h"),
        (-5, "0s"),
    ],
)
def test_durations_fit_six_characters(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert len(text) <= 6


def test_the_json_form_round_trips() -> None:
    snapshot = fixed_snapshot()
    assert TreeSnapshot.from_json(json.loads(snapshot_json(snapshot))) == snapshot


# --- anycode tree --------------------------------------------------------------------------------

ANSI = re.compile(r"\x1b\[")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="ac", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def two_sessions(nursery: trio.Nursery, short_dir: Path) -> TwoSessionTree:
    tree = TwoSessionTree(short_dir / "admin.sock")
    await tree.start(nursery)
    return tree


def anycode(*args: str) -> list[str]:
    return [sys.executable, "-m", "anycode_actors", *args]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANYCODE_")}
    env.update(COLUMNS="80", LINES="40", TERM="xterm-256color", **extra)
    return env


async def run_anycode(*args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        anycode(*args), capture_stdout=True, capture_stderr=True, check=False, env=child_env(**env)
    )


async def test_tree_once_prints_plain_text_for_a_pipe(
    two_sessions: TwoSessionTree, short_dir: Path
) -> None:
    sock = short_dir / "admin.sock"
    done = await run_anycode("tree", "--once", "--socket", str(sock))
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    assert not ANSI.search(out)
    snapshot = await fetch_snapshot(AdminAddress.unix(sock))
    assert out == render(snapshot)
    assert "│  ├─ session:ab12cd34" in out
    assert "│  │    running · 42 events · claude-code · sandbox 1a2b3c4d5e6f · telegram:1001" in out
    assert "│       starting · 0 events · codex · sandbox - · slack:C0123ABCD" in out
    # Without a terminal, plain `anycode tree` prints the same single snapshot.
    done = await run_anycode("tree", "--socket", str(sock))
    assert done.stdout.decode() == out


async def test_tree_json_prints_the_snapshot_as_json(
    two_sessions: TwoSessionTree, short_dir: Path
) -> None:
    sock = short_dir / "admin.sock"
    done = await run_anycode("tree", "--json", "--socket", str(sock))
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["ok"] is True
    assert data == (await fetch_snapshot(AdminAddress.unix(sock))).to_json()
    sessions = {e["path"]: e["info"] for e in data["entries"] if "session:" in e["path"]}
    assert sessions["root/sessions/session:ab12cd34"]["events"] == 42


async def test_tree_reads_the_socket_path_from_the_config(
    two_sessions: TwoSessionTree, short_dir: Path
) -> None:
    config = short_dir / "config.toml"
    await trio.Path(config).write_text(
        '[telegram]\nbot_token = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11"\n'
        '[admin]\nsocket = "admin.sock"\n'
    )
    done = await run_anycode("tree", "--once", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert "session:ef56ab78" in done.stdout.decode()


async def test_tree_connects_over_tcp_only_with_the_token(
    nursery: trio.Nursery, short_dir: Path
) -> None:
    token = "a-long-enough-admin-token"
    server = AdminServer(
        Registry(), short_dir / "t.sock", daemon_id="dtcp", listen="127.0.0.1:0", token=token
    )
    await nursery.start(server.run)
    ((host, port),) = server.tcp_addresses
    target = f"{host}:{port}"
    done = await run_anycode("tree", "--json", "--connect", target, ANYCODE_ADMIN_TOKEN=token)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["daemon"]["id"] == "dtcp"
    done = await run_anycode(
        "tree", "--json", "--connect", target, ANYCODE_ADMIN_TOKEN="not-the-admin-token"
    )
    assert done.returncode == 1
    assert done.stdout == b""
    assert "unauthorized" in done.stderr.decode()


def test_tree_without_a_daemon_says_so_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = tmp_path / "anycode.sock"
    assert main(["tree", "--once", "--socket", str(sock)], environ={}) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert (
        f"No anycode daemon is listening on {sock}. Start one with `anycode run`."
        in err.replace("\n", "")
    )


def test_tree_connect_needs_a_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no config.toml here
    assert main(["tree", "--connect", "127.0.0.1:7070"], environ={}) == 1
    assert "--connect needs the admin token" in capsys.readouterr().err


# --- the live views, in a real terminal ---------------------------------------------------------


def spawn(*args: str) -> pexpect.spawn:
    return pexpect.spawn(
        sys.executable,
        ["-m", "anycode_actors", *args],
        env=child_env(),
        dimensions=(40, 80),
        encoding="utf-8",
        timeout=20,
    )


async def expect(child: pexpect.spawn, pattern: str) -> None:
    await trio.to_thread.run_sync(child.expect, pattern)


async def exits_with(child: pexpect.spawn) -> int | None:
    await trio.to_thread.run_sync(child.expect, pexpect.EOF)
    await trio.to_thread.run_sync(child.wait)
    status: int | None = child.exitstatus
    return status


async def test_tree_live_view_follows_the_daemon_and_survives_losing_it(
    two_sessions: TwoSessionTree, short_dir: Path
) -> None:
    sock = short_dir / "admin.sock"
    child = spawn("tree", "--socket", str(sock))
    try:
        await expect(child, "session:ef56ab78")
        await expect(child, f"live from {sock}")
        await two_sessions.first.send("8")
        await expect(child, "50 events")
        await two_sessions.root.terminate_child("admin")
        await expect(child, f"daemon not reachable at {sock}, retrying")
        await two_sessions.root.start_child(
            ChildSpec("admin", two_sessions.server.run, kind="worker")
        )
        await expect(child, f"live from {sock}")
        child.sendintr()
        assert await exits_with(child) == 0
    finally:
        child.close(force=True)


async def test_run_console_shows_the_daemon_tree_and_logs_to_a_file(
    nursery: trio.Nursery, short_dir: Path
) -> None:
    telegram = FakeTelegram()
    url = await telegram.start(nursery)
    config = short_dir / "config.toml"
    await trio.Path(config).write_text(
        f'[telegram]\nbot_token = "{telegram.token}"\napi_base_url = "{url}"\npoll_timeout = 1\n'
        "allow_everyone = true\n"
        '[sandbox]\nprovider = "local"\nprotocol = "acp"\n'
        "[local]\nallow_unsandboxed = true\n"
        '[admin]\nsocket = "admin.sock"\n'
    )
    child = spawn("run", "--console", "--config", str(config))
    try:
        await expect(child, "Ctrl\\+C stops the daemon")
        await expect(child, "telegram")
        snapshot = await fetch_snapshot(AdminAddress.unix(short_dir / "admin.sock"))
        paths = {entry.path for entry in snapshot.entries}
        assert {"root/admin", "root/telegram", "root/sessions"} <= paths
        child.sendintr()
        assert await exits_with(child) == 0
    finally:
        child.close(force=True)
    log = await trio.Path(short_dir / "anycode.log").read_text()
    assert "anycode is running" in log
    assert "stopped" in log
    assert not await trio.Path(short_dir / "admin.sock").exists()
