"""The SSE parser (anycode_actors/agents/sse.py) against the event stream interpretation of
https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from anycode_actors.agents.sse import SseEvent, SseParser


def parse(*chunks: bytes) -> list[SseEvent]:
    parser = SseParser()
    return [event for chunk in chunks for event in parser.feed(chunk)]


def test_an_event_is_dispatched_by_a_blank_line() -> None:
    assert parse(b"id: 1\ndata: hello\n\n") == [SseEvent("hello", id="1")]
    assert parse(b"data: hello\n") == []  # no blank line yet


def test_lf_crlf_and_cr_all_end_lines() -> None:
    expected = [SseEvent("a", id="1"), SseEvent("b", id="2"), SseEvent("c", id="3")]
    assert parse(b"id: 1\ndata: a\n\nid: 2\r\ndata: b\r\n\r\nid: 3\rdata: c\r\r") == expected


def test_a_crlf_split_between_chunks_is_one_line_end() -> None:
    # Read as two line ends, the LF would be a blank line dispatching "a" alone.
    assert parse(b"data: a\r", b"\ndata: b\r\n\r\n") == [SseEvent("a\nb")]
    # A CR at the end of a chunk ends its line even when no LF follows.
    assert parse(b"data: a\r", b"\rdata: b\n\n") == [SseEvent("a"), SseEvent("b")]
    assert parse(b"data: a\r", b"", b"\n", b"\n") == [SseEvent("a")]


def test_data_lines_are_joined_with_lf() -> None:
    assert parse(b"data: one\ndata: two\ndata:\n\n") == [SseEvent("one\ntwo\n")]
    assert parse(b"data:\n\n") == [SseEvent("")]


def test_only_one_space_after_the_colon_is_dropped() -> None:
    assert parse(b"data:x\n\ndata: x\n\ndata:  x\n\n") == [
        SseEvent("x"),
        SseEvent("x"),
        SseEvent(" x"),
    ]
    assert parse(b"data: a: b\n\n") == [SseEvent("a: b")]


def test_a_field_without_a_colon_has_an_empty_value() -> None:
    assert parse(b"data\ndata\n\n") == [SseEvent("\n")]


def test_comments_and_unknown_fields_are_ignored() -> None:
    assert parse(b": heartbeat\n\n:\n\n") == []
    assert parse(b"foo: bar\ndata: x\nDATA: y\n: note\n\n") == [SseEvent("x")]
    assert parse(b"foo: bar\n\n") == []  # nothing but an unknown field: no event


def test_the_id_lasts_until_another_sets_it() -> None:
    events = parse(b"id: 7\ndata: a\n\ndata: b\n\nid\ndata: c\n\n")
    assert [(e.data, e.id) for e in events] == [("a", "7"), ("b", "7"), ("c", "")]
    assert parse(b"data: a\n\n") == [SseEvent("a", id=None)]


def test_an_id_holding_null_is_ignored() -> None:
    events = parse(b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n")
    assert [e.id for e in events] == ["1", "1"]


def test_an_id_alone_still_moves_the_position() -> None:
    assert parse(b"id: 4\n\n") == [SseEvent("", id="4")]


def test_retry_is_taken_only_when_all_ascii_digits() -> None:
    events = parse(b"retry: 1500\ndata: a\n\nretry: 15s\ndata: b\n\nretry: \xc2\xb2\ndata: c\n\n")
    assert [e.retry for e in events] == [1500, None, None]


def test_the_event_type() -> None:
    events = parse(b"event: ping\ndata: a\n\ndata: b\n\n")
    assert [(e.event, e.data) for e in events] == [("ping", "a"), ("message", "b")]


def test_one_leading_byte_order_mark_is_dropped() -> None:
    bom = "\ufeff".encode()
    assert parse(bom + b"data: a\n\n") == [SseEvent("a")]
    assert parse(bom[:1], bom[1:] + b"data: a\n\n") == [SseEvent("a")]
    # Only the first: a second one is part of the line (here, of a field name nobody knows).
    assert parse(bom + bom + b"data: a\n\n") == []
    assert parse(b"data: " + bom + b"a\n\n") == [SseEvent("\ufeffa")]


def test_utf8_split_between_chunks_and_invalid_bytes() -> None:
    text = "data: é→😀\n\n".encode()
    assert parse(*(text[i : i + 1] for i in range(len(text)))) == [SseEvent("é→😀")]
    assert parse(b"data: a\xffb\n\n") == [SseEvent("a\ufffdb")]


def test_an_event_cut_off_by_the_end_of_the_stream_is_dropped() -> None:
    assert parse(b"data: a\n\ndata: b\n") == [SseEvent("a")]


STREAM = (
    '\ufeff: hello\r\nretry: 10\r\nid: 1\r\ndata: {"a": 1}\r\n\r\n'
    "event: x\rdata: line one\rdata: line two\r\r"
    "id: 3\ndata: é😀\n\n: bye\n\nid: 4\n\n"
).encode()


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_the_same_events_however_the_stream_is_cut(cuts: list[int]) -> None:
    points = [0, *sorted(cuts), len(STREAM)]
    chunks = [STREAM[a:b] for a, b in itertools.pairwise(points)]
    assert parse(*chunks) == [
        SseEvent('{"a": 1}', id="1", retry=10),
        SseEvent("line one\nline two", event="x", id="1"),
        SseEvent("é😀", id="3"),
        SseEvent("", id="4"),
    ]
