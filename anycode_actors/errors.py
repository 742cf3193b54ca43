"""The exceptions anycode-actors raises on purpose, drawn as one tree (as httpx does).

```
AnycodeError                 base of every error this package raises deliberately
├── ConfigError              config.toml or the environment is invalid; carries every problem
├── SandboxError             a sandbox could not be created, reached or inspected; the message is
│                            safe to show a user (no credentials). Defined in sandboxes/base.py
├── StoreError               the SQLite store refused (closed, schema too new, a forbidden
│                            status change, unknown ids); the tree is in store/__init__.py
├── ChatError                a chat platform refused a call; `code` is its own error code
│   ├── RateLimited          429: nothing may be sent for `retry_after` seconds
│   ├── ChatUnavailable      the platform could not be reached (retry with backoff)
│   ├── MessageGone          the message to edit or delete no longer exists
│   └── NotModified          an edit that changes nothing; it counts as done
│                            (defined in chat/base.py)
├── AdminError               the admin socket cannot serve (actors/admin.py)
├── GitError                 a daemon-side git operation failed; the message is for the user
│   │                        and never holds a credential (anycode_actors/git/repo.py)
│   ├── GitUnavailable       git missing, the server unreachable, or a command timed out
│   ├── RepoNotFound         no such repository, or the token cannot see it
│   ├── AuthFailed           the credential was missing or refused
│   ├── PermissionDenied     the credential may read but not push
│   ├── PushRejected         protected branch, non-fast-forward, hook declined (git's reason)
│   ├── BundleInvalid        the sandbox's bundle cannot be imported
│   └── GitCommandFailed     any other git failure
└── AgentError               talking to a coding agent failed (anycode_actors.agents)
    ├── AgentNotReadyError   sandbox-agent did not answer /v1/health within the bound
    ├── AgentAuthError       sandbox-agent refused the token (HTTP 401/403)
    ├── AgentClosedError     the connection to the agent ended: process exited, event stream
    │                        lost after its retries, server gone; carries the stderr tail
    ├── AgentRequestError    the agent answered a request with a JSON-RPC error
    ├── TurnInProgressError  a prompt was sent while the session's turn is still running
    └── PermissionAnswerError  a permission answer that cannot be given: unknown or already
                             answered request, an option the agent did not offer, or acpx
                             answering by its own policy
```

Catch `AnycodeError` to handle anything the daemon reports on purpose; anything else is a bug.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class AnycodeError(Exception):
    """Base class of the errors anycode-actors raises deliberately."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with the configuration: where, what, and how to fix it.

    `path` is the dotted key path as written in config.toml (`slack.app_token`,
    `agents.credentials.codex.env.OPENAI_API_KEY`, `ecs.subnets[0]`), or a file position for
    syntax errors. Messages never contain secret values.
    """

    path: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        return f"{text} (fix: {self.fix})" if self.fix else text


class ConfigError(AnycodeError):
    """The configuration is invalid. `problems` lists all of them, not just the first."""

    def __init__(self, problems: Iterable[ConfigProblem], source: str = "config") -> None:
        self.problems: tuple[ConfigProblem, ...] = tuple(problems)
        self.source = source
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        lines = [f"{source} has {count} {noun}:"]
        lines.extend(f"  - {problem}" for problem in self.problems)
        super().__init__("\n".join(lines))


class AgentError(AnycodeError):
    """Talking to a coding agent failed. Messages never contain tokens or credentials."""


class AgentNotReadyError(AgentError):
    """sandbox-agent did not become healthy within the time allowed (dead or never started)."""


class AgentAuthError(AgentError):
    """sandbox-agent refused the token. Retrying with the same token cannot help."""


class AgentClosedError(AgentError):
    """The connection to the agent ended; `detail` holds what is known (exit code, stderr tail)."""

    def __init__(self, message: str, detail: str = "", *, connection_lost: bool = False) -> None:
        self.reason = message
        self.detail = detail
        self.connection_lost = connection_lost
        """True when the agent may still be running but we lost the way to it (the event stream
        failed past its retries); False when the agent itself is gone or we closed."""
        super().__init__(f"{message}: {detail}" if detail else message)

    def copy(self) -> AgentClosedError:
        """A fresh instance, for raising the same failure in several tasks."""
        return AgentClosedError(self.reason, self.detail, connection_lost=self.connection_lost)


class AgentRequestError(AgentError):
    """The agent answered a JSON-RPC request with an error object."""

    def __init__(self, method: str, code: int, message: str, data: object = None) -> None:
        self.method = method
        self.code = code
        self.rpc_message = message
        self.data = data
        text = f"{method} failed: {message} (JSON-RPC error {code})"
        details = _error_details(data)
        super().__init__(f"{text}: {details}" if details else text)


class TurnInProgressError(AgentError):
    """A prompt was sent while the session's previous turn is still running.

    The protocol layer does not queue prompts: the session actor decides whether to queue a
    follow-up, tell the user to wait, or cancel the running turn first.
    """


class PermissionAnswerError(AgentError):
    """A permission answer that cannot be given (unknown request, unknown option, acpx policy)."""


def _error_details(data: object) -> str:
    # sandbox-agent puts the adapter's stderr and a description into `data`; show those, briefly.
    if isinstance(data, dict):
        parts = [str(data[key]) for key in ("details", "agentStderr") if data.get(key)]
        return "; ".join(parts)[:2000]
    return ""
