"""The stored form of agent events: versioned tags, payloads, and what an unreadable row gives."""

from __future__ import annotations

import json
from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anycode_actors.agents.events import (
    EVENT_TAGS,
    AgentEvent,
    EndReason,
    ErrorEvent,
    PermissionOption,
    PermissionRequested,
    PermissionResolved,
    Raw,
    ResolvedBy,
    SessionEnded,
    TextDelta,
    ThoughtDelta,
    ToolCall,
    TurnEnded,
    UnknownEvent,
    from_record,
    to_record,
)

# Every kind, with the tag and payload it is stored as. These rows are in databases already:
# a change here needs a new tag version (or a migration), not an edit of the expectation.
GOLDEN: list[tuple[AgentEvent, str, dict[str, Any]]] = [
    (TextDelta(seq=1, cursor="c-1", text="Hi"), "text_delta/1", {"text": "Hi", "cursor": "c-1"}),
    (ThoughtDelta(seq=2, text="hmm"), "thought_delta/1", {"text": "hmm"}),
    (
        ToolCall(seq=3, tool_call_id="t1", phase="started", title="Run ls", kind="execute"),
        "tool_call/1",
        {"tool_call_id": "t1", "phase": "started", "title": "Run ls", "kind": "execute"},
    ),
    (
        ToolCall(
            seq=4,
            tool_call_id="t1",
            phase="completed",
            status="failed",
            input_summary="ls",
            tool_name="Bash",
            output_summary="denied",
        ),
        "tool_call/1",
        {
            "tool_call_id": "t1",
            "phase": "completed",
            "status": "failed",
            "tool_name": "Bash",
            "input_summary": "ls",
            "output_summary": "denied",
        },
    ),
    (
        PermissionRequested(
            seq=5,
            key="0",
            request_id=0,
            tool_call_id="t2",
            title="Write x",
            input_summary="x",
            options=(PermissionOption("ok", "Allow", "allow_once"),),
        ),
        "permission_requested/1",
        {
            "key": "0",
            "request_id": 0,
            "tool_call_id": "t2",
            "title": "Write x",
            "input_summary": "x",
            "options": [{"option_id": "ok", "name": "Allow", "kind": "allow_once"}],
        },
    ),
    (
        PermissionRequested(
            seq=6,
            key='"p"',
            request_id="p",
            tool_call_id=None,
            title=None,
            input_summary="",
            options=(),
            policy="deny-all",
        ),
        "permission_requested/1",
        {
            "key": '"p"',
            "request_id": "p",
            "tool_call_id": None,
            "title": None,
            "input_summary": "",
            "options": [],
            "policy": "deny-all",
        },
    ),
    (
        PermissionResolved(seq=7, key="0", outcome="selected", option_id="ok", option_kind="x"),
        "permission_resolved/1",
        {"key": "0", "outcome": "selected", "by": "user", "option_id": "ok", "option_kind": "x"},
    ),
    (
        PermissionResolved(seq=8, key="1", outcome="cancelled", by="cancel"),
        "permission_resolved/1",
        {"key": "1", "outcome": "cancelled", "by": "cancel"},
    ),
    (TurnEnded(seq=9, stop_reason="end_turn"), "turn_ended/1", {"stop_reason": "end_turn"}),
    (
        TurnEnded(seq=10, stop_reason="error", message="failed"),
        "turn_ended/1",
        {"stop_reason": "error", "message": "failed"},
    ),
    (
        ErrorEvent(seq=11, message="boom", code=-1, details="d"),
        "error/1",
        {"message": "boom", "code": -1, "details": "d"},
    ),
    (ErrorEvent(seq=12, message=""), "error/1", {"message": ""}),
    (
        SessionEnded(seq=13, reason="agent_exited", message="exit 1"),
        "session_ended/1",
        {"reason": "agent_exited", "message": "exit 1"},
    ),
    (
        Raw(seq=14, kind="session/update:plan", payload={"entries": [1]}),
        "raw/1",
        {"kind": "session/update:plan", "payload": {"entries": [1]}},
    ),
    (Raw(seq=15, kind="malformed", payload=None), "raw/1", {"kind": "malformed", "payload": None}),
]


@pytest.mark.parametrize(("event", "tag", "payload"), GOLDEN)
def test_each_kind_is_stored_under_its_tag_and_read_back(
    event: AgentEvent, tag: str, payload: dict[str, Any]
) -> None:
    assert to_record(event) == (tag, payload)
    assert from_record(tag, payload, seq=event.seq) == event


def test_every_kind_of_agent_event_has_a_tag_of_its_own() -> None:
    kinds = {type(event) for event, _tag, _payload in GOLDEN}
    assert kinds == set(get_args(AgentEvent))
    tags = {tag for _event, tag, _payload in GOLDEN}
    assert tags == EVENT_TAGS
    assert len({(type(event), tag) for event, tag, _payload in GOLDEN}) == len(EVENT_TAGS)
    for tag in EVENT_TAGS:
        name, version = tag.split("/")
        assert name.islower() and version.isdigit()


# --- every event survives the store's JSON -------------------------------------------------------

texts = st.text(max_size=20)
maybe_texts = st.none() | texts
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
envelope: dict[str, Any] = {"seq": st.integers(min_value=1, max_value=2**40), "cursor": maybe_texts}
options = st.builds(PermissionOption, texts, texts, texts)
events: st.SearchStrategy[AgentEvent] = st.one_of(
    st.builds(TextDelta, text=texts, **envelope),
    st.builds(ThoughtDelta, text=texts, **envelope),
    st.builds(
        ToolCall,
        tool_call_id=texts,
        phase=st.sampled_from(["started", "updated", "completed"]),
        status=maybe_texts,
        title=maybe_texts,
        kind=maybe_texts,
        input_summary=texts,
        tool_name=maybe_texts,
        output_summary=texts,
        **envelope,
    ),
    st.builds(
        PermissionRequested,
        key=texts,
        request_id=st.integers() | texts,
        tool_call_id=maybe_texts,
        title=maybe_texts,
        input_summary=texts,
        options=st.lists(options, max_size=4).map(tuple),
        policy=maybe_texts,
        **envelope,
    ),
    st.builds(
        PermissionResolved,
        key=texts,
        outcome=st.sampled_from(["selected", "cancelled"]),
        option_id=maybe_texts,
        option_kind=maybe_texts,
        by=st.sampled_from(get_args(ResolvedBy)),
        **envelope,
    ),
    st.builds(TurnEnded, stop_reason=texts, message=texts, **envelope),
    st.builds(ErrorEvent, message=texts, code=st.none() | st.integers(), details=texts, **envelope),
    st.builds(SessionEnded, reason=st.sampled_from(get_args(EndReason)), message=texts, **envelope),
    st.builds(Raw, kind=texts, payload=json_values, **envelope),
)


@settings(max_examples=300, deadline=None)
@given(event=events)
def test_any_event_reads_back_equal_after_the_stores_json(event: AgentEvent) -> None:
    tag, payload = to_record(event)
    assert tag in EVENT_TAGS and "seq" not in payload
    stored = json.loads(json.dumps(payload, ensure_ascii=False, separators=(",", ":")))
    assert from_record(tag, stored, seq=event.seq) == event


@settings(max_examples=300, deadline=None)
@given(tag=st.sampled_from(sorted(EVENT_TAGS)) | texts, payload=json_values)
def test_reading_any_row_never_raises(tag: str, payload: Any) -> None:
    event = from_record(tag, payload, seq=3)
    assert event.seq == 3
    if isinstance(event, UnknownEvent):
        assert (event.tag, event.payload) == (tag, payload) and event.reason


# --- rows this code cannot read --------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "payload", "reason"),
    [
        ("plan/1", {"entries": []}, "unknown tag 'plan/1'"),
        ("turn_ended/2", {"stop_reason": "end_turn"}, "unknown tag 'turn_ended/2'"),
        # A class name is not a tag: the migration to schema 5 renamed those rows.
        ("TurnEnded", {"stop_reason": "end_turn"}, "unknown tag 'TurnEnded'"),
        ("text_delta/1", ["a"], "text_delta/1: the payload is not a JSON object"),
        ("text_delta/1", {}, "text_delta/1: no 'text'"),
        ("text_delta/1", {"text": "a", "cursor": 5}, "text_delta/1: 'cursor' is neither"),
        ("tool_call/1", {"tool_call_id": "t", "phase": "paused"}, "tool_call/1: 'phase' is not"),
        ("error/1", {"message": "m", "code": True}, "error/1: 'code' is neither an integer"),
        (
            "permission_requested/1",
            {"key": "1", "request_id": 1, "tool_call_id": None, "title": None},
            "permission_requested/1: no 'input_summary'",
        ),
        (
            "permission_requested/1",
            {
                "key": "1",
                "request_id": 1.5,
                "tool_call_id": None,
                "title": None,
                "input_summary": "",
                "options": [],
            },
            "permission_requested/1: 'request_id' is not a JSON-RPC id",
        ),
        (
            "permission_requested/1",
            {
                "key": "1",
                "request_id": 1,
                "tool_call_id": None,
                "title": None,
                "input_summary": "",
                "options": ["allow"],
            },
            "permission_requested/1: an item of 'options' is not an object",
        ),
        ("session_ended/1", {"reason": "exploded"}, "session_ended/1: 'reason' is not one of"),
    ],
)
def test_a_row_that_cannot_be_read_is_an_unknown_event_that_says_why(
    tag: str, payload: Any, reason: str
) -> None:
    event = from_record(tag, payload, seq=9)
    assert isinstance(event, UnknownEvent)
    assert (event.seq, event.tag, event.payload) == (9, tag, payload)
    assert event.reason.startswith(reason)


def test_an_unknown_event_keeps_the_cursor_of_its_row() -> None:
    event = from_record("plan/1", {"cursor": "c-9"}, seq=9)
    assert isinstance(event, UnknownEvent) and event.cursor == "c-9"
    assert from_record("plan/1", {"cursor": 9}).cursor is None


def test_fields_a_reader_does_not_know_are_passed_over() -> None:
    assert from_record("text_delta/1", {"text": "a", "language": "en"}, seq=1) == TextDelta(
        seq=1, text="a"
    )
