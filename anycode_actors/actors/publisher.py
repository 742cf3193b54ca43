"""The publisher: one session's repository work, done by the daemon with a credential the sandbox
never sees.

A task whose prompt names a repository gets a publisher. `prepare` asks the forge about the
repository (its default branch, whether the token may push), fetches the daemon's mirror and
makes the session's clone on `<branch_prefix><short id>` from the default branch; `seed` copies
that clone into the sandbox, which never clones the repository itself (so a private repository
needs no token in the sandbox). `publish` then, after a turn:
1. commits what the agent left in the sandbox's repository (hooks off, author the chat user,
   committer the bot) and bundles the commits the default branch lacks (anycode_actors.git);
2. reads the bundle out through the provider and imports it into the daemon's clone;
3. pushes the branch from there, the token only in that one git command's environment;
4. opens the pull request (draft by default), or finds the one it opened before: a push is
   all an open pull request needs to show the new commits.
It returns a card for the chat (the link, the branch, files changed, +/− lines) and the patch.
Whatever fails on the way (a rejected push, the forge refusing or unreachable) is said in the
card, and the patch is attached all the same: the work is never lost, and `/pr` tries again.
"""

from __future__ import annotations

import logging
import posixpath
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio

from anycode_actors.actors.commands import short_id
from anycode_actors.config.models import GitConfig
from anycode_actors.errors import AnycodeError
from anycode_actors.git import (
    DiffStat,
    GitCredential,
    GitError,
    Identity,
    MirrorCache,
    RepoRef,
    SandboxCommand,
    SessionClone,
    author_identity,
    bundle_command,
    clone_session,
    commit_command,
    commit_message,
    diff_patch,
    diff_stat,
    import_bundle,
    push_branch,
)
from anycode_actors.git.forges import Forge, ForgeError, PullRequest
from anycode_actors.git.repo import NO_NEW_COMMITS, seed_bundle, seed_command
from anycode_actors.git.repo import Forge as RepoForge
from anycode_actors.sandboxes.base import (
    REPO_WORKDIR,
    WORKSPACE,
    SandboxHandle,
    SandboxProvider,
)

log = logging.getLogger(__name__)

REPO_DIR: Final = REPO_WORKDIR
"""Where the task's repository is in the sandbox (`seed` copies it there)."""
SEED_DIR: Final = ".anycode"
"""Where, below the sandbox's /workspace, `seed` writes the bundle it clones from."""
BUNDLE_DIR: Final = "/tmp/anycode-git"
"""Where the sandbox writes the bundle the daemon reads out; outside the repository."""
BOT: Final = "anycode"
OUTPUT_LIMIT: Final = 64 * 1024
"""Bytes of a sandbox command's output kept; the commands here print a line or two."""


class PublishError(AnycodeError):
    """The repository cannot be published to; the message is for the user."""


@dataclass(frozen=True)
class Card:
    """What the chat is told after a publish (or a /diff): the text, and the patch to attach."""

    text: str
    patch: bytes | None = None
    patch_name: str = ""


@dataclass(frozen=True)
class Requester:
    """The chat user a session works for: the author of its commits."""

    display_name: str
    key: str  # e.g. "telegram-111", made into the local part of the author's e-mail


class Publisher:
    def __init__(
        self,
        *,
        session_id: str,
        repo: RepoRef,
        forge: Forge,
        credential: GitCredential,
        mirrors: MirrorCache,
        work_root: Path,
        branch_prefix: str,
        email_domain: str,
        draft: bool,
        max_patch_bytes: int,
        prompt: str,
        requester: Requester,
        within: float,
    ) -> None:
        self._session_id = session_id
        self.repo = repo
        self._forge = forge
        self._credential = credential
        self._mirrors = mirrors
        self._work_root = work_root
        self.branch = f"{branch_prefix}{short_id(session_id)}"
        self._email_domain = email_domain
        self._draft = draft
        self._max_patch = max_patch_bytes
        self._prompt = prompt
        self._requester = requester
        self._within = within
        self._clone: SessionClone | None = None
        self._pushed: str | None = None
        self._pr: PullRequest | None = None
        self._lock = trio.Lock()
        self.ready = trio.Event()
        self.problem: str | None = None

    # --- before the first turn -----------------------------------------------------------------

    async def prepare(self) -> None:
        """Learn the default branch and make the daemon's clone; `problem` says why not."""
        try:
            with trio.fail_after(self._within):
                info = await self._forge.repository(self.repo.path)
                mirror = await self._mirrors.update(self.repo, self._credential)
                dest = self._work_root / self._session_id
                await trio.to_thread.run_sync(_fresh_folder, dest)
                self._clone = await clone_session(
                    mirror,
                    dest,
                    self.repo,
                    default_branch=info.default_branch,
                    branch=self.branch,
                )
            if not info.can_push:
                log.info("%s: the token may not push to %s", self._session_id[:8], self.repo)
        except (GitError, ForgeError) as exc:
            self.problem = str(exc)
        except trio.TooSlowError:
            self.problem = f"{self.repo} did not answer within {self._within:g} s"
        finally:
            self.ready.set()

    async def seed(self, provider: SandboxProvider, handle: SandboxHandle) -> None:
        """Copy the daemon's clone into the sandbox (made with `SandboxSpec.seeded`), once
        `prepare` is done: a bundle of the session branch and the default branch, written in
        through the provider and cloned into the sandbox's workdir on the session branch, with
        `origin` the repository's public URL. The sandbox never holds the token, so a private
        repository is worked on all the same.

        Without a clone (`prepare` failed; the user was told) the workdir is made empty. When
        the copy fails, `problem` says why and PublishError carries it: the session runs
        without the repository, in an empty workdir, and nothing is published.
        """
        await self.ready.wait()
        clone = self._clone
        workdir = handle.workdir
        if clone is not None:
            try:
                with trio.fail_after(self._within):
                    await self._copy_in(provider, handle, clone)
                return
            except AnycodeError as exc:
                why = str(exc)
            except trio.TooSlowError:
                why = f"it took over {self._within:g} s"
            self._clone = None
            self.problem = f"{self.repo} could not be copied into the sandbox ({why})"
            log.warning("%s: %s", self._session_id[:8], self.problem)
        # An agent whose working folder is missing cannot start: it is made, empty (a failed
        # `git clone` removes what it had made).
        try:
            await _run(
                provider, handle, SandboxCommand(("mkdir", "-p", "--", workdir), {}, "/"), 30
            )
        except (AnycodeError, trio.TooSlowError) as exc:
            log.warning("%s: %s not made: %r", self._session_id[:8], workdir, exc)
            if clone is None:
                raise PublishError(f"the sandbox has no folder {workdir} to work in") from None
        if clone is not None:
            raise PublishError(self.problem)

    async def _copy_in(
        self, provider: SandboxProvider, handle: SandboxHandle, clone: SessionClone
    ) -> None:
        workspace, name = posixpath.split(handle.workdir)
        bundle = f"{SEED_DIR}/seed-{short_id(self._session_id)}.bundle"
        with tempfile.TemporaryDirectory() as folder:
            local = Path(folder) / "seed.bundle"
            await seed_bundle(clone, local, within=self._within)
            data = await trio.Path(local).read_bytes()
        await provider.write_file(handle, f"{WORKSPACE}/{bundle}", data)
        await _run(
            provider,
            handle,
            seed_command(workspace, bundle=bundle, dest=name, clone=clone),
            self._within,
        )

    async def aclose(self) -> None:
        await self._forge.aclose()

    # --- after a turn --------------------------------------------------------------------------

    async def publish(self, provider: SandboxProvider, handle: SandboxHandle) -> Card | None:
        """Commit, push and open the pull request; None when the branch has nothing new."""
        async with self._lock:
            clone, new = await self._take_work(provider, handle)
            if not new:
                return None
            stat = await diff_stat(clone, within=self._within)
            patch = await self._patch(clone)
            head = clone.branch
            try:
                pushed = await push_branch(
                    clone,
                    self._credential,
                    lease=self._pushed,
                    within=self._within,
                )
                self._pushed = pushed.sha
                if self._pr is None:
                    self._pr = await self._forge.open_pr(
                        self.repo.path,
                        head=head,
                        base=clone.base_branch,
                        title=commit_message(self._prompt).splitlines()[0],
                        body=self._body(),
                        draft=self._draft,
                    )
            except (GitError, ForgeError) as exc:
                text = (
                    f"Not published: {exc}\nThe commit stays in the sandbox and the patch is "
                    "attached; /pr tries again."
                )
                return Card(text + "\n" + _stat_line(head, stat), *patch)
            return Card(f"Pull request: {self._pr.url}\n{_stat_line(head, stat)}", *patch)

    async def diff(self, provider: SandboxProvider, handle: SandboxHandle) -> Card:
        """The session's changes so far (committed in the sandbox first), not pushed."""
        async with self._lock:
            clone, _ = await self._take_work(provider, handle)
            stat = await diff_stat(clone, within=self._within)
            if stat.empty:
                return Card(f"No changes on {self.branch} yet.")
            return Card(_stat_line(clone.branch, stat), *await self._patch(clone))

    async def _take_work(
        self, provider: SandboxProvider, handle: SandboxHandle
    ) -> tuple[SessionClone, bool]:
        """Commit and bundle in the sandbox, import into the daemon's clone; the clone, and
        whether the sandbox had commits the daemon had not taken yet."""
        await self.ready.wait()
        if self._clone is None:
            raise PublishError(self.problem or f"{self.repo} could not be cloned")
        clone = self._clone
        author = author_identity(
            self._requester.display_name, self._requester.key, self._email_domain
        )
        committer = Identity(BOT, f"{BOT}@{self._email_domain}")
        agent = Identity(BOT, f"{BOT}-agent@{self._email_domain}")
        commit = commit_command(
            REPO_DIR,
            author=author,
            committer=committer,
            message=commit_message(self._prompt, co_author=agent),
        )
        await _run(provider, handle, commit, self._within)
        out = f"{BUNDLE_DIR}/{short_id(self._session_id)}.bundle"
        await _run(provider, handle, SandboxCommand(("mkdir", "-p", BUNDLE_DIR), {}, "/"), 30)
        bundled = await _run(
            provider,
            handle,
            bundle_command(REPO_DIR, base_sha=clone.base_sha, out_path=out),
            self._within,
        )
        if NO_NEW_COMMITS in bundled:
            return clone, False
        listing = await provider.read_files(handle, BUNDLE_DIR, max_bytes=1 << 30)
        data = next((f.data for f in listing.files if out.endswith(f.name)), None)
        if data is None:
            raise PublishError("the agent's commits could not be read out of the sandbox")
        with tempfile.TemporaryDirectory() as folder:
            local = Path(folder) / "work.bundle"
            await trio.Path(local).write_bytes(data)
            head = await import_bundle(clone, local, within=self._within)
        new = head != self._pushed
        return clone, new

    async def _patch(self, clone: SessionClone) -> tuple[bytes | None, str]:
        patch = await diff_patch(clone, max_bytes=self._max_patch, within=self._within)
        name = f"{self.branch.replace('/', '-')}.diff"
        return (None if patch.too_large or not patch.data else patch.data), name

    def _body(self) -> str:
        return (
            f"Made by an anycode session (`{short_id(self._session_id)}`) for "
            f"{self._requester.display_name}.\n\nTask:\n\n> {self._prompt[:2000]}"
        )


def forges_for(git: GitConfig) -> tuple[RepoForge, ...]:
    """The forges the configuration names: GitHub (or Enterprise Server) and GitLab."""
    gitlab = git.gitlab_url.rstrip("/")
    return (
        RepoForge("github", git.github_url, git.github_api_url),
        RepoForge("gitlab", gitlab, f"{gitlab}/api/v4"),
    )


def _stat_line(branch: str, stat: DiffStat) -> str:
    files = len(stat.files)
    noun = "file" if files == 1 else "files"
    return f"Branch `{branch}` · {files} {noun} changed, +{stat.insertions} −{stat.deletions}"


def _fresh_folder(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)


async def _run(
    provider: SandboxProvider, handle: SandboxHandle, command: SandboxCommand, within: float
) -> str:
    """Run `command` in the sandbox to its end; its stdout. PublishError on a non-zero exit."""
    with trio.fail_after(within):
        process = await provider.exec(handle, command.argv, env=command.env, cwd=command.cwd)
        try:
            await process.close_stdin()
            chunks: list[bytes] = []
            size = 0
            while data := await process.receive_some(65536):
                if size < OUTPUT_LIMIT:
                    chunks.append(data)
                size += len(data)
            code = await process.wait()
        finally:
            await process.aclose()
    output = b"".join(chunks).decode("utf-8", "replace")
    if code != 0:
        detail = process.stderr_tail().strip().splitlines()
        raise PublishError(
            f"git in the sandbox failed (exit {code})" + (f": {detail[-1]}" if detail else "")
        )
    return output


__all__ = ["Card", "PublishError", "Publisher", "Requester", "forges_for"]
