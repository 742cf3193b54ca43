"""The local provider: folders and subprocesses, refused unless explicitly allowed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import trio

from anycode_actors.config import LocalConfig
from anycode_actors.sandboxes import (
    AgentProcess,
    OutboxListing,
    SandboxError,
    SandboxFile,
    SandboxSpec,
)
from anycode_actors.sandboxes import local as local_module
from anycode_actors.sandboxes.local import BASE_ENV_NAMES, LocalProvider
from tests.agent_stack import requires_agent_stack

SECRET = "sk-ant-local-" + "s3cr3t" * 6


def allowed(workdir: Path) -> LocalConfig:
    return LocalConfig(workdir=workdir, allow_unsandboxed=True)


def spec(protocol: str = "acp", **overrides: object) -> SandboxSpec:
    settings: dict[str, object] = {
        "session_id": "session-1",
        "agent": "claude-code",
        "protocol": protocol,
        "env": {"ANTHROPIC_API_KEY": SECRET},
    }
    settings.update(overrides)
    return SandboxSpec(**settings)  # type: ignore[arg-type]


def plain_env(home: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(home)}


@pytest.fixture
def provider(tmp_path: Path) -> LocalProvider:
    return LocalProvider(allowed(tmp_path / "work"), "daemon-1", base_env=plain_env(tmp_path))


async def read_all(process: AgentProcess) -> bytes:
    output = b""
    with trio.fail_after(10):
        while chunk := await process.receive_some():
            output += chunk
    return output


async def run(provider: LocalProvider, handle: object, argv: list[str]) -> str:
    process = await provider.exec(handle, argv)  # type: ignore[arg-type]
    await process.close_stdin()
    output = await read_all(process)
    assert await process.wait() == 0, process.stderr_tail()
    return output.decode()


# --- refusal -----------------------------------------------------------------------------------


def test_refuses_to_start_unless_unsandboxed_running_is_allowed(tmp_path: Path) -> None:
    with pytest.raises(SandboxError) as caught:
        LocalProvider(LocalConfig(workdir=tmp_path), "daemon-1")
    message = str(caught.value)
    assert "no container" in message
    assert "allow_unsandboxed = true" in message
    assert not any(tmp_path.iterdir())


# --- acp: a folder, commands over stdio --------------------------------------------------------


async def test_an_acp_sandbox_runs_commands_over_stdio_in_its_folder(
    provider: LocalProvider,
) -> None:
    handle = await provider.create(spec())
    assert (handle.provider, handle.endpoint, handle.token) == ("local", None, "")
    folder = Path(handle.id)
    assert folder.parent == provider.root
    assert handle.workdir == str(folder / "workspace")

    process = await provider.exec(handle, ["cat"])
    await process.send_all(b'{"jsonrpc":"2.0","id":1}\n')
    await process.close_stdin()
    assert await read_all(process) == b'{"jsonrpc":"2.0","id":1}\n'
    assert await process.wait() == 0
    assert (await run(provider, handle, ["pwd"])).strip() == handle.workdir

    assert await provider.is_alive(handle.id)
    [info] = await provider.list()
    assert (info.id, info.session_id, info.agent, info.alive) == (
        handle.id,
        "session-1",
        "claude-code",
        True,
    )
    assert info.created_at.endswith("+00:00")

    await provider.destroy(handle.id)
    assert not await trio.Path(folder).exists()
    assert not await provider.is_alive(handle.id)
    assert await provider.list() == []


async def test_processes_get_the_credentials_but_not_the_daemons_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANYCODE_TELEGRAM_BOT_TOKEN", "123:telegram-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    provider = LocalProvider(allowed(tmp_path), "daemon-1")
    handle = await provider.create(spec(repo=None))
    env = dict(line.split("=", 1) for line in (await run(provider, handle, ["env"])).splitlines())
    assert env["ANTHROPIC_API_KEY"] == SECRET
    assert (env["ANYCODE_AGENT"], env["ANYCODE_PROTOCOL"]) == ("claude-code", "acp")
    assert env["PATH"] == os.environ["PATH"]
    assert "ANYCODE_TELEGRAM_BOT_TOKEN" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert set(env) <= BASE_ENV_NAMES | {
        "ANTHROPIC_API_KEY",
        "ANYCODE_AGENT",
        "ANYCODE_PROTOCOL",
        "ANYCODE_CLONE_STATUS",
        "ANYCODE_STATE_DIR",
        "PWD",
        "SHLVL",
        "_",
    }
    await provider.destroy(handle.id)


async def test_destroy_stops_running_processes_and_is_idempotent(provider: LocalProvider) -> None:
    handle = await provider.create(spec())
    process = await provider.exec(handle, ["sleep", "60"])
    with trio.fail_after(10):
        await provider.destroy(handle.id)
    with trio.fail_after(1):
        assert await process.wait() != 0
    await provider.destroy(handle.id)
    assert not await trio.Path(handle.id).exists()


async def test_destroy_never_touches_a_folder_outside_its_own(
    provider: LocalProvider, tmp_path: Path
) -> None:
    victim = tmp_path / "precious"
    victim.mkdir()
    handle = await provider.create(spec())
    for sandbox_id in (
        str(victim),
        str(provider.root),
        str(provider.root / ".."),
        f"{handle.id}/..",
        "relative/folder",
        str(provider.root / "x" / "y"),
    ):
        with pytest.raises(SandboxError):
            await provider.destroy(sandbox_id)
    assert await trio.Path(victim).is_dir()
    assert await trio.Path(handle.id).is_dir()
    await provider.destroy(handle.id)


async def test_exec_in_a_sandbox_that_is_gone_fails_clearly(provider: LocalProvider) -> None:
    handle = await provider.create(spec())
    await provider.destroy(handle.id)
    with pytest.raises(SandboxError, match="does not exist"):
        await provider.exec(handle, ["true"])


async def test_a_command_that_does_not_exist_is_a_sandbox_error(provider: LocalProvider) -> None:
    handle = await provider.create(spec())
    with pytest.raises(SandboxError, match="could not start no-such-agent-binary"):
        await provider.exec(handle, ["no-such-agent-binary"])
    await provider.destroy(handle.id)


async def test_logs_show_the_stderr_of_exec_d_processes_without_credentials(
    provider: LocalProvider,
) -> None:
    handle = await provider.create(spec())
    await run(provider, handle, ["sh", "-c", 'echo "agent says $ANTHROPIC_API_KEY" >&2'])
    assert (await provider.logs(handle.id)).strip() == "agent says ***"
    await provider.destroy(handle.id)


async def test_cancelling_a_create_leaves_no_folder(provider: LocalProvider) -> None:
    outcomes = []
    for delay in (0.0, 0.001, 0.005, 0.02):
        with trio.move_on_after(delay) as scope:
            handle = await provider.create(spec())
        if not scope.cancelled_caught:
            await provider.destroy(handle.id)
        outcomes.append(scope.cancelled_caught)
        assert not provider.root.exists() or not any(provider.root.iterdir())
    assert outcomes[0]
    assert await provider.list() == []


async def test_a_restarted_daemon_lists_old_folders_as_dead_and_removes_them(
    tmp_path: Path,
) -> None:
    first = LocalProvider(allowed(tmp_path), "daemon-1", base_env=plain_env(tmp_path))
    handle = await first.create(spec())
    restarted = LocalProvider(allowed(tmp_path), "daemon-1", base_env=plain_env(tmp_path))
    [info] = await restarted.list()
    assert (info.id, info.session_id, info.alive) == (handle.id, "session-1", False)
    assert not await restarted.is_alive(handle.id)
    other_daemon = LocalProvider(allowed(tmp_path), "daemon-2", base_env=plain_env(tmp_path))
    assert await other_daemon.list() == []
    await restarted.destroy(handle.id)
    assert await restarted.list() == []


async def test_sandbox_json_is_private_and_holds_no_credentials(provider: LocalProvider) -> None:
    handle = await provider.create(spec())
    metadata_file = Path(handle.id) / "sandbox.json"
    assert stat.S_IMODE(metadata_file.stat().st_mode) == 0o600
    metadata = json.loads(metadata_file.read_text())
    assert metadata["workdir"] == handle.workdir
    assert "token" not in metadata
    assert SECRET not in metadata_file.read_text()
    await provider.destroy(handle.id)


# --- reading the outbox ------------------------------------------------------------------------


def make_outbox(workspace: Path, outside: Path) -> Path:
    """workspace/outbox with files at two depths, one over the limit, links leading out of the
    sandbox (to a file, to a folder, dangling) and within it, and a fifo."""
    outside.mkdir()
    (outside / "id_rsa").write_text("PRIVATE KEY")
    (outside / "docs").mkdir()
    (outside / "docs" / "secret.txt").write_text("secret")
    outbox = workspace / "outbox"
    (outbox / "sub").mkdir(parents=True)
    (outbox / "a.txt").write_bytes(b"hi")
    (outbox / "sub" / "b.bin").write_bytes(b"\x00binary\xff")
    (outbox / "report.pdf").write_bytes(b"p" * 2048)
    (outbox / "key").symlink_to(outside / "id_rsa")
    (outbox / "sub" / "docs").symlink_to(outside / "docs")
    (outbox / "within").symlink_to(outbox / "a.txt")
    (outbox / "dangling").symlink_to(outside / "missing")
    os.mkfifo(outbox / "pipe")
    return outbox


OUTBOX = OutboxListing(
    files=(SandboxFile("a.txt", b"hi"), SandboxFile("sub/b.bin", b"\x00binary\xff")),
    too_big=(("report.pdf", 2048),),
)


async def test_read_files_maps_sandbox_paths_and_never_follows_a_link(
    provider: LocalProvider, tmp_path: Path
) -> None:
    handle = await provider.create(spec())
    workspace = Path(handle.id) / "workspace"
    outbox = make_outbox(workspace, tmp_path / "outside")
    for path in ("/workspace/outbox", "/workspace/outbox/", str(outbox), "/workspace/./outbox"):
        assert await provider.read_files(handle, path, max_bytes=1024) == OUTBOX, path
    listing = await provider.read_files(handle, "/workspace", max_bytes=1024)
    assert [f.name for f in listing.files] == [
        ".anycode/clone-status",
        "outbox/a.txt",
        "outbox/sub/b.bin",
    ]
    assert await provider.read_files(handle, "/workspace/outbox", max_bytes=2048) == (
        OutboxListing(
            files=(*OUTBOX.files[:1], SandboxFile("report.pdf", b"p" * 2048), OUTBOX.files[1])
        )
    )
    await provider.destroy(handle.id)


async def test_read_files_refuses_a_linked_outbox_sub_folder_or_workspace(
    provider: LocalProvider, tmp_path: Path
) -> None:
    handle = await provider.create(spec())
    workspace = Path(handle.id) / "workspace"
    make_outbox(workspace, tmp_path / "outside")
    outside_outbox = tmp_path / "outside" / "outbox"
    outside_outbox.mkdir()
    (outside_outbox / "stolen.txt").write_text("from outside")
    # The outbox itself, a folder on the way, and the whole workspace replaced by links.
    (workspace / "linked-outbox").symlink_to(outside_outbox)
    (workspace / "linked-parent").symlink_to(tmp_path / "outside")
    for path in ("/workspace/linked-outbox", "/workspace/linked-parent/outbox"):
        assert await provider.read_files(handle, path, max_bytes=1024) == OutboxListing(), path
    (workspace).rename(Path(handle.id) / "moved-workspace")
    (Path(handle.id) / "workspace").symlink_to(tmp_path / "outside")
    assert await provider.read_files(handle, "/workspace/outbox", max_bytes=1024) == (
        OutboxListing()
    )
    await provider.destroy(handle.id)
    assert (outside_outbox / "stolen.txt").exists()


async def test_read_files_of_a_missing_folder_is_empty_and_paths_outside_are_refused(
    provider: LocalProvider,
) -> None:
    handle = await provider.create(spec())
    assert await provider.read_files(handle, "/workspace/outbox", max_bytes=10) == OutboxListing()
    (Path(handle.id) / "workspace" / "outbox").write_text("a file, not a folder")
    assert await provider.read_files(handle, "/workspace/outbox", max_bytes=10) == OutboxListing()
    for path in ("/etc", "/workspace/../etc", "workspace/outbox", "/workspaces", handle.id):
        with pytest.raises(SandboxError, match="is not a folder of the sandbox's workspace"):
            await provider.read_files(handle, path, max_bytes=10)
    await provider.destroy(handle.id)
    with pytest.raises(SandboxError, match="does not exist"):
        await provider.read_files(handle, "/workspace/outbox", max_bytes=10)


async def test_write_file_makes_folders_and_never_follows_a_link(
    provider: LocalProvider, tmp_path: Path
) -> None:
    handle = await provider.create(spec())
    workspace = Path(handle.id) / "workspace"
    await provider.write_file(handle, "/workspace/inbox/deep/photo.png", b"\x89PNG")
    assert (workspace / "inbox" / "deep" / "photo.png").read_bytes() == b"\x89PNG"
    await provider.write_file(handle, "/workspace/inbox/deep/photo.png", b"new")
    assert (workspace / "inbox" / "deep" / "photo.png").read_bytes() == b"new"
    # A link planted in the workspace, as a folder on the way or as the file itself.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("keep")
    (workspace / "to-outside").symlink_to(outside)
    (workspace / "inbox" / "victim").symlink_to(outside / "victim")
    for path in ("/workspace/to-outside/victim", "/workspace/inbox/victim"):
        with pytest.raises(SandboxError, match=f"could not write {path}"):
            await provider.write_file(handle, path, b"overwritten")
    assert (outside / "victim").read_text() == "keep"
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    for path in ("/etc/passwd", "/workspace/../x", "/workspace", "inbox/x"):
        with pytest.raises(SandboxError):
            await provider.write_file(handle, path, b"x")
    await provider.destroy(handle.id)
    with pytest.raises(SandboxError, match="does not exist"):
        await provider.write_file(handle, "/workspace/inbox/a", b"x")


# --- reattaching after a restart ---------------------------------------------------------------


async def test_reattach_gives_none_for_stdio_foreign_and_missing_sandboxes(
    tmp_path: Path,
) -> None:
    first = LocalProvider(allowed(tmp_path), "daemon-1", base_env=plain_env(tmp_path))
    handle = await first.create(spec())
    # The provider that holds it gets the same handle back.
    assert await first.reattach(handle.id) == handle
    # A restarted daemon cannot resume a stdio agent: it died with the old daemon's pipes.
    restarted = LocalProvider(allowed(tmp_path), "daemon-1", base_env=plain_env(tmp_path))
    assert await restarted.reattach(handle.id) is None
    other = LocalProvider(allowed(tmp_path), "daemon-2", base_env=plain_env(tmp_path))
    for sandbox_id in (handle.id, "/etc", "relative", f"{handle.id}/.."):
        assert await other.reattach(sandbox_id) is None
    await first.destroy(handle.id)
    assert await first.reattach(handle.id) is None
    assert await restarted.reattach(handle.id) is None


# --- repositories ------------------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    source = tmp_path / "source-repo"
    source.mkdir()
    git = ["git", "-C", str(source), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "--quiet"], check=True)
    (source / "README.md").write_text("hello from the repo\n")
    subprocess.run([*git, "add", "README.md"], check=True)
    subprocess.run([*git, "commit", "--quiet", "-m", "first"], check=True)
    return source


async def test_the_repo_is_cloned_into_the_workspace(provider: LocalProvider, repo: Path) -> None:
    handle = await provider.create(spec(repo=str(repo)))
    workdir = Path(handle.workdir)
    assert workdir == Path(handle.id) / "workspace" / "repo"
    assert (workdir / "README.md").read_text() == "hello from the repo\n"
    state = Path(handle.id) / "workspace" / ".anycode"
    assert (state / "clone-status").read_text() == "ok\n"
    status = await run(provider, handle, ["sh", "-c", 'echo "$ANYCODE_CLONE_STATUS $ANYCODE_REPO"'])
    assert status.strip() == f"ok {repo}"
    await provider.destroy(handle.id)


async def test_a_seeded_sandbox_has_an_empty_repo_folder_to_work_in_and_clones_nothing(
    provider: LocalProvider, repo: Path
) -> None:
    handle = await provider.create(spec(repo=str(repo), seeded=True))
    workdir = Path(handle.workdir)
    assert workdir == Path(handle.id) / "workspace" / "repo"
    assert os.listdir(workdir) == []  # the daemon copies the repository in
    state = Path(handle.id) / "workspace" / ".anycode"
    assert (state / "clone-status").read_text() == "skipped\n"
    status = await run(provider, handle, ["sh", "-c", 'echo "${ANYCODE_REPO-unset}"; pwd'])
    assert status.split() == ["unset", str(workdir)]
    metadata = json.loads((Path(handle.id) / "sandbox.json").read_text())
    assert metadata["workdir"] == str(workdir)
    await provider.destroy(handle.id)


async def test_a_failed_clone_is_recorded_without_credentials_and_is_not_fatal(
    provider: LocalProvider,
) -> None:
    # Port 9 on loopback: nothing listens, so git fails at once without leaving this machine.
    url = "https://someone:tok3n-in-url@127.0.0.1:9/org/repo.git"
    handle = await provider.create(spec(repo=url))
    workspace = Path(handle.id) / "workspace"
    assert handle.workdir == str(workspace)
    assert not (workspace / "repo").exists()
    assert (workspace / ".anycode" / "clone-status").read_text() == "failed\n"
    failure = (workspace / ".anycode" / "clone-failed").read_text()
    assert "https://***@127.0.0.1:9/org/repo.git" in failure
    assert "tok3n-in-url" not in failure
    error = await run(
        provider, handle, ["sh", "-c", 'echo "$ANYCODE_CLONE_STATUS: $ANYCODE_CLONE_ERROR"']
    )
    assert error.startswith("failed: git exited 128")
    assert "tok3n-in-url" not in error
    await provider.destroy(handle.id)


# --- sandbox-agent -----------------------------------------------------------------------------


@pytest.fixture
def stack_providers(tmp_path: Path) -> Callable[[], LocalProvider]:
    """Providers of one daemon (same root and id), as a daemon and its restarted self."""
    stack = requires_agent_stack()
    home = tmp_path / "home"
    home.mkdir()
    env = stack.offline_env("http://127.0.0.1:9", home)
    return lambda: LocalProvider(
        allowed(tmp_path / "work"), "daemon-1", sandbox_agent=stack.sandbox_agent, base_env=env
    )


@pytest.fixture
def stack_provider(stack_providers: Callable[[], LocalProvider]) -> Iterator[LocalProvider]:
    yield stack_providers()


async def test_sandbox_agent_runs_on_loopback_with_its_own_token(
    stack_provider: LocalProvider,
) -> None:
    handle = await stack_provider.create(spec("sandbox-agent"))
    assert handle.endpoint is not None and handle.endpoint.startswith("http://127.0.0.1:")
    async with httpx.AsyncClient(trust_env=False) as http:
        with_token = await http.get(
            f"{handle.endpoint}/v1/health", headers={"Authorization": f"Bearer {handle.token}"}
        )
        without = await http.get(f"{handle.endpoint}/v1/health")
    assert (with_token.status_code, with_token.json()) == (200, {"status": "ok"})
    assert without.status_code == 401
    assert await stack_provider.is_alive(handle.id)
    logs = await stack_provider.logs(handle.id)
    assert "server listening" in logs
    assert handle.token not in logs

    await stack_provider.destroy(handle.id)
    assert not await stack_provider.is_alive(handle.id)
    async with httpx.AsyncClient(trust_env=False) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"{handle.endpoint}/v1/health")


def command_lines_holding(secret: str) -> list[str]:
    """The command line of every process on this machine that shows `secret` (what `ps` tells
    every user)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if secret.encode() in (raw := cmdline.read_bytes()):
                found.append(raw.replace(b"\0", b" ").decode(errors="replace"))
    return found


def server_processes(pid: int) -> dict[int, tuple[bytes, bytes]]:
    """Process `pid` and its descendants: pid → (command line, environment)."""
    found = {}
    pending = [pid]
    while pending:
        current = pending.pop()
        proc = Path(f"/proc/{current}")
        found[current] = ((proc / "cmdline").read_bytes(), (proc / "environ").read_bytes())
        pending += map(int, (proc / "task" / str(current) / "children").read_text().split())
    return found


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")
async def test_the_token_is_on_no_command_line_and_sandbox_agent_still_requires_it(
    stack_provider: LocalProvider,
) -> None:
    handle = await stack_provider.create(spec("sandbox-agent"))
    try:
        assert handle.endpoint is not None and handle.token
        metadata = json.loads(await trio.Path(handle.id, "sandbox.json").read_text())
        assert await trio.to_thread.run_sync(command_lines_holding, handle.token) == []
        # The gate that holds the token, and sandbox-agent behind it, which does not.
        processes = await trio.to_thread.run_sync(server_processes, metadata["server_pid"])
        gate_command, _ = processes.pop(metadata["server_pid"])
        assert b"agent_gate.py\0" in gate_command
        [(command, environ)] = processes.values()
        assert command.split(b"\0")[1:3] == [b"server", b"--host"]
        assert b"\0--no-token\0" in command
        assert b"ANYCODE_AGENT_TOKEN" not in environ and handle.token.encode() not in environ

        async with httpx.AsyncClient(trust_env=False) as http:
            url = f"{handle.endpoint}/v1/health"
            with_token = await http.get(url, headers={"Authorization": f"Bearer {handle.token}"})
            without = await http.get(url)
            wrong = await http.get(url, headers={"Authorization": f"Bearer {handle.token}x"})
        assert (with_token.status_code, with_token.json()) == (200, {"status": "ok"})
        assert (without.status_code, wrong.status_code) == (401, 401)
    finally:
        await stack_provider.destroy(handle.id)


async def health(endpoint: str | None, token: str) -> int:
    async with httpx.AsyncClient(trust_env=False) as http:
        answer = await http.get(
            f"{endpoint}/v1/health", headers={"Authorization": f"Bearer {token}"}
        )
    return answer.status_code


async def test_a_restarted_daemon_reattaches_a_running_server_and_destroy_stops_it(
    stack_providers: Callable[[], LocalProvider],
) -> None:
    first = stack_providers()
    handle = await first.create(spec("sandbox-agent", repo=None))
    metadata_file = Path(handle.id) / "sandbox.json"
    assert stat.S_IMODE(metadata_file.stat().st_mode) == 0o600
    metadata = json.loads(metadata_file.read_text())
    assert (metadata["endpoint"], metadata["token"]) == (handle.endpoint, handle.token)
    assert SECRET not in metadata_file.read_text()

    restarted = stack_providers()
    assert not await restarted.is_alive(handle.id)
    reattached = await restarted.reattach(handle.id)
    assert reattached == handle
    assert handle.token not in repr(reattached)
    assert await health(reattached.endpoint, reattached.token) == 200
    assert await restarted.is_alive(handle.id)
    assert [info.alive for info in await restarted.list()] == [True]
    assert handle.token not in await restarted.logs(handle.id)

    with trio.fail_after(10):
        await restarted.destroy(handle.id)
    assert not await trio.Path(handle.id).exists()
    with pytest.raises(httpx.ConnectError):
        await health(handle.endpoint, handle.token)
    await first.destroy(handle.id)  # reaps the server, which was the first provider's child


async def test_destroy_after_a_restart_stops_the_old_server_without_reattaching(
    stack_providers: Callable[[], LocalProvider],
) -> None:
    first = stack_providers()
    handle = await first.create(spec("sandbox-agent"))
    with trio.fail_after(10):
        await stack_providers().destroy(handle.id)
    with pytest.raises(httpx.ConnectError):
        await health(handle.endpoint, handle.token)
    await first.destroy(handle.id)


async def test_reattach_refuses_a_server_that_is_gone_frozen_or_not_the_recorded_one(
    stack_providers: Callable[[], LocalProvider], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = stack_providers()
    handle = await first.create(spec("sandbox-agent"))
    metadata_file = Path(handle.id) / "sandbox.json"
    metadata = json.loads(metadata_file.read_text())
    pid = metadata["server_pid"]

    # Another token than the server's: it is not the recorded server (and would get a 401).
    metadata_file.write_text(json.dumps({**metadata, "token": "x" * 43}))
    assert await stack_providers().reattach(handle.id) is None
    metadata_file.write_text(json.dumps(metadata))

    # A server that does not answer /v1/health.
    monkeypatch.setattr(local_module, "REATTACH_HEALTH_TIMEOUT", 0.5)
    os.killpg(pid, signal.SIGSTOP)
    try:
        assert await stack_providers().reattach(handle.id) is None
    finally:
        os.killpg(pid, signal.SIGCONT)
    assert await stack_providers().reattach(handle.id) == handle

    # A server that is gone.
    os.killpg(pid, signal.SIGKILL)
    with trio.fail_after(5):
        while True:
            try:
                await health(handle.endpoint, handle.token)
            except httpx.TransportError:
                break
            await trio.sleep(0.05)
    assert await stack_providers().reattach(handle.id) is None
    await first.destroy(handle.id)


def fake_server(tmp_path: Path, script: str) -> Path:
    path = tmp_path / "fake-sandbox-agent"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


async def test_a_server_that_exits_is_reported_with_its_output_and_never_got_the_token(
    tmp_path: Path,
) -> None:
    server = fake_server(
        tmp_path, 'echo "cannot start: $* (token: ${ANYCODE_AGENT_TOKEN:-none})"\nexit 3\n'
    )
    provider = LocalProvider(
        allowed(tmp_path / "work"), "d", sandbox_agent=server, base_env=plain_env(tmp_path)
    )
    with pytest.raises(SandboxError) as caught:
        await provider.create(spec("sandbox-agent"))
    message = str(caught.value)
    assert message.startswith("sandbox-agent exited with code 3; its last output:\n")
    assert "--no-token --no-telemetry (token: none)" in message
    assert not any(provider.root.iterdir())


async def test_cancelling_while_the_server_starts_stops_it_and_removes_the_folder(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "server.pid"
    server = fake_server(tmp_path, f'echo $$ > "{pid_file}"\nexec sleep 60\n')
    provider = LocalProvider(
        allowed(tmp_path / "work"), "d", sandbox_agent=server, base_env=plain_env(tmp_path)
    )
    with trio.move_on_after(1.0) as scope:
        await provider.create(spec("sandbox-agent"))
    assert scope.cancelled_caught
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not any(provider.root.iterdir())
    assert await provider.list() == []


async def test_a_server_that_never_gets_healthy_is_stopped_and_removed(tmp_path: Path) -> None:
    server = fake_server(tmp_path, "exec sleep 60\n")
    provider = LocalProvider(
        allowed(tmp_path / "work"),
        "d",
        sandbox_agent=server,
        base_env=plain_env(tmp_path),
        startup_timeout=0.5,
    )
    with pytest.raises(SandboxError, match=r"did not become healthy within 0\.5 s"):
        await provider.create(spec("sandbox-agent"))
    assert not any(provider.root.iterdir())


async def test_a_missing_sandbox_agent_binary_is_reported(provider: LocalProvider) -> None:
    missing = LocalProvider(
        allowed(provider.root.parent), "d2", sandbox_agent="no-such-sandbox-agent"
    )
    with pytest.raises(SandboxError, match="no-such-sandbox-agent is not an executable"):
        await missing.create(spec("sandbox-agent"))
    assert not any(missing.root.iterdir())
