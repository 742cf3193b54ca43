"""The sandbox-agent transport's own logic against an in-process stand-in of its HTTP API.

`FakeSandboxAgent` answers like sandbox-agent 0.4.2 (POST /v1/acp/{id}, SSE on GET with event ids
and Last-Event-ID replay from a ring, a DELETE that never answers) and can misbehave on purpose:
cut streams, refuse reconnects, drop live events, time out requests. It runs behind
`httpx.MockTransport`, so nothing touches the network and the autojump clock makes backoff
schedules and bounds exact. The real server is exercised in test_agents_real.py.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from copy import copy
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import trio

from anycode_actors.agents import (
    AcpSession,
    ErrorEvent,
    ReconnectPolicy,
    SessionEnded,
    TextDelta,
    TurnEnded,
    open_acp_client,
    open_sandbox_agent_transport,
)
from anycode_actors.agents.sandbox_agent import DELETE_TIMEOUT, SandboxAgentTransport
from anycode_actors.errors import AgentAuthError, AgentNotReadyError, AgentRequestError

TOKEN = "tok-" + "9f8e7d6c5b4a" * 3
BASE = "http://sandbox.test"
SESSION = "s-1"


@dataclass
class Turn:
    words: list[str]
    gap: float = 0.1
    answer_early: bool = False
    """Answer the POST at once (before the deltas are on the stream) to catch a client that
    trusts the POST body over the stream's order."""
    # gap 0: every word at once, without a checkpoint between them.


@dataclass
class FakeSandboxAgent:
    nursery: trio.Nursery
    token: str = TOKEN
    health_failures: int = 0
    health_never: bool = False
    health_times: list[float] = field(default_factory=list)
    posts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    stream_requests: list[dict[str, str]] = field(default_factory=list)
    stream_times: list[float] = field(default_factory=list)
    cut_after: list[int] = field(default_factory=list)
    """Per stream connection, in order: cut it (ReadError) after this many events."""
    stream_status: list[int] = field(default_factory=list)
    """Per stream connection, in order: answer this status instead (after the list: 200)."""
    replay_inclusive: bool = False
    """Replay from Last-Event-ID itself (one event too many), as a sloppy server might."""
    live_drops: set[int] = field(default_factory=set)
    """Ids the live broadcast skips (a lagging subscriber); a replay still has them."""
    ring_lost: set[int] = field(default_factory=set)
    stream_types: list[str] = field(default_factory=list)
    """Per stream connection, in order: answer 200 with this content type (after: SSE's)."""
    burst: bool = False
    """Send what is ready at once, cut in chunks of 7, 500 and 61 bytes in turn (events span
    chunks, chunks hold several events), instead of one chunk per event."""
    post_status: dict[str, int] = field(default_factory=dict)
    turns: list[Turn] = field(default_factory=list)
    deleted: bool = False
    delete_requests: int = 0
    log: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    _grew: trio.Event = field(default_factory=trio.Event)

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def emit(self, payload: dict[str, Any]) -> int:
        event_id = len(self.log) + 1
        self.log.append((event_id, {"jsonrpc": "2.0", **payload}))
        self._grew.set()
        self._grew = trio.Event()
        return event_id

    def text(self, word: str) -> None:
        self.emit(
            {
                "method": "session/update",
                "params": {
                    "sessionId": SESSION,
                    "update": {
                        "sessionUpdate": "agent_message_chunk",
                        "content": {"type": "text", "text": word},
                    },
                },
            }
        )

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return problem(401, "Token Invalid", "missing or invalid token")
        path = request.url.path
        if path == "/v1/health":
            self.health_times.append(trio.current_time())
            if self.health_never or len(self.health_times) <= self.health_failures:
                raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
            return httpx.Response(200, json={"status": "ok"})
        if not path.startswith("/v1/acp/"):
            return problem(404, "Not Found", path)
        if request.method == "DELETE":
            self.delete_requests += 1
            self.deleted = True
            await trio.sleep_forever()  # sandbox-agent 0.4.2 never answers DELETE
        if request.method == "GET":
            return self.stream(request)
        return await self.post(request)

    def stream(self, request: httpx.Request) -> httpx.Response:
        self.stream_requests.append(dict(request.headers))
        self.stream_times.append(trio.current_time())
        status = self.stream_status.pop(0) if self.stream_status else 200
        if self.deleted:
            status = 404
        if status != 200:
            return problem(status, "Unavailable", "stream refused")
        last = request.headers.get("last-event-id")
        cut = self.cut_after.pop(0) if self.cut_after else None
        content_type = self.stream_types.pop(0) if self.stream_types else "text/event-stream"
        return httpx.Response(
            200,
            headers={"content-type": content_type},
            stream=SseBody(self, int(last) if last else None, cut),
        )

    async def post(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.posts.append((str(request.url), body))
        method = body.get("method")
        status = self.post_status.get(method or "reply")
        if status is not None and status != 504:
            return problem(status, "Internal Server Error", f"cannot handle {method}")
        if method is None or "id" not in body:
            return httpx.Response(202)
        answer = await self.agent(body)
        if status == 504:
            return problem(504, "Timeout", "agent did not answer in time")
        return httpx.Response(200, json=answer)

    async def agent(self, request: dict[str, Any]) -> dict[str, Any]:
        method, request_id = request["method"], request["id"]
        if method == "initialize":
            result: dict[str, Any] = {"protocolVersion": 1, "agentInfo": {"name": "fake"}}
        elif method == "session/new":
            result = {"sessionId": SESSION}
        elif method == "session/prompt":
            turn = self.turns.pop(0)
            done = trio.Event()

            async def run() -> None:
                for word in turn.words:
                    if turn.gap:
                        await trio.sleep(turn.gap)
                    self.text(word)
                self.emit({"id": request_id, "result": {"stopReason": "end_turn"}})
                done.set()

            self.nursery.start_soon(run)
            if turn.answer_early:
                return {"jsonrpc": "2.0", "id": request_id, "result": {"stopReason": "early"}}
            await done.wait()
            return {"jsonrpc": "2.0", "id": request_id, "result": {"stopReason": "end_turn"}}
        else:
            result = {}
        answer = {"id": request_id, "result": result}
        self.emit(answer)
        return {"jsonrpc": "2.0", **answer}


class SseBody(httpx.AsyncByteStream):
    def __init__(self, server: FakeSandboxAgent, last: int | None, cut: int | None) -> None:
        self.server = server
        self.last = last
        self.cut = cut
        self.held = bytearray()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sent = 0
        position = 0
        if self.last is not None:
            start = self.last - 1 if self.server.replay_inclusive else self.last
            position = max(0, start)
        replaying = True
        while True:
            if position >= len(self.server.log):
                for chunk in self._burst():
                    yield chunk
                replaying = False
                await self.server._grew.wait()
                continue
            event_id, payload = self.server.log[position]
            position += 1
            if event_id in self.server.ring_lost and (replaying or self.last is not None):
                continue
            if event_id in self.server.live_drops and not replaying:
                continue
            if self.cut is not None and sent >= self.cut:
                for chunk in self._burst():
                    yield chunk
                raise httpx.ReadError("[Errno 104] Connection reset by peer")
            sent += 1
            data = f"event: message\nid: {event_id}\ndata: {json.dumps(payload)}\n\n".encode()
            if self.server.burst:
                self.held += data  # sent with whatever else is ready
            else:
                yield data

    def _burst(self) -> list[bytes]:
        held, self.held = bytes(self.held), bytearray()
        chunks, start = [], 0
        for size in itertools.cycle((7, 500, 61)):
            if start >= len(held):
                return chunks
            chunks.append(held[start : start + size])
            start += size
        raise AssertionError("unreachable")


def problem(status: int, title: str, detail: str) -> httpx.Response:
    return httpx.Response(
        status,
        json={"type": "urn:x", "title": title, "status": status, "detail": detail},
        headers={"content-type": "application/problem+json"},
    )


@asynccontextmanager
async def session_through(
    server: FakeSandboxAgent, **options: Any
) -> AsyncIterator[tuple[SandboxAgentTransport, AcpSession]]:
    async with (
        open_sandbox_agent_transport(
            BASE,
            token=options.pop("token", TOKEN),
            agent="claude",
            http_transport=server.transport,
            **options,
        ) as transport,
        open_acp_client(transport) as client,
    ):
        await client.initialize()
        session = await client.new_session("/workspace")
        yield transport, session


async def texts_until_turn_end(session: AcpSession) -> tuple[list[str], list[Any]]:
    texts: list[str] = []
    others: list[Any] = []
    async for event in session.events:
        if isinstance(event, TextDelta):
            texts.append(event.text)
        else:
            others.append(event)
        if isinstance(event, TurnEnded | SessionEnded):
            break
    return texts, others


WORDS = [f"w{index} " for index in range(12)]


# --- health ------------------------------------------------------------------------------------


async def test_health_is_polled_at_once_then_with_a_short_backoff(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    server = FakeSandboxAgent(nursery, health_failures=7)
    started = trio.current_time()
    async with session_through(server):
        pass
    offsets = [round(t - started, 3) for t in server.health_times]
    assert offsets == [0.0, 0.05, 0.15, 0.35, 0.75, 1.55, 2.55, 3.55]


async def test_a_server_that_never_gets_ready_fails_within_the_bound(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    server = FakeSandboxAgent(nursery, health_never=True)
    started = trio.current_time()
    with pytest.raises(AgentNotReadyError) as caught:
        async with session_through(server, health_timeout=10):
            pass
    assert trio.current_time() - started == pytest.approx(10)
    assert "was not healthy within 10 s" in str(caught.value)
    assert "Connection refused" in str(caught.value)
    assert len(server.health_times) == 14  # never more often than once a second at the end


async def test_a_refused_token_fails_at_once_without_showing_it(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    server = FakeSandboxAgent(nursery, token="the-right-one")
    with pytest.raises(AgentAuthError) as caught:
        async with session_through(server):
            pass
    assert "refused the token" in str(caught.value)
    assert TOKEN not in str(caught.value)
    assert trio.current_time() == 0


# --- one turn ----------------------------------------------------------------------------------


async def test_a_turn_streams_in_order_and_its_answer_never_overtakes_the_deltas(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    server = FakeSandboxAgent(nursery, turns=[Turn(WORDS, answer_early=True)])
    async with session_through(server) as (transport, session):
        turn = await session.prompt("go")
        texts, others = await texts_until_turn_end(session)
        assert texts == WORDS
        assert others[-1].stop_reason == "end_turn"  # from the stream, not the early POST body
        assert await turn.wait() == "end_turn"
        assert transport.last_event_id == len(server.log)
    urls = [url for url, _ in server.posts]
    assert urls[0].endswith(f"/v1/acp/{transport.server_id}?agent=claude")
    assert all("?" not in url for url in urls[1:])
    assert [body["method"] for _, body in server.posts] == [
        "initialize",
        "session/new",
        "session/prompt",
    ]
    assert server.stream_requests[0]["accept"] == "text/event-stream"
    assert "last-event-id" not in server.stream_requests[0]


async def test_a_request_timeout_504_waits_for_the_answer_on_the_stream(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    server = FakeSandboxAgent(nursery, turns=[Turn(WORDS)], post_status={"session/prompt": 504})
    async with session_through(server) as (_, session):
        await session.prompt("go")
        texts, others = await texts_until_turn_end(session)
    assert texts == WORDS
    assert others[-1].stop_reason == "end_turn"


async def test_an_http_error_on_a_request_becomes_its_error_answer(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    server = FakeSandboxAgent(nursery, post_status={"session/new": 500})
    with pytest.raises(AgentRequestError) as caught:
        async with session_through(server):
            pass
    assert "HTTP 500" in str(caught.value)
    assert "cannot handle session/new" in str(caught.value)


# --- reconnects --------------------------------------------------------------------------------


async def test_cut_streams_resume_after_the_last_event_without_loss_or_repeats(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    server = FakeSandboxAgent(
        nursery, turns=[Turn(WORDS)], cut_after=[3, 4, 2, 5], replay_inclusive=True
    )
    async with session_through(server) as (transport, session):
        await session.prompt("go")
        texts, _ = await texts_until_turn_end(session)
    assert texts == WORDS
    resumed_from = [headers.get("last-event-id") for headers in server.stream_requests]
    assert resumed_from[0] is None
    assert all(resumed_from[1:])
    assert [int(i) for i in resumed_from[1:]] == sorted(int(i) for i in resumed_from[1:])
    assert transport.stats.reconnects == 4
    assert transport.stats.duplicates_dropped == 4  # the sloppy replays, all dropped
    # Each cut follows a connection that worked: the wait starts again at 1 s every time.
    assert transport.stats.delays == [1.0, 1.0, 1.0, 1.0]


async def test_reconnects_back_off_and_give_up_after_the_configured_retries(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    server = FakeSandboxAgent(
        nursery, turns=[Turn(WORDS, gap=1000)], cut_after=[2], stream_status=[200] + [503] * 20
    )
    policy = ReconnectPolicy(max_retries=7)
    async with session_through(server, reconnect=policy) as (transport, session):
        turn = await session.prompt("go")
        _, others = await texts_until_turn_end(session)
        ended = others[-1]
        assert isinstance(ended, SessionEnded)
        assert ended.reason == "connection_lost"
        assert "7 reconnects failed" in ended.message
        assert "HTTP 503" in ended.message
        with pytest.raises(Exception, match="lost the event stream"):
            await turn.wait()
    assert transport.stats.delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    times = server.stream_times[1:]
    gaps = [round(later - earlier, 6) for earlier, later in itertools.pairwise(times)]
    assert gaps == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_a_reconnect_policy_with_impossible_waits_is_refused() -> None:
    with pytest.raises(ValueError, match="initial <= cap"):
        ReconnectPolicy(initial_delay=60, max_delay=30)
    with pytest.raises(ValueError, match="factor"):
        ReconnectPolicy(multiplier=0.5)


async def test_a_gap_in_the_live_stream_is_fetched_again_from_the_ring(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    server = FakeSandboxAgent(nursery, turns=[Turn(WORDS)], live_drops={6, 9})
    async with session_through(server) as (transport, session):
        await session.prompt("go")
        texts, others = await texts_until_turn_end(session)
    assert texts == WORDS
    assert not any(isinstance(event, ErrorEvent) for event in others)
    assert transport.stats.gaps_refetched == 2
    assert transport.stats.delays == []  # resumed at once, not after a backoff


async def test_events_the_ring_no_longer_has_are_reported_as_lost(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    server = FakeSandboxAgent(nursery, turns=[Turn(WORDS)], live_drops={6}, ring_lost={6})
    async with session_through(server) as (transport, session):
        await session.prompt("go")
        texts, others = await texts_until_turn_end(session)
    lost = [event for event in others if isinstance(event, ErrorEvent)]
    assert len(lost) == 1
    assert "1 messages from the agent were lost" in lost[0].message
    assert len(texts) == len(WORDS) - 1
    assert transport.stats.events_lost == 1


async def test_a_deleted_server_ends_the_session(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    server = FakeSandboxAgent(nursery, turns=[Turn(WORDS, gap=1000)], cut_after=[2])
    async with session_through(server) as (_, session):
        await session.prompt("go")
        server.deleted = True
        _, others = await texts_until_turn_end(session)
    ended = others[-1]
    assert isinstance(ended, SessionEnded)
    assert "no ACP server" in ended.message


# --- closing and reattaching -------------------------------------------------------------------


async def test_closing_sends_delete_and_does_not_wait_for_its_answer(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    server = FakeSandboxAgent(nursery)
    async with session_through(server):
        opened = trio.current_time()
    assert server.delete_requests == 1
    assert trio.current_time() - opened == pytest.approx(DELETE_TIMEOUT)


async def test_closing_without_delete_leaves_the_server(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    server = FakeSandboxAgent(nursery)
    async with session_through(server, delete_on_close=False):
        pass
    assert server.delete_requests == 0


async def test_attach_resumes_after_the_stored_cursor_and_never_recreates_the_server(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    server = FakeSandboxAgent(nursery)
    for word in ["old ", "older ", "new ", "newer "]:
        server.text(word)
    async with (
        open_sandbox_agent_transport(
            BASE,
            token=TOKEN,
            agent="claude",
            server_id="kept-1",
            attach=True,
            last_event_id="2",
            http_transport=server.transport,
        ) as transport,
        open_acp_client(transport) as client,
    ):
        session = client.attach_session(SESSION, first_seq=8)
        first = await session.events.receive()
        second = await session.events.receive()
        assert (first.seq, first.text, first.cursor) == (8, "new ", "3")
        assert (second.seq, second.text, second.cursor) == (9, "newer ", "4")
        server.turns.append(Turn(["again "]))
        await session.prompt("more")
        texts, _ = await texts_until_turn_end(session)
        assert texts == ["again "]
    assert server.stream_requests[0]["last-event-id"] == "2"
    assert all("?agent" not in url for url, _ in server.posts)


async def test_the_token_never_shows_in_reprs_errors_or_logs(
    nursery: trio.Nursery, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = FakeSandboxAgent(nursery, turns=[Turn(WORDS)], cut_after=[3], health_failures=2)
    shown: list[str] = []
    async with session_through(server) as (transport, session):
        await session.prompt("go")
        await texts_until_turn_end(session)
        shown += [repr(transport), repr(session), str(transport.stats)]
    wrong = FakeSandboxAgent(nursery, token="other")
    with pytest.raises(AgentAuthError) as caught:
        async with session_through(wrong):
            pass
    shown.append(str(caught.value))
    assert all(TOKEN not in text for text in shown)
    assert TOKEN not in caplog.text
    assert "reconnecting in 1.0 s" in caplog.text


@pytest.mark.parametrize(
    "trouble",
    [
        {},
        {"cut_after": [3, 4, 2, 5], "replay_inclusive": True},
        {"live_drops": {6, 9}},
        {"live_drops": {6}, "ring_lost": {6}},
    ],
)
async def test_events_that_come_in_bursts_split_anywhere_arrive_as_one_by_one(
    nursery: trio.Nursery, autojump_clock: Any, trouble: dict[str, Any]
) -> None:
    # The whole turn is ready at once and comes in chunks of 7 to 500 bytes: a chunk holds
    # several events, or the end of one and the start of the next, an event spans chunks, a gap
    # falls inside what one read returns. Nothing is lost, repeated or reordered but what the
    # server lost.
    cuts, drops = len(trouble.get("cut_after", ())), len(trouble.get("live_drops", ()))
    options = {key: copy(value) for key, value in trouble.items()}  # the server uses them up
    server = FakeSandboxAgent(nursery, turns=[Turn(WORDS, gap=0)], burst=True, **options)
    async with session_through(server) as (transport, session):
        await session.prompt("go")
        texts, others = await texts_until_turn_end(session)
        assert transport.last_event_id == len(server.log)
    lost = [event for event in others if isinstance(event, ErrorEvent)]
    if "ring_lost" in trouble:
        # Event 6 is the fourth word (1 and 2 answered initialize and session/new).
        assert texts == [word for index, word in enumerate(WORDS) if index != 3]
        assert len(lost) == 1 and transport.stats.events_lost == 1
    else:
        assert texts == WORDS
        assert not lost
    assert others[-1].stop_reason == "end_turn"
    # A resume replays all that is ready, so one refetch covers every gap after the first.
    assert (transport.stats.gaps_refetched > 0) == (drops > 0)
    assert transport.stats.reconnects == cuts


async def test_a_stream_of_another_content_type_is_not_read_and_is_opened_again(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    server = FakeSandboxAgent(nursery, turns=[Turn(WORDS)], stream_types=["text/html"])
    async with session_through(server) as (transport, session):
        await session.prompt("go")
        texts, _ = await texts_until_turn_end(session)
    assert texts == WORDS
    assert transport.stats.reconnects == 1
    assert "text/html" in transport.stats.last_error
