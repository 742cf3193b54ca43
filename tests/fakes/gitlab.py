"""A stand-in for the GitLab REST API v4 (merge requests), served over real HTTP on loopback.

It answers the endpoints the daemon uses to open and keep up a merge request, with GitLab's
documented shapes, status codes and error bodies:

- ``GET /api/v4/projects/:id``: https://docs.gitlab.com/api/projects/#get-a-single-project;
  ``:id`` is the numeric id or the URL-encoded path (``group%2Fproject``,
  https://docs.gitlab.com/api/rest/#namespaced-paths)
- ``POST``/``GET /api/v4/projects/:id/merge_requests``, ``PUT .../merge_requests/:iid``:
  https://docs.gitlab.com/api/merge_requests/
- ``POST .../merge_requests/:iid/notes``: https://docs.gitlab.com/api/notes/#create-new-merge-request-note
- authentication with ``PRIVATE-TOKEN`` or ``Authorization: Bearer``, 401
  ``{"message":"401 Unauthorized"}``: https://docs.gitlab.com/api/rest/authentication/
- drafts are marked in the title (``Draft:``, ``[Draft]``, ``(Draft)``):
  https://docs.gitlab.com/user/project/merge_requests/drafts/
- rate limiting answers 429 ``Retry later`` with ``RateLimit-*`` and ``Retry-After`` headers:
  https://docs.gitlab.com/security/rate_limits/

Refusals of merge request creation follow GitLab's own code (gitlab-org/gitlab,
``lib/api/helpers/merge_requests_helpers.rb`` ``handle_merge_request_errors!`` and
``app/services/merge_requests/build_service.rb``): a missing branch is 422 with
``{"message":["Source branch \\"x\\" does not exist"]}``, the same branch as source and target is
422, and a second open merge request for the same source and target branch is 409 with
``{"message":["Another open merge request already exists for this source branch: !7"]}``. Grape's
parameter validation answers 400 ``{"error":"title is missing"}``.

Its own tests drive it with python-gitlab, an independent client.

Use::

    gitlab = FakeGitLab()
    url = await gitlab.start(nursery)  # "http://127.0.0.1:<port>"; the API is url + "/api/v4"
    gitlab.add_token("glpat-ada", "ada")
    project = gitlab.add_project("group/widget", branches={"main", "anycode/1"})

Not modelled: forks (``target_project_id``), approvals, pipelines, merging.
"""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, quote, unquote

import trio

from tests.fakes._http import serve_asgi
from tests.fakes._rest import (
    RestRequest,
    RestResponse,
    read_request,
    send_response,
    serve_lifespan,
)

API_PREFIX: Final = "/api/v4"
#: Access levels (https://docs.gitlab.com/api/members/#roles).
REPORTER: Final = 20
DEVELOPER: Final = 30
MAINTAINER: Final = 40
OWNER: Final = 50
#: ``per_page``: default 20, at most 100 (https://docs.gitlab.com/api/rest/#pagination).
PER_PAGE_DEFAULT: Final = 20
PER_PAGE_MAX: Final = 100
MR_STATES: Final = ("opened", "closed", "locked", "merged")
_DRAFT_TITLE: Final = re.compile(r"^\s*(\[draft\]|\(draft\)|draft:|draft\s-\s|draft\s)", re.I)
_STAMP: Final = "2026-01-01T00:00:00.000Z"
#: Followed by the open merge request's iid in a 409 (``MergeRequest#validate_branches``).
ALREADY_EXISTS: Final = "Another open merge request already exists for this source branch: !"


@dataclass
class FakeGitLabToken:
    username: str
    user_id: int


@dataclass
class FakeProject:
    """One project and its merge requests."""

    id: int
    path_with_namespace: str
    default_branch: str = "main"
    #: "public", "internal" or "private".
    visibility: str = "public"
    #: Username → access level; anyone else is a guest of a public project.
    members: dict[str, int] = field(default_factory=dict)
    branches: set[str] = field(default_factory=set)
    #: Set to point clones at a real git server; otherwise ``{server}/{path}.git``.
    http_url_to_repo: str | None = None
    merge_requests: dict[int, dict[str, Any]] = field(default_factory=dict)
    notes: list[dict[str, Any]] = field(default_factory=list)
    iids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def access(self, username: str | None) -> int:
        if username is None:
            return 0
        return self.members.get(username, 0)

    def can_see(self, username: str | None) -> bool:
        if self.visibility == "public":
            return True
        if self.visibility == "internal":
            return username is not None
        return self.access(username) > 0


class _Refused(Exception):
    def __init__(self, response: RestResponse) -> None:
        super().__init__(response.status)
        self.response = response


def _message(status: int, message: Any) -> _Refused:
    return _Refused(RestResponse(status, {"message": message}))


def _missing(*names: str) -> _Refused:
    """Grape's parameter validation: ``{"error": "a is missing, b is missing"}``."""
    return _Refused(RestResponse(400, {"error": ", ".join(f"{n} is missing" for n in names)}))


_NOT_FOUND_ROUTE: Final = RestResponse(404, {"error": "404 Not Found"})
#: The routes under ``/projects/:id`` (method, then path segments; ``*`` is a number).
_ROUTES: Final = {
    ("GET",),
    ("POST", "merge_requests"),
    ("GET", "merge_requests"),
    ("GET", "merge_requests", "*"),
    ("PUT", "merge_requests", "*"),
    ("POST", "merge_requests", "*", "notes"),
}


class FakeGitLab:
    """The stand-in; see the module docstring."""

    def __init__(self) -> None:
        self.tokens: dict[str, FakeGitLabToken] = {}
        self.projects: dict[int, FakeProject] = {}
        self.requests: list[tuple[str, str]] = []
        self.last_headers: dict[str, str] = {}
        self._injected: list[RestResponse] = []
        self._ids = itertools.count(100)
        self._port = 0

    # --- test API -------------------------------------------------------------------------------

    async def start(self, nursery: trio.Nursery) -> str:
        """Serve in `nursery`; return the server URL (the API is under ``/api/v4``)."""
        served = await nursery.start(serve_asgi, self.asgi)
        self._port = served.port
        return self.url

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def api_url(self) -> str:
        return self.url + API_PREFIX

    def add_token(self, token: str, username: str) -> FakeGitLabToken:
        known = next((t for t in self.tokens.values() if t.username == username), None)
        self.tokens[token] = FakeGitLabToken(username, known.user_id if known else next(self._ids))
        return self.tokens[token]

    def add_project(
        self,
        path: str,
        *,
        default_branch: str = "main",
        visibility: str = "public",
        members: dict[str, int] | None = None,
        branches: set[str] | None = None,
        http_url_to_repo: str | None = None,
    ) -> FakeProject:
        """A project; its namespace's first part is its owner (access level 50)."""
        owner = path.split("/")[0]
        project = FakeProject(
            next(self._ids),
            path,
            default_branch=default_branch,
            visibility=visibility,
            members={owner: OWNER, **(members or {})},
            branches=set(branches) if branches is not None else {default_branch},
            http_url_to_repo=http_url_to_repo,
        )
        self.projects[project.id] = project
        return project

    def project(self, path: str) -> FakeProject:
        return next(p for p in self.projects.values() if p.path_with_namespace == path)

    def fail_next(self, status: int = 502, *, count: int = 1) -> None:
        """Answer the next `count` requests with `status` (GitLab's ``{"message": "502 ..."}``)."""
        for _ in range(count):
            self._injected.append(RestResponse(status, {"message": f"{status} Server Error"}))

    def rate_limit_next(self, *, retry_after: int = 60) -> None:
        """Answer the next request as GitLab's rate limiter does (https://docs.gitlab.com/security/rate_limits/)."""
        reset = int(time.time()) + retry_after
        headers = {
            "RateLimit-Name": "throttle_authenticated_api",
            "RateLimit-Limit": "60",
            "RateLimit-Observed": "61",
            "RateLimit-Remaining": "0",
            "RateLimit-Reset": str(reset),
            "RateLimit-ResetTime": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(reset)),
            "Retry-After": str(retry_after),
        }
        self._injected.append(RestResponse(429, headers=headers, text="Retry later\n"))

    # --- HTTP -----------------------------------------------------------------------------------

    async def asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The ASGI application; give it to ``serve_asgi``."""
        if await serve_lifespan(scope, receive, send):
            return
        request = await read_request(scope, receive)
        if request is None:
            return
        self.requests.append((request.method, request.raw_path))
        self.last_headers = request.headers
        try:
            response = self._answer(request)
        except _Refused as refused:
            response = refused.response
        await send_response(send, response)

    def _answer(self, request: RestRequest) -> RestResponse:
        if self._injected:
            return self._injected.pop(0)
        user = self._authenticate(request)
        if not request.raw_path.startswith(API_PREFIX + "/"):
            return _NOT_FOUND_ROUTE
        # Split the raw path: "group%2Fwidget" stays one segment, as GitLab's router keeps it.
        parts = request.raw_path[len(API_PREFIX) :].split("/")[1:]
        if len(parts) < 2 or parts[0] != "projects" or "" in parts:
            return _NOT_FOUND_ROUTE
        rest = parts[2:]
        route = (request.method, *("*" if part.isdigit() else part for part in rest))
        if route not in _ROUTES:
            return _NOT_FOUND_ROUTE
        project = self._visible_project(unquote(parts[1]), user)
        if route == ("GET",):
            return RestResponse(200, self._project_json(project, user))
        if route == ("POST", "merge_requests"):
            return self._create(project, user, request)
        if route == ("GET", "merge_requests"):
            return self._list(project, request)
        mr = self._mr(project, rest[1])
        if route == ("GET", "merge_requests", "*"):
            return RestResponse(200, mr)
        if route == ("PUT", "merge_requests", "*"):
            return self._update(project, user, mr, request)
        return self._note(project, user, mr, request)

    def _authenticate(self, request: RestRequest) -> FakeGitLabToken | None:
        """``PRIVATE-TOKEN: <t>`` or ``Authorization: Bearer <t>``; a token that is given but
        unknown is 401 on every endpoint."""
        value = request.headers.get("private-token")
        if value is None:
            scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
            value = bearer.strip() if scheme.lower() == "bearer" else None
        if not value:
            return None
        token = self.tokens.get(value)
        if token is None:
            raise _message(401, "401 Unauthorized")
        return token

    def _visible_project(self, ident: str, user: FakeGitLabToken | None) -> FakeProject:
        if ident.isdigit():
            project = self.projects.get(int(ident))
        else:
            project = next(
                (p for p in self.projects.values() if p.path_with_namespace == ident), None
            )
        if project is None or not project.can_see(user.username if user else None):
            raise _message(404, "404 Project Not Found")
        return project

    @staticmethod
    def _body(request: RestRequest) -> dict[str, Any]:
        content_type = request.headers.get("content-type", "")
        if not request.body:
            return dict(request.query)
        if "json" in content_type:
            try:
                body = request.json()
            except ValueError:
                raise _Refused(RestResponse(400, {"error": "400 Bad request"})) from None
            return body if isinstance(body, dict) else {}
        return dict(parse_qsl(request.body.decode()))

    def _require(self, user: FakeGitLabToken | None, project: FakeProject, level: int) -> str:
        if user is None:
            raise _message(401, "401 Unauthorized")
        if project.access(user.username) < level:
            raise _message(403, "403 Forbidden")
        return user.username

    # --- JSON shapes ----------------------------------------------------------------------------

    def _user(self, username: str) -> dict[str, Any]:
        known = next((t for t in self.tokens.values() if t.username == username), None)
        user_id = known.user_id if known else 1
        return {
            "id": user_id,
            "username": username,
            "name": username.title(),
            "state": "active",
            "locked": False,
            "avatar_url": None,
            "web_url": f"{self.url}/{username}",
        }

    def _project_json(self, project: FakeProject, user: FakeGitLabToken | None) -> dict[str, Any]:
        path = project.path_with_namespace
        namespace, _, name = path.rpartition("/")
        body: dict[str, Any] = {
            "id": project.id,
            "description": None,
            "name": name,
            "name_with_namespace": path.replace("/", " / "),
            "path": name,
            "path_with_namespace": path,
            "created_at": _STAMP,
            "default_branch": project.default_branch,
            "visibility": project.visibility,
            "ssh_url_to_repo": f"git@127.0.0.1:{path}.git",
            "http_url_to_repo": project.http_url_to_repo or f"{self.url}/{path}.git",
            "web_url": f"{self.url}/{path}",
            "namespace": {
                "id": project.id + 1,
                "name": namespace,
                "path": namespace,
                "kind": "group",
                "full_path": namespace,
            },
            "archived": False,
            "empty_repo": False,
            "merge_requests_enabled": True,
            "_links": {
                "self": f"{self.api_url}/projects/{project.id}",
                "merge_requests": f"{self.api_url}/projects/{project.id}/merge_requests",
            },
        }
        if user is not None:
            # Present for an authenticated request; group access is not modelled.
            level = project.access(user.username)
            body["permissions"] = {
                "project_access": {"access_level": level, "notification_level": 3}
                if level
                else None,
                "group_access": None,
            }
        return body

    # --- merge requests -------------------------------------------------------------------------

    def _mr(self, project: FakeProject, iid: str) -> dict[str, Any]:
        mr = project.merge_requests.get(int(iid)) if iid.isdigit() else None
        if mr is None:
            raise _message(404, "404 Not found")
        return mr

    def _create(
        self, project: FakeProject, user: FakeGitLabToken | None, request: RestRequest
    ) -> RestResponse:
        author = self._require(user, project, DEVELOPER)
        body = self._body(request)
        missing = [k for k in ("source_branch", "target_branch", "title") if not body.get(k)]
        if missing:
            raise _missing(*missing)
        source, target = str(body["source_branch"]), str(body["target_branch"])
        if source == target:
            raise _message(422, ["You can't use same project/branch for source and target"])
        problems = [
            f'{kind} branch "{branch}" does not exist'
            for kind, branch in (("Source", source), ("Target", target))
            if branch not in project.branches
        ]
        if problems:
            raise _message(422, problems)
        for other in project.merge_requests.values():
            if (
                other["state"] == "opened"
                and other["source_branch"] == source
                and other["target_branch"] == target
            ):
                raise _message(409, [f"{ALREADY_EXISTS}{other['iid']}"])
        iid = next(project.iids)
        title = str(body["title"])
        draft = bool(_DRAFT_TITLE.match(title))
        mr = {
            "id": next(self._ids),
            "iid": iid,
            "project_id": project.id,
            "title": title,
            "description": body.get("description"),
            "state": "opened",
            "created_at": _STAMP,
            "updated_at": _STAMP,
            "merged_by": None,
            "merged_at": None,
            "closed_by": None,
            "closed_at": None,
            "target_branch": target,
            "source_branch": source,
            "user_notes_count": 0,
            "upvotes": 0,
            "downvotes": 0,
            "author": self._user(author),
            "assignees": [],
            "assignee": None,
            "reviewers": [],
            "source_project_id": project.id,
            "target_project_id": project.id,
            "labels": [],
            "draft": draft,
            "work_in_progress": draft,
            "milestone": None,
            "merge_when_pipeline_succeeds": False,
            "merge_status": "checking",
            "detailed_merge_status": "checking",
            "sha": None,
            "merge_commit_sha": None,
            "squash_commit_sha": None,
            "discussion_locked": None,
            "should_remove_source_branch": None,
            "force_remove_source_branch": bool(body.get("remove_source_branch", False)),
            "reference": f"!{iid}",
            "references": {
                "short": f"!{iid}",
                "relative": f"!{iid}",
                "full": f"{project.path_with_namespace}!{iid}",
            },
            "web_url": f"{self.url}/{project.path_with_namespace}/-/merge_requests/{iid}",
            "squash": False,
            "has_conflicts": False,
            "blocking_discussions_resolved": True,
        }
        project.merge_requests[iid] = mr
        return RestResponse(201, mr)

    def _list(self, project: FakeProject, request: RestRequest) -> RestResponse:
        query = request.query
        state = query.get("state", "all")
        if state not in (*MR_STATES, "all"):
            raise _Refused(RestResponse(400, {"error": "state does not have a valid value"}))
        found = [m for m in project.merge_requests.values() if state in ("all", m["state"])]
        for key in ("source_branch", "target_branch"):
            if key in query:
                found = [m for m in found if m[key] == query[key]]
        # Newest first, as GitLab orders by created_at desc by default.
        found.sort(key=lambda m: -int(m["iid"]))
        per_page = min(int(query.get("per_page", PER_PAGE_DEFAULT)), PER_PAGE_MAX)
        page = max(int(query.get("page", 1)), 1)
        shown = found[(page - 1) * per_page : page * per_page]
        pages = max((len(found) + per_page - 1) // per_page, 1)
        headers = {
            "X-Total": str(len(found)),
            "X-Total-Pages": str(pages),
            "X-Per-Page": str(per_page),
            "X-Page": str(page),
            "X-Next-Page": str(page + 1) if page < pages else "",
            "X-Prev-Page": str(page - 1) if page > 1 else "",
        }
        if page < pages:
            others = "&".join(f"{k}={quote(v)}" for k, v in query.items() if k != "page")
            link = f"{self.api_url}/projects/{project.id}/merge_requests?{others}&page={page + 1}"
            headers["Link"] = f'<{link}>; rel="next"'
        return RestResponse(200, shown, headers)

    def _update(
        self,
        project: FakeProject,
        user: FakeGitLabToken | None,
        mr: dict[str, Any],
        request: RestRequest,
    ) -> RestResponse:
        self._require(user, project, DEVELOPER)
        body = self._body(request)
        editable = ("title", "description", "target_branch", "state_event", "remove_source_branch")
        if not any(key in body for key in editable):
            message = f"{', '.join(editable)} are missing, at least one parameter must be provided"
            raise _Refused(RestResponse(400, {"error": message}))
        if "target_branch" in body:
            if body["target_branch"] not in project.branches:
                raise _message(422, [f'Target branch "{body["target_branch"]}" does not exist'])
            mr["target_branch"] = body["target_branch"]
        if "title" in body:
            mr["title"] = str(body["title"])
            mr["draft"] = mr["work_in_progress"] = bool(_DRAFT_TITLE.match(mr["title"]))
        if "description" in body:
            mr["description"] = body["description"]
        event = body.get("state_event")
        if event == "close":
            mr["state"], mr["closed_at"] = "closed", _STAMP
        elif event == "reopen":
            mr["state"], mr["closed_at"] = "opened", None
        return RestResponse(200, mr)

    def _note(
        self,
        project: FakeProject,
        user: FakeGitLabToken | None,
        mr: dict[str, Any],
        request: RestRequest,
    ) -> RestResponse:
        # Reporters may comment (https://docs.gitlab.com/user/permissions/).
        author = self._require(user, project, REPORTER)
        body = self._body(request)
        if not body.get("body"):
            raise _missing("body")
        note = {
            "id": next(self._ids),
            "type": None,
            "body": str(body["body"]),
            "attachment": None,
            "author": self._user(author),
            "created_at": _STAMP,
            "updated_at": _STAMP,
            "system": False,
            "noteable_id": mr["id"],
            "noteable_type": "MergeRequest",
            "noteable_iid": mr["iid"],
            "project_id": project.id,
            "resolvable": False,
            "confidential": False,
            "internal": False,
        }
        project.notes.append(note)
        mr["user_notes_count"] += 1
        return RestResponse(201, note)
