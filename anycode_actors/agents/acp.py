"""The ACP client core: one connection to an agent, its sessions, their turns and events.

Transport-agnostic: the same code drives an agent behind sandbox-agent (HTTP+SSE), an adapter on
stdio, or one reached through `docker exec -i`. Usage::

    async with open_acp_client(transport) as client:
        await client.initialize()
        session = await client.new_session(cwd="/workspace")
        turn = await session.prompt("fix the login bug")
        async for event in session.events:
            if isinstance(event, PermissionRequested):
                await session.respond_permission(event.key, event.option("allow_once").option_id)
            elif isinstance(event, TurnEnded):
                break

Design decisions, each for a reason:

- `prompt()` returns once the request is sent; the turn's end arrives as a `TurnEnded` event (and
  `Turn.wait()`), so reading events never waits on a prompt.
- One turn at a time per session: `prompt()` during a running turn raises `TurnInProgressError`.
  Queueing is the session actor's decision (it can tell the user, or cancel first); ACP adapters
  that queue prompts themselves would hide that from the user.
- `cancel()` sends session/cancel and then answers every pending permission request "cancelled",
  as the ACP spec requires; otherwise the agent waits forever for an answer nobody will give.
- The client advertises no fs and no terminal capability, so any fs/* or terminal/* request (or
  any other unknown request) is answered "method not found" instead of being left hanging.
- Events are numbered per session in delivery order by the session's `EventPump`. Events caused
  by the agent wait for room in a bounded queue (backpressure reaches the wire); events caused by
  the caller (an answered permission) are queued without waiting, so the task that reads events
  can answer a permission without ever deadlocking on its own full queue. The reader takes one
  event at a time or, without waiting, all that are queued (`EventChannel.receive_nowait`).
- Answers that create state (session/new, session/prompt) are handled inside the read loop, so
  an update that follows an answer on the wire can never overtake it.
- Files sent with a prompt (`PromptFile`s, already in the sandbox) go as content blocks after
  its text: an image block when the agent declared `promptCapabilities.image` in its initialize
  answer, else a resource link, which every agent must accept
  (https://agentclientprotocol.com/protocol/prompt-turn#1-user-message,
  https://agentclientprotocol.com/protocol/initialization#prompt-capabilities).
"""

from __future__ import annotations

import base64
import logging
import math
import secrets
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, Final

import trio

from anycode_actors.agents._nursery import open_nursery_bare
from anycode_actors.agents.events import (
    ERROR_STOP_REASON,
    PERMISSION_METHOD,
    AgentEvent,
    EndReason,
    ErrorEvent,
    PermissionRequested,
    PermissionResolved,
    PromptFile,
    Raw,
    ResolvedBy,
    SessionEnded,
    ToolCall,
    ToolCallMemory,
    TurnEnded,
    normalize,
    permission_requested,
    turn_ended,
)
from anycode_actors.agents.jsonrpc import (
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    ErrorResponse,
    Malformed,
    Notification,
    PendingRequests,
    Request,
    RequestId,
    Response,
    error_message,
    notification_message,
    request_message,
    result_message,
)
from anycode_actors.agents.transport import Received, Transport
from anycode_actors.errors import (
    AgentClosedError,
    AgentError,
    AgentRequestError,
    PermissionAnswerError,
    TurnInProgressError,
)

__all__ = [
    "ACP_PROTOCOL_VERSION",
    "EVENTS_QUEUE_LIMIT",
    "INITIALIZE_TIMEOUT",
    "NEW_SESSION_TIMEOUT",
    "AcpClient",
    "AcpSession",
    "EventChannel",
    "InitializeResult",
    "Turn",
    "open_acp_client",
]

logger = logging.getLogger(__name__)

ACP_PROTOCOL_VERSION: Final = 1
#: Seconds for `initialize`: the adapter starts Claude Code's SDK first (about 0.5 s warm).
INITIALIZE_TIMEOUT: Final = 60.0
#: Seconds for `session/new` (about 0.6 s measured; a cold container is slower).
NEW_SESSION_TIMEOUT: Final = 60.0
#: Agent events a session holds for a slow reader before it stops reading the wire.
EVENTS_QUEUE_LIMIT: Final = 128
#: Seconds a reply to an agent request (method not found, ...) may take to send.
REPLY_TIMEOUT: Final = 15.0

_EXITED_METHOD: Final = "_adapter/agent_exited"
_EVENTS_LOST_METHOD: Final = "_anycode/events_lost"


_AnswerHook = Callable[["Response | ErrorResponse", "str | None"], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class InitializeResult:
    protocol_version: int
    agent_name: str
    agent_version: str
    capabilities: Mapping[str, Any]
    auth_methods: tuple[Any, ...]


class _Keep:
    """The event's cursor as it is (`EventPump.put`)."""


_KEEP: Final = _Keep()


class EventPump:
    """Numbers one session's events and hands them to the reader, in order (shared by the
    ACP and acpx sessions of this package; not part of its public API).

    Agent-caused events `put` (waiting while `limit` are queued); caller-caused ones `put_now`.
    The reader takes them from `receive`, an `EventChannel` over the same queue: one event at a
    time (`receive`, a checkpoint) or, without waiting, every event queued behind it
    (`receive_nowait`), so a reader that keeps up pays one trip through the scheduler per burst
    of events rather than one per event.
    """

    def __init__(self, limit: int, first_seq: int) -> None:
        self._queue: deque[AgentEvent] = deque()
        self._limit = limit
        self._items = trio.lowlevel.ParkingLot()
        self._room = trio.lowlevel.ParkingLot()
        self._next_seq = first_seq
        self._finished = False
        self.last_seq = first_seq - 1
        self.receive = EventChannel(self)

    async def put(self, event: AgentEvent, *, cursor: str | _Keep | None = _KEEP) -> AgentEvent:
        """Queue `event` (waiting for room); returns it numbered (and given `cursor`)."""
        while len(self._queue) >= self._limit and not self._finished:
            await self._room.park()
        return self.put_now(event, cursor=cursor)

    def put_now(self, event: AgentEvent, *, cursor: str | _Keep | None = _KEEP) -> AgentEvent:
        """Queue `event` without waiting; returns it numbered (and given `cursor`). The number
        is given here, in queue order, which is delivery order."""
        if isinstance(cursor, _Keep):
            event = replace(event, seq=self._next_seq)
        else:
            event = replace(event, seq=self._next_seq, cursor=cursor)
        if self._finished:
            return event
        self._next_seq += 1
        self._queue.append(event)
        if self._items:
            self._items.unpark_all()
        return event

    def finish(self, final: AgentEvent | None = None) -> None:
        """No events after `final`; the channel ends once it is delivered."""
        if final is not None:
            self.put_now(final)
        self._finished = True
        self._items.unpark_all()
        self._room.unpark_all()

    async def run(self) -> None:
        """Ends the stream when cancelled (its nursery closing): the reader gets what was
        queued, then the end."""
        try:
            await trio.sleep_forever()
        finally:
            self.finish()

    def _take(self) -> AgentEvent:
        if self._queue:
            event = self._queue.popleft()
            self.last_seq = event.seq
            if self._room:
                self._room.unpark_all()
            return event
        if self._finished:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    def _reader_gone(self) -> None:
        # Nobody reads this session any more; drop the rest.
        self._queue.clear()
        self.finish()


class EventChannel(trio.abc.ReceiveChannel[AgentEvent]):
    """The reading end of an `EventPump`: a trio receive channel (ends with EndOfChannel after
    the pump's last event) that also hands over, without waiting, what is queued already."""

    def __init__(self, pump: EventPump) -> None:
        self._pump = pump
        self._closed = False

    def receive_nowait(self) -> AgentEvent:
        """The next event if one is queued; trio.WouldBlock if none is yet, EndOfChannel after
        the last."""
        if self._closed:
            raise trio.ClosedResourceError
        return self._pump._take()

    async def receive(self) -> AgentEvent:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                event = self.receive_nowait()
            except trio.WouldBlock:
                await self._pump._items.park()
                continue
            # A schedule point even when an event was ready, as trio's own channels have.
            await trio.lowlevel.cancel_shielded_checkpoint()
            return event

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pump._reader_gone()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


class Turn:
    """One prompt and its answer. The same facts arrive as the session's `TurnEnded` event."""

    def __init__(self) -> None:
        self._done = trio.Event()
        self.stop_reason: str | None = None
        self.message = ""
        self._failure: AgentClosedError | None = None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def wait(self) -> str:
        """The stop reason (end_turn, cancelled, refusal, max_tokens, ..., or "error").

        Raises AgentClosedError when the connection ended before the turn did.
        """
        await self._done.wait()
        if self._failure is not None:
            raise self._failure.copy()
        assert self.stop_reason is not None
        return self.stop_reason

    def _finish(self, stop_reason: str, message: str = "") -> None:
        if not self.done:
            self.stop_reason = stop_reason
            self.message = message
            self._done.set()

    def _fail(self, failure: AgentClosedError) -> None:
        if not self.done:
            self._failure = failure
            self._done.set()


class AcpSession:
    """One ACP session: prompts, cancel, permission answers, and its numbered events."""

    def __init__(
        self,
        client: AcpClient,
        session_id: str,
        *,
        first_seq: int = 1,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        self._client = client
        self.session_id = session_id
        self.info: Mapping[str, Any] = dict(info or {})
        """The rest of the session/new answer (modes, models, config options)."""
        self._pump = EventPump(EVENTS_QUEUE_LIMIT, first_seq)
        self._tools = ToolCallMemory()
        self._permissions: dict[str, PermissionRequested] = {}
        self._turn: Turn | None = None
        self._orphan_turn = False
        self._ended = False

    def __repr__(self) -> str:
        return f"AcpSession({self.session_id!r}, last_seq={self.last_seq})"

    @property
    def events(self) -> EventChannel:
        """The session's events, numbered from `first_seq`. Ends after `SessionEnded`, or when the
        client closes."""
        return self._pump.receive

    @property
    def last_seq(self) -> int:
        """The seq of the last event handed to the reader (store it to resume later)."""
        return self._pump.last_seq

    @property
    def turn_running(self) -> bool:
        return self._turn is not None and not self._turn.done

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def pending_permissions(self) -> tuple[PermissionRequested, ...]:
        return tuple(self._permissions.values())

    # --- for the caller -------------------------------------------------------------------------

    async def prompt(self, text: str, files: Sequence[PromptFile] = ()) -> Turn:
        """Start a turn; returns once the prompt is sent. Raises TurnInProgressError while the
        previous turn runs, AgentClosedError when the session is over. `files` follow the text
        as image blocks or resource links (see the module docstring)."""
        if self._ended:
            raise AgentClosedError(f"session {self.session_id} has ended")
        if self.turn_running:
            raise TurnInProgressError(
                f"session {self.session_id} is still answering the previous prompt; "
                "wait for its TurnEnded event or cancel it first"
            )
        turn = Turn()
        self._turn = turn
        self._orphan_turn = False

        async def on_answer(answer: Response | ErrorResponse, cursor: str | None) -> None:
            await self._end_turn(turn, answer, cursor)

        content: list[dict[str, Any]] = [{"type": "text", "text": text}]
        agent = self._client.agent
        takes_images = agent is not None and _takes_images(agent.capabilities)
        content += [_content_block(file, images=takes_images) for file in files]
        params = {"sessionId": self.session_id, "prompt": content}
        try:
            await self._client._send_request("session/prompt", params, on_answer)
        except BaseException:
            self._turn = None
            raise
        return turn

    async def cancel(self) -> None:
        """Cancel the running turn (session/cancel), then answer every permission request that
        was pending "cancelled", as the ACP spec requires. The turn ends with stop reason
        "cancelled" shortly after."""
        if self._ended:
            return
        # Taken first: the turn's end may be processed while session/cancel is on its way, and
        # these must be answered all the same.
        pending = list(self._permissions.values())
        cancel = notification_message("session/cancel", {"sessionId": self.session_id})
        await self._client._send(cancel)
        for request in pending:
            await self._answer(request, {"outcome": "cancelled"}, by="cancel")

    async def respond_permission(self, key: str, option_id: str) -> None:
        """Answer a `PermissionRequested` with one of its options (`option.option_id`)."""
        request = self._permissions.get(key)
        if request is None:
            raise PermissionAnswerError(f"no pending permission request {key} in this session")
        if not any(option.option_id == option_id for option in request.options):
            offered = ", ".join(option.option_id for option in request.options)
            raise PermissionAnswerError(
                f"{option_id!r} is not an option of permission request {key} (offered: {offered})"
            )
        await self._answer(request, {"outcome": "selected", "optionId": option_id}, by="user")

    async def cancel_permission(self, key: str) -> None:
        """Answer a `PermissionRequested` with "cancelled" (no decision, e.g. it timed out)."""
        request = self._permissions.get(key)
        if request is None:
            raise PermissionAnswerError(f"no pending permission request {key} in this session")
        await self._answer(request, {"outcome": "cancelled"}, by="cancel")

    # --- for the client core --------------------------------------------------------------------

    async def _answer(
        self, request: PermissionRequested, outcome: dict[str, Any], *, by: ResolvedBy
    ) -> None:
        # Forgotten and reported before the answer goes out: two answers cannot race, and the
        # report comes before anything the agent does after reading the answer (its turn end
        # included). A turn that ended first has reported its leftovers already.
        if self._permissions.pop(request.key, None) is not None:
            option_id = outcome.get("optionId")
            option = next((o for o in request.options if o.option_id == option_id), None)
            self._pump.put_now(
                PermissionResolved(
                    key=request.key,
                    outcome=outcome["outcome"],
                    option_id=option_id,
                    option_kind=option.kind if option else None,
                    by=by,
                )
            )
        await self._client._send(result_message(request.request_id, {"outcome": outcome}))

    async def _end_turn(
        self, turn: Turn, answer: Response | ErrorResponse, cursor: str | None
    ) -> None:
        if isinstance(answer, Response):
            event = turn_ended(answer.result)
        else:
            error = answer.error
            failure = AgentRequestError("session/prompt", error.code, error.message, error.data)
            await self._pump.put(ErrorEvent(message=str(failure), code=error.code))
            event = TurnEnded(stop_reason=ERROR_STOP_REASON, message=str(failure))
        # The agent no longer waits for what it asked during the turn.
        for leftover in list(self._permissions.values()):
            del self._permissions[leftover.key]
            await self._pump.put(
                PermissionResolved(key=leftover.key, outcome="cancelled", by="cancel")
            )
        await self._pump.put(event, cursor=cursor)
        turn._finish(event.stop_reason, event.message)

    async def _put(self, event: AgentEvent, cursor: str | None) -> None:
        if isinstance(event, ToolCall):
            event = self._tools.merge(event)
        elif isinstance(event, PermissionRequested):
            event = self._tools.fill_permission(event)
            if event.key in self._permissions:
                return  # a resumed stream repeated it
        delivered = await self._pump.put(event, cursor=cursor)
        if isinstance(delivered, PermissionRequested):
            self._permissions[delivered.key] = delivered

    def _end(self, reason: EndReason, message: str, failure: AgentClosedError) -> None:
        if self._ended:
            return
        self._ended = True
        self._permissions.clear()
        if self._turn is not None:
            self._turn._fail(failure)
        self._pump.finish(SessionEnded(reason=reason, message=message))

    def _close(self) -> None:
        self._ended = True
        if self._turn is not None:
            self._turn._fail(AgentClosedError("the client was closed"))
        self._pump.finish()


class AcpClient:
    """One connection to an agent (one adapter process, or one sandbox-agent server id)."""

    def __init__(
        self,
        transport: Transport,
        nursery: trio.Nursery,
        *,
        client_name: str = "anycode-actors",
        client_version: str = "0",
    ) -> None:
        self._transport = transport
        self._nursery = nursery
        self._client_info = {"name": client_name, "version": client_version}
        self._pending = PendingRequests(secrets.token_hex(3))
        self._hooks: dict[RequestId, _AnswerHook] = {}
        self._sessions: dict[str, AcpSession] = {}
        self._failure: AgentClosedError | None = None
        self.agent: InitializeResult | None = None

    def __repr__(self) -> str:
        agent = self.agent.agent_name if self.agent else "not initialized"
        return f"AcpClient({agent}, sessions={len(self._sessions)})"

    @property
    def sessions(self) -> Mapping[str, AcpSession]:
        return dict(self._sessions)

    async def initialize(self) -> InitializeResult:
        """Agree on ACP version 1 and learn the agent's name and capabilities (idempotent).

        Bounded by INITIALIZE_TIMEOUT; wrap it in `trio.fail_after` for a shorter bound."""
        if self.agent is not None:
            return self.agent
        params = {
            "protocolVersion": ACP_PROTOCOL_VERSION,
            "clientCapabilities": {
                "fs": {"readTextFile": False, "writeTextFile": False},
                "terminal": False,
            },
            "clientInfo": self._client_info,
        }
        request_id = await self._send_request("initialize", params)
        result = await self._await_answer(request_id, "initialize", INITIALIZE_TIMEOUT)
        result = result if isinstance(result, Mapping) else {}
        version = result.get("protocolVersion")
        if version != ACP_PROTOCOL_VERSION:
            raise AgentError(
                f"the agent speaks ACP protocol version {version!r}; this client speaks "
                f"{ACP_PROTOCOL_VERSION}"
            )
        raw_info = result.get("agentInfo")
        info: Mapping[str, Any] = raw_info if isinstance(raw_info, Mapping) else {}
        capabilities = result.get("agentCapabilities")
        methods = result.get("authMethods")
        self.agent = InitializeResult(
            protocol_version=version,
            agent_name=str(info.get("name") or "unknown agent"),
            agent_version=str(info.get("version") or ""),
            capabilities=dict(capabilities) if isinstance(capabilities, Mapping) else {},
            auth_methods=tuple(methods) if isinstance(methods, list) else (),
        )
        return self.agent

    async def new_session(
        self,
        cwd: str,
        *,
        mcp_servers: Sequence[Mapping[str, Any]] = (),
        first_seq: int = 1,
    ) -> AcpSession:
        """Open a session working in `cwd` (an absolute path where the agent runs); bounded by
        NEW_SESSION_TIMEOUT. Its events are numbered from `first_seq`."""
        created: list[AcpSession] = []

        async def on_answer(answer: Response | ErrorResponse, cursor: str | None) -> None:
            # Registered here, in the read loop, so the updates that follow find the session.
            result = answer.result if isinstance(answer, Response) else None
            if not isinstance(result, Mapping):
                return
            session_id = result.get("sessionId")
            if isinstance(session_id, str) and session_id:
                info = {k: v for k, v in result.items() if k != "sessionId"}
                created.append(self._register(session_id, first_seq, info))

        params = {"cwd": cwd, "mcpServers": [dict(server) for server in mcp_servers]}
        request_id = await self._send_request("session/new", params, on_answer)
        await self._await_answer(request_id, "session/new", NEW_SESSION_TIMEOUT)
        if not created:
            raise AgentError("session/new answered without a sessionId")
        return created[0]

    async def load_session(
        self, session_id: str, cwd: str, *, first_seq: int = 1, bound: float = math.inf
    ) -> AcpSession:
        """Reopen `session_id` with `session/load` (an agent started afresh reads it back). It is
        registered when the answer is read, in the read loop, like a new session: the history
        the agent replays before answering finds no session and is dropped, and nothing it sends
        after the answer is lost. Events are numbered from `first_seq`."""

        async def on_answer(answer: Response | ErrorResponse, cursor: str | None) -> None:
            if isinstance(answer, Response):
                self._register(session_id, first_seq, {})

        params = {"sessionId": session_id, "cwd": cwd, "mcpServers": []}
        request_id = await self._send_request("session/load", params, on_answer)
        await self._await_answer(request_id, "session/load", bound)
        return self._sessions[session_id]

    def attach_session(
        self,
        session_id: str,
        *,
        first_seq: int = 1,
        turn_running: bool = False,
        permissions: Iterable[PermissionRequested] = (),
    ) -> AcpSession:
        """Take over a session another connection opened (a daemon restarted and reattached to
        a live sandbox-agent). `first_seq` continues the numbering; `permissions` are requests
        still waiting for an answer; with `turn_running` the next prompt answer ends the turn."""
        session = self._register(session_id, first_seq, {})
        for request in permissions:
            session._permissions[request.key] = request
        if turn_running:
            session._turn = Turn()
            session._orphan_turn = True
        return session

    async def request(self, method: str, params: Mapping[str, Any]) -> Any:
        """Send any request and return its result; AgentRequestError for an error answer.
        Unbounded: wrap it in `trio.fail_after`."""
        request_id = await self._send_request(method, params)
        return await self._await_answer(request_id, method, math.inf)

    async def notify(self, method: str, params: Mapping[str, Any]) -> None:
        await self._send(notification_message(method, params))

    # --- internals ------------------------------------------------------------------------------

    def _register(self, session_id: str, first_seq: int, info: Mapping[str, Any]) -> AcpSession:
        session = AcpSession(self, session_id, first_seq=first_seq, info=info)
        self._sessions[session_id] = session
        self._nursery.start_soon(session._pump.run, name=f"acp-events:{session_id}")
        return session

    async def _send(self, message: Mapping[str, Any]) -> None:
        if self._failure is not None:
            raise self._failure.copy()
        await self._transport.send(message)

    async def _send_request(
        self,
        method: str,
        params: Mapping[str, Any],
        on_answer: _AnswerHook | None = None,
    ) -> RequestId:
        request_id = self._pending.open(method)
        if on_answer is not None:
            self._hooks[request_id] = on_answer
        try:
            await self._send(request_message(request_id, method, params))
        except BaseException:
            self._pending.discard(request_id)
            self._hooks.pop(request_id, None)
            raise
        return request_id

    async def _await_answer(self, request_id: RequestId, method: str, bound: float) -> Any:
        try:
            with trio.fail_after(bound):
                answer = await self._pending.wait(request_id)
        except trio.TooSlowError:
            self._hooks.pop(request_id, None)
            raise AgentError(f"{method}: the agent did not answer within {bound:.0f} s") from None
        if isinstance(answer, ErrorResponse):
            error = answer.error
            raise AgentRequestError(method, error.code, error.message, error.data)
        return answer.result

    async def _read_loop(self) -> None:
        incoming = self._transport.incoming
        async for received in incoming:
            await self._dispatch(received)
            # What arrived meanwhile is taken without a trip through the scheduler each.
            while True:
                try:
                    received = incoming.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                await self._dispatch(received)
        failure = self._transport.end_reason() or AgentClosedError("the agent connection closed")
        self._lose_connection(failure)

    async def _dispatch(self, received: Received) -> None:
        message, cursor = received.message, received.cursor
        if isinstance(message, Response | ErrorResponse):
            hook = self._hooks.pop(message.id, None) if message.id is not None else None
            if self._pending.resolve(message):
                if hook is not None:
                    await hook(message, cursor)
            else:
                await self._unmatched_answer(message, cursor)
        elif isinstance(message, Request):
            await self._agent_request(message, cursor)
        elif isinstance(message, Notification) and message.method == _EXITED_METHOD:
            code = message.params.get("code")
            # No code means a signal ended it (the OOM killer, a kill by hand).
            how = f"exit code {code}" if code is not None else "killed by a signal"
            self._lose_connection(AgentClosedError("the agent process exited", how))
        elif isinstance(message, Notification) and message.method == _EVENTS_LOST_METHOD:
            for session in self._sessions_for(message.params):
                count = message.params.get("count")
                await session._put(
                    ErrorEvent(message=f"{count} messages from the agent were lost in transit"),
                    cursor,
                )
        else:
            params = message.params if isinstance(message, Notification) else {}
            for session in self._sessions_for(params):
                for event in normalize(message):
                    await session._put(event, cursor)
            if isinstance(message, Malformed):
                logger.warning("agent sent something that is not JSON-RPC: %s", message.reason)

    async def _unmatched_answer(
        self, message: Response | ErrorResponse, cursor: str | None
    ) -> None:
        # A replayed or duplicated answer, or (after a reattach) the answer to a prompt the
        # previous connection sent: that one ends the running turn.
        result = message.result if isinstance(message, Response) else None
        if isinstance(result, Mapping) and "stopReason" in result:
            for session in self._sessions.values():
                if session._orphan_turn and session._turn is not None:
                    session._orphan_turn = False
                    await session._end_turn(session._turn, message, cursor)
                    return
        if isinstance(message, ErrorResponse) and message.id is None:
            logger.warning("the agent could not read a message: %s", message.error.message)
        else:
            logger.debug("answer %r matches no request of this connection (a replay)", message.id)

    async def _agent_request(self, message: Request, cursor: str | None) -> None:
        if message.method == PERMISSION_METHOD:
            session = self._sessions.get(str(message.params.get("sessionId")))
            if session is not None and not session.ended:
                await session._put(permission_requested(message.id, message.params), cursor)
                return
            self._reply_soon(error_message(message.id, INVALID_PARAMS, "unknown session"))
            return
        # No fs or terminal capability was offered: anything else is not ours to do.
        for session in self._sessions_for(message.params):
            await session._put(Raw(kind=message.method, payload=message.params), cursor)
        self._reply_soon(
            error_message(
                message.id,
                METHOD_NOT_FOUND,
                f"{message.method} is not supported: this client offers no fs or terminal "
                "capabilities",
            )
        )

    def _reply_soon(self, message: Mapping[str, Any]) -> None:
        # Not inline: the read loop must keep reading while a reply is on its way.
        async def reply() -> None:
            with trio.move_on_after(REPLY_TIMEOUT):
                try:
                    await self._send(message)
                except AgentError as exc:
                    logger.warning("could not answer the agent: %s", exc)

        self._nursery.start_soon(reply)

    def _sessions_for(self, params: Mapping[str, Any]) -> list[AcpSession]:
        session_id = params.get("sessionId")
        if isinstance(session_id, str):
            found = self._sessions.get(session_id)
            return [found] if found is not None else []
        return [session for session in self._sessions.values() if not session.ended]

    def _lose_connection(self, failure: AgentClosedError) -> None:
        if self._failure is not None:
            return
        self._failure = failure
        self._pending.fail_all(failure)
        self._hooks.clear()
        reason: EndReason = "connection_lost" if failure.connection_lost else "agent_exited"
        for session in self._sessions.values():
            session._end(reason, str(failure), failure)

    def _close(self) -> None:
        failure = AgentClosedError("the client was closed")
        if self._failure is None:
            self._failure = failure
            self._pending.fail_all(failure)
        for session in self._sessions.values():
            session._close()


@asynccontextmanager
async def open_acp_client(
    transport: Transport, *, client_name: str = "anycode-actors", client_version: str = "0"
) -> AsyncIterator[AcpClient]:
    """An ACP client on `transport`, with its read loop and event pumps in a nursery that ends
    with the block. Closing ends every session's event channel; it does not close the transport
    (its own context manager does)."""
    async with open_nursery_bare() as nursery:
        client = AcpClient(
            transport, nursery, client_name=client_name, client_version=client_version
        )
        nursery.start_soon(client._read_loop, name="acp-read")
        try:
            yield client
        finally:
            client._close()
            nursery.cancel_scope.cancel()


def _takes_images(capabilities: Mapping[str, Any]) -> bool:
    """Whether the agent's initialize answer declared `promptCapabilities.image`."""
    prompt = capabilities.get("promptCapabilities")
    return isinstance(prompt, Mapping) and prompt.get("image") is True


def _content_block(file: PromptFile, *, images: bool) -> dict[str, Any]:
    """An ACP content block for a file in the sandbox: an image block (with its path as `uri`)
    when the agent takes images and the bytes are at hand, else a resource link."""
    uri = f"file://{file.path}"
    if images and file.data is not None and file.mime_type.startswith("image/"):
        return {
            "type": "image",
            "mimeType": file.mime_type,
            "data": base64.b64encode(file.data).decode("ascii"),
            "uri": uri,
        }
    return {
        "type": "resource_link",
        "uri": uri,
        "name": file.name,
        "mimeType": file.mime_type,
        "size": file.size,
    }
