"""/diff of a session without a publisher: the workspace compared with its starting point, in a
local sandbox (a folder, real git processes), with the repository clone or without one."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from anycode_actors.actors.publisher import Card, PublishError
from anycode_actors.actors.workspace_diff import WorkspaceDiff
from anycode_actors.config import LocalConfig
from anycode_actors.sandboxes import SandboxHandle, SandboxSpec
from anycode_actors.sandboxes.local import LocalProvider
from tests.fakes.git_server import GitServer, git

SID = uuid.uuid4().hex
SHORT = SID[:8]


@pytest.fixture
def provider(tmp_path: Path) -> LocalProvider:
    return LocalProvider(
        LocalConfig(workdir=tmp_path / "sandboxes", allow_unsandboxed=True),
        "daemon-1",
        base_env={"PATH": os.environ.get("PATH", os.defpath), "HOME": str(tmp_path)},
    )


async def sandbox(provider: LocalProvider, repo: str | None = None) -> SandboxHandle:
    spec = SandboxSpec(session_id=SID, agent="claude-code", protocol="acp", env={}, repo=repo)
    return await provider.create(spec)


@pytest.fixture
async def handle(provider: LocalProvider) -> AsyncIterator[SandboxHandle]:
    made = await sandbox(provider)
    yield made
    await provider.destroy(made.id)


def workspace(handle: SandboxHandle) -> Path:
    return Path(handle.id) / "workspace"


def put(root: Path, name: str, data: bytes | str) -> None:
    target = root / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data.encode() if isinstance(data, str) else data)


async def test_the_workspace_is_a_repository_from_the_start_and_diff_shows_the_agents_files(
    provider: LocalProvider, handle: SandboxHandle
) -> None:
    root = workspace(handle)
    put(root, "notes.md", "there before\n")
    diff = WorkspaceDiff(SID, max_patch_bytes=1 << 20, within=30)
    assert await diff.begin(provider, handle) == str(root)
    assert await diff.diff(provider, handle) == Card("No changes in the workspace yet.")
    assert await diff.final(provider, handle) is None

    # The agent: a new file, a binary one, a CRLF edit; files for the chat in the outbox.
    put(root, "hello.txt", "Hello\n")
    put(root, "logo.bin", bytes(range(256)))
    put(root, "notes.md", "there before\r\nand after\r\n")
    put(root, "outbox/report.pdf", b"%PDF-1.4 not part of the diff")
    put(root, "inbox/1-photo.png", b"\x89PNG the user's, not part of the diff")
    card = await diff.diff(provider, handle)
    assert card.text == "3 files changed, +3 −1"
    assert card.patch_name == f"anycode-{SHORT}.diff"
    assert card.patch is not None
    assert b"+Hello\n" in card.patch and b"GIT binary patch" in card.patch
    assert b"+there before\r\n+and after\r\n" in card.patch
    assert b"report.pdf" not in card.patch and b".anycode" not in card.patch
    assert b"photo.png" not in card.patch
    final = await diff.final(provider, handle)
    assert final is not None and final.patch == card.patch
    assert final.text == f"Changes of session `{SHORT}`: 3 files changed, +3 −1"


async def test_the_agents_own_index_and_commits_are_left_as_they_are(
    provider: LocalProvider, handle: SandboxHandle
) -> None:
    root = workspace(handle)
    diff = WorkspaceDiff(SID, max_patch_bytes=1 << 20, within=30)
    await diff.begin(provider, handle)
    put(root, "committed.txt", "one\n")
    git("add", "committed.txt", cwd=root)
    git("commit", "--quiet", "-m", "the agent's commit", cwd=root)
    put(root, "staged.txt", "two\n")
    git("add", "staged.txt", cwd=root)
    put(root, "loose.txt", "three\n")
    card = await diff.diff(provider, handle)
    assert card.text == "3 files changed, +3 −0"
    status = git("status", "--porcelain", cwd=root).stdout.splitlines()
    assert sorted(status) == ["?? loose.txt", "A  staged.txt"]


async def test_a_clone_in_the_workspace_is_compared_with_its_head_at_the_start(
    tmp_path: Path, provider: LocalProvider
) -> None:
    with GitServer(tmp_path / "srv") as server:
        await trio.to_thread.run_sync(lambda: server.create_repo("acme/web"))
        handle = await sandbox(provider, server.url("acme/web"))
    try:
        repo = workspace(handle) / "repo"
        diff = WorkspaceDiff(SID, max_patch_bytes=1 << 20, within=30)
        assert await diff.begin(provider, handle) == str(repo)
        put(repo, "README.md", "# acme/web\nmore\n")
        put(workspace(handle), "outside.txt", "not in the repository\n")
        card = await diff.diff(provider, handle)
        assert card.text == "1 file changed, +1 −0"
        assert card.patch is not None and b"+more" in card.patch
        assert not (workspace(handle) / ".git").exists()
    finally:
        await provider.destroy(handle.id)


async def test_a_patch_over_the_cap_is_not_attached_and_the_card_says_so(
    provider: LocalProvider, handle: SandboxHandle
) -> None:
    diff = WorkspaceDiff(SID, max_patch_bytes=4096, within=30)
    await diff.begin(provider, handle)
    put(workspace(handle), "big.txt", "".join(f"line {i}\n" for i in range(2000)))
    card = await diff.diff(provider, handle)
    assert card == Card(
        "1 file changed, +2000 −0\nThe patch is over 4 KB (git.max_patch_kb); not attached."
    )


async def test_without_a_starting_point_diff_says_so(
    provider: LocalProvider, handle: SandboxHandle
) -> None:
    diff = WorkspaceDiff(SID, max_patch_bytes=4096, within=30)
    with pytest.raises(PublishError, match="starting point was not recorded"):
        await diff.diff(provider, handle)
