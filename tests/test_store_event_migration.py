"""Schema 5: events stored under their class name (schemas 1 to 4) are renamed to versioned tags,
and a restarted daemon recovers a session from them as typed events."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Final

from sqlite_utils import Database

from anycode_actors.actors.stream import Resume
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
from anycode_actors.config import config_from_mapping
from anycode_actors.daemon import Daemon
from anycode_actors.store import MIGRATIONS, SCHEMA_VERSION, Store, migrate

SESSION: Final = "0ld5e55"
STAMP: Final = "2025-01-02T03:04:05.000006+00:00"
ALLOW: Final = PermissionOption("ok", "Allow", "allow_once")
DENY: Final = PermissionOption("no", "Deny", "reject_once")

# Rows as schema 4 code wrote them: the class name, and the event's fields but seq, without
# those that were None, "" or empty (the options as objects), in declaration order.
OLD_ROWS: Final[list[tuple[str, str]]] = [
    ("TextDelta", '{"cursor":"c-1","text":"Hello "}'),
    ("ThoughtDelta", '{"text":"hmm"}'),
    (
        "ToolCall",
        '{"cursor":"c-3","tool_call_id":"t1","phase":"started","title":"Run ls",'
        '"kind":"execute","input_summary":"ls"}',
    ),
    (
        "ToolCall",
        '{"tool_call_id":"t1","phase":"completed","status":"completed","title":"Run ls",'
        '"kind":"execute","input_summary":"ls","output_summary":"a.txt"}',
    ),
    ("PermissionRequested", '{"cursor":"c-5","key":"\\"p\\"","request_id":"p","policy":"x"}'),
    (
        "PermissionResolved",
        '{"key":"\\"p\\"","outcome":"selected","option_id":"ok","option_kind":"allow_once",'
        '"by":"policy"}',
    ),
    ("Raw", '{"kind":"session/update:plan","payload":{"entries":[]}}'),
    ("Raw", '{"kind":"malformed"}'),
    ("ErrorEvent", "{}"),
    ("ErrorEvent", '{"message":"rate limited","code":-32000}'),
    ("TurnEnded", '{"cursor":"c-11","stop_reason":"end_turn"}'),
    ("TextDelta", '{"cursor":"c-12","text":"Again"}'),
    (
        "PermissionRequested",
        '{"cursor":"c-13","key":"5","request_id":5,"tool_call_id":"tool-5","title":"Write x",'
        '"input_summary":"x","options":[{"option_id":"ok","name":"Allow","kind":"allow_once"},'
        '{"option_id":"no","name":"Deny","kind":"reject_once"}]}',
    ),
]
ASKED: Final = PermissionRequested(
    seq=13,
    cursor="c-13",
    key="5",
    request_id=5,
    tool_call_id="tool-5",
    title="Write x",
    input_summary="x",
    options=(ALLOW, DENY),
)
TYPED: Final[list[AgentEvent]] = [
    TextDelta(seq=1, cursor="c-1", text="Hello "),
    ThoughtDelta(seq=2, text="hmm"),
    ToolCall(
        seq=3,
        cursor="c-3",
        tool_call_id="t1",
        phase="started",
        title="Run ls",
        kind="execute",
        input_summary="ls",
    ),
    ToolCall(
        seq=4,
        tool_call_id="t1",
        phase="completed",
        status="completed",
        title="Run ls",
        kind="execute",
        input_summary="ls",
        output_summary="a.txt",
    ),
    PermissionRequested(
        seq=5,
        cursor="c-5",
        key='"p"',
        request_id="p",
        tool_call_id=None,
        title=None,
        input_summary="",
        options=(),
        policy="x",
    ),
    PermissionResolved(
        seq=6, key='"p"', outcome="selected", option_id="ok", option_kind="allow_once", by="policy"
    ),
    Raw(seq=7, kind="session/update:plan", payload={"entries": []}),
    Raw(seq=8, kind="malformed", payload=None),
    ErrorEvent(seq=9, message=""),
    ErrorEvent(seq=10, message="rate limited", code=-32000),
    TurnEnded(seq=11, cursor="c-11", stop_reason="end_turn"),
    TextDelta(seq=12, cursor="c-12", text="Again"),
    ASKED,
]


def schema_4_file(path: Path, rows: Sequence[tuple[str, str]]) -> None:
    """A file as schema 4 code left it: a running session and its events."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        assert migrate(Database(conn), MIGRATIONS[:4]) == [1, 2, 3, 4]
        conn.execute(
            "INSERT INTO sessions (id, platform, chat, user, agent, prompt, sandbox_id,"
            " agent_session_id, status, last_event_seq, created_at, updated_at)"
            " VALUES (?, 'telegram', '7', 'u', 'claude', 'p', 'sb-1', 'agent-1', 'running', ?,"
            " ?, ?)",
            (SESSION, len(rows), STAMP, STAMP),
        )
        conn.executemany(
            "INSERT INTO events (session_id, seq, type, payload, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            [(SESSION, seq, name, body, STAMP) for seq, (name, body) in enumerate(rows, 1)],
        )


def stored_rows(path: Path) -> list[tuple[str, str]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT type, payload FROM events ORDER BY seq").fetchall()


async def test_old_rows_read_back_as_typed_events_after_the_migration(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    rows = [
        *OLD_ROWS,
        ("SessionEnded", '{"reason":"agent_exited","message":"exit 1"}'),
        ("Mystery", '{"what":"no class of this name was ever stored"}'),
    ]
    schema_4_file(path, rows)
    async with Store.open(path) as store:
        assert await store.schema_version() == SCHEMA_VERSION >= 5
        events = [e.event for e in await store.events(SESSION)]
    assert events[:-2] == TYPED
    assert events[-2] == SessionEnded(seq=14, reason="agent_exited", message="exit 1")
    assert events[-1] == UnknownEvent(
        seq=15,
        tag="Mystery",
        payload={"what": "no class of this name was ever stored"},
        reason="unknown tag 'Mystery'",
    )
    tags = [tag for tag, _payload in stored_rows(path)]
    assert tags[:5] == [
        "text_delta/1",
        "thought_delta/1",
        "tool_call/1",
        "tool_call/1",
        "permission_requested/1",
    ]
    assert tags[8] == "error/1" and tags[-1] == "Mystery"
    # The fields the old form left out are written now, and nothing else changed.
    assert json.loads(stored_rows(path)[4][1]) == {
        "cursor": "c-5",
        "key": '"p"',
        "request_id": "p",
        "tool_call_id": None,
        "title": None,
        "input_summary": "",
        "options": [],
        "policy": "x",
    }


async def test_the_migration_writes_what_a_new_store_writes(tmp_path: Path) -> None:
    old, new = tmp_path / "old.db", tmp_path / "new.db"
    schema_4_file(old, OLD_ROWS)
    async with Store.open(old):
        pass
    async with Store.open(new) as store:
        session = await store.create_session(
            platform="telegram", chat="7", user="u", agent="claude", prompt="p"
        )
        for event in TYPED:
            await store.append_event(session.id, event)
    assert [(tag, json.loads(body)) for tag, body in stored_rows(old)] == [
        (tag, json.loads(body)) for tag, body in stored_rows(new)
    ]


async def test_a_restarted_daemon_resumes_a_session_from_migrated_rows(tmp_path: Path) -> None:
    path = tmp_path / "anycode.db"
    schema_4_file(path, [*OLD_ROWS, ("Mystery", '{"cursor":"c-14"}')])
    config = config_from_mapping(
        {
            "telegram": {"bot_token": "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11"},
            "sandbox": {"provider": "local", "protocol": "acp"},
            "local": {"allow_unsandboxed": True, "workdir": str(tmp_path / "work")},
            "database": {"path": str(path)},
        },
        environ={},
        base_dir=tmp_path,
    )
    daemon = Daemon(config, clients=[])
    async with Store.open(path) as store:
        # What the store child gives the recovery child when the tree runs.
        daemon._store = store
        (session,) = await store.active_sessions()
        resume = await daemon._resume_point(session)
    # The permission the policy answered is settled; the one nobody answered is asked again.
    assert resume == Resume(
        agent_session_id="agent-1",
        last_seq=14,
        cursor="c-14",
        turn_running=True,
        permissions=(ASKED,),
    )
