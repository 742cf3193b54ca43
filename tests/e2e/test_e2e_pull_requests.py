"""Send a task, get a pull request: the real Docker sandbox, Claude Code and the scripted model, a
real git server (git's http-backend, Basic auth required to fetch the private repository and to
push) and the GitHub stand-in.

The daemon clones the repository with the token (which the git server checks) and copies it into
the sandbox as a bundle, so the sandbox never holds the token; after each turn it commits what
the agent wrote inside the sandbox, takes the commits out as a bundle, pushes them from its own
clone and opens the pull request on the stand-in."""

from __future__ import annotations

import re
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from anycode_actors.config import config_from_mapping
from anycode_actors.daemon import Daemon
from tests.e2e.harness import _docker_and_gateway, _running_daemon, e2e_config_data
from tests.fakes._http import serve_asgi
from tests.fakes.git_server import GitServer, basic_auth_header
from tests.fakes.github import FakeGitHub
from tests.fakes.model import ModelScript, ScriptedModel, Text, Write
from tests.fakes.telegram import FakeTelegram, MessageView, User

pytestmark = pytest.mark.docker

ADA = User(111, "Ada", username="ada")
TOKEN = "ghp_e2eToken0123456789abcdefABCDEF"
REPO = "acme/web"


def script() -> ModelScript:
    s = ModelScript()
    s.add(
        "greet",
        [Text("Adding the greeting."), Write("/workspace/repo/hello.txt", "Hello, world!\n")],
        [Text("Added hello.txt.")],
    )
    s.add(
        "more",
        [Text("Adding more."), Write("/workspace/repo/more.txt", "More.\n")],
        [Text("Added more.txt.")],
    )
    return s


@dataclass
class PrWorld:
    daemon: Daemon
    telegram: FakeTelegram
    github: FakeGitHub
    git: GitServer
    docker: Any

    def container(self) -> Any:
        """The one sandbox container of this world's daemon."""
        (container,) = self.docker.containers.list(
            filters={"label": f"anycode.daemon={self.daemon.daemon_id}"}
        )
        return container

    def in_container(self, *argv: str) -> str:
        """What `argv` prints in the sandbox (as its own user); it must succeed."""
        code, output = self.container().exec_run(list(argv))
        text = output.decode("utf-8", "replace")
        assert code == 0, text
        return text


@asynccontextmanager
async def pr_world(
    nursery: trio.Nursery, tmp: Path, git_settings: dict[str, Any] | None = None, **session: Any
) -> AsyncIterator[PrWorld]:
    docker, gateway = await _docker_and_gateway()
    telegram = FakeTelegram()
    telegram_url = await telegram.start(nursery)
    model = ScriptedModel(script())
    served = await nursery.start(serve_asgi, model.app, gateway)
    git = GitServer(tmp / "git-server", token=TOKEN).start()
    try:
        await trio.to_thread.run_sync(
            lambda: git.create_repo(
                REPO, default_branch="trunk", files={"README.md": "# web\n"}, private=True
            )
        )
        github = FakeGitHub()
        api_url = await github.start(nursery)
        github.add_token(TOKEN, "acme")
        github.add_repo(REPO, default_branch="trunk")
        github.branch_commits = lambda name, branch: branch_commits(git, name, branch)
        data = e2e_config_data(tmp, telegram_url, telegram.token, served.base_url, **session)
        data["github"] = {"token": TOKEN}
        data["git"] = {
            "github_url": f"http://{gateway}:{git.port}",
            "github_api_url": api_url,
            "cache_dir": str(tmp / "git-cache"),
            **(git_settings or {}),
        }
        config = config_from_mapping(data, environ={}, base_dir=tmp)
        async with _running_daemon(config) as daemon:
            yield PrWorld(daemon, telegram, github, git, docker)
    finally:
        git.stop()


def assert_no_token_in_the_sandbox(world: PrWorld, branch: str) -> None:
    """The sandbox holds the private repository on the session branch, and the token nowhere:
    not in its environment (as the agent sees it, and as Docker keeps it), not in the
    repository's configuration, whose `origin` is the plain repository URL."""
    secrets = (TOKEN, basic_auth_header("x-access-token", TOKEN).partition("Basic ")[2])
    container = world.container()
    container.reload()
    inspected = "\n".join(container.attrs["Config"]["Env"] or [])
    agent_env = world.in_container("env")
    config = world.in_container("cat", "/workspace/repo/.git/config")
    for text in (inspected, agent_env, config):
        assert not any(secret in text for secret in secrets)
    assert "GITHUB_TOKEN" not in agent_env and "GH_TOKEN" not in agent_env
    assert "extraheader" not in config.lower() and "@" not in config
    origin = world.in_container("git", "-C", "/workspace/repo", "remote", "get-url", "origin")
    assert origin.strip() == f"{world.git.container_url(REPO)}"
    head = world.in_container("git", "-C", "/workspace/repo", "rev-parse", "--abbrev-ref", "HEAD")
    assert head.strip() == branch
    assert world.in_container("cat", "/workspace/repo/README.md") == "# web\n"
    assert "hello.txt" in world.in_container("ls", "/workspace/repo")
    # No bundle is left behind in the workspace.
    assert "seed" not in world.in_container("ls", "-a", "/workspace/.anycode")


def branch_commits(git: GitServer, full_name: str, branch: str) -> list[str] | None:
    done = subprocess.run(
        ["git", "--git-dir", str(git.repo_path(full_name)), "rev-list", "--reverse", branch],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.split() if done.returncode == 0 else None


async def said(world: PrWorld, containing: str, after: int = 0, within: float = 120) -> MessageView:
    """The first bot message after message `after` that contains `containing`."""
    with trio.fail_after(within) if within else trio.CancelScope():
        while True:
            for message in world.telegram.bot_messages(ADA.id):
                if message.message_id > after and containing in message.text:
                    return message
            await trio.sleep(0.1)


async def allow_next_prompt(world: PrWorld, after: int) -> None:
    with trio.fail_after(120):
        while True:
            prompts = [
                m
                for m in world.telegram.messages(ADA.id)
                if m.from_bot and m.message_id > after and "Permission requested" in m.text
            ]
            if prompts:
                world.telegram.press(ADA.id, ADA, prompts[0].message_id, "Allow")
                return
            await trio.sleep(0.2)


def last_id(world: PrWorld) -> int:
    try:
        messages = world.telegram.messages(ADA.id)
    except LookupError:  # the chat exists once Ada first writes
        return 0
    return messages[-1].message_id if messages else 0


async def test_a_task_on_a_repository_ends_in_a_pull_request_updated_by_each_turn(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with pr_world(nursery, tmp_path, idle_minutes=10) as world:
        tg = world.telegram
        with trio.fail_after(30):
            await tg.wait_until_polling()
        before = last_id(world)
        tg.inject_message(ADA.id, ADA, f"/task [[greet]] add a greeting to {REPO}")
        started = await said(world, "Starting claude-code session", before)
        sid = re.search(r"session `([0-9a-f]{8})`", started.text)
        assert sid is not None
        branch = f"anycode/{sid.group(1)}"
        await allow_next_prompt(world, before)
        card = await said(world, "Pull request:", before)
        assert f"Branch `{branch}` · 1 file changed, +1 −0" in card.text, card.text
        pulls = world.github.pulls(REPO)
        assert [(p["head"]["ref"], p["base"]["ref"], p["draft"]) for p in pulls] == [
            (branch, "trunk", True)
        ]
        assert pulls[0]["html_url"] in card.text
        pushed = world.git.branch_sha(REPO, branch)
        assert pushed is not None
        pushes = world.git.requests_for(REPO, "git-receive-pack")
        assert pushes and all(r.authenticated for r in pushes if r.method == "POST")
        with trio.fail_after(30):
            document = await tg.wait_for_document(ADA.id, f"anycode-{sid.group(1)}.diff")
        assert b"+Hello, world!" in document.content

        # The repository is private: the sandbox got it from the daemon, never the token.
        assert world.git.is_private(REPO)
        fetches = world.git.requests_for(REPO, "git-upload-pack")
        assert fetches and all(r.authenticated for r in fetches if r.status == 200)
        await trio.to_thread.run_sync(assert_no_token_in_the_sandbox, world, branch)

        # A follow-up turn updates the same pull request.
        before = last_id(world)
        tg.inject_message(ADA.id, ADA, "[[more]] and a second file")
        await allow_next_prompt(world, before)
        card = await said(world, "Pull request:", before)
        assert "2 files changed, +2 −0" in card.text, card.text
        assert len(world.github.pulls(REPO)) == 1
        assert world.git.branch_sha(REPO, branch) != pushed
        pushes_after_two = world.git.requests_for(REPO, "git-receive-pack")

        # /diff shows the stat and attaches the patch; nothing is pushed.
        before = last_id(world)
        tg.inject_message(ADA.id, ADA, "/diff")
        stat = await said(world, "2 files changed", before)
        assert "Pull request:" not in stat.text
        with trio.fail_after(30):
            while len(tg.documents(ADA.id)) < 3:  # noqa: ASYNC110 (a patch per push, then /diff)
                await trio.sleep(0.1)
        assert b"+More." in tg.documents(ADA.id)[-1].content
        assert len(world.git.requests_for(REPO, "git-receive-pack")) == len(pushes_after_two)
        tg.inject_message(ADA.id, ADA, "/cancel")
        await said(world, "cancelled", before)


async def test_a_refused_push_says_why_and_attaches_the_patch(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with pr_world(nursery, tmp_path, idle_minutes=10) as world:
        tg = world.telegram
        await trio.to_thread.run_sync(world.git.decline_pushes, REPO)
        with trio.fail_after(30):
            await tg.wait_until_polling()
        tg.inject_message(ADA.id, ADA, f"/task [[greet]] add a greeting to {REPO}")
        await allow_next_prompt(world, 0)
        card = await said(world, "Not published:")
        assert "was rejected (pre-receive hook declined)" in card.text, card.text
        assert "/pr tries again" in card.text
        assert "1 file changed, +1 −0" in card.text
        with trio.fail_after(30):
            document = await tg.wait_for_document(ADA.id)
        assert b"+Hello, world!" in document.content
        assert world.github.pulls(REPO) == []
        # The server takes pushes again: /pr publishes what was refused.
        await trio.to_thread.run_sync(world.git.accept_pushes, REPO)
        before = last_id(world)
        tg.inject_message(ADA.id, ADA, "/pr")
        card = await said(world, "Pull request:", before)
        assert len(world.github.pulls(REPO)) == 1
        assert TOKEN not in "\n".join(m.text for m in tg.messages(ADA.id))


async def test_a_repository_the_forge_does_not_know_is_said_at_once_and_the_task_runs(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with pr_world(nursery, tmp_path, idle_minutes=10) as world:
        tg = world.telegram
        with trio.fail_after(30):
            await tg.wait_until_polling()
        tg.inject_message(ADA.id, ADA, "/task [[greet]] add a greeting to acme/missing")
        told = await said(world, "does not exist")
        assert "acme/missing does not exist on GitHub or the token cannot see it" in told.text
        assert "The session runs without pull requests." in told.text
        # The task runs all the same; the end of its turn says again why nothing was pushed.
        await allow_next_prompt(world, 0)
        await said(world, "Added hello.txt.", told.message_id)
        refused = await said(world, "Not published:", told.message_id)
        assert "acme/missing does not exist" in refused.text
        # The agent worked in the folder the repository would have been copied into.
        listing = await trio.to_thread.run_sync(world.in_container, "ls", "-a", "/workspace/repo")
        assert "hello.txt" in listing.split() and ".git" not in listing.split()


async def test_on_end_publishes_once_when_the_session_completes_and_off_never(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with pr_world(nursery, tmp_path / "on_end", {"auto_pr": "on_end"}) as world:
        tg = world.telegram
        with trio.fail_after(30):
            await tg.wait_until_polling()
        tg.inject_message(ADA.id, ADA, f"/task [[greet]] add a greeting to {REPO}")
        await allow_next_prompt(world, 0)
        card = await said(world, "Pull request:")
        completed = await said(world, "completed", card.message_id)
        assert "Added hello.txt." in "\n".join(m.text for m in tg.bot_messages(ADA.id))
        assert completed.message_id > card.message_id
        assert len(world.github.pulls(REPO)) == 1
    async with pr_world(nursery, tmp_path / "off", {"auto_pr": "off"}) as world:
        tg = world.telegram
        with trio.fail_after(30):
            await tg.wait_until_polling()
        tg.inject_message(ADA.id, ADA, f"/task [[greet]] add a greeting to {REPO}")
        await allow_next_prompt(world, 0)
        await said(world, "completed")
        assert world.github.pulls(REPO) == []
        assert not any("Pull request:" in m.text for m in tg.bot_messages(ADA.id))
