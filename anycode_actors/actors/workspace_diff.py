"""What a session without a publisher changed: the workspace as a git repository from the start.

A session whose task names no repository the daemon can push to has no publisher, but `/diff`
still shows what the agent changed, and the patch is attached when the session ends with
changes. At the start (`begin`, before the agent runs) the sandbox records a starting point:
- with a clone in /workspace/repo (a repository named but no token for its forge), its HEAD;
- otherwise /workspace itself becomes a git repository (`git init`) whose first commit holds
  whatever is there; the outbox (files for the chat, sent on their own), the inbox (files the
  user sent, actors/session.py) and .anycode (the sandbox's own markers) are excluded
  (`.git/info/exclude`).
The starting point is the ref `refs/anycode/base`, so a restarted daemon finds it again. `diff`
compares it with the working tree as it is: every file the agent wrote, committed or not,
binary files as git binary patches, bytes exactly as written (CRLF kept). The agent's own index
is left alone: the comparison stages into a separate index file (GIT_INDEX_FILE).

Every git command runs with hooks and every configured helper off (`SANDBOX_GIT_CONFIG`): the
agent controls the repository's configuration.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

import trio

from anycode_actors.actors.commands import short_id
from anycode_actors.actors.publisher import Card, PublishError
from anycode_actors.git import DiffStat, SandboxCommand
from anycode_actors.git.repo import SANDBOX_GIT_CONFIG, parse_numstat
from anycode_actors.sandboxes.base import SandboxHandle, SandboxProvider

log = logging.getLogger(__name__)

WORKSPACE: Final = "/workspace"
BASE_REF: Final = "refs/anycode/base"
#: Folders of the workspace that are not the agent's work (see the module docstring).
EXCLUDED: Final = ("/.anycode/", "/outbox/", "/inbox/")
#: Seconds `begin` may take; the agent waits for it.
BEGIN_TIMEOUT: Final = 30.0
_BOT: Final = {
    "GIT_AUTHOR_NAME": "anycode",
    "GIT_AUTHOR_EMAIL": "anycode@localhost",
    "GIT_COMMITTER_NAME": "anycode",
    "GIT_COMMITTER_EMAIL": "anycode@localhost",
    "GIT_TERMINAL_PROMPT": "0",
}
NO_START: Final = "anycode: no starting point"
START_MESSAGE: Final = "anycode: the workspace at the start"


def _git() -> str:
    return "git " + " ".join(f"-c {setting}" for setting in SANDBOX_GIT_CONFIG)


def begin_command() -> SandboxCommand:
    """Record the starting point (see the module docstring); prints the folder it is in."""
    git = _git()
    exclude = "".join(f"{line}\\n" for line in EXCLUDED)
    script = (
        "set -e\n"
        "if [ -e repo/.git ]; then cd repo; else\n"
        f"  [ -e .git ] || {git} init --quiet .\n"
        f'  info="$({git} rev-parse --absolute-git-dir)/info"\n'
        '  mkdir -p "$info"\n'
        f"  printf '{exclude}' >> \"$info/exclude\"\n"
        f"  {git} add -A\n"
        f"  {git} commit --quiet --allow-empty --no-verify -m '{START_MESSAGE}'\n"
        "fi\n"
        f"{git} update-ref {BASE_REF} HEAD\n"
        "pwd\n"
    )
    return SandboxCommand(("sh", "-c", script), _BOT, WORKSPACE)


def diff_command(*flags: str) -> SandboxCommand:
    """`git diff --cached <flags> BASE_REF` of the working tree, staged into a separate index;
    exits 3 with NO_START on stderr when no starting point was recorded."""
    git = _git()
    script = (
        "set -e\n"
        "found=\n"
        "for d in repo .; do\n"
        f'  if [ -e "$d/.git" ] && {git} -C "$d" rev-parse -q --verify {BASE_REF} '
        '>/dev/null 2>&1; then cd "$d"; found=1; break; fi\n'
        "done\n"
        f"[ -n \"$found\" ] || {{ echo '{NO_START}' >&2; exit 3; }}\n"
        f'GIT_INDEX_FILE="$({git} rev-parse --absolute-git-dir)/anycode-index"\n'
        "export GIT_INDEX_FILE\n"
        f"{git} read-tree HEAD\n"
        f"{git} add -A\n"
        f'exec {git} diff --cached --no-color --no-ext-diff --no-textconv -M "$@" {BASE_REF}\n'
    )
    return SandboxCommand(("sh", "-c", script, "sh", *flags), _BOT, WORKSPACE)


@dataclass(frozen=True)
class _Output:
    data: bytes
    truncated: bool


class WorkspaceDiff:
    """`/diff` and the end-of-session patch of one session without a publisher."""

    def __init__(self, session_id: str, *, max_patch_bytes: int, within: float) -> None:
        self._session_id = session_id
        self._max_patch = max_patch_bytes
        self._within = within

    @property
    def patch_name(self) -> str:
        return f"anycode-{short_id(self._session_id)}.diff"

    async def begin(self, provider: SandboxProvider, handle: SandboxHandle) -> str:
        """Record the starting point; the folder it is in. PublishError if git fails."""
        out = await _run(provider, handle, begin_command(), BEGIN_TIMEOUT, 4096)
        return out.data.decode("utf-8", "replace").strip()

    async def stat(self, provider: SandboxProvider, handle: SandboxHandle) -> DiffStat:
        out = await _run(provider, handle, diff_command("--numstat", "-z"), self._within, None)
        return parse_numstat(out.data)

    async def diff(self, provider: SandboxProvider, handle: SandboxHandle) -> Card:
        """What /diff shows: the stat and the patch, or "No changes"."""
        stat = await self.stat(provider, handle)
        if stat.empty:
            return Card("No changes in the workspace yet.")
        return await self._card(provider, handle, _stat_text(stat))

    async def final(self, provider: SandboxProvider, handle: SandboxHandle) -> Card | None:
        """What the chat gets when the session ends: None without changes."""
        stat = await self.stat(provider, handle)
        if stat.empty:
            return None
        sid = short_id(self._session_id)
        return await self._card(provider, handle, f"Changes of session `{sid}`: {_stat_text(stat)}")

    async def _card(self, provider: SandboxProvider, handle: SandboxHandle, text: str) -> Card:
        out = await _run(provider, handle, diff_command("--binary"), self._within, self._max_patch)
        if out.truncated:
            kb = max(self._max_patch // 1024, 1)
            return Card(f"{text}\nThe patch is over {kb} KB (git.max_patch_kb); not attached.")
        return Card(text, out.data or None, self.patch_name if out.data else "")


def _stat_text(stat: DiffStat) -> str:
    files = len(stat.files)
    noun = "file" if files == 1 else "files"
    return f"{files} {noun} changed, +{stat.insertions} −{stat.deletions}"


async def _run(
    provider: SandboxProvider,
    handle: SandboxHandle,
    command: SandboxCommand,
    within: float,
    limit: int | None,
) -> _Output:
    """Run `command` in the sandbox; its stdout, cut (and the command stopped) past `limit`
    bytes. PublishError on a non-zero exit or after `within` seconds."""
    chunks: list[bytes] = []
    size = 0
    truncated = False
    with trio.move_on_after(within) as scope:
        process = await provider.exec(handle, command.argv, env=command.env, cwd=command.cwd)
        try:
            await process.close_stdin()
            while data := await process.receive_some(65536):
                chunks.append(data)
                size += len(data)
                if limit is not None and size > limit:
                    truncated = True
                    break
            code = 0 if truncated else await process.wait()
        finally:
            await process.aclose()
    if scope.cancelled_caught:
        raise PublishError(f"git in the sandbox did not finish within {within:g} s")
    if code != 0:
        detail = process.stderr_tail().strip().splitlines()
        if detail and detail[-1] == NO_START:
            raise PublishError("the workspace's starting point was not recorded")
        raise PublishError(
            f"git in the sandbox failed (exit {code})" + (f": {detail[-1]}" if detail else "")
        )
    return _Output(b"".join(chunks), truncated)


__all__ = ["BASE_REF", "EXCLUDED", "WorkspaceDiff", "begin_command", "diff_command"]
