"""The ACP client core against a scripted peer on an in-process transport.

The peer plays the agent's side of the wire message by message, so the protocol rules are checked
exactly: what is sent in which order, what an answer must look like, what happens when the agent
misbehaves or leaves. Time-dependent parts run on the autojump clock. The last tests drive the
stdio transport with real (tiny, scripted) subprocesses.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from anycode_actors.actors.session import chat_text
from anycode_actors.agents import (
    AcpClient,
    AcpSession,
    AgentEvent,
    ErrorEvent,
    PermissionOption,
    PermissionRequested,
    PermissionResolved,
    Raw,
    SessionEnded,
    TextDelta,
    ToolCall,
    TurnEnded,
    open_acp_client,
    open_local_stdio_client,
)
from anycode_actors.agents.acp import EVENTS_QUEUE_LIMIT, INITIALIZE_TIMEOUT, EventPump
from anycode_actors.agents.events import PromptFile, from_record, to_record
from anycode_actors.agents.jsonrpc import decode_line, parse_message
from anycode_actors.agents.transport import Received
from anycode_actors.errors import (
    AgentClosedError,
    AgentError,
    PermissionAnswerError,
    TurnInProgressError,
)

SESSION = "sess-1"
OPTIONS = [
    {"kind": "allow_always", "name": "Always Allow", "optionId": "allow_always"},
    {"kind": "allow_once", "name": "Allow", "optionId": "allow"},
    {"kind": "reject_once", "name": "Reject", "optionId": "reject"},
]


class ScriptedPeer:
    """The agent's end of an in-process transport: the test says what the agent sends and reads
    what the client sent."""

    def __init__(self) -> None:
        self._to_client, self._incoming = trio.open_memory_channel[Received](16)
        self.sent: list[dict[str, Any]] = []
        self._seen = 0
        self._wakeup = trio.Event()
        self.end: AgentClosedError | None = None
        self.after_new_session: list[dict[str, Any]] = []
        self.agent_capabilities: dict[str, Any] = {"loadSession": True}
        self.on_send: Callable[[dict[str, Any]], Awaitable[None]] | None = None

    # The Transport interface, as the client sees it.
    @property
    def incoming(self) -> trio.MemoryReceiveChannel[Received]:
        return self._incoming

    async def send(self, message: Mapping[str, Any]) -> None:
        if self.end is not None:
            raise self.end.copy()
        if self.on_send is not None:
            await self.on_send(dict(message))
        self.sent.append(dict(message))
        self._wakeup.set()
        self._wakeup = trio.Event()

    def end_reason(self) -> AgentClosedError | None:
        return self.end

    # The agent's side.
    async def say(self, message: dict[str, Any] | str, cursor: str | None = None) -> None:
        if isinstance(message, str):
            parsed = decode_line(message)
        else:
            parsed = parse_message({"jsonrpc": "2.0", **message})
        await self._to_client.send(Received(parsed, cursor))

    async def update(self, body: dict[str, Any], session: str = SESSION) -> None:
        await self.say(
            {"method": "session/update", "params": {"sessionId": session, "update": body}}
        )

    async def text(self, text: str) -> None:
        await self.update(
            {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": text}}
        )

    async def ask_permission(self, request_id: int | str, command: str = "touch x") -> None:
        await self.say(
            {
                "id": request_id,
                "method": "session/request_permission",
                "params": {
                    "sessionId": SESSION,
                    "options": OPTIONS,
                    "toolCall": {"toolCallId": "t1", "rawInput": {"command": command}},
                },
            }
        )

    async def received(self, method: str | None = None, *, answer_to: Any = None) -> dict[str, Any]:
        """The next message the client sent that is `method` (or the answer to `answer_to`)."""
        while True:
            for index in range(self._seen, len(self.sent)):
                message = self.sent[index]
                if (method is not None and message.get("method") == method) or (
                    answer_to is not None
                    and "method" not in message
                    and message.get("id") == answer_to
                ):
                    self._seen = index + 1
                    return message
            await self._wakeup.wait()

    async def answer(self, request: dict[str, Any], result: Any) -> None:
        await self.say({"id": request["id"], "result": result})

    async def leave(self, failure: AgentClosedError) -> None:
        self.end = failure
        await self._to_client.aclose()

    async def serve_setup(self) -> None:
        """Answer initialize and session/new like claude-agent-acp does."""
        initialize = await self.received("initialize")
        await self.answer(
            initialize,
            {
                "protocolVersion": 1,
                "agentCapabilities": self.agent_capabilities,
                "agentInfo": {"name": "fake-agent", "version": "1.0"},
                "authMethods": [],
            },
        )
        new = await self.received("session/new")
        await self.answer(new, {"sessionId": SESSION, "modes": {"currentModeId": "default"}})
        for message in self.after_new_session:
            await self.say(message)


@asynccontextmanager
async def connected(
    capabilities: dict[str, Any] | None = None,
) -> AsyncIterator[tuple[ScriptedPeer, AcpClient, AcpSession]]:
    peer = ScriptedPeer()
    if capabilities is not None:
        peer.agent_capabilities = capabilities
    async with trio.open_nursery() as nursery, open_acp_client(peer) as client:
        nursery.start_soon(peer.serve_setup)
        await client.initialize()
        session = await client.new_session("/workspace")
        yield peer, client, session
        nursery.cancel_scope.cancel()


async def next_event(session: AcpSession, kind: type | None = None) -> Any:
    """The next event (of `kind`, skipping others)."""
    while True:
        event = await session.events.receive()
        if kind is None or isinstance(event, kind):
            return event


# --- setup -------------------------------------------------------------------------------------


async def test_initialize_and_new_session_send_what_acp_expects(autojump_clock: Any) -> None:
    async with connected() as (peer, client, session):
        initialize, new = peer.sent[0], peer.sent[1]
        assert initialize["method"] == "initialize"
        assert initialize["params"] == {
            "protocolVersion": 1,
            "clientCapabilities": {
                "fs": {"readTextFile": False, "writeTextFile": False},
                "terminal": False,
            },
            "clientInfo": {"name": "anycode-actors", "version": "0"},
        }
        assert new["params"] == {"cwd": "/workspace", "mcpServers": []}
        assert isinstance(initialize["id"], str)
        assert initialize["id"] != new["id"]
        assert client.agent is not None
        assert (client.agent.agent_name, client.agent.agent_version) == ("fake-agent", "1.0")
        assert session.session_id == SESSION
        assert session.info["modes"] == {"currentModeId": "default"}
        assert client.sessions == {SESSION: session}


async def test_an_update_right_after_the_session_new_answer_reaches_the_session(
    autojump_clock: Any,
) -> None:
    peer = ScriptedPeer()
    peer.after_new_session = [
        {
            "method": "session/update",
            "params": {
                "sessionId": SESSION,
                "update": {"sessionUpdate": "available_commands_update", "availableCommands": []},
            },
        }
    ]
    async with trio.open_nursery() as nursery, open_acp_client(peer) as client:
        nursery.start_soon(peer.serve_setup)
        await client.initialize()
        session = await client.new_session("/workspace")
        event = await next_event(session)
        assert event == Raw(
            seq=1,
            kind="session/update:available_commands_update",
            payload={"sessionUpdate": "available_commands_update", "availableCommands": []},
        )


async def test_initialize_refuses_another_protocol_version(autojump_clock: Any) -> None:
    peer = ScriptedPeer()
    async with trio.open_nursery() as nursery, open_acp_client(peer) as client:

        async def agent() -> None:
            await peer.answer(await peer.received("initialize"), {"protocolVersion": 2})

        nursery.start_soon(agent)
        with pytest.raises(AgentError, match="ACP protocol version 2"):
            await client.initialize()


async def test_initialize_is_bounded(autojump_clock: Any) -> None:
    peer = ScriptedPeer()
    async with open_acp_client(peer) as client:
        started = trio.current_time()
        with pytest.raises(AgentError, match="did not answer within 60 s"):
            await client.initialize()
        assert trio.current_time() - started == pytest.approx(INITIALIZE_TIMEOUT)


# --- turns and events --------------------------------------------------------------------------


async def test_prompt_returns_at_once_and_the_turn_ends_with_the_stop_reason(
    autojump_clock: Any,
) -> None:
    async with connected() as (peer, _, session):
        turn = await session.prompt("hello")
        prompt = await peer.received("session/prompt")
        assert prompt["params"] == {
            "sessionId": SESSION,
            "prompt": [{"type": "text", "text": "hello"}],
        }
        assert not turn.done
        for text in ("", "Hello ", "", "world"):
            await peer.text(text)
        await peer.answer(prompt, {"stopReason": "end_turn", "usage": {"inputTokens": 1}})
        events = [await next_event(session) for _ in range(3)]
        assert events == [
            TextDelta(seq=1, text="Hello "),
            TextDelta(seq=2, text="world"),
            TurnEnded(seq=3, stop_reason="end_turn"),
        ]
        assert await turn.wait() == "end_turn"
        assert session.last_seq == 3


@pytest.mark.parametrize("images", [True, False])
async def test_files_follow_the_text_as_image_blocks_or_resource_links(
    autojump_clock: Any, images: bool
) -> None:
    capabilities = {"loadSession": True, "promptCapabilities": {"image": images}}
    photo = PromptFile("/workspace/inbox/a.png", "a.png", "image/png", 4, b"\x89PNG")
    notes = PromptFile("/workspace/inbox/n.txt", "n.txt", "text/plain", 5)
    link = {
        "type": "resource_link",
        "uri": "file:///workspace/inbox/n.txt",
        "name": "n.txt",
        "mimeType": "text/plain",
        "size": 5,
    }
    async with connected(capabilities) as (peer, _, session):
        await session.prompt("look", [photo, notes])
        prompt = await peer.received("session/prompt")
    first = (
        {
            "type": "image",
            "mimeType": "image/png",
            "data": "iVBORw==",
            "uri": "file:///workspace/inbox/a.png",
        }
        if images
        else {
            "type": "resource_link",
            "uri": "file:///workspace/inbox/a.png",
            "name": "a.png",
            "mimeType": "image/png",
            "size": 4,
        }
    )
    assert prompt["params"]["prompt"] == [{"type": "text", "text": "look"}, first, link]


async def test_a_prompt_during_a_turn_is_refused_and_a_follow_up_after_it_works(
    autojump_clock: Any,
) -> None:
    async with connected() as (peer, _, session):
        await session.prompt("first")
        with pytest.raises(TurnInProgressError, match="previous prompt"):
            await session.prompt("second")
        first = await peer.received("session/prompt")
        await peer.answer(first, {"stopReason": "end_turn"})
        assert (await next_event(session, TurnEnded)).stop_reason == "end_turn"
        follow_up = await session.prompt("second")
        second = await peer.received("session/prompt")
        assert second["params"]["prompt"][0]["text"] == "second"
        assert second["params"]["sessionId"] == SESSION
        await peer.answer(second, {"stopReason": "refusal"})
        assert await follow_up.wait() == "refusal"


async def test_tool_calls_carry_what_earlier_updates_said(autojump_clock: Any) -> None:
    async with connected() as (peer, _, session):
        await peer.update(
            {
                "sessionUpdate": "tool_call",
                "toolCallId": "t1",
                "status": "pending",
                "title": "Terminal",
                "kind": "execute",
                "rawInput": {},
            }
        )
        await peer.update(
            {
                "sessionUpdate": "tool_call_update",
                "toolCallId": "t1",
                "title": "touch x",
                "rawInput": {"command": "touch x"},
            }
        )
        await peer.update(
            {"sessionUpdate": "tool_call_update", "toolCallId": "t1", "status": "completed"}
        )
        started, updated, completed = [await next_event(session, ToolCall) for _ in range(3)]
        assert (started.phase, started.title, started.input_summary) == ("started", "Terminal", "")
        assert (updated.phase, updated.title, updated.input_summary) == (
            "updated",
            "touch x",
            "touch x",
        )
        assert (completed.phase, completed.status, completed.kind, completed.title) == (
            "completed",
            "completed",
            "execute",
            "touch x",
        )
        # The chat's line waits for the real title: "▸ touch x", never "▸ Terminal".
        assert [chat_text(e) for e in (started, updated, completed)] == [
            None,
            "\n▸ touch x\n",
            None,
        ]


async def test_a_tool_call_without_input_shows_its_line_when_it_ends(autojump_clock: Any) -> None:
    async with connected() as (peer, _, session):
        await peer.update({"sessionUpdate": "tool_call", "toolCallId": "t2", "title": "Think"})
        await peer.update(
            {"sessionUpdate": "tool_call_update", "toolCallId": "t2", "status": "failed"}
        )
        started, completed = [await next_event(session, ToolCall) for _ in range(2)]
        assert chat_text(started) is None
        assert chat_text(completed) == "\n▸ Think\n✗ Think failed\n"
        # Stored and read back, the events say the same (a restarted daemon re-sends the chat
        # text from the event log).
        for event in (started, completed):
            tag, body = to_record(event)
            assert chat_text(from_record(tag, json.loads(json.dumps(body)))) == chat_text(event)


async def test_a_failed_prompt_gives_an_error_and_an_error_turn_end(autojump_clock: Any) -> None:
    async with connected() as (peer, _, session):
        turn = await session.prompt("x")
        prompt = await peer.received("session/prompt")
        await peer.say(
            {
                "id": prompt["id"],
                "error": {
                    "code": -32603,
                    "message": "Internal error",
                    "data": {"details": "Query closed before response received"},
                },
            }
        )
        error = await next_event(session)
        assert isinstance(error, ErrorEvent)
        assert error.code == -32603
        assert "Query closed before response received" in error.message
        ended = await next_event(session)
        assert ended.stop_reason == "error"
        assert "Internal error" in ended.message
        assert await turn.wait() == "error"


async def test_unknown_updates_and_garbage_do_not_end_the_session(autojump_clock: Any) -> None:
    async with connected() as (peer, _, session):
        await peer.update({"sessionUpdate": "plan", "entries": [{"content": "step 1"}]})
        await peer.say("this is not json")
        await peer.say('{"jsonrpc":"2.0","id":"nobody-1","result":{}}')  # an answer to nothing
        await peer.say({"method": "_custom/notice", "params": {"sessionId": SESSION, "x": 1}})
        await peer.text("still here")
        events = [await next_event(session) for _ in range(4)]
        assert [(type(e), getattr(e, "kind", None)) for e in events] == [
            (Raw, "session/update:plan"),
            (Raw, "malformed"),
            (Raw, "_custom/notice"),
            (TextDelta, None),
        ]
        assert [e.seq for e in events] == [1, 2, 3, 4]


async def test_events_carry_the_transport_cursor(autojump_clock: Any) -> None:
    async with connected() as (peer, _, session):
        turn = await session.prompt("x")
        prompt = await peer.received("session/prompt")
        await peer.say(
            {
                "method": "session/update",
                "params": {
                    "sessionId": SESSION,
                    "update": {
                        "sessionUpdate": "agent_message_chunk",
                        "content": {"type": "text", "text": "a"},
                    },
                },
            },
            cursor="41",
        )
        await peer.say({"id": prompt["id"], "result": {"stopReason": "end_turn"}}, cursor="42")
        assert (await next_event(session)).cursor == "41"
        assert (await next_event(session)).cursor == "42"
        await turn.wait()


# --- permissions -------------------------------------------------------------------------------


async def test_a_permission_answer_is_sent_as_the_agent_expects(autojump_clock: Any) -> None:
    async with connected() as (peer, _, session):
        await peer.ask_permission(0)
        requested = await next_event(session)
        assert isinstance(requested, PermissionRequested)
        assert requested.key == "0"
        assert [o.kind for o in requested.options] == ["allow_always", "allow_once", "reject_once"]
        assert session.pending_permissions == (requested,)
        await session.respond_permission(requested.key, "allow")
        reply = await peer.received(answer_to=0)
        assert reply == {
            "jsonrpc": "2.0",
            "id": 0,
            "result": {"outcome": {"outcome": "selected", "optionId": "allow"}},
        }
        resolved = await next_event(session)
        assert resolved == PermissionResolved(
            seq=2, key="0", outcome="selected", option_id="allow", option_kind="allow_once"
        )
        assert session.pending_permissions == ()


async def test_impossible_permission_answers_are_refused(autojump_clock: Any) -> None:
    async with connected() as (peer, _, session):
        await peer.ask_permission("p-7")
        requested = await next_event(session)
        with pytest.raises(PermissionAnswerError, match="not an option"):
            await session.respond_permission(requested.key, "yes please")
        with pytest.raises(PermissionAnswerError, match="no pending permission request"):
            await session.respond_permission('"p-8"', "allow")
        await session.cancel_permission(requested.key)
        reply = await peer.received(answer_to="p-7")
        assert reply["result"] == {"outcome": {"outcome": "cancelled"}}
        with pytest.raises(PermissionAnswerError):
            await session.respond_permission(requested.key, "allow")
        resolved = await next_event(session)
        assert (resolved.outcome, resolved.by) == ("cancelled", "cancel")


async def test_cancel_sends_session_cancel_then_answers_every_pending_permission(
    autojump_clock: Any,
) -> None:
    async with connected() as (peer, _, session):
        turn = await session.prompt("do two things")
        prompt = await peer.received("session/prompt")
        await peer.ask_permission(0, "touch a")
        await peer.ask_permission(1, "touch b")
        await next_event(session)
        await next_event(session)
        await session.cancel()
        sent_after_prompt = peer.sent[peer.sent.index(prompt) + 1 :]
        assert sent_after_prompt == [
            {"jsonrpc": "2.0", "method": "session/cancel", "params": {"sessionId": SESSION}},
            {"jsonrpc": "2.0", "id": 0, "result": {"outcome": {"outcome": "cancelled"}}},
            {"jsonrpc": "2.0", "id": 1, "result": {"outcome": {"outcome": "cancelled"}}},
        ]
        await peer.answer(prompt, {"stopReason": "cancelled"})
        events = [await next_event(session) for _ in range(3)]
        assert [(type(e), getattr(e, "by", None)) for e in events] == [
            (PermissionResolved, "cancel"),
            (PermissionResolved, "cancel"),
            (TurnEnded, None),
        ]
        assert await turn.wait() == "cancelled"
        assert session.pending_permissions == ()


async def test_a_turn_that_ends_reports_its_unanswered_permissions(autojump_clock: Any) -> None:
    async with connected() as (peer, _, session):
        turn = await session.prompt("x")
        prompt = await peer.received("session/prompt")
        await peer.ask_permission(0)
        await peer.answer(prompt, {"stopReason": "cancelled"})
        events = [await next_event(session) for _ in range(3)]
        assert [type(e) for e in events] == [
            PermissionRequested,
            PermissionResolved,
            TurnEnded,
        ]
        assert (events[1].outcome, events[1].by) == ("cancelled", "cancel")
        assert session.pending_permissions == ()
        assert await turn.wait() == "cancelled"


async def test_cancel_answers_a_permission_even_when_the_turn_ends_first(
    autojump_clock: Any,
) -> None:
    async with connected() as (peer, _, session):
        await session.prompt("x")
        prompt = await peer.received("session/prompt")
        await peer.ask_permission(0)
        await next_event(session)

        async def end_turn_before_cancel_returns(message: dict[str, Any]) -> None:
            # sandbox-agent: session/cancel's POST is still open when the answer is streamed.
            if message.get("method") == "session/cancel":
                await peer.answer(prompt, {"stopReason": "cancelled"})
                await trio.testing.wait_all_tasks_blocked()

        peer.on_send = end_turn_before_cancel_returns
        await session.cancel()
        reply = await peer.received(answer_to=0)
        assert reply["result"] == {"outcome": {"outcome": "cancelled"}}
        resolved = await next_event(session)
        assert (resolved.outcome, resolved.by) == ("cancelled", "cancel")
        assert (await next_event(session)).stop_reason == "cancelled"


async def test_answering_a_permission_never_waits_for_a_full_event_channel(
    autojump_clock: Any,
) -> None:
    async with connected() as (peer, _, session):

        async def flood() -> None:
            await peer.ask_permission(0)
            for index in range(EVENTS_QUEUE_LIMIT * 3):
                await peer.text(f"w{index} ")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood)
            requested = await next_event(session)
            await trio.testing.wait_all_tasks_blocked()  # the queue is full now
            with trio.fail_after(1):
                await session.respond_permission(requested.key, "allow")
            texts: list[str] = []
            resolved_at = None
            while len(texts) < EVENTS_QUEUE_LIMIT * 3:
                event = await next_event(session)
                if isinstance(event, PermissionResolved):
                    resolved_at = len(texts)
                else:
                    texts.append(event.text)
        assert texts == [f"w{index} " for index in range(EVENTS_QUEUE_LIMIT * 3)]
        assert resolved_at is not None


async def test_a_reader_takes_what_is_queued_without_waiting(autojump_clock: Any) -> None:
    async with connected() as (peer, _, session):
        for index in range(5):
            await peer.text(f"w{index} ")
        await trio.testing.wait_all_tasks_blocked()
        events = session.events
        burst = [await events.receive()]
        while True:
            try:
                burst.append(events.receive_nowait())
            except trio.WouldBlock:
                break
        assert [event.text for event in burst] == [f"w{index} " for index in range(5)]
        assert [event.seq for event in burst] == [1, 2, 3, 4, 5]
        assert session.last_seq == 5
        with pytest.raises(trio.WouldBlock):
            events.receive_nowait()


async def test_the_event_queue_holds_the_agent_back_when_full(autojump_clock: Any) -> None:
    pump = EventPump(limit=3, first_seq=1)
    put: list[int] = []

    async def agent() -> None:
        for index in range(5):
            put.append((await pump.put(TextDelta(text=str(index)))).seq)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent)
        await trio.testing.wait_all_tasks_blocked()
        assert put == [1, 2, 3]  # the fourth waits for room
        assert pump.receive.receive_nowait().seq == 1
        await trio.testing.wait_all_tasks_blocked()
        assert put == [1, 2, 3, 4]
        taken = [pump.receive.receive_nowait().seq for _ in range(3)]
        await trio.testing.wait_all_tasks_blocked()
        assert put == [1, 2, 3, 4, 5]
        assert [*taken, (await pump.receive.receive()).seq] == [2, 3, 4, 5]


async def test_the_event_stream_ends_after_what_was_queued(autojump_clock: Any) -> None:
    pump = EventPump(limit=8, first_seq=1)
    pump.put_now(TextDelta(text="a"))
    pump.finish(TurnEnded(stop_reason="end_turn"))
    pump.put_now(TextDelta(text="too late"))
    assert [event async for event in pump.receive] == [
        TextDelta(seq=1, text="a"),
        TurnEnded(seq=2, stop_reason="end_turn"),
    ]
    with pytest.raises(trio.EndOfChannel):
        pump.receive.receive_nowait()


async def test_a_reader_waits_for_the_next_event_and_the_end(autojump_clock: Any) -> None:
    pump = EventPump(limit=8, first_seq=10)
    got: list[AgentEvent] = []

    async def reader() -> None:
        async for event in pump.receive:
            got.append(event)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.sleep(1)
        pump.put_now(TextDelta(text="a", cursor="c"))
        await trio.sleep(1)
        assert got == [TextDelta(seq=10, cursor="c", text="a")]
        cancel = trio.CancelScope()

        async def run() -> None:
            with cancel:
                await pump.run()

        nursery.start_soon(run)
        await trio.testing.wait_all_tasks_blocked()
        cancel.cancel()  # the pump's nursery closing ends the stream
    assert got == [TextDelta(seq=10, cursor="c", text="a")]


async def test_a_reader_that_leaves_drops_the_rest_and_frees_the_agent(
    autojump_clock: Any,
) -> None:
    pump = EventPump(limit=1, first_seq=1)
    pump.put_now(TextDelta(text="a"))
    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump.put, TextDelta(text="b"))
            await trio.testing.wait_all_tasks_blocked()
            await pump.receive.aclose()
    with pytest.raises(trio.ClosedResourceError):
        pump.receive.receive_nowait()


async def test_an_events_cursor_is_set_or_kept_as_asked() -> None:
    pump = EventPump(limit=8, first_seq=1)
    assert pump.put_now(TextDelta(text="a", cursor="old")).cursor == "old"
    assert pump.put_now(TextDelta(text="a", cursor="old"), cursor="new").cursor == "new"
    assert pump.put_now(TextDelta(text="a", cursor="old"), cursor=None).cursor is None


# --- the agent's requests ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("fs/read_text_file", {"sessionId": SESSION, "path": "/etc/passwd"}),
        ("fs/write_text_file", {"sessionId": SESSION, "path": "/w/x", "content": "hi"}),
        ("terminal/create", {"sessionId": SESSION, "command": "pwd"}),
        ("something/else", {}),
    ],
)
async def test_requests_for_capabilities_we_do_not_offer_get_method_not_found(
    autojump_clock: Any, method: str, params: dict[str, Any]
) -> None:
    async with connected() as (peer, _, session):
        await peer.say({"id": 5, "method": method, "params": params})
        reply = await peer.received(answer_to=5)
        assert reply["error"]["code"] == -32601
        assert "no fs or terminal capabilities" in reply["error"]["message"]
        raw = await next_event(session)
        assert raw.kind == method


async def test_a_permission_request_for_an_unknown_session_is_refused(autojump_clock: Any) -> None:
    async with connected() as (peer, _, _session):
        await peer.say(
            {
                "id": 9,
                "method": "session/request_permission",
                "params": {"sessionId": "other", "options": OPTIONS},
            }
        )
        reply = await peer.received(answer_to=9)
        assert reply["error"] == {"code": -32602, "message": "unknown session"}


# --- the end -----------------------------------------------------------------------------------


async def test_an_agent_that_exits_ends_the_session_and_fails_what_waits(
    autojump_clock: Any,
) -> None:
    async with connected() as (peer, client, session):
        turn = await session.prompt("x")
        await peer.received("session/prompt")
        await peer.text("partial")
        await peer.leave(AgentClosedError("the agent exited with code 1", "Error: out of memory"))
        assert isinstance(await next_event(session), TextDelta)
        ended = await next_event(session)
        assert isinstance(ended, SessionEnded)
        assert ended.reason == "agent_exited"
        assert "out of memory" in ended.message
        with pytest.raises(trio.EndOfChannel):
            await session.events.receive()
        with pytest.raises(AgentClosedError, match="out of memory"):
            await turn.wait()
        with pytest.raises(AgentClosedError):
            await session.prompt("again")
        with pytest.raises(AgentClosedError):
            await client.request("session/new", {"cwd": "/"})


async def test_the_adapters_exit_notice_ends_the_session(autojump_clock: Any) -> None:
    async with connected() as (peer, _, session):
        await peer.say({"method": "_adapter/agent_exited", "params": {"success": False, "code": 1}})
        ended = await next_event(session)
        assert isinstance(ended, SessionEnded)
        assert ended.reason == "agent_exited"
        assert "exit code 1" in ended.message


async def test_a_lost_stream_ends_the_session_as_connection_lost(autojump_clock: Any) -> None:
    async with connected() as (peer, _, session):
        await peer.leave(AgentClosedError("lost the event stream", "x", connection_lost=True))
        ended = await next_event(session)
        assert ended.reason == "connection_lost"


async def test_lost_messages_are_reported(autojump_clock: Any) -> None:
    async with connected() as (peer, _, session):
        await peer.say({"method": "_anycode/events_lost", "params": {"count": 3}})
        error = await next_event(session)
        assert isinstance(error, ErrorEvent)
        assert "3 messages" in error.message


async def test_closing_the_client_ends_the_event_channels_and_fails_turns(
    autojump_clock: Any,
) -> None:
    async with connected() as (_peer, _, session):
        turn = await session.prompt("x")
    with pytest.raises(AgentClosedError, match="client was closed"):
        await turn.wait()
    with pytest.raises((trio.EndOfChannel, trio.ClosedResourceError)):
        await session.events.receive()


async def test_attached_session_continues_numbering_and_ends_the_running_turn(
    autojump_clock: Any,
) -> None:
    peer = ScriptedPeer()
    earlier = PermissionRequested(
        seq=41,
        key="3",
        request_id=3,
        tool_call_id="t1",
        title="x",
        input_summary="",
        options=(PermissionOption("allow", "Allow", "allow_once"),),
    )
    async with open_acp_client(peer) as client:
        session = client.attach_session(
            SESSION, first_seq=42, turn_running=True, permissions=[earlier]
        )
        assert session.turn_running
        assert session.pending_permissions == (earlier,)
        with pytest.raises(TurnInProgressError):
            await session.prompt("not yet")
        await session.respond_permission("3", "allow")
        reply = await peer.received(answer_to=3)
        assert reply["result"]["outcome"] == {"outcome": "selected", "optionId": "allow"}
        await peer.text("rest of the answer")
        # The answer to the prompt the previous connection sent (its id is unknown here).
        await peer.say({"id": "old-3", "result": {"stopReason": "end_turn"}})
        resolved = await next_event(session)
        assert (resolved.seq, resolved.key, resolved.by) == (42, "3", "user")
        assert await next_event(session) == TextDelta(seq=43, text="rest of the answer")
        assert (await next_event(session)).stop_reason == "end_turn"
        assert not session.turn_running


# --- stdio, with real (tiny) processes ---------------------------------------------------------

FAKE_AGENT = r"""
import json, sys
sys.stdout.write('not json\n')
sys.stdout.write('{"jsonrpc":"2.0","method":"session/up')
sys.stdout.flush()
sys.stdout.write('date","params":{}}\n')
sys.stdout.flush()
line = sys.stdin.readline()
request = json.loads(line)
sys.stderr.write("fatal: cannot start the model (%s)\n" % request["method"])
sys.exit(3)
"""


async def test_stdio_agent_that_dies_gives_its_exit_code_and_stderr() -> None:
    with trio.fail_after(20):
        async with open_local_stdio_client([sys.executable, "-c", FAKE_AGENT]) as client:
            with pytest.raises(AgentClosedError) as caught:
                await client.initialize()
    message = str(caught.value)
    assert "exited with code 3" in message
    assert "fatal: cannot start the model (initialize)" in message


ECHO_AGENT = r"""
import json, sys, time
for line in sys.stdin:
    message = json.loads(line)
    if message.get("method") == "initialize":
        print(json.dumps({"jsonrpc": "2.0", "id": message["id"],
                          "result": {"protocolVersion": 1, "agentInfo": {"name": "echo"}}}),
              flush=True)
time.sleep(600)  # ignores the end of its input: closing must stop it anyway
"""


async def test_stdio_close_stops_an_agent_that_ignores_its_closed_input() -> None:
    with trio.fail_after(20):
        async with open_local_stdio_client([sys.executable, "-c", ECHO_AGENT]) as client:
            info = await client.initialize()
            transport = client._transport
            started = trio.current_time()
        elapsed = trio.current_time() - started
    assert info.agent_name == "echo"
    assert transport.process.returncode is not None  # type: ignore[attr-defined]
    assert elapsed < 10
