"""The plumbing the GitHub and GitLab stand-ins share: a raw ASGI request and its JSON answer.

Both stand-ins route on the *raw* path: GitLab's ``:id`` is a URL-encoded project path
(``group%2Fproject``), which a decoded path would split, and GitHub answers 404 to a path with a
trailing slash; ASGI's ``path`` is already decoded, ``raw_path`` is not.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote


@dataclass
class RestRequest:
    """One HTTP request as a stand-in sees it."""

    method: str
    #: The path exactly as sent, still percent-encoded.
    raw_path: str
    #: Query parameters; the last value wins, as in Rails and GitHub's API.
    query: dict[str, str]
    #: Header names lower-cased.
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON; raises ``ValueError`` when it is not JSON."""
        return json.loads(self.body or b"null")

    @property
    def segments(self) -> list[str]:
        """The path's segments, each decoded on its own (``a%2Fb`` stays one segment)."""
        return [unquote(part) for part in self.raw_path.split("/")[1:]]


@dataclass
class RestResponse:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    #: Sent as text/plain instead of JSON when set.
    text: str | None = None


async def serve_lifespan(scope: Mapping[str, Any], receive: Any, send: Any) -> bool:
    """Answer ASGI's lifespan events; True when `scope` was not an HTTP request."""
    if scope["type"] == "lifespan":
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return True
    return scope["type"] != "http"


async def read_request(scope: Mapping[str, Any], receive: Any) -> RestRequest | None:
    """Read a whole HTTP request from ASGI; None when the client went away first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    raw = scope.get("raw_path") or scope["path"].encode()
    raw_path = raw.decode("latin-1").split("?", 1)[0]
    query = {
        key: values[-1]
        for key, values in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()
    }
    headers = {
        name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]
    }
    return RestRequest(scope["method"], raw_path, query, headers, b"".join(chunks))


async def send_response(send: Any, response: RestResponse) -> None:
    """Write `response` to ASGI as JSON (or plain text)."""
    if response.text is not None:
        payload = response.text.encode()
        content_type = "text/plain; charset=utf-8"
    elif response.status == 204:
        payload = b""
        content_type = ""
    else:
        payload = json.dumps(response.body).encode()
        content_type = "application/json; charset=utf-8"
    headers = [(name.lower().encode(), value.encode()) for name, value in response.headers.items()]
    if content_type:
        headers.append((b"content-type", content_type.encode()))
    headers.append((b"content-length", str(len(payload)).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
