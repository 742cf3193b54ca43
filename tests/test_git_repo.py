"""The daemon's git operations against a real git server (git http-backend, real Basic auth).

A "sandbox" here is a plain clone on this machine in which the test plays the agent; the
commands `commit_command` and `bundle_command` build are run there exactly as a provider's exec
would run them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from anycode_actors.git import (
    AuthFailed,
    BundleInvalid,
    Forge,
    GitCredential,
    GitError,
    GitUnavailable,
    Identity,
    MirrorCache,
    PermissionDenied,
    PushRejected,
    RepoNotFound,
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
    parse_repo_ref,
    push_branch,
    repo_ref_from_prompt,
)
from anycode_actors.git.repo import NO_NEW_COMMITS, NOTHING_TO_COMMIT
from tests.fakes.git_server import GIT_TEST_ENV, RECEIVE, GitServer, git

TOKEN = "ghs_pushtokenABCDEFGHIJKLMNOPQRSTUVWXYZ0123"
READ_TOKEN = "ghs_readtokenABCDEFGHIJKLMNOPQRSTUVWXYZ0123"
USER = Identity("Ada Lovelace", "telegram-42@users.example.org")
BOT = Identity("anycode[bot]", "bot@example.org")
AGENT = Identity("Claude", "noreply@anthropic.com")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GitServer]:
    with GitServer(tmp_path / "srv", token=TOKEN, read_token=READ_TOKEN) as started:
        yield started


def ref_on(server: GitServer, path: str) -> RepoRef:
    forge = Forge("github", server.url(), server.url() + "/api/v3")
    ref = parse_repo_ref(f"{server.url()}/{path}", [forge])
    assert ref is not None
    return ref


CRED = GitCredential(TOKEN)


async def session_for(
    server: GitServer, tmp_path: Path, path: str, *, default_branch: str = "main"
) -> SessionClone:
    ref = ref_on(server, path)
    mirror = await MirrorCache(tmp_path / "cache").update(ref, CRED)
    return await clone_session(
        mirror, tmp_path / "session", ref, default_branch=default_branch, branch="anycode/s1"
    )


def sandbox_clone(server: GitServer, path: str, dest: Path, *extra: str) -> Path:
    git("clone", "--quiet", *extra, server.url(path), str(dest))
    return dest


def run_in_sandbox(command: SandboxCommand) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_TEST_ENV)
    env.update(command.env)
    done = subprocess.run(
        list(command.argv), cwd=command.cwd, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def agent_commits(work: Path, prompt: str, base_sha: str, bundle: Path) -> str:
    """What the daemon does through exec after a turn: commit the leftovers, then bundle."""
    run_in_sandbox(
        commit_command(str(work), author=USER, committer=BOT, message=commit_message(prompt, AGENT))
    )
    return run_in_sandbox(bundle_command(str(work), base_sha=base_sha, out_path=str(bundle)))


# --- references ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "kind", "path", "clone_url"),
    [
        ("acme/web", "github", "acme/web", "https://ghe.acme.io/acme/web.git"),
        (
            "https://github.com/acme/web.git",
            "github",
            "acme/web",
            "https://github.com/acme/web.git",
        ),
        ("https://github.com/acme/web/tree/main/src", "github", "acme/web", None),
        (
            "https://gitlab.com/g/sub/proj",
            "gitlab",
            "g/sub/proj",
            "https://gitlab.com/g/sub/proj.git",
        ),
        ("https://gitlab.com/g/sub/proj/-/tree/main", "gitlab", "g/sub/proj", None),
        (
            "https://ghe.acme.io/team/tool",
            "github",
            "team/tool",
            "https://ghe.acme.io/team/tool.git",
        ),
        ("https://git.acme.io/a/b/c.git", "gitlab", "a/b/c", "https://git.acme.io/a/b/c.git"),
    ],
)
def test_references_parse_into_forge_host_path_and_clone_url(
    reference: str, kind: str, path: str, clone_url: str | None
) -> None:
    forges = [
        Forge("github", "https://ghe.acme.io", "https://ghe.acme.io/api/v3"),
        Forge("gitlab", "https://git.acme.io", "https://git.acme.io/api/v4"),
    ]
    ref = parse_repo_ref(reference, forges)
    assert ref is not None
    assert (ref.kind, ref.path) == (kind, path)
    if clone_url:
        assert ref.clone_url == clone_url


@pytest.mark.parametrize(
    "reference", ["src/main.rs/x", "https://example.com/a/b", "a/../b", "https://github.com/acme"]
)
def test_non_repositories_are_none(reference: str) -> None:
    assert parse_repo_ref(reference) is None


def test_a_prompt_on_a_configured_enterprise_host_names_that_host() -> None:
    ghe = Forge("github", "http://10.0.0.5:8080", "http://10.0.0.5:8080/api/v3")
    ref = repo_ref_from_prompt("fix http://10.0.0.5:8080/acme/web/pull/3 please", [ghe])
    assert ref is not None
    assert (ref.forge, ref.path, ref.host) == (ghe, "acme/web", "10.0.0.5:8080")
    # A shorthand goes to the configured GitHub, not github.com.
    short = repo_ref_from_prompt("fix the test in acme/web", [ghe])
    assert short is not None and short.clone_url == "http://10.0.0.5:8080/acme/web.git"
    # Public forges are still recognised.
    lab = repo_ref_from_prompt("see https://gitlab.com/g/s/p", [ghe])
    assert lab is not None and (lab.kind, lab.path) == ("gitlab", "g/s/p")


# --- commit message and identity ---------------------------------------------------------------


def test_a_gitlab_under_a_path_of_the_github_host_is_told_apart() -> None:
    forges = [
        Forge("github", "http://git.acme.io", "http://git.acme.io/api/v3"),
        Forge("gitlab", "http://git.acme.io/lab", "http://git.acme.io/lab/api/v4"),
    ]
    lab = repo_ref_from_prompt("fix http://git.acme.io/lab/g/sub/proj please", forges)
    assert lab is not None and (lab.kind, lab.path) == ("gitlab", "g/sub/proj")
    assert lab.clone_url == "http://git.acme.io/lab/g/sub/proj.git"
    hub = repo_ref_from_prompt("fix http://git.acme.io/team/tool please", forges)
    assert hub is not None and (hub.kind, hub.path) == ("github", "team/tool")


def test_author_is_the_chat_user_and_the_message_is_the_prompts_first_line() -> None:
    who = author_identity("Ada <Lovelace>\n", "Telegram:42", "users.example.org")
    assert who == Identity("Ada  Lovelace", "telegram-42@users.example.org")
    message = commit_message("\n  Fix the login test\nmore detail", AGENT)
    assert message == "Fix the login test\n\nCo-authored-by: Claude <noreply@anthropic.com>"
    assert len(commit_message("x" * 200).splitlines()[0]) == 72


# --- mirror and session clone -------------------------------------------------------------------


async def test_mirror_and_session_clone_use_the_repositorys_default_branch(
    server: GitServer, tmp_path: Path
) -> None:
    server.create_repo("acme/web", default_branch="trunk")
    ref = ref_on(server, "acme/web")
    cache = MirrorCache(tmp_path / "cache")
    mirror = await cache.update(ref, CRED)
    # The mirror fetched with the credential scoped to the repository.
    assert all(r.authenticated for r in server.requests_for("acme/web"))
    clone = await clone_session(
        mirror, tmp_path / "s", ref, default_branch="trunk", branch="anycode/abc123"
    )
    assert clone.base_sha == server.branch_sha("acme/web", "trunk")
    assert git("branch", "--show-current", cwd=clone.path).stdout.strip() == "anycode/abc123"
    assert git("remote", "get-url", "origin", cwd=clone.path).stdout.strip() == ref.clone_url
    assert TOKEN not in (clone.path / ".git" / "config").read_text()
    assert TOKEN not in (mirror / "config").read_text()
    # Reuse fetches: a commit pushed upstream since shows up in the mirror.
    work = sandbox_clone(server, "acme/web", tmp_path / "other")
    (work / "later.txt").write_text("later\n")
    git("add", "-A", cwd=work)
    git("commit", "--quiet", "-m", "later", cwd=work)
    git("push", "--quiet", str(server.repo_path("acme/web")), "HEAD:trunk", cwd=work)
    assert await cache.update(ref, CRED) == mirror
    tip = git("--git-dir", str(mirror), "rev-parse", "refs/heads/trunk").stdout.strip()
    assert tip == server.branch_sha("acme/web", "trunk")


async def test_a_missing_default_branch_is_a_clear_error(server: GitServer, tmp_path: Path) -> None:
    server.create_repo("acme/web", default_branch="trunk")
    with pytest.raises(GitError, match="has no branch 'main'"):
        await session_for(server, tmp_path, "acme/web", default_branch="main")


# --- the whole round trip -----------------------------------------------------------------------


async def test_agent_work_comes_out_as_a_bundle_and_is_pushed_with_the_credential(
    server: GitServer, tmp_path: Path
) -> None:
    server.create_repo("acme/web", default_branch="develop", files={"a.txt": "one\n"})
    clone = await session_for(server, tmp_path, "acme/web", default_branch="develop")
    work = sandbox_clone(server, "acme/web", tmp_path / "sandbox")
    # The agent: a text change, a new binary file, an executable script; left uncommitted.
    (work / "a.txt").write_text("one\ntwo\n")
    (work / "logo.bin").write_bytes(bytes(range(256)) * 4)
    (work / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (work / "run.sh").chmod(0o755)
    bundle = tmp_path / "out.bundle"
    assert agent_commits(work, "Add a logo\nand more", clone.base_sha, bundle) == str(bundle)

    sha = await import_bundle(clone, bundle)
    assert sha == git("rev-parse", "HEAD", cwd=work).stdout.strip()
    pushed = await push_branch(clone, CRED)
    assert (pushed.sha, pushed.created) == (sha, True)
    assert server.branch_sha("acme/web", "anycode/s1") == sha
    receive = server.requests_for("acme/web", RECEIVE)
    assert receive and all(r.authenticated for r in receive)

    show = git(
        "--git-dir",
        str(server.repo_path("acme/web")),
        "log",
        "-1",
        "--format=%an <%ae>|%cn <%ce>|%B",
        sha,
    ).stdout
    author, committer, body = show.split("|", 2)
    assert (author, committer) == (str(USER), str(BOT))
    assert body.strip() == "Add a logo\n\nCo-authored-by: Claude <noreply@anthropic.com>"
    mode = git("--git-dir", str(server.repo_path("acme/web")), "ls-tree", sha, "run.sh").stdout
    assert mode.startswith("100755")

    stat = await diff_stat(clone)
    by_path = {f.path: f for f in stat.files}
    assert set(by_path) == {"a.txt", "logo.bin", "run.sh"}
    assert by_path["logo.bin"].binary and by_path["logo.bin"].insertions is None
    assert (by_path["a.txt"].insertions, by_path["a.txt"].deletions) == (1, 0)
    assert (stat.insertions, stat.deletions) == (3, 0)

    # The patch restores every file, the binary one included, on a fresh checkout.
    patch = await diff_patch(clone, max_bytes=1024 * 1024)
    assert not patch.too_large
    check = sandbox_clone(server, "acme/web", tmp_path / "check")
    git("apply", "-", cwd=check, input=patch.data)
    assert (check / "logo.bin").read_bytes() == (work / "logo.bin").read_bytes()
    assert os.access(check / "run.sh", os.X_OK)

    # A follow-up turn: a fast-forward push of the same branch.
    (work / "a.txt").write_text("one\ntwo\nthree\n")
    agent_commits(work, "more", clone.base_sha, bundle)
    await import_bundle(clone, bundle)
    again = await push_branch(clone, CRED)
    assert not again.created and again.sha != sha
    assert server.branch_sha("acme/web", "anycode/s1") == again.sha


async def test_commit_in_the_sandbox_ignores_hooks_the_agent_planted(
    server: GitServer, tmp_path: Path
) -> None:
    server.create_repo("acme/web")
    work = sandbox_clone(server, "acme/web", tmp_path / "sandbox")
    hooks = work / "planted-hooks"
    hooks.mkdir()
    witness = tmp_path / "hook-ran"
    for name in ("pre-commit", "prepare-commit-msg", "commit-msg", "post-commit"):
        (hooks / name).write_text(f"#!/bin/sh\ntouch {witness}\nexit 1\n")
        (hooks / name).chmod(0o755)
    git("config", "core.hooksPath", str(hooks), cwd=work)
    git("config", "commit.gpgSign", "true", cwd=work)
    (work / "x.txt").write_text("x\n")
    sha = run_in_sandbox(commit_command(str(work), author=USER, committer=BOT, message="x"))
    assert sha == git("rev-parse", "HEAD", cwd=work).stdout.strip()
    assert not witness.exists()


# --- push failures ------------------------------------------------------------------------------


async def prepared(server: GitServer, tmp_path: Path, path: str = "acme/web") -> SessionClone:
    clone = await session_for(server, tmp_path, path)
    work = sandbox_clone(server, path, tmp_path / "sandbox")
    (work / "change.txt").write_text("change\n")
    bundle = tmp_path / "out.bundle"
    agent_commits(work, "change", clone.base_sha, bundle)
    await import_bundle(clone, bundle)
    return clone


def assert_no_token(error: BaseException) -> None:
    text = f"{error} {error!r} {error.args}"
    assert TOKEN not in text and READ_TOKEN not in text
    assert "Authorization" not in text


async def test_a_declining_pre_receive_hook_is_a_push_rejection_with_gits_reason(
    server: GitServer, tmp_path: Path
) -> None:
    server.create_repo("acme/web")
    clone = await prepared(server, tmp_path)
    server.decline_pushes("acme/web", "GH001: Large files detected")
    with pytest.raises(PushRejected) as caught:
        await push_branch(clone, CRED)
    assert caught.value.reason == "pre-receive hook declined"
    assert "rejected (pre-receive hook declined)" in str(caught.value)
    assert "GH001: Large files detected" in str(caught.value)
    assert_no_token(caught.value)


async def test_a_protected_branch_is_a_push_rejection(server: GitServer, tmp_path: Path) -> None:
    server.create_repo("acme/web")
    server.protect_branch("acme/web", "anycode/s1")
    clone = await prepared(server, tmp_path)
    with pytest.raises(PushRejected) as caught:
        await push_branch(clone, CRED)
    assert caught.value.reason == "hook declined"
    assert "Protected branch update failed" in str(caught.value)
    assert server.branch_sha("acme/web", "anycode/s1") is None


async def test_a_branch_moved_by_someone_else_is_not_overwritten(
    server: GitServer, tmp_path: Path
) -> None:
    server.create_repo("acme/web")
    clone = await prepared(server, tmp_path)
    first = await push_branch(clone, CRED)
    # Someone else pushes to the session's branch.
    other = sandbox_clone(server, "acme/web", tmp_path / "other")
    (other / "theirs.txt").write_text("theirs\n")
    git("add", "-A", cwd=other)
    git("commit", "--quiet", "-m", "theirs", cwd=other)
    git(
        "push",
        "--quiet",
        "--force",
        str(server.repo_path("acme/web")),
        "HEAD:anycode/s1",
        cwd=other,
    )
    theirs = server.branch_sha("acme/web", "anycode/s1")
    with pytest.raises(PushRejected) as plain:
        await push_branch(clone, CRED)
    assert plain.value.reason in ("fetch first", "non-fast-forward")
    assert "commits this session does not have" in str(plain.value)
    # A lease on what this daemon pushed last refuses too: the branch is not as it left it.
    with pytest.raises(PushRejected) as leased:
        await push_branch(clone, CRED, lease=first.sha)
    assert leased.value.reason == "stale info"
    assert server.branch_sha("acme/web", "anycode/s1") == theirs


async def test_a_lease_lets_the_daemon_replace_its_own_push(
    server: GitServer, tmp_path: Path
) -> None:
    server.create_repo("acme/web")
    clone = await prepared(server, tmp_path)
    first = await push_branch(clone, CRED)
    # The agent amends its commit: not a fast-forward of what was pushed.
    work = tmp_path / "sandbox"
    git("commit", "--quiet", "--amend", "-m", "amended", cwd=work)
    bundle = tmp_path / "again.bundle"
    run_in_sandbox(bundle_command(str(work), base_sha=clone.base_sha, out_path=str(bundle)))
    amended = await import_bundle(clone, bundle)
    with pytest.raises(PushRejected, match="non-fast-forward"):
        await push_branch(clone, CRED)
    await push_branch(clone, CRED, lease=first.sha)
    assert server.branch_sha("acme/web", "anycode/s1") == amended


async def test_a_missing_repository_is_repo_not_found(server: GitServer, tmp_path: Path) -> None:
    with pytest.raises(RepoNotFound, match="does not exist") as caught:
        await MirrorCache(tmp_path / "cache").update(ref_on(server, "acme/nope"), CRED)
    assert_no_token(caught.value)
    assert not list((tmp_path / "cache").rglob("*.tmp"))


async def test_bad_credentials_are_auth_failed_without_the_token(
    server: GitServer, tmp_path: Path
) -> None:
    server.create_repo("acme/secret", private=True)
    wrong = GitCredential("ghs_wrongwrongwrongwrongwrongwrong")
    with pytest.raises(AuthFailed) as caught:
        await MirrorCache(tmp_path / "cache").update(ref_on(server, "acme/secret"), wrong)
    assert "ghs_wrong" not in str(caught.value)
    with pytest.raises(AuthFailed):
        await MirrorCache(tmp_path / "cache").update(ref_on(server, "acme/secret"), None)


async def test_pushing_with_a_wrong_or_missing_or_read_only_token(
    server: GitServer, tmp_path: Path
) -> None:
    server.create_repo("acme/web")
    clone = await prepared(server, tmp_path)
    with pytest.raises(AuthFailed) as wrong:
        await push_branch(clone, GitCredential("ghs_wrongwrongwrongwrongwrongwrong"))
    assert "ghs_wrong" not in f"{wrong.value!r}"
    with pytest.raises(AuthFailed):
        await push_branch(clone, None)
    with pytest.raises(PermissionDenied, match="lacks write access") as read_only:
        await push_branch(clone, GitCredential(READ_TOKEN))
    assert_no_token(read_only.value)
    assert server.branch_sha("acme/web", "anycode/s1") is None


async def test_an_unreachable_server_is_git_unavailable(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    forge = Forge("github", f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/api")
    ref = parse_repo_ref(f"http://127.0.0.1:{port}/acme/web", [forge])
    assert ref is not None
    with pytest.raises(GitUnavailable, match="cannot be reached"):
        await MirrorCache(tmp_path / "cache").update(ref, CRED)


async def test_a_server_that_never_answers_is_git_unavailable_after_the_timeout(
    tmp_path: Path,
) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections are queued by the kernel and never answered
        base = f"http://127.0.0.1:{silent.getsockname()[1]}"
        ref = parse_repo_ref(f"{base}/acme/web", [Forge("github", base, base + "/api")])
        assert ref is not None
        with pytest.raises(GitUnavailable, match="did not finish within 2 s"):
            await MirrorCache(tmp_path / "cache", timeout=1.5).update(ref, CRED)
    assert not list((tmp_path / "cache").rglob("*.tmp"))


async def test_git_missing_is_git_unavailable(
    server: GitServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(GitUnavailable, match="not installed"):
        await MirrorCache(tmp_path / "cache").update(ref_on(server, "acme/web"), CRED)


# --- diffs --------------------------------------------------------------------------------------


async def test_crlf_files_diff_as_committed(server: GitServer, tmp_path: Path) -> None:
    server.create_repo("acme/web", files={"win.txt": b"a\r\nb\r\n"})
    clone = await session_for(server, tmp_path, "acme/web")
    work = sandbox_clone(server, "acme/web", tmp_path / "sandbox")
    (work / "win.txt").write_bytes(b"a\r\nB\r\nc\r\n")
    bundle = tmp_path / "out.bundle"
    agent_commits(work, "crlf", clone.base_sha, bundle)
    await import_bundle(clone, bundle)
    stat = await diff_stat(clone)
    assert [(f.path, f.insertions, f.deletions) for f in stat.files] == [("win.txt", 2, 1)]
    patch = await diff_patch(clone, max_bytes=4096)
    assert b"+B\r\n" in patch.data and b"-b\r\n" in patch.data


async def test_no_changes_means_no_commit_no_bundle_and_an_empty_diff(
    server: GitServer, tmp_path: Path
) -> None:
    server.create_repo("acme/web")
    clone = await session_for(server, tmp_path, "acme/web")
    work = sandbox_clone(server, "acme/web", tmp_path / "sandbox")
    message = commit_message("nothing")
    assert (
        run_in_sandbox(commit_command(str(work), author=USER, committer=BOT, message=message))
        == NOTHING_TO_COMMIT
    )
    bundle = tmp_path / "out.bundle"
    out = run_in_sandbox(bundle_command(str(work), base_sha=clone.base_sha, out_path=str(bundle)))
    assert out == NO_NEW_COMMITS and not bundle.exists()
    stat = await diff_stat(clone)
    assert stat.empty and (stat.insertions, stat.deletions) == (0, 0)
    patch = await diff_patch(clone, max_bytes=100)
    assert (patch.data, patch.too_large) == (b"", False)


async def test_a_patch_over_the_cap_is_reported_too_large(
    server: GitServer, tmp_path: Path
) -> None:
    server.create_repo("acme/web")
    clone = await session_for(server, tmp_path, "acme/web")
    work = sandbox_clone(server, "acme/web", tmp_path / "sandbox")
    (work / "big.txt").write_text("".join(f"line {i}\n" for i in range(200_000)))
    bundle = tmp_path / "out.bundle"
    agent_commits(work, "big", clone.base_sha, bundle)
    await import_bundle(clone, bundle)
    patch = await diff_patch(clone, max_bytes=64 * 1024)
    assert (patch.data, patch.too_large, patch.limit) == (b"", True, 64 * 1024)
    stat = await diff_stat(clone)
    assert stat.insertions == 200_000


async def test_a_repository_with_a_submodule_clones_and_moves_its_pointer(
    server: GitServer, tmp_path: Path
) -> None:
    server.create_repo("acme/lib")
    lib_sha = server.branch_sha("acme/lib", "main")
    assert lib_sha is not None
    server.create_repo(
        "acme/app",
        files={
            ".gitmodules": f'[submodule "lib"]\n\tpath = lib\n\turl = {server.url("acme/lib")}\n'
        },
    )
    # Add the gitlink to the server repository directly.
    scratch = sandbox_clone(server, "acme/app", tmp_path / "scratch")
    git("update-index", "--add", "--cacheinfo", f"160000,{lib_sha},lib", cwd=scratch)
    git("commit", "--quiet", "-m", "add lib", cwd=scratch)
    git("push", "--quiet", str(server.repo_path("acme/app")), "HEAD:main", cwd=scratch)

    clone = await session_for(server, tmp_path, "acme/app")
    assert (clone.path / "lib").is_dir() and not list((clone.path / "lib").iterdir())
    # The agent moves the pointer (as `git -C lib checkout <sha>` would) and edits a file.
    work = sandbox_clone(server, "acme/app", tmp_path / "sandbox")
    new_pointer = "1" * 40
    git("update-index", "--cacheinfo", f"160000,{new_pointer},lib", cwd=work)
    (work / "README.md").write_text("# app\nwith lib\n")
    bundle = tmp_path / "out.bundle"
    agent_commits(work, "bump lib", clone.base_sha, bundle)
    await import_bundle(clone, bundle)
    stat = await diff_stat(clone)
    assert {f.path for f in stat.files} == {"lib", "README.md"}
    pushed = await push_branch(clone, CRED)
    tree = git("--git-dir", str(server.repo_path("acme/app")), "ls-tree", pushed.sha, "lib").stdout
    assert tree.startswith(f"160000 commit {new_pointer}")


async def test_a_shallow_sandbox_clone_bundles_and_pushes(
    server: GitServer, tmp_path: Path
) -> None:
    server.create_repo("acme/web")
    history = sandbox_clone(server, "acme/web", tmp_path / "history")
    for index in range(3):
        (history / f"h{index}.txt").write_text(f"{index}\n")
        git("add", "-A", cwd=history)
        git("commit", "--quiet", "-m", f"h{index}", cwd=history)
    git("push", "--quiet", str(server.repo_path("acme/web")), "HEAD:main", cwd=history)
    clone = await session_for(server, tmp_path, "acme/web")
    work = sandbox_clone(server, "acme/web", tmp_path / "sandbox", "--depth", "1")
    assert (work / ".git" / "shallow").exists()
    (work / "new.txt").write_text("new\n")
    bundle = tmp_path / "out.bundle"
    agent_commits(work, "on a shallow clone", clone.base_sha, bundle)
    sha = await import_bundle(clone, bundle)
    assert (await push_branch(clone, CRED)).sha == sha
    assert server.branch_sha("acme/web", "anycode/s1") == sha


async def test_a_bundle_whose_base_the_daemon_lacks_is_refused(
    server: GitServer, tmp_path: Path
) -> None:
    server.create_repo("acme/web")
    clone = await session_for(server, tmp_path, "acme/web")
    # The agent builds on an upstream commit made after the daemon's clone.
    work = sandbox_clone(server, "acme/web", tmp_path / "sandbox")
    (work / "upstream.txt").write_text("u\n")
    git("add", "-A", cwd=work)
    git("commit", "--quiet", "-m", "upstream", cwd=work)
    upstream = git("rev-parse", "HEAD", cwd=work).stdout.strip()
    (work / "mine.txt").write_text("m\n")
    bundle = tmp_path / "out.bundle"
    agent_commits(work, "mine", upstream, bundle)
    with pytest.raises(BundleInvalid, match="does not have"):
        await import_bundle(clone, bundle)
    garbage = tmp_path / "garbage.bundle"
    garbage.write_bytes(b"not a bundle")
    with pytest.raises(BundleInvalid, match="not valid"):
        await import_bundle(clone, garbage)
