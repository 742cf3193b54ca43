"""`anycode task | sessions | cancel` in a pseudo-terminal (pexpect), against a running daemon
serving the HTTP API (tests/api_rig.py): output streamed live, a permission answered with the
arrow keys or a number, the session's outcome as the exit status."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pexpect  # type: ignore[import-untyped]
import pytest
import trio

from anycode_actors.agents import TextDelta, TurnEnded
from tests.actor_fakes import FakeAgent, asks, said
from tests.api_rig import TOKENS, Api, running_api

ROOT = Path(__file__).resolve().parent.parent
DOWN = "\x1b[B"


def asking_agent() -> FakeAgent:
    return FakeAgent(
        [
            [
                TextDelta(text="Hello from the agent. "),
                asks(title="Write hello.md"),
                TextDelta(text="Wrote hello.md."),
                TurnEnded(stop_reason="end_turn"),
            ]
        ]
    )


def spawn(api: Api, *args: str, user: str = "ada") -> pexpect.spawn:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANYCODE_")}
    env.update(
        COLUMNS="100",
        LINES="40",
        TERM="xterm-256color",
        ANYCODE_API_URL=api.url,
        ANYCODE_API_TOKEN=TOKENS[user],
    )
    return pexpect.spawn(
        sys.executable,
        ["-m", "anycode_actors", *args],
        env=env,
        cwd=str(ROOT),
        dimensions=(40, 100),
        encoding="utf-8",
        timeout=30,
    )


async def expect(child: pexpect.spawn, pattern: str) -> None:
    await trio.to_thread.run_sync(child.expect, pattern)


async def exit_status(child: pexpect.spawn) -> int | None:
    await trio.to_thread.run_sync(child.expect, pexpect.EOF)
    await trio.to_thread.run_sync(child.wait)
    status: int | None = child.exitstatus
    return status


async def test_task_follow_streams_asks_with_arrow_keys_and_exits_with_the_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_api(tmp_path, monkeypatch, asking_agent) as api:
        api.provider.outbox["hello.md"] = b"# hello\n"
        child = spawn(api, "task", "write hello.md", "--follow")
        await expect(child, r"Session [0-9a-f-]+ \(claude-code\) started")
        await expect(child, "Hello from the agent.")
        await expect(child, "Permission requested: Write hello.md")
        await expect(child, "Enter, or a number")
        # Down to "Allow for this session", back up to "Allow", Enter.
        child.send(DOWN)
        await expect(child, "❯ 2. ")
        child.send("\x1b[A")
        await expect(child, "❯ 1. ")
        child.send("\r")
        await expect(child, "→ Allow")
        await expect(child, "Wrote hello.md.")
        await expect(child, "Session completed")
        await expect(child, r"hello\.md \(8 bytes\)")
        assert await exit_status(child) == 0
        assert api.agents[0].responses == [("0", "allow")]


async def test_a_number_answers_and_cancel_ends_a_followed_session_with_status_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def waits_after_answer() -> FakeAgent:
        return FakeAgent([[TextDelta(text="Thinking. "), asks(title="Run make")]])

    async with running_api(tmp_path, monkeypatch, waits_after_answer) as api:
        child = spawn(api, "task", "run make", "--follow")
        await expect(child, r"Session ([0-9a-f-]+) \(claude-code\) started")
        session_id = child.match.group(1)
        await expect(child, "Permission requested: Run make")
        await expect(child, "Enter, or a number")
        child.send("3")  # Reject, by its number
        await expect(child, "→ Reject")
        await api.agents[0].wait_until(lambda: api.agents[0].responses == [("0", "reject")])

        listing = spawn(api, "sessions")
        await expect(listing, session_id)
        await expect(listing, "running")
        assert await exit_status(listing) == 0

        others = spawn(api, "cancel", session_id, user="bob")
        await expect(others, "404")
        assert await exit_status(others) == 2

        cancel = spawn(api, "cancel", session_id)
        await expect(cancel, f"Cancelling session {session_id}")
        assert await exit_status(cancel) == 0
        await expect(child, "Session cancelled")
        assert await exit_status(child) == 3


async def test_task_without_follow_prints_the_id_and_refusals_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_api(tmp_path, monkeypatch, lambda: FakeAgent([said("ok")])) as api:
        child = spawn(api, "task", "say ok", "--agent", "codex", "--repo", "acme/web")
        await expect(child, r"\r\n([0-9a-f]{32})\r\n")
        session_id = child.match.group(1)
        assert await exit_status(child) == 0
        session = await api.daemon.store.get_session(session_id)
        assert session is not None
        assert session.agent == "codex"
        assert "acme/web" in session.prompt
        unknown = spawn(api, "task", "hi", "--agent", "nobody")
        await expect(unknown, "400: unknown agent 'nobody'")
        assert await exit_status(unknown) == 2
        wrong = spawn(api, "sessions", "--token", "not-a-token")
        await expect(wrong, "401: unknown token")
        assert await exit_status(wrong) == 2
