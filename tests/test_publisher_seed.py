"""Seeding: the daemon's clone of a private repository copied into a sandbox, never its token.

Real parts throughout: a git server (git http-backend, Basic auth required to fetch the private
repository), the GitHub stand-in for the repository lookup, the daemon's mirror cache and clone,
and the local provider, whose `write_file` and `exec` put the bundle in and clone from it as the
Docker and ECS providers do in their sandboxes. The last test runs a session actor (fake
provider and agent) to show the order: copy first, then the agent, and a failed copy said.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from anycode_actors.actors.publisher import Publisher, PublishError, Requester
from anycode_actors.config import LocalConfig
from anycode_actors.git import Forge, GitCredential, MirrorCache, RepoRef
from anycode_actors.git.forges import GitHubForge
from anycode_actors.sandboxes import SandboxHandle, SandboxSpec
from anycode_actors.sandboxes.local import LocalProvider
from anycode_actors.store import Store
from tests.actor_fakes import FakeAgent, FakeProvider, memory_store, said
from tests.fakes.git_server import GitServer, basic_auth_header, git
from tests.fakes.github import FakeGitHub
from tests.session_rig import config_with, start

TOKEN = "ghp_seedToken0123456789abcdefABCDEF"
REPO = "acme/web"
SESSION = "5eed0123-4567-89ab-cdef-0123456789ab"
SECRETS = (TOKEN, basic_auth_header("x-access-token", TOKEN).partition("Basic ")[2])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GitServer]:
    with GitServer(tmp_path / "server", token=TOKEN) as started:
        started.create_repo(
            REPO,
            default_branch="trunk",
            files={"README.md": "# web\n", "bin/tool": b"\x00\x01binary"},
            private=True,
        )
        add_commit(started, REPO, "trunk", "CHANGES.md", "second\n")
        yield started


def add_commit(server: GitServer, repo: str, branch: str, name: str, text: str) -> None:
    """A second commit on `branch`, pushed straight into the bare repository (no HTTP)."""
    bare = server.repo_path(repo)
    work = bare.parent / f"{bare.name}.work"
    git("clone", "--quiet", "--branch", branch, str(bare), str(work))
    (work / name).write_text(text)
    git("add", "-A", cwd=work)
    git("commit", "--quiet", "-m", f"add {name}", cwd=work)
    git("push", "--quiet", "origin", f"HEAD:refs/heads/{branch}", cwd=work)


@pytest.fixture
def provider(tmp_path: Path) -> LocalProvider:
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(tmp_path)}
    config = LocalConfig(workdir=tmp_path / "sandboxes", allow_unsandboxed=True)
    return LocalProvider(config, "daemon-1", base_env=env)


async def publisher_for(
    nursery: trio.Nursery, tmp_path: Path, server: GitServer, repo: str = REPO
) -> Publisher:
    github = FakeGitHub()
    api_url = await github.start(nursery)
    github.add_token(TOKEN, "acme")
    github.add_repo(REPO, default_branch="trunk", private=True)
    return Publisher(
        session_id=SESSION,
        repo=RepoRef(Forge("github", server.url(), api_url), repo),
        forge=GitHubForge(api_url, TOKEN),
        credential=GitCredential.for_forge("github", TOKEN),
        mirrors=MirrorCache(tmp_path / "mirrors"),
        work_root=tmp_path / "sessions",
        branch_prefix="anycode/",
        email_domain="users.example.invalid",
        draft=True,
        max_patch_bytes=1 << 20,
        prompt="add a greeting",
        requester=Requester("Ada", "telegram-111"),
        within=60.0,
    )


async def seeded_sandbox(provider: LocalProvider, publisher: Publisher) -> SandboxHandle:
    spec = SandboxSpec(
        session_id=SESSION,
        agent="claude-code",
        protocol="acp",
        env={"ANTHROPIC_API_KEY": "sk-ant-seed-test"},
        repo=publisher.repo.web_url,
        seeded=True,
    )
    return await provider.create(spec)


def sandbox_git(workdir: Path, *args: str) -> str:
    return git("-C", str(workdir), *args).stdout.strip()


def entries(folder: Path) -> list[str] | None:
    """The names in `folder`, or None when it is no folder."""
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else None


def assert_no_token_under(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            assert not any(secret.encode() in data for secret in SECRETS), path


async def test_the_private_repository_is_copied_in_on_the_session_branch_without_the_token(
    nursery: trio.Nursery, tmp_path: Path, server: GitServer, provider: LocalProvider
) -> None:
    publisher = await publisher_for(nursery, tmp_path, server)
    async with trio.open_nursery() as both:  # as the session does: prepare while it creates
        both.start_soon(publisher.prepare)
        handle = await seeded_sandbox(provider, publisher)
    assert publisher.problem is None
    await publisher.seed(provider, handle)

    workdir = Path(handle.workdir)
    assert workdir == Path(handle.id) / "workspace" / "repo"
    assert sandbox_git(workdir, "rev-parse", "--abbrev-ref", "HEAD") == "anycode/5eed0123"
    assert publisher.branch == "anycode/5eed0123"
    assert (workdir / "README.md").read_text() == "# web\n"
    assert (workdir / "bin" / "tool").read_bytes() == b"\x00\x01binary"
    # The default branch's whole history, and the default branch itself to compare with.
    assert server.branch_sha(REPO, "trunk") == sandbox_git(workdir, "rev-parse", "HEAD")
    assert sandbox_git(workdir, "rev-list", "--count", "HEAD") == "2"
    assert sandbox_git(workdir, "rev-parse", "origin/trunk") == sandbox_git(
        workdir, "rev-parse", "HEAD"
    )
    assert sandbox_git(workdir, "remote", "get-url", "origin") == server.url(REPO)
    assert sandbox_git(workdir, "status", "--porcelain") == ""
    config = (workdir / ".git" / "config").read_text()
    assert "extraheader" not in config.lower() and "@" not in config
    # The token is nowhere in the sandbox, and no bundle is left behind.
    assert_no_token_under(Path(handle.id))
    assert entries(Path(handle.id) / "workspace" / ".anycode") == ["clone-status"]  # no bundle
    process = await provider.exec(handle, ["env"])
    await process.close_stdin()
    env = b""
    while chunk := await process.receive_some():
        env += chunk
    assert await process.wait() == 0
    assert not any(secret.encode() in env for secret in SECRETS)
    # The daemon fetched the private repository with the token.
    fetches = server.requests_for(REPO, "git-upload-pack")
    assert fetches and all(r.authenticated for r in fetches if r.status == 200)
    await provider.destroy(handle.id)
    await publisher.aclose()


async def test_a_copy_that_fails_is_said_and_leaves_the_agent_a_folder_to_work_in(
    nursery: trio.Nursery, tmp_path: Path, server: GitServer, provider: LocalProvider
) -> None:
    publisher = await publisher_for(nursery, tmp_path, server)
    await publisher.prepare()
    handle = await seeded_sandbox(provider, publisher)
    # Something is in the folder already: `git clone` into it fails.
    workdir = Path(handle.workdir)
    (workdir / "stray.txt").write_text("in the way\n")
    with pytest.raises(PublishError) as caught:
        await publisher.seed(provider, handle)
    message = str(caught.value)
    assert message.startswith(f"{server.url(REPO).removesuffix('.git')} could not be copied")
    assert "already exists and is not an empty directory" in message
    assert publisher.problem == message
    assert not any(secret in message for secret in SECRETS)
    assert entries(workdir) == ["stray.txt"]
    assert entries(Path(handle.id) / "workspace" / ".anycode") == ["clone-status"]  # no bundle
    # Nothing can be published from a sandbox without the repository: said, not attempted.
    with pytest.raises(PublishError, match="could not be copied into the sandbox"):
        await publisher.publish(provider, handle)
    await provider.destroy(handle.id)
    await publisher.aclose()


async def test_without_a_clone_the_sandbox_gets_an_empty_folder_and_no_second_message(
    nursery: trio.Nursery, tmp_path: Path, server: GitServer, provider: LocalProvider
) -> None:
    publisher = await publisher_for(nursery, tmp_path, server, repo="acme/missing")
    await publisher.prepare()
    assert publisher.problem is not None and "does not exist" in publisher.problem
    handle = await seeded_sandbox(provider, publisher)
    workdir = Path(handle.workdir)
    await trio.Path(workdir).rmdir()  # as in a container, where nothing made it
    await publisher.seed(provider, handle)  # the user was told at prepare; nothing raised
    assert entries(workdir) == []
    await provider.destroy(handle.id)
    await publisher.aclose()


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    async with memory_store() as opened:
        yield opened


async def test_the_session_copies_the_repository_in_before_the_agent_starts_and_says_a_failure(
    nursery: trio.Nursery,
    tmp_path: Path,
    server: GitServer,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    publisher = await publisher_for(nursery, tmp_path, server)
    provider = FakeProvider()  # takes the bundle, but runs no command: the clone fails
    agent = FakeAgent([said("Done.")])
    config = config_with(idle_minutes=0)
    rig = await start(nursery, store, monkeypatch, agent, config, provider, publisher)
    told_id = await rig.client.wait_for_text("could not be copied into the sandbox", within=60)
    told = rig.client.text_of(told_id)
    repo = server.url(REPO).removesuffix(".git")
    assert told.startswith(f"{repo} could not be copied into the sandbox (")
    assert told.endswith(". The session runs without it, and without pull requests.")
    await agent.wait_for_prompts(1, within=60)
    [spec] = provider.specs
    assert spec.seeded
    assert not any(secret in value for value in spec.env.values() for secret in SECRETS)
    # What went in: the daemon's clone, the session branch and the default branch.
    [(path, data)] = provider.written.items()
    assert path == f"/workspace/.anycode/seed-{SESSION[:8]}.bundle"
    bundle = tmp_path / "written.bundle"
    await trio.Path(bundle).write_bytes(data)
    heads = git("bundle", "list-heads", str(bundle)).stdout.split()
    trunk = server.branch_sha(REPO, "trunk")
    assert heads == [trunk, "refs/heads/anycode/5eed0123", trunk, "refs/heads/trunk"]
    await rig.wait_closed(within=60)
    # The copy was tried, and said, before the agent's first word.
    shown = rig.client.texts()
    assert shown.index(told) < next(i for i, text in enumerate(shown) if "Done." in text)
