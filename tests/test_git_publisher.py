"""The publisher end to end below the chat: a local sandbox (a folder, real processes) holding the
daemon's copy of a repository on the real git server (git http-backend, Basic auth to push),
the GitHub and GitLab stand-ins, and the cards the user would see. Every failure path ends in a
card that says what happened, with the patch attached, and a later publish (what /pr does) that
succeeds.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from anycode_actors.actors.publisher import Card, Publisher, Requester
from anycode_actors.config import LocalConfig
from anycode_actors.git import Forge, GitCredential, MirrorCache, RepoRef
from anycode_actors.git.forges import Forge as ForgeApi
from anycode_actors.git.forges import GitHubForge, GitLabForge
from anycode_actors.sandboxes import SandboxHandle, SandboxSpec
from anycode_actors.sandboxes.local import LocalProvider
from tests.fakes.git_server import GitServer, git
from tests.fakes.github import FakeGitHub
from tests.fakes.gitlab import FakeGitLab

TOKEN = "ghs_publisherTokenABCDEFGHIJKLMNOPQRSTUV01"
REPO = "acme/web"
ADA = Requester("Ada Lovelace", "telegram-111")
DOMAIN = "users.example.org"


@dataclass
class World:
    server: GitServer
    provider: LocalProvider
    handle: SandboxHandle
    publisher: Publisher
    work: Path  # the sandbox's clone: what the agent edits

    async def publish(self) -> Card | None:
        return await self.publisher.publish(self.provider, self.handle)

    def write(self, name: str, data: bytes | str) -> None:
        target = self.work / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.encode() if isinstance(data, str) else data)


def _server_commits(server: GitServer) -> Callable[[str, str], list[str] | None]:
    def commits(full_name: str, branch: str) -> list[str] | None:
        done = git(
            "--git-dir",
            str(server.repo_path(full_name)),
            "rev-list",
            "--reverse",
            branch,
            check=False,
        )
        return done.stdout.split() if done.returncode == 0 else None

    return commits


async def _world(
    tmp: Path, kind: str, forge: ForgeApi, api_url: str, server: GitServer, max_patch: int
) -> tuple[LocalProvider, SandboxHandle, Publisher]:
    session_id = uuid.uuid4().hex
    provider = LocalProvider(
        LocalConfig(workdir=tmp / "sandboxes", allow_unsandboxed=True),
        "daemon-1",
        base_env={"PATH": os.environ.get("PATH", os.defpath), "HOME": str(tmp)},
    )
    spec = SandboxSpec(
        session_id=session_id,
        agent="claude-code",
        protocol="acp",
        env={},
        repo=server.url(REPO),
        seeded=True,
    )
    handle = await provider.create(spec)
    repo = RepoRef(Forge(kind, server.url(), api_url), REPO)  # type: ignore[arg-type]
    publisher = Publisher(
        session_id=session_id,
        repo=repo,
        forge=forge,
        credential=GitCredential.for_forge(repo.kind, TOKEN),
        mirrors=MirrorCache(tmp / "cache"),
        work_root=tmp / "sessions",
        branch_prefix="anycode/",
        email_domain=DOMAIN,
        draft=True,
        max_patch_bytes=max_patch,
        prompt="add a greeting\nwith more detail below",
        requester=ADA,
        within=60.0,
    )
    await publisher.prepare()
    assert publisher.problem is None
    await publisher.seed(provider, handle)  # the daemon's clone, copied in
    return provider, handle, publisher


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[GitServer]:
    with GitServer(tmp_path / "git-server", token=TOKEN) as started:
        await trio.to_thread.run_sync(
            lambda: started.create_repo(REPO, default_branch="trunk", files={"README.md": "# w\n"})
        )
        yield started


@pytest.fixture
async def github(nursery: trio.Nursery, server: GitServer) -> FakeGitHub:
    fake = FakeGitHub()
    await fake.start(nursery)
    fake.add_token(TOKEN, "acme")
    fake.add_repo(REPO, default_branch="trunk")
    fake.branch_commits = _server_commits(server)
    return fake


async def github_world(
    tmp: Path, server: GitServer, github: FakeGitHub, *, max_patch: int = 1 << 20
) -> AsyncIterator[World]:
    forge = GitHubForge(github.api_url, TOKEN)
    provider, handle, publisher = await _world(
        tmp, "github", forge, github.api_url, server, max_patch
    )
    try:
        yield World(server, provider, handle, publisher, Path(handle.workdir))
    finally:
        await publisher.aclose()
        await provider.destroy(handle.id)


@pytest.fixture
async def world(tmp_path: Path, server: GitServer, github: FakeGitHub) -> AsyncIterator[World]:
    async for made in github_world(tmp_path, server, github):
        yield made


def branch_of(world: World) -> str:
    return world.publisher.branch


def stat_line(world: World, files: int, plus: int, minus: int = 0) -> str:
    noun = "file" if files == 1 else "files"
    return f"Branch `{branch_of(world)}` · {files} {noun} changed, +{plus} −{minus}"


RETRY = "The commit stays in the sandbox and the patch is attached; /pr tries again."


# --- the happy paths ----------------------------------------------------------------------------


async def test_a_turn_is_committed_as_the_chat_user_pushed_and_opened_as_a_draft(
    world: World, github: FakeGitHub
) -> None:
    world.write("hello.txt", "Hello, world!\n")
    card = await world.publish()
    assert card is not None
    [pull] = github.pulls(REPO)
    assert card.text == f"Pull request: {pull['html_url']}\n{stat_line(world, 1, 1)}"
    assert (pull["head"]["ref"], pull["base"]["ref"], pull["draft"]) == (
        branch_of(world),
        "trunk",
        True,
    )
    assert pull["title"] == "add a greeting"
    assert card.patch is not None and b"+Hello, world!" in card.patch
    assert card.patch_name == branch_of(world).replace("/", "-") + ".diff"
    # Author: the chat user's display name at the configured domain; committer: the bot.
    shown = git(
        "--git-dir",
        str(world.server.repo_path(REPO)),
        "log",
        "-1",
        "--format=%an <%ae>|%cn|%B",
        branch_of(world),
    ).stdout
    author, committer, message = shown.split("|", 2)
    assert author == f"Ada Lovelace <telegram-111@{DOMAIN}>"
    assert committer == "anycode"
    assert message.startswith("add a greeting\n\nCo-authored-by: anycode <anycode-agent@")

    # Nothing new: nothing to say. New work: the same pull request, a new stat.
    assert await world.publish() is None
    world.write("more.txt", "More.\n")
    again = await world.publish()
    assert again is not None and again.text.startswith(f"Pull request: {pull['html_url']}\n")
    assert stat_line(world, 2, 2) in again.text
    assert len(github.pulls(REPO)) == 1


async def test_a_gitlab_repository_gets_a_draft_merge_request(
    nursery: trio.Nursery, tmp_path: Path, server: GitServer
) -> None:
    lab = FakeGitLab()
    await lab.start(nursery)
    lab.add_token(TOKEN, "acme")
    project = lab.add_project(REPO, default_branch="trunk")
    async with GitLabForge(lab.api_url, TOKEN) as forge:
        provider, handle, publisher = await _world(
            tmp_path, "gitlab", forge, lab.api_url, server, 1 << 20
        )
        project.branches.add(publisher.branch)  # the stand-in does not read the git server
        await trio.Path(handle.workdir, "hello.txt").write_text("Hello, GitLab!\n")
        card = await publisher.publish(provider, handle)
        await provider.destroy(handle.id)
    assert card is not None
    [mr] = project.merge_requests.values()
    assert card.text.splitlines()[0] == f"Merge request: {mr['web_url']}"
    assert "/-/merge_requests/1" in mr["web_url"]
    assert (mr["source_branch"], mr["target_branch"], mr["draft"]) == (
        publisher.branch,
        "trunk",
        True,
    )
    assert mr["title"] == "Draft: add a greeting"
    assert server.branch_sha(REPO, publisher.branch) is not None
    # The push went with the token as GitLab takes it: Basic auth, user oauth2.
    pushes = server.requests_for(REPO, "git-receive-pack")
    assert {r.user for r in pushes if r.method == "POST"} == {"oauth2"}
    assert card.patch is not None and b"+Hello, GitLab!" in card.patch


async def test_a_pull_request_opened_before_a_restart_is_found_again(
    tmp_path: Path, server: GitServer, github: FakeGitHub, world: World
) -> None:
    world.write("hello.txt", "Hello\n")
    first = await world.publish()
    assert first is not None
    [pull] = github.pulls(REPO)
    # A restarted daemon has a new publisher for the same session: GitHub answers 422 "A pull
    # request already exists", and the publisher takes that one.
    restarted = Publisher(
        session_id=world.publisher._session_id,
        repo=world.publisher.repo,
        forge=GitHubForge(github.api_url, TOKEN),
        credential=GitCredential.for_forge("github", TOKEN),
        mirrors=MirrorCache(tmp_path / "cache"),
        work_root=tmp_path / "sessions-2",
        branch_prefix="anycode/",
        email_domain=DOMAIN,
        draft=True,
        max_patch_bytes=1 << 20,
        prompt="add a greeting",
        requester=ADA,
        within=60.0,
    )
    await restarted.prepare()
    world.write("more.txt", "More\n")
    card = await restarted.publish(world.provider, world.handle)
    await restarted.aclose()
    assert card is not None and card.text.startswith(f"Pull request: {pull['html_url']}\n")
    assert len(github.pulls(REPO)) == 1


# --- what the card says about the diff -----------------------------------------------------------


async def test_no_changes_say_so_and_publish_nothing(world: World, github: FakeGitHub) -> None:
    card = await world.publisher.diff(world.provider, world.handle)
    assert card == Card(f"No changes on {branch_of(world)} yet.")
    assert await world.publish() is None
    assert github.pulls(REPO) == []
    assert world.server.branch_sha(REPO, branch_of(world)) is None


async def test_a_patch_over_the_cap_is_not_attached_and_the_card_says_so(
    tmp_path: Path, server: GitServer, github: FakeGitHub
) -> None:
    async for world in github_world(tmp_path, server, github, max_patch=2048):
        world.write("big.txt", "".join(f"line {i}\n" for i in range(1000)))
        card = await world.publish()
        assert card is not None and card.patch is None
        assert stat_line(world, 1, 1000) in card.text
        assert card.text.endswith("The patch is over 2 KB (git.max_patch_kb); not attached.")
        shown = await world.publisher.diff(world.provider, world.handle)
        assert shown.patch is None and "over 2 KB" in shown.text


async def test_binary_and_crlf_files_travel_intact(world: World) -> None:
    logo = bytes(range(256)) * 4
    world.write("logo.bin", logo)
    world.write("win.txt", b"a\r\nb\r\n")
    card = await world.publish()
    assert card is not None and card.patch is not None
    assert stat_line(world, 2, 2) in card.text  # the binary file counts no lines
    assert b"GIT binary patch" in card.patch and b"+a\r\n+b\r\n" in card.patch
    sha = world.server.branch_sha(REPO, branch_of(world))
    bare = str(world.server.repo_path(REPO))
    shown = await trio.run_process(
        ["git", "--git-dir", bare, "show", f"{sha}:logo.bin"], capture_stdout=True
    )
    assert shown.stdout == logo


# --- a refused push -------------------------------------------------------------------------------


async def test_a_declining_hook_says_why_attaches_the_patch_and_a_later_publish_succeeds(
    world: World, github: FakeGitHub
) -> None:
    world.server.decline_pushes(REPO, "pushes are frozen for the release")
    world.write("hello.txt", "Hello\n")
    card = await world.publish()
    assert card is not None
    assert card.text == (
        f"Not published: The push of {branch_of(world)} to {world.server.url()}/{REPO} was "
        "rejected (pre-receive hook declined): a check on the server refused it. The server "
        "said: error: pushes are frozen for the release\n"
        f"{RETRY}\n{stat_line(world, 1, 1)}"
    )
    assert card.patch is not None and b"+Hello" in card.patch
    assert github.pulls(REPO) == []
    world.server.accept_pushes(REPO)
    retried = await world.publish()
    assert retried is not None and retried.text.startswith("Pull request: ")
    assert len(github.pulls(REPO)) == 1


async def test_a_protected_branch_says_so(world: World, github: FakeGitHub) -> None:
    world.server.protect_branch(REPO, branch_of(world))
    world.write("hello.txt", "Hello\n")
    card = await world.publish()
    assert card is not None
    first = card.text.splitlines()[0]
    assert first == (
        f"Not published: The push of {branch_of(world)} to {world.server.url()}/{REPO} was "
        "rejected (hook declined): a check on the server refused it (a protected branch?). The "
        f"server said: error: GH006: Protected branch update failed for "
        f"refs/heads/{branch_of(world)}. / error: hook declined to update "
        f"refs/heads/{branch_of(world)}"
    )
    assert card.patch is not None and github.pulls(REPO) == []


async def test_a_branch_someone_else_pushed_to_is_not_overwritten(
    tmp_path: Path, world: World, github: FakeGitHub
) -> None:
    # Someone pushes their own commit to the session's branch first.
    other = tmp_path / "other"
    git("clone", "--quiet", world.server.url(REPO), str(other))
    (other / "theirs.txt").write_text("theirs\n")
    git("add", "-A", cwd=other)
    git("commit", "--quiet", "-m", "theirs", cwd=other)
    git("push", "--quiet", str(world.server.repo_path(REPO)), f"HEAD:{branch_of(world)}", cwd=other)
    theirs = world.server.branch_sha(REPO, branch_of(world))
    world.write("hello.txt", "Hello\n")
    card = await world.publish()
    assert card is not None
    assert card.text.splitlines()[0] == (
        f"Not published: The push of {branch_of(world)} to {world.server.url()}/{REPO} was "
        "rejected (fetch first): the branch on the server has commits this session does not "
        "have."
    )
    assert card.patch is not None
    assert world.server.branch_sha(REPO, branch_of(world)) == theirs


# --- the forge says no ----------------------------------------------------------------------------


async def test_a_forge_error_after_the_push_is_said_and_the_next_publish_opens_the_pr(
    world: World, github: FakeGitHub
) -> None:
    world.write("hello.txt", "Hello\n")
    github.fail_next(502)
    card = await world.publish()
    assert card is not None
    host = github.api_url.removeprefix("http://")
    assert card.text == (
        f"Not published: GitHub ({host}) failed with HTTP 502: Server Error\n"
        f"{RETRY}\n{stat_line(world, 1, 1)}"
    )
    assert card.patch is not None and b"+Hello" in card.patch
    assert world.server.branch_sha(REPO, branch_of(world)) is not None  # pushed all the same
    # Nothing changed since, but the pull request is still to be opened: /pr opens it.
    retried = await world.publish()
    assert retried is not None and retried.text.startswith("Pull request: ")
    assert len(github.pulls(REPO)) == 1


async def test_a_rate_limit_says_when_to_try_again(world: World, github: FakeGitHub) -> None:
    world.write("hello.txt", "Hello\n")
    github.rate_limit_next(status=429, secondary=True, retry_after=30)
    card = await world.publish()
    assert card is not None
    assert card.text.splitlines()[:2] == [
        "Not published: GitHub rate limit reached; retry in 30 s",
        RETRY,
    ]
    assert card.patch is not None
    retried = await world.publish()
    assert retried is not None and retried.text.startswith("Pull request: ")


async def test_gitlab_errors_are_said_the_same_way(
    nursery: trio.Nursery, tmp_path: Path, server: GitServer
) -> None:
    lab = FakeGitLab()
    await lab.start(nursery)
    lab.add_token(TOKEN, "acme")
    project = lab.add_project(REPO, default_branch="trunk")
    async with GitLabForge(lab.api_url, TOKEN) as forge:
        provider, handle, publisher = await _world(
            tmp_path, "gitlab", forge, lab.api_url, server, 1 << 20
        )
        project.branches.add(publisher.branch)
        await trio.Path(handle.workdir, "hello.txt").write_text("Hello\n")
        host = lab.api_url.removeprefix("http://").removesuffix("/api/v4")
        lab.fail_next(503)
        down = await publisher.publish(provider, handle)
        lab.rate_limit_next(retry_after=45)
        limited = await publisher.publish(provider, handle)
        done = await publisher.publish(provider, handle)
        await provider.destroy(handle.id)
    assert down is not None and down.text.splitlines()[0] == (
        f"Not published: GitLab ({host}) failed with HTTP 503: 503 Server Error"
    )
    assert limited is not None and limited.text.splitlines()[0] == (
        "Not published: GitLab rate limit reached; retry in 45 s"
    )
    assert down.patch is not None and limited.patch is not None
    assert done is not None and done.text.startswith("Merge request: ")
    assert len(project.merge_requests) == 1


async def test_no_commits_between_the_branches_is_said(world: World, github: FakeGitHub) -> None:
    world.write("hello.txt", "Hello\n")
    # GitHub's answer when the head has nothing the base lacks (here: it is told both branches
    # hold the same commits).
    github.branch_commits = lambda name, branch: ["c0"]
    card = await world.publish()
    assert card is not None
    assert card.text.splitlines()[0] == (
        f"Not published: GitHub has no pull request to open in {REPO}: {branch_of(world)} has "
        "no commits that trunk does not already have"
    )
    assert card.patch is not None and github.pulls(REPO) == []


# --- repositories of other shapes ---------------------------------------------------------------


async def test_a_repository_with_a_submodule_publishes_and_keeps_the_pointer(
    tmp_path: Path, server: GitServer, github: FakeGitHub
) -> None:
    await trio.to_thread.run_sync(lambda: server.create_repo("acme/lib"))
    lib_sha = server.branch_sha("acme/lib", "main")
    assert lib_sha is not None

    def add_submodule() -> None:
        scratch = tmp_path / "scratch"
        git("clone", "--quiet", server.url(REPO), str(scratch))
        gitmodules = f'[submodule "lib"]\n\tpath = lib\n\turl = {server.url("acme/lib")}\n'
        (scratch / ".gitmodules").write_text(gitmodules)
        git("add", ".gitmodules", cwd=scratch)
        git("update-index", "--add", "--cacheinfo", f"160000,{lib_sha},lib", cwd=scratch)
        git("commit", "--quiet", "-m", "add lib", cwd=scratch)
        git("push", "--quiet", str(server.repo_path(REPO)), "HEAD:trunk", cwd=scratch)

    await trio.to_thread.run_sync(add_submodule)
    async for world in github_world(tmp_path, server, github):
        world.write("README.md", "# w\nwith lib\n")
        card = await world.publish()
        assert card is not None and card.text.startswith("Pull request: ")
        assert stat_line(world, 1, 1) in card.text
        sha = world.server.branch_sha(REPO, branch_of(world))
        tree = git("--git-dir", str(server.repo_path(REPO)), "ls-tree", str(sha), "lib").stdout
        assert tree.startswith(f"160000 commit {lib_sha}")


async def test_a_shallow_clone_in_the_sandbox_publishes(
    tmp_path: Path, server: GitServer, github: FakeGitHub
) -> None:
    def more_history() -> None:
        scratch = tmp_path / "history"
        git("clone", "--quiet", server.url(REPO), str(scratch))
        for index in range(3):
            (scratch / f"h{index}.txt").write_text(f"{index}\n")
            git("add", "-A", cwd=scratch)
            git("commit", "--quiet", "-m", f"h{index}", cwd=scratch)
        git("push", "--quiet", str(server.repo_path(REPO)), "HEAD:trunk", cwd=scratch)

    await trio.to_thread.run_sync(more_history)
    async for world in github_world(tmp_path, server, github):
        # The sandbox holds a clone of depth 1 instead of the full one.
        await trio.to_thread.run_sync(_reclone_shallow, world)
        world.write("new.txt", "new\n")
        card = await world.publish()
        assert card is not None and card.text.startswith("Pull request: ")
        assert stat_line(world, 1, 1) in card.text
        assert len(github.pulls(REPO)) == 1


def _reclone_shallow(world: World) -> None:
    shutil.rmtree(world.work)
    git(
        "clone",
        "--quiet",
        "--depth",
        "1",
        "--branch",
        "trunk",
        world.server.url(REPO),
        str(world.work),
    )
    assert (world.work / ".git" / "shallow").exists()
