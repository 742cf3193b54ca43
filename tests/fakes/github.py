"""A stand-in for the GitHub REST API (pull requests), served over real HTTP on loopback.

It answers the few endpoints the daemon uses to open and keep up a pull request, with the shapes,
status codes, error bodies and headers GitHub documents:

- ``GET /repos/{owner}/{repo}``: https://docs.github.com/rest/repos/repos#get-a-repository
- ``POST /repos/{owner}/{repo}/pulls``, ``GET .../pulls``, ``PATCH .../pulls/{n}``:
  https://docs.github.com/rest/pulls/pulls
- ``POST /repos/{owner}/{repo}/issues/{n}/comments``:
  https://docs.github.com/rest/issues/comments#create-an-issue-comment
- errors (401 ``Bad credentials``, 404 ``Not Found`` also for a private repository the token
  cannot see, 422 ``Validation Failed`` with ``errors[]``, the User-Agent requirement, API
  versions): https://docs.github.com/rest/using-the-rest-api/troubleshooting-the-rest-api
- rate limits and their ``x-ratelimit-*``/``retry-after`` headers:
  https://docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api
- the 422 messages of pull request creation as GitHub words them: "A pull request already exists
  for OWNER:BRANCH." (https://github.com/google/go-github/issues/1441), "No commits between BASE
  and HEAD" (https://github.com/peter-evans/create-pull-request/issues/4088), "Draft pull
  requests are not supported in this repository." (https://github.com/SWE-agent/SWE-agent/issues/179)

Its own tests drive it with PyGithub, an independent client, so it cannot drift from the API.

Use::

    github = FakeGitHub(prefix="/api/v3")          # "" for api.github.com's layout
    api_url = await github.start(nursery)          # "http://127.0.0.1:<port>/api/v3"
    github.add_token("ghp_ada", "ada")
    repo = github.add_repo("ada/widget", branches={"main": ["c1"]})
    repo.branches["anycode/1a2b"] = ["c1", "c2"]   # the branch was pushed with one new commit

Branches are lists of commit ids, oldest first: a pull request has commits when its head holds a
commit its base does not. A test with a real git server sets ``branch_commits`` to read them from
there instead.

Not modelled: forks (a ``head`` with another owner is invalid), GraphQL, reviews, merging.
"""

from __future__ import annotations

import itertools
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import trio

from tests.fakes._http import serve_asgi
from tests.fakes._rest import RestRequest, RestResponse, read_request, send_response, serve_lifespan

DOCS: Final = "https://docs.github.com/rest"
DOC_GET_REPO: Final = f"{DOCS}/repos/repos#get-a-repository"
DOC_CREATE_PR: Final = f"{DOCS}/pulls/pulls#create-a-pull-request"
DOC_LIST_PRS: Final = f"{DOCS}/pulls/pulls#list-pull-requests"
DOC_UPDATE_PR: Final = f"{DOCS}/pulls/pulls#update-a-pull-request"
DOC_COMMENT: Final = f"{DOCS}/issues/comments#create-an-issue-comment"
DOC_RATE_LIMITS: Final = (
    "https://docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api"
)

#: Versions this stand-in accepts in ``X-GitHub-Api-Version``; another value is answered 400
#: (https://docs.github.com/rest/about-the-rest-api/api-versions).
API_VERSIONS: Final = ("2022-11-28", "2026-03-10")
DEFAULT_API_VERSION: Final = "2022-11-28"
#: The primary limit of a user token, per hour (rate limits doc above).
RATE_LIMIT: Final = 5000
#: ``per_page`` of a list: default 30, at most 100 (pulls doc above).
PER_PAGE_DEFAULT: Final = 30
PER_PAGE_MAX: Final = 100

BAD_CREDENTIALS: Final = "Bad credentials"
REQUIRES_AUTH: Final = "Requires authentication"
NOT_ACCESSIBLE: Final = "Resource not accessible by personal access token"
DRAFT_UNSUPPORTED: Final = "Draft pull requests are not supported in this repository."
SECONDARY_LIMIT: Final = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
)
#: GitHub's answer to a request without a User-Agent: a plain-text 403.
NO_USER_AGENT: Final = (
    "Request forbidden by administrative rules. Please make sure your request has a User-Agent "
    "header (https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-"
    "required). Check https://developer.github.com for other possible causes."
)
#: What a token without write access to pull requests lacked: ``X-Accepted-GitHub-Permissions``.
PULLS_WRITE: Final = "pull_requests=write"
ISSUES_WRITE: Final = "issues=write; pull_requests=write"

_STAMP: Final = "2026-01-01T00:00:00Z"


@dataclass
class FakeToken:
    """A personal access token: whose it is and what it may do."""

    login: str
    user_id: int
    #: False for a fine-grained token without ``Pull requests: write``: creating, updating and
    #: commenting answer 403 "Resource not accessible by personal access token".
    can_write_pulls: bool = True


@dataclass
class FakeRepo:
    """One repository and its pull requests."""

    owner: str
    name: str
    id: int
    default_branch: str = "main"
    private: bool = False
    #: Logins that can see the repository when it is private (the owner always can).
    readers: set[str] = field(default_factory=set)
    #: Logins with push access (``permissions.push``); the owner always has it.
    writers: set[str] = field(default_factory=set)
    #: False where the plan has no drafts: a draft pull request is refused with 422.
    drafts_supported: bool = True
    #: Branch name → its commit ids, oldest first.
    branches: dict[str, list[str]] = field(default_factory=dict)
    #: Set to point clones at a real git server; otherwise ``{server}/{owner}/{name}.git``.
    clone_url: str | None = None
    pulls: dict[int, dict[str, Any]] = field(default_factory=dict)
    comments: list[dict[str, Any]] = field(default_factory=list)
    #: Pull requests and issues share one sequence of numbers.
    numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    def can_see(self, login: str | None) -> bool:
        if not self.private:
            return True
        return login is not None and (login == self.owner or login in self.readers | self.writers)

    def can_push(self, login: str | None) -> bool:
        return login is not None and (login == self.owner or login in self.writers)


@dataclass
class _Injected:
    """A failure answered instead of the next request(s)."""

    status: int
    body: Any
    headers: dict[str, str]
    text: str | None = None


class _Refused(Exception):
    def __init__(self, response: RestResponse) -> None:
        super().__init__(response.status)
        self.response = response


def _error(
    status: int, message: str, doc: str, *, errors: list[dict[str, Any]] | None = None
) -> _Refused:
    """GitHub's error body: message, errors (422 only), documentation_url, status as a string
    (https://github.com/github/rest-api-description/issues/3726)."""
    body: dict[str, Any] = {"message": message}
    if errors is not None:
        body["errors"] = errors
    body["documentation_url"] = doc
    body["status"] = str(status)
    return _Refused(RestResponse(status, body))


def _validation(doc: str, **error: str) -> _Refused:
    return _error(422, "Validation Failed", doc, errors=[{"resource": "PullRequest", **error}])


class FakeGitHub:
    """The stand-in; see the module docstring. All state is plain Python the test may read."""

    def __init__(self, *, prefix: str = "") -> None:
        self.prefix = prefix.rstrip("/")
        self.tokens: dict[str, FakeToken] = {}
        self.repos: dict[str, FakeRepo] = {}
        #: When set, ``(repo full name, branch) -> commit ids or None`` replaces ``branches``.
        self.branch_commits: Callable[[str, str], list[str] | None] | None = None
        #: Every request, as ``(method, raw path)``.
        self.requests: list[tuple[str, str]] = []
        #: The headers of the last request, to check what a client sends.
        self.last_headers: dict[str, str] = {}
        #: The query parameters of the last request.
        self.last_query: dict[str, str] = {}
        self._injected: list[_Injected] = []
        self._used: dict[str, int] = {}
        self._ids = itertools.count(1000)
        self._port = 0

    # --- test API -------------------------------------------------------------------------------

    async def start(self, nursery: trio.Nursery) -> str:
        """Serve in `nursery`; return the API base URL (with the prefix)."""
        served = await nursery.start(serve_asgi, self.asgi)
        self._port = served.port
        return self.api_url

    @property
    def server_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def api_url(self) -> str:
        return self.server_url + self.prefix

    def add_token(self, token: str, login: str, *, can_write_pulls: bool = True) -> FakeToken:
        known = next((t for t in self.tokens.values() if t.login == login), None)
        user_id = known.user_id if known else next(self._ids)
        self.tokens[token] = FakeToken(login, user_id, can_write_pulls)
        return self.tokens[token]

    def add_repo(
        self,
        full_name: str,
        *,
        default_branch: str = "main",
        private: bool = False,
        branches: dict[str, list[str]] | None = None,
        readers: set[str] | None = None,
        writers: set[str] | None = None,
        drafts_supported: bool = True,
        clone_url: str | None = None,
    ) -> FakeRepo:
        owner, name = full_name.split("/")
        repo = FakeRepo(
            owner,
            name,
            next(self._ids),
            default_branch=default_branch,
            private=private,
            readers=set(readers or ()),
            writers=set(writers or ()),
            drafts_supported=drafts_supported,
            branches=dict(branches) if branches is not None else {default_branch: ["c0"]},
            clone_url=clone_url,
        )
        self.repos[full_name.lower()] = repo
        return repo

    def fail_next(self, status: int = 502, *, count: int = 1, body: Any = None) -> None:
        """Answer the next `count` requests with `status` (default: 502 Server Error)."""
        for _ in range(count):
            self._injected.append(
                _Injected(status, body if body is not None else {"message": "Server Error"}, {})
            )

    def rate_limit_next(
        self, *, status: int = 403, secondary: bool = False, retry_after: int | None = None
    ) -> None:
        """Answer the next request as GitHub does when a rate limit is exceeded: 403 or 429; the
        primary limit with ``x-ratelimit-remaining: 0`` and a reset an hour on, the secondary
        one with its own message (and ``retry-after`` when given)."""
        reset = int(time.time()) + 3600
        headers: dict[str, str] = {}
        if secondary:
            message = SECONDARY_LIMIT
        else:
            message = "API rate limit exceeded for user ID 1."
            headers.update(
                {
                    "x-ratelimit-limit": str(RATE_LIMIT),
                    "x-ratelimit-remaining": "0",
                    "x-ratelimit-used": str(RATE_LIMIT),
                    "x-ratelimit-reset": str(reset),
                    "x-ratelimit-resource": "core",
                }
            )
        if retry_after is not None:
            headers["retry-after"] = str(retry_after)
        body = {"message": message, "documentation_url": DOC_RATE_LIMITS, "status": str(status)}
        self._injected.append(_Injected(status, body, headers))

    def pulls(self, full_name: str) -> list[dict[str, Any]]:
        return list(self._repo_named(full_name).pulls.values())

    def _repo_named(self, full_name: str) -> FakeRepo:
        return self.repos[full_name.lower()]

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
        self.last_query = request.query
        try:
            response = self._answer(request)
        except _Refused as refused:
            response = refused.response
        response.headers.setdefault("x-github-api-version-selected", DEFAULT_API_VERSION)
        await send_response(send, response)

    def _answer(self, request: RestRequest) -> RestResponse:
        if not request.headers.get("user-agent"):
            return RestResponse(403, text=NO_USER_AGENT)
        if self._injected:
            injected = self._injected.pop(0)
            return RestResponse(injected.status, injected.body, dict(injected.headers))
        version = request.headers.get("x-github-api-version")
        if version is not None and version not in API_VERSIONS:
            raise _error(400, f"Unsupported 'X-GitHub-Api-Version': {version}", DOCS)
        token = self._authenticate(request)
        rate = self._count(token)
        if not request.raw_path.startswith(self.prefix + "/"):
            raise _error(404, "Not Found", DOCS)
        response = self._route(request, token, request.raw_path[len(self.prefix) :])
        response.headers.update(rate)
        return response

    def _authenticate(self, request: RestRequest) -> FakeToken | None:
        """Both ``token <t>`` and ``Bearer <t>`` are accepted
        (https://docs.github.com/rest/authentication/authenticating-to-the-rest-api)."""
        header = request.headers.get("authorization")
        if header is None:
            return None
        scheme, _, value = header.partition(" ")
        token = self.tokens.get(value.strip()) if scheme.lower() in ("token", "bearer") else None
        if token is None:
            raise _error(401, BAD_CREDENTIALS, DOCS)
        return token

    def _count(self, token: FakeToken | None) -> dict[str, str]:
        key = token.login if token else "<anonymous>"
        limit = RATE_LIMIT if token else 60
        self._used[key] = used = self._used.get(key, 0) + 1
        return {
            "x-ratelimit-limit": str(limit),
            "x-ratelimit-remaining": str(max(limit - used, 0)),
            "x-ratelimit-used": str(used),
            "x-ratelimit-reset": str(int(time.time()) + 3600),
            "x-ratelimit-resource": "core",
        }

    def _route(self, request: RestRequest, token: FakeToken | None, path: str) -> RestResponse:
        parts = path.split("/")[1:]
        method = request.method
        if len(parts) < 3 or parts[0] != "repos" or "" in parts:
            # An unknown route, or a trailing slash: GitHub answers 404 either way.
            raise _error(404, "Not Found", DOCS)
        repo = self._visible_repo(parts[1], parts[2], token)
        rest = parts[3:]
        if rest == [] and method == "GET":
            return RestResponse(200, self._repo_json(repo, token))
        if rest == ["pulls"] and method == "POST":
            return self._create_pull(repo, token, request)
        if rest == ["pulls"] and method == "GET":
            return self._list_pulls(repo, request)
        if len(rest) == 2 and rest[0] == "pulls" and method in ("GET", "PATCH"):
            pull = self._pull(repo, rest[1], DOC_UPDATE_PR)
            if method == "GET":
                return RestResponse(200, pull)
            return self._update_pull(repo, token, pull, request)
        if len(rest) == 3 and rest[0] == "issues" and rest[2] == "comments" and method == "POST":
            return self._comment(repo, token, rest[1], request)
        raise _error(404, "Not Found", DOCS)

    def _visible_repo(self, owner: str, name: str, token: FakeToken | None) -> FakeRepo:
        repo = self.repos.get(f"{owner}/{name}".lower())
        if repo is None or not repo.can_see(token.login if token else None):
            # A private repository the token cannot see is indistinguishable from none.
            raise _error(404, "Not Found", DOC_GET_REPO)
        return repo

    def _writer(self, repo: FakeRepo, token: FakeToken | None, doc: str, needs: str) -> FakeToken:
        if token is None:
            raise _error(401, REQUIRES_AUTH, doc)
        if not token.can_write_pulls or not repo.can_see(token.login):
            refused = _error(403, NOT_ACCESSIBLE, doc)
            refused.response.headers["x-accepted-github-permissions"] = needs
            raise refused
        return token

    @staticmethod
    def _body(request: RestRequest) -> dict[str, Any]:
        try:
            body = request.json()
        except ValueError:
            raise _error(400, "Problems parsing JSON", DOCS) from None
        if body is None:
            return {}
        if not isinstance(body, dict):
            raise _error(400, "Body should be a JSON object", DOCS)
        return body

    # --- JSON shapes ----------------------------------------------------------------------------

    def _user(self, login: str) -> dict[str, Any]:
        known = next((t for t in self.tokens.values() if t.login == login), None)
        user_id = known.user_id if known else zlib.crc32(login.encode()) % 10**6
        return {
            "login": login,
            "id": user_id,
            "node_id": f"U_{user_id}",
            "type": "User",
            "site_admin": False,
            "url": f"{self.api_url}/users/{login}",
            "html_url": f"{self.server_url}/{login}",
            "avatar_url": f"{self.server_url}/avatars/{login}",
        }

    def _repo_json(self, repo: FakeRepo, token: FakeToken | None) -> dict[str, Any]:
        api = f"{self.api_url}/repos/{repo.full_name}"
        body: dict[str, Any] = {
            "id": repo.id,
            "node_id": f"R_{repo.id}",
            "name": repo.name,
            "full_name": repo.full_name,
            "owner": self._user(repo.owner),
            "private": repo.private,
            "visibility": "private" if repo.private else "public",
            "fork": False,
            "archived": False,
            "disabled": False,
            "description": None,
            "default_branch": repo.default_branch,
            "url": api,
            "html_url": f"{self.server_url}/{repo.full_name}",
            "clone_url": repo.clone_url or f"{self.server_url}/{repo.full_name}.git",
            "git_url": f"git://127.0.0.1/{repo.full_name}.git",
            "ssh_url": f"git@127.0.0.1:{repo.full_name}.git",
            "pulls_url": api + "/pulls{/number}",
            "issues_url": api + "/issues{/number}",
            "created_at": _STAMP,
            "updated_at": _STAMP,
            "pushed_at": _STAMP,
        }
        if token is not None:
            # Present only for an authenticated request (repos doc above).
            owner = token.login == repo.owner
            push = repo.can_push(token.login)
            body["permissions"] = {
                "admin": owner,
                "maintain": owner,
                "push": push,
                "triage": push,
                "pull": True,
            }
        return body

    def _branch_json(self, repo: FakeRepo, ref: str) -> dict[str, Any]:
        commits = self._commits(repo, ref) or []
        return {
            "label": f"{repo.owner}:{ref}",
            "ref": ref,
            "sha": commits[-1] if commits else "",
            "user": self._user(repo.owner),
            "repo": {
                "id": repo.id,
                "name": repo.name,
                "full_name": repo.full_name,
                "url": f"{self.api_url}/repos/{repo.full_name}",
            },
        }

    def _commits(self, repo: FakeRepo, branch: str) -> list[str] | None:
        if self.branch_commits is not None:
            return self.branch_commits(repo.full_name, branch)
        return repo.branches.get(branch)

    # --- pull requests --------------------------------------------------------------------------

    def _pull(self, repo: FakeRepo, number: str, doc: str) -> dict[str, Any]:
        pull = repo.pulls.get(int(number)) if number.isdigit() else None
        if pull is None:
            raise _error(404, "Not Found", doc)
        return pull

    def _create_pull(
        self, repo: FakeRepo, token: FakeToken | None, request: RestRequest
    ) -> RestResponse:
        author = self._writer(repo, token, DOC_CREATE_PR, PULLS_WRITE)
        body = self._body(request)
        missing = [key for key in ("head", "base") if key not in body]
        if "title" not in body and "issue" not in body:
            missing.append("title")
        if missing:
            detail = "\n".join(f'"{key}" wasn\'t supplied.' for key in missing)
            raise _error(422, f"Invalid request.\n\n{detail}", DOC_CREATE_PR)
        head, base = str(body["head"]), str(body["base"])
        owner, _, branch = head.rpartition(":")
        if owner and owner.lower() != repo.owner.lower():
            raise _validation(DOC_CREATE_PR, field="head", code="invalid")
        head_commits = self._commits(repo, branch)
        if head_commits is None:
            raise _validation(DOC_CREATE_PR, field="head", code="invalid")
        base_commits = self._commits(repo, base)
        if base_commits is None:
            raise _validation(DOC_CREATE_PR, field="base", code="invalid")
        label = f"{repo.owner}:{branch}"
        for pull in repo.pulls.values():
            if pull["state"] == "open" and pull["head"]["label"] == label:
                message = f"A pull request already exists for {label}."
                raise _validation(DOC_CREATE_PR, code="custom", message=message)
        if not set(head_commits) - set(base_commits):
            message = f"No commits between {base} and {branch}"
            raise _validation(DOC_CREATE_PR, code="custom", message=message)
        draft = bool(body.get("draft", False))
        if draft and not repo.drafts_supported:
            raise _error(422, DRAFT_UNSUPPORTED, DOC_CREATE_PR)
        number = next(repo.numbers)
        api = f"{self.api_url}/repos/{repo.full_name}"
        html = f"{self.server_url}/{repo.full_name}/pull/{number}"
        pull = {
            "url": f"{api}/pulls/{number}",
            "id": next(self._ids),
            "node_id": f"PR_{number}",
            "html_url": html,
            "diff_url": html + ".diff",
            "patch_url": html + ".patch",
            "issue_url": f"{api}/issues/{number}",
            "commits_url": f"{api}/pulls/{number}/commits",
            "comments_url": f"{api}/issues/{number}/comments",
            "number": number,
            "state": "open",
            "locked": False,
            "title": body.get("title", ""),
            "user": self._user(author.login),
            "body": body.get("body"),
            "labels": [],
            "created_at": _STAMP,
            "updated_at": _STAMP,
            "closed_at": None,
            "merged_at": None,
            "merge_commit_sha": None,
            "draft": draft,
            "head": self._branch_json(repo, branch),
            "base": self._branch_json(repo, base),
            "author_association": "OWNER" if author.login == repo.owner else "CONTRIBUTOR",
            "merged": False,
            "mergeable": None,
            "maintainer_can_modify": bool(body.get("maintainer_can_modify", False)),
            "comments": 0,
            "commits": len(set(head_commits) - set(base_commits)),
        }
        repo.pulls[number] = pull
        return RestResponse(201, pull, {"location": pull["url"]})

    def _list_pulls(self, repo: FakeRepo, request: RestRequest) -> RestResponse:
        query = request.query
        state = query.get("state", "open")
        if state not in ("open", "closed", "all"):
            raise _validation(DOC_LIST_PRS, field="state", code="invalid")
        found = [p for p in repo.pulls.values() if state in ("all", p["state"])]
        head = query.get("head")
        # "head=BRANCH" without "OWNER:" is silently ignored, as GitHub does
        # (https://github.com/octokit/rest.js/issues/69).
        if head and ":" in head:
            owner, _, branch = head.partition(":")
            found = [p for p in found if p["head"]["label"].lower() == f"{owner}:{branch}".lower()]
        if "base" in query:
            found = [p for p in found if p["base"]["ref"] == query["base"]]
        try:
            per_page = min(int(query.get("per_page", PER_PAGE_DEFAULT)), PER_PAGE_MAX)
            page = max(int(query.get("page", 1)), 1)
        except ValueError:
            raise _error(422, "Invalid request.", DOC_LIST_PRS) from None
        shown = found[(page - 1) * per_page : page * per_page]
        headers: dict[str, str] = {}
        if page * per_page < len(found):
            link = f"{self.api_url}/repos/{repo.full_name}/pulls"
            params = "&".join(f"{k}={v}" for k, v in query.items() if k != "page")
            headers["link"] = f'<{link}?{params}&page={page + 1}>; rel="next"'
        return RestResponse(200, shown, headers)

    def _update_pull(
        self, repo: FakeRepo, token: FakeToken | None, pull: dict[str, Any], request: RestRequest
    ) -> RestResponse:
        self._writer(repo, token, DOC_UPDATE_PR, PULLS_WRITE)
        body = self._body(request)
        if "state" in body and body["state"] not in ("open", "closed"):
            raise _validation(DOC_UPDATE_PR, field="state", code="invalid")
        if "base" in body:
            if self._commits(repo, str(body["base"])) is None:
                raise _validation(DOC_UPDATE_PR, field="base", code="invalid")
            pull["base"] = self._branch_json(repo, str(body["base"]))
        for key in ("title", "body", "maintainer_can_modify"):
            if key in body:
                pull[key] = body[key]
        if "state" in body:
            pull["state"] = body["state"]
            pull["closed_at"] = _STAMP if body["state"] == "closed" else None
        # "draft" is not a field of this endpoint: draft ↔ ready is GraphQL only, so it is ignored.
        pull["head"] = self._branch_json(repo, pull["head"]["ref"])
        return RestResponse(200, pull)

    def _comment(
        self, repo: FakeRepo, token: FakeToken | None, number: str, request: RestRequest
    ) -> RestResponse:
        author = self._writer(repo, token, DOC_COMMENT, ISSUES_WRITE)
        pull = self._pull(repo, number, DOC_COMMENT)
        body = self._body(request)
        if not isinstance(body.get("body"), str):
            raise _error(
                422,
                "Validation Failed",
                DOC_COMMENT,
                errors=[{"resource": "IssueComment", "code": "missing_field", "field": "body"}],
            )
        comment_id = next(self._ids)
        api = f"{self.api_url}/repos/{repo.full_name}"
        comment = {
            "id": comment_id,
            "node_id": f"IC_{comment_id}",
            "url": f"{api}/issues/comments/{comment_id}",
            "html_url": f"{pull['html_url']}#issuecomment-{comment_id}",
            "issue_url": pull["issue_url"],
            "body": body["body"],
            "user": self._user(author.login),
            "created_at": _STAMP,
            "updated_at": _STAMP,
            "author_association": "OWNER" if author.login == repo.owner else "CONTRIBUTOR",
        }
        repo.comments.append({"number": pull["number"], **comment})
        pull["comments"] += 1
        return RestResponse(201, comment, {"location": comment["url"]})
