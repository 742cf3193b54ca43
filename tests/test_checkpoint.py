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
    SANDBOX_HOME,
    CheckpointInfo,
    CheckpointStore,
    CheckpointTooBig,
    Continuity,
    blank,
    checkpoint_names,
    restore_checkpoint,
    restore_impossible,
    take_checkpoint,
)
from anycode_actors.actors.retention import Retention
from anycode_actors.agents import Resume, TextDelta, open_acp_client
from anycode_actors.agents.session import load_session
from anycode_actors.config import config_from_mapping
from anycode_actors.errors import AgentError
from anycode_actors.sandboxes.base import (
    WORKSPACE,
    OutboxListing,
    SandboxFile,
    SandboxHandle,
)
from anycode_actors.store import SessionStatus, Store
from tests.actor_fakes import FakeProvider
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


class NoExecProvider(FakeProvider):
    """A provider without `exec` (as ECS): `files` are its sandboxes' files by absolute path,
    which `read_files` reads by folder and `write_file` (the fake's) records in `written`."""

    can_exec = False

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__()
        self.files = files
        self.folders_read: list[str] = []

    async def read_files(
        self, handle: SandboxHandle, path: str, *, max_bytes: int
    ) -> OutboxListing:
        await trio.lowlevel.checkpoint()
        self.folders_read.append(path)
        inside = sorted(
            (name.removeprefix(path + "/"), data)
            for name, data in self.files.items()
            if name.startswith(path + "/")
        )
        return OutboxListing(
            files=tuple(SandboxFile(name, data) for name, data in inside if len(data) <= max_bytes),
            too_big=tuple((name, len(data)) for name, data in inside if len(data) > max_bytes),
        )


SESSION_FILE = f"{SANDBOX_HOME}/.claude/projects/-workspace/agent-session.jsonl"


async def test_without_exec_a_checkpoint_is_read_by_folder_and_written_back_by_file() -> None:
    files = {
        f"{WORKSPACE}/main.py": b"print('hi')\n",
        f"{WORKSPACE}/sub/.env": b"API_KEY=sk-secret-1\n",
        SESSION_FILE: b'{"said": "the token is tok-sandbox-9"}\n',
        "/etc/passwd": b"not in a checkpoint",
    }
    provider = NoExecProvider(files)
    old = provider.add("s1")
    data = await take_checkpoint(
        provider, old, max_bytes=1024, secrets=["sk-secret-1", "tok-sandbox-9"]
    )
    assert provider.folders_read == [
        WORKSPACE,
        f"{SANDBOX_HOME}/.claude/projects",
        f"{SANDBOX_HOME}/.codex/sessions",
    ]
    assert sorted(checkpoint_names(data)) == sorted(
        name.lstrip("/") for name in files if name != "/etc/passwd"
    )

    new = provider.add("s1")
    await restore_checkpoint(provider, new, data)
    assert provider.written == {
        f"{WORKSPACE}/main.py": b"print('hi')\n",
        f"{WORKSPACE}/sub/.env": b"API_KEY=***********\n",
        SESSION_FILE: b'{"said": "the token is *************"}\n',
    }


async def test_without_exec_the_checkpoint_cap_counts_every_folder(tmp_path: Path) -> None:
    files = {f"{WORKSPACE}/a": b"a" * 600, SESSION_FILE: b"s" * 600}
    provider = NoExecProvider(files)
    handle = provider.add("s1")
    with pytest.raises(CheckpointTooBig, match=r"session\.checkpoint_max_mb"):
        await take_checkpoint(provider, handle, max_bytes=1000, secrets=[])
    assert await take_checkpoint(provider, handle, max_bytes=1200, secrets=[])
    provider.files[f"{WORKSPACE}/big"] = b"b" * 2000  # one file over the cap alone
    with pytest.raises(CheckpointTooBig):
        await take_checkpoint(provider, handle, max_bytes=1500, secrets=[])

    # Over the cap, the session keeps no checkpoint rather than an older one.
    store = CheckpointStore(tmp_path)
    continuity = Continuity("s1", store, max_mb=1, provider=provider)
    del provider.files[f"{WORKSPACE}/big"]
    assert await continuity.take(handle, agent_session_id="a", last_seq=1, secrets=[])
    assert store.info("s1") is not None
    provider.files[f"{WORKSPACE}/big"] = b"b" * (1024 * 1024)
    assert await continuity.take(handle, agent_session_id="a", last_seq=2, secrets=[]) is None
    assert store.info("s1") is None and "checkpoint_max_mb" in continuity.problem


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
