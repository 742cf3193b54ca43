"""The Docker provider: one hardened container per session, driven through the docker SDK.

docker-py is blocking, so every call runs in a worker thread under this provider's
`trio.CapacityLimiter`. Calls that change the world (create, start, remove) are never abandoned
on cancel: `to_thread.run_sync(abandon_on_cancel=False)` always hands the thread's result back,
so the id of a container that was just created is never lost, and `create` removes it before
re-raising whatever stopped it (a cancel, a port conflict, an engine error). Read-only calls
(`is_alive`, `logs`, `list`) may be abandoned.

What the daemon this project replaces got wrong, and what this does instead:

- Ports: host ports come from `PortAllocator`, which never hands out a port that we or anybody
  else holds, and gets them back on `destroy`; a port taken between the check and Docker's bind
  is retried with another. With `port_range_start = port_range_end = 0` Docker picks an ephemeral
  port, read back from `docker inspect`. Either way the port is published on 127.0.0.1 only.
- Hardening: `cap_drop=ALL` plus `docker.cap_add`, `no-new-privileges`, memory / CPU / pids
  limits, never privileged, the configured network, and an init process as PID 1.
- Ownership: every container carries `anycode.daemon=<daemon id>` (and the session and agent), so
  `list` finds exactly this daemon's sandboxes (the watchdog removes those no session owns).
- Secrets: credentials go into the container's environment at create time and nowhere else. Error
  messages are built from the engine's status and explanation with every credential value
  replaced by `***`, and without the SDK exception attached (its request body holds the env).
- Restarts: `reattach` rebuilds a handle from the container alone (its labels, its environment,
  its published port), so the daemon never stores a sandbox's token.
- Outbox: `read_files` streams `docker cp`'s tar archive (`get_archive`) through `tarfile`,
  reading only members that fit `max_bytes`; links in the archive are never followed.
"""

from __future__ import annotations

import io
import logging
import re
import secrets
import tarfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

# Submodules only: a bare `import docker` is taken by ruff and mypy for the repository's docker/
# folder (the image's build files), not the SDK.
import docker.errors
import requests.exceptions
import trio
import urllib3.exceptions
from docker.client import from_env

from anycode_actors.config import DockerConfig
from anycode_actors.sandboxes._redaction import redact, secret_values
from anycode_actors.sandboxes.base import (
    LABEL_AGENT,
    LABEL_CREATED_AT,
    LABEL_DAEMON,
    LABEL_SESSION,
    WORKDIR_VARIABLE,
    AgentProcess,
    OutboxListing,
    SandboxError,
    SandboxFile,
    SandboxHandle,
    SandboxInfo,
    SandboxSpec,
    SandboxUnavailable,
    hard_links,
    new_agent_token,
    workdir_from_env,
    write_by_exec,
)
from anycode_actors.sandboxes.docker_exec import start_exec
from anycode_actors.sandboxes.ports import LOOPBACK, PortAllocator

__all__ = [
    "AGENT_PORT",
    "LABEL_AGENT",
    "LABEL_CREATED_AT",
    "LABEL_DAEMON",
    "LABEL_PROTOCOL",
    "LABEL_SESSION",
    "DockerProvider",
    "default_client",
]

logger = logging.getLogger(__name__)

LABEL_PROTOCOL: Final = "anycode.protocol"

#: Where sandbox-agent listens inside the container (docker/entrypoint.sh).
AGENT_PORT: Final = 2468
#: Worker threads (and pooled engine connections) per provider. The engine serialises much of
#: container creation anyway; more threads would only queue inside dockerd.
DEFAULT_MAX_CONCURRENT_CALLS: Final = 8
#: Seconds one Engine API call may take (docker-py's HTTP timeout). It is also what bounds a
#: removal that has started: such a call is never abandoned.
API_TIMEOUT: Final = 60.0
#: Seconds a cleanup may wait for a worker thread before it gives up and leaves the container to
#: the watchdog (actors/watchdog.py), which removes sandboxes no session owns.
CLEANUP_TIMEOUT: Final = 30.0
#: While the engine cannot be reached, `destroy` tries again after this wait, doubling up to
#: `REMOVE_RETRY_MAX`, until `cleanup_timeout` has passed: an engine that is back within it
#: removes the container at once, instead of leaving it to the reaper (which waits until an
#: orphan is `ORPHAN_AGE` old and the next sweep).
REMOVE_RETRY_FIRST: Final = 0.5
REMOVE_RETRY_MAX: Final = 4.0
#: Attempts at publishing the agent port when somebody else keeps taking the chosen one.
PORT_ATTEMPTS: Final = 5
_PORT_TAKEN_MARKERS: Final = ("port is already allocated", "address already in use")
#: The daemon's own variables in a container's environment that are no credentials.
_PLAIN_VARIABLES: Final = frozenset(
    {"ANYCODE_AGENT", "ANYCODE_PROTOCOL", "ANYCODE_REPO", WORKDIR_VARIABLE}
)
#: Go's os.FileMode bits, as the engine reports a path's mode for `get_archive`.
_GO_MODE_DIR: Final = 1 << 31
_GO_MODE_SYMLINK: Final = 1 << 27
#: Bytes `tarfile` reads at a time, also when it skips a member too big to read.
_TAR_BUFFER: Final = 1 << 20
_NAME_UNSAFE: Final = re.compile(r"[^a-zA-Z0-9_.-]")

_T = TypeVar("_T")


def default_client(max_pool_size: int = DEFAULT_MAX_CONCURRENT_CALLS) -> Any:
    """A docker SDK client for the engine named by the environment (DOCKER_HOST, or the socket)."""
    return from_env(timeout=int(API_TIMEOUT), max_pool_size=max_pool_size)


class _EngineError(SandboxError):
    """An Engine API call failed. `status` is the HTTP status (None when the engine was not
    reached); `explanation` is the engine's message with credentials redacted; `unreachable`
    says that no connection to the engine could be made (it is down or restarting)."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        explanation: str = "",
        *,
        image_missing: bool = False,
        unreachable: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.explanation = explanation
        self.image_missing = image_missing
        self.unreachable = unreachable


class _EngineUnreachable(_EngineError, SandboxUnavailable):
    """No connection to the engine could be made."""


class _PortTakenError(SandboxError):
    """Docker could not bind the chosen host port: somebody took it after our check."""


class DockerProvider:
    """Sandboxes as containers on a local Docker engine. Every method is safe to call from Trio.

    `daemon_id` names this daemon instance: it goes into the `anycode.daemon` label, and `list`
    looks at nothing else. `client_factory` is called once, in a worker thread, on first use;
    `max_concurrent_calls` bounds the SDK calls in flight.
    """

    name = "docker"
    can_exec = True

    def __init__(
        self,
        config: DockerConfig,
        daemon_id: str,
        *,
        client_factory: Callable[[], Any] | None = None,
        max_concurrent_calls: int = DEFAULT_MAX_CONCURRENT_CALLS,
        cleanup_timeout: float = CLEANUP_TIMEOUT,
    ) -> None:
        if not daemon_id:
            raise ValueError("daemon_id must not be empty")
        self._config = config
        self._daemon_id = daemon_id
        self._client_factory = client_factory or (lambda: default_client(max_concurrent_calls))
        self._client: Any = None
        self._client_lock = trio.Lock()
        self._limiter = trio.CapacityLimiter(max_concurrent_calls)
        self._cleanup_timeout = cleanup_timeout
        self._ports = (
            None
            if config.ephemeral_ports
            else PortAllocator(config.port_range_start, config.port_range_end)
        )
        # Container id → the host port we allocated for it (released on destroy).
        self._container_ports: dict[str, int] = {}
        # Container id → credential values to redact from its logs.
        self._redactions: dict[str, tuple[str, ...]] = {}

    @property
    def daemon_id(self) -> str:
        return self._daemon_id

    @property
    def ports(self) -> PortAllocator | None:
        """The host port allocator; None when Docker picks the ports (range 0, 0)."""
        return self._ports

    # --- the SandboxProvider interface ---------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> SandboxHandle:
        """Create and start a container for `spec`; return once it runs.

        Never leaves a container behind: if anything fails or the caller is cancelled after the
        container exists, it is removed (forced, shielded, bounded) before the error propagates.
        """
        image = spec.image or self._config.image
        needs_port = spec.protocol == "sandbox-agent"
        token = new_agent_token() if needs_port else ""
        env = _environment(spec, token)
        hidden = secret_values([*spec.env.values(), token])
        api = await self._api()
        for attempt in range(1, PORT_ATTEMPTS + 1):
            port = self._ports.allocate() if needs_port and self._ports is not None else None
            try:
                handle = await self._create_once(api, spec, image, env, token, port, hidden)
            except _PortTakenError:
                logger.info(
                    "session %s: host port %s was taken before Docker could bind it "
                    "(attempt %d of %d); trying another",
                    spec.session_id,
                    port if port is not None else "(ephemeral)",
                    attempt,
                    PORT_ATTEMPTS,
                )
                self._release_port(port)
                continue
            except BaseException:
                self._release_port(port)
                raise
            if port is not None:
                self._container_ports[handle.id] = port
            self._redactions[handle.id] = hidden
            return handle
        raise SandboxError(
            f"could not publish the agent port: {PORT_ATTEMPTS} ports in a row were taken by "
            "other programs between our check and Docker's bind; "
            "is something else allocating ports in docker.port_range_*?"
        )

    async def destroy(self, sandbox_id: str) -> None:
        """Force-remove the container and its anonymous volumes; release its port.

        Idempotent: a container that is already gone (or being removed) is not an error.
        Shielded, so it completes inside a cancelled caller; bounded by `cleanup_timeout` while
        waiting for a worker thread and by the engine's API timeout once the call has started.
        An engine that cannot be reached is tried again within the same bound (see
        `REMOVE_RETRY_FIRST`). A container without this daemon's label is refused, whatever id a
        caller passes.
        """
        unreachable: _EngineError | None = None
        with trio.move_on_after(self._cleanup_timeout, shield=True) as scope:
            wait = REMOVE_RETRY_FIRST
            while True:
                try:
                    container_id = await self._owned_container(sandbox_id)
                    if container_id is not None:
                        await self._remove(container_id)
                    return
                except _EngineError as exc:
                    if not exc.unreachable:
                        raise
                    if unreachable is None:
                        logger.warning("%s; trying again until it answers", exc)
                    unreachable = exc
                await trio.sleep(wait)
                wait = min(wait * 2, REMOVE_RETRY_MAX)
        if scope.cancelled_caught:
            why = (
                "the Docker engine could not be reached"
                if unreachable
                else "the Docker engine is busy"
            )
            raise SandboxError(
                f"could not remove sandbox {_short(sandbox_id)} within "
                f"{self._cleanup_timeout:g} s ({why}); "
                "it keeps its labels, so the reaper removes it later"
            )

    async def is_alive(self, sandbox_id: str) -> bool:
        """Whether the container is running. A missing container is not alive."""
        state = await self._inspect(sandbox_id)
        return state is not None and bool(state.get("State", {}).get("Running"))

    async def failure_reason(self, sandbox_id: str) -> str:
        """From the container's state: killed for memory (`State.OOMKilled`, see
        https://docs.docker.com/reference/api/engine/version/v1.45/#tag/Container/operation/ContainerInspect),
        removed, or exited with a code. In a running container, a process the kernel killed
        for memory is counted in its cgroup's `memory.events` (`oom_kill`, see
        https://docs.kernel.org/admin-guide/cgroup-v2.html#memory-interface-files)."""
        state = await self._inspect(sandbox_id)
        if state is None:
            return "it was removed"
        if not (state.get("State") or {}).get("Running"):
            return docker_stop_reason(state)
        events = await self._read_memory_events(sandbox_id)
        if _oom_kills(events) == 0:
            return ""
        limit = (state.get("HostConfig") or {}).get("Memory") or 0
        within = f" (limit {_mebibytes(limit)})" if limit else ""
        return f"a process in it ran out of memory{within}"

    async def _read_memory_events(self, sandbox_id: str) -> str:
        api = await self._api()

        def read() -> str:
            # cgroup v2 first; cgroup v1 keeps the same `oom_kill` line in `memory.oom_control`
            # (https://docs.kernel.org/admin-guide/cgroup-v1/memory.html).
            command = [
                "sh",
                "-c",
                "cat /sys/fs/cgroup/memory.events 2>/dev/null"
                " || cat /sys/fs/cgroup/memory/memory.oom_control",
            ]
            created = api.exec_create(sandbox_id, command, stdout=True, stderr=False)
            output = api.exec_start(created["Id"])
            return output.decode(errors="replace") if isinstance(output, bytes) else ""

        what = f"read the memory events of sandbox {_short(sandbox_id)}"
        return await self._run(read, abandon=True, what=what)

    async def _inspect(self, sandbox_id: str) -> dict[str, Any] | None:
        """The container's inspect data, or None if it is gone. Read-only: may be abandoned."""
        api = await self._api()
        try:
            state: dict[str, Any] = await self._run(
                api.inspect_container,
                sandbox_id,
                abandon=True,
                what=f"inspect sandbox {_short(sandbox_id)}",
            )
        except _EngineError as exc:
            if exc.status == 404:
                return None
            raise
        return state

    async def logs(self, sandbox_id: str, tail: int = 200) -> str:
        """The last `tail` lines of the container's stdout and stderr ("" when it is gone).

        Credentials this provider injected are replaced by `***`.
        """
        api = await self._api()
        try:
            raw = await self._run(
                lambda: api.logs(sandbox_id, stdout=True, stderr=True, tail=max(0, tail)),
                abandon=True,
                what=f"read the logs of sandbox {_short(sandbox_id)}",
            )
        except _EngineError as exc:
            if exc.status == 404:
                return ""
            raise
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
        return redact(text, self._redactions.get(sandbox_id, ()))

    async def list(self) -> list[SandboxInfo]:
        """Every container (running or not) labelled with this daemon's id.

        Ports that running containers publish are adopted by the port allocator, so after a
        restart they are neither handed out again nor lost when those sandboxes are destroyed.
        """
        api = await self._api()
        rows = await self._run(
            lambda: api.containers(
                all=True, filters={"label": f"{LABEL_DAEMON}={self._daemon_id}"}
            ),
            abandon=True,
            what="list this daemon's sandboxes",
        )
        found = []
        for row in rows:
            container_id = str(row["Id"])
            labels = row.get("Labels") or {}
            for binding in row.get("Ports") or ():
                if binding.get("PrivatePort") == AGENT_PORT and binding.get("PublicPort"):
                    self._adopt_port(container_id, int(binding["PublicPort"]))
            found.append(
                SandboxInfo(
                    id=container_id,
                    session_id=labels.get(LABEL_SESSION, ""),
                    agent=labels.get(LABEL_AGENT, ""),
                    alive=row.get("State") == "running",
                    created_at=labels.get(LABEL_CREATED_AT) or _iso_from_epoch(row.get("Created")),
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
        """Start `argv` in the container with piped stdio (`docker exec -i` over the SDK socket).

        `cwd` defaults to the handle's workdir (the repo's folder when there is a repo); `env`
        is added for this process only.
        """
        if not argv:
            raise SandboxError("nothing to run: the command is empty")
        api = await self._api()
        return await start_exec(
            api,
            handle.id,
            argv,
            env=env,
            cwd=cwd or handle.workdir,
            limiter=self._limiter,
        )

    async def reattach(self, sandbox_id: str) -> SandboxHandle | None:
        """The handle of this daemon's running container `sandbox_id`, rebuilt from the
        container alone: the session and protocol from its labels, the token and the repo (which
        decides the workdir) from its environment, the endpoint from its published port, which
        the port allocator adopts.

        None if the container is gone, not running, or carries another daemon's label.
        """
        state = await self._inspect(sandbox_id)
        if state is None:
            return None
        config = state.get("Config") or {}
        labels = config.get("Labels") or {}
        if labels.get(LABEL_DAEMON) != self._daemon_id:
            return None
        if not (state.get("State") or {}).get("Running"):
            return None
        container_id = str(state["Id"])
        name = str(state.get("Name", "")).lstrip("/") or _short(container_id)
        env = _env_dict(config.get("Env"))
        image_env = await self._image_env(await self._api(), state.get("Image"))
        token = ""
        endpoint = None
        if labels.get(LABEL_PROTOCOL) == "sandbox-agent":
            token = env.get("ANYCODE_AGENT_TOKEN", "")
            if not token:
                raise SandboxError(
                    f"sandbox {name} runs sandbox-agent but has no ANYCODE_AGENT_TOKEN in its "
                    "environment; it cannot be reattached"
                )
            host_port = _published_port(state, name)
            self._adopt_port(container_id, host_port)
            endpoint = f"http://{LOOPBACK}:{host_port}"
        # What the daemon injected: the container's variables that its image does not set.
        injected = {k: v for k, v in env.items() if image_env.get(k) != v}
        self._redactions[container_id] = secret_values(
            v for k, v in injected.items() if k not in _PLAIN_VARIABLES
        )
        session_id = labels.get(LABEL_SESSION, "")
        logger.info(
            "session %s: reattached sandbox %s (%s)%s",
            session_id,
            name,
            _short(container_id),
            f" on {endpoint}" if endpoint else "",
        )
        return SandboxHandle(
            id=container_id,
            session_id=session_id,
            provider=self.name,
            endpoint=endpoint,
            token=token,
            workdir=workdir_from_env(env),
        )

    async def read_files(
        self, handle: SandboxHandle, path: str, *, max_bytes: int
    ) -> OutboxListing:
        """The regular files under the folder `path` of the container, from the tar archive of
        `get_archive` (what `docker cp` uses), read as a stream: a member over `max_bytes` is
        listed in `too_big` and skipped unread (never held in memory). Links in the archive are
        not followed; a hard link to a file read before is that file again, named in `links`.

        A missing `path`, or one that is not a folder (a file, a symbolic link), gives an empty
        listing; a missing container is a SandboxError. Read-only, so a cancel abandons the
        worker thread, which notices and stops reading at its next chunk.
        """
        if not path.startswith("/"):
            raise SandboxError(f"{path!r} is not an absolute folder path inside the sandbox")
        api = await self._api()
        stop = threading.Event()
        try:
            listing = await self._run(
                _read_archive,
                api,
                handle.id,
                path,
                max_bytes,
                stop,
                abandon=True,
                what=f"read {path} from sandbox {_short(handle.id)}",
            )
        finally:
            stop.set()
        if listing is None:
            # A 404: the folder is missing, or the whole container is.
            if not await self._exists(handle.id):
                raise SandboxError(f"sandbox {_short(handle.id)} does not exist (any more)")
            return OutboxListing()
        return listing

    async def write_file(self, handle: SandboxHandle, path: str, data: bytes) -> None:
        """`sh` in the container copies `data` from its stdin into `path` (`write_by_exec`):
        unlike `put_archive`, it writes as the container's user, whatever its uid, and makes
        missing folders that user's too."""
        await write_by_exec(self, handle, path, data)

    # --- beyond the interface ------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the SDK client's connections. The provider can be used again afterwards."""
        client, self._client = self._client, None
        if client is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(client.close, limiter=self._limiter)

    # --- internals ----------------------------------------------------------------------------

    async def _create_once(
        self,
        api: Any,
        spec: SandboxSpec,
        image: str,
        env: dict[str, str],
        token: str,
        port: int | None,
        hidden: tuple[str, ...],
    ) -> SandboxHandle:
        needs_port = spec.protocol == "sandbox-agent"
        name = _container_name(spec.session_id)
        labels = {
            LABEL_SESSION: spec.session_id,
            LABEL_DAEMON: self._daemon_id,
            LABEL_AGENT: spec.agent,
            LABEL_PROTOCOL: spec.protocol,
            LABEL_CREATED_AT: datetime.now(UTC).isoformat(timespec="seconds"),
        }
        host_config = api.create_host_config(**self._host_config(needs_port, port))
        container_id: str | None = None
        try:
            created = await self._run(
                lambda: api.create_container(
                    image,
                    name=name,
                    environment=env,
                    labels=labels,
                    ports=[AGENT_PORT] if needs_port else None,
                    host_config=host_config,
                    detach=True,
                ),
                abandon=False,
                what=f"create a container from image {image}",
                hidden=hidden,
            )
            container_id = str(created["Id"])
            await self._run(
                api.start,
                container_id,
                abandon=False,
                what=f"start sandbox {name}",
                hidden=hidden,
            )
            state = await self._run(
                api.inspect_container,
                container_id,
                abandon=False,
                what=f"inspect sandbox {name}",
                hidden=hidden,
            )
            if not state.get("State", {}).get("Running"):
                raise await self._exited_at_once(api, name, container_id, state, hidden)
            host_port = _published_port(state, name) if needs_port else None
            # A cancel that arrived while the engine worked must not return a handle the caller
            # can no longer act on: remove the container and let the cancel through instead.
            await trio.lowlevel.checkpoint_if_cancelled()
        except BaseException as exc:
            # Cancelled can only come from before the create call's thread started (abandon is
            # False), so then there is nothing to remove; after any other failure of the create
            # call the engine may still have made the container, so it is removed by name.
            nothing_created = container_id is None and isinstance(exc, trio.Cancelled)
            if not nothing_created:
                await self._remove_after_failure(container_id or name, name)
            if isinstance(exc, _EngineError) and _is_port_conflict(exc):
                raise _PortTakenError(exc.explanation) from None
            if isinstance(exc, _EngineError) and exc.image_missing:
                raise SandboxError(
                    f"image {image} is not on this Docker engine; build it with "
                    "docker/build-image.sh or set docker.image"
                ) from None
            raise
        logger.info(
            "session %s: sandbox %s (%s) runs %s for agent %s%s",
            spec.session_id,
            name,
            _short(container_id),
            image,
            spec.agent,
            f" on {LOOPBACK}:{host_port}" if host_port is not None else "",
        )
        return SandboxHandle(
            id=container_id,
            session_id=spec.session_id,
            provider=self.name,
            endpoint=f"http://{LOOPBACK}:{host_port}" if host_port is not None else None,
            token=token,
            workdir=spec.workdir,
        )

    def _host_config(self, publish: bool, port: int | None) -> dict[str, Any]:
        config = self._config
        options: dict[str, Any] = {
            "network_mode": config.network,
            "privileged": False,
            "cap_drop": ["ALL"],
            "cap_add": list(config.cap_add),
            "security_opt": ["no-new-privileges:true"],
            # PID 1 reaps the zombies that agents and their tools leave behind.
            "init": True,
        }
        if config.memory_bytes:
            # Swap equal to memory: the limit is a limit, not a hint to start swapping.
            options["mem_limit"] = config.memory_bytes
            options["memswap_limit"] = config.memory_bytes
        if config.cpus:
            options["nano_cpus"] = round(config.cpus * 1e9)
        if config.pids_limit:
            options["pids_limit"] = config.pids_limit
        if publish:
            # On the loopback address only; a port of None lets Docker pick an ephemeral one.
            options["port_bindings"] = {AGENT_PORT: (LOOPBACK, port)}
        return options

    async def _exited_at_once(
        self, api: Any, name: str, container_id: str, state: Any, hidden: tuple[str, ...]
    ) -> SandboxError:
        details = state.get("State", {})
        try:
            raw = await self._run(
                lambda: api.logs(container_id, stdout=True, stderr=True, tail=20),
                abandon=True,
                what=f"read the logs of sandbox {name}",
                hidden=hidden,
            )
        except SandboxError:
            raw = b""
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else ""
        tail = redact(text.strip(), hidden)[-2000:]
        return SandboxError(
            f"sandbox {name} exited as soon as it started (exit code {details.get('ExitCode')})"
            + (f"; its last output:\n{tail}" if tail else "")
        )

    async def _owned_container(self, sandbox_id: str) -> str | None:
        """The full id of `sandbox_id` if it is this daemon's; None if it is gone (its port is
        released then). Raises SandboxError for anybody else's container."""
        api = await self._api()
        try:
            state = await self._run(
                api.inspect_container,
                sandbox_id,
                abandon=True,
                what=f"inspect sandbox {_short(sandbox_id)}",
            )
        except _EngineError as exc:
            if exc.status != 404:
                raise
            self._release_port(self._container_ports.pop(sandbox_id, None))
            self._redactions.pop(sandbox_id, None)
            return None
        owner = (state.get("Config", {}).get("Labels") or {}).get(LABEL_DAEMON)
        if owner != self._daemon_id:
            raise SandboxError(
                f"container {_short(sandbox_id)} is not a sandbox of this daemon "
                f"({LABEL_DAEMON} is {owner!r}, not {self._daemon_id!r}); not removing it"
            )
        return str(state["Id"])

    async def _remove(self, sandbox_id: str) -> None:
        """Force-remove a container (404 and "already in progress" count as done); release its
        port. Never abandoned once its thread runs; the caller shields and bounds it."""
        api = await self._api()
        try:
            await self._run(
                lambda: api.remove_container(sandbox_id, force=True, v=True),
                abandon=False,
                what=f"remove sandbox {_short(sandbox_id)}",
            )
        except _EngineError as exc:
            already = exc.status == 404 or (
                exc.status == 409 and "already in progress" in exc.explanation
            )
            if not already:
                raise
        self._release_port(self._container_ports.pop(sandbox_id, None))
        self._redactions.pop(sandbox_id, None)

    async def _remove_after_failure(self, target: str, name: str) -> None:
        with trio.move_on_after(self._cleanup_timeout, shield=True) as scope:
            try:
                await self._remove(target)
            except SandboxError as exc:
                logger.error("could not remove the half-made sandbox %s: %s", name, exc)
        if scope.cancelled_caught:
            logger.error(
                "gave up removing the half-made sandbox %s after %g s; the reaper will",
                name,
                self._cleanup_timeout,
            )

    async def _api(self) -> Any:
        if self._client is None:
            async with self._client_lock:
                if self._client is None:
                    self._client = await self._run(
                        self._client_factory, abandon=False, what="connect to the Docker engine"
                    )
        return self._client.api

    async def _run(
        self,
        fn: Callable[..., _T],
        *args: Any,
        abandon: bool,
        what: str,
        hidden: tuple[str, ...] = (),
    ) -> _T:
        """`fn(*args)` in a worker thread; SDK failures become `_EngineError` (a SandboxError).

        The SDK's exception is deliberately not chained: its request body holds the container's
        environment. The new error is raised outside the `except` block, so not even
        `__context__` refers to it.
        """
        error: _EngineError
        try:
            return await trio.to_thread.run_sync(
                fn, *args, limiter=self._limiter, abandon_on_cancel=abandon
            )
        except docker.errors.APIError as exc:
            reason = exc.response.reason if exc.response is not None else ""
            explanation = redact(_text(exc.explanation) or _text(reason), hidden)[:1000]
            status = exc.status_code
            error = _EngineError(
                f"could not {what}: Docker engine answered {status}: {explanation}",
                status,
                explanation,
                image_missing=isinstance(exc, docker.errors.ImageNotFound),
            )
        except requests.exceptions.Timeout:
            error = _EngineError(
                f"could not {what}: the Docker engine did not answer within {API_TIMEOUT:g} s"
            )
        except requests.exceptions.ConnectionError:
            error = _unreachable(what)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            if isinstance(exc.__cause__, requests.exceptions.ConnectionError):
                # The client's first call (the API version) found no engine.
                error = _unreachable(what)
            else:
                detail = redact(str(exc), hidden)[:500]
                error = _EngineError(f"could not {what}: {type(exc).__name__}: {detail}")
        raise error

    async def _exists(self, container_id: str) -> bool:
        api = await self._api()
        try:
            await self._run(
                api.inspect_container,
                container_id,
                abandon=True,
                what=f"inspect sandbox {_short(container_id)}",
            )
        except _EngineError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def _image_env(self, api: Any, image: object) -> dict[str, str]:
        """The environment an image sets ({} when the image is gone: then every variable of the
        container counts as injected, and is masked in its logs)."""
        if not image:
            return {}
        try:
            attrs = await self._run(
                api.inspect_image, str(image), abandon=True, what="inspect a sandbox's image"
            )
        except _EngineError:
            return {}
        return _env_dict((attrs.get("Config") or {}).get("Env"))

    def _release_port(self, port: int | None) -> None:
        if port is not None and self._ports is not None:
            self._ports.release(port)

    def _adopt_port(self, container_id: str, port: int) -> None:
        ports = self._ports
        if ports is not None and container_id not in self._container_ports and port in ports:
            ports.adopt(port)
            self._container_ports[container_id] = port


def _unreachable(what: str) -> _EngineError:
    return _EngineUnreachable(
        f"could not {what}: cannot reach the Docker engine "
        "(is dockerd running, and may this user use its socket?)",
        unreachable=True,
    )


def _environment(spec: SandboxSpec, token: str) -> dict[str, str]:
    """The container's environment: the agent's credentials, then the daemon's own variables
    (which win: config validation already keeps credentials out of ANYCODE_*)."""
    env = dict(spec.env)
    env["ANYCODE_AGENT"] = spec.agent
    env["ANYCODE_PROTOCOL"] = spec.protocol
    if spec.clone_repo:
        env["ANYCODE_REPO"] = spec.clone_repo
    if spec.seeded:
        env[WORKDIR_VARIABLE] = spec.workdir
    if token:
        env["ANYCODE_AGENT_TOKEN"] = token
    return env


def _env_dict(items: object) -> dict[str, str]:
    """Docker's ["NAME=value", ...] as a dict."""
    env: dict[str, str] = {}
    for item in items if isinstance(items, list) else ():
        name, _, value = str(item).partition("=")
        env[name] = value
    return env


class _ChunkReader(io.RawIOBase):
    """The chunks of an archive stream as the file object `tarfile` reads from; stops (with
    SandboxError) as soon as `stop` is set, so an abandoned worker thread ends soon."""

    def __init__(self, chunks: Iterator[bytes], stop: threading.Event) -> None:
        super().__init__()
        self._chunks = chunks
        self._stop = stop
        self._buffer = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._buffer:
            if self._stop.is_set():
                raise SandboxError("reading the archive was abandoned")
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._buffer = memoryview(chunk)
        size = min(len(buffer), len(self._buffer))
        buffer[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


def _read_archive(
    api: Any, container_id: str, path: str, max_bytes: int, stop: threading.Event
) -> OutboxListing | None:
    """In a worker thread: the listing of `path` from `get_archive`; None when the engine
    answers 404 (the path or the container is missing)."""
    try:
        chunks, stat = api.get_archive(container_id, path)
    except docker.errors.NotFound:
        return None
    mode = int(stat.get("mode") or 0) if isinstance(stat, dict) else 0
    if mode & _GO_MODE_SYMLINK or not mode & _GO_MODE_DIR:
        chunks.close()
        return OutboxListing()
    files: dict[str, SandboxFile] = {}
    too_big: dict[str, int] = {}
    # Member name → its name relative to `path`, for the regular files seen, for hard links.
    seen: dict[str, str] = {}
    # Listed name → the name of the regular member holding its data: a hard link is a LNKTYPE
    # member naming the first member of its file, its data not repeated (ustar typeflag '1',
    # LNKTYPE: https://pubs.opengroup.org/onlinepubs/9699919799/utilities/pax.html).
    identities: dict[str, str] = {}
    try:
        with tarfile.open(
            fileobj=_ChunkReader(chunks, stop), mode="r|", bufsize=_TAR_BUFFER
        ) as archive:
            for member in archive:
                relative = _relative_member_name(member.name)
                if relative is None:
                    continue
                if member.isreg():
                    seen[member.name] = relative
                    identities[relative] = relative
                    if member.size > max_bytes:
                        too_big[relative] = member.size
                        continue
                    extracted = archive.extractfile(member)
                    if extracted is not None:
                        files[relative] = SandboxFile(relative, extracted.read())
                elif member.islnk() and member.linkname in seen:
                    original = seen[member.linkname]
                    identities[relative] = original
                    if original in files:
                        files[relative] = SandboxFile(relative, files[original].data)
                    elif original in too_big:
                        too_big[relative] = too_big[original]
    except (tarfile.TarError, urllib3.exceptions.HTTPError, OSError) as exc:
        raise SandboxError(
            f"could not read {path} from sandbox {_short(container_id)}: "
            f"{type(exc).__name__}: {str(exc)[:300]}"
        ) from None
    finally:
        chunks.close()
    return OutboxListing(
        tuple(files[name] for name in sorted(files)),
        tuple(sorted(too_big.items())),
        hard_links({name: identities[name] for name in (*files, *too_big)}),
    )


def _relative_member_name(name: str) -> str | None:
    """A member's name without the archive's first component (the folder itself, named as the
    path's last component, or "." for a path ending in "/."); None for the folder, and for
    names that would lead out of it."""
    _, separator, rest = name.partition("/")
    parts = [part for part in rest.split("/") if part not in ("", ".")]
    if not separator or name.startswith("/") or not parts or ".." in parts:
        return None
    return "/".join(parts)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return "" if value is None else str(value)


def _is_port_conflict(error: _EngineError) -> bool:
    explanation = error.explanation.lower()
    return any(marker in explanation for marker in _PORT_TAKEN_MARKERS)


def _published_port(state: Any, name: str) -> int:
    bindings = (state.get("NetworkSettings", {}).get("Ports") or {}).get(f"{AGENT_PORT}/tcp")
    for binding in bindings or ():
        if binding.get("HostIp") == LOOPBACK and binding.get("HostPort"):
            return int(binding["HostPort"])
    raise SandboxError(f"sandbox {name} runs, but Docker published no {LOOPBACK} port for it")


def _container_name(session_id: str) -> str:
    session = _NAME_UNSAFE.sub("", session_id)[:8] or "session"
    return f"anycode-{session}-{secrets.token_hex(3)}"


def _short(container_id: str) -> str:
    return container_id[:12]


def _iso_from_epoch(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return ""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def docker_stop_reason(inspected: Mapping[str, Any]) -> str:
    """Why a container whose inspect data is `inspected` stopped, for the user ("" if it runs)."""
    state = inspected.get("State") or {}
    if state.get("Running"):
        return ""
    if state.get("OOMKilled"):
        limit = (inspected.get("HostConfig") or {}).get("Memory") or 0
        return (
            f"it ran out of memory (limit {_mebibytes(limit)})" if limit else "it ran out of memory"
        )
    code = state.get("ExitCode")
    if code == 137:
        return "it was killed (SIGKILL)"
    return f"its main process exited with code {code}" if code is not None else ""


def _oom_kills(memory_events: str) -> int:
    """The `oom_kill` count of a cgroup's memory events (0 if absent)."""
    for line in memory_events.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return 0


def _mebibytes(size: int) -> str:
    return (
        f"{size / 2**30:g} GiB" if size >= 2**30 and size % 2**30 == 0 else f"{size // 2**20} MiB"
    )
