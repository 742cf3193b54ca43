"""The admin socket: who may connect, what it serves, and how it shares the socket file.

Real sockets on a short temporary path (a Unix socket path has at most 107 bytes) or on
127.0.0.1 port 0, real clients; real time, kept short, because the autojump clock would jump
past timeouts while the kernel still carries bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from anycode_actors.actors import admin
from anycode_actors.actors.admin import (
    MAX_CONNECTIONS,
    MAX_REQUEST_BYTES,
    AdminAddress,
    AdminError,
    AdminRefused,
    AdminServer,
    AdminSocketInUse,
    DaemonUnreachable,
    TreeSnapshot,
    fetch_snapshot,
)
from anycode_actors.config import AdminConfig, config_from_mapping
from supervisors import ChildState, Registry
from tests.tree_support import TwoSessionTree

TOKEN = "a-long-enough-admin-token"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="ac", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def sock(short_dir: Path) -> Path:
    return short_dir / "admin.sock"


async def serving(
    nursery: trio.Nursery, registry: Registry, path: Path, **kwargs: str
) -> AdminServer:
    server = AdminServer(registry, path, daemon_id="dtest", **kwargs)
    await nursery.start(server.run)
    return server


async def request_lines(address: AdminAddress, *lines: bytes) -> list[dict[str, object] | None]:
    """Send raw request lines on one connection; each answer, or None once it was closed."""
    stream = await address.connect()
    answers: list[dict[str, object] | None] = []
    buffer = b""
    async with stream:
        for line in lines:
            try:
                await stream.send_all(line)
            except trio.BrokenResourceError:
                answers.append(None)
                continue
            with trio.fail_after(5):
                while b"\n" not in buffer:
                    try:
                        data = await stream.receive_some()
                    except trio.BrokenResourceError:
                        data = b""
                    if not data:
                        break
                    buffer += data
            if b"\n" in buffer:
                answer, _, buffer = buffer.partition(b"\n")
                answers.append(json.loads(answer))
            else:
                answers.append(None)
    return answers


async def closed_by_peer(stream: trio.SocketStream) -> bool:
    with trio.fail_after(5):
        try:
            return await stream.receive_some() == b""
        except trio.BrokenResourceError:
            return True


# --- the Unix socket ----------------------------------------------------------------------------


async def test_admin_socket_is_private_even_under_a_permissive_umask_and_serves_a_snapshot(
    nursery: trio.Nursery, sock: Path
) -> None:
    registry = Registry()
    previous = os.umask(0)
    try:
        await serving(nursery, registry, sock)
    finally:
        os.umask(previous)
    status = os.lstat(sock)
    assert stat.S_ISSOCK(status.st_mode)
    assert stat.S_IMODE(status.st_mode) == 0o600
    snapshot = await fetch_snapshot(AdminAddress.unix(sock))
    assert snapshot.daemon.id == "dtest"
    assert snapshot.daemon.pid == os.getpid()
    assert snapshot.entries == ()


async def test_the_socket_file_is_removed_when_the_server_stops(sock: Path) -> None:
    async with trio.open_nursery() as nursery:
        await serving(nursery, Registry(), sock)
        assert await trio.Path(sock).exists()
        nursery.cancel_scope.cancel()
    assert not await trio.Path(sock).exists()
    with pytest.raises(DaemonUnreachable):
        await fetch_snapshot(AdminAddress.unix(sock))


async def test_a_stale_socket_file_is_replaced(nursery: trio.Nursery, sock: Path) -> None:
    # What a killed daemon leaves behind: a socket file nobody listens on.
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock))
    dead.close()
    assert stat.S_ISSOCK(os.lstat(sock).st_mode)
    await serving(nursery, Registry(), sock)
    assert (await fetch_snapshot(AdminAddress.unix(sock))).daemon.id == "dtest"


async def test_a_second_server_on_a_live_socket_refuses_and_leaves_it_alone(
    nursery: trio.Nursery, sock: Path
) -> None:
    await serving(nursery, Registry(), sock)
    before = os.lstat(sock).st_ino
    second = AdminServer(Registry(), sock, daemon_id="dsecond")
    with pytest.raises(AdminSocketInUse, match="another anycode daemon is listening"):
        await nursery.start(second.run)
    assert os.lstat(sock).st_ino == before
    assert (await fetch_snapshot(AdminAddress.unix(sock))).daemon.id == "dtest"


async def test_a_stopping_server_leaves_its_successors_socket_alone(
    nursery: trio.Nursery, sock: Path
) -> None:
    async with trio.open_nursery() as first:
        await first.start(AdminServer(Registry(), sock, daemon_id="dfirst").run)
        os.unlink(sock)  # removed by hand while it ran; then another daemon took the path
        await serving(nursery, Registry(), sock)
        first.cancel_scope.cancel()
    assert (await fetch_snapshot(AdminAddress.unix(sock))).daemon.id == "dtest"


async def test_a_file_that_is_not_a_socket_is_never_replaced(
    nursery: trio.Nursery, sock: Path
) -> None:
    await trio.Path(sock).write_text("precious")
    with pytest.raises(AdminError, match="is not a socket"):
        await nursery.start(AdminServer(Registry(), sock, daemon_id="d").run)
    assert await trio.Path(sock).read_text() == "precious"


async def test_nothing_listens_on_the_network_unless_configured(
    nursery: trio.Nursery, short_dir: Path
) -> None:
    config = AdminConfig(socket=short_dir / "a.sock")
    server = AdminServer.from_config(config, Registry(), daemon_id="d")
    await nursery.start(server.run)
    assert server.tcp_addresses == []
    with pytest.raises(ValueError, match="needs a token"):
        AdminServer(Registry(), short_dir / "b.sock", daemon_id="d", listen="127.0.0.1:0")


# --- the protocol ------------------------------------------------------------------------------


async def test_a_connection_serves_requests_in_turn_and_explains_unknown_ones(
    nursery: trio.Nursery, sock: Path
) -> None:
    await serving(nursery, Registry(), sock)
    unknown, snapshot = await request_lines(
        AdminAddress.unix(sock), b'{"op": "reboot"}\n', b'{"op": "snapshot"}\n'
    )
    assert unknown == {"ok": False, "error": "unknown op 'reboot'; known: snapshot"}
    assert snapshot is not None and snapshot["ok"] is True
    assert TreeSnapshot.from_json(snapshot).daemon.id == "dtest"


async def test_garbage_and_oversized_requests_get_an_error_and_the_connection_closes(
    nursery: trio.Nursery, sock: Path
) -> None:
    await serving(nursery, Registry(), sock)
    address = AdminAddress.unix(sock)
    answer, after = await request_lines(address, b"hello\n", b'{"op": "snapshot"}\n')
    assert answer == {"ok": False, "error": "a request is one JSON object per line"}
    assert after is None
    (answer,) = await request_lines(address, b"x" * (MAX_REQUEST_BYTES + 10))
    assert answer == {"ok": False, "error": f"a request is at most {MAX_REQUEST_BYTES} bytes"}


async def test_an_idle_connection_is_closed(
    nursery: trio.Nursery, sock: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin, "IDLE_TIMEOUT", 0.2)
    await serving(nursery, Registry(), sock)
    stream = await trio.open_unix_socket(sock)
    async with stream:
        assert await closed_by_peer(stream)


async def test_clients_beyond_the_limit_wait_until_a_slot_frees(
    nursery: trio.Nursery, sock: Path
) -> None:
    await serving(nursery, Registry(), sock)
    idle = [await trio.open_unix_socket(sock) for _ in range(MAX_CONNECTIONS)]
    waiting = await trio.open_unix_socket(sock)
    await waiting.send_all(b'{"op": "snapshot"}\n')
    with trio.move_on_after(0.3) as not_yet:
        await waiting.receive_some()
    assert not_yet.cancelled_caught
    await idle.pop().aclose()
    with trio.fail_after(5):
        assert (await waiting.receive_some()).startswith(b'{"ok":true')
    for stream in [*idle, waiting]:
        await stream.aclose()


# --- TCP, only with the token ------------------------------------------------------------------


async def test_tcp_requires_the_token(nursery: trio.Nursery, sock: Path) -> None:
    server = await serving(nursery, Registry(), sock, listen="127.0.0.1:0", token=TOKEN)
    ((host, port),) = server.tcp_addresses
    address = AdminAddress(host=host, port=port)
    refused = {"ok": False, "error": "unauthorized: this address needs the admin token"}
    for request in (
        b'{"op": "snapshot"}\n',
        b'{"op": "snapshot", "token": "a-long-enough-admin-tokeN"}\n',
        b'{"op": "snapshot", "token": 42}\n',
    ):
        answer, after = await request_lines(address, request, b'{"op": "snapshot"}\n')
        assert answer == refused
        assert after is None  # closed: no second guess on the same connection
    with pytest.raises(AdminRefused, match="unauthorized"):
        await fetch_snapshot(AdminAddress(host=host, port=port, token="wrong"))
    snapshot = await fetch_snapshot(AdminAddress(host=host, port=port, token=TOKEN))
    assert snapshot.daemon.id == "dtest"
    # The Unix socket needs no token: its file permissions are the access control.
    assert (await fetch_snapshot(AdminAddress.unix(sock))).daemon.id == "dtest"


async def test_no_daemon_means_unreachable(short_dir: Path) -> None:
    with pytest.raises(DaemonUnreachable):
        await fetch_snapshot(AdminAddress.unix(short_dir / "nobody.sock"))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    with pytest.raises(DaemonUnreachable):
        await fetch_snapshot(AdminAddress(host="127.0.0.1", port=port, token=TOKEN))


# --- what a snapshot says ----------------------------------------------------------------------


@pytest.fixture
async def two_sessions(nursery: trio.Nursery, sock: Path) -> TwoSessionTree:
    tree = TwoSessionTree(sock)
    await tree.start(nursery)
    return tree


async def test_snapshot_of_a_running_tree_with_two_sessions(
    two_sessions: TwoSessionTree, sock: Path
) -> None:
    snapshot = await fetch_snapshot(AdminAddress.unix(sock))
    assert snapshot.now == "2025-01-01T13:02:03.000+00:00"
    assert snapshot.daemon.id == "d0123456789a"
    assert snapshot.daemon.started_at == "2025-01-01T12:00:00.000+00:00"
    assert snapshot.daemon.uptime == 3723.0
    by_path = {entry.path: entry for entry in snapshot.entries}
    assert [entry.path for entry in snapshot.entries] == [
        "root",
        "root/store",
        "root/sessions",
        "root/sessions/session:ab12cd34",
        "root/sessions/session:ef56ab78",
        "root/admin",
    ]
    assert {path: entry.kind for path, entry in by_path.items()} == {
        "root": "supervisor",
        "root/store": "worker",
        "root/sessions": "supervisor",
        "root/sessions/session:ab12cd34": "actor",
        "root/sessions/session:ef56ab78": "actor",
        "root/admin": "worker",
    }
    assert all(entry.state == ChildState.RUNNING for entry in snapshot.entries)
    first = by_path["root/sessions/session:ab12cd34"]
    assert first.info == {
        "session": "ab12cd34-1111",
        "chat": "telegram:1001",
        "agent": "claude-code",
        "status": "running",
        "sandbox": "1a2b3c4d5e6f",
        "events": 42,
    }
    assert (first.inbox_depth, first.inbox_capacity) == (0, 16)
    assert first.started_at == "2025-01-01T12:05:00.000+00:00"
    second = by_path["root/sessions/session:ef56ab78"]
    assert second.info["status"] == "starting"
    assert second.info["sandbox"] is None
    assert second.info["chat"] == "slack:C0123ABCD"


async def test_a_crashed_and_restarted_actor_shows_its_restarts_and_last_error(
    two_sessions: TwoSessionTree, sock: Path
) -> None:
    await two_sessions.first.send("crash")
    registry = two_sessions.registry
    with trio.fail_after(5):
        while True:
            entry = registry.get("root/sessions/session:ab12cd34")
            if entry is not None and entry.restarts == 1 and entry.state == ChildState.RUNNING:
                break
            await trio.sleep(0.01)
    snapshot = await fetch_snapshot(AdminAddress.unix(sock))
    (crashed,) = [e for e in snapshot.entries if e.path == "root/sessions/session:ab12cd34"]
    assert crashed.restarts == 1
    assert crashed.last_error == "RuntimeError: boom"
    assert crashed.state == ChildState.RUNNING
    (other,) = [e for e in snapshot.entries if e.path == "root/sessions/session:ef56ab78"]
    assert (other.restarts, other.last_error) == (0, None)


async def test_the_daemon_serves_its_tree_on_the_configured_socket(
    short_dir: Path,
) -> None:
    from anycode_actors.daemon import Daemon

    config = config_from_mapping(
        {
            "telegram": {"bot_token": "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11"},
            "sandbox": {"provider": "local", "protocol": "acp"},
            "local": {"allow_unsandboxed": True, "workdir": str(short_dir / "work")},
            "database": {"path": str(short_dir / "anycode.db")},
            "admin": {"socket": str(short_dir / "d.sock")},
        },
        environ={},
        base_dir=short_dir,
    )
    daemon = Daemon(config, clients=[])
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        snapshot = await fetch_snapshot(AdminAddress.unix(short_dir / "d.sock"))
        nursery.cancel_scope.cancel()
    assert snapshot.daemon.id == daemon.daemon_id
    paths = [entry.path for entry in snapshot.entries]
    assert paths[0] == "root"
    assert {"root/router", "root/sessions", "root/chats", "root/admin"} <= set(paths)
    assert not await trio.Path(short_dir / "d.sock").exists()


async def test_the_socket_folder_is_created_private(nursery: trio.Nursery, short_dir: Path) -> None:
    sock = short_dir / "run" / "a.sock"
    await serving(nursery, Registry(), sock)
    assert stat.S_IMODE(os.lstat(sock.parent).st_mode) == 0o700
    assert (await fetch_snapshot(AdminAddress.unix(sock))).daemon.id == "dtest"


async def test_a_busy_tcp_port_is_a_clear_error_and_leaves_no_socket_file(
    nursery: trio.Nursery, sock: Path
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        server = AdminServer(
            Registry(), sock, daemon_id="d", listen=f"127.0.0.1:{port}", token=TOKEN
        )
        with pytest.raises(AdminError, match=f"cannot listen on 127.0.0.1:{port}"):
            await nursery.start(server.run)
    finally:
        taken.close()
    assert not await trio.Path(sock).exists()
