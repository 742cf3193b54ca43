"""Checkpoints (anycode_actors/actors/checkpoint.py): how they are kept, what they may not
contain, when they go, and how an agent's session is loaded back. The whole restore, with real
Docker and Claude Code, is in tests/faults/test_continuity.py."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio

from anycode_actors.actors.checkpoint import (
    CheckpointInfo,
    CheckpointStore,
    blank,
    restore_impossible,
)
from anycode_actors.actors.retention import Retention
from anycode_actors.agents import Resume, TextDelta, open_acp_client
from anycode_actors.agents.session import load_session
from anycode_actors.config import config_from_mapping
from anycode_actors.errors import AgentError
from anycode_actors.store import SessionStatus, Store
from tests.session_rig import TELEGRAM_TOKEN
from tests.test_agents_core import SESSION, ScriptedPeer


def info(session_id: str, turn: int = 1) -> CheckpointInfo:
    return CheckpointInfo(session_id, turn, "agent-session", 7, 3, 1.0)


async def test_a_checkpoint_is_kept_private_and_replaced_whole(tmp_path: Path) -> None:
    store = CheckpointStore.beside(tmp_path / "anycode.db")
    assert store.info("s1") is None and store.session_ids() == []
    await store.save(info("s1"), b"one")
    await store.save(info("s1", turn=2), b"two")
    assert store.info("s1") == info("s1", turn=2)
    assert await store.data("s1") == b"two"
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o700
    assert sorted(p.name for p in store.root.iterdir()) == ["s1.json", "s1.tar.gz"]
    for path in store.root.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.session_ids() == ["s1"]
    await store.remove("s1")
    assert store.info("s1") is None and store.session_ids() == []


def test_a_session_id_cannot_name_a_file_outside_the_folder(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    for bad in ("", "../x", ".hidden", "a/b"):
        with pytest.raises(ValueError):
            store.info(bad)


def test_secrets_are_blanked_and_the_length_kept() -> None:
    data = b"token=sk-secret-1 and again sk-secret-1; key abc"
    out = blank(data, ["sk-secret-1", "abc", ""])
    assert len(out) == len(data)
    assert b"sk-secret-1" not in out and b"***********" in out
    assert out.endswith(b"key abc")  # shorter than four characters: too common to blank


def test_acpx_sessions_cannot_be_restored() -> None:
    config = config_from_mapping({"telegram": {"bot_token": TELEGRAM_TOKEN}}, environ={})
    agent = config.agent("claude-code")
    assert restore_impossible("acpx", agent)
    assert restore_impossible("sandbox-agent", agent) == ""
    assert restore_impossible("acp", agent) == ""


def test_the_checkpoint_cap_is_a_setting_and_zero_turns_checkpoints_off() -> None:
    base: dict[str, Any] = {"telegram": {"bot_token": TELEGRAM_TOKEN}}
    assert config_from_mapping(base, environ={}).session.checkpoint_max_mb == 200
    off = config_from_mapping({**base, "session": {"checkpoint_max_mb": 0}}, environ={})
    assert off.session.checkpoint_max_mb == 0
    with pytest.raises(Exception, match="checkpoint_max_mb"):
        config_from_mapping({**base, "session": {"checkpoint_max_mb": -1}}, environ={})


async def test_retention_removes_the_checkpoints_of_sessions_past_it(tmp_path: Path) -> None:
    checkpoints = CheckpointStore.beside(tmp_path / "anycode.db")
    async with Store.open(tmp_path / "anycode.db") as store:
        ended = await store.create_session(
            platform="telegram", chat="1", user="u", agent="claude-code", prompt="a"
        )
        live = await store.create_session(
            platform="telegram", chat="1", user="u", agent="claude-code", prompt="b"
        )
        for step in (SessionStatus.STARTING, SessionStatus.RUNNING, SessionStatus.COMPLETED):
            assert await store.transition(ended.id, step)
        await store.append_event(live.id, TextDelta(seq=1, text="x"))
        for session_id in (ended.id, live.id, "unknown"):
            await checkpoints.save(info(session_id), b"data")
        now = datetime.now(UTC)
        kept = Retention(store, days=1, wall_clock=lambda: now, checkpoints=checkpoints)
        await kept.purge_once()
        assert checkpoints.session_ids() == sorted([ended.id, live.id])
        later = Retention(
            store, days=1, wall_clock=lambda: now + timedelta(days=2), checkpoints=checkpoints
        )
        await later.purge_once()
        assert checkpoints.session_ids() == [live.id]
        assert later.checkpoints_removed == 1


async def test_load_session_hides_the_replayed_history_and_numbers_on() -> None:
    peer = ScriptedPeer()
    resume = Resume(SESSION, last_seq=41, cursor=None, turn_running=False, load=True)
    async with trio.open_nursery() as nursery, open_acp_client(peer) as client:

        async def agent() -> None:
            initialize = await peer.received("initialize")
            await peer.answer(
                initialize,
                {"protocolVersion": 1, "agentCapabilities": {"loadSession": True}},
            )
            load = await peer.received("session/load")
            assert load["params"] == {"sessionId": SESSION, "cwd": "/workspace", "mcpServers": []}
            await peer.text("history the chat has shown already")
            await peer.answer(load, {})
            await peer.text("new words")

        nursery.start_soon(agent)
        with trio.fail_after(10):
            await client.initialize()
            session = await load_session(client, "/workspace", resume, first_seq=42)
            event = await session.events.receive()
        assert isinstance(event, TextDelta)
        assert (event.seq, event.text) == (42, "new words")
        nursery.cancel_scope.cancel()


async def test_an_agent_without_load_session_is_refused() -> None:
    peer = ScriptedPeer()
    resume = Resume(SESSION, last_seq=1, cursor=None, turn_running=False, load=True)
    async with trio.open_nursery() as nursery, open_acp_client(peer) as client:

        async def agent() -> None:
            initialize = await peer.received("initialize")
            await peer.answer(
                initialize,
                {
                    "protocolVersion": 1,
                    "agentCapabilities": {"loadSession": False},
                    "agentInfo": {"name": "demo", "version": "1"},
                },
            )

        nursery.start_soon(agent)
        with trio.fail_after(10):
            await client.initialize()
        with pytest.raises(AgentError, match="demo cannot load a session"):
            await load_session(client, "/workspace", resume, first_seq=2)
        assert not [m for m in peer.sent if m.get("method") == "session/load"]
        nursery.cancel_scope.cancel()
