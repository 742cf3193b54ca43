"""The GitLab stand-in, driven by python-gitlab: an independent client that URL-encodes project
paths, follows the numeric id afterwards, maps errors by status and honours ``Retry-After``, so the
stand-in cannot drift from the real API. python-gitlab blocks, so each call runs in a worker
thread while the stand-in serves in the test's Trio run."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import gitlab
import httpx
import pytest
import trio
from gitlab.exceptions import (
    GitlabAuthenticationError,
    GitlabCreateError,
    GitlabGetError,
    GitlabUpdateError,
)

from tests.fakes.gitlab import DEVELOPER, REPORTER, FakeGitLab

T = TypeVar("T")

ADA = "glpat-ada-0123456789"
BOB = "glpat-bob-0123456789"
RAY = "glpat-ray-0123456789"


async def run(call: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(call)


def client(url: str, token: str = ADA, *, oauth: bool = False) -> gitlab.Gitlab:
    if oauth:
        return gitlab.Gitlab(url, oauth_token=token)
    return gitlab.Gitlab(url, private_token=token)


@pytest.fixture
async def lab(nursery: trio.Nursery) -> FakeGitLab:
    fake = FakeGitLab()
    await fake.start(nursery)
    fake.add_token(ADA, "ada")
    fake.add_token(BOB, "bob")
    fake.add_token(RAY, "ray")
    fake.add_project(
        "ada/tools/widget",
        default_branch="trunk",
        branches={"trunk", "anycode/1", "anycode/2"},
        members={"bob": DEVELOPER, "ray": REPORTER},
    )
    fake.add_project("ada/secret", visibility="private")
    return fake


async def test_project_by_encoded_path_and_id(lab: FakeGitLab) -> None:
    gl = client(lab.url)
    project = await run(lambda: gl.projects.get("ada/tools/widget"))
    assert lab.requests[-1] == ("GET", "/api/v4/projects/ada%2Ftools%2Fwidget")
    assert lab.last_headers["private-token"] == ADA
    assert project.default_branch == "trunk"
    assert project.path_with_namespace == "ada/tools/widget"
    assert project.http_url_to_repo == f"{lab.url}/ada/tools/widget.git"
    assert project.web_url == f"{lab.url}/ada/tools/widget"
    assert project.visibility == "public"
    assert project.permissions["project_access"]["access_level"] == 50
    by_id = await run(lambda: gl.projects.get(project.id))
    assert by_id.path_with_namespace == "ada/tools/widget"
    # OAuth tokens travel as "Authorization: Bearer".
    bob = await run(lambda: client(lab.url, BOB, oauth=True).projects.get("ada/tools/widget"))
    assert lab.last_headers["authorization"] == f"Bearer {BOB}"
    assert bob.permissions["project_access"]["access_level"] == DEVELOPER


async def test_unknown_and_private_projects(lab: FakeGitLab) -> None:
    with pytest.raises(GitlabGetError) as caught:
        await run(lambda: client(lab.url, BOB).projects.get("ada/secret"))
    assert caught.value.response_code == 404
    assert caught.value.error_message == "404 Project Not Found"
    with pytest.raises(GitlabGetError):
        await run(lambda: client(lab.url).projects.get("ada/nothing"))
    assert (await run(lambda: client(lab.url).projects.get("ada/secret"))).visibility == "private"


async def test_bad_token(lab: FakeGitLab) -> None:
    with pytest.raises(GitlabAuthenticationError) as caught:
        await run(lambda: client(lab.url, "glpat-wrong").projects.get("ada/tools/widget"))
    assert caught.value.response_code == 401
    assert caught.value.error_message == "401 Unauthorized"


async def test_create_list_update_note(lab: FakeGitLab) -> None:
    gl = client(lab.url, BOB)
    project = await run(lambda: gl.projects.get("ada/tools/widget", lazy=True))
    mr = await run(
        lambda: project.mergerequests.create(
            {
                "source_branch": "anycode/1",
                "target_branch": "trunk",
                "title": "Draft: Fix",
                "description": "Body",
            }
        )
    )
    assert mr.iid == 1 and mr.state == "opened" and mr.draft is True
    assert mr.web_url == f"{lab.url}/ada/tools/widget/-/merge_requests/1"
    assert mr.references["full"] == "ada/tools/widget!1"
    assert mr.author["username"] == "bob"

    def opened(branch: str) -> list[Any]:
        return list(project.mergerequests.list(source_branch=branch, state="opened", get_all=True))

    assert [m.iid for m in await run(lambda: opened("anycode/1"))] == [1]
    assert await run(lambda: opened("anycode/2")) == []

    mr.title = "Fix"
    mr.description = "New body"
    await run(mr.save)
    assert lab.requests[-1][0] == "PUT"
    fresh = await run(lambda: project.mergerequests.get(1))
    assert (fresh.title, fresh.description, fresh.draft) == ("Fix", "New body", False)

    note = await run(lambda: fresh.notes.create({"body": "pushed again"}))
    assert note.body == "pushed again" and note.noteable_iid == 1
    assert lab.project("ada/tools/widget").notes[0]["author"]["username"] == "bob"

    fresh.state_event = "close"
    await run(fresh.save)
    assert fresh.state == "closed"
    assert await run(lambda: opened("anycode/1")) == []


async def test_pagination_headers(lab: FakeGitLab) -> None:
    widget = lab.project("ada/tools/widget")
    widget.branches |= {f"b{n}" for n in range(5)}
    project = await run(lambda: client(lab.url).projects.get("ada/tools/widget"))
    for n in range(5):
        data = {"source_branch": f"b{n}", "target_branch": "trunk", "title": f"t{n}"}
        await run(functools.partial(project.mergerequests.create, data))
    every = await run(lambda: project.mergerequests.list(per_page=2, get_all=True))
    assert sorted(m.iid for m in every) == [1, 2, 3, 4, 5]


async def test_create_refusals(lab: FakeGitLab) -> None:
    project = await run(lambda: client(lab.url).projects.get("ada/tools/widget"))
    fields = {"source_branch": "anycode/1", "target_branch": "trunk", "title": "t"}
    await run(lambda: project.mergerequests.create(fields))

    with pytest.raises(GitlabCreateError) as caught:
        await run(lambda: project.mergerequests.create(fields))
    assert caught.value.response_code == 409
    assert caught.value.error_message == [
        "Another open merge request already exists for this source branch: !1"
    ]

    with pytest.raises(GitlabCreateError) as caught:
        await run(lambda: project.mergerequests.create({**fields, "source_branch": "never"}))
    assert caught.value.response_code == 422
    assert caught.value.error_message == ['Source branch "never" does not exist']

    with pytest.raises(GitlabCreateError) as caught:
        await run(lambda: project.mergerequests.create({**fields, "source_branch": "trunk"}))
    assert caught.value.response_code == 422

    reporter = await run(lambda: client(lab.url, RAY).projects.get("ada/tools/widget"))
    with pytest.raises(GitlabCreateError) as caught:
        await run(lambda: reporter.mergerequests.create({**fields, "source_branch": "anycode/2"}))
    assert (caught.value.response_code, caught.value.error_message) == (403, "403 Forbidden")
    # A reporter may still comment.
    mr = await run(lambda: reporter.mergerequests.get(1))
    assert (await run(lambda: mr.notes.create({"body": "hi"}))).body == "hi"


async def test_missing_parameters_and_merge_request(lab: FakeGitLab) -> None:
    project = await run(lambda: client(lab.url).projects.get("ada/tools/widget"))
    with pytest.raises(GitlabGetError) as caught:
        await run(lambda: project.mergerequests.get(42))
    assert caught.value.error_message == "404 Not found"
    async with httpx.AsyncClient() as http:
        url = f"{lab.api_url}/projects/ada%2Ftools%2Fwidget/merge_requests"
        answer = await http.post(
            url, json={"source_branch": "anycode/1"}, headers={"PRIVATE-TOKEN": ADA}
        )
        assert answer.status_code == 400
        assert answer.json() == {"error": "target_branch is missing, title is missing"}
        anonymous = await http.post(url, json={})
        assert (anonymous.status_code, anonymous.json()) == (401, {"message": "401 Unauthorized"})
        # An unencoded path is no route at all.
        unencoded = await http.get(f"{lab.api_url}/projects/ada/tools/widget")
        assert (unencoded.status_code, unencoded.json()) == (404, {"error": "404 Not Found"})
    mr = await run(
        lambda: project.mergerequests.create(
            {"source_branch": "anycode/1", "target_branch": "trunk", "title": "t"}
        )
    )
    mr.target_branch = "gone"
    with pytest.raises(GitlabUpdateError) as caught:
        await run(mr.save)
    assert caught.value.response_code == 422


async def test_rate_limit_is_retried_by_the_client(lab: FakeGitLab) -> None:
    """python-gitlab waits ``Retry-After`` seconds on a 429 and tries again."""
    lab.rate_limit_next(retry_after=0)
    project = await run(lambda: client(lab.url).projects.get("ada/tools/widget"))
    assert project.default_branch == "trunk"
    assert len(lab.requests) == 2  # the 429, then the same request again
    lab.rate_limit_next(retry_after=9)
    with pytest.raises(GitlabGetError) as caught:
        await run(lambda: client(lab.url).projects.get("ada/tools/widget", obey_rate_limit=False))
    assert caught.value.response_code == 429
    assert caught.value.response_body == b"Retry later\n"


async def test_server_errors_are_injected(lab: FakeGitLab) -> None:
    lab.fail_next(503)
    with pytest.raises(GitlabGetError) as caught:
        await run(lambda: client(lab.url).projects.get("ada/tools/widget"))
    assert caught.value.response_code == 503
    assert (await run(lambda: client(lab.url).projects.get("ada/tools/widget"))).id > 0
