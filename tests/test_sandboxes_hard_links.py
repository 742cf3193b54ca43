"""`read_files` says which names are one file, so the session sends it once: by inode on the
local provider, by identical content through sandbox-agent (whose API shows no inode). Docker's
tar links are checked in tests/test_sandboxes_docker.py against a real container."""

from __future__ import annotations

import os
from pathlib import Path

from anycode_actors.sandboxes import OutboxListing, SandboxFile
from anycode_actors.sandboxes.agent_fs import read_files_via_sandbox_agent
from anycode_actors.sandboxes.base import hard_links
from anycode_actors.sandboxes.local import LocalProvider
from tests.test_sandboxes_agent_fs import running_sandbox_agent
from tests.test_sandboxes_local import allowed, plain_env, spec


def make_linked_outbox(outbox: Path) -> None:
    (outbox / "sub").mkdir(parents=True)
    (outbox / "report.md").write_bytes(b"# Report\n")
    os.link(outbox / "report.md", outbox / "sub" / "again.md")
    os.link(outbox / "report.md", outbox / "a-first-name.md")
    (outbox / "big.bin").write_bytes(b"b" * 2048)
    os.link(outbox / "big.bin", outbox / "big-link.bin")
    (outbox / "copy.md").write_bytes(b"# Report\n")  # same bytes, another file


def test_hard_links_pairs_every_further_name_with_the_first_by_name() -> None:
    identities = {"b": 1, "a": 1, "c": 2, "d": 1, "e": 3, "f": 2}
    assert hard_links(identities) == (("b", "a"), ("d", "a"), ("f", "c"))
    assert hard_links({}) == ()


async def test_the_local_provider_names_hard_links_by_inode(tmp_path: Path) -> None:
    provider = LocalProvider(allowed(tmp_path / "work"), "daemon-1", base_env=plain_env(tmp_path))
    handle = await provider.create(spec())
    make_linked_outbox(Path(handle.id) / "workspace" / "outbox")
    report = b"# Report\n"
    assert await provider.read_files(handle, "/workspace/outbox", max_bytes=1024) == (
        OutboxListing(
            files=(
                SandboxFile("a-first-name.md", report),
                SandboxFile("copy.md", report),
                SandboxFile("report.md", report),
                SandboxFile("sub/again.md", report),
            ),
            too_big=(("big-link.bin", 2048), ("big.bin", 2048)),
            links=(
                ("big.bin", "big-link.bin"),
                ("report.md", "a-first-name.md"),
                ("sub/again.md", "a-first-name.md"),
            ),
        )
    )
    await provider.destroy(handle.id)


async def test_through_sandbox_agent_files_with_identical_bytes_count_as_one(
    tmp_path: Path,
) -> None:
    outbox = tmp_path / "sandbox" / "outbox"
    make_linked_outbox(outbox)
    with running_sandbox_agent(tmp_path / "home") as agent:
        listing = await read_files_via_sandbox_agent(agent.endpoint, agent.token, str(outbox), 1024)
    report = b"# Report\n"
    assert listing == OutboxListing(
        files=(
            SandboxFile("a-first-name.md", report),
            SandboxFile("copy.md", report),
            SandboxFile("report.md", report),
            SandboxFile("sub/again.md", report),
        ),
        # Never read, so never compared: each is listed and reported on its own.
        too_big=(("big-link.bin", 2048), ("big.bin", 2048)),
        links=(
            ("copy.md", "a-first-name.md"),
            ("report.md", "a-first-name.md"),
            ("sub/again.md", "a-first-name.md"),
        ),
    )
