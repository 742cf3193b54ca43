"""Pull requests on GitHub and merge requests on GitLab, opened by the daemon over their REST APIs.

`GitHubForge` (github.com or Enterprise Server: give the API base, ``https://api.github.com`` or
``https://HOST/api/v3``) and `GitLabForge` (``https://gitlab.com/api/v4`` or a self-managed
``https://HOST/api/v4``) share the small `Forge` protocol: look a repository up, find the open
pull request of a branch, open one, update it, comment on it. A "pull request" here is also a
GitLab merge request; its `PullRequest.number` is the GitLab ``iid``.

Opening is idempotent: when the forge answers that a pull request for the branch already exists
(GitHub 422 "A pull request already exists for OWNER:BRANCH.", GitLab 409 "Another open merge
request already exists for this source branch: !N"), the existing one is returned. A draft that
the repository's plan does not allow (GitHub 422 "Draft pull requests are not supported in this
repository.") is opened as a ready pull request instead.

Every failure is a `ForgeError` whose message can be shown to the user as it is; the token is
sent only in a header and never appears in a message (nor in the URL httpx logs).
"""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Protocol, Self
from urllib.parse import quote, urlsplit

import httpx

from anycode_actors._tls import shared_ssl_context
from anycode_actors.errors import AnycodeError

#: A forge that has not answered in this long is treated as unavailable.
HTTP_TIMEOUT: Final = httpx.Timeout(30.0, connect=10.0)
USER_AGENT: Final = "anycode-actors"
#: https://docs.github.com/rest/about-the-rest-api/api-versions
GITHUB_API_VERSION: Final = "2022-11-28"
#: What to wait after a secondary rate limit without ``retry-after``: "at least one minute"
#: (https://docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api); GitLab's
#: limits are per minute as well (https://docs.gitlab.com/security/rate_limits/).
DEFAULT_RETRY_AFTER: Final = 60.0
#: GitLab access level from which a member may push to unprotected branches ("Developer",
#: https://docs.gitlab.com/user/permissions/).
GITLAB_DEVELOPER: Final = 30
#: At most this much of a forge's own error text goes into a message.
_DETAIL_MAX: Final = 300
_REDACTED: Final = "[redacted]"

_GH_EXISTS: Final = "A pull request already exists"
_GH_NO_COMMITS: Final = "No commits between"
_GH_NO_DRAFTS: Final = "Draft pull requests are not supported"
_GL_EXISTS: Final = re.compile(
    r"Another open merge request already exists for this source branch: !(\d+)"
)
#: Title prefixes that make a GitLab merge request a draft
#: (https://docs.gitlab.com/user/project/merge_requests/drafts/).
_GL_DRAFT: Final = re.compile(r"^\s*(\[draft\]|\(draft\)|draft:)\s*", re.IGNORECASE)


# --- errors ---------------------------------------------------------------------------------------


class ForgeError(AnycodeError):
    """GitHub or GitLab refused a call or could not be reached. The message is meant for the user
    and never contains the token."""


class ForgeAuthError(ForgeError):
    """The token was rejected (401) or lacks a permission the call needs (403)."""


class RepoNotFound(ForgeError):
    """The repository does not exist, or the token cannot see it: both forges answer 404 for a
    private repository the token has no access to."""

    def __init__(self, forge: str, path: str) -> None:
        super().__init__(f"repository {path} does not exist on {forge} or the token cannot see it")
        self.path = path


class NoCommits(ForgeError):
    """The branch has no commits that its base lacks: there is nothing to propose."""

    def __init__(self, forge: str, path: str, head: str, base: str) -> None:
        super().__init__(
            f"{forge} has no pull request to open in {path}: {head} has no commits that "
            f"{base} does not already have"
        )
        self.head = head
        self.base = base


class ForgeRateLimited(ForgeError):
    """A rate limit was hit; try again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ForgeUnavailable(ForgeError):
    """The forge answered 5xx, or could not be reached at all; a later retry may work."""


class ForgeRequestError(ForgeError):
    """Any other refusal (an invalid branch, a missing field...); `status` is the HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# --- results and the protocol --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RepoInfo:
    """What the daemon needs to know about a repository before cloning and pushing."""

    path: str
    default_branch: str
    #: Whether the token's account may push. A fine-grained token can still lack the permission
    #: to write contents, so the push itself has the last word.
    can_push: bool
    clone_url: str
    web_url: str
    private: bool


@dataclass(frozen=True, slots=True)
class PullRequest:
    """A GitHub pull request or GitLab merge request."""

    #: GitHub's pull request number, GitLab's ``iid`` (the number in the web page's address).
    number: int
    #: The web page.
    url: str
    head: str
    base: str
    title: str
    draft: bool
    #: "open", "closed" or "merged".
    state: str


class Forge(Protocol):
    """What the daemon does with a forge.

    `path` is ``owner/repo`` (on GitLab also ``group/subgroup/project``).
    """

    #: "GitHub" or "GitLab", for messages.
    name: str

    async def repository(self, path: str) -> RepoInfo: ...

    async def find_open_pr(self, path: str, branch: str) -> PullRequest | None:
        """The open pull request whose head is `branch` in the same repository, if any."""
        ...

    async def open_pr(
        self, path: str, *, head: str, base: str, title: str, body: str, draft: bool = True
    ) -> PullRequest:
        """Open a pull request of `head` into `base`, or return the one already open."""
        ...

    async def update_pr(
        self, path: str, number: int, *, title: str | None = None, body: str | None = None
    ) -> PullRequest: ...

    async def comment(self, path: str, number: int, body: str) -> None: ...

    async def aclose(self) -> None: ...


# --- the shared HTTP part -------------------------------------------------------------------------


class _RestForge(ABC):
    """HTTP, errors and token hygiene shared by both forges."""

    name = "forge"

    def __init__(self, api_url: str, token: str, *, http: httpx.AsyncClient | None = None) -> None:
        self._api_url = api_url.rstrip("/")
        self._host = urlsplit(self._api_url).netloc or self._api_url
        self._token = token
        self._owns_http = http is None
        # Made per session with a repository: the TLS context is the process's one.
        self._http = http or httpx.AsyncClient(timeout=HTTP_TIMEOUT, verify=shared_ssl_context())

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if this forge made it."""
        if self._owns_http:
            await self._http.aclose()

    @abstractmethod
    def _headers(self) -> dict[str, str]:
        """The headers of every request: the forge's auth scheme, version and media type."""

    def _safe(self, text: str) -> str:
        """`text` from the forge or from httpx, shortened and without the token."""
        if self._token:
            text = text.replace(self._token, _REDACTED)
        text = " ".join(text.split())
        return text if len(text) <= _DETAIL_MAX else text[: _DETAIL_MAX - 1] + "…"

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request; raise what every endpoint shares (network, 5xx, 401, rate limits)
        and return any other answer for the caller to read.

        httpx's exceptions are not chained: their request carries the Authorization header.
        """
        failure: ForgeError
        try:
            response = await self._http.request(
                method, self._api_url + path, json=json, params=params, headers=self._headers()
            )
        except httpx.TimeoutException:
            failure = ForgeUnavailable(f"{self.name} ({self._host}) did not answer in time")
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            reason = self._safe(str(exc)) or "no details"
            failure = ForgeUnavailable(
                f"could not reach {self.name} at {self._host}: {type(exc).__name__}: {reason}"
            )
        else:
            self._raise_common(response)
            return response
        raise failure

    def _raise_common(self, response: httpx.Response) -> None:
        limited = self._rate_limit(response)
        if limited is not None:
            raise ForgeRateLimited(
                f"{self.name} rate limit reached; retry in {limited:.0f} s", limited
            )
        status = response.status_code
        if status >= 500:
            raise ForgeUnavailable(
                f"{self.name} ({self._host}) failed with HTTP {status}: {self._detail(response)}"
            )
        if status == 401:
            raise ForgeAuthError(
                f"{self.name} ({self._host}) rejected the token: {self._detail(response)}"
            )

    @abstractmethod
    def _rate_limit(self, response: httpx.Response) -> float | None:
        """Seconds to wait when `response` says a rate limit was hit, else None."""

    def _detail(self, response: httpx.Response) -> str:
        """The forge's own words for an error answer."""
        try:
            body = response.json()
        except ValueError:
            return self._safe(response.text) or response.reason_phrase
        if isinstance(body, dict):
            message = body.get("message", body.get("error", ""))
            if isinstance(message, list):
                message = "; ".join(str(item) for item in message)
            elif isinstance(message, dict):
                message = "; ".join(f"{key} {value}" for key, value in message.items())
            return self._safe(str(message)) or response.reason_phrase
        return self._safe(str(body))

    def _refused(self, response: httpx.Response, doing: str) -> ForgeError:
        """The error for a 4xx that the endpoint does not handle itself."""
        detail = self._detail(response)
        status = response.status_code
        if status == 403:
            return ForgeAuthError(f"{self.name} does not let the token {doing}: {detail}")
        return ForgeRequestError(
            f"{self.name} refused to {doing}: {detail} (HTTP {status})", status
        )


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _retry_after(response: httpx.Response) -> float | None:
    """The ``Retry-After`` header in seconds (the HTTP-date form is not used by either forge)."""
    value = response.headers.get("retry-after", "")
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None


# --- GitHub ---------------------------------------------------------------------------------------


class GitHubForge(_RestForge):
    """GitHub's REST API (https://docs.github.com/rest/pulls/pulls). `api_url` is
    ``https://api.github.com`` or, on Enterprise Server, ``https://HOST/api/v3``."""

    name = "GitHub"

    def _headers(self) -> dict[str, str]:
        # https://docs.github.com/rest/using-the-rest-api/getting-started-with-the-rest-api
        return {
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": GITHUB_API_VERSION,
            "User-Agent": USER_AGENT,
            "Authorization": f"Bearer {self._token}",
        }

    def _rate_limit(self, response: httpx.Response) -> float | None:
        """403 or 429 with ``x-ratelimit-remaining: 0`` (primary limit: wait for
        ``x-ratelimit-reset``) or with the secondary limit's message (wait ``retry-after``, else
        a minute); https://docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api."""
        if response.status_code not in (403, 429):
            return None
        body = _json(response)
        message = str(body.get("message", "")) if isinstance(body, dict) else ""
        primary = response.headers.get("x-ratelimit-remaining") == "0" or message.startswith(
            "API rate limit exceeded"
        )
        secondary = message.startswith("You have exceeded a secondary rate limit")
        if response.status_code == 403 and not (primary or secondary):
            # A plain 403 is a missing permission.
            return None
        waited = _retry_after(response)
        if waited is not None:
            return waited
        reset = response.headers.get("x-ratelimit-reset", "")
        if primary and reset.isdigit():
            return max(float(reset) - time.time(), 0.0)
        return DEFAULT_RETRY_AFTER

    @staticmethod
    def _repo(path: str) -> str:
        owner, _, name = path.strip("/").partition("/")
        return f"/repos/{quote(owner, safe='')}/{quote(name, safe='')}"

    async def _checked_repo_call(
        self, method: str, path: str, suffix: str = "", **kwargs: Any
    ) -> httpx.Response:
        if path.strip("/").count("/") != 1:
            raise RepoNotFound(self.name, path)
        response = await self._call(method, self._repo(path) + suffix, **kwargs)
        if response.status_code == 404 and suffix in ("", "/pulls"):
            raise RepoNotFound(self.name, path)
        return response

    async def repository(self, path: str) -> RepoInfo:
        response = await self._checked_repo_call("GET", path)
        if response.status_code != 200:
            raise self._refused(response, f"read {path}")
        data = response.json()
        permissions = data.get("permissions") or {}
        return RepoInfo(
            path=str(data["full_name"]),
            default_branch=str(data["default_branch"]),
            can_push=bool(permissions.get("push", False)),
            clone_url=str(data["clone_url"]),
            web_url=str(data["html_url"]),
            private=bool(data["private"]),
        )

    async def find_open_pr(self, path: str, branch: str) -> PullRequest | None:
        # The owner prefix is required: a bare head= is ignored and every pull request comes
        # back (https://github.com/octokit/rest.js/issues/69).
        owner = path.strip("/").partition("/")[0]
        params = {"head": f"{owner}:{branch}", "state": "open", "per_page": "100"}
        response = await self._checked_repo_call("GET", path, "/pulls", params=params)
        if response.status_code != 200:
            raise self._refused(response, f"list the pull requests of {path}")
        for item in response.json():
            if item["head"]["ref"] == branch:
                return _github_pull(item)
        return None

    async def open_pr(
        self, path: str, *, head: str, base: str, title: str, body: str, draft: bool = True
    ) -> PullRequest:
        fields: dict[str, Any] = {"head": head, "base": base, "title": title, "body": body}
        if draft:
            fields["draft"] = True
        response = await self._checked_repo_call("POST", path, "/pulls", json=fields)
        if response.status_code == 422 and draft and self._says(response, _GH_NO_DRAFTS):
            # Drafts need a plan that has them
            # (https://docs.github.com/rest/pulls/pulls#create-a-pull-request).
            fields.pop("draft")
            response = await self._checked_repo_call("POST", path, "/pulls", json=fields)
        if response.status_code == 201:
            return _github_pull(response.json())
        if response.status_code == 422:
            if self._says(response, _GH_EXISTS):
                existing = await self.find_open_pr(path, head)
                if existing is not None:
                    return existing
            if self._says(response, _GH_NO_COMMITS):
                raise NoCommits(self.name, path, head, base)
            invalid = self._invalid_field(response)
            if invalid is not None:
                branch = head if invalid == "head" else base
                raise ForgeRequestError(
                    f"GitHub cannot open a pull request in {path}: branch {branch} ({invalid}) "
                    "is not on GitHub",
                    422,
                )
        raise self._refused(response, f"open a pull request in {path}")

    async def update_pr(
        self, path: str, number: int, *, title: str | None = None, body: str | None = None
    ) -> PullRequest:
        fields = {
            key: value for key, value in (("title", title), ("body", body)) if value is not None
        }
        response = await self._checked_repo_call("PATCH", path, f"/pulls/{number}", json=fields)
        if response.status_code == 404:
            raise ForgeRequestError(f"GitHub has no pull request #{number} in {path}", 404)
        if response.status_code != 200:
            raise self._refused(response, f"update pull request #{number} in {path}")
        return _github_pull(response.json())

    async def comment(self, path: str, number: int, body: str) -> None:
        # A pull request is an issue with the same number
        # (https://docs.github.com/rest/issues/comments#create-an-issue-comment).
        suffix = f"/issues/{number}/comments"
        response = await self._checked_repo_call("POST", path, suffix, json={"body": body})
        if response.status_code == 404:
            raise ForgeRequestError(f"GitHub has no pull request #{number} in {path}", 404)
        if response.status_code != 201:
            raise self._refused(response, f"comment on #{number} in {path}")

    @staticmethod
    def _messages(response: httpx.Response) -> list[str]:
        body = _json(response)
        if not isinstance(body, dict):
            return []
        found = [str(body.get("message", ""))]
        for error in body.get("errors") or []:
            if isinstance(error, dict):
                found.append(str(error.get("message", "")))
            else:
                found.append(str(error))
        return found

    def _says(self, response: httpx.Response, prefix: str) -> bool:
        return any(message.startswith(prefix) for message in self._messages(response))

    @staticmethod
    def _invalid_field(response: httpx.Response) -> str | None:
        body = _json(response)
        errors = body.get("errors") or [] if isinstance(body, dict) else []
        for error in errors:
            if (
                isinstance(error, dict)
                and error.get("code") == "invalid"
                and error.get("field") in ("head", "base")
            ):
                return str(error["field"])
        return None


def _github_pull(item: dict[str, Any]) -> PullRequest:
    state = "merged" if item.get("merged_at") else str(item["state"])
    return PullRequest(
        number=int(item["number"]),
        url=str(item["html_url"]),
        head=str(item["head"]["ref"]),
        base=str(item["base"]["ref"]),
        title=str(item["title"]),
        draft=bool(item.get("draft", False)),
        state=state,
    )


# --- GitLab ---------------------------------------------------------------------------------------


class GitLabForge(_RestForge):
    """GitLab's REST API v4 (https://docs.gitlab.com/api/merge_requests/). `api_url` is
    ``https://gitlab.com/api/v4`` or ``https://HOST/api/v4``. The token goes in
    ``Authorization: Bearer``, which takes personal, project, group and OAuth tokens alike
    (https://docs.gitlab.com/api/rest/authentication/)."""

    name = "GitLab"

    def _headers(self) -> dict[str, str]:
        return {"User-Agent": USER_AGENT, "Authorization": f"Bearer {self._token}"}

    def _rate_limit(self, response: httpx.Response) -> float | None:
        if response.status_code != 429:
            return None
        waited = _retry_after(response)
        return DEFAULT_RETRY_AFTER if waited is None else waited

    @staticmethod
    def _project(path: str) -> str:
        # The project's path, URL-encoded as one segment (https://docs.gitlab.com/api/rest/#namespaced-paths).
        return f"/projects/{quote(path.strip('/'), safe='')}"

    async def _project_call(
        self, method: str, path: str, suffix: str = "", **kwargs: Any
    ) -> httpx.Response:
        response = await self._call(method, self._project(path) + suffix, **kwargs)
        if response.status_code == 404 and "Project Not Found" in self._detail(response):
            raise RepoNotFound(self.name, path)
        return response

    async def repository(self, path: str) -> RepoInfo:
        response = await self._project_call("GET", path)
        if response.status_code == 404:
            raise RepoNotFound(self.name, path)
        if response.status_code != 200:
            raise self._refused(response, f"read {path}")
        data = response.json()
        permissions = data.get("permissions") or {}
        levels = [
            int((permissions.get(kind) or {}).get("access_level", 0))
            for kind in ("project_access", "group_access")
        ]
        return RepoInfo(
            path=str(data["path_with_namespace"]),
            default_branch=str(data.get("default_branch") or ""),
            can_push=max(levels) >= GITLAB_DEVELOPER,
            clone_url=str(data["http_url_to_repo"]),
            web_url=str(data["web_url"]),
            private=data.get("visibility") != "public",
        )

    async def find_open_pr(self, path: str, branch: str) -> PullRequest | None:
        params = {"source_branch": branch, "state": "opened", "per_page": "100"}
        response = await self._project_call("GET", path, "/merge_requests", params=params)
        if response.status_code != 200:
            raise self._refused(response, f"list the merge requests of {path}")
        for item in response.json():
            if item["source_branch"] == branch and item.get("source_project_id") == item.get(
                "target_project_id"
            ):
                return _gitlab_merge_request(item)
        return None

    async def open_pr(
        self, path: str, *, head: str, base: str, title: str, body: str, draft: bool = True
    ) -> PullRequest:
        # A draft is a title prefix; the create call has no draft field
        # (https://docs.gitlab.com/user/project/merge_requests/drafts/).
        if draft and not _GL_DRAFT.match(title):
            title = f"Draft: {title}"
        fields = {"source_branch": head, "target_branch": base, "title": title, "description": body}
        response = await self._project_call("POST", path, "/merge_requests", json=fields)
        if response.status_code == 201:
            return _gitlab_merge_request(response.json())
        if response.status_code == 409:
            # {"message": ["Another open merge request already exists for this source branch: !7"]}
            found = _GL_EXISTS.search(self._detail(response))
            if found is not None:
                return await self._merge_request(path, int(found.group(1)))
            existing = await self.find_open_pr(path, head)
            if existing is not None:
                return existing
        raise self._refused(response, f"open a merge request in {path}")

    async def _merge_request(self, path: str, iid: int) -> PullRequest:
        response = await self._project_call("GET", path, f"/merge_requests/{iid}")
        if response.status_code == 404:
            raise ForgeRequestError(f"GitLab has no merge request !{iid} in {path}", 404)
        if response.status_code != 200:
            raise self._refused(response, f"read merge request !{iid} in {path}")
        return _gitlab_merge_request(response.json())

    async def update_pr(
        self, path: str, number: int, *, title: str | None = None, body: str | None = None
    ) -> PullRequest:
        """A new title keeps the merge request a draft if it was one."""
        fields: dict[str, str] = {}
        if title is not None:
            current = await self._merge_request(path, number)
            keep_draft = current.draft and not _GL_DRAFT.match(title)
            fields["title"] = f"Draft: {title}" if keep_draft else title
        if body is not None:
            fields["description"] = body
        if not fields:
            return await self._merge_request(path, number)
        response = await self._project_call("PUT", path, f"/merge_requests/{number}", json=fields)
        if response.status_code == 404:
            raise ForgeRequestError(f"GitLab has no merge request !{number} in {path}", 404)
        if response.status_code != 200:
            raise self._refused(response, f"update merge request !{number} in {path}")
        return _gitlab_merge_request(response.json())

    async def comment(self, path: str, number: int, body: str) -> None:
        suffix = f"/merge_requests/{number}/notes"
        response = await self._project_call("POST", path, suffix, json={"body": body})
        if response.status_code == 404:
            raise ForgeRequestError(f"GitLab has no merge request !{number} in {path}", 404)
        if response.status_code != 201:
            raise self._refused(response, f"comment on !{number} in {path}")


def _gitlab_merge_request(item: dict[str, Any]) -> PullRequest:
    state = {"opened": "open", "locked": "open"}.get(str(item["state"]), str(item["state"]))
    return PullRequest(
        number=int(item["iid"]),
        url=str(item["web_url"]),
        head=str(item["source_branch"]),
        base=str(item["target_branch"]),
        title=str(item["title"]),
        draft=bool(item.get("draft", item.get("work_in_progress", False))),
        state=state,
    )
