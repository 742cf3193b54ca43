"""Parsing every message shape the agents send (agents-and-sandbox-agent.md), and malformed input.

Pure functions only: JSON-RPC classification and framing, the normalization of ACP updates into
agent events, and acpx's two-way NDJSON. The shapes are copied from what sandbox-agent 0.4.2,
claude-agent-acp 0.23.1 and acpx 0.1.15 printed in the recorded runs.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from anycode_actors.agents.acpx import AcpxLaunch, AcpxObserver
from anycode_actors.agents.events import (
    ErrorEvent,
    PermissionOption,
    PermissionRequested,
    PermissionResolved,
    Raw,
    TextDelta,
    ThoughtDelta,
    ToolCall,
    ToolCallMemory,
    TurnEnded,
    normalize,
    summarize,
    turn_ended,
)
from anycode_actors.agents.jsonrpc import (
    ErrorResponse,
    LineSplitter,
    Malformed,
    Notification,
    PendingRequests,
    Request,
    Response,
    RpcError,
    decode_line,
    encode,
    parse_message,
)
from anycode_actors.config import AgentConfig
from anycode_actors.errors import AgentClosedError, AgentRequestError

SESSION = "0c5f893b-d092-47a5-8b92-fa532e961080"


def update(body: dict[str, Any]) -> str:
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "method": "session/update",
            "params": {"sessionId": SESSION, "update": body},
        }
    )


# Shapes from the Agent Client Protocol schema (https://agentclientprotocol.com/protocol/schema)
# and from recorded runs.
TEXT_CHUNK = update(
    {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": "Hello "}}
)
EMPTY_CHUNK = update(
    {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": ""}}
)
THOUGHT_CHUNK = update(
    {"sessionUpdate": "agent_thought_chunk", "content": {"type": "text", "text": "Hmm."}}
)
TOOL_CALL_SA = update(
    {
        "_meta": {"claudeCode": {"toolName": "Bash"}},
        "sessionUpdate": "tool_call",
        "toolCallId": "toolu_01",
        "status": "pending",
        "kind": "execute",
        "title": "`touch x`",
        "rawInput": {"command": "touch x", "description": "Create x"},
        "content": [{"type": "content", "content": {"type": "text", "text": "Create x"}}],
    }
)
TOOL_CALL_ACPX_WRITE = update(
    {
        "_meta": {"claudeCode": {"toolName": "mcp__acp__Write"}},
        "toolCallId": "toolu_02",
        "sessionUpdate": "tool_call",
        "status": "pending",
        "title": "Write /abs/w2.txt",
        "kind": "edit",
        "content": [{"type": "diff", "path": "/abs/w2.txt", "oldText": None, "newText": "hi\n"}],
        "locations": [{"path": "/abs/w2.txt"}],
    }
)
TOOL_RESPONSE_META = update(
    {
        "_meta": {
            "claudeCode": {
                "toolResponse": {"stdout": "", "stderr": "", "interrupted": False},
                "toolName": "Bash",
            }
        },
        "toolCallId": "toolu_01",
        "sessionUpdate": "tool_call_update",
    }
)
TOOL_COMPLETED = update(
    {
        "_meta": {"claudeCode": {"toolName": "Bash"}},
        "toolCallId": "toolu_01",
        "sessionUpdate": "tool_call_update",
        "status": "completed",
        "rawOutput": "(Bash completed with no output)",
        "content": [{"type": "content", "content": {"type": "text", "text": "```console\n```"}}],
    }
)
TOOL_FAILED = update(
    {
        "toolCallId": "toolu_01",
        "sessionUpdate": "tool_call_update",
        "status": "failed",
        "content": [
            {"type": "content", "content": {"type": "text", "text": "User refused permission"}}
        ],
    }
)
PERMISSION = json.dumps(
    {
        "id": 0,
        "jsonrpc": "2.0",
        "method": "session/request_permission",
        "params": {
            "sessionId": SESSION,
            "options": [
                {"kind": "allow_always", "name": "Always Allow", "optionId": "allow_always"},
                {"kind": "allow_once", "name": "Allow", "optionId": "allow"},
                {"kind": "reject_once", "name": "Reject", "optionId": "reject"},
            ],
            "toolCall": {
                "toolCallId": "toolu_01",
                "rawInput": {"command": "touch sa_bash.txt"},
                "title": "`touch sa_bash.txt`",
            },
        },
    }
)
PROMPT_ANSWER = '{"id":3,"jsonrpc":"2.0","result":{"stopReason":"end_turn"}}'
PROMPT_ANSWER_023 = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 2,
        "result": {"stopReason": "end_turn", "usage": {"inputTokens": 42443, "outputTokens": 21}},
    }
)
INTERNAL_ERROR = json.dumps(
    {
        "error": {
            "code": -32603,
            "message": "Internal error",
            "data": {
                "details": "Query closed before response received",
                "agentStderr": "--dangerously-skip-permissions cannot be used with root",
            },
        },
        "id": 2,
        "jsonrpc": "2.0",
    }
)
FS_WRITE = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "fs/write_text_file",
        "params": {"sessionId": SESSION, "path": "/abs/w2.txt", "content": "hi\n"},
    }
)
TERMINAL_CREATE = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "terminal/create",
        "params": {"sessionId": SESSION, "command": "pwd"},
    }
)


def only(events: list[Any]) -> Any:
    assert len(events) == 1, events
    return events[0]


# --- JSON-RPC ----------------------------------------------------------------------------------


def test_the_four_message_shapes_are_told_apart() -> None:
    assert decode_line(PERMISSION) == Request(
        0, "session/request_permission", json.loads(PERMISSION)["params"]
    )
    notification = decode_line(TEXT_CHUNK)
    assert isinstance(notification, Notification)
    assert notification.method == "session/update"
    assert decode_line(PROMPT_ANSWER) == Response(3, {"stopReason": "end_turn"})
    error = decode_line(INTERNAL_ERROR)
    assert isinstance(error, ErrorResponse)
    assert error.id == 2
    assert error.error.code == -32603
    assert error.error.data["details"] == "Query closed before response received"


def test_string_ids_and_an_error_without_id_are_valid() -> None:
    assert decode_line('{"jsonrpc":"2.0","id":"a1-7","result":{}}') == Response("a1-7", {})
    parsed = decode_line('{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse"}}')
    assert parsed == ErrorResponse(None, RpcError(-32700, "Parse"))
    assert decode_line('{"jsonrpc":"2.0","method":"x"}') == Notification("x", {})


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("not json at all", "not JSON"),
        ('{"jsonrpc":"2.0","method":"session/update","params":{"upd', "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('"text"', "not a JSON object"),
        ('{"method":"session/update","params":{}}', "not a JSON-RPC 2.0 message"),
        ('{"jsonrpc":"1.0","id":1,"result":{}}', "not a JSON-RPC 2.0 message"),
        ('{"jsonrpc":"2.0","id":true,"method":"x"}', "request id"),
        ('{"jsonrpc":"2.0","id":1.5,"result":{}}', "response id"),
        ('{"jsonrpc":"2.0","method":7}', "method"),
        ('{"jsonrpc":"2.0","method":"x","params":[1]}', "params"),
        ('{"jsonrpc":"2.0","id":1,"error":{"message":"no code"}}', "error"),
        ('{"jsonrpc":"2.0","id":1,"error":"boom"}', "error"),
        ('{"jsonrpc":"2.0","id":1}', "neither result nor error"),
        ('{"jsonrpc":"2.0"}', "neither"),
        ('{"action":"session_ensured","created":true,"name":"t1"}', "not a JSON-RPC 2.0"),
    ],
)
def test_malformed_input_is_reported_not_raised(line: str, reason: str) -> None:
    parsed = decode_line(line)
    assert isinstance(parsed, Malformed)
    assert reason in parsed.reason
    assert parsed.text == line.strip()[:2000]


def test_malformed_keeps_the_decoded_value_for_acpx_lines() -> None:
    parsed = decode_line('{"action":"cancel_result","cancelled":true}')
    assert isinstance(parsed, Malformed)
    assert parsed.value == {"action": "cancel_result", "cancelled": True}


@given(st.text())
def test_decode_line_never_raises(text: str) -> None:
    assert decode_line(text) is not None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["jsonrpc", "id", "method", "params", "result", "error", "code", "x"]),
            children,
            max_size=6,
        )
    ),
    max_leaves=20,
)


@given(json_values)
def test_parse_message_never_raises(value: Any) -> None:
    assert parse_message(value) is not None


def test_encode_is_one_compact_line_even_with_newlines_inside() -> None:
    data = encode({"jsonrpc": "2.0", "method": "x", "params": {"text": "a\nb", "é": 1}})
    assert data.endswith(b"\n")
    assert data.count(b"\n") == 1
    assert b" " not in data
    assert json.loads(data) == {"jsonrpc": "2.0", "method": "x", "params": {"text": "a\nb", "é": 1}}


def test_line_splitter_joins_chunks_and_keeps_a_last_unterminated_line() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b'{"a":') == []
    assert splitter.feed(b'1}\n{"b":2}\n{"c"') == [b'{"a":1}', b'{"b":2}']
    assert splitter.feed(b":3}") == []
    assert splitter.finish() == b'{"c":3}'
    assert splitter.finish() is None


def test_line_splitter_skips_an_oversized_line_and_goes_on() -> None:
    splitter = LineSplitter(max_line_bytes=10)
    first = splitter.feed(b"x" * 25)
    assert len(first) == 1
    assert isinstance(first[0], Malformed)
    assert "longer than 10 bytes" in first[0].reason
    assert splitter.feed(b"yyy\nok\n") == [b"ok"]
    assert splitter.feed(b"x" * 11 + b"\n" + b"fine\n")[1:] == [b"fine"]


async def test_pending_requests_match_answers_and_fail_together() -> None:
    pending = PendingRequests("p")
    first = pending.open("initialize")
    second = pending.open("session/new")
    assert (first, second) == ("p-1", "p-2")
    assert pending.method_of(second) == "session/new"
    answers: list[Any] = []

    async def wait_first() -> None:
        answers.append(await pending.wait(first))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_first)
        await trio.testing.wait_all_tasks_blocked()
        assert pending.resolve(Response(first, {"ok": 1}))
    assert answers == [Response(first, {"ok": 1})]
    assert not pending.resolve(Response(first, {"ok": 1}))  # a duplicate is nobody's
    assert not pending.resolve(Response("other-1", {}))
    failures: list[BaseException] = []

    async def waiter() -> None:
        try:
            await pending.wait(second)
        except AgentClosedError as exc:
            failures.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        pending.fail_all(AgentClosedError("agent exited", "stderr tail"))
    assert [str(f) for f in failures] == ["agent exited: stderr tail"]
    with pytest.raises(AgentClosedError):
        pending.open("session/prompt")


async def test_a_cancelled_wait_forgets_the_request() -> None:
    pending = PendingRequests("p")
    request_id = pending.open("session/new")
    with trio.move_on_after(0.01):
        await pending.wait(request_id)
    assert request_id not in pending
    assert not pending.resolve(Response(request_id, {}))


def test_request_error_message_carries_the_agents_details() -> None:
    error = decode_line(INTERNAL_ERROR)
    assert isinstance(error, ErrorResponse)
    failure = AgentRequestError(
        "session/new", error.error.code, error.error.message, error.error.data
    )
    assert "session/new failed: Internal error (JSON-RPC error -32603)" in str(failure)
    assert "cannot be used with root" in str(failure)


# --- normalization -----------------------------------------------------------------------------


def test_text_and_thought_chunks() -> None:
    assert normalize(decode_line(TEXT_CHUNK)) == [TextDelta(text="Hello ")]
    assert normalize(decode_line(THOUGHT_CHUNK)) == [ThoughtDelta(text="Hmm.")]
    # claude-agent-acp starts every block with an empty chunk.
    assert normalize(decode_line(EMPTY_CHUNK)) == []


def test_non_text_content_is_kept_raw() -> None:
    image = update(
        {"sessionUpdate": "agent_message_chunk", "content": {"type": "image", "data": "..."}}
    )
    raw = only(normalize(decode_line(image)))
    assert isinstance(raw, Raw)
    assert raw.kind == "session/update:agent_message_chunk"
    assert raw.payload["content"]["type"] == "image"


def test_tool_call_started_from_sandbox_agent() -> None:
    event = only(normalize(decode_line(TOOL_CALL_SA)))
    assert event == ToolCall(
        tool_call_id="toolu_01",
        phase="started",
        status="pending",
        title="`touch x`",
        kind="execute",
        input_summary="touch x",
        tool_name="Bash",
    )


def test_tool_call_started_from_acpx_write_has_no_raw_input() -> None:
    event = only(normalize(decode_line(TOOL_CALL_ACPX_WRITE)))
    assert isinstance(event, ToolCall)
    assert (event.phase, event.kind, event.title) == ("started", "edit", "Write /abs/w2.txt")
    assert event.tool_name == "mcp__acp__Write"
    assert event.input_summary == ""


def test_tool_call_updates_and_completion() -> None:
    meta = only(normalize(decode_line(TOOL_RESPONSE_META)))
    assert isinstance(meta, ToolCall)
    assert (meta.phase, meta.status, meta.title) == ("updated", None, None)
    done = only(normalize(decode_line(TOOL_COMPLETED)))
    assert isinstance(done, ToolCall)
    assert (done.phase, done.status, done.failed) == ("completed", "completed", False)
    assert done.output_summary == "(Bash completed with no output)"
    failed = only(normalize(decode_line(TOOL_FAILED)))
    assert isinstance(failed, ToolCall)
    assert (failed.phase, failed.failed) == ("completed", True)
    assert failed.output_summary == "User refused permission"


def test_tool_call_memory_fills_what_later_updates_leave_out() -> None:
    memory = ToolCallMemory()
    first = memory.merge(only(normalize(decode_line(TOOL_CALL_SA))))
    middle = memory.merge(only(normalize(decode_line(TOOL_RESPONSE_META))))
    last = memory.merge(only(normalize(decode_line(TOOL_COMPLETED))))
    assert first.title == middle.title == last.title == "`touch x`"
    assert middle.status == "pending"
    assert last.input_summary == "touch x"
    assert last.kind == "execute"
    # Completed calls are forgotten.
    again = memory.merge(only(normalize(decode_line(TOOL_RESPONSE_META))))
    assert again.title is None


def test_permission_request_keeps_the_agents_options_in_order() -> None:
    event = only(normalize(decode_line(PERMISSION)))
    assert isinstance(event, PermissionRequested)
    assert event.key == "0"
    assert event.request_id == 0
    assert event.tool_call_id == "toolu_01"
    assert event.title == "`touch sa_bash.txt`"
    assert event.input_summary == "touch sa_bash.txt"
    assert event.options == (
        PermissionOption("allow_always", "Always Allow", "allow_always"),
        PermissionOption("allow", "Allow", "allow_once"),
        PermissionOption("reject", "Reject", "reject_once"),
    )
    allow_once = event.option("allow_once")
    assert allow_once is not None
    assert allow_once.option_id == "allow"
    assert event.option("reject_always") is None
    assert event.policy is None


def test_permission_request_with_a_string_id_and_missing_parts() -> None:
    line = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": "x-1",
            "method": "session/request_permission",
            "params": {"sessionId": SESSION, "options": [{"name": "no id"}, "junk"]},
        }
    )
    event = only(normalize(decode_line(line)))
    assert isinstance(event, PermissionRequested)
    assert event.key == '"x-1"'
    assert event.options == ()
    assert (event.tool_call_id, event.title, event.input_summary) == (None, None, "")


def test_permission_request_takes_title_from_its_tool_call() -> None:
    memory = ToolCallMemory()
    memory.merge(only(normalize(decode_line(TOOL_CALL_SA))))
    bare = json.loads(PERMISSION)
    bare["params"]["toolCall"] = {"toolCallId": "toolu_01"}
    event = only(normalize(decode_line(json.dumps(bare))))
    assert isinstance(event, PermissionRequested)
    filled = memory.fill_permission(event)
    assert (filled.title, filled.input_summary) == ("`touch x`", "touch x")


@pytest.mark.parametrize(
    "kind",
    [
        "available_commands_update",
        "usage_update",
        "plan",
        "current_mode_update",
        "config_option_update",
        "session_info_update",
        "user_message_chunk",
        "something_from_the_future",
    ],
)
def test_other_updates_are_kept_raw(kind: str) -> None:
    raw = only(normalize(decode_line(update({"sessionUpdate": kind, "x": 1}))))
    assert raw == Raw(kind=f"session/update:{kind}", payload={"sessionUpdate": kind, "x": 1})


@pytest.mark.parametrize(
    "params",
    [
        {"sessionId": SESSION},
        {"sessionId": SESSION, "update": "text"},
        {"sessionId": SESSION, "update": {"no": "kind"}},
        {"sessionId": SESSION, "update": {"sessionUpdate": "tool_call"}},
    ],
)
def test_invalid_updates_are_kept_raw(params: dict[str, Any]) -> None:
    message = Notification("session/update", params)
    assert isinstance(only(normalize(message)), Raw)


def test_agent_requests_other_notifications_and_garbage_are_raw() -> None:
    assert only(normalize(decode_line(FS_WRITE))).kind == "fs/write_text_file"
    assert only(normalize(decode_line(TERMINAL_CREATE))).kind == "terminal/create"
    exited = '{"jsonrpc":"2.0","method":"_adapter/agent_exited","params":{"code":1}}'
    assert only(normalize(decode_line(exited))) == Raw(
        kind="_adapter/agent_exited", payload={"code": 1}
    )
    garbage = only(normalize(decode_line("Warning: something on stdout")))
    assert garbage.kind == "malformed"
    assert "not JSON" in garbage.payload["reason"]


def test_turn_ended_from_prompt_answers() -> None:
    assert turn_ended({"stopReason": "end_turn"}) == TurnEnded(stop_reason="end_turn")
    answer = decode_line(PROMPT_ANSWER_023)
    assert isinstance(answer, Response)
    assert turn_ended(answer.result).stop_reason == "end_turn"
    for reason in ("cancelled", "refusal", "max_tokens", "max_turn_requests"):
        assert turn_ended({"stopReason": reason}).stop_reason == reason
    missing = turn_ended({})
    assert missing.stop_reason == "end_turn"
    assert "no stop reason" in missing.message


@given(
    st.dictionaries(
        st.sampled_from(
            ["sessionUpdate", "content", "toolCallId", "status", "title", "rawInput", "_meta"]
        ),
        json_values,
    )
)
def test_normalize_never_raises_on_any_update(body: dict[str, Any]) -> None:
    normalize(Notification("session/update", {"sessionId": SESSION, "update": body}))


def test_summaries_are_one_short_line() -> None:
    assert summarize({"command": "ls -la\n  /tmp", "description": "List"}) == "ls -la /tmp"
    assert summarize({"file_path": "/a/b.py", "content": "x" * 1000}) == "/a/b.py"
    assert summarize({"other": 1}) == '{"other":1}'
    assert summarize(None) == summarize({}) == ""
    long = summarize("word " * 100)
    assert len(long) == 200
    assert long.endswith("…")


# --- acpx --------------------------------------------------------------------------------------

# What `acpx --format json prompt` printed for a Bash call under --approve-all (both directions).
ACPX_TURN = [
    '{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":1,'
    '"clientCapabilities":{"fs":{"readTextFile":true,"writeTextFile":true},"terminal":true},'
    '"clientInfo":{"name":"acpx","version":"0.1.0"}}}',
    '{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":1,"agentCapabilities":{}}}',
    f'{{"jsonrpc":"2.0","id":1,"method":"session/load","params":{{"sessionId":"{SESSION}"}}}}',
    '{"jsonrpc":"2.0","id":1,"error":{"code":-32002,"message":"Resource not found"}}',
    '{"jsonrpc":"2.0","id":2,"method":"session/new","params":{"cwd":"/w","mcpServers":[]}}',
    f'{{"jsonrpc":"2.0","id":2,"result":{{"sessionId":"{SESSION}"}}}}',
    f'{{"jsonrpc":"2.0","id":3,"method":"session/prompt","params":{{"sessionId":"{SESSION}",'
    '"prompt":[{"type":"text","text":"[[bash]]"}]}}',
    EMPTY_CHUNK,
    TEXT_CHUNK,
    TOOL_CALL_SA,
    PERMISSION,
    '{"jsonrpc":"2.0","id":0,"result":{"outcome":{"outcome":"selected","optionId":"allow"}}}',
    FS_WRITE,
    '{"jsonrpc":"2.0","id":1,"result":{}}',
    TOOL_COMPLETED,
    '{"jsonrpc":"2.0","id":3,"result":{"stopReason":"end_turn"}}',
]


def observe(observer: AcpxObserver, lines: list[str]) -> list[Any]:
    events = []
    for line in lines:
        events.extend(observer.observe(decode_line(line)))
    return events


def test_acpx_turn_becomes_the_same_events_with_the_policy() -> None:
    observer = AcpxObserver("approve-all")
    events = observe(observer, ACPX_TURN)
    kinds = [type(event) for event in events]
    assert kinds == [
        TextDelta,
        ToolCall,
        PermissionRequested,
        PermissionResolved,
        Raw,
        ToolCall,
        TurnEnded,
    ]
    permission = events[2]
    assert permission.policy == "approve-all"
    assert events[3] == PermissionResolved(
        key="0", outcome="selected", option_id="allow", option_kind="allow_once", by="policy"
    )
    assert events[4].kind == "fs/write_text_file"
    assert events[6] == TurnEnded(stop_reason="end_turn")
    assert observer.session_id == SESSION
    assert observer.turn_ended == TurnEnded(stop_reason="end_turn")


def test_acpx_answers_are_told_apart_when_both_sides_use_the_same_id() -> None:
    observer = AcpxObserver("deny-all")
    prompt = (
        f'{{"jsonrpc":"2.0","id":2,"method":"session/prompt","params":{{"sessionId":"{SESSION}"}}}}'
    )
    agent_asks = PERMISSION.replace('"id": 0', '"id": 2')
    events = observe(
        observer,
        [
            prompt,
            agent_asks,
            '{"jsonrpc":"2.0","id":2,"result":{"outcome":{"outcome":"selected","optionId":"reject"}}}',
            '{"jsonrpc":"2.0","id":2,"result":{"stopReason":"end_turn"}}',
        ],
    )
    assert [type(event) for event in events] == [
        PermissionRequested,
        PermissionResolved,
        TurnEnded,
    ]
    assert events[1].option_kind == "reject_once"
    assert events[1].by == "policy"


def test_acpx_failures_and_its_own_lines() -> None:
    observer = AcpxObserver("approve-reads")
    events = observe(
        observer,
        [
            '{"jsonrpc":"2.0","id":3,"method":"session/prompt","params":{}}',
            '{"jsonrpc":"2.0","id":3,"error":{"code":-32603,"message":"Internal error"}}',
            '{"action":"session_ensured","created":true,"name":"t1"}',
            "[acpx] session t1 · agent connected",
            '{"jsonrpc":"2.0","method":"session/cancel","params":{"sessionId":"s"}}',
            '{"jsonrpc":"2.0","id":9,"result":{}}',
        ],
    )
    assert isinstance(events[0], ErrorEvent)
    assert "session/prompt failed: Internal error" in events[0].message
    assert events[1].stop_reason == "error"
    assert events[2] == Raw(
        kind="acpx", payload={"action": "session_ensured", "created": True, "name": "t1"}
    )
    assert events[3].kind == "malformed"
    assert events[4].kind == "response"  # an answer to nothing we saw
    assert len(events) == 5


def test_acpx_argv_puts_the_policy_and_the_agent_in_place() -> None:
    by_name = AcpxLaunch(cwd="/workspace", policy="deny-all", agent_name="claude")
    assert by_name.argv("prompt", "-s", "n", "--file", "-") == [
        "acpx",
        "--format",
        "json",
        "--deny-all",
        "--non-interactive-permissions",
        "deny",
        "--cwd",
        "/workspace",
        "claude",
        "prompt",
        "-s",
        "n",
        "--file",
        "-",
    ]
    raw = AcpxLaunch.from_config(
        AgentConfig(acp_command=("goose", "acp", "--profile", "a b")), "approve-reads", "/w"
    )
    argv = raw.argv("sessions", "new")
    assert argv[argv.index("--agent") + 1] == "goose acp --profile 'a b'"
    assert argv[-2:] == ["sessions", "new"]
    with pytest.raises(ValueError):
        AcpxLaunch(cwd="/w", policy="approve-all")
