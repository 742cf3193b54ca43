"""`docker exec -i` as an AgentProcess, against a real Docker engine and the real sandbox image.

The byte stream (stdin in, demultiplexed stdout and stderr out, exit codes, closing), and then the
real Claude ACP adapter inside a sandbox container, driven over stdio ACP through the exec socket
against the scripted model (bound on the Docker bridge so the container can reach it).

Locally these skip without an engine or without the sandbox image (docker/build-image.sh);
in CI both are required.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any, Final

import docker.errors
import pytest
import trio

from anycode_actors.agents import (
    AcpxLaunch,
    AgentEvent,
    PermissionRequested,
    PermissionResolved,
    TextDelta,
    ToolCall,
    TurnEnded,
    open_acpx_session,
    open_stdio_client,
)
from anycode_actors.sandboxes.base import SandboxError
from anycode_actors.sandboxes.docker_exec import (
    CLOSE_GRACE,
    STDERR_TAIL_BYTES,
    DockerExecProcess,
    start_exec,
)
from tests.agent_stack import agent_env
from tests.docker_support import SANDBOX_IMAGE, docker_client, require_or_skip
from tests.fakes._http import serve_asgi
from tests.fakes.model import Bash, ModelScript, ScriptedModel, Text, docker_bridge_gateway

BOUND: Final = 120.0
SECRET: Final = "sk-ant-exec-" + "c0ffee" * 6


@pytest.fixture(scope="module")
def client() -> Any:
    return docker_client()


@pytest.fixture(scope="module")
def container(client: Any) -> Iterator[Any]:
    """One idle container of the sandbox image for the whole module."""
    try:
        client.images.get(SANDBOX_IMAGE)
    except docker.errors.ImageNotFound:
        require_or_skip(f"{SANDBOX_IMAGE} is not built (docker/build-image.sh)")
    running = client.containers.run(
        SANDBOX_IMAGE,
        ["sleep", "infinity"],
        entrypoint=[],
        detach=True,
        labels={"anycode.test": "docker-exec"},
    )
    try:
        yield running
    finally:
        running.remove(force=True)


def frame(stream: int, payload: bytes) -> bytes:
    """One chunk of the Engine API's multiplexed stream: type, three zeros, big-endian size."""
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


async def test_the_multiplexed_stream_is_split_into_stdout_and_a_bounded_stderr_tail() -> None:
    ours, engine = trio.socket.socketpair()
    process = DockerExecProcess(None, "exec-id", trio.SocketStream(ours), None)
    engine_side = trio.SocketStream(engine)
    wire = (
        frame(1, b"hello ")
        + frame(2, b"x" * STDERR_TAIL_BYTES)
        + frame(1, b"world\n")
        + frame(2, b"the end")
        + frame(1, b"")
    )
    with trio.fail_after(10):
        # Split at awkward places: inside a header, inside a payload.
        for piece in (wire[:3], wire[3:11], wire[11:20], wire[20:]):
            await engine_side.send_all(piece)
        await engine_side.send_eof()
        assert await process.receive_some(3) == b"hel"
        output = b""
        while data := await process.receive_some():
            output += data
        await process.send_all(b"to stdin")
        await process.close_stdin()
        assert await engine_side.receive_some() == b"to stdin"
        assert await engine_side.receive_some() == b""
    assert output == b"lo world\n"
    tail = process.stderr_tail()
    assert len(tail) == STDERR_TAIL_BYTES
    assert tail.endswith("xthe end")
    await engine_side.aclose()
    await process._stream.aclose()


async def read_all(process: DockerExecProcess) -> bytes:
    out = bytearray()
    while data := await process.receive_some(4096):
        out += data
    return bytes(out)


@pytest.mark.docker
async def test_stdin_stdout_stderr_and_the_exit_code(client: Any, container: Any) -> None:
    with trio.fail_after(BOUND):
        process = await start_exec(
            client.api,
            container.id,
            ["sh", "-c", 'echo "out $GREETING"; echo oops >&2; cat; exit 3'],
            env={"GREETING": "hello"},
            cwd="/tmp",
        )
        try:
            await process.send_all(b"line one\nline two\n")
            await process.close_stdin()
            output = await read_all(process)
            code = await process.wait()
        finally:
            await process.aclose()
    assert output == b"out hello\nline one\nline two\n"
    assert process.stderr_tail() == "oops\n"
    assert code == 3


@pytest.mark.docker
async def test_large_output_arrives_whole_and_in_order(client: Any, container: Any) -> None:
    with trio.fail_after(BOUND):
        process = await start_exec(client.api, container.id, ["seq", "1", "200000"])
        try:
            output = await read_all(process)
            code = await process.wait()
        finally:
            await process.aclose()
    expected = "".join(f"{n}\n" for n in range(1, 200001)).encode()
    assert len(output) == len(expected)
    assert hashlib.sha256(output).hexdigest() == hashlib.sha256(expected).hexdigest()
    assert code == 0


@pytest.mark.docker
async def test_closing_stops_a_process_that_ignores_its_closed_input(
    client: Any, container: Any
) -> None:
    with trio.fail_after(BOUND):
        process = await start_exec(client.api, container.id, ["sleep", "600"])
        started = trio.current_time()
        await process.aclose()
        elapsed = trio.current_time() - started
        await process.aclose()  # idempotent
    info = client.api.exec_inspect(process.exec_id)
    assert not info["Running"]
    assert elapsed < CLOSE_GRACE + 5


@pytest.mark.docker
async def test_an_exec_the_engine_refuses_is_a_sandbox_error(client: Any, container: Any) -> None:
    with pytest.raises(SandboxError) as caught:
        await start_exec(client.api, "no-such-container", ["true"], env={"KEY": SECRET})
    assert "cannot start 'true' in container no-such-cont" in str(caught.value)
    assert SECRET not in str(caught.value)


@pytest.mark.docker
async def test_stdio_acp_through_docker_exec_drives_the_agent_in_the_sandbox(
    client: Any, container: Any, nursery: trio.Nursery
) -> None:
    gateway = docker_bridge_gateway()
    if gateway is None:
        require_or_skip(
            "the Docker bridge gateway is unknown; the container cannot reach the model"
        )
    script = ModelScript()
    script.add("hello", [Text("Hello ", "from ", "the container")])
    script.add("make", [Bash("touch /tmp/made_in_container.txt")], [Text("made")])
    model = ScriptedModel(script)
    served = await nursery.start(serve_asgi, model.app, gateway)
    env = agent_env(served.base_url, "/usr/local/bin/claude", as_root=False)
    events: list[AgentEvent] = []
    with trio.fail_after(BOUND):
        process = await start_exec(
            client.api, container.id, ["claude-agent-acp"], env=env, cwd="/tmp"
        )
        async with open_stdio_client(process) as acp:
            await acp.initialize()
            session = await acp.new_session("/tmp")
            for prompt in ("[[hello]]", "[[make]]"):
                await session.prompt(prompt)
                async for event in session.events:
                    events.append(event)
                    if isinstance(event, PermissionRequested):
                        option = event.option("allow_once")
                        assert option is not None
                        await session.respond_permission(event.key, option.option_id)
                    if isinstance(event, TurnEnded):
                        break
    check = client.containers.get(container.id).exec_run(
        ["test", "-f", "/tmp/made_in_container.txt"]
    )
    assert check.exit_code == 0
    assert [e.text for e in events if isinstance(e, TextDelta)] == [
        "Hello ",
        "from ",
        "the container",
        "made",
    ]
    assert any(isinstance(e, ToolCall) and e.status == "completed" for e in events)
    assert [e.stop_reason for e in events if isinstance(e, TurnEnded)] == ["end_turn", "end_turn"]
    # The image's managed settings make Claude Code ask (claude-agent-acp's own default mode,
    # "auto", would have run the command without a request).
    assert len([e for e in events if isinstance(e, PermissionRequested)]) == 1


@pytest.mark.docker
def test_git_in_the_image_ignores_the_rules_allow_for_this_session_writes(
    client: Any, container: Any
) -> None:
    """claude-agent-acp's "allow always" writes <cwd>/.claude/settings.local.json; the daemon
    commits with `git add -A`, so the image's git must leave that file out."""
    script = (
        'set -e; cd "$(mktemp -d)"; git init -q; mkdir .claude; '
        "echo '{}' > .claude/settings.local.json; echo '{}' > .claude/settings.json; "
        "git status --porcelain --untracked-files=all"
    )
    result = client.containers.get(container.id).exec_run(["sh", "-c", script])
    assert result.exit_code == 0, result.output
    assert result.output.decode().splitlines() == ["?? .claude/settings.json"]


@pytest.mark.docker
async def test_acpx_through_docker_exec_runs_under_its_policy(
    client: Any, container: Any, nursery: trio.Nursery
) -> None:
    gateway = docker_bridge_gateway()
    if gateway is None:
        require_or_skip("no Docker bridge gateway: the container cannot reach the model")
    script = ModelScript()
    script.add("make", [Bash("touch /tmp/made_by_acpx.txt")], [Text("made")])
    model = ScriptedModel(script)
    served = await nursery.start(serve_asgi, model.app, gateway)
    env = agent_env(served.base_url, "/usr/local/bin/claude", as_root=False)

    async def spawn(argv: Any) -> DockerExecProcess:
        return await start_exec(client.api, container.id, argv, env=env, cwd="/tmp")

    launch = AcpxLaunch(cwd="/tmp", policy="approve-all", agent_command=("claude-agent-acp",))
    events: list[AgentEvent] = []
    with trio.fail_after(BOUND):
        async with open_acpx_session(launch, spawn) as session:
            await session.prompt("[[make]]")
            async for event in session.events:
                events.append(event)
                if isinstance(event, TurnEnded):
                    break
    assert container.exec_run(["test", "-f", "/tmp/made_by_acpx.txt"]).exit_code == 0
    [resolved] = [e for e in events if isinstance(e, PermissionResolved)]
    assert (resolved.option_kind, resolved.by) == ("allow_once", "policy")
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["made"]
