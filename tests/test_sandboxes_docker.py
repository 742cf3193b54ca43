"""The Docker provider against a real engine: ports, hardening, cancellation, cleanup, secrets.

Most tests use the tiny image (tests/docker_support.py), where "healthy" means the container
runs. The real sandbox image (SANDBOX_IMAGE of tests/docker_support.py) is used to check
that sandbox-agent answers on the published port with its token, and by the benchmark:

    pytest tests/test_sandboxes_docker.py -m bench -s
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import statistics
import time
import traceback
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import docker.errors
import httpx
import pytest
import requests
import trio
from docker.client import DockerClient

from anycode_actors.config import DockerConfig
from anycode_actors.sandboxes import (
    OutboxListing,
    SandboxError,
    SandboxFile,
    SandboxHandle,
    SandboxSpec,
    new_agent_token,
)
from anycode_actors.sandboxes.docker import (
    AGENT_PORT,
    LABEL_AGENT,
    LABEL_DAEMON,
    LABEL_PROTOCOL,
    LABEL_SESSION,
    DockerProvider,
)
from anycode_actors.sandboxes.ports import port_is_free
from tests.docker_support import (
    SANDBOX_IMAGE,
    docker_client,
    ensure_tiny_image,
    require_or_skip,
)

pytestmark = pytest.mark.docker

SECRET = "sk-ant-test-" + "s3cr3t" * 6
CAPS = ("CHOWN", "SETUID", "SETGID")
HEALTH_TIMEOUT = 60.0


# --- fixtures and helpers ----------------------------------------------------------------------


def free_block(size: int, first: int = 23000) -> int:
    """The start of `size` consecutive loopback ports nobody holds right now."""
    for start in range(first, 60000 - size, size):
        if all(port_is_free(port) for port in range(start, start + size)):
            return start
    raise AssertionError(f"no {size} consecutive free ports")


@pytest.fixture(scope="module")
def client() -> Any:
    return docker_client()


@pytest.fixture(scope="module")
def tiny(client: Any) -> str:
    return ensure_tiny_image(client)


def ours(client: Any, daemon_id: str) -> list[Any]:
    return client.containers.list(all=True, filters={"label": f"{LABEL_DAEMON}={daemon_id}"})


@pytest.fixture
def daemon_id(client: Any) -> Iterator[str]:
    """A daemon id of this test alone; whatever carries it is removed afterwards, pass or fail."""
    daemon = f"test-{secrets.token_hex(4)}"
    yield daemon
    for container in ours(client, daemon):
        container.remove(force=True, v=True)


def tiny_config(image: str, *, size: int = 60, **overrides: Any) -> DockerConfig:
    start = free_block(size)
    settings: dict[str, Any] = {
        "image": image,
        "port_range_start": start,
        "port_range_end": start + size,
        "memory": "64m",
        "cpus": 0.5,
        "pids_limit": 64,
        "cap_add": CAPS,
    }
    settings.update(overrides)
    return DockerConfig(**settings)


def spec(session: str = "session-1", **overrides: Any) -> SandboxSpec:
    settings: dict[str, Any] = {
        "session_id": session,
        "agent": "claude-code",
        "protocol": "sandbox-agent",
        "env": {"ANTHROPIC_API_KEY": SECRET},
    }
    settings.update(overrides)
    return SandboxSpec(**settings)


def host_port(handle: SandboxHandle) -> int:
    assert handle.endpoint is not None
    return int(handle.endpoint.rsplit(":", 1)[1])


def wrapping_client(method: str, around: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Any:
    """A client factory whose `api.<method>` is wrapped (the rest is the real engine)."""

    def factory() -> Any:
        client = docker_client()
        setattr(client.api, method, around(getattr(client.api, method)))
        return client

    return factory


async def wait_healthy(endpoint: str, token: str | None) -> int:
    """Poll /v1/health until it answers (any HTTP status but the agent gate's 503, "not
    listening yet"); return that status."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as http:
        with trio.fail_after(HEALTH_TIMEOUT):
            while True:
                try:
                    answer = await http.get(f"{endpoint}/v1/health", headers=headers)
                except httpx.TransportError:
                    # docker-proxy accepts and then drops connections until the server listens.
                    await trio.sleep(0.02)
                    continue
                if answer.status_code == 503:
                    await trio.sleep(0.02)
                    continue
                return answer.status_code


# --- create, destroy, ports --------------------------------------------------------------------


async def test_create_runs_a_labelled_container_on_a_loopback_port_and_destroy_removes_it(
    client: Any, tiny: str, daemon_id: str
) -> None:
    provider = DockerProvider(tiny_config(tiny), daemon_id)
    handle = await provider.create(spec(repo="https://github.com/org/repo"))
    port = host_port(handle)
    assert handle.endpoint == f"http://127.0.0.1:{port}"
    assert handle.provider == "docker"
    assert handle.workdir == "/workspace/repo"
    assert len(handle.token) >= 32
    assert await provider.is_alive(handle.id)

    attrs = client.api.inspect_container(handle.id)
    assert attrs["HostConfig"]["PortBindings"] == {
        f"{AGENT_PORT}/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]
    }
    assert attrs["NetworkSettings"]["Ports"][f"{AGENT_PORT}/tcp"] == [
        {"HostIp": "127.0.0.1", "HostPort": str(port)}
    ]
    labels = attrs["Config"]["Labels"]
    assert (labels[LABEL_SESSION], labels[LABEL_DAEMON], labels[LABEL_AGENT]) == (
        "session-1",
        daemon_id,
        "claude-code",
    )
    assert attrs["Name"].startswith("/anycode-session--")
    assert provider.ports is not None and provider.ports.held == {port}

    await provider.destroy(handle.id)
    assert not await provider.is_alive(handle.id)
    assert ours(client, daemon_id) == []
    assert provider.ports.held == set()
    await provider.aclose()


async def test_destroy_is_idempotent(client: Any, tiny: str, daemon_id: str) -> None:
    provider = DockerProvider(tiny_config(tiny), daemon_id)
    handle = await provider.create(spec())
    await provider.destroy(handle.id)
    await provider.destroy(handle.id)
    await provider.destroy("0" * 64)
    assert ours(client, daemon_id) == []
    await provider.aclose()


async def test_destroy_refuses_a_container_that_is_not_this_daemons(
    client: Any, tiny: str, daemon_id: str
) -> None:
    provider = DockerProvider(tiny_config(tiny), daemon_id)
    stranger = client.containers.create(tiny, labels={LABEL_DAEMON: f"{daemon_id}-x"})
    unlabelled = client.containers.create(tiny)
    try:
        for container in (stranger, unlabelled):
            with pytest.raises(SandboxError, match="is not a sandbox of this daemon"):
                await provider.destroy(container.id)
            container.reload()
    finally:
        stranger.remove(force=True)
        unlabelled.remove(force=True)
        await provider.aclose()


async def test_credentials_and_daemon_variables_are_in_the_environment_only(
    client: Any, tiny: str, daemon_id: str
) -> None:
    provider = DockerProvider(tiny_config(tiny), daemon_id)
    handle = await provider.create(spec(repo="https://github.com/org/repo"))
    attrs = client.api.inspect_container(handle.id)
    env = dict(item.split("=", 1) for item in attrs["Config"]["Env"])
    assert env["ANTHROPIC_API_KEY"] == SECRET
    assert env["ANYCODE_AGENT"] == "claude-code"
    assert env["ANYCODE_PROTOCOL"] == "sandbox-agent"
    assert env["ANYCODE_REPO"] == "https://github.com/org/repo"
    assert env["ANYCODE_AGENT_TOKEN"] == handle.token
    for value in attrs["Config"]["Labels"].values():
        assert SECRET not in value and handle.token not in value
    assert SECRET not in repr(handle) and handle.token not in repr(handle)
    await provider.destroy(handle.id)
    await provider.aclose()


async def test_stdio_protocols_publish_no_port_and_get_no_token(
    client: Any, tiny: str, daemon_id: str
) -> None:
    provider = DockerProvider(tiny_config(tiny), daemon_id)
    handle = await provider.create(spec(protocol="acp"))
    assert (handle.endpoint, handle.token, handle.workdir) == (None, "", "/workspace")
    attrs = client.api.inspect_container(handle.id)
    assert not attrs["HostConfig"]["PortBindings"]
    env = dict(item.split("=", 1) for item in attrs["Config"]["Env"])
    assert env["ANYCODE_PROTOCOL"] == "acp"
    assert "ANYCODE_AGENT_TOKEN" not in env
    assert provider.ports is not None and provider.ports.held == set()
    await provider.destroy(handle.id)
    await provider.aclose()


async def test_a_port_another_program_listens_on_is_skipped(
    client: Any, tiny: str, daemon_id: str
) -> None:
    config = tiny_config(tiny, size=4)
    with socket.socket() as other:
        other.bind(("127.0.0.1", config.port_range_start))
        other.listen()
        provider = DockerProvider(config, daemon_id)
        handle = await provider.create(spec())
        assert host_port(handle) == config.port_range_start + 1
        await provider.destroy(handle.id)
    await provider.aclose()


async def test_a_port_taken_between_the_check_and_dockers_bind_is_retried_with_another(
    client: Any, tiny: str, daemon_id: str
) -> None:
    grabbed: list[socket.socket] = []

    def grab_before_first_start(start: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(container: str, *args: Any, **kwargs: Any) -> Any:
            if not grabbed:
                bindings = client.api.inspect_container(container)["HostConfig"]["PortBindings"]
                other = socket.socket()
                other.bind(("127.0.0.1", int(bindings[f"{AGENT_PORT}/tcp"][0]["HostPort"])))
                other.listen()
                grabbed.append(other)
            return start(container, *args, **kwargs)

        return wrapper

    provider = DockerProvider(
        tiny_config(tiny),
        daemon_id,
        client_factory=wrapping_client("start", grab_before_first_start),
    )
    try:
        handle = await provider.create(spec())
        taken = grabbed[0].getsockname()[1]
        assert host_port(handle) != taken
        assert [c.id for c in ours(client, daemon_id)] == [handle.id]
        assert provider.ports is not None and provider.ports.held == {host_port(handle)}
        await provider.destroy(handle.id)
    finally:
        for other in grabbed:
            other.close()
        await provider.aclose()


@pytest.mark.parametrize("ports", ["range", "docker-picks"])
async def test_fifty_concurrent_creates_get_distinct_ports_run_and_leave_nothing_behind(
    client: Any, tiny: str, daemon_id: str, ports: str
) -> None:
    config = (
        tiny_config(tiny)
        if ports == "range"
        else tiny_config(tiny, port_range_start=0, port_range_end=0)
    )
    provider = DockerProvider(config, daemon_id)
    handles: list[SandboxHandle] = []

    async def create_one(index: int) -> None:
        handles.append(await provider.create(spec(f"session-{index}")))

    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for index in range(50):
            nursery.start_soon(create_one, index)
    created = time.monotonic() - started

    assert len(handles) == 50
    assert len({host_port(handle) for handle in handles}) == 50
    if ports == "range":
        assert all(
            p in range(config.port_range_start, config.port_range_end)
            for p in (host_port(h) for h in handles)
        )
    listed = await provider.list()
    assert {info.id for info in listed} == {handle.id for handle in handles}
    assert all(info.alive for info in listed)
    for handle in handles:
        assert await provider.is_alive(handle.id)

    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for handle in handles:
            nursery.start_soon(provider.destroy, handle.id)
    destroyed = time.monotonic() - started
    print(f"\n50 concurrent creates ({ports}): {created:.1f} s; destroys: {destroyed:.1f} s")

    assert await provider.list() == []
    assert ours(client, daemon_id) == []
    if provider.ports is not None:
        assert provider.ports.held == set()
    await provider.aclose()


# --- cancellation ------------------------------------------------------------------------------


@pytest.mark.parametrize("call", ["create_container", "start", "inspect_container"])
async def test_cancel_while_creating_leaves_no_container(
    client: Any, tiny: str, daemon_id: str, call: str
) -> None:
    """The caller is cancelled while the engine works on `call`: the container exists by then
    (or is about to), and create must remove it before the cancellation propagates."""
    scope = trio.CancelScope()
    made: list[str] = []

    def cancel_during(method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            if call == "create_container":
                made.append(result["Id"])
            trio.from_thread.run_sync(scope.cancel)
            return result

        return wrapper

    provider = DockerProvider(
        tiny_config(tiny), daemon_id, client_factory=wrapping_client(call, cancel_during)
    )
    with scope:
        await provider.create(spec())
    assert scope.cancelled_caught
    assert ours(client, daemon_id) == []
    for container_id in made:
        with pytest.raises(docker.errors.NotFound):
            client.api.inspect_container(container_id)
    assert provider.ports is not None and provider.ports.held == set()
    await provider.aclose()


async def test_cancel_at_any_moment_of_create_leaves_no_container(
    client: Any, tiny: str, daemon_id: str
) -> None:
    provider = DockerProvider(tiny_config(tiny), daemon_id)
    outcomes = []
    for delay in (0.0, 0.005, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5):
        with trio.move_on_after(delay) as scope:
            handle = await provider.create(spec())
        if not scope.cancelled_caught:
            await provider.destroy(handle.id)
        outcomes.append(scope.cancelled_caught)
        assert ours(client, daemon_id) == [], f"left behind after a cancel at {delay} s"
    assert provider.ports is not None and provider.ports.held == set()
    assert outcomes[0], "a create cancelled before it starts must not create anything"
    await provider.aclose()


# --- hardening ---------------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as status:
        return dict(line.rstrip("\n").split(":\t", 1) for line in status if ":\t" in line)


CAP_BITS = {"CHOWN": 0, "SETGID": 6, "SETUID": 7}


async def test_hardening_is_visible_in_docker_inspect_and_in_the_kernel(
    client: Any, tiny: str, daemon_id: str
) -> None:
    provider = DockerProvider(tiny_config(tiny), daemon_id)
    handle = await provider.create(spec())
    attrs = client.api.inspect_container(handle.id)
    host = attrs["HostConfig"]
    assert host["Privileged"] is False
    assert host["CapDrop"] == ["ALL"]
    assert sorted(host["CapAdd"]) == sorted(CAPS)
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["Memory"] == host["MemorySwap"] == 64 * 1024 * 1024
    assert host["NanoCpus"] == 500_000_000
    assert host["PidsLimit"] == 64
    assert host["NetworkMode"] == "bridge"
    assert host["Init"] is True
    assert host["PortBindings"][f"{AGENT_PORT}/tcp"][0]["HostIp"] == "127.0.0.1"

    # What the kernel enforces on the container's PID 1 (docker-init).
    status = proc_status(attrs["State"]["Pid"])
    assert status["NoNewPrivs"] == "1"
    assert int(status["CapBnd"], 16) == sum(1 << bit for bit in CAP_BITS.values())
    await provider.destroy(handle.id)
    await provider.aclose()


async def test_zero_limits_mean_no_limit(client: Any, tiny: str, daemon_id: str) -> None:
    config = tiny_config(tiny, memory="0", cpus=0.0, pids_limit=0)
    provider = DockerProvider(config, daemon_id)
    handle = await provider.create(spec())
    host = client.api.inspect_container(handle.id)["HostConfig"]
    assert (host["Memory"], host["NanoCpus"]) == (0, 0)
    assert host["PidsLimit"] in (None, 0, -1)
    await provider.destroy(handle.id)
    await provider.aclose()


# --- listing -----------------------------------------------------------------------------------


async def test_list_sees_only_this_daemons_sandboxes(
    client: Any, tiny: str, daemon_id: str
) -> None:
    provider = DockerProvider(tiny_config(tiny), daemon_id)
    other_daemon = f"{daemon_id}-other"
    other = DockerProvider(tiny_config(tiny), other_daemon)
    try:
        live = await provider.create(spec("live-session"))
        orphan = await provider.create(spec("orphan-session"))
        foreign = await other.create(spec("live-session"))
        listed = {info.id: info for info in await provider.list()}
        assert set(listed) == {live.id, orphan.id}
        assert listed[orphan.id].session_id == "orphan-session"
        assert listed[orphan.id].agent == "claude-code"
        assert listed[orphan.id].alive
        assert listed[orphan.id].created_at.endswith("+00:00")

        assert [info.id for info in await other.list()] == [foreign.id]
        await provider.destroy(orphan.id)
        assert [info.id for info in await provider.list()] == [live.id]
        await provider.destroy(live.id)
        await other.destroy(foreign.id)
    finally:
        for container in ours(client, other_daemon):
            container.remove(force=True)
        await provider.aclose()
        await other.aclose()


async def test_a_restarted_provider_adopts_the_ports_of_running_sandboxes(
    client: Any, tiny: str, daemon_id: str
) -> None:
    config = tiny_config(tiny, size=3)
    first = DockerProvider(config, daemon_id)
    handle = await first.create(spec())
    await first.aclose()

    restarted = DockerProvider(config, daemon_id)
    assert [info.id for info in await restarted.list()] == [handle.id]
    assert restarted.ports is not None and restarted.ports.held == {host_port(handle)}
    second = await restarted.create(spec("session-2"))
    assert host_port(second) != host_port(handle)
    await restarted.destroy(handle.id)
    await restarted.destroy(second.id)
    assert restarted.ports.held == set()
    await restarted.aclose()


async def test_a_restarted_provider_reattaches_with_the_handle_create_gave(
    client: Any, tiny: str, daemon_id: str
) -> None:
    config = tiny_config(tiny, size=3)
    first = DockerProvider(config, daemon_id)
    handle = await first.create(spec(repo="https://github.com/org/repo"))
    stdio = await first.create(spec("session-2", protocol="acp"))
    await first.aclose()

    restarted = DockerProvider(config, daemon_id)
    reattached = await restarted.reattach(handle.id)
    assert reattached == handle
    assert (reattached.session_id, reattached.workdir) == ("session-1", "/workspace/repo")
    assert handle.token not in repr(reattached)
    # Its port is the allocator's again: not handed out twice, released on destroy.
    assert restarted.ports is not None and restarted.ports.held == {host_port(handle)}
    assert await restarted.reattach(stdio.id) == stdio
    assert (stdio.endpoint, stdio.token, stdio.workdir) == (None, "", "/workspace")
    # Short ids work too, as with every other method.
    assert await restarted.reattach(handle.id[:12]) == handle

    await restarted.destroy(handle.id)
    await restarted.destroy(stdio.id)
    assert restarted.ports.held == set()
    assert ours(client, daemon_id) == []
    await restarted.aclose()


async def test_a_seeded_sandbox_works_in_the_repo_folder_but_does_not_clone_it_even_after_a_restart(
    client: Any, tiny: str, daemon_id: str
) -> None:
    config = tiny_config(tiny)
    first = DockerProvider(config, daemon_id)
    handle = await first.create(
        spec(protocol="acp", repo="https://github.com/org/private", seeded=True)
    )
    assert handle.workdir == "/workspace/repo"
    attrs = client.api.inspect_container(handle.id)
    env = dict(item.split("=", 1) for item in attrs["Config"]["Env"])
    # No ANYCODE_REPO: the image's entrypoint would clone it (without a credential).
    assert "ANYCODE_REPO" not in env
    assert env["ANYCODE_WORKDIR"] == "/workspace/repo"
    await first.aclose()

    restarted = DockerProvider(config, daemon_id)
    assert await restarted.reattach(handle.id) == handle
    await restarted.destroy(handle.id)
    await restarted.aclose()


async def test_reattach_gives_none_for_a_removed_stopped_or_foreign_container(
    client: Any, tiny: str, daemon_id: str
) -> None:
    provider = DockerProvider(tiny_config(tiny), daemon_id)
    other = DockerProvider(tiny_config(tiny), f"{daemon_id}-other")
    stranger = client.containers.create(tiny, labels={LABEL_DAEMON: f"{daemon_id}-x"})
    try:
        removed = await provider.create(spec("removed"))
        await provider.destroy(removed.id)
        assert await provider.reattach(removed.id) is None
        assert await provider.reattach("0" * 64) is None

        stopped = await provider.create(spec("stopped"))
        await trio.to_thread.run_sync(lambda: client.api.stop(stopped.id, timeout=5))
        assert await provider.reattach(stopped.id) is None

        running = await provider.create(spec("running"))
        assert await other.reattach(running.id) is None
        stranger.start()
        assert await provider.reattach(stranger.id) is None
        assert provider.ports is not None
        assert provider.ports.held == {host_port(stopped), host_port(running)}
        await provider.destroy(stopped.id)
        await provider.destroy(running.id)
    finally:
        stranger.remove(force=True)
        await provider.aclose()
        await other.aclose()


async def test_logs_and_liveness_of_a_container_that_stopped(
    client: Any, tiny: str, daemon_id: str
) -> None:
    provider = DockerProvider(tiny_config(tiny), daemon_id)
    handle = await provider.create(spec())
    await trio.to_thread.run_sync(lambda: client.api.stop(handle.id, timeout=5))
    assert not await provider.is_alive(handle.id)
    assert [info.alive for info in await provider.list()] == [False]
    assert await provider.logs(handle.id) == ""
    await provider.destroy(handle.id)
    assert await provider.logs(handle.id) == ""
    await provider.aclose()


# --- errors and secrets ------------------------------------------------------------------------


def everything_said(error: BaseException) -> str:
    """The error as any logger or traceback printer could show it, chained causes included."""
    return "".join(traceback.format_exception(error)) + repr(error)


async def test_a_missing_image_is_reported_clearly_without_credentials(
    client: Any, daemon_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    provider = DockerProvider(tiny_config("anycode-test-missing:latest"), daemon_id)
    with pytest.raises(SandboxError) as caught:
        await provider.create(spec())
    assert str(caught.value) == (
        "image anycode-test-missing:latest is not on this Docker engine; build it with "
        "docker/build-image.sh or set docker.image"
    )
    assert SECRET not in everything_said(caught.value)
    assert SECRET not in caplog.text
    assert provider.ports is not None and provider.ports.held == set()
    await provider.aclose()


async def test_an_unreachable_engine_is_a_sandbox_error(daemon_id: str) -> None:
    provider = DockerProvider(
        tiny_config("x"),
        daemon_id,
        client_factory=lambda: DockerClient(base_url="unix:///nonexistent/docker.sock"),
    )
    with pytest.raises(SandboxError) as caught:
        await provider.create(spec())
    assert "Docker engine" in str(caught.value)
    assert SECRET not in everything_said(caught.value)


class FakeApi:
    """An Engine API whose answers a test scripts; for what a real engine will not say."""

    def __init__(self, fail: str | None = None, explanation: str = "", logs: bytes = b"") -> None:
        self.fail = fail
        self.explanation = explanation
        self.log_output = logs
        self.removed: list[str] = []

    def _maybe_fail(self, call: str) -> None:
        if self.fail == call:
            response = requests.Response()
            response.status_code = 500
            response.reason = "Internal Server Error"
            raise docker.errors.APIError(
                "500 Server Error", response=response, explanation=self.explanation
            )

    def create_host_config(self, **options: Any) -> dict[str, Any]:
        return dict(options)

    def create_container(self, image: str, **options: Any) -> dict[str, str]:
        self._maybe_fail("create_container")
        return {"Id": "f" * 64}

    def start(self, container: str) -> None:
        self._maybe_fail("start")

    def inspect_container(self, container: str) -> dict[str, Any]:
        return {
            "State": {"Running": True},
            "NetworkSettings": {
                "Ports": {f"{AGENT_PORT}/tcp": [{"HostIp": "127.0.0.1", "HostPort": "23999"}]}
            },
        }

    def logs(self, container: str, **options: Any) -> bytes:
        return self.log_output

    def remove_container(self, container: str, **options: Any) -> None:
        self.removed.append(container)


class FakeClient:
    def __init__(self, api: FakeApi) -> None:
        self.api = api

    def close(self) -> None:
        pass


@pytest.mark.parametrize("call", ["create_container", "start"])
async def test_an_engine_error_that_echoes_a_credential_never_passes_it_on(
    daemon_id: str, caplog: pytest.LogCaptureFixture, call: str
) -> None:
    caplog.set_level(logging.DEBUG)
    api = FakeApi(fail=call, explanation=f"invalid env ANTHROPIC_API_KEY={SECRET}")
    provider = DockerProvider(
        tiny_config("x", port_range_start=0, port_range_end=0),
        daemon_id,
        client_factory=lambda: FakeClient(api),
    )
    with pytest.raises(SandboxError) as caught:
        await provider.create(spec())
    assert "invalid env ANTHROPIC_API_KEY=***" in str(caught.value)
    assert SECRET not in everything_said(caught.value)
    assert SECRET not in caplog.text
    # The half-made container (or whatever the engine made of it) was removed.
    assert api.removed


async def test_logs_hide_the_injected_credentials_and_the_token(daemon_id: str) -> None:
    api = FakeApi()
    provider = DockerProvider(
        tiny_config("x", port_range_start=0, port_range_end=0),
        daemon_id,
        client_factory=lambda: FakeClient(api),
    )
    handle = await provider.create(spec())
    assert handle.endpoint == "http://127.0.0.1:23999"
    api.log_output = f"key={SECRET}\ntoken={handle.token}\nready\n".encode()
    assert await provider.logs(handle.id) == "key=***\ntoken=***\nready\n"


class RunningContainerApi(FakeApi):
    """A running container as `docker inspect` shows it to a restarted daemon."""

    def __init__(self, daemon_id: str, env: dict[str, str], image_env: dict[str, str]) -> None:
        super().__init__()
        self.daemon_id = daemon_id
        self.env = env
        self.image_env = image_env

    def inspect_container(self, container: str) -> dict[str, Any]:
        return {
            **super().inspect_container(container),
            "Id": "e" * 64,
            "Name": "/anycode-session--abc123",
            "Image": "sha256:" + "1" * 64,
            "Config": {
                "Labels": {
                    LABEL_DAEMON: self.daemon_id,
                    LABEL_SESSION: "session-1",
                    LABEL_PROTOCOL: "sandbox-agent",
                },
                "Env": [f"{name}={value}" for name, value in self.env.items()],
            },
        }

    def inspect_image(self, image: str) -> dict[str, Any]:
        return {"Config": {"Env": [f"{k}={v}" for k, v in self.image_env.items()]}}


async def test_a_reattached_sandbox_s_logs_hide_its_credentials_and_token(daemon_id: str) -> None:
    token = new_agent_token()
    image_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "NODE_VERSION": "22.13.0"}
    env = {
        **image_env,
        "ANTHROPIC_API_KEY": SECRET,
        "ANYCODE_AGENT": "claude-code",
        "ANYCODE_PROTOCOL": "sandbox-agent",
        "ANYCODE_AGENT_TOKEN": token,
    }
    api = RunningContainerApi(daemon_id, env, image_env)
    provider = DockerProvider(
        tiny_config("x", port_range_start=0, port_range_end=0),
        daemon_id,
        client_factory=lambda: FakeClient(api),
    )
    handle = await provider.reattach("e" * 12)
    assert handle == SandboxHandle(
        id="e" * 64,
        session_id="session-1",
        provider="docker",
        endpoint="http://127.0.0.1:23999",
        token=token,
        workdir="/workspace",
    )
    api.log_output = (
        f"key={SECRET} token={token}\nPATH=/usr/local/bin:/usr/bin:/bin node 22.13.0 "
        "agent claude-code\n"
    ).encode()
    # The image's own variables and the daemon's plain ones stay readable.
    assert await provider.logs(handle.id) == (
        "key=*** token=***\nPATH=/usr/local/bin:/usr/bin:/bin node 22.13.0 agent claude-code\n"
    )


async def test_a_sandbox_agent_container_without_its_token_is_refused(daemon_id: str) -> None:
    api = RunningContainerApi(daemon_id, {"ANYCODE_PROTOCOL": "sandbox-agent"}, {})
    provider = DockerProvider(
        tiny_config("x", port_range_start=0, port_range_end=0),
        daemon_id,
        client_factory=lambda: FakeClient(api),
    )
    with pytest.raises(SandboxError, match="has no ANYCODE_AGENT_TOKEN in its environment"):
        await provider.reattach("e" * 64)


# --- the real sandbox image --------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox_image(client: Any) -> str:
    try:
        client.images.get(SANDBOX_IMAGE)
    except docker.errors.ImageNotFound:
        require_or_skip(f"{SANDBOX_IMAGE} is not built (docker/build-image.sh)")
    return SANDBOX_IMAGE


def real_config(image: str, **overrides: Any) -> DockerConfig:
    start = free_block(10)
    settings: dict[str, Any] = {
        "image": image,
        "port_range_start": start,
        "port_range_end": start + 10,
        "memory": "2g",
        "cpus": 1.0,
    }
    settings.update(overrides)
    return DockerConfig(**settings)


async def test_the_real_sandbox_answers_health_with_its_token_and_refuses_without(
    client: Any, sandbox_image: str, daemon_id: str
) -> None:
    provider = DockerProvider(real_config(sandbox_image), daemon_id)
    handle = await provider.create(spec())
    try:
        assert handle.endpoint is not None
        assert await wait_healthy(handle.endpoint, handle.token) == 200
        assert await wait_healthy(handle.endpoint, None) == 401
        assert await wait_healthy(handle.endpoint, "wrong-token") == 401
        logs = await provider.logs(handle.id)
        assert "starting sandbox-agent" in logs
        assert handle.token not in logs and SECRET not in logs
    finally:
        await provider.destroy(handle.id)
        await provider.aclose()
    assert ours(client, daemon_id) == []


def exchange(port: int, data: bytes, settle: float = 1.0) -> bytes:
    """Send `data` on one connection to the host's loopback `port`; read what comes back until
    the connection closes or nothing more came for `settle` seconds after the first bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(data)
        received = b""
        with contextlib.suppress(TimeoutError):
            while chunk := connection.recv(65536):
                received += chunk
                connection.settimeout(settle)
    return received


async def test_the_token_is_on_no_command_line_and_sandbox_agent_still_requires_it(
    client: Any, sandbox_image: str, daemon_id: str
) -> None:
    provider = DockerProvider(real_config(sandbox_image), daemon_id)
    handle = await provider.create(spec())
    try:
        assert handle.endpoint is not None and handle.token
        assert await wait_healthy(handle.endpoint, handle.token) == 200
        assert await wait_healthy(handle.endpoint, None) == 401
        assert await wait_healthy(handle.endpoint, handle.token[:-1]) == 401

        # What every user of the host sees: `docker top` runs ps there.
        container = client.containers.get(handle.id)
        top = await trio.to_thread.run_sync(lambda: container.top(ps_args="-ww -eo pid,args"))
        commands = [str(row[-1]) for row in top["Processes"]]
        assert any("sandbox-agent server" in c and "--no-token" in c for c in commands), commands
        assert any("--listen 0.0.0.0:2468" in c for c in commands), commands
        assert not [c for c in commands if handle.token in c]
        assert not [c for c in commands if "--token" in c.split()]

        # Neither sandbox-agent nor what it starts (the agents) has it in its environment.
        script = "tr '\\0' '\\n' < /proc/$(pgrep -f '^sandbox-agent server')/environ"
        process = await provider.exec(handle, ["sh", "-c", script])
        await process.close_stdin()
        environ = b""
        with trio.fail_after(30):
            while chunk := await process.receive_some():
                environ += chunk
        assert await process.wait() == 0, process.stderr_tail()
        await process.aclose()
        assert b"ANYCODE_AGENT=" in environ
        assert b"ANYCODE_AGENT_TOKEN" not in environ and handle.token.encode() not in environ

        # One checked request per connection: a request behind it gets no answer.
        first = "GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n"
        first += f"Authorization: Bearer {handle.token}\r\n\r\n"
        second = "GET /v1/agents HTTP/1.1\r\nHost: x\r\n\r\n"
        received = await trio.to_thread.run_sync(
            exchange, host_port(handle), (first + second).encode()
        )
        assert received.startswith(b"HTTP/1.1 200 ")
        assert received.count(b"HTTP/1.1 ") == 1
        assert b'"agents"' not in received
    finally:
        await provider.destroy(handle.id)
        await provider.aclose()
    assert ours(client, daemon_id) == []


async def test_exec_runs_a_process_with_piped_stdio_in_the_sandbox(
    client: Any, sandbox_image: str, daemon_id: str
) -> None:
    provider = DockerProvider(real_config(sandbox_image), daemon_id)
    handle = await provider.create(spec(protocol="acp"))
    try:
        process = await provider.exec(handle, ["cat"])
        await process.send_all(b'{"jsonrpc":"2.0","id":1}\n')
        await process.close_stdin()
        output = b""
        with trio.fail_after(30):
            while chunk := await process.receive_some():
                output += chunk
        assert output == b'{"jsonrpc":"2.0","id":1}\n'
        assert await process.wait() == 0
        await process.aclose()

        script = 'echo "$PWD $ANYCODE_PROTOCOL $ANTHROPIC_API_KEY $EXTRA"'
        process = await provider.exec(handle, ["sh", "-c", script], env={"EXTRA": "only-here"})
        await process.close_stdin()
        output = b""
        with trio.fail_after(30):
            while chunk := await process.receive_some():
                output += chunk
        assert output.decode().split() == ["/workspace", "acp", SECRET, "only-here"]
        await process.aclose()
    finally:
        await provider.destroy(handle.id)
        await provider.aclose()


async def test_a_reattached_real_sandbox_answers_health_with_the_token_from_its_container(
    client: Any, sandbox_image: str, daemon_id: str
) -> None:
    config = real_config(sandbox_image)
    first = DockerProvider(config, daemon_id)
    handle = await first.create(spec())
    await first.aclose()
    restarted = DockerProvider(config, daemon_id)
    try:
        reattached = await restarted.reattach(handle.id)
        assert reattached == handle
        assert reattached.endpoint is not None
        assert await wait_healthy(reattached.endpoint, reattached.token) == 200
    finally:
        await restarted.destroy(handle.id)
        await restarted.aclose()
    assert ours(client, daemon_id) == []


async def run_script(provider: DockerProvider, handle: SandboxHandle, script: str) -> None:
    process = await provider.exec(handle, ["sh", "-c", script])
    await process.close_stdin()
    with trio.fail_after(30):
        while await process.receive_some():
            pass
        assert await process.wait() == 0, process.stderr_tail()
    await process.aclose()


OUTBOX_SCRIPT = """
set -e
cd /workspace
mkdir -p outbox/sub/deeper
printf hi > outbox/a.txt
printf '\\000\\001binary\\377' > outbox/sub/deeper/b.bin
head -c 1024 /dev/zero | tr '\\000' e > outbox/edge
head -c 2048 /dev/zero | tr '\\000' p > outbox/report.pdf
ln outbox/a.txt outbox/hard
ln outbox/report.pdf outbox/big-hard
ln -s /etc/passwd outbox/key
ln -s /etc outbox/sub/etc
ln -s /workspace/outbox/a.txt outbox/within
ln -s /nowhere outbox/dangling
mkfifo outbox/pipe
ln -s /workspace/outbox linked-outbox
"""


async def test_read_files_streams_the_outbox_out_of_a_real_sandbox(
    client: Any, sandbox_image: str, daemon_id: str
) -> None:
    provider = DockerProvider(real_config(sandbox_image), daemon_id)
    handle = await provider.create(spec(protocol="acp"))
    try:
        assert await provider.read_files(handle, "/workspace/outbox", max_bytes=1024) == (
            OutboxListing()
        )
        await run_script(provider, handle, OUTBOX_SCRIPT)
        expected = OutboxListing(
            files=(
                SandboxFile("a.txt", b"hi"),
                SandboxFile("edge", b"e" * 1024),
                SandboxFile("hard", b"hi"),
                SandboxFile("sub/deeper/b.bin", b"\x00\x01binary\xff"),
            ),
            too_big=(("big-hard", 2048), ("report.pdf", 2048)),
            links=(("hard", "a.txt"), ("report.pdf", "big-hard")),
        )
        for path in ("/workspace/outbox", "/workspace/outbox/", "/workspace/outbox/."):
            assert await provider.read_files(handle, path, max_bytes=1024) == expected, path
        # Not a folder: a file, a link to the folder, nothing at all.
        for path in ("/workspace/outbox/a.txt", "/workspace/linked-outbox", "/workspace/none"):
            assert await provider.read_files(handle, path, max_bytes=1024) == OutboxListing()
        with pytest.raises(SandboxError, match="is not an absolute folder path"):
            await provider.read_files(handle, "outbox", max_bytes=1024)
    finally:
        await provider.destroy(handle.id)
    with pytest.raises(SandboxError, match="does not exist"):
        await provider.read_files(handle, "/workspace/outbox", max_bytes=1024)
    await provider.aclose()


async def test_write_file_puts_a_file_the_agent_owns_into_a_real_sandbox(
    client: Any, sandbox_image: str, daemon_id: str
) -> None:
    provider = DockerProvider(real_config(sandbox_image), daemon_id)
    handle = await provider.create(spec(protocol="acp"))
    data = bytes(range(256)) * 4096  # 1 MiB, every byte value
    try:
        await provider.write_file(handle, "/workspace/inbox/sub/data.bin", data)
        odd = 'it\'s a "name"; rm -rf $HOME'
        await provider.write_file(handle, f"/tmp/odd/{odd}", b"odd")
        listing = await provider.read_files(handle, "/workspace/inbox", max_bytes=2 << 20)
        assert listing == OutboxListing(files=(SandboxFile("sub/data.bin", data),))
        listing = await provider.read_files(handle, "/tmp/odd", max_bytes=10)
        assert listing == OutboxListing(files=(SandboxFile(odd, b"odd"),))
        # The agent's own: it can change the file and add to the folder made for it.
        await run_script(
            provider,
            handle,
            "set -e; test -O /workspace/inbox/sub/data.bin; test -O /workspace/inbox/sub;"
            " printf x >> /workspace/inbox/sub/data.bin; touch /workspace/inbox/sub/mine;"
            ' test -d "$HOME"',
        )
        with pytest.raises(SandboxError, match="could not write /proc/1/nope"):
            await provider.write_file(handle, "/proc/1/nope/x", b"x")
        with pytest.raises(SandboxError, match="is not an absolute file path"):
            await provider.write_file(handle, "inbox/x", b"x")
    finally:
        await provider.destroy(handle.id)
    with pytest.raises(SandboxError):
        await provider.write_file(handle, "/workspace/inbox/a", b"x")
    await provider.aclose()


async def test_read_files_skips_a_huge_file_without_holding_it_in_memory(
    client: Any, sandbox_image: str, daemon_id: str
) -> None:
    provider = DockerProvider(real_config(sandbox_image), daemon_id)
    handle = await provider.create(spec(protocol="acp"))
    huge = 256 * 2**20
    try:
        await run_script(
            provider,
            handle,
            f"mkdir -p /workspace/outbox && head -c {huge} /dev/urandom > /workspace/outbox/huge"
            " && printf ok > /workspace/outbox/z.txt",
        )
        tracemalloc.start()
        try:
            listing = await provider.read_files(handle, "/workspace/outbox", max_bytes=2**20)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert listing == OutboxListing(
            files=(SandboxFile("z.txt", b"ok"),), too_big=(("huge", huge),)
        )
        assert peak < 32 * 2**20, f"peak {peak / 2**20:.0f} MiB while skipping 256 MiB"

        # A cancel returns at once (the read-only worker thread is abandoned, and stops).
        started = time.monotonic()
        with trio.move_on_after(0.05) as scope:
            await provider.read_files(handle, "/workspace/outbox", max_bytes=2**20)
        assert scope.cancelled_caught and time.monotonic() - started < 0.5
        assert await provider.read_files(handle, "/workspace/outbox", max_bytes=2**20) == listing
    finally:
        await provider.destroy(handle.id)
        await provider.aclose()


@pytest.mark.bench
async def test_bench_create_to_healthy_beside_a_bare_docker_run(
    client: Any, sandbox_image: str, daemon_id: str
) -> None:
    """Median and max of create→healthy (provider) and `docker run`→healthy (CLI), interleaved
    in one run so both see the same machine."""
    runs = 7
    provider = DockerProvider(real_config(sandbox_image), daemon_id)
    ours_s: list[float] = []
    bare_s: list[float] = []
    try:
        for _ in range(runs):
            started = time.monotonic()
            handle = await provider.create(spec())
            assert handle.endpoint is not None
            assert await wait_healthy(handle.endpoint, handle.token) == 200
            ours_s.append(time.monotonic() - started)
            await provider.destroy(handle.id)

            token = new_agent_token()
            started = time.monotonic()
            done = await trio.run_process(
                [
                    "docker",
                    "run",
                    "-d",
                    "--rm",
                    "-p",
                    f"127.0.0.1::{AGENT_PORT}",
                    "--label",
                    f"{LABEL_DAEMON}={daemon_id}",
                    "-e",
                    f"ANYCODE_AGENT_TOKEN={token}",
                    sandbox_image,
                ],
                capture_stdout=True,
            )
            container = done.stdout.decode().strip()
            port = client.api.port(container, AGENT_PORT)[0]["HostPort"]
            assert await wait_healthy(f"http://127.0.0.1:{port}", token) == 200
            bare_s.append(time.monotonic() - started)
            await trio.run_process(["docker", "rm", "-f", container], capture_stdout=True)
    finally:
        await provider.aclose()

    def figures(samples: list[float]) -> str:
        return f"median {statistics.median(samples):.2f} s, max {max(samples):.2f} s"

    print(
        f"\ncreate→healthy, {SANDBOX_IMAGE}, {runs} runs each, interleaved:\n"
        f"  DockerProvider.create + /v1/health 200: {figures(ours_s)}"
        f"  [{', '.join(f'{s:.2f}' for s in ours_s)}]\n"
        f"  bare `docker run -d` + /v1/health 200:  {figures(bare_s)}"
        f"  [{', '.join(f'{s:.2f}' for s in bare_s)}]"
    )
    assert ours(client, daemon_id) == []
