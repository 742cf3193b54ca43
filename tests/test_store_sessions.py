"""Sessions in the store: records, the status state machine, and the queries the actors use."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anycode_actors.store import (
    ALLOWED_TRANSITIONS,
    TERMINAL_STATUSES,
    AmbiguousSessionPrefix,
    InvalidTransition,
    Session,
    SessionStatus,
    Store,
    StoreClosed,
    UnknownSession,
)

S = SessionStatus
ALL = list(SessionStatus)
ALLOWED = [(a, b) for a, targets in ALLOWED_TRANSITIONS.items() for b in targets]
FORBIDDEN = [(a, b) for a in ALL for b in ALL if (a, b) not in ALLOWED]
PATH_TO = {
    S.PENDING: [],
    S.STARTING: [S.STARTING],
    S.RUNNING: [S.STARTING, S.RUNNING],
    S.COMPLETED: [S.STARTING, S.RUNNING, S.COMPLETED],
    S.FAILED: [S.STARTING, S.FAILED],
    S.CANCELLED: [S.STARTING, S.RUNNING, S.CANCELLED],
}


@pytest.fixture(params=["file", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    path = tmp_path / "store.db" if request.param == "file" else ":memory:"
    async with Store.open(path) as opened:
        yield opened


async def new_session(store: Store, chat: str = "100", platform: str = "telegram") -> Session:
    return await store.create_session(
        platform=platform, chat=chat, user="u1", agent="claude", prompt="fix the login bug"
    )


async def session_in(store: Store, status: SessionStatus, chat: str = "100") -> Session:
    session = await new_session(store, chat)
    for step in PATH_TO[status]:
        assert await store.transition(session.id, step)
    got = await store.get_session(session.id)
    assert got is not None and got.status is status
    return got


async def test_create_then_get_returns_the_same_frozen_record(store: Store) -> None:
    created = await store.create_session(
        platform="slack",
        chat="C42",
        thread="1700000000.000100",
        user="U7",
        agent="codex",
        prompt="add tests",
        repo="org/repo",
    )
    assert created == await store.get_session(created.id)
    assert (created.platform, created.chat, created.thread) == ("slack", "C42", "1700000000.000100")
    assert (created.user, created.agent, created.prompt, created.repo) == (
        "U7",
        "codex",
        "add tests",
        "org/repo",
    )
    assert created.status is S.PENDING and not created.is_terminal
    assert created.last_event_seq == 0
    assert created.sandbox_id is created.agent_endpoint is created.agent_session_id is None
    assert created.reason is None and created.ended_at is None
    assert created.created_at == created.updated_at
    assert created.created_at.tzinfo is UTC
    assert len(created.id) == 32 and int(created.id, 16) >= 0
    with pytest.raises(AttributeError):
        created.status = S.RUNNING  # type: ignore[misc]


async def test_get_unknown_session_is_none(store: Store) -> None:
    assert await store.get_session("nope") is None


@pytest.mark.parametrize("narrowed", [True, False], ids=["expected_from", "any_from"])
@pytest.mark.parametrize(("frm", "to"), ALLOWED, ids=[f"{a}->{b}" for a, b in ALLOWED])
async def test_each_allowed_transition_wins(
    store: Store, frm: SessionStatus, to: SessionStatus, narrowed: bool
) -> None:
    session = await session_in(store, frm)
    assert await store.transition(session.id, to, frm if narrowed else None)
    after = await store.get_session(session.id)
    assert after is not None and after.status is to
    assert after.updated_at >= session.updated_at
    assert (after.ended_at is not None) == to.is_terminal


@pytest.mark.parametrize(("frm", "to"), FORBIDDEN, ids=[f"{a}->{b}" for a, b in FORBIDDEN])
async def test_each_forbidden_transition_loses_and_changes_nothing(
    store: Store, frm: SessionStatus, to: SessionStatus
) -> None:
    session = await session_in(store, frm)
    if to is S.PENDING:  # nothing ever moves back to pending
        with pytest.raises(InvalidTransition):
            await store.transition(session.id, to)
    else:
        assert not await store.transition(session.id, to, reason="should not stick")
    with pytest.raises(InvalidTransition):  # the pair itself is a caller bug
        await store.transition(session.id, to, expected_from=frm)
    assert await store.get_session(session.id) == session


@pytest.mark.parametrize("terminal", sorted(TERMINAL_STATUSES))
async def test_a_terminal_status_is_never_overwritten(
    store: Store, terminal: SessionStatus
) -> None:
    session = await session_in(store, terminal)
    for to in ALL:
        if to is S.PENDING:
            continue
        assert not await store.transition(session.id, to, reason="late writer")
        for frm in ALL:
            if (frm, to) in ALLOWED and frm is not terminal:
                assert not await store.transition(session.id, to, expected_from=frm)
    assert await store.get_session(session.id) == session


async def test_expected_from_must_match_the_stored_status(store: Store) -> None:
    session = await session_in(store, S.STARTING)
    assert not await store.transition(session.id, S.CANCELLED, expected_from=S.PENDING)
    assert not await store.transition(session.id, S.FAILED, expected_from=S.RUNNING)
    assert await store.transition(session.id, S.CANCELLED, expected_from=S.STARTING)


async def test_only_the_winner_writes_its_reason_and_end_time(store: Store) -> None:
    session = await session_in(store, S.RUNNING)
    assert await store.transition(session.id, S.FAILED, reason="sandbox died")
    first = await store.get_session(session.id)
    assert not await store.transition(session.id, S.CANCELLED, reason="user cancelled")
    second = await store.get_session(session.id)
    assert first is not None and second == first
    assert first.reason == "sandbox died" and first.ended_at is not None
    assert first.ended_at == first.updated_at


async def test_statuses_are_accepted_as_plain_strings(store: Store) -> None:
    session = await new_session(store)
    assert await store.transition(session.id, "starting", "pending")
    with pytest.raises(ValueError):
        await store.transition(session.id, "exploded")


async def test_transition_of_an_unknown_session_raises(store: Store) -> None:
    with pytest.raises(UnknownSession):
        await store.transition("missing", S.FAILED)


steps = st.lists(st.tuples(st.sampled_from(ALL), st.none() | st.sampled_from(ALL)), max_size=12)


@settings(max_examples=150, deadline=None)
@given(steps=steps)
async def test_random_transition_sequences_follow_the_state_machine(
    steps: list[tuple[SessionStatus, SessionStatus | None]],
) -> None:
    async with Store.open(":memory:") as store:
        session = await new_session(store)
        model = S.PENDING
        for to, frm in steps:
            sources = [a for a, targets in ALLOWED_TRANSITIONS.items() if to in targets]
            if (frm is None and not sources) or (frm is not None and frm not in sources):
                with pytest.raises(InvalidTransition):
                    await store.transition(session.id, to, frm)
                continue
            should_win = to in ALLOWED_TRANSITIONS[model] and frm in (None, model)
            assert await store.transition(session.id, to, frm) is should_win
            was_terminal = model.is_terminal
            model = to if should_win else model
            assert not (was_terminal and should_win)
            stored = await store.get_session(session.id)
            assert stored is not None and stored.status is model


async def test_the_database_itself_refuses_to_leave_a_terminal_status(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with Store.open(path) as store:
        session = await session_in(store, S.COMPLETED)
    raw = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="forbidden session status transition"):
            raw.execute("UPDATE sessions SET status = 'running' WHERE id = ?", (session.id,))
        raw.execute("UPDATE sessions SET reason = 'edited' WHERE id = ?", (session.id,))
    finally:
        raw.close()


async def test_sandbox_and_agent_session_are_recorded(store: Store) -> None:
    session = await new_session(store)
    await store.set_sandbox(session.id, "anycode-1a2b", "http://127.0.0.1:30001")
    await store.set_agent_session_id(session.id, "agent-session-9")
    got = await store.get_session(session.id)
    assert got is not None
    assert (got.sandbox_id, got.agent_endpoint) == ("anycode-1a2b", "http://127.0.0.1:30001")
    assert got.agent_session_id == "agent-session-9"
    assert got.updated_at >= session.updated_at and got.status is S.PENDING
    with pytest.raises(UnknownSession):
        await store.set_sandbox("missing", "x", "y")
    with pytest.raises(UnknownSession):
        await store.set_agent_session_id("missing", "x")


async def test_active_sessions_are_the_non_terminal_ones_newest_first(store: Store) -> None:
    pending = await session_in(store, S.PENDING)
    await session_in(store, S.COMPLETED)
    running = await session_in(store, S.RUNNING)
    await session_in(store, S.FAILED)
    starting = await session_in(store, S.STARTING, chat="200")
    slack = await store.create_session(
        platform="slack", chat="100", user="U1", agent="claude", prompt="p"
    )
    everything = await store.active_sessions()
    assert [s.id for s in everything] == [slack.id, starting.id, running.id, pending.id]
    telegram = await store.active_sessions("telegram")
    assert [s.id for s in telegram] == [starting.id, running.id, pending.id]
    chat = await store.active_sessions("telegram", "100")
    assert [s.id for s in chat] == [running.id, pending.id]
    assert await store.count_active("telegram", "100") == 2
    assert await store.count_active("slack", "100") == 1
    assert await store.count_active("telegram", "999") == 0
    with pytest.raises(ValueError):
        await store.active_sessions(chat="100")


async def test_find_by_prefix_matches_one_session_of_that_chat_only(store: Store) -> None:
    mine = await new_session(store, chat="100")
    theirs = await new_session(store, chat="200")
    assert await store.find_session_by_prefix("telegram", "100", mine.id[:8]) == mine
    assert await store.find_session_by_prefix("telegram", "100", f" {mine.id[:8].upper()} ") == mine
    assert await store.find_session_by_prefix("telegram", "100", theirs.id) is None
    assert await store.find_session_by_prefix("slack", "100", mine.id) is None
    assert await store.find_session_by_prefix("telegram", "100", "   ") is None
    assert await store.find_session_by_prefix("telegram", "100", "%") is None


async def test_an_ambiguous_prefix_names_the_candidates(store: Store) -> None:
    # 17 hex ids must share a first character with some other (pigeonhole).
    sessions = [await new_session(store) for _ in range(17)]
    by_first: dict[str, list[str]] = {}
    for s in sessions:
        by_first.setdefault(s.id[0], []).append(s.id)
    first, ids = next((k, v) for k, v in by_first.items() if len(v) > 1)
    with pytest.raises(AmbiguousSessionPrefix) as caught:
        await store.find_session_by_prefix("telegram", "100", first)
    assert sorted(caught.value.candidates) == sorted(ids)
    for session_id in ids[1:]:
        assert await store.transition(session_id, S.CANCELLED)
    found = await store.find_session_by_prefix("telegram", "100", first, active_only=True)
    assert found is not None and found.id == ids[0]


async def test_a_closed_store_refuses_calls(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "store.db") as store:
        session = await new_session(store)
    with pytest.raises(StoreClosed):
        await store.get_session(session.id)
    async with Store.open(tmp_path / "store.db") as reopened:
        assert await reopened.get_session(session.id) == session


async def test_the_message_a_session_streams_into_is_remembered(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "stream.db") as store:
        session = await store.create_session(
            platform="telegram", chat="1", user="u", agent="claude-code", prompt="p"
        )
        assert (session.stream_message_id, session.stream_mark, session.stream_offset) == (
            None,
            None,
            0,
        )
        await store.set_stream_message(session.id, "42", 7, 3)
        again = await store.get_session(session.id)
        assert again is not None
        assert (again.stream_message_id, again.stream_mark, again.stream_offset) == ("42", 7, 3)


async def test_a_session_moves_to_another_thread_and_a_reopened_store_knows_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    async with Store.open(path) as store:
        session = await store.create_session(
            platform="telegram", chat="-100", thread="5", user="1", agent="a", prompt="p"
        )
        await store.set_thread(session.id, None)  # its forum topic was closed
        moved = await store.get_session(session.id)
        assert moved is not None and moved.thread is None
        await store.set_thread(session.id, "1700000000.000100")
        with pytest.raises(UnknownSession):
            await store.set_thread("0" * 32, None)
    async with Store.open(path) as reopened:
        [active] = await reopened.active_sessions("telegram", "-100")
        assert active.thread == "1700000000.000100"
