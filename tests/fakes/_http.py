"""Serve an ASGI app on loopback for a test: the stand-ins are real HTTP servers, not mocks.

Every fake (Telegram, Slack Web API, the scripted model) is started the same way, in the test's
nursery, on port 0 so parallel tests never collide.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

# Hypercorn logs every request at INFO; tests only care about errors.
logging.getLogger("hypercorn.access").setLevel(logging.WARNING)


@dataclass(frozen=True)
class Served:
    """Where a started fake listens."""

    host: str
    port: int

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


async def serve_asgi(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[Served] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run `app` until cancelled; report the bound address through `nursery.start`.

    Use as ``served = await nursery.start(serve_asgi, app)``.
    """
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    # Long polls and SSE streams are held open by design; never time them out here.
    config.keep_alive_timeout = 3600
    config.graceful_timeout = 0.5
    # Hypercorn's listen backlog is 100; a benchmark opening a thousand sessions at once would
    # overflow it, and connections the kernel then resets look like requests lost on the way.
    config.backlog = 4096

    class _Status:
        def started(self, binds: list[str] | None = None) -> None:
            assert binds, "hypercorn reported no bind"
            bound = binds[0].removeprefix("http://")
            bound_host, _, bound_port = bound.rpartition(":")
            task_status.started(Served(bound_host.strip("[]"), int(bound_port)))

    await serve(app, config, task_status=_Status())  # type: ignore[arg-type]
