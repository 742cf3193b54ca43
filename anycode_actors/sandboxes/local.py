"""The local provider: agents as plain subprocesses in a per-session folder. NOT a sandbox.

For development and the demo only. An agent started here runs as the daemon's user, with that
user's files, keys and network, so the provider refuses to exist unless the configuration says
`[local] allow_unsandboxed = true` (and config validation refuses `provider = "local"` without it).

Layout, under `<local.workdir>/<daemon id>/<session>-<random>/` (the sandbox id is that path):

    sandbox.json            session, agent, protocol, created_at and workdir, for `list`; for
                            sandbox-agent also its endpoint, pid and token, for `reattach`; the
                            pid and start time of every process `exec` started, for `destroy`
                            (mode 0600: the token is this sandbox's own secret; no credentials)
    server.log              sandbox-agent's stdout and stderr (what `logs` shows)
    workspace/              the agent's working folder, like /workspace in the image
    workspace/repo/         the clone of `spec.repo`, when there is one; empty for the daemon to
                            fill when `spec.seeded`
    workspace/.anycode/     clone-status (ok | failed | skipped) and clone-failed, as the image's
                            entrypoint writes them

It mirrors docker/entrypoint.sh: a failed clone does not fail the sandbox; it is recorded in the
markers and in ANYCODE_CLONE_STATUS / ANYCODE_CLONE_ERROR for the agent. For protocol
sandbox-agent it starts the agent gate (`agent_gate`, run by this interpreter) on 127.0.0.1 at a
free port, with the token in its environment; the gate starts `sandbox-agent server --host
127.0.0.1 --port <another free port> --no-token --no-telemetry` and lets only requests with the
token through. `create` returns once `/v1/health` answers through the gate with that token; for
acp and acpx nothing runs until `exec`.

Processes get a small environment: a few harmless variables of the daemon (PATH, HOME, locale,
CA bundles; see `BASE_ENV_NAMES`), then the agent's credentials, then the ANYCODE_* variables.
The daemon's own secrets (chat tokens) are not passed on. The token is on no command line:
sandbox-agent 0.4.2 takes a token only as an argument, which every user of this machine can read
(`ps`), hence the gate. sandbox-agent's own port takes requests without a token, from anybody on
this machine, as the token on its command line allowed before: this provider is no sandbox, and
no protection from the other users of a shared machine.

Processes are started in their own process group and killed with it. A daemon that dies without
calling `destroy` (SIGKILL, a crash) leaves its servers and agents running: nothing ends a process
when its parent dies, and claude-agent-acp (with the claude it started) does not even exit when its
stdin closes. `list` then reports their folders as not alive, and `destroy` in the restarted daemon
(recovery calls it for every session it cannot reattach, the reaper for every folder nobody owns)
ends them: the process groups of the processes `exec` started, recorded in sandbox.json with each
leader's start time, are signalled (SIGTERM, then SIGKILL) unless the recorded pid now belongs to
another process. The agents are not tied to the daemon's life instead (PR_SET_PDEATHSIG through
`preexec_fn`): the signal follows the death of the *thread* that forked the child, and Trio forks
in a worker thread that its thread cache retires after a few idle seconds.
A restarted daemon can `reattach` such a sandbox while its server still answers /v1/health with
the token from sandbox.json, and `destroy` stops a server it did not start itself, once the
server's command line (`/proc/<pid>/cmdline`, or `ps`) shows that the recorded pid is still that
server (the gate's port, and the sandbox's folder as the gate's `--label`). Stdio sandboxes (acp,
acpx) are not reattached: their agent died with the dead daemon's pipes, and the agent's
credentials, which a new one would need, are stored nowhere.

`read_files` walks the workspace with file descriptors (`openat` with O_NOFOLLOW, one component at
a time), so no symbolic link, wherever the agent puts one, makes the daemon read a file outside the
sandbox's folder.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import functools
import json
import logging
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Final

import httpx
import trio

from anycode_actors._tls import shared_ssl_context
from anycode_actors.config import LocalConfig
from anycode_actors.sandboxes import agent_gate
from anycode_actors.sandboxes._redaction import redact, secret_values
from anycode_actors.sandboxes.base import (
    AgentProcess,
    OutboxListing,
    SandboxError,
    SandboxFile,
    SandboxHandle,
    SandboxInfo,
    SandboxSpec,
    hard_links,
    new_agent_token,
)
from anycode_actors.sandboxes.ports import LOOPBACK, free_ephemeral_port
from anycode_actors.sandboxes.process import LocalProcess

__all__ = ["BASE_ENV_NAMES", "LocalProvider"]

logger = logging.getLogger(__name__)

#: The daemon's variables that agent processes inherit; everything else is left behind.
BASE_ENV_NAMES: Final = frozenset(
    {
        *("PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "TZ", "TMPDIR"),
        *("LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES"),
        *("SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE"),
    }
)
#: Seconds sandbox-agent may take to answer /v1/health.
STARTUP_TIMEOUT: Final = 30.0
#: Seconds a clone may take before it is abandoned (as ANYCODE_CLONE_TIMEOUT in the image).
CLONE_TIMEOUT: Final = 300.0
#: Seconds a server gets after SIGTERM before SIGKILL.
TERMINATE_GRACE: Final = 3.0
#: Seconds destroy (and the cleanup of a failed create) may take.
CLEANUP_TIMEOUT: Final = 30.0
#: Attempts at starting the server when another program takes its port first.
PORT_ATTEMPTS: Final = 3
#: Seconds one /v1/health probe of a server found after a restart may take.
REATTACH_HEALTH_TIMEOUT: Final = 5.0
_HEALTH_POLL_INTERVAL: Final = 0.05
_KEEP_FINISHED: Final = 4
#: Process groups recorded in sandbox.json at most (the most recent; acpx starts many).
_KEEP_RECORDED: Final = 64
_NAME_UNSAFE: Final = re.compile(r"[^a-zA-Z0-9_.-]")
_METADATA: Final = "sandbox.json"
_METADATA_TEMP: Final = ".sandbox.json.tmp"
_SERVER_LOG: Final = "server.log"
#: Where sandbox paths (as agents see them in the image) are in a local sandbox's folder.
_SANDBOX_WORKSPACE: Final = "/workspace"
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: What opening a path component with O_NOFOLLOW says when it is missing or no plain folder.
_NOT_A_FOLDER: Final = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP})
_READ_CHUNK: Final = 1 << 20


@dataclass
class _Sandbox:
    """What this daemon knows about a sandbox it created or reattached (and still holds)."""

    folder: Path
    session_id: str
    agent: str
    env: dict[str, str] = field(repr=False)
    hidden: tuple[str, ...] = field(repr=False)
    workdir: Path
    metadata: dict[str, object] = field(repr=False)
    endpoint: str | None = None
    token: str = field(default="", repr=False)
    server: trio.Process | None = None
    # The pid of a server that an earlier daemon started (reattached); never our child.
    adopted_pid: int | None = None
    processes: list[LocalProcess] = field(default_factory=list)
    # Taken while sandbox.json is rewritten: processes may be started concurrently (acpx).
    metadata_lock: trio.Lock = field(default_factory=trio.Lock, repr=False)

    def handle(self, provider: str) -> SandboxHandle:
        return SandboxHandle(
            id=str(self.folder),
            session_id=self.session_id,
            provider=provider,
            endpoint=self.endpoint,
            token=self.token,
            workdir=str(self.workdir),
        )


class LocalProvider:
    """Sandboxes as folders and subprocesses on this machine, without any isolation.

    `sandbox_agent` is the sandbox-agent command: a path, or a name looked up on the processes'
    PATH. `base_env` is the environment every process starts from; by default it is the part of
    the daemon's environment named in `BASE_ENV_NAMES` (tests pass an offline environment).
    """

    name = "local"
    can_exec = True

    def __init__(
        self,
        config: LocalConfig,
        daemon_id: str,
        *,
        sandbox_agent: str | os.PathLike[str] = "sandbox-agent",
        base_env: Mapping[str, str] | None = None,
        startup_timeout: float = STARTUP_TIMEOUT,
    ) -> None:
        if not config.allow_unsandboxed:
            raise SandboxError(
                "the local provider runs agents as plain processes of this user, with no "
                "container: an agent could read and change anything this user can. It starts "
                "only with [local] allow_unsandboxed = true (for development and demos); "
                'use sandbox.provider = "docker" otherwise'
            )
        safe_daemon = _NAME_UNSAFE.sub("_", daemon_id)
        if not safe_daemon:
            raise ValueError("daemon_id must not be empty")
        self._root = (Path(config.workdir) / safe_daemon).absolute()
        self._sandbox_agent = os.fspath(sandbox_agent)
        if base_env is None:
            base_env = {name: os.environ[name] for name in BASE_ENV_NAMES if name in os.environ}
        self._base_env = dict(base_env)
        self._startup_timeout = startup_timeout
        self._sandboxes: dict[str, _Sandbox] = {}

    @property
    def root(self) -> Path:
        """The folder that holds this daemon's sandboxes."""
        return self._root

    # --- the SandboxProvider interface ---------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> SandboxHandle:
        """Make the folder, clone the repo, start sandbox-agent when the protocol needs it.

        Never leaves anything behind: on failure or cancellation the server is stopped and the
        folder removed before the error propagates.
        """
        session = _NAME_UNSAFE.sub("", spec.session_id)[:8] or "session"
        folder = self._root / f"{session}-{secrets.token_hex(3)}"
        workspace = folder / "workspace"
        sandbox_id = str(folder)
        created = False
        sandbox: _Sandbox | None = None
        try:
            metadata: dict[str, object] = {
                "session_id": spec.session_id,
                "agent": spec.agent,
                "protocol": spec.protocol,
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            # Never abandoned: once the thread runs, the folder exists and `created` says so.
            await trio.to_thread.run_sync(_make_folders, workspace, metadata)
            created = True
            env = {**self._base_env, **spec.env}
            env["ANYCODE_AGENT"] = spec.agent
            env["ANYCODE_PROTOCOL"] = spec.protocol
            if spec.clone_repo:
                env["ANYCODE_REPO"] = spec.clone_repo
            hidden = secret_values(spec.env.values())
            env.update(await self._clone(spec.clone_repo, workspace, env, hidden))
            if spec.seeded:
                # The daemon copies the repository in after `create`; the agent works there.
                await trio.to_thread.run_sync(lambda: (workspace / "repo").mkdir(exist_ok=True))
            workdir = workspace / "repo" if (workspace / "repo").is_dir() else workspace
            metadata["workdir"] = str(workdir)
            await trio.to_thread.run_sync(_write_metadata, folder, metadata)
            sandbox = _Sandbox(folder, spec.session_id, spec.agent, env, hidden, workdir, metadata)
            endpoint = None
            if spec.protocol == "sandbox-agent":
                sandbox.token = new_agent_token()
                sandbox.hidden = secret_values([*hidden, sandbox.token])
                endpoint = await self._start_server(sandbox, workdir)
                sandbox.endpoint = endpoint
        except BaseException:
            if created:
                with trio.move_on_after(CLEANUP_TIMEOUT, shield=True):
                    if sandbox is not None:
                        await _stop(sandbox)
                    await trio.to_thread.run_sync(_remove_folder, folder)
            raise
        self._sandboxes[sandbox_id] = sandbox
        logger.info(
            "session %s: local sandbox %s for agent %s%s (unsandboxed)",
            spec.session_id,
            folder.name,
            spec.agent,
            f" at {endpoint}" if endpoint else "",
        )
        return sandbox.handle(self.name)

    async def destroy(self, sandbox_id: str) -> None:
        """Stop the sandbox's processes and remove its folder. Idempotent; shielded, bounded.

        The server of a sandbox this daemon does not hold (an earlier daemon's) is stopped too,
        when sandbox.json names it and its command line shows it is still that server; so are
        the process groups of the agents an earlier daemon started with `exec`, recorded in
        sandbox.json, while each recorded pid is still the process that was started.
        """
        folder = self._folder(sandbox_id)
        with trio.move_on_after(CLEANUP_TIMEOUT, shield=True) as scope:
            sandbox = self._sandboxes.pop(str(folder), None)
            if sandbox is None:
                sandbox = await trio.to_thread.run_sync(self._orphan, folder)
            if sandbox is not None:
                await _stop(sandbox)
            # What an earlier daemon started here and nobody ended (see the module's docstring),
            # and what outlived the leader of its group here (aclose signals only a live one).
            await _stop_recorded(folder)
            await trio.to_thread.run_sync(_remove_folder, folder)
        if scope.cancelled_caught:
            raise SandboxError(
                f"could not remove local sandbox {folder.name} within {CLEANUP_TIMEOUT:g} s"
            )

    async def is_alive(self, sandbox_id: str) -> bool:
        """Whether this daemon holds the sandbox and its server (if it has one) still runs."""
        sandbox = self._sandboxes.get(str(self._folder(sandbox_id)))
        if sandbox is None or not sandbox.folder.is_dir():
            return False
        if sandbox.adopted_pid is not None:
            return await trio.to_thread.run_sync(_is_adopted_server_running, sandbox)
        return sandbox.server is None or sandbox.server.returncode is None

    async def failure_reason(self, sandbox_id: str) -> str:
        sandbox = self._sandboxes.get(str(self._folder(sandbox_id)))
        if sandbox is None or not sandbox.folder.is_dir():
            return "its folder was removed"
        code = sandbox.server.returncode if sandbox.server is not None else None
        if code is None:
            return ""
        if code < 0:
            return f"its sandbox-agent server was killed (signal {-code})"
        return f"its sandbox-agent server exited with code {code}"

    async def logs(self, sandbox_id: str, tail: int = 200) -> str:
        """The last `tail` lines of sandbox-agent's output, then the stderr of exec'd processes;
        credentials replaced by `***`."""
        folder = self._folder(sandbox_id)
        sandbox = self._sandboxes.get(str(folder))
        text = await trio.to_thread.run_sync(_read_text, folder / _SERVER_LOG)
        if sandbox is not None:
            text += "".join(process.stderr_tail() for process in sandbox.processes)
        lines = text.splitlines()[-tail:] if tail > 0 else []
        return redact("\n".join(lines), sandbox.hidden if sandbox else ())

    async def list(self) -> builtins.list[SandboxInfo]:
        """Every sandbox folder of this daemon; alive only for those it holds and that run."""
        found = []
        for folder, metadata in await trio.to_thread.run_sync(_scan, self._root):
            found.append(
                SandboxInfo(
                    id=str(folder),
                    session_id=str(metadata.get("session_id", "")),
                    agent=str(metadata.get("agent", "")),
                    alive=await self.is_alive(str(folder)),
                    created_at=str(metadata.get("created_at", "")),
                )
            )
        return found

    async def exec(
        self,
        handle: SandboxHandle,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> AgentProcess:
        """Start `argv` in the sandbox's folder with the sandbox's environment (plus `env`).

        `cwd` defaults to the handle's workdir; a sandbox path (/workspace/...) is its place in
        the folder's workspace/, as in a container. Its pid and start time go into sandbox.json
        before it is returned, so that a restarted daemon can end its process group if this one
        dies without `destroy`.
        """
        sandbox = self._sandboxes.get(str(self._folder(handle.id)))
        if sandbox is None:
            raise SandboxError(f"local sandbox {Path(handle.id).name} does not exist (any more)")
        if not argv:
            raise SandboxError("nothing to run: the command is empty")
        try:
            process = await LocalProcess.start(
                argv,
                env={**sandbox.env, **(env or {})},
                cwd=_host_cwd(sandbox.folder, cwd) or handle.workdir,
            )
        except OSError as exc:
            raise SandboxError(
                f"could not start {argv[0]} in local sandbox {sandbox.folder.name}: "
                f"{exc.strerror or type(exc).__name__}"
            ) from None
        # Finished processes stay listed only for `logs`; the most recent few are enough.
        finished = [p for p in sandbox.processes if p.returncode is not None]
        sandbox.processes = [
            p for p in sandbox.processes if p.returncode is None or p in finished[-_KEEP_FINISHED:]
        ]
        sandbox.processes.append(process)
        await _record_process(sandbox, process.pid)
        return process

    async def reattach(self, sandbox_id: str) -> SandboxHandle | None:
        """The handle of a sandbox-agent sandbox of this daemon whose server still runs, after a
        restart: from sandbox.json (endpoint, token, workdir, server pid) once the recorded pid
        is still that server and it answers /v1/health with that token. A sandbox this provider
        holds gives its handle while it is alive.

        None for a folder that is missing or not this daemon's, a server that is gone, does not
        answer or refuses the token, and the stdio protocols of an earlier daemon (see the
        module's docstring). A reattached sandbox has only the harmless part of its environment for
        `exec`: the agent's credentials are stored nowhere.
        """
        try:
            folder = self._folder(sandbox_id)
        except SandboxError:
            return None
        held = self._sandboxes.get(str(folder))
        if held is not None:
            return held.handle(self.name) if await self.is_alive(sandbox_id) else None
        sandbox = await trio.to_thread.run_sync(self._orphan, folder)
        # Its recorded pid must still be its server (so that `destroy` can stop it), and the
        # server must answer with the recorded token.
        if sandbox is None or sandbox.endpoint is None or sandbox.adopted_pid is None:
            return None
        if not await _answers_health(sandbox.endpoint, sandbox.token):
            return None
        self._sandboxes[str(folder)] = sandbox
        logger.info(
            "session %s: reattached local sandbox %s at %s",
            sandbox.session_id,
            folder.name,
            sandbox.endpoint,
        )
        return sandbox.handle(self.name)

    async def read_files(
        self, handle: SandboxHandle, path: str, *, max_bytes: int
    ) -> OutboxListing:
        """The regular files under `path`: a sandbox path (/workspace/...), which maps onto the
        folder's workspace/, or a path inside that workspace on this machine.

        The walk opens every component with O_NOFOLLOW relative to its parent's descriptor, and
        every file with O_NOFOLLOW, checking that it is a regular file (fstat) before reading:
        symbolic links are never followed, not even one that replaces a folder while the walk
        runs.
        """
        folder = self._folder(handle.id)
        parts = _workspace_parts(folder / "workspace", path)
        return await trio.to_thread.run_sync(
            _read_tree, folder, parts, max_bytes, abandon_on_cancel=True
        )

    async def write_file(self, handle: SandboxHandle, path: str, data: bytes) -> None:
        """Write under the folder's workspace/ (`path` is /workspace/...), opening every folder
        and the file itself without following links: a link the agent planted in the workspace
        cannot point the write onto the daemon's machine."""
        folder = self._folder(handle.id)
        parts = _workspace_parts(folder / "workspace", path)
        if not parts:
            raise SandboxError(f"{path!r} is not a file path inside the sandbox")
        await trio.to_thread.run_sync(_write_file, folder, parts, data)

    # --- internals ----------------------------------------------------------------------------

    def _orphan(self, folder: Path) -> _Sandbox | None:
        """In a worker thread: a sandbox-agent sandbox of an earlier daemon, from sandbox.json,
        with `adopted_pid` set when that pid is still its server; None for anything else."""
        metadata = _read_metadata(folder)
        if metadata is None or metadata.get("protocol") != "sandbox-agent":
            return None
        endpoint, token, pid = (metadata.get(k) for k in ("endpoint", "token", "server_pid"))
        if not (
            isinstance(endpoint, str)
            and endpoint.startswith(f"http://{LOOPBACK}:")
            and isinstance(token, str)
            and token
            and isinstance(pid, int)
        ):
            return None
        workspace = folder / "workspace"
        workdir = (
            workspace / "repo" if metadata.get("workdir") == str(workspace / "repo") else workspace
        )
        agent = str(metadata.get("agent", ""))
        env = {**self._base_env, "ANYCODE_AGENT": agent, "ANYCODE_PROTOCOL": "sandbox-agent"}
        sandbox = _Sandbox(
            folder,
            str(metadata.get("session_id", "")),
            agent,
            env,
            secret_values([token]),
            workdir,
            metadata,
            endpoint=endpoint,
            token=token,
            adopted_pid=pid,
        )
        if not _is_adopted_server_running(sandbox):
            sandbox.adopted_pid = None
        return sandbox

    def _folder(self, sandbox_id: str) -> Path:
        """The sandbox's folder, after checking that it lies directly in this daemon's root:
        destroy removes it, so an id from anywhere else must never get that far."""
        folder = Path(sandbox_id)
        if (
            not folder.is_absolute()
            or folder.parent != self._root
            or folder.name in ("", ".", "..")
        ):
            raise SandboxError(f"{sandbox_id!r} is not a local sandbox of this daemon")
        return folder

    async def _clone(
        self, repo: str | None, workspace: Path, env: Mapping[str, str], hidden: Iterable[str]
    ) -> dict[str, str]:
        """Clone like the image's entrypoint: failure is recorded, not raised. Returns the
        ANYCODE_CLONE_* variables for the agent's environment."""
        state = workspace / ".anycode"
        await trio.to_thread.run_sync(lambda: state.mkdir(exist_ok=True))
        if not repo:
            await trio.to_thread.run_sync(_write_marker, state, "skipped", None)
            return {"ANYCODE_CLONE_STATUS": "skipped", "ANYCODE_STATE_DIR": str(state)}
        shown = redact(_URL_CREDENTIALS.sub(r"\1***@", repo), hidden)
        error = ""
        with trio.move_on_after(CLONE_TIMEOUT) as scope:
            try:
                done = await trio.run_process(
                    ["git", "clone", "--quiet", "--", repo, str(workspace / "repo")],
                    env={**env, "GIT_TERMINAL_PROMPT": "0"},
                    stdin=subprocess.DEVNULL,
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
            except OSError as exc:
                error = f"git could not run: {exc.strerror or type(exc).__name__}"
            else:
                if done.returncode != 0:
                    output = done.stderr.decode("utf-8", errors="replace")
                    error = f"git exited {done.returncode}: {output.strip()}"
        if scope.cancelled_caught:
            error = f"timed out after {CLONE_TIMEOUT:g} s"
        if not error:
            await trio.to_thread.run_sync(_write_marker, state, "ok", None)
            return {"ANYCODE_CLONE_STATUS": "ok", "ANYCODE_STATE_DIR": str(state)}
        message = redact(_URL_CREDENTIALS.sub(r"\1***@", error), hidden)
        message = " ".join(message.replace(repo, shown).split())[:2000]
        await trio.to_thread.run_sync(lambda: shutil.rmtree(workspace / "repo", True))
        await trio.to_thread.run_sync(_write_marker, state, "failed", f"repo: {shown}\n{message}")
        logger.warning("clone of %s failed, continuing without it: %s", shown, message)
        return {
            "ANYCODE_CLONE_STATUS": "failed",
            "ANYCODE_CLONE_ERROR": message,
            "ANYCODE_STATE_DIR": str(state),
        }

    async def _start_server(self, sandbox: _Sandbox, workdir: Path) -> str:
        binary = shutil.which(self._sandbox_agent, path=sandbox.env.get("PATH", os.defpath))
        if binary is None:
            raise SandboxError(
                f"{self._sandbox_agent} is not an executable on the agents' PATH; install "
                "@sandbox-agent/cli (npm) or give the local provider the binary's path"
            )
        if not sys.executable:
            raise SandboxError("no Python interpreter to run the agent gate with")
        # The token goes to the gate in its environment, never as an argument (see the module's
        # docstring); the gate removes it before it starts sandbox-agent.
        env = {
            **sandbox.env,
            "SANDBOX_AGENT_LOG_STDOUT": "1",
            agent_gate.TOKEN_VARIABLE: sandbox.token,
        }
        for attempt in range(1, PORT_ATTEMPTS + 1):
            port = free_ephemeral_port()
            inner = free_ephemeral_port()
            while inner == port:
                inner = free_ephemeral_port()
            # -I: the gate is plain standard library; no PYTHON* variable of the agent's
            # environment, user site or working folder may change what runs.
            argv = [sys.executable, "-I", agent_gate.__file__]
            argv += ["--listen", f"{LOOPBACK}:{port}", "--upstream-port", str(inner)]
            argv += ["--label", str(sandbox.folder), "--"]
            argv += [binary, "server", "--host", LOOPBACK, "--port", str(inner)]
            argv += ["--no-token", "--no-telemetry"]
            log = (sandbox.folder / _SERVER_LOG).open("ab")
            try:
                sandbox.server = await trio.lowlevel.open_process(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=workdir,
                    start_new_session=True,
                )
            except OSError as exc:
                raise SandboxError(
                    f"could not start sandbox-agent: {exc.strerror or type(exc).__name__}"
                ) from None
            finally:
                log.close()
            endpoint = f"http://{LOOPBACK}:{port}"
            # Recorded before anything else can fail, so that a later daemon finds the server.
            sandbox.metadata.update(
                endpoint=endpoint, token=sandbox.token, server_pid=sandbox.server.pid
            )
            await trio.to_thread.run_sync(_write_metadata, sandbox.folder, sandbox.metadata)
            if await self._wait_healthy(sandbox.server, endpoint, sandbox.token):
                return endpoint
            output = await trio.to_thread.run_sync(_read_text, sandbox.folder / _SERVER_LOG)
            output = redact(output, sandbox.hidden)
            exit_code = sandbox.server.returncode
            if exit_code is not None and "in use" in output.lower():
                logger.info("port %d was taken before sandbox-agent bound it (%d)", port, attempt)
                continue
            await _stop(sandbox)
            tail = "\n".join(output.splitlines()[-20:])
            problem = (
                f"sandbox-agent did not become healthy within {self._startup_timeout:g} s"
                if exit_code is None
                else f"sandbox-agent exited with code {exit_code}"
            )
            raise SandboxError(problem + (f"; its last output:\n{tail}" if tail else ""))
        raise SandboxError(f"sandbox-agent could not bind a port in {PORT_ATTEMPTS} attempts")

    async def _wait_healthy(self, server: trio.Process, endpoint: str, token: str) -> bool:
        """Poll /v1/health with the token until it answers 200 (True), the server exits or the
        startup timeout passes (False)."""
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(
            timeout=5.0, trust_env=False, verify=shared_ssl_context(trust_env=False)
        ) as client:
            with trio.move_on_after(self._startup_timeout):
                while server.returncode is None:
                    try:
                        answer = await client.get(f"{endpoint}/v1/health", headers=headers)
                    except httpx.TransportError:
                        pass
                    else:
                        if answer.status_code == 200:
                            return True
                    await trio.sleep(_HEALTH_POLL_INTERVAL)
        return False


_URL_CREDENTIALS: Final = re.compile(r"(://)[^/@\s]+@")


async def _stop(sandbox: _Sandbox) -> None:
    """Stop the server and every exec'd process: SIGTERM to the group, then SIGKILL."""
    processes, sandbox.processes = sandbox.processes, []
    for process in processes:
        await process.aclose()
    if sandbox.adopted_pid is not None:
        with trio.CancelScope(shield=True):
            await _stop_adopted(sandbox)
    server, sandbox.server = sandbox.server, None
    if server is None:
        return
    with trio.CancelScope(shield=True):
        if server.returncode is None:
            _signal_group(server.pid, signal.SIGTERM)
            with trio.move_on_after(TERMINATE_GRACE):
                await server.wait()
        # The server's own children (agents) share its group; none may outlive it.
        _signal_group(server.pid, signal.SIGKILL)
        await server.wait()


async def _stop_adopted(sandbox: _Sandbox) -> None:
    """Stop the server an earlier daemon started: it is not our child, so it is polled, and
    signalled only while its command line still shows it is that server."""
    pid, sandbox.adopted_pid = sandbox.adopted_pid, None
    if pid is None:
        return
    check = functools.partial(_is_server, pid, sandbox)
    for signum in (signal.SIGTERM, signal.SIGKILL):
        if not await trio.to_thread.run_sync(check):
            return
        _signal_group(pid, signum)
        with trio.move_on_after(TERMINATE_GRACE):
            # Not our child: there is nothing to wait on but the process table.
            while await trio.to_thread.run_sync(check):  # noqa: ASYNC110
                await trio.sleep(_HEALTH_POLL_INTERVAL)
            return
    logger.warning("sandbox-agent (pid %d) of %s survived SIGKILL", pid, sandbox.folder.name)


async def _record_process(sandbox: _Sandbox, pid: int) -> None:
    """Add process `pid` (the leader of its own group) to sandbox.json, with its start time."""
    started = await trio.to_thread.run_sync(_process_start, pid)
    async with sandbox.metadata_lock:
        recorded = sandbox.metadata.get("processes")
        records = list(recorded) if isinstance(recorded, builtins.list) else []
        records.append({"pid": pid, "started": started})
        sandbox.metadata["processes"] = records[-_KEEP_RECORDED:]
        try:
            await trio.to_thread.run_sync(_write_metadata, sandbox.folder, dict(sandbox.metadata))
        except OSError as exc:
            # The agent runs all the same; only a restarted daemon would not find it.
            logger.warning(
                "could not record process %d in %s: %s", pid, sandbox.folder.name, exc.strerror
            )


async def _stop_recorded(folder: Path) -> None:
    """End the process groups recorded in the folder's sandbox.json that still have a member:
    SIGTERM, then SIGKILL after `TERMINATE_GRACE`. A group whose leader's pid now belongs to a
    process started later (the pid was reused) is another program's and is left alone."""
    metadata = await trio.to_thread.run_sync(_read_metadata, folder)
    records = (metadata or {}).get("processes")
    if not isinstance(records, builtins.list):
        return
    wanted = [
        (record["pid"], record.get("started"))
        for record in records
        if isinstance(record, dict) and isinstance(record.get("pid"), int) and record["pid"] > 1
    ]
    for signum in (signal.SIGTERM, signal.SIGKILL):
        groups = await trio.to_thread.run_sync(_live_recorded_groups, wanted)
        if not groups:
            return
        logger.info(
            "%s: sending %s to %d process group(s) an earlier daemon left running",
            folder.name,
            signal.Signals(signum).name,
            len(groups),
        )
        for pgid in groups:
            _signal_group(pgid, signum)
        with trio.move_on_after(TERMINATE_GRACE):
            # Not our children: there is nothing to wait on but the process table.
            while await trio.to_thread.run_sync(_live_recorded_groups, wanted):  # noqa: ASYNC110
                await trio.sleep(_HEALTH_POLL_INTERVAL)
            return
    logger.warning("%s: processes an earlier daemon started survived SIGKILL", folder.name)


def _live_recorded_groups(records: Iterable[tuple[int, object]]) -> builtins.list[int]:
    """The recorded process groups that still have a running (not zombie) member and whose
    leader, if its pid is taken, is still the recorded process (same start time)."""
    running = _running_groups()
    live = []
    for pgid, started in records:
        now = _process_start(pgid)
        if now is not None and now != started:
            continue  # the pid belongs to another process now (or the start was not known)
        if pgid in running if running is not None else _group_exists(pgid):
            live.append(pgid)
    return live


def _running_groups() -> set[int] | None:
    """The process group of every running process of this machine (from /proc); None without
    /proc. Zombies do not count: they have ended, and signals cannot reach them."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    groups = set()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        # fields[0] is the state (the stat file's 3rd field), fields[2] the group (5th).
        if len(fields) > 2 and fields[0] not in ("Z", "X"):
            groups.add(int(fields[2]))
    return groups


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's group: never ours
    return True


def _process_start(pid: int) -> str | None:
    """When process `pid` started, as text that differs between two processes given the same
    pid; None when no process has it. From /proc (clock ticks after boot), else from `ps`."""
    proc = Path("/proc")
    if proc.is_dir():
        try:
            fields = (proc / str(pid) / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            return None
        # The stat file's 22nd field, starttime; fields[0] is its 3rd.
        return f"ticks:{fields[19]}" if len(fields) > 19 else None
    try:
        done = subprocess.run(
            ["ps", "-o", "lstart=", "-p", str(pid)],
            capture_output=True,
            check=False,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    started = done.stdout.decode("utf-8", errors="replace").strip()
    return f"lstart:{started}" if done.returncode == 0 and started else None


def _is_adopted_server_running(sandbox: _Sandbox) -> bool:
    pid = sandbox.adopted_pid
    return pid is not None and _is_server(pid, sandbox)


def _is_server(pid: int, sandbox: _Sandbox) -> bool:
    """Whether process `pid` runs (not a zombie) and is the server (the agent gate) of the
    sandbox: its port and the sandbox's folder as its label. Guards against signalling a process
    that took over the pid of a dead server.
    """
    command = _command_line(pid)
    if command is None:
        return False
    port = (sandbox.endpoint or "").rsplit(":", 1)[-1]
    padded = f" {command} "
    if f" --listen {LOOPBACK}:{port} " in padded and f" --label {sandbox.folder} " in padded:
        return True
    # A server that a daemon before the gate started: sandbox-agent with its token as argument.
    return f" --port {port} " in padded and f" --token {sandbox.token} " in padded


def _command_line(pid: int) -> str | None:
    """The process's arguments joined by spaces; None when it is gone or a zombie."""
    proc = Path("/proc")
    if proc.is_dir():
        try:
            status = (proc / str(pid) / "stat").read_text()
            raw = (proc / str(pid) / "cmdline").read_bytes()
        except OSError:
            return None
        # The state follows the command name in parentheses: Z is a zombie, X dead.
        if status.rsplit(")", 1)[-1].split()[:1] in (["Z"], ["X"]):
            return None
        return raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", errors="replace")
    try:
        done = subprocess.run(
            ["ps", "-ww", "-o", "stat=", "-o", "args=", "-p", str(pid)],
            capture_output=True,
            check=False,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    state, _, command = done.stdout.decode("utf-8", errors="replace").strip().partition(" ")
    if done.returncode != 0 or not command or state.startswith("Z"):
        return None
    return command.strip()


async def _answers_health(endpoint: str, token: str) -> bool:
    async with httpx.AsyncClient(
        timeout=REATTACH_HEALTH_TIMEOUT, trust_env=False, verify=shared_ssl_context(trust_env=False)
    ) as client:
        try:
            answer = await client.get(
                f"{endpoint}/v1/health", headers={"Authorization": f"Bearer {token}"}
            )
        except httpx.HTTPError:
            return False
    return answer.status_code == 200


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)


def _make_folders(workspace: Path, metadata: Mapping[str, object]) -> None:
    workspace.mkdir(parents=True)
    # In the same step, so that no folder of ours ever lacks what `list` recognises it by.
    _write_metadata(workspace.parent, metadata)


def _write_metadata(folder: Path, metadata: Mapping[str, object]) -> None:
    """sandbox.json, replaced atomically, readable by this user only (it may hold the token)."""
    temp = folder / _METADATA_TEMP
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as file:
        os.fchmod(fd, 0o600)
        file.write(json.dumps(dict(metadata), indent=2) + "\n")
    os.replace(temp, folder / _METADATA)


def _read_metadata(folder: Path) -> dict[str, object] | None:
    try:
        metadata = json.loads((folder / _METADATA).read_text())
    except (OSError, ValueError):
        return None
    return metadata if isinstance(metadata, dict) else None


def _host_cwd(folder: Path, cwd: str | None) -> str | None:
    """Where a process of the sandbox in `folder` runs: a sandbox path (/workspace/...) in the
    folder's workspace/; anything else (None: the handle's workdir) unchanged."""
    if cwd is None or not (cwd == _SANDBOX_WORKSPACE or cwd.startswith(_SANDBOX_WORKSPACE + "/")):
        return cwd
    return str(folder.joinpath("workspace", *_workspace_parts(folder / "workspace", cwd)))


def _workspace_parts(workspace: Path, path: str) -> builtins.list[str]:
    """The components of `path` below the workspace: `path` is a sandbox path (/workspace/...)
    or a path inside the workspace folder on this machine."""
    for root in (_SANDBOX_WORKSPACE, str(workspace)):
        if path == root or path.startswith(root + "/"):
            parts = [part for part in path[len(root) :].split("/") if part not in ("", ".")]
            if ".." not in parts:
                return parts
    raise SandboxError(
        f"{path!r} is not a folder of the sandbox's workspace ({_SANDBOX_WORKSPACE}/...)"
    )


def _open_folder(base_fd: int, names: Iterable[str]) -> int | None:
    """A descriptor of the folder `names` below `base_fd`, opened one component at a time
    without following links; None if any component is missing, a link, or no folder."""
    current = os.dup(base_fd)
    for name in names:
        try:
            following = os.open(name, _DIR_FLAGS, dir_fd=current)
        except OSError as exc:
            os.close(current)
            if exc.errno in _NOT_A_FOLDER:
                return None
            raise
        os.close(current)
        current = following
    return current


def _write_file(folder: Path, parts: builtins.list[str], data: bytes) -> None:
    """In a worker thread: `data` as workspace/<parts> of `folder`, making missing folders; no
    component is followed if it is a link (O_NOFOLLOW), so the write stays in the workspace."""
    shown = "/".join([_SANDBOX_WORKSPACE, *parts])
    try:
        current = os.open(folder / "workspace", _DIR_FLAGS)
    except OSError as exc:
        raise SandboxError(f"local sandbox {folder.name} does not exist (any more)") from exc
    try:
        for name in parts[:-1]:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o755, dir_fd=current)
            following = os.open(name, _DIR_FLAGS, dir_fd=current)
            os.close(current)
            current = following
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        target = os.open(parts[-1], flags, 0o644, dir_fd=current)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(target, view) :]
        finally:
            os.close(target)
    except OSError as exc:
        raise SandboxError(f"could not write {shown}: {exc.strerror}") from None
    finally:
        os.close(current)


def _read_tree(folder: Path, parts: builtins.list[str], max_bytes: int) -> OutboxListing:
    """In a worker thread: the regular files under workspace/<parts> of `folder`."""
    try:
        root = os.open(folder, _DIR_FLAGS)
    except OSError as exc:
        if exc.errno in _NOT_A_FOLDER:
            raise SandboxError(f"local sandbox {folder.name} does not exist (any more)") from None
        raise SandboxError(f"could not open local sandbox {folder.name}: {exc.strerror}") from None
    files: builtins.list[SandboxFile] = []
    too_big: builtins.list[tuple[str, int]] = []
    # Listed name → (st_dev, st_ino) of its file: hard links share both.
    identities: dict[str, tuple[int, int]] = {}
    try:
        base = _open_folder(root, ["workspace", *parts])
        if base is None:
            return OutboxListing()
        try:
            pending: builtins.list[tuple[str, ...]] = [()]
            while pending:
                below = pending.pop()
                directory = _open_folder(base, below)
                if directory is None:
                    continue  # gone, or replaced by a link, since it was listed
                try:
                    with os.scandir(directory) as scan:
                        entries = [
                            (
                                e.name,
                                e.is_dir(follow_symlinks=False),
                                e.is_file(follow_symlinks=False),
                            )
                            for e in scan
                        ]
                    for name, is_dir, is_file in entries:
                        relative = (*below, name)
                        if is_dir:
                            pending.append(relative)
                        elif is_file:
                            read = _read_regular(directory, name, max_bytes)
                            if read is None:
                                continue
                            found, identity = read
                            identities["/".join(relative)] = identity
                            if isinstance(found, bytes):
                                files.append(SandboxFile("/".join(relative), found))
                            else:
                                too_big.append(("/".join(relative), found))
                finally:
                    os.close(directory)
        finally:
            os.close(base)
    except OSError as exc:
        raise SandboxError(
            f"could not read {'/'.join(parts) or 'the workspace'} in local sandbox "
            f"{folder.name}: {exc.strerror or type(exc).__name__}"
        ) from None
    finally:
        os.close(root)
    files.sort(key=lambda file: file.name)
    too_big.sort()
    return OutboxListing(tuple(files), tuple(too_big), hard_links(identities))


def _read_regular(
    directory: int, name: str, max_bytes: int
) -> tuple[bytes | int, tuple[int, int]] | None:
    """The bytes of the regular file `name` in `directory`, or its size when it is larger than
    `max_bytes`, with its (st_dev, st_ino) from the same descriptor; None when it is no regular
    file (any more)."""
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=directory)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENXIO):
            return None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        identity = (info.st_dev, info.st_ino)
        if info.st_size > max_bytes:
            return info.st_size, identity
        data = bytearray()
        while len(data) <= max_bytes:
            chunk = os.read(fd, min(_READ_CHUNK, max_bytes + 1 - len(data)))
            if not chunk:
                return bytes(data), identity
            data += chunk
        return os.fstat(fd).st_size, identity  # it grew past the limit while we read it
    finally:
        os.close(fd)


def _write_marker(state: Path, status: str, failure: str | None) -> None:
    (state / "clone-status").write_text(status + "\n")
    if failure is not None:
        (state / "clone-failed").write_text(failure + "\n")


def _remove_folder(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    if folder.exists():
        raise SandboxError(f"could not remove local sandbox folder {folder}")


def _read_text(path: Path) -> str:
    try:
        with path.open("rb") as file:
            return _tail_bytes(file).decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _tail_bytes(file: IO[bytes], limit: int = 256 * 1024) -> bytes:
    size = file.seek(0, os.SEEK_END)
    file.seek(max(0, size - limit))
    return file.read()


def _scan(root: Path) -> builtins.list[tuple[Path, dict[str, object]]]:
    found = []
    try:
        entries = sorted(root.iterdir())
    except FileNotFoundError:
        return []
    for folder in entries:
        metadata = _read_metadata(folder)
        if metadata is not None:
            found.append((folder, metadata))
    return found
