"""Events (the per-session audit trail and replay source) and interactions (questions and
permission requests waiting for a human) in the store."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from anycode_actors.agents.events import (
    AgentEvent,
    ErrorEvent,
    PermissionOption,
    PermissionRequested,
    PermissionResolved,
    Raw,
    SessionEnded,
    TextDelta,
    ThoughtDelta,
    ToolCall,
    TurnEnded,
    UnknownEvent,
)
from anycode_actors.store import (
    InteractionKind,
    InteractionOption,
    InteractionStatus,
    Session,
    Store,
    UnknownInteraction,
    UnknownSession,
)

TELEGRAM_CALLBACK_DATA_LIMIT = 64


@pytest.fixture(params=["file", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    path = tmp_path / "store.db" if request.param == "file" else ":memory:"
    async with Store.open(path) as opened:
        yield opened


async def new_session(store: Store) -> Session:
    return await store.create_session(
        platform="telegram", chat="100", user="u1", agent="claude", prompt="fix it"
    )


# --- events ---


def delta(seq: int, text: str = "x") -> TextDelta:
    return TextDelta(seq=seq, text=text)


async def test_a_duplicate_seq_is_ignored_and_the_first_copy_kept(store: Store) -> None:
    session = await new_session(store)
    assert await store.append_event(session.id, delta(1, "hello"))
    assert not await store.append_event(session.id, delta(1, "replayed"))
    events = await store.events(session.id)
    assert [(e.seq, e.event) for e in events] == [(1, delta(1, "hello"))]
    assert events[0].session_id == session.id


async def test_last_event_seq_follows_the_highest_stored_seq(store: Store) -> None:
    session = await new_session(store)
    assert await store.last_seq(session.id) == 0
    await store.append_event(session.id, delta(1))
    await store.append_event(session.id, delta(3))
    await store.append_event(session.id, delta(2))  # late, must not move it back
    assert await store.last_seq(session.id) == 3
    stored = await store.get_session(session.id)
    assert stored is not None and stored.last_event_seq == 3
    assert stored.updated_at > session.updated_at


async def test_events_appended_together_are_stored_like_one_by_one(store: Store) -> None:
    session = await new_session(store)
    assert await store.append_event(session.id, delta(2, "first"))
    stored = await store.append_events(
        session.id, [delta(1, "a"), delta(2, "repeat"), delta(4, "c"), delta(3, "b")]
    )
    assert stored == [True, False, True, True]
    assert await store.append_events(session.id, []) == []
    events = await store.events(session.id)
    assert [e.event for e in events] == [
        delta(1, "a"),
        delta(2, "first"),
        delta(3, "b"),
        delta(4, "c"),
    ]
    assert await store.last_seq(session.id) == 4
    assert await store.append_events(session.id, [delta(4, "again")]) == [False]
    assert await store.last_seq(session.id) == 4
    with pytest.raises(ValueError):
        await store.append_events(session.id, [delta(5), delta(0)])
    assert await store.last_seq(session.id) == 4  # nothing of a refused batch is stored


async def test_a_seq_twice_in_one_batch_keeps_the_first_and_other_sessions_do_not_count(
    store: Store,
) -> None:
    session, other = await new_session(store), await new_session(store)
    await store.append_events(other.id, [delta(1, "other"), delta(2, "other")])
    stored = await store.append_events(
        session.id, [delta(1, "a"), delta(2, "b"), delta(1, "again"), delta(3, "c")]
    )
    assert stored == [True, True, False, True]
    assert [e.event for e in await store.events(session.id)] == [
        delta(1, "a"),
        delta(2, "b"),
        delta(3, "c"),
    ]
    assert await store.last_seq(other.id) == 2
    # A batch of repeats only stores nothing and leaves the session's row alone.
    before = await store.get_session(session.id)
    assert await store.append_events(session.id, [delta(2, "x"), delta(1, "y")]) == [False, False]
    assert await store.get_session(session.id) == before


async def test_events_after_a_seq_come_in_seq_order_per_session(store: Store) -> None:
    one, two = await new_session(store), await new_session(store)
    for seq in (4, 1, 3, 2, 5):
        await store.append_event(one.id, delta(seq, str(seq)))
    await store.append_event(two.id, delta(1, "other"))
    assert [e.seq for e in await store.events(one.id)] == [1, 2, 3, 4, 5]
    assert [e.seq for e in await store.events(one.id, after_seq=2)] == [3, 4, 5]
    assert [e.seq for e in await store.events(one.id, after_seq=2, limit=2)] == [3, 4]
    assert await store.events(one.id, after_seq=5) == []
    assert [e.event for e in await store.events(two.id)] == [delta(1, "other")]


EVERY_KIND: list[AgentEvent] = [
    TextDelta(text="héllo ✓ 日本", cursor="c-1"),
    ThoughtDelta(text="thinking"),
    ToolCall(tool_call_id="t1", phase="started", title="Run ls", kind="execute"),
    ToolCall(
        tool_call_id="t1",
        phase="completed",
        status="failed",
        input_summary="ls",
        tool_name="Bash",
        output_summary="no such file",
    ),
    PermissionRequested(
        key='"a-1"',
        request_id="a-1",
        tool_call_id=None,
        title=None,
        input_summary="",
        options=(PermissionOption("ok", "Allow", "allow_once"),),
        policy="approve-all",
    ),
    PermissionResolved(key="7", outcome="selected", option_id="ok", option_kind="allow_once"),
    PermissionResolved(key="8", outcome="cancelled", by="cancel"),
    TurnEnded(stop_reason="error", message="the prompt failed"),
    ErrorEvent(message="rate limited", code=-32000, details="retry later"),
    SessionEnded(reason="connection_lost", message="gone"),
    Raw(kind="session/update:plan", payload={"nested": {"list": [1, 2.5, None, True]}, "n": 2**40}),
    Raw(kind="malformed", payload=None),
]


async def test_every_kind_of_event_reads_back_equal(store: Store) -> None:
    session = await new_session(store)
    stored = [replace(event, seq=seq) for seq, event in enumerate(EVERY_KIND, start=1)]
    for event in stored:
        assert await store.append_event(session.id, event)
    assert [e.event for e in await store.events(session.id)] == stored


async def test_a_row_this_code_cannot_read_comes_back_as_an_unknown_event(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    async with Store.open(path) as store:
        session = await new_session(store)
        await store.append_event(session.id, delta(1, "before"))
        with closing(sqlite3.connect(path, isolation_level=None)) as other:
            # What a newer version might write: a tag this one does not know, a payload that
            # does not fit a known tag, and (a damaged file) text that is not JSON.
            other.executemany(
                "INSERT INTO events (session_id, seq, type, payload, created_at)"
                " VALUES (?, ?, ?, ?, '2026-01-01T00:00:00.000000+00:00')",
                [
                    (session.id, 2, "plan/1", '{"steps":["a"],"cursor":"c-2"}'),
                    (session.id, 3, "turn_ended/1", '{"stop_reason":7}'),
                    (session.id, 4, "text_delta/1", "{not json"),
                ],
            )
        await store.append_event(session.id, delta(5, "after"))
        events = [e.event for e in await store.events(session.id)]
    assert events[0] == delta(1, "before") and events[4] == delta(5, "after")
    plan, unfit, broken = events[1:4]
    assert plan == UnknownEvent(
        seq=2,
        cursor="c-2",
        tag="plan/1",
        payload={"steps": ["a"], "cursor": "c-2"},
        reason="unknown tag 'plan/1'",
    )
    assert isinstance(unfit, UnknownEvent) and unfit.seq == 3
    assert unfit.reason == "turn_ended/1: 'stop_reason' is not a string"
    assert isinstance(broken, UnknownEvent) and broken.seq == 4
    assert (broken.payload, broken.reason.startswith("not JSON")) == ("{not json", True)


async def test_bad_events_are_refused(store: Store) -> None:
    session = await new_session(store)
    with pytest.raises(ValueError):
        await store.append_event(session.id, delta(0))
    with pytest.raises(UnknownSession):
        await store.append_event("missing", delta(1))
    with pytest.raises(UnknownSession):
        await store.last_seq("missing")
    with pytest.raises(TypeError):
        await store.append_event(session.id, Raw(seq=1, kind="x", payload={"no": object()}))
    assert await store.events(session.id) == []


@settings(max_examples=60, deadline=None)
@given(seqs=st.lists(st.integers(min_value=1, max_value=30), max_size=40))
async def test_any_delivery_order_stores_each_seq_once(seqs: list[int]) -> None:
    async with Store.open(":memory:") as store:
        session = await new_session(store)
        inserted = [
            await store.append_event(session.id, delta(s, str(i))) for i, s in enumerate(seqs)
        ]
        first_index = {s: seqs.index(s) for s in seqs}
        assert inserted == [first_index[s] == i for i, s in enumerate(seqs)]
        events = await store.events(session.id)
        assert [e.seq for e in events] == sorted(set(seqs))
        assert all(e.event == delta(e.seq, str(first_index[e.seq])) for e in events)
        assert await store.last_seq(session.id) == max(seqs, default=0)


async def test_concurrent_duplicate_deliveries_insert_once(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with Store.open(path) as a, Store.open(path) as b:
        session = await new_session(a)
        wins: list[bool] = []

        async def deliver(store: Store, seq: int) -> None:
            wins.append(await store.append_event(session.id, delta(seq)))

        async with trio.open_nursery() as nursery:
            for seq in range(1, 21):
                for store in (a, b, a, b):
                    nursery.start_soon(deliver, store, seq)
        assert wins.count(True) == 20 and len(wins) == 80
        assert [e.seq for e in await b.events(session.id)] == list(range(1, 21))
        assert await a.last_seq(session.id) == 20


# --- interactions ---

OPTIONS = (
    InteractionOption("allow-once", "Allow", "allow_once"),
    InteractionOption("reject-once", "Deny", "reject_once"),
)


async def test_an_interaction_round_trips(store: Store) -> None:
    session = await new_session(store)
    created = await store.create_interaction(
        session.id,
        InteractionKind.PERMISSION,
        request_id="req-7",
        tool_call_id="call-3",
        options=OPTIONS,
    )
    assert created == await store.get_interaction(created.id)
    assert created.session_id == session.id and created.kind is InteractionKind.PERMISSION
    assert (created.request_id, created.tool_call_id) == ("req-7", "call-3")
    assert created.options == OPTIONS
    assert created.status is InteractionStatus.PENDING
    assert created.chat_message_id is created.answer is created.resolved_by is None
    assert created.resolved_at is None
    await store.set_interaction_message(created.id, "5501")
    shown = await store.get_interaction(created.id)
    assert shown is not None and shown.chat_message_id == "5501"
    question = await store.create_interaction(session.id, "question")
    assert question.options == () and question.kind is InteractionKind.QUESTION


async def test_unknown_interactions(store: Store) -> None:
    assert await store.get_interaction("nope") is None
    assert not await store.resolve_interaction("nope", answer="x", resolved_by="u")
    with pytest.raises(UnknownInteraction):
        await store.set_interaction_message("nope", "1")
    with pytest.raises(UnknownSession):
        await store.create_interaction("missing", "question")
    with pytest.raises(ValueError):
        await store.create_interaction((await new_session(store)).id, "poll")


async def test_resolve_is_compare_and_set(store: Store) -> None:
    session = await new_session(store)
    interaction = await store.create_interaction(session.id, "permission", options=OPTIONS)
    assert await store.resolve_interaction(interaction.id, answer="allow-once", resolved_by="u1")
    assert not await store.resolve_interaction(
        interaction.id, answer="reject-once", resolved_by="u2"
    )
    resolved = await store.get_interaction(interaction.id)
    assert resolved is not None and resolved.status is InteractionStatus.RESOLVED
    assert (resolved.answer, resolved.resolved_by) == ("allow-once", "u1")
    assert resolved.resolved_at is not None and resolved.resolved_at >= resolved.created_at


async def test_two_stores_pressing_one_button_resolve_it_once(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with Store.open(path) as a, Store.open(path) as b:
        session = await new_session(a)
        interaction = await a.create_interaction(session.id, "question")
        winners: list[str] = []

        async def press(store: Store, who: str) -> None:
            if await store.resolve_interaction(interaction.id, answer=who, resolved_by=who):
                winners.append(who)

        async with trio.open_nursery() as nursery:
            for i in range(30):
                nursery.start_soon(press, (a, b)[i % 2], f"user{i}")
        assert len(winners) == 1
        stored = await b.get_interaction(interaction.id)
        assert stored is not None and stored.answer == winners[0]


async def test_interaction_ids_are_short_unique_and_fit_callback_data(store: Store) -> None:
    session = await new_session(store)
    ids = [(await store.create_interaction(session.id, "permission")).id for _ in range(300)]
    assert len(set(ids)) == len(ids)
    for interaction_id in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{8,12}", interaction_id)
        # Room for any short prefix and an option index in Telegram's 64 bytes.
        assert len(f"perm:{interaction_id}:99".encode()) <= TELEGRAM_CALLBACK_DATA_LIMIT
        assert len(f"question:{interaction_id}:option-12345".encode()) <= 64


async def test_unresolved_interactions_are_the_pending_ones_oldest_first(store: Store) -> None:
    session, other = await new_session(store), await new_session(store)
    first = await store.create_interaction(session.id, "question")
    answered = await store.create_interaction(session.id, "permission")
    third = await store.create_interaction(session.id, "permission", options=OPTIONS)
    await store.create_interaction(other.id, "question")
    assert await store.resolve_interaction(answered.id, answer="yes", resolved_by="u1")
    pending = await store.unresolved_interactions(session.id)
    assert [i.id for i in pending] == [first.id, third.id]


async def test_cancel_pending_returns_what_it_cancelled(store: Store) -> None:
    session, other = await new_session(store), await new_session(store)
    first = await store.create_interaction(session.id, "question")
    answered = await store.create_interaction(session.id, "permission")
    last = await store.create_interaction(session.id, "permission", request_id="r9")
    untouched = await store.create_interaction(other.id, "question")
    await store.resolve_interaction(answered.id, answer="yes", resolved_by="u1")

    cancelled = await store.cancel_pending_interactions(session.id)
    assert [i.id for i in cancelled] == [first.id, last.id]
    assert all(i.status is InteractionStatus.CANCELLED for i in cancelled)
    assert all(i.resolved_at is not None for i in cancelled)
    assert cancelled[1].request_id == "r9"
    assert await store.unresolved_interactions(session.id) == []
    assert not await store.resolve_interaction(first.id, answer="late", resolved_by="u1")
    assert await store.cancel_pending_interactions(session.id) == []
    still = await store.get_interaction(untouched.id)
    assert still is not None and still.status is InteractionStatus.PENDING
    kept = await store.get_interaction(answered.id)
    assert kept is not None and kept.status is InteractionStatus.RESOLVED
