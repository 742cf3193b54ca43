"""The ecs provider: one Fargate task per session, driven through boto3 in worker threads.

boto3 blocks, so every call runs in `trio.to_thread.run_sync` under one capacity limiter per
provider. Calls that change the world (RunTask, StopTask) are never abandoned when cancelled:
RunTask's answer is always seen, so the task it started can always be stopped. Read-only calls
(DescribeTasks, DescribeNetworkInterfaces, GetLogEvents, ...) may be abandoned.

Life of a sandbox:

1. `create`: RunTask (FARGATE, awsvpc) with the agent's credentials and the ANYCODE_* variables as
   container overrides, `startedBy` and tags naming this daemon, and a fresh clientToken. Then
   DescribeTasks every `poll_interval_ms` until the task is RUNNING (STOPPED first: an error with
   ECS's stopped reason; nothing within `startup_timeout_secs`: the task is stopped and an error
   raised), and the agent's address from the task's network interface: its private IP, or its
   public IP with `ecs.assign_public_ip` (off by default: the daemon speaks plain HTTP to
   sandbox-agent, so a public IP puts that traffic on the internet unencrypted, which the provider
   warns about when it starts). Whatever goes wrong after RunTask, cancellation included, the
   task is stopped in a shielded, bounded scope.
2. `destroy`: StopTask, unless the task is already STOPPED or gone; shielded and bounded, and
   refused for a task whose `anycode.daemon` tag names another daemon.
3. `logs`: the tail of the task's CloudWatch stream (the awslogs driver names it
   `{prefix}/{container}/{task id}`), with the credentials this provider injected masked.
4. `list`: the tasks that this daemon started and that are meant to run (for the reaper).
5. `reattach` (after a daemon restart): the handle again, from ECS alone: the session from the
   task's tags, the token and the repo from the environment in its container overrides, the
   address as `create` finds it. The daemon stores no token.
6. `read_files`: through sandbox-agent's filesystem API (`agent_fs`), with the handle's endpoint
   and token: ECS itself has no way to read a file out of a task.

ECS cannot run a process inside a task with piped stdio (ECS Exec is an interactive SSM session),
so the stdio protocols (acp, acpx) are not available: `exec` always raises. Config validation
already rejects them with ecs; the check here is a second line of defence.

Secrets: the environment handed to a task is never logged and never put in an error message
(error messages carry AWS's error code and message, with every injected value masked anyway).
DescribeTasks answers carry it too (as the task's overrides), so task descriptions are never
logged either. botocore itself logs whole request and response bodies at DEBUG: keep the
`botocore` loggers at INFO or above wherever secrets matter.
"""

from __future__ import annotations

import functools
import logging
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import boto3
import trio
from botocore.config import Config as BotocoreConfig
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from anycode_actors.config import EcsConfig
from anycode_actors.sandboxes._redaction import redact, secret_values
from anycode_actors.sandboxes.agent_fs import (
    read_files_via_sandbox_agent,
    write_file_via_sandbox_agent,
)
from anycode_actors.sandboxes.base import (
    LABEL_AGENT,
    LABEL_CREATED_AT,
    LABEL_DAEMON,
    LABEL_SESSION,
    WORKDIR_VARIABLE,
    AgentProcess,
    OutboxListing,
    SandboxError,
    SandboxHandle,
    SandboxInfo,
    SandboxSpec,
    new_agent_token,
    workdir_from_env,
)

__all__ = [
    "CLEANUP_TIMEOUT",
    "EXEC_UNSUPPORTED",
    "LOGS_NOT_CONFIGURED",
    "STOP_REASON",
    "TAG_AGENT",
    "TAG_CREATED_AT",
    "TAG_DAEMON",
    "TAG_SESSION",
    "EcsProvider",
    "started_by_for",
]

logger = logging.getLogger(__name__)

# Worker threads one provider may occupy at once (ECS throttles RunTask at 20 calls/s anyway).
MAX_CONCURRENT_CALLS: Final = 8
# DescribeTasks is rate limited; config validation enforces the same floor.
MIN_POLL_INTERVAL_MS: Final = 250
# Seconds `destroy` (shielded) may take before it gives up and leaves the task to the reaper.
# StopTask itself is never abandoned: once sent, botocore's timeouts (DEFAULT_CLIENT_CONFIG)
# are what bound it.
CLEANUP_TIMEOUT: Final = 30.0
STOP_REASON: Final = "anycode cleanup"
# ECS allows startedBy up to 36 letters, digits, "-", "/" and "_".
STARTED_BY_PREFIX: Final = "anycode-"
STARTED_BY_MAX_LENGTH: Final = 36
# Tags carry the same names as Docker labels; `list` prefers ECS's own createdAt to TAG_CREATED_AT.
TAG_SESSION: Final = LABEL_SESSION
TAG_DAEMON: Final = LABEL_DAEMON
TAG_AGENT: Final = LABEL_AGENT
TAG_CREATED_AT: Final = LABEL_CREATED_AT
# GetLogEvents returns at most 10,000 events per call.
MAX_LOG_EVENTS: Final = 10_000
# DescribeTasks takes at most 100 tasks per call.
DESCRIBE_BATCH: Final = 100
LOGS_NOT_CONFIGURED: Final = "CloudWatch logs are not configured (ecs.log_group missing)."
EXEC_UNSUPPORTED: Final = (
    "the ecs provider runs sandbox-agent only; protocols acp/acpx need docker or local"
)
# Retries in botocore's standard mode cover throttling and transient errors; the timeouts bound
# every call, including the ones that are never abandoned.
DEFAULT_CLIENT_CONFIG: Final = BotocoreConfig(
    retries={"mode": "standard", "max_attempts": 4},
    connect_timeout=10,
    read_timeout=30,
    user_agent_extra="anycode-actors",
)

_STARTED_BY_INVALID: Final = re.compile(r"[^A-Za-z0-9_/-]")
# The daemon's own variables in a task's environment that are no credentials (masked otherwise).
_PLAIN_VARIABLES: Final = frozenset(
    {"ANYCODE_AGENT", "ANYCODE_PROTOCOL", "ANYCODE_AGENT_PORT", "ANYCODE_REPO", WORKDIR_VARIABLE}
)


def started_by_for(daemon_id: str) -> str:
    """The `startedBy` value of this daemon's tasks: `anycode-` and as much of the id as fits.

    Two daemons whose ids share the first 28 characters get the same value; `list` therefore
    also checks the `anycode.daemon` tag.
    """
    cleaned = _STARTED_BY_INVALID.sub("-", daemon_id)
    return (STARTED_BY_PREFIX + cleaned)[:STARTED_BY_MAX_LENGTH]


class _AwsError(SandboxError):
    """An AWS call failed; `code` is AWS's error code when AWS answered."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class _Clients:
    ecs: Any
    ec2: Any
    logs: Any


class EcsProvider:
    """Sandboxes as ECS Fargate tasks. One instance per daemon; safe to share between actors.

    `session` and `client_options` decide how boto3 reaches AWS: the default is a plain
    `boto3.Session()` (the usual credential chain) and the region from `config.region`. Tests
    pass a session with explicit credentials and `client_options={"endpoint_url": ...}`; any
    `config` in `client_options` is merged over `DEFAULT_CLIENT_CONFIG`.
    """

    name: str = "ecs"
    can_exec: bool = False

    def __init__(
        self,
        config: EcsConfig,
        daemon_id: str,
        *,
        session: boto3.session.Session | None = None,
        client_options: Mapping[str, Any] | None = None,
        limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        self._config = config
        self._daemon_id = daemon_id
        self._started_by = started_by_for(daemon_id)
        self._session = session
        self._client_options = dict(client_options or {})
        self._limiter = (
            limiter if limiter is not None else trio.CapacityLimiter(MAX_CONCURRENT_CALLS)
        )
        self._poll_interval = max(config.poll_interval_ms, MIN_POLL_INTERVAL_MS) / 1000
        self._clients: _Clients | None = None
        self._clients_lock = trio.Lock()
        # Task definition (as given, or an ARN) → the name of its first container.
        self._container_names: dict[str, str] = {}
        # Task ARN → credential values to mask in its logs (tasks created by this instance).
        self._redactions: dict[str, tuple[str, ...]] = {}
        if config.assign_public_ip:
            # Once per provider, which the daemon makes once when it starts.
            logger.warning(
                "ecs.assign_public_ip is on: the daemon connects to each task's public IP, and "
                "its traffic to sandbox-agent (the agent token, prompts, code, the agent's "
                "output) is unencrypted plain HTTP over the internet. Turn it off and run the "
                "daemon inside the tasks' VPC (or reach the VPC through a VPN)"
            )

    @property
    def daemon_id(self) -> str:
        return self._daemon_id

    @property
    def started_by(self) -> str:
        """The `startedBy` of this daemon's tasks (see `started_by_for`)."""
        return self._started_by

    # --- the SandboxProvider interface ----------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> SandboxHandle:
        if spec.protocol != "sandbox-agent":
            raise SandboxError(EXEC_UNSUPPORTED)
        token = new_agent_token()
        hidden = secret_values([*spec.env.values(), token])
        try:
            handle = await self._create(spec, token)
        except SandboxError as exc:
            # AWS's messages are not expected to echo request values; make sure anyway.
            message = redact(str(exc), hidden)
            if message == str(exc):
                raise
            raise SandboxError(message) from None
        self._redactions[handle.id] = hidden
        return handle

    async def destroy(self, sandbox_id: str) -> None:
        """Stop the task. Idempotent: a task already STOPPED or unknown to ECS is fine.

        Shielded, so it completes inside a cancelled caller, and bounded by `CLEANUP_TIMEOUT`.
        A task whose `anycode.daemon` tag names another daemon is refused.
        """
        with trio.move_on_after(CLEANUP_TIMEOUT, shield=True) as scope:
            await self._stop(sandbox_id)
        if scope.cancelled_caught:
            raise SandboxError(
                f"could not stop ecs task {_task_id(sandbox_id)} within {CLEANUP_TIMEOUT:g} s "
                "(AWS is slow to answer); it keeps its startedBy and tags, so the reaper stops "
                "it later"
            )

    async def is_alive(self, sandbox_id: str) -> bool:
        task = await self._describe_task(sandbox_id)
        return task is not None and task.get("lastStatus") != "STOPPED"

    async def failure_reason(self, sandbox_id: str) -> str:
        """From the task's `stoppedReason` and its containers' `reason`, which say
        "OutOfMemoryError" for a container killed for memory (see
        https://docs.aws.amazon.com/AmazonECS/latest/developerguide/stopped-task-error-codes.html)."""
        task = await self._describe_task(sandbox_id)
        if task is None:
            return "its task is gone"
        if task.get("lastStatus") != "STOPPED":
            return ""
        reasons = [str(c.get("reason", "")) for c in task.get("containers", [])]
        if any("OutOfMemory" in reason for reason in reasons):
            return "it ran out of memory"
        stopped = str(task.get("stoppedReason", ""))
        return f"its task stopped: {stopped}" if stopped else "its task stopped"

    async def logs(self, sandbox_id: str, tail: int = 200) -> str:
        log_group = self._config.log_group
        if not log_group:
            return LOGS_NOT_CONFIGURED
        if tail <= 0:
            return ""
        container = await self._container_of(sandbox_id)
        stream = f"{container}/{_task_id(sandbox_id)}"
        if self._config.log_stream_prefix:
            stream = f"{self._config.log_stream_prefix}/{stream}"
        hidden = self._redactions.get(sandbox_id, ())
        clients = await self._aws()
        try:
            response = await self._call(
                "get_log_events",
                clients.logs.get_log_events,
                abandon=True,
                logGroupName=log_group,
                logStreamName=stream,
                limit=min(tail, MAX_LOG_EVENTS),
                startFromHead=False,
            )
        except _AwsError as exc:
            if exc.code == "ResourceNotFoundException":
                return ""
            raise
        text = "\n".join(event.get("message", "") for event in response.get("events", []))
        return redact(text, hidden)

    async def list(self) -> list[SandboxInfo]:
        """The tasks this daemon started whose desired status is RUNNING (stopping ones are left
        out: they are already going away)."""
        clients = await self._aws()

        def list_task_arns() -> list[str]:
            pages = clients.ecs.get_paginator("list_tasks").paginate(
                cluster=self._config.cluster, startedBy=self._started_by, desiredStatus="RUNNING"
            )
            return [arn for page in pages for arn in page.get("taskArns", [])]

        arns = await self._call("list_tasks", list_task_arns, abandon=True)
        found: list[SandboxInfo] = []
        for start in range(0, len(arns), DESCRIBE_BATCH):
            response = await self._call(
                "describe_tasks",
                clients.ecs.describe_tasks,
                abandon=True,
                cluster=self._config.cluster,
                tasks=arns[start : start + DESCRIBE_BATCH],
                include=["TAGS"],
            )
            for task in response.get("tasks", []):
                tags = _tags(task)
                if tags.get(TAG_DAEMON) != self._daemon_id:
                    continue  # another daemon whose id starts like ours
                found.append(
                    SandboxInfo(
                        id=task["taskArn"],
                        session_id=tags.get(TAG_SESSION, ""),
                        agent=tags.get(TAG_AGENT, ""),
                        alive=task.get("lastStatus") != "STOPPED",
                        created_at=_iso_utc(task.get("createdAt")) or tags.get(TAG_CREATED_AT, ""),
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
        """Always raises: ECS has no way to run a process in a task with piped stdin/stdout."""
        raise SandboxError(EXEC_UNSUPPORTED)

    async def reattach(self, sandbox_id: str) -> SandboxHandle | None:
        """The handle of this daemon's RUNNING task `sandbox_id`, rebuilt from ECS alone.

        The session comes from the task's tags, the token and the repo (which decides the
        workdir) from the environment in its container overrides, the endpoint from its network
        interface as in `create`. None for a task ECS does not know, one whose `anycode.daemon`
        tag names another daemon, and one that is not RUNNING or is being stopped. (A task still
        starting belongs to no session: `create` never returned its handle.)
        """
        task = await self._describe_task(sandbox_id, with_tags=True)
        if task is None:
            return None
        tags = _tags(task)
        if tags.get(TAG_DAEMON) != self._daemon_id:
            return None
        if task.get("lastStatus") != "RUNNING" or task.get("desiredStatus") == "STOPPED":
            return None
        task_arn = str(task["taskArn"])
        env = _override_environment(task)
        token = env.get("ANYCODE_AGENT_TOKEN")
        if not token:
            raise SandboxError(
                f"ecs task {_task_id(task_arn)} is a sandbox of this daemon, but its overrides "
                "carry no ANYCODE_AGENT_TOKEN; it cannot be reattached"
            )
        endpoint = await self._endpoint_of(task)
        self._redactions[task_arn] = secret_values(
            value for name, value in env.items() if name not in _PLAIN_VARIABLES
        )
        logger.info(
            "ecs task %s reattached for session %s; sandbox-agent at %s",
            _task_id(task_arn),
            tags.get(TAG_SESSION, ""),
            endpoint,
        )
        return SandboxHandle(
            id=task_arn,
            session_id=tags.get(TAG_SESSION, ""),
            provider=self.name,
            endpoint=endpoint,
            token=token,
            workdir=workdir_from_env(env),
        )

    async def read_files(
        self, handle: SandboxHandle, path: str, *, max_bytes: int
    ) -> OutboxListing:
        """The regular files under `path` in the task, through sandbox-agent's filesystem API.

        ECS cannot run a command in a task with piped output, nor copy files out of one, so this
        goes to the sandbox-agent of the handle (its endpoint, its token): see `agent_fs` for
        the routes, for how symbolic links are told apart without an lstat route, and why hard
        links are told by identical content.
        """
        if not handle.endpoint or not handle.token:
            raise SandboxError(
                f"ecs sandbox {_task_id(handle.id)} has no sandbox-agent endpoint to read "
                "files through"
            )
        return await read_files_via_sandbox_agent(handle.endpoint, handle.token, path, max_bytes)

    async def write_file(self, handle: SandboxHandle, path: str, data: bytes) -> None:
        """Through the sandbox-agent of the handle (`agent_fs`): ECS cannot pipe into a command
        in a task."""
        if not handle.endpoint or not handle.token:
            raise SandboxError(
                f"ecs sandbox {_task_id(handle.id)} has no sandbox-agent endpoint to write "
                "files through"
            )
        await write_file_via_sandbox_agent(handle.endpoint, handle.token, path, data)

    # --- create, step by step -------------------------------------------------------------------

    async def _create(self, spec: SandboxSpec, token: str) -> SandboxHandle:
        task_definition = spec.image or self._config.task_definition
        container = await self._container_name(task_definition)
        clients = await self._aws()
        request = self._run_task_request(spec, task_definition, container, token)
        # Never abandoned and shielded: if a task was started, its ARN must come back so that the
        # cleanup below can stop it.
        with trio.CancelScope(shield=True):
            response = await self._call("run_task", clients.ecs.run_task, abandon=False, **request)
        tasks = response.get("tasks") or []
        if not tasks:
            raise SandboxError(f"ecs run_task failed: {_failures_text(response.get('failures'))}")
        task_arn: str = tasks[0]["taskArn"]
        logger.info("ecs task %s started for session %s", _task_id(task_arn), spec.session_id)
        try:
            endpoint = await self._wait_until_reachable(task_arn)
        except BaseException:
            await self._stop_after_failed_start(task_arn)
            raise
        logger.info("ecs task %s is running; sandbox-agent at %s", _task_id(task_arn), endpoint)
        return SandboxHandle(
            id=task_arn,
            session_id=spec.session_id,
            provider=self.name,
            endpoint=endpoint,
            token=token,
            workdir=spec.workdir,
        )

    def _run_task_request(
        self, spec: SandboxSpec, task_definition: str, container: str, token: str
    ) -> dict[str, Any]:
        env = dict(spec.env)
        # The daemon's own variables win over anything of the same name in the credentials.
        env.update(
            ANYCODE_AGENT=spec.agent,
            ANYCODE_PROTOCOL=spec.protocol,
            ANYCODE_AGENT_TOKEN=token,
            ANYCODE_AGENT_PORT=str(self._config.container_port),
        )
        if spec.clone_repo:
            env["ANYCODE_REPO"] = spec.clone_repo
        if spec.seeded:
            env[WORKDIR_VARIABLE] = spec.workdir
        request: dict[str, Any] = {
            "cluster": self._config.cluster,
            "taskDefinition": task_definition,
            "launchType": "FARGATE",
            "count": 1,
            "networkConfiguration": {
                "awsvpcConfiguration": {
                    "subnets": list(self._config.subnets),
                    "securityGroups": list(self._config.security_groups),
                    "assignPublicIp": "ENABLED" if self._config.assign_public_ip else "DISABLED",
                }
            },
            "overrides": {
                "containerOverrides": [
                    {
                        "name": container,
                        "environment": [{"name": k, "value": v} for k, v in env.items()],
                    }
                ]
            },
            "startedBy": self._started_by,
            "tags": [
                {"key": TAG_SESSION, "value": spec.session_id},
                {"key": TAG_DAEMON, "value": self._daemon_id},
                {"key": TAG_AGENT, "value": spec.agent},
                {"key": TAG_CREATED_AT, "value": _iso_utc(datetime.now(UTC))},
            ],
            # Makes botocore's own retries of this call idempotent: one task, however many tries.
            "clientToken": str(uuid.uuid4()),
        }
        if self._config.platform_version:
            request["platformVersion"] = self._config.platform_version
        return request

    async def _wait_until_reachable(self, task_arn: str) -> str:
        """Poll until the task runs, then return its sandbox-agent URL."""
        timeout = self._config.startup_timeout_secs
        last_status = "not yet visible"
        try:
            with trio.fail_after(timeout):
                while True:
                    # Right after RunTask, DescribeTasks may not know the task yet (eventual
                    # consistency): keep polling.
                    task = await self._describe_task(task_arn)
                    if task is not None:
                        status = str(task.get("lastStatus", "UNKNOWN"))
                        if status != last_status:
                            logger.debug("ecs task %s status %s", _task_id(task_arn), status)
                            last_status = status
                        if status == "STOPPED":
                            raise SandboxError(
                                f"ecs task {_task_id(task_arn)} stopped before it was running: "
                                f"{_stopped_reason(task)}"
                            )
                        if status == "RUNNING":
                            return await self._endpoint_of(task)
                    await trio.sleep(self._poll_interval)
        except trio.TooSlowError:
            raise SandboxError(
                f"ecs task {_task_id(task_arn)} was not running within {timeout} s "
                f"(last status: {last_status}); it has been stopped "
                "(raise ecs.startup_timeout_secs if Fargate needs longer)"
            ) from None

    async def _endpoint_of(self, task: Mapping[str, Any]) -> str:
        details: dict[str, str] = {}
        for attachment in task.get("attachments", []):
            if attachment.get("type") == "ElasticNetworkInterface":
                details.update(
                    {d["name"]: d.get("value", "") for d in attachment.get("details", [])}
                )
        private_ip = details.get("privateIPv4Address")
        public_ip = None
        interface_id = details.get("networkInterfaceId")
        if interface_id:
            clients = await self._aws()
            response = await self._call(
                "describe_network_interfaces",
                clients.ec2.describe_network_interfaces,
                abandon=True,
                NetworkInterfaceIds=[interface_id],
            )
            for interface in response.get("NetworkInterfaces", [])[:1]:
                public_ip = interface.get("Association", {}).get("PublicIp")
                private_ip = interface.get("PrivateIpAddress") or private_ip
        task_id = _task_id(task["taskArn"])
        if self._config.assign_public_ip and public_ip:
            address = public_ip
        else:
            if self._config.assign_public_ip:
                logger.warning(
                    "ecs task %s has no public IP although ecs.assign_public_ip is on; "
                    "using its private IP",
                    task_id,
                )
            address = private_ip
        if not address:
            raise SandboxError(
                f"ecs task {task_id} is running but has no network interface address "
                "(does its task definition use networkMode awsvpc?)"
            )
        return f"http://{address}:{self._config.container_port}"

    async def _stop_after_failed_start(self, task_arn: str) -> None:
        try:
            await self.destroy(task_arn)
        except SandboxError as exc:
            # The original failure matters more; the reaper finds the task by startedBy.
            logger.error("ecs task %s could not be stopped: %s", _task_id(task_arn), exc)

    async def _stop(self, task_arn: str) -> None:
        task = await self._describe_task(task_arn, with_tags=True)
        if task is None or task.get("lastStatus") == "STOPPED":
            self._redactions.pop(task_arn, None)
            return
        tags = _tags(task)
        if tags.get(TAG_DAEMON) != self._daemon_id:
            raise SandboxError(
                f"ecs task {_task_id(task_arn)} is not a sandbox of this daemon "
                f"({TAG_DAEMON} is {tags.get(TAG_DAEMON)!r}, not {self._daemon_id!r}); "
                "not stopping it"
            )
        clients = await self._aws()
        try:
            await self._call(
                "stop_task",
                clients.ecs.stop_task,
                abandon=False,
                cluster=self._config.cluster,
                task=task_arn,
                reason=STOP_REASON,
            )
        except _AwsError as exc:
            # Gone between DescribeTasks and StopTask.
            if not (exc.code == "InvalidParameterException" and "not found" in str(exc).lower()):
                raise
        self._redactions.pop(task_arn, None)
        logger.info("ecs task %s: stop requested", _task_id(task_arn))

    # --- AWS plumbing ---------------------------------------------------------------------------

    async def _describe_task(
        self, task_arn: str, *, with_tags: bool = False
    ) -> dict[str, Any] | None:
        """The task's description, or None when ECS does not know it (MISSING)."""
        clients = await self._aws()
        include = {"include": ["TAGS"]} if with_tags else {}
        response = await self._call(
            "describe_tasks",
            clients.ecs.describe_tasks,
            abandon=True,
            cluster=self._config.cluster,
            tasks=[task_arn],
            **include,
        )
        wanted = _task_id(task_arn)
        for task in response.get("tasks", []):
            if _task_id(task.get("taskArn", "")) == wanted:
                return dict(task)
        return None

    async def _container_of(self, task_arn: str) -> str:
        """The container whose logs are the task's logs: configured, or the first one of the
        task's own task definition (which may differ from the configured one)."""
        if self._config.container_name:
            return self._config.container_name
        task = await self._describe_task(task_arn)
        definition = task.get("taskDefinitionArn") if task is not None else None
        return await self._container_name(definition or self._config.task_definition)

    async def _container_name(self, task_definition: str) -> str:
        if self._config.container_name:
            return self._config.container_name
        cached = self._container_names.get(task_definition)
        if cached is not None:
            return cached
        clients = await self._aws()
        response = await self._call(
            "describe_task_definition",
            clients.ecs.describe_task_definition,
            abandon=True,
            taskDefinition=task_definition,
        )
        definitions = response.get("taskDefinition", {}).get("containerDefinitions") or []
        if not definitions:
            raise SandboxError(f"ecs task definition {task_definition} has no container definition")
        name: str = definitions[0]["name"]
        self._container_names[task_definition] = name
        return name

    async def _aws(self) -> _Clients:
        async with self._clients_lock:
            if self._clients is None:
                self._clients = await self._call(
                    "create clients", self._make_clients, abandon=False
                )
            return self._clients

    def _make_clients(self) -> _Clients:
        # Runs in a worker thread: sessions load their data files from disk.
        session = self._session if self._session is not None else boto3.session.Session()
        options = dict(self._client_options)
        options["config"] = (
            DEFAULT_CLIENT_CONFIG.merge(options["config"])
            if "config" in options
            else DEFAULT_CLIENT_CONFIG
        )
        if self._config.region:
            options["region_name"] = self._config.region
        return _Clients(
            ecs=session.client("ecs", **options),
            ec2=session.client("ec2", **options),
            logs=session.client("logs", **options),
        )

    async def _call(
        self, what: str, function: Callable[..., Any], *, abandon: bool, **kwargs: Any
    ) -> Any:
        """Run one blocking boto3 call in a worker thread; turn its failures into safe errors.

        The messages carry AWS's error code and message, never the request's parameters.
        """
        try:
            return await trio.to_thread.run_sync(
                functools.partial(function, **kwargs),
                abandon_on_cancel=abandon,
                limiter=self._limiter,
            )
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code") or "UnknownError")
            message = str(error.get("Message") or "no message")
            raise _AwsError(f"ecs {what} failed: {code}: {message}", code) from None
        except ParamValidationError:
            # Its text quotes the offending parameter values, which may be credentials.
            raise _AwsError(f"ecs {what} failed: boto3 rejected the request parameters") from None
        except BotoCoreError as exc:
            raise _AwsError(f"ecs {what} failed: {exc}") from None


# --- small helpers -------------------------------------------------------------------------------


def _task_id(task_arn: str) -> str:
    return task_arn.rsplit("/", 1)[-1]


def _failures_text(failures: Any) -> str:
    parts = []
    for failure in failures or []:
        text = str(failure.get("reason") or "unknown reason")
        if failure.get("detail"):
            text += f" ({failure['detail']})"
        if failure.get("arn"):
            text = f"{failure['arn']}: {text}"
        parts.append(text)
    return "; ".join(parts) or "no task started and no failure reported"


def _stopped_reason(task: Mapping[str, Any]) -> str:
    parts = [str(task["stoppedReason"])] if task.get("stoppedReason") else []
    if task.get("stopCode"):
        parts.append(f"stop code {task['stopCode']}")
    parts.extend(
        f"container {c.get('name', '?')}: {c['reason']}"
        for c in task.get("containers", [])
        if c.get("reason")
    )
    return "; ".join(parts) or "no reason given"


def _override_environment(task: Mapping[str, Any]) -> dict[str, str]:
    """The environment the daemon gave the task's containers in RunTask's overrides."""
    env: dict[str, str] = {}
    for override in (task.get("overrides") or {}).get("containerOverrides") or []:
        for item in override.get("environment") or []:
            if "name" in item:
                env[str(item["name"])] = str(item.get("value", ""))
    return env


def _tags(task: Mapping[str, Any]) -> dict[str, str]:
    return {str(tag.get("key")): str(tag.get("value", "")) for tag in task.get("tags", [])}


def _iso_utc(value: Any) -> str:
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return moment.astimezone(UTC).isoformat(timespec="microseconds")
    return ""
