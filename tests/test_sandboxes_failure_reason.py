"""What a user is told when their sandbox fails: read from the container's state and cgroup."""

from __future__ import annotations

import trio

from anycode_actors.sandboxes.base import LOST, SandboxError, describe_loss
from anycode_actors.sandboxes.docker import _oom_kills, docker_stop_reason
from tests.actor_fakes import FakeProvider


def test_an_oom_killed_container_says_so_with_its_limit() -> None:
    state = {"State": {"Running": False, "OOMKilled": True, "ExitCode": 137}}
    assert docker_stop_reason({**state, "HostConfig": {"Memory": 2**30}}) == (
        "it ran out of memory (limit 1 GiB)"
    )
    assert docker_stop_reason({**state, "HostConfig": {"Memory": 64 * 2**20}}) == (
        "it ran out of memory (limit 64 MiB)"
    )
    assert docker_stop_reason({**state, "HostConfig": {"Memory": 0}}) == "it ran out of memory"


def test_other_stops_name_the_exit() -> None:
    killed = {"State": {"Running": False, "OOMKilled": False, "ExitCode": 137}}
    exited = {"State": {"Running": False, "OOMKilled": False, "ExitCode": 3}}
    assert docker_stop_reason(killed) == "it was killed (SIGKILL)"
    assert docker_stop_reason(exited) == "its main process exited with code 3"
    assert docker_stop_reason({"State": {"Running": True}}) == ""


def test_oom_kills_are_read_from_cgroup_v1_and_v2_files() -> None:
    v2 = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n"
    v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n"
    assert (_oom_kills(v2), _oom_kills(v1), _oom_kills("")) == (2, 1, 0)


async def test_a_lost_sandbox_is_described_by_its_provider_or_plainly() -> None:
    provider = FakeProvider()
    provider.troubles["sb1"] = "it ran out of memory"
    assert await describe_loss(provider, "sb1") == f"{LOST}: it ran out of memory"
    assert await describe_loss(provider, "gone") == f"{LOST}: it was removed"

    async def fails(sandbox_id: str) -> str:
        await trio.lowlevel.checkpoint()
        raise SandboxError("engine unreachable")

    provider.failure_reason = fails  # type: ignore[method-assign]
    assert await describe_loss(provider, "sb1") == LOST
