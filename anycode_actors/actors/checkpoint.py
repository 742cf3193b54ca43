"""Checkpoints: what a session needs to carry on in a fresh sandbox when its own one is lost.

At the end of every turn the session actor takes one (`take_checkpoint`): a tar of the workspace
and of the agent's own session state under its home in the sandbox (Claude Code keeps each
session as `~/.claude/projects/<cwd with "/" as "-">/<session id>.jsonl`, Codex under
`~/.codex/sessions/`), read out through the provider's `exec`. The values the sandbox was given
as credentials (its sandbox-agent token, the injected agent environment) are blanked in it
before it leaves the daemon's memory, and `CheckpointStore` keeps it, gzipped, next to the
database with mode 0600.

When the sandbox dies (between turns, mid-turn, or while the daemon was down) the session
actor makes a new sandbox, writes the checkpoint back (`restore_checkpoint`), and reopens the
agent's session with ACP `session/load` (https://agentclientprotocol.com/protocol/session-setup
#loading-sessions): the agent reads its own state back and the next prompt carries the history.
`restore_impossible` says when that cannot work, in words for the chat.

A provider that cannot run a command (`SandboxProvider.can_exec` false: ECS) is read folder by
folder with `read_files` instead, and the same tar is made on the daemon's side; the restore
writes it back file by file with `write_file`. That path keeps regular files and their contents
only: symbolic links, fifos and empty folders are left out, every file comes back with mode 0644
and owned by whoever the provider writes as, and hard links come back as separate copies. The
agent's home is then not asked of the sandbox but taken as `SANDBOX_HOME`.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import tarfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final, Generic, Protocol, TypeVar

import trio

from anycode_actors.config import AgentConfig, AgentProtocol
from anycode_actors.errors import AnycodeError
from anycode_actors.sandboxes.base import (
    SandboxError,
    SandboxHandle,
    SandboxProvider,
    check_file_path,
    run_to_end,
)

log = logging.getLogger(__name__)

CHECKPOINTS_DIR: Final = "checkpoints"
"""The folder beside the database that holds the checkpoints."""
#: What the agents keep of their sessions, relative to the sandbox user's home.
AGENT_STATE: Final = (".claude/projects", ".codex/sessions")
#: The home of the sandbox's user `agent` (made by docker/Dockerfile.agent), for providers that
#: cannot ask the sandbox its $HOME.
SANDBOX_HOME: Final = "/home/agent"
#: Where the checkpoint is put in the new sandbox before it is unpacked (then removed).
RESTORE_PATH: Final = "/tmp/anycode-checkpoint.tar.gz"
#: The most a checkpoint or a restore may take before it counts as failed.
CHECKPOINT_TIMEOUT: Final = 120.0
_MB: Final = 1024 * 1024

# The workspace and each agent state folder that exists, as paths relative to "/", so the tar
# unpacks at the same places in a sandbox of the same image. Paths are the script's arguments,
# never part of its text.
TAR_SCRIPT: Final = (
    'set -- "${1#/}"; for d in ' + " ".join(AGENT_STATE) + "; do "
    '[ -d "$HOME/$d" ] && set -- "$@" "${HOME#/}/$d"; done; '
    'exec tar -C / --warning=no-file-changed -cf - "$@"'
)
UNTAR_SCRIPT: Final = 'tar -C / -xzf "$1" && rm -f -- "$1"'


class CheckpointTooBig(AnycodeError):
    """The workspace and agent state are over `session.checkpoint_max_mb`."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What is known of a stored checkpoint (its `.json` beside the `.tar.gz`)."""

    session_id: str
    turn: int
    """The number of the turn whose end it was taken at (1 is the task's own prompt)."""
    agent_session_id: str
    last_seq: int
    """The last event stored when it was taken."""
    size: int
    """Bytes of the stored, compressed checkpoint."""
    taken_at: float
    """Unix time."""


class CheckpointStore:
    """The checkpoints of every session, one pair of files each, in a private folder.

    `root` is made with mode 0700; every file is written with 0600 beside its final name and
    renamed over it, so a crash never leaves half a checkpoint under the real name."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def beside(cls, database: Path) -> CheckpointStore:
        return cls(database.parent / CHECKPOINTS_DIR)

    def _paths(self, session_id: str) -> tuple[Path, Path]:
        if not session_id or "/" in session_id or session_id.startswith("."):
            raise ValueError(f"not a session id: {session_id!r}")
        return self.root / f"{session_id}.tar.gz", self.root / f"{session_id}.json"

    async def save(self, info: CheckpointInfo, data: bytes) -> None:
        await trio.to_thread.run_sync(self._save, info, data)

    def _save(self, info: CheckpointInfo, data: bytes) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        archive, meta = self._paths(info.session_id)
        _write_private(archive, data)
        _write_private(meta, json.dumps(asdict(info)).encode())

    def info(self, session_id: str) -> CheckpointInfo | None:
        """The stored checkpoint's description (a small file, read in place), or None."""
        archive, meta = self._paths(session_id)
        try:
            fields = json.loads(meta.read_text())
            if not archive.is_file():
                return None
            return CheckpointInfo(**fields)
        except (OSError, ValueError, TypeError):
            return None

    async def data(self, session_id: str) -> bytes:
        archive, _ = self._paths(session_id)
        return await trio.to_thread.run_sync(archive.read_bytes)

    async def remove(self, session_id: str) -> None:
        await trio.to_thread.run_sync(self._remove, session_id)

    def _remove(self, session_id: str) -> None:
        for path in self._paths(session_id):
            path.unlink(missing_ok=True)

    def session_ids(self) -> list[str]:
        """The sessions that have a checkpoint (or a part of one) here."""
        if not self.root.is_dir():
            return []
        return sorted(
            {p.name.split(".", 1)[0] for p in self.root.iterdir() if p.suffix in (".gz", ".json")}
        )


def _write_private(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.part")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb", closefd=False) as file:
            file.write(data)
            file.flush()
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, path)


def blank(data: bytes, secrets: Iterable[str]) -> bytes:
    """`data` with every occurrence of each secret replaced by as many "*": the length stays,
    so a tar's members keep their sizes and offsets."""
    for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        raw = secret.encode()
        data = data.replace(raw, b"*" * len(raw))
    return data


async def take_checkpoint(
    provider: SandboxProvider,
    handle: SandboxHandle,
    *,
    max_bytes: int,
    secrets: Sequence[str],
    home: str = SANDBOX_HOME,
) -> bytes:
    """The workspace and the agent's session state of `handle`'s sandbox, gzipped, with the
    `secrets` blanked. CheckpointTooBig past `max_bytes` (counted before compression);
    SandboxError when the sandbox cannot give it. Without `exec` the files are read with
    `read_files`, the agent's state under `home` (see the module docstring for what that leaves
    out)."""
    if not provider.can_exec:
        tar = await _tar_from_reads(provider, handle, max_bytes, home)
        return await trio.to_thread.run_sync(_gzip, blank(tar, secrets))
    process = await provider.exec(handle, ["sh", "-c", TAR_SCRIPT, "sh", handle.workdir], cwd="/")
    chunks: list[bytes] = []
    size = 0
    try:
        await process.close_stdin()
        while chunk := await process.receive_some():
            size += len(chunk)
            if size > max_bytes:
                raise _too_big(max_bytes)
            chunks.append(chunk)
        code = await process.wait()
    finally:
        await process.aclose()
    if code not in (0, 1):  # GNU tar: 1 is "a file changed while it was read"
        detail = process.stderr_tail().strip().splitlines()
        raise SandboxError(
            f"no checkpoint of sandbox {handle.id[:12]} (tar exit {code})"
            + (f": {detail[-1][:300]}" if detail else "")
        )
    tar = blank(b"".join(chunks), secrets)
    return await trio.to_thread.run_sync(_gzip, tar)


def _too_big(max_bytes: int) -> CheckpointTooBig:
    return CheckpointTooBig(
        f"the workspace and the agent's state are over {max_bytes // _MB} MB "
        "(session.checkpoint_max_mb)"
    )


def checkpoint_folders(handle: SandboxHandle, home: str = SANDBOX_HOME) -> list[str]:
    """The sandbox folders a checkpoint holds, when it is read without `exec`."""
    return [handle.workdir, *(f"{home}/{folder}" for folder in AGENT_STATE)]


async def _tar_from_reads(
    provider: SandboxProvider, handle: SandboxHandle, max_bytes: int, home: str
) -> bytes:
    """The tar `TAR_SCRIPT` would make, from `read_files` of each checkpointed folder: members
    named relative to "/", regular files only. `max_bytes` caps the files' contents together."""
    members: list[tuple[str, bytes]] = []
    left = max_bytes
    for folder in checkpoint_folders(handle, home):
        listing = await provider.read_files(handle, folder, max_bytes=left)
        if listing.too_big:
            raise _too_big(max_bytes)
        for file in listing.files:
            left -= file.size
            if left < 0:
                raise _too_big(max_bytes)
            members.append((f"{folder.strip('/')}/{file.name}", file.data))
    return await trio.to_thread.run_sync(_tar, members)


def _tar(members: Sequence[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            member = tarfile.TarInfo(name)
            member.size = len(data)
            member.mode = 0o644
            member.mtime = int(now)
            tar.addfile(member, io.BytesIO(data))
    return out.getvalue()


def _regular_files(data: bytes) -> list[tuple[str, bytes]]:
    """The regular files of the checkpoint `data`, as (absolute path, contents); its other
    members (folders, links) are left out."""
    files: list[tuple[str, bytes]] = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar:
            if not member.isfile():
                continue
            source = tar.extractfile(member)
            if source is None:
                continue
            files.append(("/" + member.name.lstrip("/"), source.read()))
    return files


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=5)


def checkpoint_names(data: bytes) -> list[str]:
    """The members of a stored checkpoint (for tests and the admin's eyes)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return tar.getnames()


async def restore_checkpoint(provider: SandboxProvider, handle: SandboxHandle, data: bytes) -> None:
    """Unpack the checkpoint `data` at its places in the (new) sandbox `handle`. Without `exec`
    each regular file is written with `write_file` (see the module docstring)."""
    if not provider.can_exec:
        try:
            files = await trio.to_thread.run_sync(_regular_files, data)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise SandboxError(f"the checkpoint cannot be read: {exc}") from None
        for path, _ in files:
            check_file_path(path)
        for path, contents in files:
            await provider.write_file(handle, path, contents)
        return
    await provider.write_file(handle, RESTORE_PATH, data)
    await run_to_end(
        provider,
        handle,
        ["sh", "-c", UNTAR_SCRIPT, "sh", RESTORE_PATH],
        failure="the checkpoint could not be unpacked",
    )


def restore_impossible(protocol: AgentProtocol, agent: AgentConfig) -> str:
    """Why a session of `agent` over `protocol` cannot be carried into a new sandbox, or "".
    Whether the agent itself can load a session is learnt when it is opened (`loadSession` in
    its ACP capabilities)."""
    if protocol == "acpx":
        return "acpx sessions cannot be reopened in a new sandbox"
    del agent
    return ""


class Continuity:
    """One session's checkpoints: taking them at the end of each turn, and putting the last one
    into a new sandbox. Failures to take one are logged and leave the previous one in place."""

    def __init__(
        self,
        session_id: str,
        store: CheckpointStore | None,
        *,
        max_mb: int,
        provider: SandboxProvider,
    ) -> None:
        self.session_id = session_id
        self.store = store
        self.max_bytes = max_mb * _MB
        self.provider = provider
        self.turns = 0
        """Turns ended so far (a recovered session learns it from its checkpoint)."""
        self.problem = "" if store is not None else "checkpoints are off"
        """Why there is no usable checkpoint, when the last one could not be taken."""
        self.restores = 0

    def load(self) -> None:
        """Carry the turn count of a session that ran before a restart."""
        if self.store is not None:
            info = self.store.info(self.session_id)
            if info is not None:
                self.turns = info.turn

    async def take(
        self,
        handle: SandboxHandle,
        *,
        agent_session_id: str,
        last_seq: int,
        secrets: Sequence[str],
    ) -> CheckpointInfo | None:
        """Checkpoint the end of the turn that just ended (`turns` is counted up first)."""
        self.turns += 1
        if self.store is None:
            return None
        try:
            with trio.fail_after(CHECKPOINT_TIMEOUT):
                data = await take_checkpoint(
                    self.provider, handle, max_bytes=self.max_bytes, secrets=secrets
                )
                info = CheckpointInfo(
                    self.session_id, self.turns, agent_session_id, last_seq, len(data), time.time()
                )
                await self.store.save(info, data)
        except CheckpointTooBig as exc:
            # The older checkpoint would bring back a workspace that no longer matches the
            # agent's memory of it: none is better.
            await self.store.remove(self.session_id)
            self.problem = str(exc)
            return None
        except (AnycodeError, OSError, trio.TooSlowError) as exc:
            log.warning(
                "session %s: no checkpoint of turn %d: %s", self.session_id[:8], self.turns, exc
            )
            return None
        self.problem = ""
        return info

    async def last(self) -> tuple[CheckpointInfo, bytes] | str:
        """The checkpoint to restore and its data, or why there is none."""
        if self.store is None:
            return self.problem
        info = self.store.info(self.session_id)
        if info is None:
            return self.problem or "no turn had ended yet, so there was no checkpoint"
        try:
            return info, await self.store.data(self.session_id)
        except OSError as exc:
            return f"its checkpoint could not be read ({exc})"

    async def put_back(self, handle: SandboxHandle, data: bytes) -> None:
        with trio.fail_after(CHECKPOINT_TIMEOUT):
            await restore_checkpoint(self.provider, handle, data)
        self.restores += 1


_Report = TypeVar("_Report", contravariant=True)
_Message = TypeVar("_Message")


class _Sink(Protocol[_Report]):
    async def send(self, report: _Report, /) -> None: ...


class RetiredSink(Generic[_Message]):
    """Passes a stream's reports on until `retire`, then drops them: what a lost sandbox's
    stream still says once the session has moved to a new one must not reach it."""

    def __init__(self, sink: _Sink[_Message]) -> None:
        self._sink = sink
        self.retired = False

    def retire(self) -> None:
        self.retired = True

    async def send(self, report: _Message, /) -> None:
        if not self.retired:
            await self._sink.send(report)


__all__ = [
    "AGENT_STATE",
    "CHECKPOINTS_DIR",
    "CHECKPOINT_TIMEOUT",
    "SANDBOX_HOME",
    "CheckpointInfo",
    "CheckpointStore",
    "CheckpointTooBig",
    "Continuity",
    "RetiredSink",
    "blank",
    "checkpoint_folders",
    "checkpoint_names",
    "restore_checkpoint",
    "restore_impossible",
    "take_checkpoint",
]
