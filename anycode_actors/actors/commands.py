"""What the chat actor reads out of a command: the agent, the prompt, the repository.

Pure functions, so every rule is tested without a chat or a sandbox.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from anycode_actors.config import Config

HELP_TEXT: Final = (
    "Anycode Bot - Run coding agents from chat\n\n"
    "Commands:\n"
    "/task [agent] <prompt> - Start a coding task\n"
    "/status - List active sessions\n"
    "/cancel [id] - Cancel a session\n"
    "/diff [id] - Show a session's changes and attach the patch\n"
    "/pr [id] - Push a session's changes and open its pull request\n"
    "/agents - List available agents\n"
    "/help - Show this message\n\n"
    "Plain text messages are forwarded to your most recent active session.\n"
    "Button presses answer agent questions/permissions."
)
TASK_USAGE: Final = "Usage: /task [agent] <prompt>"
UNKNOWN_COMMAND: Final = "Unknown command. Try /help."
STATELESS: Final = frozenset({"help", "agents"})
"""Commands whose answer depends on nothing but the configuration (and unknown commands)."""
KNOWN: Final = frozenset({"task", "start", "status", "cancel", "diff", "pr", *STATELESS})


def is_stateless(name: str) -> bool:
    """Whether the answer to `/name` needs no conversation state: /help, /agents, a typo."""
    name = name.lower()
    return name in STATELESS or name not in KNOWN


def stateless_answer(name: str, config: Config) -> str:
    """The answer to a stateless command (see `is_stateless`)."""
    name = name.lower()
    if name == "help":
        return HELP_TEXT
    if name == "agents":
        default = config.agents.default_agent
        protocol = config.sandbox.protocol
        lines = ["Available agents:"]
        lines += [
            f"- {agent}" + (" (default)" if agent == default else "")
            for agent in config.known_agents()
            if config.agent(agent).supports(protocol)
        ]
        return "\n".join(lines)
    return UNKNOWN_COMMAND


@dataclass(frozen=True)
class TaskRequest:
    agent: str
    prompt: str
    repo: str | None


class BadTask(ValueError):
    """The /task arguments cannot start a session; the message is the reply to the user."""


def parse_task(args: str, known_agents: Sequence[str], default_agent: str) -> TaskRequest:
    """`/task [agent] <prompt>`: the first word is the agent only if it names a known one.

    An unknown first word is part of the prompt and the default agent runs, so
    `/task fix the bug` never fails on "fix" not being an agent.
    """
    text = args.strip()
    if not text:
        raise BadTask(TASK_USAGE)
    first, _, rest = text.partition(" ")
    if first.lower() in (name.lower() for name in known_agents):
        agent = next(name for name in known_agents if name.lower() == first.lower())
        prompt = rest.strip()
        if not prompt:
            raise BadTask("Please provide a prompt after the agent name.")
    else:
        agent, prompt = default_agent, text
    return TaskRequest(agent=agent, prompt=prompt, repo=detect_repo(prompt))


# A repository's path after the host, and what may follow it in a prompt.
_URL_PATH: Final = (
    r"(?P<path>[A-Za-z0-9][A-Za-z0-9_.-]*(?:/[A-Za-z0-9_.-]+)+?)"
    r"(?:\.git)?(?=$|[\s)\]>,;:!?'\"]|\.(?:\s|$)|/(?:-|tree|blob|issues|pull|merge_requests|commit)\b|/?$|/\s)"
)
_URL: Final = re.compile(r"https?://(?:www\.)?(?P<host>github\.com|gitlab\.com)/" + _URL_PATH)
GITHUB: Final = "https://github.com"
# GitHub owner names: letters, digits and single hyphens, at most 39 characters.
_SHORTHAND: Final = re.compile(
    r"(?<![\w./~@:-])(?P<owner>[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38})"
    r"/(?P<repo>[A-Za-z0-9_.-]{1,100})(?![\w/-])"
)
# Words before a shorthand that make it clearly a repository ("in acme/web").
_CUES: Final = frozenset(
    {"in", "on", "for", "from", "of", "at", "to", "repo", "repository", "project", "clone"}
)
# Words that are never a repository's owner: path components and the first half of English
# pairs ("src/main", "and/or", "client/server").
_NOT_OWNERS: Final = frozenset(
    {
        "and", "or", "either", "input", "read", "yes", "true", "on", "he", "his", "him",
        "client", "src", "lib", "libs", "test", "tests", "spec", "specs", "docs", "doc", "app",
        "apps", "bin", "etc", "usr", "home", "var", "tmp", "dev", "opt", "pkg", "cmd",
        "internal", "config", "scripts", "assets", "static", "public", "build", "dist",
        "target", "node_modules", "vendor", "include", "examples", "example", "tools", "utils",
        "components", "pages", "api", "before", "left", "up", "in", "start", "open", "get",
        "push", "am", "w", "with", "this", "these", "http", "https", "tcp",
    }
)  # fmt: skip
# Words that are never a repository's name: the second half of English pairs ("and/or").
_NOT_REPOS: Final = frozenset(
    {
        "or", "and", "no", "false", "off", "she", "her", "hers", "output", "write", "after",
        "right", "down", "out", "stop", "close", "set", "pull", "pm", "o", "without", "that",
        "those", "https", "udp", "nor",
    }
)  # fmt: skip
_FILE_SUFFIX: Final = re.compile(
    r"\.(?:rs|py|js|jsx|ts|tsx|go|java|kt|c|h|cc|cpp|hpp|cs|rb|php|swift|m|scala|sh|bash|"
    r"zsh|md|rst|txt|json|toml|yaml|yml|xml|html|css|scss|sql|lock|cfg|ini|conf|env|log|"
    r"csv|png|jpg|jpeg|gif|svg|pdf|zip|tar|gz|mod|sum|vue|svelte|dart|ex|exs|erl|hs|ml|"
    r"lua|pl|r|jl|proto|gradle|tf|dockerfile)$",
    re.IGNORECASE,
)


def detect_repo(
    prompt: str, forges: Sequence[tuple[str, str]] = (), shorthand_base: str = GITHUB
) -> str | None:
    """The repository a prompt names, as an https URL, or None.

    GitHub and GitLab URLs win. Otherwise an `owner/repo` shorthand becomes a GitHub URL, but
    only when it cannot be a path, a file, a fraction or an English pair: "src/main.rs",
    "and/or" and "https://x.com/a/b" are not repositories.

    `forges` adds self-hosted servers as (base URL, "github" | "gitlab") pairs, checked first,
    the longest base first (a server under a path of another's host is the more specific): a
    GitHub Enterprise URL keeps `owner/repo`, a GitLab one every group. A shorthand names a
    repository on `shorthand_base` (the configured GitHub).
    """
    for base, kind in sorted(forges, key=lambda forge: len(forge[0].rstrip("/")), reverse=True):
        base = base.rstrip("/")
        found = re.search(re.escape(base) + "/" + _URL_PATH, prompt, re.IGNORECASE)
        if found:
            path = found.group("path").removesuffix(".git")
            if kind == "github":
                path = "/".join(path.split("/")[:2])
            return f"{base}/{path}"
    url = _URL.search(prompt)
    if url:
        path = url.group("path").removesuffix(".git")
        if url.group("host") == "github.com":
            path = "/".join(path.split("/")[:2])
        return f"https://{url.group('host')}/{path}"
    candidates = [m for m in _SHORTHAND.finditer(prompt) if _plausible(m, prompt)]
    if not candidates:
        return None
    cued = [m for m in candidates if _preceding_word(prompt, m.start()) in _CUES]
    match = (cued or candidates)[0]
    repo = match.group("repo").removesuffix(".git")
    return f"{shorthand_base.rstrip('/')}/{match.group('owner')}/{repo}"


def _plausible(match: re.Match[str], prompt: str) -> bool:
    owner, repo = match.group("owner"), match.group("repo").rstrip(".")
    if len(owner) < 2 or len(repo) < 2 or repo.startswith("."):
        return False
    if owner.lower() in _NOT_OWNERS or repo.lower() in _NOT_REPOS:
        return False
    if owner.isdigit() or repo.isdigit():  # 1/2, 24/7, dates
        return False
    if _FILE_SUFFIX.search(repo):
        return False
    # Part of a URL on another host: "https://x.com/a/b" must not become github.com/com/a.
    before = prompt[: match.start()]
    return not re.search(r"https?://\S*$", before)


def _preceding_word(text: str, index: int) -> str:
    words = text[:index].split()
    return words[-1].lower().strip(",;:") if words else ""


def short_id(session_id: str) -> str:
    """The id users see and type: the first 8 characters."""
    return session_id[:8]
