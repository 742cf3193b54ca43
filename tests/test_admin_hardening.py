"""The admin socket against hostile request lines: each one is answered or its connection closed,
and the server (under its supervisor, as in the daemon) keeps serving without a restart.

Real sockets and real time, kept short, as in test_admin.py.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from anycode_actors.actors.admin import AdminAddress, AdminServer, fetch_snapshot
from supervisors import ChildSpec, ChildState, Registry, Supervisor

TOKEN = "a-long-enough-admin-token"
MALFORMED = {"ok": False, "error": "a request is one JSON object per line"}
REFUSED = {"ok": False, "error": "unauthorized: this address needs the admin token"}

HOSTILE = {
    # json.loads raises RecursionError (not a ValueError) on deep nesting.
    "deep-array": b"[" * 4000 + b"\n",
    "deep-mixed": b'[{"":' * 800 + b"\n",
    "deep-in-the-op": b'{"op": ' + b"[" * 2000 + b"]" * 2000 + b"}\n",
    # "\ud800" decodes to a str that UTF-8 cannot encode.
    "lone-surrogate-token": b'{"op": "snapshot", "token": "\\ud800"}\n',
    "lone-surrogate-op": b'{"op": "\\udfff", "token": "\\ud800\\udc00"}\n',
    "invalid-utf8": b'{"op": "snapshot", "token": "\xff\xfe\xc0"}\n',
    "invalid-utf8-alone": b"\xff\xfe\xfd\n",
    "array": b"[]\n",
    "string": b'"x"\n',
    "number": b"1\n",
    "null": b"null\n",
    "token-of-the-wrong-type": b'{"op": "snapshot", "token": 5}\n',
    "token-as-object": b'{"op": "snapshot", "token": {"a": "b"}}\n',
    "unbalanced": b"]]]]][[[[[\n",
}


@pytest.fixture
def short_dir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="ac", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class Supervised:
    """An AdminServer as the daemon runs it: child "admin" of a root supervisor."""

    def __init__(self, folder: Path) -> None:
        self.registry = Registry()
        self.socket = folder / "admin.sock"
        self.server = AdminServer(
            self.registry, self.socket, daemon_id="dtest", listen="127.0.0.1:0", token=TOKEN
        )

    async def start(self, nursery: trio.Nursery) -> None:
        root = Supervisor([ChildSpec("admin", self.server.run)], registry=self.registry)
        await nursery.start(root.run)

    @property
    def tcp(self) -> AdminAddress:
        ((host, port),) = self.server.tcp_addresses
        return AdminAddress(host=host, port=port, token=TOKEN)

    @property
    def unix(self) -> AdminAddress:
        return AdminAddress.unix(self.socket)

    def assert_never_restarted(self) -> None:
        entry = self.registry.get("root/admin")
        assert entry is not None
        assert (entry.state, entry.restarts, entry.last_error) == (ChildState.RUNNING, 0, None)


@pytest.fixture
async def admin_server(nursery: trio.Nursery, short_dir: Path) -> Supervised:
    supervised = Supervised(short_dir)
    await supervised.start(nursery)
    return supervised


async def answer_or_close(address: AdminAddress, line: bytes) -> dict[str, object] | None:
    """The answer to one raw line, or None if the server closed the connection without one."""
    stream = await address.connect()
    async with stream:
        await stream.send_all(line)
        buffer = b""
        with trio.fail_after(5):
            while b"\n" not in buffer:
                try:
                    data = await stream.receive_some()
                except trio.BrokenResourceError:
                    data = b""
                if not data:
                    return None
                buffer += data
    answer = json.loads(buffer.partition(b"\n")[0])
    assert isinstance(answer, dict)
    return answer


async def still_serves(supervised: Supervised) -> None:
    """Let a crash (if any) reach the supervisor, then check a good request on new connections."""
    await trio.sleep(0.05)
    supervised.assert_never_restarted()
    assert (await fetch_snapshot(supervised.tcp)).daemon.id == "dtest"
    assert (await fetch_snapshot(supervised.unix)).daemon.id == "dtest"
    supervised.assert_never_restarted()


@pytest.mark.parametrize("line", HOSTILE.values(), ids=HOSTILE.keys())
async def test_a_hostile_line_over_tcp_is_refused_and_the_server_keeps_serving(
    admin_server: Supervised, line: bytes
) -> None:
    answer = await answer_or_close(admin_server.tcp, line)
    assert answer in (MALFORMED, REFUSED, None)
    await still_serves(admin_server)


@pytest.mark.parametrize("line", HOSTILE.values(), ids=HOSTILE.keys())
async def test_a_hostile_line_on_the_unix_socket_is_answered_and_the_server_keeps_serving(
    admin_server: Supervised, line: bytes
) -> None:
    # No token here (the file permissions are the access control): a line may even be served.
    assert await answer_or_close(admin_server.unix, line) is not None
    await still_serves(admin_server)


async def test_over_tcp_malformed_lines_are_refused_before_any_token_check(
    admin_server: Supervised,
) -> None:
    for name in ("deep-array", "invalid-utf8", "array", "string", "number"):
        assert await answer_or_close(admin_server.tcp, HOSTILE[name]) == MALFORMED, name
    await still_serves(admin_server)


async def test_over_tcp_a_wrong_token_of_any_shape_is_unauthorized(
    admin_server: Supervised,
) -> None:
    for name in ("lone-surrogate-token", "lone-surrogate-op", "token-of-the-wrong-type"):
        assert await answer_or_close(admin_server.tcp, HOSTILE[name]) == REFUSED, name
    await still_serves(admin_server)


async def test_a_token_is_compared_as_utf8_bytes_so_a_non_ascii_token_works(
    nursery: trio.Nursery, short_dir: Path
) -> None:
    registry = Registry()
    token = "jeton-secret-très-long-ünïcode"
    server = AdminServer(
        registry, short_dir / "a.sock", daemon_id="dtest", listen="127.0.0.1:0", token=token
    )
    await nursery.start(server.run)
    ((host, port),) = server.tcp_addresses
    snapshot = await fetch_snapshot(AdminAddress(host=host, port=port, token=token))
    assert snapshot.daemon.id == "dtest"
    near = token[:-1] + "è"
    refused = await answer_or_close(
        AdminAddress(host=host, port=port),
        json.dumps({"op": "snapshot", "token": near}).encode() + b"\n",
    )
    assert refused == REFUSED


async def test_shallow_requests_with_brackets_inside_strings_are_still_served(
    admin_server: Supervised,
) -> None:
    line = json.dumps({"op": "snapshot", "token": TOKEN, "note": '[[[{{{\\"]]]'}).encode()
    answer = await answer_or_close(admin_server.tcp, line + b"\n")
    assert answer is not None and answer["ok"] is True
    unknown = await answer_or_close(admin_server.unix, b'{"op": ["a", "b"]}\n')
    assert unknown == {"ok": False, "error": "unknown op ['a', 'b']; known: snapshot"}


async def test_a_failure_while_answering_closes_only_that_connection(
    admin_server: Supervised, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> object:
        raise RuntimeError("a bug in the snapshot")

    monkeypatch.setattr(admin_server.server, "snapshot", broken)
    assert await answer_or_close(admin_server.unix, b'{"op": "snapshot"}\n') is None
    monkeypatch.undo()
    await still_serves(admin_server)
