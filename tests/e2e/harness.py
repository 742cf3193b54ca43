"""The whole daemon against the real things: a chat stand-in, a real Docker sandbox from the real
image, the real sandbox-agent and Claude Code inside it, and the scripted model on this machine.

Nothing in the middle is mocked: the daemon talks to the stand-in over HTTP exactly as it would to
Telegram, and the agent in the container calls the scripted model over the Docker bridge.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from anycode_actors.config import Config, config_from_mapping
from anycode_actors.daemon import Daemon
from tests.agent_stack import agent_env
from tests.docker_support import docker_client, require_or_skip
from tests.fakes._http import serve_asgi
from tests.fakes.model import ModelScript, ScriptedModel, docker_bridge_gateway
from tests.fakes.telegram import FakeTelegram

IMAGE = os.environ.get("ANYCODE_TEST_IMAGE", "anycode-sandbox:latest")
# Claude Code's native binary inside the image (see docker/Dockerfile.agent).
CLAUDE_IN_IMAGE = "/usr/local/bin/claude"


def image_or_skip() -> Any:
    client = docker_client()
    try:
        client.images.get(IMAGE)
    except Exception:
        require_or_skip(
            f"the sandbox image {IMAGE} is missing; build it with docker/build-image.sh"
        )
    return client


@dataclass
class World:
    telegram: FakeTelegram
    model: ScriptedModel
    daemon: Daemon
    config: Config
    docker: Any

    async def wait_until_no_containers(self, within: float = 30) -> None:
        """Every sandbox of this daemon is gone (removal is asynchronous to the chat notice)."""
        with trio.fail_after(within):
            while await trio.to_thread.run_sync(self.containers):  # noqa: ASYNC110 - polls Docker
                await trio.sleep(0.2)

    def containers(self) -> list[Any]:
        """Every container of this daemon, running or not."""
        return list(
            self.docker.containers.list(
                all=True, filters={"label": f"anycode.daemon={self.daemon.daemon_id}"}
            )
        )


def e2e_config(tmp: Path, telegram_url: str, token: str, model_url: str, **session: Any) -> Config:
    return config_from_mapping(
        e2e_config_data(tmp, telegram_url, token, model_url, **session), environ={}, base_dir=tmp
    )


def e2e_config_data(
    tmp: Path, telegram_url: str, token: str, model_url: str, **session: Any
) -> dict[str, Any]:
    return {
        "telegram": {"bot_token": token, "api_base_url": telegram_url, "poll_timeout": 5},
        "sandbox": {"provider": "docker", "protocol": "sandbox-agent"},
        "docker": {"image": IMAGE, "port_range_start": 0, "port_range_end": 0},
        "database": {"path": str(tmp / "anycode.db")},
        "admin": {"socket": str(tmp / "anycode.sock")},
        "agents": {
            "default_agent": "claude-code",
            "claude-code": {
                "sandbox_agent_id": "claude",
                "acp_command": ["claude-agent-acp"],
                "acpx_agent": "claude",
                "env": agent_env(model_url, CLAUDE_IN_IMAGE, as_root=False),
            },
        },
        "session": {"debounce_ms": 300, "idle_minutes": 0, **session},
    }


@asynccontextmanager
async def running_world(
    nursery: trio.Nursery, tmp: Path, script: ModelScript, **session: Any
) -> AsyncIterator[World]:
    docker = await trio.to_thread.run_sync(image_or_skip)
    gateway = await trio.to_thread.run_sync(docker_bridge_gateway)
    if gateway is None:
        require_or_skip("Docker's bridge network has no gateway address")
    telegram = FakeTelegram()
    telegram_url = await telegram.start(nursery)
    model = ScriptedModel(script)
    served = await nursery.start(serve_asgi, model.app, gateway)
    config = e2e_config(tmp, telegram_url, telegram.token, served.base_url, **session)
    daemon = Daemon(config, watchdog_interval=2.0)
    async with trio.open_nursery() as inner:
        await inner.start(daemon.run)
        world = World(telegram, model, daemon, config, docker)
        try:
            yield world
        finally:
            inner.cancel_scope.cancel()
