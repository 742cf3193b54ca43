"""The daemon's own git work: which repository a task names, a cached mirror of it, a clone per
session, the agent's commits brought out of the sandbox, the push, and the diff.

Everything runs the real `git` CLI as a Trio child process (never through a shell), each
bounded by a timeout after which git is killed. Why the daemon and not the agent does this:

- The agent controls its sandbox's repository, including `.git/config` and hooks. A hook or a
  `url.<base>.insteadOf` rewrite there would run, or redirect the push, while the push
  credential is in scope (https://git-scm.com/docs/githooks, https://git-scm.com/docs/git-config
  `url.<base>.insteadOf`). So the credential never enters the sandbox: the daemon asks the
  sandbox for a git bundle of its commits (`bundle_command`, after `commit_command` has
  committed what the agent left uncommitted), checks and imports it into a clone it owns
  (`import_bundle`), and pushes from there (`push_branch`). A bundle carries only objects and
  refs, never configuration or hooks.
- A bundle, not a patch, is the way out: it keeps binary files, file modes, symbolic links,
  submodule pointers and the agent's own commits and messages exactly as they are, and
  `git bundle verify` checks it before anything is imported
  (https://git-scm.com/docs/git-bundle). A `git diff` patch would need `--binary` and would
  lose the commits.
- The credential reaches git only through the environment of the one command that needs it:
  `--config-env=http.<url>.extraHeader=VAR` names a variable holding the `Authorization`
  header, scoped to the repository's URL (https://git-scm.com/docs/git#Documentation/git.txt---config-envltnamegtltenvvargt),
  so it is in no URL, file, argument list or log line. Every error message is scrubbed of it.

Submodules are not initialised or fetched: the mirror and the session clone carry the
superproject only, with each submodule as its recorded commit pointer (a gitlink) and its
`.gitmodules` entry. A commit that moves a submodule pointer travels in the bundle and the
push like any other change.
"""

from __future__ import annotations

import base64
import math
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal
from urllib.parse import urlsplit

import trio

from anycode_actors.actors.commands import detect_repo
from anycode_actors.errors import AnycodeError

__all__ = [
    "DEFAULT_FORGES",
    "AuthFailed",
    "BundleInvalid",
    "DiffStat",
    "FileChange",
    "Forge",
    "ForgeKind",
    "GitCommandFailed",
    "GitCredential",
    "GitError",
    "GitUnavailable",
    "Identity",
    "MirrorCache",
    "Patch",
    "PermissionDenied",
    "PushRejected",
    "PushResult",
    "RepoNotFound",
    "RepoRef",
    "SandboxCommand",
    "SessionClone",
    "author_identity",
    "bundle_command",
    "clone_session",
    "commit_command",
    "commit_message",
    "diff_patch",
    "diff_stat",
    "import_bundle",
    "parse_repo_ref",
    "push_branch",
    "repo_ref_from_prompt",
    "seed_bundle",
    "seed_command",
]

ForgeKind = Literal["github", "gitlab"]

#: Seconds a network git command (clone, fetch, push) may take.
NETWORK_TIMEOUT: Final = 300.0
#: Seconds a local git command (diff, bundle verify) may take.
LOCAL_TIMEOUT: Final = 60.0

# The variable that carries the Authorization header to one git command.
_AUTH_ENV: Final = "ANYCODE_GIT_AUTH_HEADER"
# Settings for every daemon-side git command: no hooks, no credential helper from any config
# file (the header is the only credential), no fsmonitor program, no line-ending conversion
# (a diff shows the bytes as committed), no pager or editor.
_DAEMON_CONFIG: Final = (
    "core.hooksPath=/dev/null",
    "credential.helper=",
    "core.fsmonitor=false",
    "core.autocrlf=false",
    "core.pager=cat",
    "core.editor=true",
    "advice.detachedHead=false",
)
_STDERR_KEEP: Final = 64 * 1024
_SEGMENT: Final = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*")
_SHA: Final = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")


# --- errors ------------------------------------------------------------------------------------


class GitError(AnycodeError):
    """A git operation failed; `str(error)` is a message for the user, free of credentials."""


class GitUnavailable(GitError):
    """git is not installed, the server cannot be reached, or a command timed out."""


class RepoNotFound(GitError):
    """The repository does not exist (or the credential cannot see it)."""


class AuthFailed(GitError):
    """The server wanted a credential and the one given (if any) was refused."""


class PermissionDenied(GitError):
    """The credential was accepted but may not do this (typically: read but not push)."""


class PushRejected(GitError):
    """The server refused the branch update: protected branch, non-fast-forward, hook declined.

    `reason` is git's own, e.g. "pre-receive hook declined" or "non-fast-forward"; `remote`
    holds the server's `remote:` lines (a hook's explanation).
    """

    def __init__(self, message: str, *, reason: str, remote: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.reason = reason
        self.remote = remote


class BundleInvalid(GitError):
    """The bundle from the sandbox cannot be imported."""


class GitCommandFailed(GitError):
    """A git command failed for a reason none of the other errors names."""


# --- repositories and forges --------------------------------------------------------------------


@dataclass(frozen=True)
class Forge:
    """A GitHub or GitLab server: its web base URL (clone URLs start there) and its API."""

    kind: ForgeKind
    web_url: str
    api_url: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "web_url", self.web_url.rstrip("/"))
        object.__setattr__(self, "api_url", self.api_url.rstrip("/"))


DEFAULT_FORGES: Final = (
    Forge("github", "https://github.com", "https://api.github.com"),
    Forge("gitlab", "https://gitlab.com", "https://gitlab.com/api/v4"),
)


@dataclass(frozen=True)
class RepoRef:
    """A repository on a forge: `path` is `owner/name` on GitHub, `group/…/project` on GitLab."""

    forge: Forge
    path: str

    @property
    def kind(self) -> ForgeKind:
        return self.forge.kind

    @property
    def host(self) -> str:
        """host[:port] of the forge."""
        return urlsplit(self.forge.web_url).netloc

    @property
    def namespace(self) -> str:
        """The owner (GitHub) or the group path (GitLab)."""
        return self.path.rpartition("/")[0]

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]

    @property
    def web_url(self) -> str:
        return f"{self.forge.web_url}/{self.path}"

    @property
    def clone_url(self) -> str:
        return f"{self.forge.web_url}/{self.path}.git"

    def __str__(self) -> str:
        return self.web_url


def parse_repo_ref(reference: str, forges: Sequence[Forge] = DEFAULT_FORGES) -> RepoRef | None:
    """The repository `reference` names, or None: `owner/repo` (on the first GitHub forge), or a
    web or clone URL on one of `forges` (github.com and gitlab.com are always known).

    GitHub paths keep `owner/repo` (`/tree/main/src` and the like are dropped); GitLab paths
    keep every group up to `/-/`.
    """
    text = reference.strip()
    known = [*forges, *(f for f in DEFAULT_FORGES if f.web_url not in {g.web_url for g in forges})]
    if "://" not in text:
        github = next((f for f in known if f.kind == "github"), DEFAULT_FORGES[0])
        parts = text.removesuffix(".git").split("/")
        if len(parts) == 2 and all(_SEGMENT.fullmatch(p) for p in parts):
            return RepoRef(github, "/".join(parts))
        return None
    for forge in sorted(known, key=lambda f: len(f.web_url), reverse=True):
        prefix = forge.web_url + "/"
        if not text.lower().startswith(prefix.lower()):
            continue
        rest = text[len(prefix) :].split("?")[0].split("#")[0]
        parts = [p for p in rest.split("/") if p]
        if forge.kind == "github":
            parts = parts[:2]
        elif "-" in parts:
            parts = parts[: parts.index("-")]
        if parts:
            parts[-1] = parts[-1].removesuffix(".git")
        if len(parts) >= 2 and all(_SEGMENT.fullmatch(p) for p in parts):
            return RepoRef(forge, "/".join(parts))
        return None
    return None


def repo_ref_from_prompt(prompt: str, forges: Sequence[Forge] = DEFAULT_FORGES) -> RepoRef | None:
    """The repository a task's prompt names (see `detect_repo`), on one of `forges`."""
    extra = [(f.web_url, f.kind) for f in forges if f not in DEFAULT_FORGES]
    github = next((f for f in forges if f.kind == "github"), DEFAULT_FORGES[0])
    url = detect_repo(prompt, extra, shorthand_base=github.web_url)
    return parse_repo_ref(url, forges) if url else None


# --- credentials and running git ---------------------------------------------------------------


@dataclass(frozen=True)
class GitCredential:
    """A token for git over HTTPS, sent as Basic auth. GitHub wants the user `x-access-token`
    with an App or fine-grained token; GitLab takes any non-blank user with a personal access
    token and `oauth2` with an OAuth token. The token never shows in a repr."""

    token: str = field(repr=False)
    username: str = "x-access-token"

    @classmethod
    def for_forge(cls, kind: ForgeKind, token: str) -> GitCredential:
        return cls(token=token, username="x-access-token" if kind == "github" else "oauth2")

    def header(self) -> str:
        # One line: base64 must not wrap (a wrapped header breaks for long tokens).
        pair = base64.b64encode(f"{self.username}:{self.token}".encode()).decode("ascii")
        return f"Authorization: Basic {pair}"

    def scrub(self, text: str) -> str:
        """`text` with the token (and its Basic-auth encoding) replaced by `***`."""
        secrets_in_text = [self.header().partition("Basic ")[2], self.token]
        for secret in secrets_in_text:
            if secret:
                text = text.replace(secret, "***")
        return text


@dataclass(frozen=True)
class _Done:
    returncode: int
    stdout: bytes
    stderr: str
    truncated: bool


def _git_env() -> dict[str, str]:
    # GIT_DIR, GIT_WORK_TREE and friends from the daemon's environment must not redirect a
    # command; nothing may prompt; messages in English for classification.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        {
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "",
            "SSH_ASKPASS": "",
            "LC_ALL": "C",
            "LANGUAGE": "C",
        }
    )
    return env


async def _git(
    args: Sequence[str],
    *,
    what: str,
    cwd: Path | None = None,
    within: float,
    credential: GitCredential | None = None,
    url: str | None = None,
    stdout_limit: int | None = None,
) -> _Done:
    """Run `git <args>` with the daemon's settings; `credential` goes to `url` only.

    Raises GitUnavailable when git is missing or the command outlives `within` seconds. With
    `stdout_limit`, reading stops (and git is killed) once the output passes that many bytes.
    """
    git_binary = shutil.which("git")
    if git_binary is None:
        raise GitUnavailable("git is not installed on the machine running the daemon")
    argv = [git_binary]
    for setting in _DAEMON_CONFIG:
        argv += ["-c", setting]
    env = _git_env()
    if credential is not None:
        assert url is not None, "a credential is always scoped to a URL"
        argv.append(f"--config-env=http.{url}.extraHeader={_AUTH_ENV}")
        env[_AUTH_ENV] = credential.header()
    argv += list(args)
    process = await trio.lowlevel.open_process(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
    )
    out = bytearray()
    err = bytearray()
    truncated = False

    async def read_stderr() -> None:
        assert process.stderr is not None
        while chunk := await process.stderr.receive_some(65536):
            if len(err) < _STDERR_KEEP:
                err.extend(chunk[: _STDERR_KEEP - len(err)])

    try:
        with trio.move_on_after(within) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_stderr)
                assert process.stdout is not None
                while chunk := await process.stdout.receive_some(65536):
                    out.extend(chunk)
                    if stdout_limit is not None and len(out) > stdout_limit:
                        truncated = True
                        process.kill()
                        break
                await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    await stream.aclose()
    stderr = err.decode("utf-8", "replace")
    if credential is not None:
        stderr = credential.scrub(stderr)
    if scope.cancelled_caught:
        raise GitUnavailable(f"git {what} did not finish within {_seconds(within)}")
    assert process.returncode is not None
    return _Done(process.returncode, bytes(out), stderr, truncated)


def _seconds(within: float) -> str:
    return f"{math.ceil(within)} s"


def _last_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else "no error output"


def _classify(done: _Done, *, what: str, repo: str) -> GitError:
    """The typed error for a failed network command (clone, fetch, ls-remote, push)."""
    err = done.stderr
    low = err.lower()
    if (
        "could not read username" in low
        or "authentication failed" in low
        or "returned error: 401" in low
    ):
        return AuthFailed(
            f"{repo}: the server refused the credential for {what} (missing, wrong or expired "
            "token)"
        )
    if "returned error: 403" in low or re.search(r"permission to \S+ denied", low):
        return PermissionDenied(
            f"{repo}: the token may not {what} this repository (it lacks write access)"
            if what == "push"
            else f"{repo}: the token may not {what} this repository"
        )
    if (
        re.search(r"repository '[^']*' not found", low)
        or "returned error: 404" in low
        or "does not appear to be a git repository" in low
    ):
        return RepoNotFound(f"{repo} does not exist, or the token cannot see it")
    network = (
        "could not resolve host",
        "failed to connect",
        "connection refused",
        "connection timed out",
        "operation timed out",
        "connection reset",
        "returned error: 5",
        "unable to access",
        "the remote end hung up",
        "ssl",
    )
    if any(marker in low for marker in network):
        return GitUnavailable(f"{repo}: the git server cannot be reached ({_last_line(err)})")
    return GitCommandFailed(f"git {what} failed for {repo}: {_last_line(err)}")


def _require_sha(value: str, name: str) -> str:
    if not _SHA.fullmatch(value):
        raise ValueError(f"{name} must be a full commit id, not {value!r}")
    return value


# --- the mirror cache and the session clone ----------------------------------------------------


class MirrorCache:
    """One bare mirror per repository under `root`, made once and fetched on reuse.

    A mirror holds the branches and tags (`refs/heads/*`, `refs/tags/*`) and nothing else:
    `git clone --mirror` would also copy a forge's `refs/pull/*` or `refs/merge-requests/*`,
    often far more than the code. It is made in a temporary folder and renamed into place, so an
    interrupted first clone never leaves a half mirror behind. Updates of one mirror are
    serialised within this process.
    """

    def __init__(self, root: Path, *, timeout: float = NETWORK_TIMEOUT) -> None:
        self.root = root
        self.timeout = timeout
        self._locks: dict[Path, trio.Lock] = {}

    def path_for(self, repo: RepoRef) -> Path:
        host = re.sub(r"[^A-Za-z0-9.-]", "_", repo.host)
        return self.root / host / f"{repo.path}.git"

    async def update(self, repo: RepoRef, credential: GitCredential | None = None) -> Path:
        """The mirror of `repo`, fetched now (cloned first if there is none); its path."""
        mirror = self.path_for(repo)
        lock = self._locks.setdefault(mirror, trio.Lock())
        async with lock:
            if (mirror / "HEAD").is_file():
                await self._fetch(mirror, repo, credential)
                return mirror
            mirror.parent.mkdir(parents=True, exist_ok=True)
            scratch = mirror.with_name(f".{mirror.name}.{secrets.token_hex(4)}.tmp")
            try:
                done = await _git(
                    ["init", "--bare", "--quiet", str(scratch)], what="init", within=LOCAL_TIMEOUT
                )
                if done.returncode != 0:
                    raise GitCommandFailed(f"git init failed: {_last_line(done.stderr)}")
                await self._fetch(scratch, repo, credential)
                scratch.rename(mirror)
            finally:
                if scratch.exists():
                    shutil.rmtree(scratch, ignore_errors=True)
            return mirror

    async def _fetch(self, mirror: Path, repo: RepoRef, credential: GitCredential | None) -> None:
        done = await _git(
            [
                "--git-dir",
                str(mirror),
                "fetch",
                "--quiet",
                "--prune",
                "--no-write-fetch-head",
                repo.clone_url,
                "+refs/heads/*:refs/heads/*",
                "+refs/tags/*:refs/tags/*",
            ],
            what="fetch",
            within=self.timeout,
            credential=credential,
            url=repo.clone_url,
        )
        if done.returncode != 0:
            raise _classify(done, what="fetch", repo=str(repo))


@dataclass(frozen=True)
class SessionClone:
    """The daemon's clone for one session: `branch` made from `base_branch` at `base_sha`."""

    path: Path
    repo: RepoRef
    branch: str
    base_branch: str
    base_sha: str


async def clone_session(
    mirror: Path,
    dest: Path,
    repo: RepoRef,
    *,
    default_branch: str,
    branch: str,
    within: float = LOCAL_TIMEOUT,
) -> SessionClone:
    """A working clone of `mirror` at `dest`, on a new `branch` from `default_branch`.

    The clone's `origin` is the repository's real URL (no credential in it); its objects are
    hard links into the mirror where the filesystem allows, so a clone costs little.
    """
    for name in (default_branch, branch):
        checked = await _git(
            ["check-ref-format", "--branch", name], what="check-ref-format", within=within
        )
        if checked.returncode != 0:
            raise GitCommandFailed(f"{name!r} is not a valid branch name")
    done = await _git(
        [
            "clone",
            "--quiet",
            "--no-tags",
            "--branch",
            default_branch,
            "--",
            str(mirror),
            str(dest),
        ],
        what="clone",
        within=within,
    )
    if done.returncode != 0:
        if "not found in upstream" in done.stderr or "Remote branch" in done.stderr:
            raise GitCommandFailed(f"{repo} has no branch {default_branch!r}")
        raise GitCommandFailed(f"git clone of {repo} failed: {_last_line(done.stderr)}")
    for args in (
        ["switch", "--quiet", "-c", branch],
        ["remote", "set-url", "origin", repo.clone_url],
    ):
        step = await _git(args, what=args[0], cwd=dest, within=within)
        if step.returncode != 0:
            raise GitCommandFailed(f"git {args[0]} failed: {_last_line(step.stderr)}")
    base = await _git(["rev-parse", "HEAD"], what="rev-parse", cwd=dest, within=within)
    return SessionClone(dest, repo, branch, default_branch, base.stdout.decode().strip())


# --- inside the sandbox: commit what the agent left, and bundle the commits ----------------------


@dataclass(frozen=True)
class Identity:
    """A git author or committer."""

    name: str
    email: str

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>"


@dataclass(frozen=True)
class SandboxCommand:
    """A command for the sandbox provider's `exec`: argv, its environment, and where to run."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str


#: Printed by `commit_command` and `bundle_command` when there is nothing to do.
NOTHING_TO_COMMIT: Final = "anycode: nothing to commit"
NO_NEW_COMMITS: Final = "anycode: no new commits"

# `-c` settings for git inside the sandbox, where the agent may have written the repository's
# config: no hooks (pre-commit, prepare-commit-msg, post-commit: githooks(5)), no fsmonitor
# program, no signing prompt, no pager, no automatic gc while the daemon waits. Command-line
# `-c` wins over every config file (https://git-scm.com/docs/git#Documentation/git.txt--cltnamegtltvaluegt).
SANDBOX_GIT_CONFIG: Final = (
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "commit.gpgSign=false",
    "tag.gpgSign=false",
    "core.pager=cat",
    "core.editor=true",
    "gc.auto=0",
    "maintenance.auto=false",
    "credential.helper=",
)

_NAME_UNSAFE: Final = re.compile(r"[<>\n\r\t\0]+")


def author_identity(display_name: str, user_key: str, email_domain: str) -> Identity:
    """The commit author for a chat user: their display name, and `user_key` (e.g.
    `telegram-123`) made into a local part at `email_domain`."""
    name = _NAME_UNSAFE.sub(" ", display_name).strip() or user_key
    local = re.sub(r"[^a-z0-9._-]+", "-", user_key.lower()).strip(".-") or "user"
    return Identity(name, f"{local}@{email_domain}")


def commit_message(prompt: str, co_author: Identity | None = None) -> str:
    """The first line of the prompt (at most 72 characters), plus a `Co-authored-by:` trailer
    for the agent (https://docs.github.com/en/pull-requests/committing-changes-to-your-project/creating-and-editing-commits/creating-a-commit-with-multiple-authors)."""
    first = next((line.strip() for line in prompt.splitlines() if line.strip()), "")
    if len(first) > 72:
        first = first[:71].rstrip() + "…"
    message = first or "Changes made by the agent"
    if co_author is not None:
        message += f"\n\nCo-authored-by: {co_author}"
    return message


def _git_prefix() -> str:
    return "git " + " ".join(f"-c {setting}" for setting in SANDBOX_GIT_CONFIG)


def commit_command(
    repo_dir: str,
    *,
    author: Identity,
    committer: Identity,
    message: str,
) -> SandboxCommand:
    """Stage everything and commit it in the sandbox's repository, if anything changed.

    Prints the new commit id, or `NOTHING_TO_COMMIT`. Author and committer go in through the
    environment (they override `user.*`), the message as a positional argument: nothing from
    the chat is ever parsed by the shell.
    """
    git = _git_prefix()
    script = (
        "set -e\n"
        f"{git} add -A\n"
        f"if {git} diff --cached --quiet; then echo '{NOTHING_TO_COMMIT}'; exit 0; fi\n"
        f'{git} commit --quiet --no-verify -m "$1"\n'
        f"{git} rev-parse HEAD\n"
    )
    env = {
        "GIT_AUTHOR_NAME": author.name,
        "GIT_AUTHOR_EMAIL": author.email,
        "GIT_COMMITTER_NAME": committer.name,
        "GIT_COMMITTER_EMAIL": committer.email,
        "GIT_TERMINAL_PROMPT": "0",
    }
    return SandboxCommand(("sh", "-c", script, "sh", message), env, repo_dir)


def bundle_command(repo_dir: str, *, base_sha: str, out_path: str) -> SandboxCommand:
    """Write the commits of the sandbox's HEAD that `base_sha` lacks into a bundle at
    `out_path`, or print `NO_NEW_COMMITS`. The bundle needs only `base_sha`, which the daemon's
    clone has, so it also works from a shallow clone."""
    _require_sha(base_sha, "base_sha")
    git = _git_prefix()
    script = (
        "set -e\n"
        f'if [ "$({git} rev-list --count "$1..HEAD")" = 0 ]; then echo \'{NO_NEW_COMMITS}\'; '
        "exit 0; fi\n"
        f'{git} bundle create --quiet "$2" HEAD "^$1"\n'
        'echo "$2"\n'
    )
    return SandboxCommand(("sh", "-c", script, "sh", base_sha, out_path), {}, repo_dir)


# --- into the sandbox: the session clone, without the credential ---------------------------------


async def seed_bundle(clone: SessionClone, out: Path, *, within: float = LOCAL_TIMEOUT) -> None:
    """Write the session branch and the default branch of the daemon's `clone`, with their whole
    history, into a bundle at `out`: what `seed_command` clones the sandbox's repository from.

    A private repository can then be worked on in a sandbox that never holds the token the
    daemon fetched it with; a bundle carries objects and refs only, no configuration.
    """
    done = await _git(
        [
            "bundle",
            "create",
            "--quiet",
            str(out),
            f"refs/heads/{clone.branch}",
            f"refs/heads/{clone.base_branch}",
        ],
        what="bundle create",
        cwd=clone.path,
        within=within,
    )
    if done.returncode != 0:
        raise GitCommandFailed(f"git bundle create failed: {_last_line(done.stderr)}")


def seed_command(folder: str, *, bundle: str, dest: str, clone: SessionClone) -> SandboxCommand:
    """Clone the bundle `seed_bundle` made (at `bundle`, copied into the sandbox) into `dest`
    on the session branch, then point `origin` at the repository's public URL. The bundle is
    removed whether that worked or not. Both paths are relative to `folder`, where it runs.

    `origin` carries no credential, like every other part of the sandbox's `.git/config`; the
    bundle's branches stay as `origin/<branch>` (the default branch included, for a diff).
    """
    git = _git_prefix()
    script = (
        "set -e\n"
        "trap 'rm -f -- \"$1\"' EXIT\n"
        f'{git} clone --quiet --no-tags --branch "$3" -- "$1" "$2"\n'
        f'{git} -C "$2" remote set-url origin "$4"\n'
    )
    return SandboxCommand(
        ("sh", "-c", script, "sh", bundle, dest, clone.branch, clone.repo.clone_url),
        {"GIT_TERMINAL_PROMPT": "0"},
        folder,
    )


# --- back on the daemon: import, push, diff ------------------------------------------------------


async def import_bundle(clone: SessionClone, bundle: Path, *, within: float = LOCAL_TIMEOUT) -> str:
    """Verify `bundle` and make the session branch point at its HEAD; the new commit id.

    The sandbox is the source of truth for the branch: an agent that amended or rebased its
    commits replaces what was imported before.
    """
    verified = await _git(
        ["bundle", "verify", str(bundle)],
        what="bundle verify",
        cwd=clone.path,
        within=within,
    )
    if verified.returncode != 0:
        if "lacks these prerequisite commits" in verified.stderr:
            raise BundleInvalid(
                "the sandbox's commits build on commits the daemon's copy of "
                f"{clone.repo} does not have (was the branch rebased onto newer upstream work?)"
            )
        raise BundleInvalid(f"the sandbox's bundle is not valid: {_last_line(verified.stderr)}")
    heads = await _git(
        ["bundle", "list-heads", str(bundle)],
        what="bundle list-heads",
        cwd=clone.path,
        within=within,
    )
    tips = {}
    for line in heads.stdout.decode().splitlines():
        tip, _, name = line.partition(" ")
        tips[name] = tip
    sha = tips.get("HEAD")
    if sha is None:
        raise BundleInvalid("the sandbox's bundle has no HEAD")
    fetched = await _git(
        ["fetch", "--quiet", "--no-tags", str(bundle), "+HEAD:refs/anycode/sandbox"],
        what="fetch from bundle",
        cwd=clone.path,
        within=within,
    )
    if fetched.returncode != 0:
        raise BundleInvalid(f"importing the sandbox's bundle failed: {_last_line(fetched.stderr)}")
    reset = await _git(
        ["reset", "--quiet", "--hard", sha], what="reset", cwd=clone.path, within=within
    )
    if reset.returncode != 0:
        raise GitCommandFailed(f"moving {clone.branch} failed: {_last_line(reset.stderr)}")
    return sha


@dataclass(frozen=True)
class PushResult:
    """A push that landed: the commit the branch now points at, and whether it is new."""

    branch: str
    sha: str
    created: bool


_PUSH_HINTS: Final = {
    "non-fast-forward": "the branch on the server has commits this session does not have",
    "fetch first": "the branch on the server has commits this session does not have",
    "stale info": "the branch on the server changed since this session last pushed it",
    "pre-receive hook declined": "a check on the server refused it",
    "hook declined": "a check on the server refused it (a protected branch?)",
    "protected branch hook declined": "the branch is protected",
    "shallow update not allowed": "the server lacks the history this branch builds on",
}


async def push_branch(
    clone: SessionClone,
    credential: GitCredential | None,
    *,
    lease: str | None = None,
    within: float = NETWORK_TIMEOUT,
) -> PushResult:
    """Push the session branch to the repository's real URL with `credential`.

    Without `lease` the push must fast-forward. With `lease` (the commit this daemon last
    pushed, or "" for "the branch must not exist"), the branch is replaced only if the server
    still has that commit: the daemon may rewrite its own pushes, never someone else's.
    """
    ref = f"refs/heads/{clone.branch}"
    args = ["push", "--porcelain", "--no-verify"]
    if lease is not None:
        if lease:
            _require_sha(lease, "lease")
        args.append(f"--force-with-lease={ref}:{lease}")
    args += [clone.repo.clone_url, f"{ref}:{ref}"]
    done = await _git(
        args,
        what="push",
        cwd=clone.path,
        within=within,
        credential=credential,
        url=clone.repo.clone_url,
    )
    lines = done.stdout.decode("utf-8", "replace").splitlines()
    status = next((line for line in lines if f"\t{ref}:{ref}\t" in line), None)
    if status is not None and status.startswith("!"):
        summary = status.split("\t", 2)[2]
        reason_match = re.search(r"\(([^)]*)\)\s*$", summary)
        reason = reason_match.group(1) if reason_match else summary.strip()
        remote = tuple(
            line.removeprefix("remote:").strip()
            for line in done.stderr.splitlines()
            if line.startswith("remote:") and line.removeprefix("remote:").strip()
        )
        hint = next((h for key, h in _PUSH_HINTS.items() if reason == key), "")
        message = f"The push of {clone.branch} to {clone.repo} was rejected ({reason})"
        message += f": {hint}." if hint else "."
        if remote:
            message += " The server said: " + " / ".join(remote[:5])
        if credential is not None:
            message = credential.scrub(message)
        raise PushRejected(message, reason=reason, remote=remote)
    if done.returncode != 0 or status is None:
        raise _classify(done, what="push", repo=str(clone.repo))
    head = await _git(["rev-parse", ref], what="rev-parse", cwd=clone.path, within=LOCAL_TIMEOUT)
    return PushResult(clone.branch, head.stdout.decode().strip(), created=status.startswith("*"))


@dataclass(frozen=True)
class FileChange:
    """One file in a diff stat; `insertions`/`deletions` are None for a binary file."""

    path: str
    insertions: int | None
    deletions: int | None
    old_path: str | None = None

    @property
    def binary(self) -> bool:
        return self.insertions is None


@dataclass(frozen=True)
class DiffStat:
    """What changed between the default branch and the session branch."""

    files: tuple[FileChange, ...]

    @property
    def insertions(self) -> int:
        return sum(f.insertions or 0 for f in self.files)

    @property
    def deletions(self) -> int:
        return sum(f.deletions or 0 for f in self.files)

    @property
    def empty(self) -> bool:
        return not self.files


@dataclass(frozen=True)
class Patch:
    """A patch, or nothing but its size class when it passed the cap (`too_large`)."""

    data: bytes
    too_large: bool
    limit: int


def _diff_range(clone: SessionClone, head: str | None) -> str:
    # Three dots: from where the branch left the default branch, as a pull request shows it.
    return f"refs/heads/{clone.base_branch}...{head or f'refs/heads/{clone.branch}'}"


_DIFF_FLAGS: Final = ("--no-color", "--no-ext-diff", "--no-textconv", "-M")


async def diff_stat(
    clone: SessionClone, head: str | None = None, *, within: float = LOCAL_TIMEOUT
) -> DiffStat:
    """Files changed, with lines added and removed (binary files as binary), from the default
    branch to the session branch (or `head`)."""
    done = await _git(
        ["diff", "--numstat", "-z", *_DIFF_FLAGS, _diff_range(clone, head)],
        what="diff",
        cwd=clone.path,
        within=within,
    )
    if done.returncode != 0:
        raise GitCommandFailed(f"git diff failed: {_last_line(done.stderr)}")
    return DiffStat(tuple(_parse_numstat(done.stdout)))


def _parse_numstat(raw: bytes) -> list[FileChange]:
    # `-z` records: "added\tdeleted\tpath\0", or for a rename "added\tdeleted\t\0old\0new\0";
    # a binary file counts "-\t-" (https://git-scm.com/docs/git-diff#_other_diff_formats).
    fields = raw.decode("utf-8", "surrogateescape").split("\0")
    changes = []
    index = 0
    while index < len(fields) and fields[index]:
        added, deleted, path = fields[index].split("\t", 2)
        index += 1
        old_path = None
        if not path:
            old_path, path = fields[index], fields[index + 1]
            index += 2
        binary = added == "-"
        changes.append(
            FileChange(
                path,
                None if binary else int(added),
                None if binary else int(deleted),
                old_path,
            )
        )
    return changes


async def diff_patch(
    clone: SessionClone,
    head: str | None = None,
    *,
    max_bytes: int,
    within: float = LOCAL_TIMEOUT,
) -> Patch:
    """The patch from the default branch to the session branch (or `head`), as bytes exactly
    as committed (CRLF kept; binary files as git binary patches, so `git apply` restores
    them). Past `max_bytes` git is stopped and the patch is reported `too_large`."""
    done = await _git(
        ["diff", "--binary", *_DIFF_FLAGS, _diff_range(clone, head)],
        what="diff",
        cwd=clone.path,
        within=within,
        stdout_limit=max_bytes,
    )
    if done.truncated:
        return Patch(b"", too_large=True, limit=max_bytes)
    if done.returncode != 0:
        raise GitCommandFailed(f"git diff failed: {_last_line(done.stderr)}")
    return Patch(done.stdout, too_large=False, limit=max_bytes)
