"""The daemon's forge clients against the GitHub and GitLab stand-ins, over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from anycode_actors.git.forges import (
    DEFAULT_RETRY_AFTER,
    ForgeAuthError,
    ForgeRateLimited,
    ForgeRequestError,
    ForgeUnavailable,
    GitHubForge,
    GitLabForge,
    NoCommits,
    RepoNotFound,
)
from tests.fakes.github import FakeGitHub
from tests.fakes.gitlab import DEVELOPER, REPORTER, FakeGitLab

ADA_GH = "ghp_ada_secret_token_0123456789"
BOB_GH = "ghp_bob_secret_token_0123456789"
READ_ONLY_GH = "github_pat_read_only_0123456789"
ADA_GL = "glpat-ada-secret-0123456789"
BOB_GL = "glpat-bob-secret-0123456789"
RAY_GL = "glpat-ray-secret-0123456789"


def assert_no_token(error: BaseException, token: str) -> None:
    """Neither the message nor anything chained to it holds the token."""
    seen: BaseException | None = error
    while seen is not None:
        assert token not in str(seen) and token not in repr(seen)
        seen = seen.__cause__ or seen.__context__


# --- GitHub ---------------------------------------------------------------------------------------


@pytest.fixture(params=["", "/api/v3"], ids=["dotcom", "enterprise"])
async def github(request: pytest.FixtureRequest, nursery: trio.Nursery) -> FakeGitHub:
    fake = FakeGitHub(prefix=request.param)
    await fake.start(nursery)
    fake.add_token(ADA_GH, "ada")
    fake.add_token(BOB_GH, "bob")
    fake.add_token(READ_ONLY_GH, "ada", can_write_pulls=False)
    fake.add_repo(
        "ada/widget",
        default_branch="trunk",
        branches={"trunk": ["c1"], "anycode/1": ["c1", "c2"], "empty": ["c1"]},
    )
    fake.add_repo(
        "ada/secret",
        private=True,
        drafts_supported=False,
        branches={"main": ["s1"], "anycode/2": ["s1", "s2"]},
        clone_url="http://git.invalid/ada/secret.git",
    )
    return fake


@pytest.fixture
async def gh(github: FakeGitHub) -> AsyncIterator[GitHubForge]:
    async with GitHubForge(github.api_url, ADA_GH) as forge:
        yield forge


async def test_github_repository(github: FakeGitHub, gh: GitHubForge) -> None:
    info = await gh.repository("ada/widget")
    assert info.path == "ada/widget"
    assert info.default_branch == "trunk"
    assert info.can_push is True and info.private is False
    assert info.clone_url == f"{github.server_url}/ada/widget.git"
    assert info.web_url == f"{github.server_url}/ada/widget"
    headers = github.last_headers
    assert headers["authorization"] == f"Bearer {ADA_GH}"
    assert headers["x-github-api-version"] == "2022-11-28"
    assert headers["accept"] == "application/vnd.github+json"
    assert headers["user-agent"] == "anycode-actors"
    secret = await gh.repository("ada/secret")
    assert secret.private is True and secret.clone_url == "http://git.invalid/ada/secret.git"
    async with GitHubForge(github.api_url, BOB_GH) as bob:
        assert (await bob.repository("ada/widget")).can_push is False


async def test_github_repository_not_found(github: FakeGitHub) -> None:
    async with GitHubForge(github.api_url, BOB_GH) as bob:
        for path in ("ada/secret", "ada/nothing", "not-a-path"):
            with pytest.raises(RepoNotFound) as caught:
                await bob.repository(path)
            assert str(caught.value) == (
                f"repository {path} does not exist on GitHub or the token cannot see it"
            )
            assert_no_token(caught.value, BOB_GH)


async def test_github_bad_token(github: FakeGitHub) -> None:
    token = "ghp_not_a_real_token_987654321"
    async with GitHubForge(github.api_url, token) as forge:
        with pytest.raises(ForgeAuthError, match="rejected the token: Bad credentials") as caught:
            await forge.repository("ada/widget")
    assert_no_token(caught.value, token)


async def test_github_open_find_update_comment(github: FakeGitHub, gh: GitHubForge) -> None:
    assert await gh.find_open_pr("ada/widget", "anycode/1") is None
    pr = await gh.open_pr(
        "ada/widget", head="anycode/1", base="trunk", title="Fix", body="Body", draft=True
    )
    assert (pr.number, pr.head, pr.base, pr.draft, pr.state) == (
        1,
        "anycode/1",
        "trunk",
        True,
        "open",
    )
    assert pr.url == f"{github.server_url}/ada/widget/pull/1"
    assert await gh.find_open_pr("ada/widget", "anycode/1") == pr
    # The list call names the owner: a bare head= would be ignored by GitHub.
    assert github.last_query == {"head": "ada:anycode/1", "state": "open", "per_page": "100"}
    assert await gh.find_open_pr("ada/widget", "other") is None

    updated = await gh.update_pr("ada/widget", pr.number, title="Fix it", body="New")
    assert updated.title == "Fix it"
    assert github.pulls("ada/widget")[0]["body"] == "New"
    await gh.comment("ada/widget", pr.number, "pushed again")
    assert [c["body"] for c in github._repo_named("ada/widget").comments] == ["pushed again"]

    with pytest.raises(ForgeRequestError, match="no pull request #9"):
        await gh.update_pr("ada/widget", 9, title="x")
    with pytest.raises(ForgeRequestError, match="no pull request #9"):
        await gh.comment("ada/widget", 9, "x")


async def test_github_open_twice_returns_the_existing_one(
    github: FakeGitHub, gh: GitHubForge
) -> None:
    first = await gh.open_pr("ada/widget", head="anycode/1", base="trunk", title="a", body="")
    again = await gh.open_pr("ada/widget", head="anycode/1", base="trunk", title="b", body="")
    assert again == first
    assert len(github.pulls("ada/widget")) == 1


async def test_github_closed_pr_is_not_found(github: FakeGitHub, gh: GitHubForge) -> None:
    pr = await gh.open_pr("ada/widget", head="anycode/1", base="trunk", title="a", body="")
    github.pulls("ada/widget")[0]["state"] = "closed"
    assert await gh.find_open_pr("ada/widget", "anycode/1") is None
    reopened = await gh.open_pr("ada/widget", head="anycode/1", base="trunk", title="a", body="")
    assert reopened.number == pr.number + 1


async def test_github_draft_unsupported_falls_back(github: FakeGitHub, gh: GitHubForge) -> None:
    pr = await gh.open_pr(
        "ada/secret", head="anycode/2", base="main", title="t", body="", draft=True
    )
    assert pr.draft is False
    posts = [path for method, path in github.requests if method == "POST"]
    assert len(posts) == 2


async def test_github_no_commits_and_unknown_branches(gh: GitHubForge) -> None:
    with pytest.raises(NoCommits) as caught:
        await gh.open_pr("ada/widget", head="empty", base="trunk", title="t", body="")
    assert (caught.value.head, caught.value.base) == ("empty", "trunk")
    assert "empty has no commits that trunk does not already have" in str(caught.value)
    with pytest.raises(ForgeRequestError, match="branch never-pushed \\(head\\) is not on GitHub"):
        await gh.open_pr("ada/widget", head="never-pushed", base="trunk", title="t", body="")
    with pytest.raises(ForgeRequestError, match="branch gone \\(base\\) is not on GitHub"):
        await gh.open_pr("ada/widget", head="anycode/1", base="gone", title="t", body="")


async def test_github_missing_permission(github: FakeGitHub) -> None:
    async with GitHubForge(github.api_url, READ_ONLY_GH) as forge:
        with pytest.raises(ForgeAuthError) as caught:
            await forge.open_pr("ada/widget", head="anycode/1", base="trunk", title="t", body="")
    assert str(caught.value) == (
        "GitHub does not let the token open a pull request in ada/widget: "
        "Resource not accessible by personal access token"
    )


@pytest.mark.parametrize(
    ("status", "secondary", "retry_after", "expected"),
    [
        (403, True, 7, 7.0),
        (429, True, None, DEFAULT_RETRY_AFTER),
        (429, False, 3, 3.0),
    ],
)
async def test_github_rate_limits(
    github: FakeGitHub,
    gh: GitHubForge,
    status: int,
    secondary: bool,
    retry_after: int | None,
    expected: float,
) -> None:
    github.rate_limit_next(status=status, secondary=secondary, retry_after=retry_after)
    with pytest.raises(ForgeRateLimited) as caught:
        await gh.repository("ada/widget")
    assert caught.value.retry_after == expected


async def test_github_primary_limit_waits_for_reset(github: FakeGitHub, gh: GitHubForge) -> None:
    github.rate_limit_next(status=403)
    with pytest.raises(ForgeRateLimited) as caught:
        await gh.open_pr("ada/widget", head="anycode/1", base="trunk", title="t", body="")
    assert 3500 < caught.value.retry_after <= 3600


async def test_github_server_error_and_token_in_body(github: FakeGitHub, gh: GitHubForge) -> None:
    github.fail_next(502)
    with pytest.raises(ForgeUnavailable, match="failed with HTTP 502: Server Error"):
        await gh.repository("ada/widget")
    # Even a forge that echoes the token back does not get it into a message.
    github.fail_next(500, body={"message": f"token {ADA_GH} broke something"})
    with pytest.raises(ForgeUnavailable) as caught:
        await gh.repository("ada/widget")
    assert "[redacted]" in str(caught.value)
    assert_no_token(caught.value, ADA_GH)


async def test_unreachable_forge() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for forge in (
        GitHubForge(f"http://127.0.0.1:{port}", ADA_GH),
        GitLabForge(f"http://127.0.0.1:{port}/api/v4", ADA_GL),
    ):
        async with forge:
            with pytest.raises(ForgeUnavailable, match=f"could not reach .* at 127.0.0.1:{port}"):
                await forge.repository("ada/widget")


# --- GitLab ---------------------------------------------------------------------------------------


@pytest.fixture
async def lab(nursery: trio.Nursery) -> FakeGitLab:
    fake = FakeGitLab()
    await fake.start(nursery)
    fake.add_token(ADA_GL, "ada")
    fake.add_token(BOB_GL, "bob")
    fake.add_token(RAY_GL, "ray")
    fake.add_project(
        "ada/tools/widget",
        default_branch="trunk",
        branches={"trunk", "anycode/1"},
        members={"bob": DEVELOPER, "ray": REPORTER},
    )
    fake.add_project("ada/secret", visibility="private", branches={"main"})
    return fake


@pytest.fixture
async def gl(lab: FakeGitLab) -> AsyncIterator[GitLabForge]:
    async with GitLabForge(lab.api_url, BOB_GL) as forge:
        yield forge


async def test_gitlab_repository(lab: FakeGitLab, gl: GitLabForge) -> None:
    info = await gl.repository("ada/tools/widget")
    assert lab.requests[-1] == ("GET", "/api/v4/projects/ada%2Ftools%2Fwidget")
    assert lab.last_headers["authorization"] == f"Bearer {BOB_GL}"
    assert info.path == "ada/tools/widget" and info.default_branch == "trunk"
    assert info.can_push is True and info.private is False
    assert info.clone_url == f"{lab.url}/ada/tools/widget.git"
    assert info.web_url == f"{lab.url}/ada/tools/widget"
    async with GitLabForge(lab.api_url, RAY_GL) as ray:
        assert (await ray.repository("ada/tools/widget")).can_push is False
    async with GitLabForge(lab.api_url, ADA_GL) as ada:
        assert (await ada.repository("ada/secret")).private is True


async def test_gitlab_repository_not_found(gl: GitLabForge) -> None:
    for path in ("ada/secret", "ada/nothing"):
        with pytest.raises(RepoNotFound, match=f"repository {path} does not exist on GitLab"):
            await gl.repository(path)
        with pytest.raises(RepoNotFound):
            await gl.open_pr(path, head="anycode/1", base="trunk", title="t", body="")


async def test_gitlab_bad_token(lab: FakeGitLab) -> None:
    token = "glpat-wrong-0123456789"
    async with GitLabForge(lab.api_url, token) as forge:
        with pytest.raises(ForgeAuthError, match="rejected the token: 401 Unauthorized") as caught:
            await forge.repository("ada/tools/widget")
    assert_no_token(caught.value, token)


async def test_gitlab_open_find_update_comment(lab: FakeGitLab, gl: GitLabForge) -> None:
    assert await gl.find_open_pr("ada/tools/widget", "anycode/1") is None
    mr = await gl.open_pr(
        "ada/tools/widget", head="anycode/1", base="trunk", title="Fix", body="Body", draft=True
    )
    assert (mr.number, mr.title, mr.draft, mr.state) == (1, "Draft: Fix", True, "open")
    assert mr.url == f"{lab.url}/ada/tools/widget/-/merge_requests/1"
    assert await gl.find_open_pr("ada/tools/widget", "anycode/1") == mr

    again = await gl.open_pr(
        "ada/tools/widget", head="anycode/1", base="trunk", title="Fix", body="Body"
    )
    assert again == mr
    assert len(lab.project("ada/tools/widget").merge_requests) == 1

    updated = await gl.update_pr("ada/tools/widget", 1, title="Fix it", body="New")
    assert (updated.title, updated.draft) == ("Draft: Fix it", True)
    assert lab.project("ada/tools/widget").merge_requests[1]["description"] == "New"
    await gl.comment("ada/tools/widget", 1, "pushed again")
    assert [n["body"] for n in lab.project("ada/tools/widget").notes] == ["pushed again"]

    with pytest.raises(ForgeRequestError, match="no merge request !9"):
        await gl.update_pr("ada/tools/widget", 9, body="x")
    with pytest.raises(ForgeRequestError, match="no merge request !9"):
        await gl.comment("ada/tools/widget", 9, "x")


async def test_gitlab_ready_merge_request(gl: GitLabForge) -> None:
    mr = await gl.open_pr(
        "ada/tools/widget", head="anycode/1", base="trunk", title="Fix", body="", draft=False
    )
    assert (mr.title, mr.draft) == ("Fix", False)


async def test_gitlab_refusals(lab: FakeGitLab, gl: GitLabForge) -> None:
    with pytest.raises(ForgeRequestError) as caught:
        await gl.open_pr("ada/tools/widget", head="never", base="trunk", title="t", body="")
    assert caught.value.status == 422
    assert 'Source branch "never" does not exist' in str(caught.value)
    async with GitLabForge(lab.api_url, RAY_GL) as ray:
        with pytest.raises(ForgeAuthError, match="403 Forbidden"):
            await ray.open_pr(
                "ada/tools/widget", head="anycode/1", base="trunk", title="t", body=""
            )


async def test_gitlab_rate_limit_and_server_error(lab: FakeGitLab, gl: GitLabForge) -> None:
    lab.rate_limit_next(retry_after=9)
    with pytest.raises(ForgeRateLimited) as caught:
        await gl.repository("ada/tools/widget")
    assert caught.value.retry_after == 9.0
    lab.fail_next(503)
    with pytest.raises(ForgeUnavailable, match="HTTP 503"):
        await gl.find_open_pr("ada/tools/widget", "anycode/1")
    assert_no_token(caught.value, BOB_GL)
