"""Reading a folder through sandbox-agent's filesystem API, against the real sandbox-agent 0.4.2
binary (tests/agent_stack.py) serving a scratch folder of this machine on 127.0.0.1."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from anycode_actors.sandboxes import OutboxListing, SandboxError, SandboxFile, new_agent_token
from anycode_actors.sandboxes import base as base_module
from anycode_actors.sandboxes.agent_fs import read_files_via_sandbox_agent
from anycode_actors.sandboxes.ports import free_ephemeral_port
from tests.agent_stack import requires_agent_stack

STARTUP_TIMEOUT = 30.0


@dataclass(frozen=True)
class RunningAgent:
    endpoint: str
    token: str
    log: Path

    def file_requests(self) -> list[str]:
        """The /v1/fs/file requests the server logged."""
        return [line for line in self.log.read_text().splitlines() if "/v1/fs/file" in line]


@contextmanager
def running_sandbox_agent(home: Path) -> Iterator[RunningAgent]:
    """`sandbox-agent server` on a free loopback port with a fresh token, logging requests."""
    stack = requires_agent_stack()
    token = new_agent_token()
    port = free_ephemeral_port()
    home.mkdir(parents=True, exist_ok=True)
    log = home / "server.log"
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "SANDBOX_AGENT_LOG_STDOUT": "1",
    }
    argv = [str(stack.sandbox_agent), "server", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as output:
        server = subprocess.Popen(
            [*argv, "--token", token, "--no-telemetry"],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=home,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            try:
                answer = httpx.get(
                    f"{endpoint}/v1/health",
                    headers={"Authorization": f"Bearer {token}"},
                    trust_env=False,
                )
                if answer.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "sandbox-agent did not get healthy"
            time.sleep(0.05)
        yield RunningAgent(endpoint, token, log)
    finally:
        server.terminate()
        try:
            server.wait(5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[RunningAgent]:
    with running_sandbox_agent(tmp_path / "home") as running:
        yield running


def make_outbox(root: Path) -> Path:
    """An outbox with files at two depths, one at the limit, one over it, links and a fifo."""
    outbox = root / "outbox"
    (outbox / "sub" / "deeper").mkdir(parents=True)
    (outbox / "a.txt").write_bytes(b"hi")
    (outbox / "sub" / "deeper" / "b.bin").write_bytes(b"\x00\x01binary\xff")
    (outbox / "edge.bin").write_bytes(b"e" * 1000)
    (outbox / "report.pdf").write_bytes(b"p" * 2500)
    (outbox / "empty").write_bytes(b"")
    secret = root / "secret.txt"
    secret.write_text("never read me")
    (root / "elsewhere").mkdir()
    (root / "elsewhere" / "also-secret.txt").write_text("nor me")
    (outbox / "link-to-secret").symlink_to(secret)
    (outbox / "link-to-a").symlink_to(outbox / "a.txt")
    (outbox / "sub" / "link-to-folder").symlink_to(root / "elsewhere")
    (outbox / "dangling").symlink_to(root / "nothing-here")
    os.mkfifo(outbox / "pipe")
    return outbox


EXPECTED = OutboxListing(
    files=(
        SandboxFile("a.txt", b"hi"),
        SandboxFile("edge.bin", b"e" * 1000),
        SandboxFile("empty", b""),
        SandboxFile("sub/deeper/b.bin", b"\x00\x01binary\xff"),
    ),
    too_big=(("report.pdf", 2500),),
)


async def test_reads_regular_files_with_relative_names_and_lists_the_too_big_unread(
    agent: RunningAgent, tmp_path: Path
) -> None:
    outbox = make_outbox(tmp_path / "sandbox")
    listing = await read_files_via_sandbox_agent(
        agent.endpoint, agent.token, str(outbox), max_bytes=1000
    )
    assert listing == EXPECTED
    # Links (to a file outside, to a file inside, to a folder, dangling) are never asked for
    # (the fifo is, and the server refuses it); nor is the file over the limit.
    requested = agent.file_requests()
    assert any("a.txt" in line for line in requested)
    assert not any("report.pdf" in line or "secret" in line for line in requested)
    assert not any("link" in line or "dangling" in line for line in requested)


async def test_a_trailing_slash_or_dot_names_the_same_folder(
    agent: RunningAgent, tmp_path: Path
) -> None:
    outbox = make_outbox(tmp_path / "sandbox")
    for path in (f"{outbox}/", f"{outbox}/.", f"{outbox}/./sub/./deeper/"):
        listing = await read_files_via_sandbox_agent(agent.endpoint, agent.token, path, 1000)
        expected = (
            EXPECTED
            if "deeper" not in path
            else OutboxListing(files=(SandboxFile("b.bin", b"\x00\x01binary\xff"),))
        )
        assert listing == expected, path


async def test_a_missing_folder_a_file_or_a_link_to_a_folder_give_an_empty_listing(
    agent: RunningAgent, tmp_path: Path
) -> None:
    outbox = make_outbox(tmp_path / "sandbox")
    (tmp_path / "sandbox" / "outbox-link").symlink_to(outbox)
    for path in (
        tmp_path / "sandbox" / "missing",
        tmp_path / "no-such-parent" / "outbox",
        outbox / "a.txt",
        tmp_path / "sandbox" / "outbox-link",
    ):
        listing = await read_files_via_sandbox_agent(agent.endpoint, agent.token, str(path), 10)
        assert listing == OutboxListing(), path


async def test_a_refused_token_is_a_sandbox_error_that_does_not_show_any_token(
    agent: RunningAgent, tmp_path: Path
) -> None:
    outbox = make_outbox(tmp_path / "sandbox")
    wrong = secrets.token_urlsafe(32)
    with pytest.raises(SandboxError) as caught:
        await read_files_via_sandbox_agent(agent.endpoint, wrong, str(outbox), 1000)
    assert str(caught.value) == f"sandbox-agent at {agent.endpoint} refused the sandbox's token"
    assert wrong not in repr(caught.value) and agent.token not in repr(caught.value)


async def test_an_unreachable_sandbox_agent_is_a_sandbox_error() -> None:
    endpoint = f"http://127.0.0.1:{free_ephemeral_port()}"
    with pytest.raises(
        SandboxError, match=f"cannot read files through sandbox-agent at {endpoint}"
    ):
        await read_files_via_sandbox_agent(endpoint, "t0ken-t0ken", "/workspace/outbox", 10)


@pytest.mark.parametrize("path", ["workspace/outbox", "/", "/workspace/../etc", ""])
async def test_only_absolute_folder_paths_are_accepted(path: str) -> None:
    # Refused before any request: nothing listens on this endpoint.
    with pytest.raises(SandboxError, match="is not an absolute folder path inside the sandbox"):
        await read_files_via_sandbox_agent("http://127.0.0.1:9", "t0ken-t0ken", path, 10)


def test_agent_tokens_never_start_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """sandbox-agent's CLI reads `--token -9x...` as an unknown option and exits; token_urlsafe
    starts a token with "-" once in 64 draws."""
    drawn = iter(["-9first", "--second", "third-one"])
    fake = SimpleNamespace(token_urlsafe=lambda nbytes: next(drawn))
    monkeypatch.setattr(base_module, "secrets", fake)
    assert new_agent_token() == "third-one"
    monkeypatch.undo()
    tokens = {new_agent_token() for _ in range(2000)}
    assert len(tokens) == 2000
    assert not any(token.startswith("-") for token in tokens)
    assert {len(token) for token in tokens} == {43}
