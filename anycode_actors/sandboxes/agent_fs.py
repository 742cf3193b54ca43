"""Reading a folder out of a sandbox through sandbox-agent's filesystem API.

For providers that have no other way into a sandbox: ECS has neither exec with piped output nor
an archive API, but every ECS sandbox runs sandbox-agent, and sandbox-agent 0.4.2 serves its
file system under /v1/fs (routes found in the 0.4.2 binary and its sources, shapes probed
against the running server):

    GET /v1/fs/entries?path=DIR  [{"name", "path", "entryType": "file" | "directory", "size",
                                   "modified"}], one per entry, from the entry's own metadata
                                   (lstat): a symbolic link is a "file" whose size and modified
                                   time are the link's own
    GET /v1/fs/stat?path=P       {"path", "entryType", "size", "modified"}, following links
    GET /v1/fs/file?path=P       the bytes (application/octet-stream); the server reads the whole
                                 file into memory first
    PUT /v1/fs/file?path=P       writes the body as the file, making missing folders:
                                 {"path", "bytesWritten"} (https://sandboxagent.dev/docs/file-system)
    errors                       problem+json: 400 invalid_request for a missing path ("path not
                                 found: ...") and for the wrong kind of entry ("path is not a
                                 directory", "path is not a file", which fifos, sockets and
                                 devices also get); 502 stream_error for other I/O errors
                                 (permission denied); 401 token_invalid without the token

There is no lstat route, so symbolic links are recognised by comparing the listing (the link's
own type, size and nanosecond mtime) with `stat` of the same path (its target's): entries that
differ are skipped, and so is a folder whose listing calls it a file (a link to a folder). A link
made to match its target's size and mtime exactly would be read; it can only lead to a file of
the same sandbox, which the agent could as well have copied into the folder, so it crosses no
boundary (unlike a link on the local provider, which would lead onto the daemon's machine).

Sizes are checked (`stat`) before a file is asked for, so a file over `max_bytes` is never read,
not even into the sandbox's memory; a file that grows past `max_bytes` while it is sent is cut
off and reported as too big.

Nothing in these answers tells hard links apart (no inode, no link count: the fields above are
all there is, https://sandboxagent.dev/docs/file-system), so files read with identical bytes are
named in `links` as one file: a hard link is always among them, and a copy sent twice would add
nothing. Files over `max_bytes` are never read, so their links cannot be told and each is listed.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass
from typing import Any, Final

import httpx

from anycode_actors._tls import shared_ssl_context
from anycode_actors.sandboxes.base import (
    OutboxListing,
    SandboxError,
    SandboxFile,
    check_file_path,
    hard_links,
)

__all__ = ["FS_TIMEOUT", "read_files_via_sandbox_agent", "write_file_via_sandbox_agent"]

#: Seconds any one request may take (connect, or between two chunks of an answer).
FS_TIMEOUT: Final = 30.0
_DETAIL_LIMIT: Final = 300


@dataclass(frozen=True)
class _Entry:
    name: str
    directory: bool
    size: int
    modified: str | None


async def read_files_via_sandbox_agent(
    endpoint: str, token: str, path: str, max_bytes: int, *, request_timeout: float = FS_TIMEOUT
) -> OutboxListing:
    """Every regular file under the folder `path` of the sandbox whose sandbox-agent listens at
    `endpoint` (with bearer `token`); see `SandboxProvider.read_files` for the contract.

    `path` is an absolute path inside the sandbox. Raises SandboxError when sandbox-agent cannot
    be reached, refuses the token, or fails to read an entry for another reason than its absence
    (a permission error, say); the token never appears in any message.
    """
    folder = _absolute_folder(path)
    listing: list[SandboxFile] = []
    too_big: list[tuple[str, int]] = []
    async with _client(endpoint, token, request_timeout) as client:
        api = _FsApi(client, endpoint)
        parent, name = posixpath.split(folder)
        siblings = await api.entries(parent)
        # Missing, not a folder, or a link to one: nothing to read.
        if siblings is None or not any(e.name == name and e.directory for e in siblings):
            return OutboxListing()
        pending = [(folder, "")]
        while pending:
            directory, prefix = pending.pop()
            entries = await api.entries(directory)
            for entry in entries or ():
                full = posixpath.join(directory, entry.name)
                relative = prefix + entry.name
                if entry.directory:
                    pending.append((full, relative + "/"))
                    continue
                target = await api.stat(full)
                if target is None or target != entry:
                    continue  # gone since the listing, or a symbolic link
                if target.size > max_bytes:
                    too_big.append((relative, target.size))
                    continue
                data = await api.read(full, max_bytes)
                if data is None:
                    continue  # not a regular file (fifo, socket, device), or gone
                if len(data) > max_bytes:
                    too_big.append((relative, len(data)))
                    continue
                listing.append(SandboxFile(relative, data))
    listing.sort(key=lambda file: file.name)
    too_big.sort()
    # By content: the API cannot say which names are one file (see the module docstring).
    identities = {file.name: hashlib.sha256(file.data).digest() for file in listing}
    return OutboxListing(tuple(listing), tuple(too_big), hard_links(identities))


async def write_file_via_sandbox_agent(
    endpoint: str, token: str, path: str, data: bytes, *, request_timeout: float = FS_TIMEOUT
) -> None:
    """Write `data` as the file `path` of the sandbox whose sandbox-agent listens at `endpoint`;
    see `SandboxProvider.write_file`. sandbox-agent writes as its own user, the agent's."""
    check_file_path(path)
    async with _client(endpoint, token, request_timeout) as client:
        await _FsApi(client, endpoint).write(path, data)


def _client(endpoint: str, token: str, timeout: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=endpoint.rstrip("/"),
        headers={"Authorization": f"Bearer {token}"},
        timeout=timeout,
        trust_env=False,
        verify=shared_ssl_context(trust_env=False),
    )


def _absolute_folder(path: str) -> str:
    folder = posixpath.normpath(path)
    if not path.startswith("/") or folder == "/" or ".." in path.split("/"):
        raise SandboxError(f"{path!r} is not an absolute folder path inside the sandbox")
    return folder


class _FsApi:
    """The /v1/fs routes; reading gives None for the 400 answers (missing path, wrong kind of
    entry)."""

    def __init__(self, client: httpx.AsyncClient, endpoint: str) -> None:
        self._client = client
        self._endpoint = endpoint

    async def entries(self, directory: str) -> list[_Entry] | None:
        answer = await self._get("/v1/fs/entries", directory)
        if answer is None:
            return None
        rows = self._json(answer, directory)
        if not isinstance(rows, list):
            raise self._unexpected(directory)
        return [self._entry(row, directory) for row in rows]

    async def stat(self, path: str) -> _Entry | None:
        answer = await self._get("/v1/fs/stat", path)
        if answer is None:
            return None
        row = self._json(answer, path)
        if not isinstance(row, dict):
            raise self._unexpected(path)
        return self._entry({**row, "name": posixpath.basename(path)}, path)

    async def read(self, path: str, max_bytes: int) -> bytes | None:
        """The file's bytes, at most `max_bytes` + 1 of them (more means it grew too big)."""
        try:
            async with self._client.stream("GET", "/v1/fs/file", params={"path": path}) as answer:
                if answer.status_code == 400:
                    return None
                if answer.status_code != 200:
                    await answer.aread()
                    raise self._failed(answer, path)
                data = bytearray()
                async for chunk in answer.aiter_bytes():
                    data += chunk
                    if len(data) > max_bytes:
                        break
                return bytes(data[: max_bytes + 1])
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None

    async def write(self, path: str, data: bytes) -> None:
        try:
            answer = await self._client.put("/v1/fs/file", params={"path": path}, content=data)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc, doing="write") from None
        if answer.status_code != 200:
            raise self._failed(answer, path, doing="write")
        written = self._json(answer, path)
        if not isinstance(written, dict) or written.get("bytesWritten") != len(data):
            raise self._unexpected(path)

    async def _get(self, route: str, path: str) -> httpx.Response | None:
        try:
            answer = await self._client.get(route, params={"path": path})
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if answer.status_code == 400:
            return None
        if answer.status_code != 200:
            raise self._failed(answer, path)
        return answer

    def _json(self, answer: httpx.Response, path: str) -> Any:
        try:
            return answer.json()
        except ValueError:
            raise self._unexpected(path) from None

    def _entry(self, row: Any, path: str) -> _Entry:
        try:
            return _Entry(
                name=str(row["name"]),
                directory=row["entryType"] == "directory",
                size=int(row["size"]),
                modified=None if row.get("modified") is None else str(row["modified"]),
            )
        except (KeyError, TypeError, ValueError):
            raise self._unexpected(path) from None

    def _failed(self, answer: httpx.Response, path: str, *, doing: str = "read") -> SandboxError:
        if answer.status_code == 401:
            return SandboxError(f"sandbox-agent at {self._endpoint} refused the sandbox's token")
        detail = ""
        try:
            problem = answer.json()
        except ValueError:
            problem = None
        if isinstance(problem, dict):
            detail = str(problem.get("detail") or problem.get("title") or "")
        return SandboxError(
            f"sandbox-agent could not {doing} {path}: HTTP {answer.status_code}"
            + (f": {detail[:_DETAIL_LIMIT]}" if detail else "")
        )

    def _unexpected(self, path: str) -> SandboxError:
        return SandboxError(
            f"sandbox-agent at {self._endpoint} answered about {path} in an unexpected shape "
            "(is it sandbox-agent 0.4?)"
        )

    def _unreachable(self, exc: httpx.HTTPError, *, doing: str = "read") -> SandboxError:
        # httpx's messages name the URL and the error, never the request headers.
        return SandboxError(
            f"cannot {doing} files through sandbox-agent at {self._endpoint}: "
            f"{type(exc).__name__}: {str(exc)[:_DETAIL_LIMIT]}"
        )
