"""The GitHub stand-in, driven by PyGithub: an independent client that parses GitHub's answers its
own way (it follows the ``url`` fields, maps errors by status and message) so the stand-in cannot
drift from the real API. PyGithub blocks, so each call runs in a worker thread while the stand-in
serves in the test's Trio run."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import pytest
import trio
from github import Auth, Github, GithubException
from github.GithubException import (
    BadCredentialsException,
    RateLimitExceededException,
    UnknownObjectException,
)

from tests.fakes.github import (
    DRAFT_UNSUPPORTED,
    NO_USER_AGENT,
    NOT_ACCESSIBLE,
    SECONDARY_LIMIT,
    FakeGitHub,
)

T = TypeVar("T")

ADA = "ghp_ada_token_0123456789"
BOB = "ghp_bob_token_0123456789"
READER = "github_pat_read_only_0123"


async def run(call: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(call)


def client(api_url: str, token: str = ADA) -> Github:
    # No retries and no spacing between calls: PyGithub's defaults sleep 0.25-1 s per call.
    return Github(
        auth=Auth.Token(token),
        base_url=api_url,
        retry=None,
        seconds_between_requests=None,
        seconds_between_writes=None,
    )


@pytest.fixture(params=["/api/v3", ""], ids=["enterprise", "dotcom"])
async def github(request: pytest.FixtureRequest, nursery: trio.Nursery) -> FakeGitHub:
    fake = FakeGitHub(prefix=request.param)
    await fake.start(nursery)
    fake.add_token(ADA, "ada")
    fake.add_token(BOB, "bob")
    fake.add_token(READER, "ada", can_write_pulls=False)
    fake.add_repo(
        "ada/widget",
        default_branch="trunk",
        branches={"trunk": ["c1"], "anycode/1": ["c1", "c2"], "same": ["c1"]},
        writers={"bob"},
    )
    fake.add_repo(
        "ada/secret",
        private=True,
        drafts_supported=False,
        branches={"main": ["s1"], "work": ["s1", "s2"]},
    )
    return fake


async def test_repository_fields(github: FakeGitHub) -> None:
    gh = client(github.api_url)
    repo = await run(lambda: gh.get_repo("ada/widget"))
    assert repo.default_branch == "trunk"
    assert repo.full_name == "ada/widget"
    assert repo.private is False
    assert repo.clone_url == f"{github.server_url}/ada/widget.git"
    assert repo.html_url == f"{github.server_url}/ada/widget"
    assert repo.permissions.push is True and repo.permissions.admin is True
    bob = await run(lambda: client(github.api_url, BOB).get_repo("ada/widget"))
    assert bob.permissions.push is True and bob.permissions.admin is False
    # PyGithub sends "token <t>", its own User-Agent and no version header.
    assert github.last_headers["authorization"] == f"token {BOB}"
    assert github.last_headers["user-agent"].startswith("PyGithub")


async def test_private_repo_is_not_found_for_others(github: FakeGitHub) -> None:
    assert (await run(lambda: client(github.api_url).get_repo("ada/secret"))).private is True
    with pytest.raises(UnknownObjectException) as caught:
        await run(lambda: client(github.api_url, BOB).get_repo("ada/secret"))
    assert caught.value.status == 404
    assert caught.value.data["message"] == "Not Found"
    with pytest.raises(UnknownObjectException):
        await run(lambda: client(github.api_url).get_repo("ada/nothing"))


async def test_bad_credentials(github: FakeGitHub) -> None:
    with pytest.raises(BadCredentialsException) as caught:
        await run(lambda: client(github.api_url, "ghp_wrong").get_repo("ada/widget"))
    assert caught.value.status == 401
    assert caught.value.data["message"] == "Bad credentials"
    assert caught.value.data["status"] == "401"


async def test_create_list_update_comment(github: FakeGitHub) -> None:
    gh = client(github.api_url)
    repo = await run(lambda: gh.get_repo("ada/widget"))
    pr = await run(
        lambda: repo.create_pull("trunk", "anycode/1", title="Fix", body="Body", draft=True)
    )
    assert pr.number == 1 and pr.state == "open" and pr.draft is True
    assert pr.head.ref == "anycode/1" and pr.head.sha == "c2" and pr.head.label == "ada:anycode/1"
    assert pr.base.ref == "trunk" and pr.user.login == "ada"
    assert pr.html_url == f"{github.server_url}/ada/widget/pull/1"

    listed = await run(lambda: list(repo.get_pulls(state="open", head="ada:anycode/1")))
    assert [p.number for p in listed] == [1]
    assert await run(lambda: list(repo.get_pulls(state="open", head="ada:other"))) == []
    assert await run(lambda: list(repo.get_pulls(state="closed"))) == []

    await run(lambda: pr.edit(title="Fix it", body="New body"))
    assert (pr.title, pr.body) == ("Fix it", "New body")
    comment = await run(lambda: pr.create_issue_comment("pushed again"))
    assert comment.body == "pushed again" and comment.user.login == "ada"
    assert github._repo_named("ada/widget").comments[0]["number"] == 1

    await run(lambda: pr.edit(state="closed"))
    assert pr.state == "closed"
    assert await run(lambda: list(repo.get_pulls(state="open"))) == []
    assert [p.number for p in await run(lambda: list(repo.get_pulls(state="all")))] == [1]


async def test_bare_head_filter_is_ignored(github: FakeGitHub) -> None:
    repo = await run(lambda: client(github.api_url).get_repo("ada/widget"))
    await run(lambda: repo.create_pull("trunk", "anycode/1", title="t", body=""))
    # As on GitHub, head= without "owner:" filters nothing.
    listed = await run(lambda: list(repo.get_pulls(state="open", head="no-such-branch")))
    assert [p.number for p in listed] == [1]


async def test_pagination_follows_link(github: FakeGitHub) -> None:
    widget = github._repo_named("ada/widget")
    for n in range(5):
        widget.branches[f"b{n}"] = ["c1", f"x{n}"]
    repo = await run(lambda: client(github.api_url).get_repo("ada/widget"))
    for n in range(5):
        await run(functools.partial(repo.create_pull, "trunk", f"b{n}", title=f"t{n}", body=""))
    gh = Github(
        auth=Auth.Token(ADA),
        base_url=github.api_url,
        retry=None,
        per_page=2,
        seconds_between_requests=None,
        seconds_between_writes=None,
    )
    paged = await run(lambda: gh.get_repo("ada/widget"))
    assert [p.number for p in await run(lambda: list(paged.get_pulls()))] == [1, 2, 3, 4, 5]


def _errors(exc: GithubException) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = exc.data["errors"]
    return errors


async def test_create_refusals(github: FakeGitHub) -> None:
    repo = await run(lambda: client(github.api_url).get_repo("ada/widget"))
    await run(lambda: repo.create_pull("trunk", "anycode/1", title="t", body=""))

    with pytest.raises(GithubException) as caught:
        await run(lambda: repo.create_pull("trunk", "anycode/1", title="t", body=""))
    assert caught.value.status == 422
    assert caught.value.data["message"] == "Validation Failed"
    assert _errors(caught.value) == [
        {
            "resource": "PullRequest",
            "code": "custom",
            "message": "A pull request already exists for ada:anycode/1.",
        }
    ]

    with pytest.raises(GithubException) as caught:
        await run(lambda: repo.create_pull("trunk", "same", title="t", body=""))
    assert _errors(caught.value)[0]["message"] == "No commits between trunk and same"

    with pytest.raises(GithubException) as caught:
        await run(lambda: repo.create_pull("trunk", "never-pushed", title="t", body=""))
    assert _errors(caught.value) == [
        {"resource": "PullRequest", "field": "head", "code": "invalid"}
    ]
    with pytest.raises(GithubException) as caught:
        await run(lambda: repo.create_pull("trunk", "bob:anycode/1", title="t", body=""))
    assert _errors(caught.value)[0]["field"] == "head"
    with pytest.raises(GithubException) as caught:
        await run(lambda: repo.create_pull("gone", "anycode/1", title="t", body=""))
    assert _errors(caught.value) == [
        {"resource": "PullRequest", "field": "base", "code": "invalid"}
    ]


async def test_draft_unsupported_then_plain(github: FakeGitHub) -> None:
    repo = await run(lambda: client(github.api_url).get_repo("ada/secret"))
    with pytest.raises(GithubException) as caught:
        await run(lambda: repo.create_pull("main", "work", title="t", body="", draft=True))
    assert caught.value.status == 422
    assert caught.value.data["message"] == DRAFT_UNSUPPORTED
    pr = await run(lambda: repo.create_pull("main", "work", title="t", body="", draft=False))
    assert pr.draft is False


async def test_token_without_pull_request_write(github: FakeGitHub) -> None:
    repo = await run(lambda: client(github.api_url, READER).get_repo("ada/widget"))
    with pytest.raises(GithubException) as caught:
        await run(lambda: repo.create_pull("trunk", "anycode/1", title="t", body=""))
    assert caught.value.status == 403
    assert caught.value.data["message"] == NOT_ACCESSIBLE
    assert caught.value.headers["x-accepted-github-permissions"] == "pull_requests=write"


async def test_missing_pull_and_comment_body(github: FakeGitHub) -> None:
    repo = await run(lambda: client(github.api_url).get_repo("ada/widget"))
    with pytest.raises(UnknownObjectException):
        await run(lambda: repo.get_pull(99))
    pr = await run(lambda: repo.create_pull("trunk", "anycode/1", title="t", body=""))
    assert (await run(lambda: repo.get_pull(pr.number))).title == "t"
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            f"{github.api_url}/repos/ada/widget/issues/{pr.number}/comments",
            json={},
            headers={"Authorization": f"Bearer {ADA}", "User-Agent": "t"},
        )
    assert answer.status_code == 422
    assert answer.json()["errors"] == [
        {"resource": "IssueComment", "code": "missing_field", "field": "body"}
    ]


async def test_rate_limits(github: FakeGitHub) -> None:
    gh = client(github.api_url)
    github.rate_limit_next(status=403)
    with pytest.raises(RateLimitExceededException) as caught:
        await run(lambda: gh.get_repo("ada/widget"))
    assert caught.value.headers["x-ratelimit-remaining"] == "0"
    assert int(caught.value.headers["x-ratelimit-reset"]) > 0

    github.rate_limit_next(status=403, secondary=True, retry_after=7)
    with pytest.raises(RateLimitExceededException) as caught:
        await run(lambda: gh.get_repo("ada/widget"))
    assert caught.value.data["message"] == SECONDARY_LIMIT
    assert caught.value.headers["retry-after"] == "7"

    github.rate_limit_next(status=429, retry_after=3)
    with pytest.raises(GithubException) as caught:
        await run(lambda: gh.get_repo("ada/widget"))
    assert caught.value.status == 429
    assert caught.value.headers["retry-after"] == "3"

    # Every ordinary answer counts the call in its x-ratelimit-* headers.
    repo = await run(lambda: gh.get_repo("ada/widget"))
    assert repo.raw_headers["x-ratelimit-limit"] == "5000"
    assert gh.rate_limiting[1] == 5000


async def test_server_errors_are_injected(github: FakeGitHub) -> None:
    github.fail_next(502)
    with pytest.raises(GithubException) as caught:
        await run(lambda: client(github.api_url).get_repo("ada/widget"))
    assert caught.value.status == 502
    assert (await run(lambda: client(github.api_url).get_repo("ada/widget"))).name == "widget"


async def test_http_rules_pygithub_does_not_reach(github: FakeGitHub) -> None:
    """User-Agent, version header, both auth forms, bad JSON, trailing slash, anonymous writes."""
    url = f"{github.api_url}/repos/ada/widget"
    agent = {"User-Agent": "anycode-test"}
    async with httpx.AsyncClient() as http:
        bare = await http.get(url, headers={"User-Agent": ""})
        assert (bare.status_code, bare.text) == (403, NO_USER_AGENT)
        versioned = await http.get(url, headers={**agent, "X-GitHub-Api-Version": "2022-11-28"})
        assert versioned.status_code == 200
        assert versioned.headers["x-github-api-version-selected"] == "2022-11-28"
        assert "permissions" not in (await http.get(url, headers=agent)).json()
        unknown = await http.get(url, headers={**agent, "X-GitHub-Api-Version": "1999-01-01"})
        assert unknown.status_code == 400
        bearer = await http.get(url, headers={**agent, "Authorization": f"Bearer {ADA}"})
        assert bearer.json()["permissions"]["push"] is True
        assert (await http.get(url + "/", headers=agent)).status_code == 404
        anonymous = await http.post(url + "/pulls", json={}, headers=agent)
        assert anonymous.status_code == 401
        assert anonymous.json()["message"] == "Requires authentication"
        auth = {**agent, "Authorization": f"token {ADA}"}
        broken = await http.post(url + "/pulls", content=b"{", headers=auth)
        assert (broken.status_code, broken.json()["message"]) == (400, "Problems parsing JSON")
        listed = await http.post(url + "/pulls", json=[1], headers=auth)
        assert listed.json()["message"] == "Body should be a JSON object"
        missing = await http.post(url + "/pulls", json={"head": "anycode/1"}, headers=auth)
        assert missing.status_code == 422
        assert missing.json()["message"].startswith("Invalid request.")


async def test_branches_from_a_callback(github: FakeGitHub) -> None:
    """A test with a real git server answers branch lookups from it instead of `branches`."""
    history = {"trunk": ["c1"], "pushed": ["c1", "c9"]}
    github.branch_commits = lambda repo, branch: (
        history.get(branch) if repo == "ada/widget" else None
    )
    repo = await run(lambda: client(github.api_url).get_repo("ada/widget"))
    pr = await run(lambda: repo.create_pull("trunk", "pushed", title="t", body=""))
    assert pr.head.sha == "c9"
    with pytest.raises(GithubException) as caught:
        await run(lambda: repo.create_pull("trunk", "anycode/1", title="t", body=""))
    assert _errors(caught.value)[0]["field"] == "head"
