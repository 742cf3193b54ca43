"""What the agent/sandbox fault tests share: a daemon world whose provider or engine connection a
test can break, and the chat-side checks every fault ends with.

The world is the end-to-end one (tests/e2e/harness.py): the real daemon, the Telegram stand-in,
real Docker, the real sandbox-agent + Claude Code, the scripted model. Two things can be put in
the daemon's way:

- `ProxiedAgentProvider`: the Docker provider, with a `TcpProxy` between the daemon and each
  sandbox's published agent port, so a test can cut the SSE stream (`proxies[session]`).
- `EngineProxy`: TCP on loopback in front of the engine's Unix socket; the daemon's docker
  client talks to it, and the test takes it down (the engine is unreachable) and up again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import trio

from anycode_actors.config import Config, config_from_mapping
from anycode_actors.daemon import Daemon, daemon_id_for
from anycode_actors.sandboxes.base import SandboxHandle, SandboxProvider, SandboxSpec
from anycode_actors.store import Session
from tests.docker_support import require_or_skip
from tests.e2e.harness import World, e2e_config_data, image_or_skip
from tests.fakes._http import serve_asgi
from tests.fakes.model import ModelScript, ScriptedModel, docker_bridge_gateway
from tests.fakes.tcp_proxy import TcpProxy
from tests.fakes.telegram import FakeTelegram, MessageView, User

#: Seconds between the watchdog's sweeps (liveness of sandboxes, orphans); the e2e value.
WATCHDOG_INTERVAL: Final = 2.0
CHUNK: Final = 65536

MakeProvider = Callable[[Config, str], SandboxProvider]


# --- the world ----------------------------------------------------------------------------------


@asynccontextmanager
async def fault_world(
    nursery: trio.Nursery,
    tmp: Path,
    script: ModelScript,
    *,
    make_provider: MakeProvider | None = None,
    docker: dict[str, Any] | None = None,
    **session: Any,
) -> AsyncIterator[World]:
    """The e2e world, with `docker` merged into `[docker]` and the provider `make_provider`
    builds (from the config and the daemon id) instead of the plain Docker provider."""
    client = await trio.to_thread.run_sync(image_or_skip)
    gateway = await trio.to_thread.run_sync(docker_bridge_gateway)
    if gateway is None:
        require_or_skip("Docker's bridge network has no gateway address")
    assert gateway is not None
    telegram = FakeTelegram()
    telegram_url = await telegram.start(nursery)
    model = ScriptedModel(script)
    served = await nursery.start(serve_asgi, model.app, gateway)
    data = e2e_config_data(tmp, telegram_url, telegram.token, served.base_url, **session)
    data["docker"].update(docker or {})
    config = config_from_mapping(data, environ={}, base_dir=tmp)
    provider = make_provider(config, daemon_id_for(config)) if make_provider else None
    daemon = Daemon(config, provider=provider, watchdog_interval=WATCHDOG_INTERVAL)
    async with trio.open_nursery() as inner:
        await inner.start(daemon.run)
        try:
            with trio.fail_after(30):
                await telegram.wait_until_polling()
            yield World(model=model, daemon=daemon, config=config, docker=client, telegram=telegram)
        finally:
            inner.cancel_scope.cancel()


class ProxiedAgentProvider:
    """A provider whose sandboxes are reached through a `TcpProxy` each (by session id in
    `proxies`), started in `nursery`; everything else is the wrapped provider's."""

    def __init__(self, inner: SandboxProvider, nursery: trio.Nursery) -> None:
        self._inner = inner
        self._nursery = nursery
        self.proxies: dict[str, TcpProxy] = {}

    async def create(self, spec: SandboxSpec) -> SandboxHandle:
        handle = await self._inner.create(spec)
        assert handle.endpoint is not None, "sandbox-agent sandboxes have an endpoint"
        proxy = TcpProxy("127.0.0.1", int(handle.endpoint.rsplit(":", 1)[1]))
        await self._nursery.start(proxy.serve)
        self.proxies[spec.session_id] = proxy
        return dataclasses.replace(handle, endpoint=proxy.url)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class EngineProxy:
    """TCP on 127.0.0.1 in front of the Docker engine's Unix socket.

    `down()` closes the listener and resets every open connection, so the daemon's docker client
    gets "connection refused" as from an engine that is not running; `up()` listens again on
    the same port.
    """

    def __init__(self, socket_path: str | None = None) -> None:
        self.socket_path = socket_path or engine_socket_path()
        self.port = 0
        self.accepted = 0
        self._nursery: trio.Nursery | None = None
        self._serving: trio.CancelScope | None = None

    @property
    def base_url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    async def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        await self.up()

    async def up(self) -> None:
        assert self._nursery is not None, "start() first"
        if self._serving is None:
            self._serving = await self._nursery.start(self._serve)

    def down(self) -> None:
        if self._serving is not None:
            self._serving.cancel()
            self._serving = None

    async def _serve(
        self, *, task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        with trio.CancelScope() as scope:
            try:
                async with trio.open_nursery() as handlers:
                    task_status.started(scope)
                    await trio.serve_listeners(self._handle, listeners, handler_nursery=handlers)
            finally:
                for listener in listeners:
                    listener.socket.close()

    async def _handle(self, client: trio.SocketStream) -> None:
        self.accepted += 1
        try:
            engine = await trio.open_unix_socket(self.socket_path)
        except OSError:
            await client.aclose()
            return
        try:
            async with engine, trio.open_nursery() as pumps:
                pumps.start_soon(_pump, client, engine)
                pumps.start_soon(_pump, engine, client)
        finally:
            # Cancelled by down(): both ends see a reset, as when the engine goes away.
            _reset_on_close(client)
            await client.aclose()


def engine_socket_path() -> str:
    host = os.environ.get("DOCKER_HOST", "")
    return host.removeprefix("unix://") if host.startswith("unix://") else "/var/run/docker.sock"


async def _pump(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
    try:
        while data := await source.receive_some(CHUNK):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        return


def _reset_on_close(stream: trio.SocketStream) -> None:
    with contextlib.suppress(OSError):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


# --- the chat -----------------------------------------------------------------------------------


async def start_task(world: World, chat: int, user: User, text: str) -> str:
    """Send `/task ...`; the new session's short id once the chat says it is starting."""
    tg = world.telegram
    before = last_message_id(world, chat)
    tg.inject_message(chat, user, text)
    with trio.fail_after(30):
        message = await tg.wait_for(
            lambda: next(
                (
                    m
                    for m in bot_messages_after(world, chat, before)
                    if "Starting claude-code session" in m.text
                ),
                None,
            )
        )
    found = re.search(r"session `([0-9a-f]{8})`", message.text)
    assert found is not None, message.text
    return found.group(1)


async def chat_says(
    world: World, chat: int, containing: str, *, after: int = 0, within: float = 60
) -> MessageView:
    """The first bot message after message id `after` whose text has `containing`."""
    tg = world.telegram
    with trio.fail_after(within):
        return await tg.wait_for(
            lambda: next(
                (m for m in bot_messages_after(world, chat, after) if containing in m.text), None
            )
        )


async def chat_says_any(
    world: World, chat: int, pattern: str, *, after: int = 0, within: float = 60
) -> MessageView:
    """The first bot message after `after` whose text matches the regular expression."""
    tg = world.telegram
    compiled = re.compile(pattern, re.DOTALL)
    with trio.fail_after(within):
        return await tg.wait_for(
            lambda: next(
                (m for m in bot_messages_after(world, chat, after) if compiled.search(m.text)),
                None,
            )
        )


def bot_messages_after(world: World, chat: int, after: int) -> list[MessageView]:
    return [m for m in _messages(world, chat) if m.from_bot and m.message_id > after]


def last_message_id(world: World, chat: int) -> int:
    messages = _messages(world, chat)
    return messages[-1].message_id if messages else 0


def _messages(world: World, chat: int) -> list[MessageView]:
    try:
        return world.telegram.messages(chat)
    except LookupError:  # nobody has written there yet
        return []


def said_after(world: World, chat: int, after: int) -> list[str]:
    """What the bot said after message `after`, as the user sees it now."""
    return [m.text for m in bot_messages_after(world, chat, after)]


async def a_new_task_works(
    world: World, chat: int, user: User, *, completes: bool = True, within: float = 60
) -> str:
    """`/task [[hello]]` answers "Hello there." at once and, if `completes` (`idle_minutes = 0`),
    completes; returns the session id."""
    before = last_message_id(world, chat)
    sid = await start_task(world, chat, user, "/task [[hello]] are you there?")
    await chat_says(world, chat, "Hello there.", after=before, within=within)
    if completes:
        await chat_says(world, chat, f"Session `{sid}` completed.", after=before, within=within)
    return sid


# --- the daemon's record and Docker -------------------------------------------------------------


async def session_record(world: World, chat: int, sid: str) -> Session:
    session = await world.daemon.store.find_session_by_prefix("telegram", str(chat), sid)
    assert session is not None, f"no session {sid}"
    return session


async def sandbox_of(world: World, chat: int, sid: str, *, within: float = 60) -> str:
    """The container id of session `sid`, once the daemon has recorded it."""
    with trio.fail_after(within):
        while True:
            session = await session_record(world, chat, sid)
            if session.sandbox_id:
                return session.sandbox_id
            await trio.sleep(0.1)


async def unsettled_sessions(world: World) -> list[Session]:
    """Sessions the store still calls active (none should be, once every fault has played out
    and the chat has been told)."""
    return list(await world.daemon.store.active_sessions())


async def exec_in(world: World, container_id: str, command: list[str]) -> tuple[int, str]:
    """Run `command` in the container as its own user (the agents' and sandbox-agent's: root
    there has no CAP_KILL over them); (exit code, output)."""

    def run() -> tuple[int, str]:
        result = world.docker.containers.get(container_id).exec_run(command)
        return int(result.exit_code), result.output.decode("utf-8", "replace")

    return await trio.to_thread.run_sync(run)


async def container_state(world: World, container_id: str) -> dict[str, Any] | None:
    def inspect() -> dict[str, Any] | None:
        try:
            return dict(world.docker.api.inspect_container(container_id)["State"])
        except Exception:
            return None

    return await trio.to_thread.run_sync(inspect)
