"""The test git server, driven by the real `git` CLI: clone, push with and without a credential,
hooks that decline, private repositories, large (chunked) pushes and concurrent clients."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.docker_support import SANDBOX_IMAGE, docker_client, require_or_skip
from tests.fakes.git_server import RECEIVE, UPLOAD, GitServer, basic_auth_header, git

USER = "x-access-token"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GitServer]:
    with GitServer(tmp_path / "srv", read_token="test-read-token-abcdef") as started:
        yield started


def auth_args(server: GitServer, repo: str) -> list[str]:
    """`--config-env` so the header comes from the environment, scoped to the repository URL."""
    return [f"--config-env=http.{server.url(repo)}.extraHeader=TEST_GIT_AUTH"]


def auth_env(server: GitServer, token: str | None = None) -> dict[str, str]:
    return {"TEST_GIT_AUTH": basic_auth_header(USER, token or server.token)}


def commit_file(work: Path, name: str, content: bytes) -> None:
    (work / name).write_bytes(content)
    git("add", name, cwd=work)
    git("commit", "--quiet", "-m", f"add {name}", cwd=work)


def test_clone_checks_out_the_repositorys_own_default_branch(
    server: GitServer, tmp_path: Path
) -> None:
    server.create_repo("acme/web", default_branch="trunk", files={"a.txt": "hello\n"})
    git("clone", "--quiet", server.url("acme/web"), str(tmp_path / "c"))
    assert (tmp_path / "c" / "a.txt").read_text() == "hello\n"
    head = git("symbolic-ref", "HEAD", cwd=tmp_path / "c").stdout.strip()
    assert head == "refs/heads/trunk"
    fetches = server.requests_for("acme/web", UPLOAD)
    assert fetches and not any(r.authenticated for r in fetches)


def test_push_with_the_header_from_the_environment_lands_and_is_recorded(
    server: GitServer, tmp_path: Path
) -> None:
    server.create_repo("acme/web")
    work = tmp_path / "c"
    git("clone", "--quiet", server.url("acme/web"), str(work))
    commit_file(work, "new.txt", b"new\n")
    git(
        *auth_args(server, "acme/web"),
        "push",
        "--quiet",
        server.url("acme/web"),
        "HEAD:refs/heads/anycode/t1",
        cwd=work,
        env=auth_env(server),
    )
    sha = git("rev-parse", "HEAD", cwd=work).stdout.strip()
    assert server.branch_sha("acme/web", "anycode/t1") == sha
    pushes = server.requests_for("acme/web", RECEIVE)
    # An extra header goes with every request, so no 401 round trip is needed.
    assert {(r.method, r.status) for r in pushes} == {("GET", 200), ("POST", 200)}
    assert all(r.authenticated and r.user == USER for r in pushes)


def test_push_without_a_credential_is_refused_with_a_basic_challenge(
    server: GitServer, tmp_path: Path
) -> None:
    server.create_repo("acme/web")
    work = tmp_path / "c"
    git("clone", "--quiet", server.url("acme/web"), str(work))
    commit_file(work, "new.txt", b"new\n")
    done = git("push", server.url("acme/web"), "HEAD:refs/heads/x", cwd=work, check=False)
    assert done.returncode == 128
    assert "could not read Username" in done.stderr
    assert server.branch_sha("acme/web", "x") is None
    assert [r.status for r in server.requests_for("acme/web", RECEIVE)] == [401]


def test_a_wrong_token_is_refused(server: GitServer, tmp_path: Path) -> None:
    server.create_repo("acme/web")
    work = tmp_path / "c"
    git("clone", "--quiet", server.url("acme/web"), str(work))
    commit_file(work, "new.txt", b"new\n")
    done = git(
        *auth_args(server, "acme/web"),
        "push",
        server.url("acme/web"),
        "HEAD:refs/heads/x",
        cwd=work,
        env=auth_env(server, "wrong-token"),
        check=False,
    )
    assert done.returncode == 128
    assert server.branch_sha("acme/web", "x") is None
    assert all(r.status == 401 for r in server.requests_for("acme/web", RECEIVE))


def test_a_read_only_token_fetches_but_gets_403_on_push(server: GitServer, tmp_path: Path) -> None:
    server.create_repo("acme/web")
    work = tmp_path / "c"
    git("clone", "--quiet", server.url("acme/web"), str(work))
    commit_file(work, "new.txt", b"new\n")
    assert server.read_token is not None
    done = git(
        *auth_args(server, "acme/web"),
        "push",
        server.url("acme/web"),
        "HEAD:refs/heads/x",
        cwd=work,
        env=auth_env(server, server.read_token),
        check=False,
    )
    assert done.returncode == 128
    assert "403" in done.stderr
    assert server.branch_sha("acme/web", "x") is None


def test_a_private_repository_needs_the_credential_to_clone(
    server: GitServer, tmp_path: Path
) -> None:
    server.create_repo("acme/secret", private=True)
    refused = git("clone", server.url("acme/secret"), str(tmp_path / "no"), check=False)
    assert refused.returncode == 128
    assert not (tmp_path / "no").exists()
    git(
        *auth_args(server, "acme/secret"),
        "clone",
        "--quiet",
        server.url("acme/secret"),
        str(tmp_path / "yes"),
        env=auth_env(server),
    )
    assert (tmp_path / "yes" / "README.md").exists()
    assert any(r.authenticated for r in server.requests_for("acme/secret", UPLOAD))


def test_a_missing_repository_is_not_found(server: GitServer, tmp_path: Path) -> None:
    done = git("clone", server.url("acme/missing"), str(tmp_path / "c"), check=False)
    assert done.returncode == 128
    assert "not found" in done.stderr


def test_the_pre_receive_hook_declines_with_gits_reason(server: GitServer, tmp_path: Path) -> None:
    server.create_repo("acme/web")
    server.decline_pushes("acme/web", "pushes are frozen for the release")
    work = tmp_path / "c"
    git("clone", "--quiet", server.url("acme/web"), str(work))
    commit_file(work, "new.txt", b"new\n")
    done = git(
        *auth_args(server, "acme/web"),
        "push",
        server.url("acme/web"),
        "HEAD:refs/heads/x",
        cwd=work,
        env=auth_env(server),
        check=False,
    )
    assert done.returncode == 1
    assert "pre-receive hook declined" in done.stderr
    assert "pushes are frozen for the release" in done.stderr
    assert server.branch_sha("acme/web", "x") is None


def test_a_protected_branch_refuses_updates_but_other_branches_push(
    server: GitServer, tmp_path: Path
) -> None:
    server.create_repo("acme/web", default_branch="develop")
    server.protect_branch("acme/web", "develop")
    work = tmp_path / "c"
    git("clone", "--quiet", server.url("acme/web"), str(work))
    commit_file(work, "new.txt", b"new\n")
    common = [*auth_args(server, "acme/web"), "push", server.url("acme/web")]
    refused = git(*common, "HEAD:refs/heads/develop", cwd=work, env=auth_env(server), check=False)
    assert refused.returncode == 1
    assert "GH006: Protected branch update failed for refs/heads/develop" in refused.stderr
    assert "hook declined" in refused.stderr
    git(*common, "HEAD:refs/heads/feature", cwd=work, env=auth_env(server))
    assert server.branch_sha("acme/web", "feature") is not None


def test_a_push_over_the_post_buffer_is_chunked_and_still_lands(
    server: GitServer, tmp_path: Path
) -> None:
    server.create_repo("acme/web")
    work = tmp_path / "c"
    git("clone", "--quiet", server.url("acme/web"), str(work))
    commit_file(work, "big.bin", os.urandom(3 * 1024 * 1024))
    git(
        *auth_args(server, "acme/web"),
        "push",
        "--quiet",
        server.url("acme/web"),
        "HEAD:refs/heads/big",
        cwd=work,
        env=auth_env(server),
    )
    assert server.branch_sha("acme/web", "big") == git("rev-parse", "HEAD", cwd=work).stdout.strip()


def test_concurrent_clones_are_served(server: GitServer, tmp_path: Path) -> None:
    server.create_repo("acme/web", files={f"f{i}.txt": f"{i}\n" * 500 for i in range(20)})

    def clone(index: int) -> int:
        target = tmp_path / f"c{index}"
        git("clone", "--quiet", server.url("acme/web"), str(target))
        return len(list(target.glob("f*.txt")))

    with ThreadPoolExecutor(max_workers=6) as pool:
        assert list(pool.map(clone, range(6))) == [20] * 6


@pytest.mark.docker
def test_a_container_clones_and_pushes_through_the_bridge_gateway(server: GitServer) -> None:
    client = docker_client()
    try:
        client.images.get(SANDBOX_IMAGE)
    except Exception:
        require_or_skip(f"{SANDBOX_IMAGE} is not built (docker/build-image.sh)")
    url = server.container_url("acme/web")
    if url is None:
        require_or_skip("Docker's bridge network has no gateway address")
    assert url is not None and url.endswith(f":{server.port}/acme/web.git")
    server.create_repo("acme/web", default_branch="trunk")
    script = (
        'set -e; cd /tmp; git clone -q "$1" w; cd w; echo hi > from-container.txt; '
        "git add -A; git -c user.name=c -c user.email=c@example.com commit -qm c; "
        'git --config-env="http.$1.extraHeader=AUTH" push -q "$1" HEAD:refs/heads/from-container'
    )
    output = client.containers.run(
        SANDBOX_IMAGE,
        ["-c", script, "sh", url],
        entrypoint="sh",
        environment={"AUTH": basic_auth_header(USER, server.token), "GIT_TERMINAL_PROMPT": "0"},
        remove=True,
        stderr=True,
    )
    assert server.branch_sha("acme/web", "from-container") is not None, output
    pushes = server.requests_for("acme/web", RECEIVE)
    assert pushes and all(r.authenticated for r in pushes)
