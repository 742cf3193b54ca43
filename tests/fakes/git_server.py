"""A real smart-HTTP git server for tests: git's own `git http-backend` behind Basic auth.

The HTTP side is `http.server.ThreadingHTTPServer` in a background thread, so it serves
concurrent requests and works from synchronous and Trio tests alike. Every request runs
`git http-backend` as a CGI program (https://git-scm.com/docs/git-http-backend) with the
repository root as `GIT_PROJECT_ROOT`; this wrapper adds what the backend lacks:

- Basic auth, required for push (both `info/refs?service=git-receive-pack` and
  `POST …/git-receive-pack`) and, for a private repository, for fetch too. A missing or wrong
  credential answers 401 with `WWW-Authenticate: Basic realm=...`: git sends a credential (from
  its helper or an `http.extraHeader`) only after such a challenge. A read-only token may fetch
  but gets 403 on push, the way a forge answers a token without write access.
- De-chunking: pushes over `http.postBuffer` (1 MiB by default) arrive with
  `Transfer-Encoding: chunked`, which the CGI interface cannot pass on
  (https://git-scm.com/docs/git-config#Documentation/git-config.txt-httppostBuffer).
- `Content-Encoding` and `Git-Protocol` are passed through untouched: the backend inflates gzip
  bodies itself and speaks protocol v2 only when told.

It binds 0.0.0.0 so that Docker containers reach it through the bridge gateway
(`container_url`); tests on the host use `url` (loopback).
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from tests.fakes.model import docker_bridge_gateway

__all__ = [
    "GIT_TEST_ENV",
    "GitRequest",
    "GitServer",
    "basic_auth_header",
    "git",
]

REALM = "anycode test git"
RECEIVE = "git-receive-pack"
UPLOAD = "git-upload-pack"

# Test-side git commands must not read the developer's own configuration (a global insteadOf,
# a credential helper) nor ever prompt.
GIT_TEST_ENV: Mapping[str, str] = {
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "",
    "SSH_ASKPASS": "",
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.com",
    "GIT_COMMITTER_NAME": "Test Committer",
    "GIT_COMMITTER_EMAIL": "committer@example.com",
}


def git(
    *args: str,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real `git` CLI for a test, hermetic (see `GIT_TEST_ENV`), text output."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    full_env.update(GIT_TEST_ENV)
    full_env.update(env or {})
    done = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=full_env,
        input=input,
        capture_output=True,
        timeout=120,
        check=False,
    )
    result = subprocess.CompletedProcess(
        done.args,
        done.returncode,
        done.stdout.decode("utf-8", "replace"),
        done.stderr.decode("utf-8", "replace"),
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"git {' '.join(args)} failed ({done.returncode}):\n{result.stdout}{result.stderr}"
        )
    return result


def basic_auth_header(username: str, token: str) -> str:
    """`Authorization: Basic …` as git's `http.extraHeader` wants it (one line, no wrapping)."""
    encoded = base64.b64encode(f"{username}:{token}".encode()).decode("ascii")
    return f"Authorization: Basic {encoded}"


@dataclass(frozen=True)
class GitRequest:
    """One request the server answered."""

    method: str
    path: str
    repo: str
    service: str | None
    authenticated: bool
    user: str | None
    status: int


class GitServer:
    """Bare repositories under `root`, served over smart HTTP with Basic auth.

    `token` may push (and read private repositories); `read_token` may only read. Any user name
    is accepted with a right token, as on GitHub (`x-access-token`) and GitLab (any non-blank).
    Use as a context manager, or call `start` and `stop`.
    """

    def __init__(
        self,
        root: Path,
        *,
        token: str = "test-push-token-0123456789",
        read_token: str | None = None,
    ) -> None:
        self.root = root
        self.token = token
        self.read_token = read_token
        self.requests: list[GitRequest] = []
        self._private: set[str] = set()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        root.mkdir(parents=True, exist_ok=True)

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> GitServer:
        server = ThreadingHTTPServer(("0.0.0.0", 0), _handler_for(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="git-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> GitServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "the git server is not started"
        return int(self._server.server_address[1])

    def url(self, repo: str = "") -> str:
        """The URL of `repo` (`owner/name`, without `.git`) as seen from this machine."""
        base = f"http://127.0.0.1:{self.port}"
        return f"{base}/{repo}.git" if repo else base

    def container_url(self, repo: str = "") -> str | None:
        """The URL of `repo` as a Docker container on the default bridge sees it, or None when
        there is no Docker engine (no bridge gateway)."""
        gateway = docker_bridge_gateway()
        if gateway is None:
            return None
        base = f"http://{gateway}:{self.port}"
        return f"{base}/{repo}.git" if repo else base

    # --- repositories --------------------------------------------------------------------------

    def repo_path(self, repo: str) -> Path:
        return self.root / f"{repo}.git"

    def create_repo(
        self,
        repo: str,
        *,
        default_branch: str = "main",
        files: Mapping[str, bytes | str] | None = None,
        private: bool = False,
        message: str = "initial commit",
    ) -> Path:
        """A bare repository with one commit holding `files` (a README when none) on
        `default_branch`, which is also its HEAD (what a clone checks out)."""
        bare = self.repo_path(repo)
        git("init", "--bare", "--quiet", f"--initial-branch={default_branch}", str(bare))
        with tempfile.TemporaryDirectory() as scratch:
            work = Path(scratch)
            git("init", "--quiet", f"--initial-branch={default_branch}", cwd=work)
            for name, content in (files or {"README.md": f"# {repo}\n"}).items():
                target = work / name
                target.parent.mkdir(parents=True, exist_ok=True)
                data = content.encode() if isinstance(content, str) else content
                target.write_bytes(data)
            git("add", "-A", cwd=work)
            git("commit", "--quiet", "-m", message, cwd=work)
            git("push", "--quiet", str(bare), f"HEAD:refs/heads/{default_branch}", cwd=work)
        if private:
            self.make_private(repo)
        return bare

    def make_private(self, repo: str) -> None:
        """Fetching `repo` needs a credential too (answered 401 without one)."""
        with self._lock:
            self._private.add(repo)

    def is_private(self, repo: str) -> bool:
        with self._lock:
            return repo in self._private

    def decline_pushes(self, repo: str, message: str = "pushes are frozen") -> None:
        """A pre-receive hook that refuses every push; git reports `pre-receive hook declined`."""
        _write_hook(
            self.repo_path(repo) / "hooks" / "pre-receive",
            f"echo {_sh_quote('error: ' + message)} >&2\nexit 1\n",
        )

    def accept_pushes(self, repo: str) -> None:
        """Undo `decline_pushes`."""
        (self.repo_path(repo) / "hooks" / "pre-receive").unlink(missing_ok=True)

    def protect_branch(self, repo: str, branch: str) -> None:
        """Refuse any update of `branch`, as a forge's branch protection does.

        An `update` hook (run once per ref) declines that ref with GitHub's GH006 wording; git
        reports it as `(hook declined)`. Other branches still push.
        """
        hook = self.repo_path(repo) / "hooks" / "update"
        protected = self.repo_path(repo) / "protected-branches"
        with protected.open("a") as out:
            out.write(f"refs/heads/{branch}\n")
        _write_hook(
            hook,
            f'if grep -qxF "$1" {_sh_quote(str(protected))}; then\n'
            '    echo "error: GH006: Protected branch update failed for $1." >&2\n'
            "    exit 1\n"
            "fi\n"
            "exit 0\n",
        )

    def branch_sha(self, repo: str, branch: str) -> str | None:
        """The commit `branch` points at on the server, or None."""
        done = git(
            "--git-dir",
            str(self.repo_path(repo)),
            "rev-parse",
            "--verify",
            "--quiet",
            f"refs/heads/{branch}^{{commit}}",
            check=False,
        )
        return done.stdout.strip() or None

    def requests_for(self, repo: str, service: str | None = None) -> list[GitRequest]:
        with self._lock:
            return [
                r
                for r in self.requests
                if r.repo == repo and (service is None or r.service == service)
            ]

    # --- request handling ----------------------------------------------------------------------

    def _record(self, request: GitRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _check_auth(self, header: str | None) -> tuple[str | None, str | None]:
        """(user, access) for an Authorization header: access is "write", "read" or None."""
        if not header or not header.startswith("Basic "):
            return None, None
        try:
            decoded = base64.b64decode(header[len("Basic ") :].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None, None
        user, sep, password = decoded.partition(":")
        if not sep or not user:
            return None, None
        if password == self.token:
            return user, "write"
        if self.read_token is not None and password == self.read_token:
            return user, "read"
        return None, None


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _write_hook(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def _repo_and_service(path: str, query: str) -> tuple[str, str | None]:
    """`owner/name` and the smart-HTTP service of a request path (None for dumb paths)."""
    service = None
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key == "service" and value in (UPLOAD, RECEIVE):
            service = value
    if path.endswith(f"/{UPLOAD}"):
        service = UPLOAD
    elif path.endswith(f"/{RECEIVE}"):
        service = RECEIVE
    repo_path, sep, _ = path.partition(".git/")
    if not sep:
        repo_path = path.removesuffix(".git")
    return repo_path.strip("/"), service


def _handler_for(server: GitServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass  # the tests read `server.requests`, not a log

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            repo, service = _repo_and_service(parts.path, parts.query)
            user, access = server._check_auth(self.headers.get("Authorization"))
            body = self._read_body()
            bare = server.repo_path(repo)
            if ".." in Path(repo).parts or not repo:
                status = self._reply(404, b"Not Found\n")
            elif (service == RECEIVE or server.is_private(repo)) and access is None:
                status = self._reply(
                    401,
                    b"Authentication required\n",
                    [("WWW-Authenticate", f'Basic realm="{REALM}"')],
                )
            elif not bare.is_dir():
                status = self._reply(404, b"Repository not found\n")
            elif service == RECEIVE and access != "write":
                message = f"Permission to {repo}.git denied to {user}.\n"
                status = self._reply(403, message.encode())
            else:
                status = self._cgi(parts.path, parts.query, body, user if access else None)
            server._record(
                GitRequest(
                    method=self.command,
                    path=parts.path,
                    repo=repo,
                    service=service,
                    authenticated=access is not None,
                    user=user,
                    status=status,
                )
            )

        def _read_body(self) -> bytes:
            if self.command != "POST":
                return b""
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                return b"".join(self._chunks())
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _chunks(self) -> Iterator[bytes]:
            while True:
                size_line = self.rfile.readline().split(b";")[0].strip()
                size = int(size_line or b"0", 16)
                if size == 0:
                    # Trailers, if any, end with an empty line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                yield self.rfile.read(size)
                self.rfile.readline()  # the CRLF after each chunk

        def _reply(
            self, status: int, body: bytes, headers: list[tuple[str, str]] | None = None
        ) -> int:
            self.send_response(status)
            for name, value in headers or []:
                self.send_header(name, value)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return status

        def _cgi(self, path: str, query: str, body: bytes, user: str | None) -> int:
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "GIT_PROJECT_ROOT": str(server.root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_CONFIG_GLOBAL": os.devnull,
                "REQUEST_METHOD": self.command,
                "PATH_INFO": path,
                "QUERY_STRING": query,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                "REMOTE_USER": user or "",
                "REMOTE_ADDR": self.client_address[0],
            }
            git_binary = shutil.which("git") or "git"
            done = subprocess.run(
                [git_binary, "http-backend"],
                input=body,
                env=env,
                capture_output=True,
                timeout=120,
                check=False,
            )
            head, sep, payload = done.stdout.partition(b"\r\n\r\n")
            if not sep:
                head, sep, payload = done.stdout.partition(b"\n\n")
            status, headers = 200, []
            for line in head.decode("latin-1").splitlines():
                name, _, value = line.partition(":")
                if name.lower() == "status":
                    status = int(value.strip().split()[0])
                elif name and name.lower() != "content-length":
                    headers.append((name.strip(), value.strip()))
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return status

    return Handler
