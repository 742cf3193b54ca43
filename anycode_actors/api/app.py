"""The ASGI application of the HTTP API: routes, authentication, bodies, server-sent events.

A small hand-written ASGI app (https://asgi.readthedocs.io/en/latest/specs/www.html) rather
than a framework: eleven routes, JSON in and out, and one streaming response.

Routes (the OpenAPI document at /v1/openapi.json says the same, with the schemas):

    GET    /                                      the dashboard (no token needed for the page)
    GET    /v1/openapi.json                       the OpenAPI document
    POST   /v1/sessions                           start a task {prompt, agent?, repo?} → 201
    GET    /v1/sessions                           your sessions (an admin's: everyone's)
    GET    /v1/sessions/{id}                      one session, with its pending permissions
    GET    /v1/sessions/{id}/events               its event log as server-sent events, then live
    POST   /v1/sessions/{id}/messages             a follow-up {text} → 202
    POST   /v1/sessions/{id}/permissions/{iid}    answer {option: index | option_id} → 202
    DELETE /v1/sessions/{id}                      cancel → 202
    GET    /v1/sessions/{id}/files/{name}         a file the agent left in its outbox
    GET    /v1/tree                               the actor tree, as `anycode tree --json`

**Auth.** Every /v1 route but the OpenAPI document needs `Authorization: Bearer <token>`. The
token's SHA-256 is compared in constant time with every configured one (`ApiPlatform.user_for`);
tokens are never logged (the server writes no access log). A browser's `EventSource` cannot set
headers, so GET requests may carry the token in the `anycode_token` cookie instead (the dashboard
sets it, SameSite=Strict, path /v1); requests that change something must use the header, which a
page on another site cannot make a browser send, so the cookie opens no door to cross-site
request forgery.

**Who sees what.** A session of another user is 404 to you, as if it did not exist, unless you
are an API admin: admins see, answer and cancel every API session, but follow-ups go only from
the session's owner (403 for an admin), as in chat.

**Errors** are JSON `{"error": "..."}`: 400 (bad JSON, a missing or wrong field, an unknown
agent), 401 (no or wrong token), 403, 404, 405, 409 (the session has ended, the permission was
answered), 413 (the body is over `api.max_body_kb`), 429 (a `[limits]` quota, or commands too
fast), 503 (the daemon did not answer in time).

**Events.** `text/event-stream`; each stored event is one SSE event whose `id:` is its `seq` in
the session's event log and whose `event:` is its kind (`text_delta`, `tool_call`,
`permission_requested`, ...), data `{"seq", "type", "data", "at"}` (`type` is the stored tag,
`data` its stored payload). Events without an id report the session's state: `state` (status,
reason, pending permissions, files) whenever it changes, and `end` (the final state) just before
the server closes the stream of a session that has ended. A client that reconnects with
`Last-Event-ID` (or `?after=N`) gets every event after that one from the log, then the live
ones: nothing is missed and nothing repeated.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any, Final
from urllib.parse import parse_qs, unquote

import trio

from anycode_actors.actors.chat import permission_button_data
from anycode_actors.actors.commands import BadTask, parse_task
from anycode_actors.actors.router import CommandRate
from anycode_actors.agents.events import (
    PermissionRequested,
    UnknownEvent,
    to_record,
)
from anycode_actors.api.dashboard import DASHBOARD_HTML
from anycode_actors.api.openapi import openapi_document
from anycode_actors.api.platform import PLATFORM, ApiPlatform
from anycode_actors.chat.base import ButtonPress, ChatEvent, ChatRef, Command, Message, User
from anycode_actors.store import Interaction, InteractionStatus, Session

log = logging.getLogger(__name__)

Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

#: How long a POST waits for the daemon's first word about it.
ANSWER_WAIT: Final = 30.0
#: The event log is read in pages of this many events.
PAGE: Final = 500
#: Without a notification, an event stream looks at the log this often.
POLL: Final = 1.0
#: A comment line this often keeps proxies from closing a quiet stream.
HEARTBEAT: Final = 15.0
TOKEN_COOKIE: Final = "anycode_token"
MAX_LISTED: Final = 200

_SESSION: Final = re.compile(r"/v1/sessions/([A-Za-z0-9_-]{1,64})")
_EVENTS: Final = re.compile(r"/v1/sessions/([A-Za-z0-9_-]{1,64})/events")
_MESSAGES: Final = re.compile(r"/v1/sessions/([A-Za-z0-9_-]{1,64})/messages")
_PERMISSION: Final = re.compile(
    r"/v1/sessions/([A-Za-z0-9_-]{1,64})/permissions/([A-Za-z0-9_-]{1,32})"
)
_FILE: Final = re.compile(r"/v1/sessions/([A-Za-z0-9_-]{1,64})/files/([^/]{1,255})")


#: Bytes of a refused body read and dropped before the 413 goes out. A client still sending
#: when the answer comes would see the connection closed under it instead of the answer
#: (RFC 9110, section 15.5.14); a body past this is not worth reading, and the client gets
#: the close.
DRAIN_LIMIT: Final = 1 << 20


async def _drain(receive: Receive) -> None:
    """Read and drop the rest of a refused request body, up to DRAIN_LIMIT bytes."""
    drained = 0
    while drained <= DRAIN_LIMIT:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return
        drained += len(message.get("body", b""))


class HttpError(Exception):
    """Answer the request with `status` and `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    user: str | None = None


class ApiApp:
    """The ASGI callable. `events` is the router's inbox, where every request that changes
    something goes as a chat event."""

    def __init__(self, platform: ApiPlatform, events: trio.MemorySendChannel[ChatEvent]) -> None:
        self.platform = platform
        self.events = events
        self.max_body = platform.api.max_body_kb * 1024
        limits = platform.config.limits
        # The router drops commands over this rate after one warning; the API says 429 first.
        self.rate = CommandRate(limits.commands_per_second, limits.command_burst)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        headers = {
            key.decode("latin-1").lower(): value.decode("latin-1")
            for key, value in scope.get("headers", [])
        }
        request = Request(
            method=scope["method"],
            path=scope["path"],
            query=parse_qs(scope.get("query_string", b"").decode("latin-1")),
            headers=headers,
        )
        try:
            await self._route(request, receive, send)
        except HttpError as error:
            await _json(send, error.status, {"error": error.message})
        except Exception:
            log.exception("API: %s %s failed", request.method, request.path)
            await _json(send, 500, {"error": "internal error"})

    # --- routing ----------------------------------------------------------------------------------

    async def _route(self, request: Request, receive: Receive, send: Send) -> None:
        method, path = request.method, request.path.rstrip("/") or "/"
        if path == "/" and method in ("GET", "HEAD"):
            await _respond(send, 200, DASHBOARD_HTML.encode(), "text/html; charset=utf-8")
            return
        if path == "/v1/openapi.json" and method == "GET":
            await _json(send, 200, openapi_document())
            return
        if not path.startswith("/v1/"):
            raise HttpError(404, f"no such route: {path}")
        user = self._authenticate(request)
        request = Request(request.method, path, request.query, request.headers, user)
        if path == "/v1/tree":
            _allow(method, "GET")
            await _json(send, 200, self.platform.tree().to_json())
        elif path == "/v1/sessions":
            if method == "POST":
                body = await self._body(request, receive)
                await self._start(request, body, send)
            else:
                _allow(method, "GET", "POST")
                await self._list(request, send)
        elif match := _EVENTS.fullmatch(path):
            _allow(method, "GET")
            session = await self._session(request, match.group(1))
            await self._stream(request, session, receive, send)
        elif match := _MESSAGES.fullmatch(path):
            _allow(method, "POST")
            body = await self._body(request, receive)
            session = await self._session(request, match.group(1))
            await self._follow_up(request, session, body, send)
        elif match := _PERMISSION.fullmatch(path):
            _allow(method, "POST")
            body = await self._body(request, receive)
            session = await self._session(request, match.group(1))
            await self._answer(request, session, match.group(2), body, send)
        elif match := _FILE.fullmatch(path):
            _allow(method, "GET")
            session = await self._session(request, match.group(1))
            await self._file(session, unquote(match.group(2)), send)
        elif match := _SESSION.fullmatch(path):
            _allow(method, "GET", "DELETE")
            session = await self._session(request, match.group(1))
            if method == "DELETE":
                await self._cancel(request, session, send)
            else:
                await _json(send, 200, await self._describe(session, detail=True))
        else:
            raise HttpError(404, f"no such route: {path}")

    def _authenticate(self, request: Request) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            token = ""
            if request.method == "GET":
                cookie: SimpleCookie = SimpleCookie()
                try:
                    cookie.load(request.headers.get("cookie", ""))
                except Exception:
                    cookie = SimpleCookie()
                morsel = cookie.get(TOKEN_COOKIE)
                token = unquote(morsel.value) if morsel is not None else ""
        if not token.strip():
            raise HttpError(401, "missing bearer token (Authorization: Bearer <token>)")
        user = self.platform.user_for(token.strip())
        if user is None:
            raise HttpError(401, "unknown token")
        return user

    async def _body(self, request: Request, receive: Receive) -> dict[str, Any]:
        """The request's JSON object, read up to `max_body` bytes (413 past that)."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await _drain(receive)
            raise HttpError(413, f"the body is over {self.max_body} bytes")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HttpError(400, "the client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                if message.get("more_body", False):
                    await _drain(receive)
                raise HttpError(413, f"the body is over {self.max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        try:
            body = json.loads(b"".join(chunks) or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise HttpError(400, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise HttpError(400, "the body must be a JSON object")
        return body

    async def _session(self, request: Request, session_id: str) -> Session:
        """The API session `session_id` if the requester may see it; 404 otherwise."""
        session = await self.platform.store.get_session(session_id)
        assert request.user is not None
        if (
            session is None
            or session.platform != PLATFORM
            or not self.platform.access.may_steer(request.user, session.user)
        ):
            raise HttpError(404, f"no session {session_id}")
        return session

    def _admit(self, request: Request) -> None:
        assert request.user is not None
        admitted, _ = self.rate.admit(f"{PLATFORM}:{request.user}")
        if not admitted:
            raise HttpError(429, "too many requests: slow down")

    # --- sessions ---------------------------------------------------------------------------------

    async def _start(self, request: Request, body: dict[str, Any], send: Send) -> None:
        prompt = _text_field(body, "prompt", required=True) or ""
        agent = _text_field(body, "agent")
        repo = _text_field(body, "repo")
        unknown = set(body) - {"prompt", "agent", "repo"}
        if unknown:
            raise HttpError(400, f"unknown fields: {', '.join(sorted(unknown))}")
        config = self.platform.config
        known = config.known_agents()
        if agent is not None and agent not in known:
            raise HttpError(400, f"unknown agent {agent!r}; known: {', '.join(known)}")
        args = f"{agent} {prompt}" if agent else prompt
        if repo:
            args = f"{args}\n\nRepository: {repo}"
        try:
            task = parse_task(args, known, config.agents.default_agent)
        except BadTask as bad:
            raise HttpError(400, str(bad)) from None
        if not config.agent(task.agent).supports(config.sandbox.protocol):
            raise HttpError(
                400, f"{task.agent} cannot run with the {config.sandbox.protocol} protocol here"
            )
        self._admit(request)
        assert request.user is not None
        request_id = self.platform.new_request_id()
        chat = ChatRef(PLATFORM, request.user, request_id)
        replies = self.platform.expect(request_id)
        try:
            await self.events.send(
                Command(chat, User(request.user, request.user), "task", args, request_id)
            )
            with trio.move_on_after(ANSWER_WAIT):
                said = await replies.receive()
                found = await self.platform.store.list_sessions(
                    PLATFORM, chat=request.user, thread=request_id, limit=1
                )
                if not found:
                    raise HttpError(429, said)
                await _json(send, 201, await self._describe(found[0], detail=True))
                return
        finally:
            self.platform.forget(request_id)
        raise HttpError(503, "the daemon did not answer in time; try again")

    async def _list(self, request: Request, send: Send) -> None:
        assert request.user is not None
        mine = None if self.platform.access.is_admin(request.user) else request.user
        sessions = await self.platform.store.list_sessions(PLATFORM, chat=mine, limit=MAX_LISTED)
        listed = [await self._describe(session) for session in sessions]
        await _json(send, 200, {"sessions": listed})

    async def _describe(self, session: Session, *, detail: bool = False) -> dict[str, Any]:
        described: dict[str, Any] = {
            "id": session.id,
            "status": str(session.status),
            "owner": session.user,
            "agent": session.agent,
            "prompt": session.prompt,
            "repo": session.repo,
            "reason": session.reason,
            "created_at": session.created_at.isoformat(),
            "updated_at": session.updated_at.isoformat(),
            "ended_at": session.ended_at.isoformat() if session.ended_at else None,
            "last_event_id": session.last_event_seq,
        }
        if detail:
            described["pending"] = await self._pending(session)
            described["files"] = self._files(session)
        return described

    async def _pending(self, session: Session) -> list[dict[str, Any]]:
        interactions = await self.platform.store.unresolved_interactions(session.id)
        if not interactions:
            return []
        titles = await self._permission_titles(session, interactions)
        return [
            {
                "id": interaction.id,
                "title": titles.get(interaction.request_id or "", ("", ""))[0],
                "input": titles.get(interaction.request_id or "", ("", ""))[1],
                "options": [
                    {"index": index, "option_id": o.option_id, "name": o.name, "kind": o.kind}
                    for index, o in enumerate(interaction.options)
                ],
            }
            for interaction in interactions
        ]

    async def _permission_titles(
        self, session: Session, interactions: list[Interaction]
    ) -> dict[str, tuple[str, str]]:
        """Request id → (title, input summary) of the permission requests in the event log."""
        wanted = {i.request_id for i in interactions if i.request_id is not None}
        titles: dict[str, tuple[str, str]] = {}
        for stored in await self.platform.store.events(session.id):
            event = stored.event
            if isinstance(event, PermissionRequested) and str(event.request_id) in wanted:
                titles[str(event.request_id)] = (event.title or "", event.input_summary)
        return titles

    def _files(self, session: Session) -> list[dict[str, Any]]:
        key = _chat_of(session).key
        return [
            {"name": f.name, "size": len(f.data), "caption": f.caption}
            for f in self.platform.files(key)
        ]

    async def _file(self, session: Session, name: str, send: Send) -> None:
        for stored in reversed(self.platform.files(_chat_of(session).key)):
            if stored.name == name:
                await _respond(send, 200, stored.data, "application/octet-stream")
                return
        raise HttpError(404, f"no file {name!r} in session {session.id}")

    async def _follow_up(
        self, request: Request, session: Session, body: dict[str, Any], send: Send
    ) -> None:
        text = _text_field(body, "text", required=True)
        assert request.user is not None and text is not None
        if request.user != session.user:
            raise HttpError(403, "only the person who started the session can send it messages")
        if session.is_terminal:
            raise HttpError(409, f"session {session.id} has ended ({session.status})")
        self._admit(request)
        user = User(request.user, request.user)
        await self.events.send(
            Message(_chat_of(session), user, text, self.platform.new_request_id())
        )
        await _json(send, 202, {"accepted": True})

    async def _answer(
        self,
        request: Request,
        session: Session,
        interaction_id: str,
        body: dict[str, Any],
        send: Send,
    ) -> None:
        interaction = await self.platform.store.get_interaction(interaction_id)
        if interaction is None or interaction.session_id != session.id:
            raise HttpError(404, f"no permission request {interaction_id} in this session")
        if interaction.status != InteractionStatus.PENDING:
            raise HttpError(409, f"permission request {interaction_id} was already answered")
        index = _option_index(body, interaction)
        assert request.user is not None
        press = ButtonPress(
            _chat_of(session),
            User(request.user, request.user),
            interaction.chat_message_id or "",
            permission_button_data(interaction.id, index),
            press_id=self.platform.new_request_id(),
        )
        await self.events.send(press)
        option = interaction.options[index]
        await _json(send, 202, {"accepted": True, "option_id": option.option_id})

    async def _cancel(self, request: Request, session: Session, send: Send) -> None:
        if session.is_terminal:
            raise HttpError(409, f"session {session.id} has already ended ({session.status})")
        self._admit(request)
        assert request.user is not None
        command = Command(
            _chat_of(session),
            User(request.user, request.user),
            "cancel",
            session.id,
            self.platform.new_request_id(),
        )
        await self.events.send(command)
        await _json(send, 202, {"accepted": True})

    # --- events -----------------------------------------------------------------------------------

    async def _stream(
        self, request: Request, session: Session, receive: Receive, send: Send
    ) -> None:
        after = _resume_point(request)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )

        async def write(frame: str) -> None:
            await send({"type": "http.response.body", "body": frame.encode(), "more_body": True})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(_until_disconnected, receive, nursery.cancel_scope)
            await write("retry: 1000\n\n")
            await self._follow(session, after, write)
            nursery.cancel_scope.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _follow(
        self, session: Session, after: int, write: Callable[[str], Awaitable[None]]
    ) -> None:
        store, key = self.platform.store, _chat_of(session).key
        last_state: dict[str, Any] | None = None
        last_beat = trio.current_time()
        while True:
            changed = self.platform.changed(key)
            current = await store.get_session(session.id)
            assert current is not None
            while True:
                page = await store.events(session.id, after, limit=PAGE)
                for stored in page:
                    await write(_event_frame(stored.seq, stored.event, stored.created_at))
                    after = stored.seq
                if len(page) < PAGE:
                    break
            state = {
                "status": str(current.status),
                "reason": current.reason,
                "pending": await self._pending(current),
                "files": self._files(current),
                "last_event_id": after,
            }
            if state != last_state:
                await write(_frame("state", state))
                last_state = state
            if current.is_terminal:
                await write(_frame("end", state))
                return
            if trio.current_time() - last_beat >= HEARTBEAT:
                await write(": keep-alive\n\n")
                last_beat = trio.current_time()
            with trio.move_on_after(POLL):
                await changed.wait()


def _chat_of(session: Session) -> ChatRef:
    return ChatRef(session.platform, session.chat, session.thread)


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise HttpError(405, f"{method} is not allowed here; use {' or '.join(allowed)}")


def _text_field(body: Mapping[str, Any], name: str, *, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise HttpError(400, f"{name!r} is required")
        return None
    if not isinstance(value, str):
        raise HttpError(400, f"{name!r} must be a string")
    if required and not value.strip():
        raise HttpError(400, f"{name!r} must not be empty")
    return value.strip() or None


def _option_index(body: Mapping[str, Any], interaction: Interaction) -> int:
    option = body.get("option")
    option_id = body.get("option_id")
    if isinstance(option, int) and not isinstance(option, bool):
        if 0 <= option < len(interaction.options):
            return option
        raise HttpError(400, f"option must be 0 to {len(interaction.options) - 1}")
    if isinstance(option_id, str):
        for index, candidate in enumerate(interaction.options):
            if candidate.option_id == option_id:
                return index
        raise HttpError(400, f"no option {option_id!r}")
    raise HttpError(400, "give 'option' (the option's index) or 'option_id'")


def _resume_point(request: Request) -> int:
    given = request.headers.get("last-event-id") or (request.query.get("after") or [""])[0]
    if not given:
        return 0
    if not given.isdigit():
        raise HttpError(400, "Last-Event-ID must be an event id (a number)")
    return int(given)


def _event_frame(seq: int, event: Any, created_at: Any) -> str:
    if isinstance(event, UnknownEvent):
        tag, payload = event.tag, {"unreadable": event.reason}
    else:
        tag, payload = to_record(event)
    kind = tag.partition("/")[0]
    data = {"seq": seq, "type": tag, "data": payload, "at": created_at.isoformat()}
    return f"id: {seq}\n" + _frame(kind, data)


def _frame(event: str, data: Any) -> str:
    # JSON never holds a raw line break, so the data is one `data:` line.
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _until_disconnected(receive: Receive, scope: trio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _json(send: Send, status: int, data: Any) -> None:
    body = json.dumps(data, ensure_ascii=False, allow_nan=False).encode()
    await _respond(send, status, body, "application/json")


async def _respond(send: Send, status: int, body: bytes, content_type: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                (b"x-content-type-options", b"nosniff"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
