"""A running daemon whose only platform is the HTTP API, on a real port, with the fake sandbox
provider and scripted agents of tests/actor_fakes.py; httpx clients for its users; and the
OpenAPI document as the contract every answer is checked against."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import trio
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from anycode_actors.api import ApiPlatform, hash_token
from anycode_actors.api.openapi import openapi_document
from anycode_actors.config import Config, config_from_mapping
from anycode_actors.daemon import Daemon
from tests.actor_fakes import FakeAgent, FakeProvider, use_agents

TOKENS = {"ada": "ada-token-0123456789", "bob": "bob-token-0123456789", "root": "root-0123456789"}
DOC_URI = "urn:anycode-openapi"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def api_config(tmp: Path, **extra: Any) -> Config:
    session = {"debounce_ms": 50, "idle_minutes": 0, **extra.pop("session", {})}
    return config_from_mapping(
        {
            "api": {
                "listen": f"127.0.0.1:{free_port()}",
                "users": {name: {"token_sha256": hash_token(t)} for name, t in TOKENS.items()},
                "admins": ["root"],
                "max_body_kb": 4,
                **extra.pop("api", {}),
            },
            "database": {"path": str(tmp / "anycode.db")},
            "admin": {"socket": str(tmp / "anycode.sock")},
            "session": session,
            **extra,
        },
        environ={},
        base_dir=tmp,
    )


@dataclass
class Api:
    daemon: Daemon
    platform: ApiPlatform
    provider: FakeProvider
    agents: list[FakeAgent]
    url: str

    def client(self, user: str | None = "ada", **kwargs: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {TOKENS[user]}"} if user else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30, **kwargs)


@asynccontextmanager
async def running_api(
    tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_agent: Callable[[], FakeAgent],
    config: Config | None = None,
) -> AsyncIterator[Api]:
    agents: list[FakeAgent] = []

    def agent() -> FakeAgent:
        made = make_agent()
        agents.append(made)
        return made

    use_agents(monkeypatch, agent, "claude-code")
    provider = FakeProvider()
    daemon = Daemon(config or api_config(tmp), provider=provider)
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        platform = next(c for c in daemon._clients if isinstance(c, ApiPlatform))
        try:
            yield Api(daemon, platform, provider, agents, platform.urls[0])
        finally:
            nursery.cancel_scope.cancel()


# --- the contract -------------------------------------------------------------------------------

_DOC = openapi_document()
_REGISTRY: Registry = Registry().with_resource(DOC_URI, DRAFT202012.create_resource(_DOC))


def check(response: httpx.Response, path: str, method: str, status: int) -> Any:
    """Assert `response` has `status`, that the document lists that answer for the operation,
    and that a JSON body matches the documented schema; return the body."""
    assert response.status_code == status, response.text
    operation = _DOC["paths"][path][method.lower()]
    answer = operation["responses"].get(str(status))
    assert answer is not None, f"{method} {path} does not document {status}"
    content = answer.get("content", {})
    if "application/json" in content:
        pointer = _json_pointer(path, method, status)
        validator = jsonschema.Draft202012Validator(
            {"$ref": f"{DOC_URI}#{pointer}"}, registry=_REGISTRY
        )
        body = response.json()
        validator.validate(body)
        return body
    return response.content


def _json_pointer(path: str, method: str, status: int) -> str:
    escaped = path.replace("~", "~0").replace("/", "~1")
    return f"/paths/{escaped}/{method.lower()}/responses/{status}/content/application~1json/schema"


def sse_events(text: str) -> list[dict[str, Any]]:
    """Parse an event stream's text into events: {"id", "event", "data"} (data as JSON)."""
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
        if "data" in fields:
            fields["data"] = json.loads(fields["data"])
            events.append(fields)
    return events
