"""ACP through sandbox-agent 0.4.x: JSON-RPC POSTed to `/v1/acp/{server_id}`, everything the agent
sends read from the SSE stream on the same path.

How sandbox-agent behaves (observed with 0.4.2, and in its source) and what this does about it:

- The first POST, with `?agent=<id>`, spawns the agent's ACP adapter; the SSE stream exists only
  from then on (404 before). So the stream is opened once that POST is on its way, again after a
  short wait while it answers 404, and not only once the POST is answered: an adapter that dies
  before it answers `initialize` (claude-agent-acp 0.101.0 under a 64 MiB memory limit) leaves
  that POST unanswered, and only the stream says so (`_adapter/agent_exited`).
- Every line the adapter prints goes into a ring buffer (1024 entries) and out on the stream with
  an increasing integer id, answers to our requests included, in the order the adapter printed
  them. This transport therefore takes *everything* from the stream, answers too, and ignores the
  POST bodies: the answer to session/prompt then never overtakes the turn's last text deltas.
- A stream that breaks is resumed with `Last-Event-ID`: the server replays what followed. Ids at or
  below the last one seen are dropped (never delivered twice); an id that skips ahead means a gap
  (a lagging broadcast drops messages), so the stream is resumed once more at once to fetch them
  from the ring, and only if they are gone for good is the loss reported (an ErrorEvent).
- Reconnects back off exponentially (1 s doubling to 30 s by default) and give up after a
  configurable number of consecutive failed attempts; a connection that opened resets the count.
- POST of a request blocks until the agent answers (a whole turn for session/prompt; the server
  gives up with 504 after its own timeout, 120 s by default, and still broadcasts the late
  answer). So requests are POSTed from background tasks; an HTTP error comes back to the client
  core as a JSON-RPC error answer for that request.
- `DELETE /v1/acp/{id}` removes the server but never answers: it is sent with a short bound, and
  closing moves on.
- Secrets: the token lives only in the HTTP client's headers; no repr, log line or error shows it.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

import httpx
import trio

from anycode_actors._tls import shared_ssl_context
from anycode_actors.agents._nursery import open_nursery_bare
from anycode_actors.agents.acp import AcpClient, open_acp_client
from anycode_actors.agents.jsonrpc import (
    TRANSPORT_ERROR,
    ErrorResponse,
    Notification,
    RpcError,
    decode_line,
)
from anycode_actors.agents.sse import SseEvent, SseParser
from anycode_actors.agents.transport import INCOMING_BUFFER, Received
from anycode_actors.errors import AgentAuthError, AgentClosedError, AgentError, AgentNotReadyError
from anycode_actors.steps import step
from supervisors import Backoff

__all__ = [
    "DELETE_TIMEOUT",
    "HEALTH_TIMEOUT",
    "ReconnectPolicy",
    "SandboxAgentTransport",
    "StreamStats",
    "open_sandbox_agent_client",
    "open_sandbox_agent_transport",
    "wait_until_healthy",
]

logger = logging.getLogger(__name__)

#: Seconds `wait_until_healthy` waits by default before giving up on a server.
HEALTH_TIMEOUT: Final = 60.0
#: The first health poll goes out at once; then these waits, doubling up to the maximum.
HEALTH_FIRST_RETRY: Final = 0.05
HEALTH_MAX_RETRY: Final = 1.0
#: Seconds one health poll may take.
HEALTH_POLL_TIMEOUT: Final = 2.0
CONNECT_TIMEOUT: Final = 10.0
#: sandbox-agent sends a heartbeat comment every 15 s; a stream silent for this long is dead.
SSE_READ_TIMEOUT: Final = 60.0
#: Seconds for a POST that sandbox-agent answers at once (202 for notifications and replies).
POST_TIMEOUT: Final = 30.0
#: Bound on a request POST; the server answers (or gives up with 504) within its own 120 s.
#: Seconds between attempts to open the stream of a server that the first POST is creating.
STREAM_CREATE_RETRY: Final = 0.1
REQUEST_POST_TIMEOUT: Final = 300.0
#: Attempts for a POST whose connection could not be made (it never reached the server).
POST_ATTEMPTS: Final = 4
POST_RETRY_DELAY: Final = 0.25
#: DELETE /v1/acp/{id} never answers in 0.4.2 (it removes the server at once, then hangs): it
#: is sent, given this long, and left.
DELETE_TIMEOUT: Final = 1.0

_EVENTS_LOST_METHOD: Final = "_anycode/events_lost"


@dataclass(frozen=True)
class ReconnectPolicy:
    """How the SSE stream is reconnected: waits of `initial_delay` doubling (times `multiplier`)
    up to `max_delay`; after `max_retries` consecutive attempts that could not connect, the
    stream counts as lost."""

    initial_delay: float = 1.0
    max_delay: float = 30.0
    multiplier: float = 2.0
    max_retries: int = 10
    _backoff: Backoff = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The waits are a jitter-free `Backoff`, which also rejects impossible ones.
        backoff = Backoff(
            initial=self.initial_delay, factor=self.multiplier, cap=self.max_delay, jitter=0
        )
        object.__setattr__(self, "_backoff", backoff)

    def delay(self, attempt: int) -> float:
        """The wait before reconnect attempt `attempt` (1, 2, ...)."""
        return self._backoff.delay(attempt - 1)


@dataclass
class StreamStats:
    """What happened to the event stream; for tests, logs and the console."""

    connects: int = 0
    reconnects: int = 0
    duplicates_dropped: int = 0
    gaps_refetched: int = 0
    events_lost: int = 0
    last_error: str = ""
    delays: list[float] = field(default_factory=list)


class _Resume(Exception):
    """Resume the stream at once (a gap to refetch)."""


class _NotAnEventStream(Exception):
    """The stream answered 200 with another content type than text/event-stream."""


class _NotCreatedYet(Exception):
    """The stream answered 404 while the first POST is still creating the server."""


class _StreamFailed(Exception):
    def __init__(self, error: AgentError) -> None:
        self.error = error


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text


def _problem(response: httpx.Response) -> str:
    """title: detail of a problem+json body, or the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        parts = [str(body[key]) for key in ("title", "detail") if body.get(key)]
        return ": ".join(parts)[:500]
    return str(body)[:300]


def _status_error(response: httpx.Response, server_id: str, what: str) -> AgentError:
    status = response.status_code
    if status in (401, 403):
        return AgentAuthError(
            f"sandbox-agent refused the token while {what} (HTTP {status}); "
            "the sandbox's token and the daemon's differ"
        )
    if status == 404:
        return AgentClosedError(
            f"sandbox-agent has no ACP server {server_id!r} (HTTP 404 while {what}); "
            "it was deleted or the server restarted",
            _problem(response),
        )
    return AgentError(f"sandbox-agent answered HTTP {status} while {what}: {_problem(response)}")


async def wait_until_healthy(http: httpx.AsyncClient, *, within: float = HEALTH_TIMEOUT) -> None:
    """Poll `GET /v1/health` until it says ok: first poll at once, then 50 ms doubling to 1 s.

    Raises AgentNotReadyError after `within` seconds (saying what the last poll saw) and
    AgentAuthError at once when the token is refused.
    """
    deadline = trio.current_time() + within
    wait = HEALTH_FIRST_RETRY
    last = "no answer yet"
    while True:
        budget = deadline - trio.current_time()
        if budget <= 0:
            raise AgentNotReadyError(
                f"sandbox-agent at {http.base_url} was not healthy within {within:g} s "
                f"(last poll: {last})"
            )
        try:
            with trio.fail_after(min(HEALTH_POLL_TIMEOUT, budget)):
                response = await http.get("/v1/health", timeout=HEALTH_POLL_TIMEOUT)
            if response.status_code in (401, 403):
                raise _status_error(response, "", "checking health")
            if response.status_code == 200 and _is_ok(response):
                return
            last = f"HTTP {response.status_code}: {_problem(response)}"
        except httpx.HTTPError as exc:
            last = _describe(exc)
        except trio.TooSlowError:
            last = "the poll timed out"
        await trio.sleep(max(0.0, min(wait, deadline - trio.current_time())))
        wait = min(wait * 2, HEALTH_MAX_RETRY)


def _is_ok(response: httpx.Response) -> bool:
    try:
        return bool(response.json().get("status") == "ok")
    except (ValueError, AttributeError):
        return False


class SandboxAgentTransport:
    """One ACP server on a sandbox-agent. Create it with `open_sandbox_agent_transport`."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        server_id: str,
        nursery: trio.Nursery,
        *,
        agent: str | None,
        attach: bool,
        last_event_id: int | None,
        reconnect: ReconnectPolicy,
    ) -> None:
        self._http = http
        self.server_id = server_id
        self._path = f"/v1/acp/{quote(server_id, safe='')}"
        self._nursery = nursery
        # Only a fresh server is created with ?agent=: on a reattach the server must exist, and
        # must not be silently recreated (its event ids would start again at 1).
        self._bootstrap_agent = None if attach else agent
        self._instance_ready = trio.Event()
        # Set when the first POST (which creates the server) goes out: the stream may open.
        self._first_sent = trio.Event()
        if attach:
            self._instance_ready.set()
            self._first_sent.set()
        self._last_id = last_event_id
        self._parsed_id = last_event_id  # the id of the last event parsed on this connection
        self._reconnect = reconnect
        self._send_incoming, self._incoming = trio.open_memory_channel[Received](INCOMING_BUFFER)
        self._end: AgentClosedError | None = None
        self._gap_retried = False
        self._opened = False
        self.stats = StreamStats()

    def __repr__(self) -> str:
        return f"SandboxAgentTransport({str(self._http.base_url)!r}, server_id={self.server_id!r})"

    @property
    def incoming(self) -> trio.MemoryReceiveChannel[Received]:
        return self._incoming

    @property
    def last_event_id(self) -> int | None:
        """The id of the last stream event delivered; resume (attach) from it."""
        return self._last_id

    def end_reason(self) -> AgentClosedError | None:
        return self._end

    # --- sending --------------------------------------------------------------------------------

    async def send(self, message: Mapping[str, Any]) -> None:
        if self._end is not None:
            raise self._end.copy()
        if "method" in message and "id" in message:
            self._nursery.start_soon(self._post_request, dict(message), name="sandbox-agent-post")
            return
        response = await self._post(message, read_bound=POST_TIMEOUT, delivered_on_read_error=False)
        if response.status_code not in (200, 202):
            raise _status_error(response, self.server_id, f"sending {_what(message)}")
        self._instance_ready.set()

    async def _post_request(self, message: dict[str, Any]) -> None:
        method = message.get("method")
        try:
            response = await self._post(
                message, read_bound=REQUEST_POST_TIMEOUT, delivered_on_read_error=True
            )
        except _Delivered as exc:
            logger.debug("POST %s lost its answer (%s); it arrives on the stream", method, exc)
            self._instance_ready.set()  # the server has it, so the ACP server exists
            return
        except AgentError as exc:
            await self._inject_error(message["id"], exc, None)
            return
        status = response.status_code
        if status == 200:
            self._instance_ready.set()
        elif status == 504:
            # The agent is slow, not gone: the server broadcasts the late answer on the stream.
            logger.info("sandbox-agent timed out on %s; its answer will come on the stream", method)
            self._instance_ready.set()
        else:
            error = _status_error(response, self.server_id, f"sending {method}")
            await self._inject_error(message["id"], error, status)

    async def _inject_error(self, request_id: Any, error: AgentError, status: int | None) -> None:
        data = {"httpStatus": status} if status is not None else None
        answer = ErrorResponse(request_id, RpcError(TRANSPORT_ERROR, str(error), data))
        with suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            await self._send_incoming.send(Received(answer))

    async def _post(
        self, message: Mapping[str, Any], *, read_bound: float, delivered_on_read_error: bool
    ) -> httpx.Response:
        url = self._path
        if self._bootstrap_agent is not None and not self._instance_ready.is_set():
            url = f"{url}?agent={quote(self._bootstrap_agent, safe='')}"
        self._first_sent.set()
        last: BaseException | None = None
        for attempt in range(POST_ATTEMPTS):
            if attempt:
                await trio.sleep(POST_RETRY_DELAY * 2 ** (attempt - 1))
            if message.get("method") == "session/prompt":
                step("posted", self.server_id)
            try:
                return await self._http.post(
                    url,
                    json=dict(message),
                    timeout=httpx.Timeout(CONNECT_TIMEOUT, read=read_bound),
                )
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                last = exc  # never reached the server: safe to send again
            except (httpx.WriteError, httpx.WriteTimeout) as exc:
                last = exc  # the body did not get through whole: the server dropped it
            except (httpx.ReadError, httpx.ReadTimeout, httpx.RemoteProtocolError) as exc:
                # Sent (on a fresh connection: keep-alive is off), the answer lost on the way.
                if delivered_on_read_error:
                    raise _Delivered(_describe(exc)) from exc
                last = exc  # a notification or a reply: sending it twice does no harm
        assert last is not None
        raise AgentClosedError(
            f"cannot reach sandbox-agent at {self._http.base_url}",
            _describe(last),
            connection_lost=True,
        )

    # --- the event stream -----------------------------------------------------------------------

    async def _run_stream(self) -> None:
        with self._send_incoming:
            await self._first_sent.wait()
            failures = 0
            while True:
                self._opened = False
                try:
                    await self._stream_once()
                    reason = "the server ended the stream"
                except _Resume:
                    continue
                except _NotCreatedYet:
                    await trio.sleep(STREAM_CREATE_RETRY)
                    continue
                except _StreamFailed as exc:
                    self._end = (
                        exc.error
                        if isinstance(exc.error, AgentClosedError)
                        else AgentClosedError("the event stream failed", str(exc.error))
                    )
                    return
                except (httpx.HTTPError, _NotAnEventStream) as exc:
                    reason = _describe(exc)
                # Count attempts that could not connect; one that opened starts the count anew.
                failures = 1 if self._opened else failures + 1
                self.stats.last_error = reason
                if failures > self._reconnect.max_retries:
                    self._end = AgentClosedError(
                        "lost the event stream of sandbox-agent",
                        f"{self._reconnect.max_retries} reconnects failed; last: {reason}",
                        connection_lost=True,
                    )
                    return
                delay = self._reconnect.delay(failures)
                self.stats.reconnects += 1
                self.stats.delays.append(delay)
                logger.info(
                    "sandbox-agent event stream interrupted (%s); reconnecting in %.1f s",
                    reason,
                    delay,
                )
                await trio.sleep(delay)

    async def _stream_once(self) -> None:
        """Read the stream until it ends; raises when it fails."""
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        if self._last_id is not None:
            headers["Last-Event-ID"] = str(self._last_id)
        timeout = httpx.Timeout(CONNECT_TIMEOUT, read=SSE_READ_TIMEOUT)
        async with self._http.stream(
            "GET", self._path, headers=headers, timeout=timeout
        ) as response:
            if response.status_code == 404 and not self._instance_ready.is_set():
                await response.aread()
                raise _NotCreatedYet
            if response.status_code != 200:
                await response.aread()
                error = _status_error(response, self.server_id, "opening the event stream")
                if response.status_code in (401, 403, 404):
                    raise _StreamFailed(error)
                raise httpx.HTTPStatusError(str(error), request=response.request, response=response)
            self._opened = True
            self._instance_ready.set()
            self.stats.connects += 1
            content_type = response.headers.get("content-type", "").partition(";")[0]
            if "text/event-stream" not in content_type:
                raise _NotAnEventStream(f"the event stream came as {content_type!r}")
            # Each chunk's events are taken together: parsed, checked and numbered first, then
            # handed on without a trip through the scheduler per event (see `_deliver`).
            parser = SseParser()
            self._parsed_id = self._last_id
            async for chunk in response.aiter_bytes():
                out: list[tuple[Received | None, int | None]] = []
                gap = False
                for sse in parser.feed(chunk):
                    if not self._accept(sse, out):
                        gap = True
                        break
                await self._deliver(out)
                if gap:
                    raise _Resume

    def _accept(self, sse: SseEvent, out: list[tuple[Received | None, int | None]]) -> bool:
        """Add what `sse` delivers to `out`, with the event id it moves the stream to; False,
        adding nothing, when its id skips ahead and the stream should be resumed to fetch what
        it skipped."""
        event_id = _parse_id(sse.id)
        last = self._parsed_id
        if event_id is not None and last is not None and event_id <= last:
            self.stats.duplicates_dropped += 1
            return True
        if event_id is not None:
            expected = (last or 0) + 1
            if event_id > expected:
                if not self._gap_retried:
                    self._gap_retried = True
                    self.stats.gaps_refetched += 1
                    return False
                lost = event_id - expected
                self.stats.events_lost += lost
                logger.error("sandbox-agent lost %d stream events before %d", lost, event_id)
                out.append((Received(Notification(_EVENTS_LOST_METHOD, {"count": lost})), None))
        self._gap_retried = False
        received = None
        if sse.data:
            cursor = str(event_id) if event_id is not None else None
            received = Received(decode_line(sse.data), cursor)
        out.append((received, event_id))
        if event_id is not None:
            self._parsed_id = event_id
        return True

    async def _deliver(self, out: list[tuple[Received | None, int | None]]) -> None:
        """Hand each message on in order; `last_event_id` follows what was handed on. A message
        goes without waiting while the channel has room, and waits for room otherwise
        (backpressure reaches the socket)."""
        send = self._send_incoming
        for received, event_id in out:
            if received is not None:
                try:
                    send.send_nowait(received)
                except trio.WouldBlock:
                    await send.send(received)
            if event_id is not None:
                self._last_id = event_id

    async def _delete(self) -> None:
        with trio.move_on_after(DELETE_TIMEOUT, shield=True):
            try:
                await self._http.delete(self._path, timeout=DELETE_TIMEOUT)
            except httpx.HTTPError as exc:
                logger.debug("DELETE %s: %s", self._path, _describe(exc))


class _Delivered(Exception):
    pass


def _parse_id(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def _what(message: Mapping[str, Any]) -> str:
    method = message.get("method")
    return str(method) if method else f"the answer to request {message.get('id')!r}"


@asynccontextmanager
async def open_sandbox_agent_transport(
    base_url: str,
    *,
    token: str | None,
    agent: str,
    server_id: str | None = None,
    attach: bool = False,
    last_event_id: int | str | None = None,
    reconnect: ReconnectPolicy | None = None,
    health_timeout: float = HEALTH_TIMEOUT,
    delete_on_close: bool = True,
    http_transport: httpx.AsyncBaseTransport | None = None,
    check_health: bool = True,
) -> AsyncIterator[SandboxAgentTransport]:
    """A transport to one ACP server of the sandbox-agent at `base_url`.

    Waits for `/v1/health` first (bounded by `health_timeout`; not with `check_health=False`,
    for a server known to answer). A fresh server gets a random id
    and is created for `agent` (a sandbox-agent agent id such as "claude") by the first message.
    With `attach=True`, `server_id` names a server that already runs (a restarted daemon), and
    the stream resumes after `last_event_id` (the `cursor` of the last event stored).

    On exit the server is deleted (bounded; `delete_on_close=False` leaves it running for a
    later reattach), even when the block was cancelled. `http_transport` is for tests.
    """
    if attach and not server_id:
        raise ValueError("attach=True needs the server_id of the running ACP server")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(
        base_url=base_url,
        headers=headers,
        transport=http_transport,
        verify=shared_ssl_context(),
        # One connection per POST: a pooled connection that a network blip killed would make a
        # lost request look like a delivered one.
        limits=httpx.Limits(max_keepalive_connections=0),
        timeout=httpx.Timeout(POST_TIMEOUT, connect=CONNECT_TIMEOUT),
    ) as http:
        if check_health:
            await wait_until_healthy(http, within=health_timeout)
        last = int(last_event_id) if last_event_id is not None else None
        transport: SandboxAgentTransport | None = None
        try:
            async with open_nursery_bare() as nursery:
                transport = SandboxAgentTransport(
                    http,
                    server_id or f"anycode-{secrets.token_hex(6)}",
                    nursery,
                    agent=agent,
                    attach=attach,
                    last_event_id=last,
                    reconnect=reconnect or ReconnectPolicy(),
                )
                nursery.start_soon(transport._run_stream, name="sandbox-agent-sse")
                try:
                    yield transport
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            if transport is not None and delete_on_close:
                await transport._delete()


@asynccontextmanager
async def open_sandbox_agent_client(
    base_url: str,
    *,
    token: str | None,
    agent: str,
    server_id: str | None = None,
    attach: bool = False,
    last_event_id: int | str | None = None,
    reconnect: ReconnectPolicy | None = None,
    health_timeout: float = HEALTH_TIMEOUT,
    delete_on_close: bool = True,
    check_health: bool = True,
) -> AsyncIterator[AcpClient]:
    """An ACP client through sandbox-agent (see `open_sandbox_agent_transport`)."""
    async with (
        open_sandbox_agent_transport(
            base_url,
            token=token,
            agent=agent,
            server_id=server_id,
            attach=attach,
            last_event_id=last_event_id,
            reconnect=reconnect,
            health_timeout=health_timeout,
            delete_on_close=delete_on_close,
            check_health=check_health,
        ) as transport,
        open_acp_client(transport) as client,
    ):
        yield client
