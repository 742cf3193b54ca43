"""The whole daemon against the real things: a chat stand-in, a real Docker sandbox from the real
image, the real sandbox-agent and Claude Code inside it, and the scripted model on this machine.

Nothing in the middle is mocked: the daemon talks to the stand-in over HTTP exactly as it would to
Telegram (or over HTTP and a WebSocket as it would to Slack: `running_slack_world`), and the agent
in the container calls the scripted model over the Docker bridge.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from anycode_actors.config import Config, config_from_mapping
from anycode_actors.daemon import Daemon
from tests.agent_stack import agent_env
from tests.docker_support import SANDBOX_IMAGE, docker_client, require_or_skip
from tests.fakes._http import serve_asgi
from tests.fakes.model import ModelScript, ScriptedModel, docker_bridge_gateway
from tests.fakes.slack import FakeSlack
from tests.fakes.telegram import FakeTelegram

IMAGE = SANDBOX_IMAGE
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
class _Daemon:
    """What every world has besides its chat stand-in."""

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


@dataclass
class World(_Daemon):
    telegram: FakeTelegram


@dataclass
class SlackWorld(_Daemon):
    slack: FakeSlack


def e2e_config(tmp: Path, telegram_url: str, token: str, model_url: str, **session: Any) -> Config:
    return config_from_mapping(
        e2e_config_data(tmp, telegram_url, token, model_url, **session), environ={}, base_dir=tmp
    )


def e2e_config_data(
    tmp: Path, telegram_url: str, token: str, model_url: str, **session: Any
) -> dict[str, Any]:
    return {
        "telegram": {
            "bot_token": token,
            "api_base_url": telegram_url,
            "poll_timeout": 5,
            "allow_everyone": True,
        },
        **_daemon_config_data(tmp, model_url, **session),
    }


def slack_config_data(
    tmp: Path, slack: FakeSlack, model_url: str, allowed_users: Sequence[str], **session: Any
) -> dict[str, Any]:
    """Slack only: the Socket Mode app of `slack`, and no [telegram] section."""
    return {
        "slack": {
            "app_token": slack.app_token,
            "bot_token": slack.bot_token,
            "api_base_url": slack.api_url,
            "allowed_users": list(allowed_users),
            "allow_everyone": not allowed_users,
        },
        **_daemon_config_data(tmp, model_url, **session),
    }


def _daemon_config_data(tmp: Path, model_url: str, **session: Any) -> dict[str, Any]:
    return {
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
    nursery: trio.Nursery,
    tmp: Path,
    script: ModelScript,
    *,
    sections: Mapping[str, Any] | None = None,
    **session: Any,
) -> AsyncIterator[World]:
    """`sections` are more config tables (`{"pool": {...}}`), `session` the session settings."""
    docker, gateway = await _docker_and_gateway()
    telegram = FakeTelegram()
    telegram_url = await telegram.start(nursery)
    model = ScriptedModel(script)
    served = await nursery.start(serve_asgi, model.app, gateway)
    data = e2e_config_data(tmp, telegram_url, telegram.token, served.base_url, **session)
    config = config_from_mapping({**data, **(sections or {})}, environ={}, base_dir=tmp)
    async with _running_daemon(config) as daemon:
        yield World(model=model, daemon=daemon, config=config, docker=docker, telegram=telegram)


@asynccontextmanager
async def running_slack_world(
    nursery: trio.Nursery,
    tmp: Path,
    script: ModelScript,
    *,
    allowed_users: Sequence[str] = (),
    **session: Any,
) -> AsyncIterator[SlackWorld]:
    """The same world with Slack as the only platform; ready once the app is connected."""
    docker, gateway = await _docker_and_gateway()
    slack = FakeSlack()
    await slack.start(nursery)
    model = ScriptedModel(script)
    served = await nursery.start(serve_asgi, model.app, gateway)
    data = slack_config_data(tmp, slack, served.base_url, allowed_users, **session)
    config = config_from_mapping(data, environ={}, base_dir=tmp)
    async with _running_daemon(config) as daemon:
        with trio.fail_after(30):
            await slack.wait_until_connected()
        yield SlackWorld(model=model, daemon=daemon, config=config, docker=docker, slack=slack)


async def _docker_and_gateway() -> tuple[Any, str]:
    docker = await trio.to_thread.run_sync(image_or_skip)
    gateway = await trio.to_thread.run_sync(docker_bridge_gateway)
    if gateway is None:
        require_or_skip("Docker's bridge network has no gateway address")
    assert gateway is not None  # require_or_skip raised
    return docker, gateway


@asynccontextmanager
async def _running_daemon(config: Config) -> AsyncIterator[Daemon]:
    daemon = Daemon(config, watchdog_interval=2.0)
    async with trio.open_nursery() as inner:
        await inner.start(daemon.run)
        try:
            yield daemon
        finally:
            inner.cancel_scope.cancel()


@dataclass
class ApiWorld(_Daemon):
    url: str


@asynccontextmanager
async def running_api_world(
    nursery: trio.Nursery, tmp: Path, script: ModelScript, tokens: dict[str, str], **session: Any
) -> AsyncIterator[ApiWorld]:
    """The same world with the HTTP API as the only platform, one user per entry of `tokens`
    (name → token); `url` is where it listens."""
    from anycode_actors.api import ApiPlatform, hash_token
    from tests.api_rig import free_port

    docker, gateway = await _docker_and_gateway()
    model = ScriptedModel(script)
    served = await nursery.start(serve_asgi, model.app, gateway)
    data = _daemon_config_data(tmp, served.base_url, **session)
    data["api"] = {
        "listen": f"127.0.0.1:{free_port()}",
        "users": {name: {"token_sha256": hash_token(token)} for name, token in tokens.items()},
    }
    config = config_from_mapping(data, environ={}, base_dir=tmp)
    async with _running_daemon(config) as daemon:
        platform = next(c for c in daemon._clients if isinstance(c, ApiPlatform))
        yield ApiWorld(
            model=model, daemon=daemon, config=config, docker=docker, url=platform.urls[0]
        )
