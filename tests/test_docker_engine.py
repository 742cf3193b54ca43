"""The Docker engine works from Trio from day one: create, start, inspect and remove a container."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import trio

from tests.docker_support import docker_client, ensure_tiny_image

pytestmark = pytest.mark.docker


async def test_a_real_container_is_created_inspected_and_removed_from_a_trio_task() -> None:
    client: Any = await trio.to_thread.run_sync(docker_client)
    image = await trio.to_thread.run_sync(ensure_tiny_image, client)
    label = f"anycode-test-{uuid.uuid4().hex[:8]}"

    container = await trio.to_thread.run_sync(
        lambda: client.containers.run(image, detach=True, labels={"anycode.test": label})
    )
    try:
        await trio.to_thread.run_sync(container.reload)
        assert container.status == "running"
        assert container.labels["anycode.test"] == label
        found = await trio.to_thread.run_sync(
            lambda: client.containers.list(filters={"label": f"anycode.test={label}"})
        )
        assert [c.id for c in found] == [container.id]
    finally:
        await trio.to_thread.run_sync(lambda: container.remove(force=True))

    left = await trio.to_thread.run_sync(
        lambda: client.containers.list(all=True, filters={"label": f"anycode.test={label}"})
    )
    assert left == []
