"""The ecs provider against moto's server mode, started by these tests on 127.0.0.1.

moto stands in for ECS, EC2 and CloudWatch Logs over real HTTP; its state manager moves tasks
through PROVISIONING → PENDING → ACTIVATING → RUNNING → … → STOPPED (see tests/fakes/moto_server.py
for the one thing changed in moto to get the states before RUNNING). Real time, short polls.

Where moto lacks a behaviour, the test says so and covers the path another honest way:
- moto's RunTask never reports `failures` (it always answers `"failures": []`): a small real HTTP
  stand-in speaking ECS's JSON protocol answers RunTask as ECS does when Fargate has no capacity.
- moto never stops a task by itself with a reason (it pulls no images): the test stops a pending
  task through StopTask with the reason ECS would give, as ECS does.
- moto ignores `assignPublicIp` (a Fargate task's ENI never gets a public IP): the test associates
  an Elastic IP with the task's ENI right after RunTask, which is what ENABLED does in AWS.
- moto does not record RunTask's `clientToken`: the tests read it from the request as botocore
  builds it (a `before-parameter-build` event handler on the boto3 session).
"""

from __future__ import annotations

import copy
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import trio
from botocore.config import Config as BotocoreConfig
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from anycode_actors.actors.checkpoint import (
    CheckpointTooBig,
    checkpoint_names,
    restore_checkpoint,
    take_checkpoint,
)
from anycode_actors.config import EcsConfig
from anycode_actors.sandboxes.base import (
    OutboxListing,
    SandboxError,
    SandboxFile,
    SandboxHandle,
    SandboxSpec,
)
from anycode_actors.sandboxes.ecs import (
    EXEC_UNSUPPORTED,
    LOGS_NOT_CONFIGURED,
    STOP_REASON,
    EcsProvider,
    started_by_for,
)
from tests.fakes._http import serve_asgi
from tests.fakes.moto_server import (
    REGION,
    EcsWorld,
    MotoServer,
    seed_ecs_world,
    start_moto_server,
)
from tests.test_sandboxes_agent_fs import running_sandbox_agent

SECRET = f"sk-ant-test-{uuid.uuid4().hex}"
# Enough describes to keep a task in its current status for the rest of a test.
FOREVER = 10**6
WAIT = 10.0  # bound of every wait in these tests


@pytest.fixture(scope="module")
def aws() -> Iterator[tuple[MotoServer, EcsWorld]]:
    server = start_moto_server()
    try:
        yield server, seed_ecs_world(server)
    finally:
        server.stop()


@pytest.fixture
def moto(aws: tuple[MotoServer, EcsWorld]) -> Iterator[MotoServer]:
    server, _ = aws
    yield server
    server.unset_task_transition()


@pytest.fixture
def world(aws: tuple[MotoServer, EcsWorld]) -> EcsWorld:
    return aws[1]


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="anycode_actors")
    return caplog


def make_provider(
    moto: MotoServer,
    world: EcsWorld,
    *,
    daemon_id: str | None = None,
    session: Any = None,
    endpoint_url: str | None = None,
    **overrides: Any,
) -> EcsProvider:
    settings: dict[str, Any] = {
        "cluster": world.cluster,
        "task_definition": world.task_definition,
        "subnets": (world.subnet_id,),
        "security_groups": (world.security_group_id,),
        # assign_public_ip: its default (off), unless a test overrides it.
        "poll_interval_ms": 250,
        "startup_timeout_secs": 10,
        "region": REGION,
        "log_group": world.log_group,
        "log_stream_prefix": world.log_stream_prefix,
    }
    settings.update(overrides)
    return EcsProvider(
        EcsConfig(**settings),
        daemon_id or f"daemon-{uuid.uuid4().hex}",
        session=session if session is not None else moto.session(),
        client_options={"endpoint_url": endpoint_url or moto.endpoint_url},
    )


def make_spec(**changes: Any) -> SandboxSpec:
    values: dict[str, Any] = {
        "session_id": uuid.uuid4().hex,
        "agent": "claude",
        "protocol": "sandbox-agent",
        "env": {"ANTHROPIC_API_KEY": SECRET, "ANYCODE_AGENT": "overridden"},
        "repo": "https://github.com/org/repo",
    }
    values.update(changes)
    return SandboxSpec(**values)


async def call(moto: MotoServer, service: str, operation: str, **params: Any) -> Any:
    client = moto.client(service)
    return await trio.to_thread.run_sync(lambda: getattr(client, operation)(**params))


async def describe(moto: MotoServer, world: EcsWorld, task_arn: str) -> dict[str, Any]:
    """The task as ECS reports it (note: every DescribeTasks advances moto's state manager)."""
    response = await call(
        moto, "ecs", "describe_tasks", cluster=world.cluster, tasks=[task_arn], include=["TAGS"]
    )
    [task] = response["tasks"]
    return dict(task)


async def started_tasks(moto: MotoServer, world: EcsWorld, provider: EcsProvider) -> list[str]:
    """Every task the provider started, whatever its status (ListTasks does not advance states)."""
    arns: list[str] = []
    for desired in ("RUNNING", "STOPPED"):
        response = await call(
            moto,
            "ecs",
            "list_tasks",
            cluster=world.cluster,
            startedBy=provider.started_by,
            desiredStatus=desired,
        )
        arns += response["taskArns"]
    return arns


async def wait_for_started_task(moto: MotoServer, world: EcsWorld, provider: EcsProvider) -> str:
    with trio.fail_after(WAIT):
        # Polling moto, another process: there is no event to wait for.
        while not (arns := await started_tasks(moto, world, provider)):  # noqa: ASYNC110
            await trio.sleep(0.02)
    [arn] = arns
    return arn


def record_run_task_params(session: Any) -> list[dict[str, Any]]:
    """RunTask's parameters as botocore is about to send them, for every call."""
    recorded: list[dict[str, Any]] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        recorded.append(copy.deepcopy(params))

    session.events.register("before-parameter-build.ecs.RunTask", record)
    return recorded


def count_calls(session: Any, operation: str) -> list[str]:
    calls: list[str] = []
    session.events.register(f"before-call.{operation}", lambda **_: calls.append(operation))
    return calls


def environment_of(task: dict[str, Any]) -> dict[str, str]:
    [override] = task["overrides"]["containerOverrides"]
    return {item["name"]: item["value"] for item in override["environment"]}


def statuses_seen(logs: pytest.LogCaptureFixture, task_id: str) -> list[str]:
    """The task statuses the provider saw while waiting, from its debug log."""
    prefix = f"ecs task {task_id} status "
    messages = [record.getMessage() for record in logs.records]
    return [m.removeprefix(prefix) for m in messages if m.startswith(prefix)]


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text


# --- the full lifecycle --------------------------------------------------------------------------


async def test_full_lifecycle_against_moto(
    moto: MotoServer, world: EcsWorld, logs: pytest.LogCaptureFixture
) -> None:
    # Two DescribeTasks per status: the provider polls through every status before RUNNING.
    moto.set_task_transition({"progression": "manual", "times": 2})
    session = moto.session()
    sent = record_run_task_params(session)
    daemon_id = f"daemon-{uuid.uuid4().hex}"
    provider = make_provider(
        moto, world, daemon_id=daemon_id, session=session, platform_version="1.4.0"
    )
    spec = make_spec()

    with trio.fail_after(WAIT):
        handle = await provider.create(spec)
    # From here on the task stays RUNNING until it is stopped, as a real agent's would.
    moto.set_task_transition({"progression": "manual", "times": FOREVER})
    task_id = handle.id.rsplit("/", 1)[-1]

    assert statuses_seen(logs, task_id) == ["PROVISIONING", "PENDING", "ACTIVATING", "RUNNING"]

    task = await describe(moto, world, handle.id)
    assert task["lastStatus"] == "RUNNING"
    assert task["launchType"] == "FARGATE"
    assert task["startedBy"] == provider.started_by
    tags = {t["key"]: t["value"] for t in task["tags"]}
    created_at = tags.pop("anycode.created-at")
    assert datetime.fromisoformat(created_at).utcoffset() is not None
    assert tags == {
        "anycode.session": spec.session_id,
        "anycode.daemon": daemon_id,
        "anycode.agent": "claude",
    }
    # The endpoint is the private IP of the task's own network interface.
    [eni_id] = [
        d["value"] for d in task["attachments"][0]["details"] if d["name"] == "networkInterfaceId"
    ]
    interfaces = await call(
        moto, "ec2", "describe_network_interfaces", NetworkInterfaceIds=[eni_id]
    )
    private_ip = interfaces["NetworkInterfaces"][0]["PrivateIpAddress"]
    assert handle == SandboxHandle(
        id=handle.id,
        session_id=spec.session_id,
        provider="ecs",
        endpoint=f"http://{private_ip}:2468",
        token=handle.token,
        workdir="/workspace/repo",
    )
    assert len(handle.token) >= 32

    # The container's environment: the credentials, then the daemon's own variables, which win.
    [override] = task["overrides"]["containerOverrides"]
    assert override["name"] == world.container_name  # inferred: nothing configured
    assert environment_of(task) == {
        "ANTHROPIC_API_KEY": SECRET,
        "ANYCODE_AGENT": "claude",
        "ANYCODE_PROTOCOL": "sandbox-agent",
        "ANYCODE_AGENT_TOKEN": handle.token,
        "ANYCODE_AGENT_PORT": "2468",
        "ANYCODE_REPO": "https://github.com/org/repo",
    }
    [params] = sent
    assert str(uuid.UUID(params["clientToken"], version=4)) == params["clientToken"]
    assert params["platformVersion"] == "1.4.0"
    assert params["networkConfiguration"] == {
        "awsvpcConfiguration": {
            "subnets": [world.subnet_id],
            "securityGroups": [world.security_group_id],
            "assignPublicIp": "DISABLED",
        }
    }

    assert await provider.is_alive(handle.id)
    [info] = await provider.list()
    assert (info.id, info.session_id, info.agent, info.alive) == (
        handle.id,
        spec.session_id,
        "claude",
        True,
    )
    # moto's tasks carry no createdAt, so this is the daemon's own tag (see the stand-in test).
    assert info.created_at == created_at

    # No log stream yet (the container has written nothing): no logs, no error.
    assert await provider.logs(handle.id) == ""
    stream = f"{world.log_stream_prefix}/{world.container_name}/{task_id}"
    await call(
        moto, "logs", "create_log_stream", logGroupName=world.log_group, logStreamName=stream
    )
    now_ms = int(datetime.now().timestamp() * 1000)
    await call(
        moto,
        "logs",
        "put_log_events",
        logGroupName=world.log_group,
        logStreamName=stream,
        logEvents=[{"timestamp": now_ms + i, "message": f"line {i}"} for i in range(4)]
        + [{"timestamp": now_ms + 4, "message": f"oops: key={SECRET} token={handle.token}"}],
    )
    # The credentials this provider injected are masked in what the container printed.
    assert await provider.logs(handle.id, tail=2) == "line 3\noops: key=*** token=***"
    assert (
        await provider.logs(handle.id) == "line 0\nline 1\nline 2\nline 3\noops: key=*** token=***"
    )

    with trio.fail_after(WAIT):
        await provider.destroy(handle.id)
    task = await describe(moto, world, handle.id)
    assert (task["lastStatus"], task["stoppedReason"]) == ("STOPPED", STOP_REASON)
    assert not await provider.is_alive(handle.id)
    assert await provider.list() == []
    await provider.destroy(handle.id)  # idempotent
    assert (await provider.logs(handle.id, tail=3)).startswith("line 2\nline 3\n")

    assert_no_secret(logs.text)
    assert handle.token not in logs.text


async def test_container_name_is_inferred_once_or_taken_from_the_config(
    moto: MotoServer, world: EcsWorld
) -> None:
    moto.set_task_transition({"progression": "manual", "times": 1})
    session = moto.session()
    sent = record_run_task_params(session)
    lookups = count_calls(session, "ecs.DescribeTaskDefinition")
    provider = make_provider(moto, world, session=session)
    handles = [await provider.create(make_spec()) for _ in range(2)]
    # The first container definition ("agent", not "sidecar"), looked up once.
    assert [p["overrides"]["containerOverrides"][0]["name"] for p in sent] == ["agent", "agent"]
    assert lookups == ["ecs.DescribeTaskDefinition"]
    # Every RunTask has its own idempotency token.
    assert len({p["clientToken"] for p in sent}) == 2

    configured_session = moto.session()
    configured_sent = record_run_task_params(configured_session)
    configured_lookups = count_calls(configured_session, "ecs.DescribeTaskDefinition")
    configured = make_provider(moto, world, session=configured_session, container_name="sidecar")
    configured_handle = await configured.create(make_spec())
    assert configured_sent[0]["overrides"]["containerOverrides"][0]["name"] == "sidecar"
    assert configured_lookups == []

    for handle in handles:
        await provider.destroy(handle.id)
    await configured.destroy(configured_handle.id)


# --- failures ----------------------------------------------------------------------------------


async def test_run_task_on_a_missing_cluster_fails_clearly(
    moto: MotoServer, world: EcsWorld, logs: pytest.LogCaptureFixture
) -> None:
    provider = make_provider(moto, world, cluster="no-such-cluster", container_name="agent")
    with pytest.raises(SandboxError) as info:
        await provider.create(make_spec())
    assert str(info.value) == ("ecs run_task failed: ClusterNotFoundException: Cluster not found.")
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert await started_tasks(moto, world, provider) == []
    assert_no_secret(str(info.value), logs.text)


ECS_TARGET = "AmazonEC2ContainerServiceV20141113."
STAND_IN_TASK = f"arn:aws:ecs:{REGION}:123456789012:task/anycode/0123456789abcdef"
STAND_IN_CREATED_AT = 1714564800.5  # 2024-05-01T12:00:00.5Z, as ECS sends it (epoch seconds)


def ecs_stand_in(requests: list[dict[str, Any]], daemon_id: str) -> Starlette:
    """ECS's JSON protocol over real HTTP, for the answers AWS gives and moto 5.2 does not:

    - RunTask when Fargate cannot place the task: no tasks, a `failures` list (moto always
      answers `"failures": []`). The second failure echoes the request's first environment
      value, to prove that even such an answer could not leak it.
    - DescribeTasks with `createdAt` (moto's tasks have none), and `failures` with reason
      MISSING for an unknown task (moto leaves it out silently).
    - ListTasks, so that `list` can be checked against a `createdAt`.
    Every request is recorded as (operation, body).
    """

    async def endpoint(request: Request) -> JSONResponse:
        operation = request.headers.get("x-amz-target", "").removeprefix(ECS_TARGET)
        body = json.loads(await request.body())
        requests.append({"operation": operation, "body": body})
        if operation == "RunTask":
            echoed = body["overrides"]["containerOverrides"][0]["environment"][0]["value"]
            answer: dict[str, Any] = {
                "tasks": [],
                "failures": [
                    {
                        "reason": "Capacity is unavailable at this time. Please try again "
                        "later or in a different availability zone"
                    },
                    {"arn": "arn:aws:ecs:us-east-1:123456789012:task-set/x", "reason": echoed},
                ],
            }
        elif operation == "ListTasks":
            answer = {"taskArns": [STAND_IN_TASK]}
        elif operation == "DescribeTasks":
            answer = {
                "tasks": [
                    {
                        "taskArn": STAND_IN_TASK,
                        "lastStatus": "RUNNING",
                        "desiredStatus": "RUNNING",
                        "createdAt": STAND_IN_CREATED_AT,
                        "tags": [
                            {"key": "anycode.session", "value": "s-1"},
                            {"key": "anycode.daemon", "value": daemon_id},
                            {"key": "anycode.agent", "value": "codex"},
                        ],
                    }
                    for arn in body["tasks"]
                    if arn == STAND_IN_TASK
                ],
                "failures": [
                    {"arn": arn, "reason": "MISSING"}
                    for arn in body["tasks"]
                    if arn != STAND_IN_TASK
                ],
            }
        else:
            return JSONResponse(
                {"__type": "InvalidAction", "message": f"{operation} is not in this stand-in"},
                status_code=400,
                media_type="application/x-amz-json-1.1",
            )
        return JSONResponse(answer, media_type="application/x-amz-json-1.1")

    return Starlette(routes=[Route("/", endpoint, methods=["POST"])])


async def test_run_task_failures_become_a_clear_error_without_secrets(
    moto: MotoServer, world: EcsWorld, logs: pytest.LogCaptureFixture
) -> None:
    requests: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        served = await nursery.start(serve_asgi, ecs_stand_in(requests, "daemon"))
        provider = make_provider(moto, world, endpoint_url=served.base_url, container_name="agent")
        with trio.fail_after(WAIT), pytest.raises(SandboxError) as info:
            await provider.create(make_spec())
        nursery.cancel_scope.cancel()

    assert str(info.value) == (
        "ecs run_task failed: Capacity is unavailable at this time. Please try again later or in "
        "a different availability zone; arn:aws:ecs:us-east-1:123456789012:task-set/x: ***"
    )
    # One RunTask and nothing else: no task was started, so there is nothing to stop.
    [request] = requests
    assert request["operation"] == "RunTask"
    body = request["body"]
    assert body["launchType"] == "FARGATE"
    assert body["startedBy"] == provider.started_by
    assert environment_of(body)["ANTHROPIC_API_KEY"] == SECRET
    assert_no_secret(str(info.value), logs.text)


async def test_created_at_and_missing_tasks_as_aws_reports_them(
    moto: MotoServer, world: EcsWorld
) -> None:
    requests: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        served = await nursery.start(serve_asgi, ecs_stand_in(requests, "daemon-1"))
        provider = make_provider(moto, world, daemon_id="daemon-1", endpoint_url=served.base_url)
        with trio.fail_after(WAIT):
            [info] = await provider.list()
            missing = STAND_IN_TASK.replace("0123456789abcdef", "fedcba9876543210")
            alive = await provider.is_alive(missing)
            await provider.destroy(missing)
        nursery.cancel_scope.cancel()

    assert (info.id, info.session_id, info.agent, info.alive) == (
        STAND_IN_TASK,
        "s-1",
        "codex",
        True,
    )
    assert info.created_at == "2024-05-01T12:00:00.500000+00:00"
    assert not alive
    # A MISSING task is already gone: destroy does not ask ECS to stop it.
    assert [r["operation"] for r in requests] == [
        "ListTasks",
        "DescribeTasks",
        "DescribeTasks",
        "DescribeTasks",
    ]
    assert requests[0]["body"] == {
        "cluster": world.cluster,
        "startedBy": "anycode-daemon-1",
        "desiredStatus": "RUNNING",
    }


async def test_aws_out_of_reach_is_a_sandbox_error(
    moto: MotoServer, world: EcsWorld, logs: pytest.LogCaptureFixture
) -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]  # bound, never listening: connections are refused
        config = EcsConfig(
            cluster=world.cluster,
            task_definition=world.task_definition,
            subnets=(world.subnet_id,),
            security_groups=(world.security_group_id,),
            region=REGION,
        )
        provider = EcsProvider(
            config,
            "daemon",
            session=moto.session(),
            client_options={
                "endpoint_url": f"http://127.0.0.1:{closed_port}",
                "config": BotocoreConfig(retries={"mode": "standard", "max_attempts": 1}),
            },
        )
        with trio.fail_after(WAIT), pytest.raises(SandboxError) as info:
            await provider.create(make_spec())
    assert str(info.value).startswith(
        "ecs describe_task_definition failed: Could not connect to the endpoint URL"
    )
    assert_no_secret(str(info.value), logs.text)


# --- waiting for RUNNING -----------------------------------------------------------------------


async def test_a_task_that_never_runs_is_stopped_at_the_startup_timeout(
    moto: MotoServer, world: EcsWorld, logs: pytest.LogCaptureFixture
) -> None:
    moto.set_task_transition({"progression": "manual", "times": FOREVER})  # stuck PROVISIONING
    provider = make_provider(moto, world, startup_timeout_secs=1)
    started = trio.current_time()
    with trio.fail_after(WAIT), pytest.raises(SandboxError) as info:
        await provider.create(make_spec())
    assert 1.0 <= trio.current_time() - started < 3.0
    [arn] = await started_tasks(moto, world, provider)
    task_id = arn.rsplit("/", 1)[-1]
    assert str(info.value) == (
        f"ecs task {task_id} was not running within 1 s (last status: PROVISIONING); it has "
        "been stopped (raise ecs.startup_timeout_secs if Fargate needs longer)"
    )
    task = await describe(moto, world, arn)
    assert (task["lastStatus"], task["stoppedReason"]) == ("STOPPED", STOP_REASON)
    assert_no_secret(str(info.value), logs.text)


async def test_a_task_stopped_before_running_reports_ecs_reason(
    moto: MotoServer, world: EcsWorld, logs: pytest.LogCaptureFixture
) -> None:
    """moto never stops a task by itself (it pulls no image), so the test does what ECS does
    when a pull fails: it stops the pending task through StopTask with ECS's reason."""
    moto.set_task_transition({"progression": "manual", "times": FOREVER})  # stuck PROVISIONING
    provider = make_provider(moto, world)
    reason = "CannotPullContainerError: pull access denied for anycode-agent"
    errors: list[SandboxError] = []

    async def create() -> None:
        with pytest.raises(SandboxError) as info:
            await provider.create(make_spec())
        errors.append(info.value)

    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(create)
            arn = await wait_for_started_task(moto, world, provider)
            # The provider's first DescribeTasks follows RunTask at once: it sees PROVISIONING.
            await trio.sleep(0.5)
            await call(moto, "ecs", "stop_task", cluster=world.cluster, task=arn, reason=reason)

    [error] = errors
    task_id = arn.rsplit("/", 1)[-1]
    assert str(error) == f"ecs task {task_id} stopped before it was running: {reason}"
    assert statuses_seen(logs, task_id) == ["PROVISIONING", "STOPPED"]
    assert_no_secret(str(error), logs.text)


async def test_cancel_while_waiting_for_running_stops_the_task(
    moto: MotoServer, world: EcsWorld
) -> None:
    moto.set_task_transition({"progression": "manual", "times": FOREVER})  # stuck PROVISIONING
    provider = make_provider(moto, world)
    handles: list[SandboxHandle] = []

    async def create() -> None:
        handles.append(await provider.create(make_spec()))

    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(create)
            arn = await wait_for_started_task(moto, world, provider)
            nursery.cancel_scope.cancel()

    assert handles == []
    task = await describe(moto, world, arn)
    assert (task["lastStatus"], task["stoppedReason"]) == ("STOPPED", STOP_REASON)


async def test_cancel_during_run_task_still_stops_the_task_it_started(
    moto: MotoServer, world: EcsWorld
) -> None:
    moto.set_task_transition({"progression": "manual", "times": FOREVER})
    session = moto.session()
    provider = make_provider(moto, world, session=session, container_name="agent")
    handles: list[SandboxHandle] = []

    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            scope = nursery.cancel_scope

            def cancel_while_in_flight(**_: Any) -> None:
                # In the worker thread, while RunTask is being sent.
                trio.from_thread.run_sync(scope.cancel)

            session.events.register("before-send.ecs.RunTask", cancel_while_in_flight)

            async def create() -> None:
                handles.append(await provider.create(make_spec()))

            nursery.start_soon(create)

    assert scope.cancelled_caught
    assert handles == []
    [arn] = await started_tasks(moto, world, provider)  # RunTask was not abandoned
    task = await describe(moto, world, arn)
    assert (task["lastStatus"], task["stoppedReason"]) == ("STOPPED", STOP_REASON)


# --- addresses -----------------------------------------------------------------------------------


def associate_public_ip_after_run_task(moto: MotoServer, session: Any) -> list[str]:
    """Give the new task's ENI a public IP, as `assignPublicIp: ENABLED` does in AWS and moto
    does not. Runs right after RunTask answers, before the provider's first DescribeTasks."""
    public_ips: list[str] = []

    def associate(parsed: dict[str, Any], **_: Any) -> None:
        ec2 = moto.client("ec2")
        details = parsed["tasks"][0]["attachments"][0]["details"]
        [eni_id] = [d["value"] for d in details if d["name"] == "networkInterfaceId"]
        address = ec2.allocate_address(Domain="vpc")
        ec2.associate_address(AllocationId=address["AllocationId"], NetworkInterfaceId=eni_id)
        public_ips.append(address["PublicIp"])

    session.events.register("after-call.ecs.RunTask", associate)
    return public_ips


@pytest.mark.parametrize(
    ("assign_public_ip", "has_public_ip", "expected"),
    [(True, True, "public"), (True, False, "private"), (False, True, "private")],
    ids=["public-preferred", "no-public-ip-falls-back-to-private", "public-not-wanted"],
)
async def test_endpoint_address_follows_assign_public_ip(
    moto: MotoServer,
    world: EcsWorld,
    logs: pytest.LogCaptureFixture,
    assign_public_ip: bool,
    has_public_ip: bool,
    expected: str,
) -> None:
    moto.set_task_transition({"progression": "manual", "times": 1})
    session = moto.session()
    public_ips = associate_public_ip_after_run_task(moto, session) if has_public_ip else []
    sent = record_run_task_params(session)
    provider = make_provider(moto, world, session=session, assign_public_ip=assign_public_ip)
    with trio.fail_after(WAIT):
        handle = await provider.create(make_spec())
    moto.set_task_transition({"progression": "manual", "times": FOREVER})
    try:
        vpc = sent[0]["networkConfiguration"]["awsvpcConfiguration"]
        assert vpc["assignPublicIp"] == ("ENABLED" if assign_public_ip else "DISABLED")
        task = await describe(moto, world, handle.id)
        [private_ip] = [
            d["value"]
            for d in task["attachments"][0]["details"]
            if d["name"] == "privateIPv4Address"
        ]
        address = public_ips[0] if expected == "public" else private_ip
        assert handle.endpoint == f"http://{address}:2468"
        warned = "has no public IP although ecs.assign_public_ip is on" in logs.text
        assert warned == (assign_public_ip and not has_public_ip)
    finally:
        await provider.destroy(handle.id)


PLAIN_HTTP_WARNING = "unencrypted plain HTTP over the internet"


async def test_by_default_the_private_ip_is_used_even_when_the_task_has_a_public_one(
    moto: MotoServer, world: EcsWorld, logs: pytest.LogCaptureFixture
) -> None:
    moto.set_task_transition({"progression": "manual", "times": 1})
    session = moto.session()
    public_ips = associate_public_ip_after_run_task(moto, session)
    sent = record_run_task_params(session)
    provider = make_provider(moto, world, session=session)
    with trio.fail_after(WAIT):
        handle = await provider.create(make_spec())
    moto.set_task_transition({"progression": "manual", "times": FOREVER})
    try:
        vpc = sent[0]["networkConfiguration"]["awsvpcConfiguration"]
        assert vpc["assignPublicIp"] == "DISABLED"
        task = await describe(moto, world, handle.id)
        [private_ip] = [
            d["value"]
            for d in task["attachments"][0]["details"]
            if d["name"] == "privateIPv4Address"
        ]
        assert public_ips and public_ips[0] != private_ip
        assert handle.endpoint == f"http://{private_ip}:2468"
        assert PLAIN_HTTP_WARNING not in logs.text
    finally:
        await provider.destroy(handle.id)


async def test_a_public_ip_is_warned_about_once_per_provider_start(
    moto: MotoServer, world: EcsWorld, logs: pytest.LogCaptureFixture
) -> None:
    moto.set_task_transition({"progression": "manual", "times": 1})
    session = moto.session()
    public_ips = associate_public_ip_after_run_task(moto, session)
    provider = make_provider(moto, world, session=session, assign_public_ip=True)
    warnings = [r for r in logs.records if PLAIN_HTTP_WARNING in r.getMessage()]
    assert [(r.levelno, r.name) for r in warnings] == [
        (logging.WARNING, "anycode_actors.sandboxes.ecs")
    ]
    assert "assign_public_ip" in warnings[0].getMessage()
    handles = []
    try:
        for _ in range(2):
            with trio.fail_after(WAIT):
                handles.append(await provider.create(make_spec()))
            moto.set_task_transition({"progression": "manual", "times": 1})
        assert [h.endpoint for h in handles] == [f"http://{ip}:2468" for ip in public_ips]
        # Two sandboxes later, still the one warning of the provider's start.
        assert sum(PLAIN_HTTP_WARNING in r.getMessage() for r in logs.records) == 1
    finally:
        moto.set_task_transition({"progression": "manual", "times": FOREVER})
        for handle in handles:
            await provider.destroy(handle.id)


# --- destroy, list, logs and exec edge cases ---------------------------------------------------


async def test_destroying_or_probing_a_missing_task_is_fine(
    moto: MotoServer, world: EcsWorld
) -> None:
    provider = make_provider(moto, world)
    missing = f"arn:aws:ecs:{REGION}:123456789012:task/{world.cluster}/{uuid.uuid4()}"
    await provider.destroy(missing)
    assert not await provider.is_alive(missing)
    assert await provider.logs(missing) == ""


async def test_list_keeps_only_this_daemons_tasks(moto: MotoServer, world: EcsWorld) -> None:
    moto.set_task_transition({"progression": "manual", "times": 1})
    # Same first 28 characters: the same startedBy, told apart by the anycode.daemon tag.
    stem = "host-" + uuid.uuid4().hex[:23]
    ours = make_provider(moto, world, daemon_id=f"{stem}-ours")
    theirs = make_provider(moto, world, daemon_id=f"{stem}-theirs")
    assert ours.started_by == theirs.started_by == started_by_for(stem)
    mine = await ours.create(make_spec(session_id="mine"))
    other = await theirs.create(make_spec(session_id="other"))
    moto.set_task_transition({"progression": "manual", "times": FOREVER})
    try:
        assert [(i.id, i.session_id) for i in await ours.list()] == [(mine.id, "mine")]
        assert [(i.id, i.session_id) for i in await theirs.list()] == [(other.id, "other")]
        # Nor may one daemon stop the other's sandbox.
        with pytest.raises(SandboxError, match="is not a sandbox of this daemon"):
            await ours.destroy(other.id)
        assert await theirs.is_alive(other.id)
    finally:
        # destroy is shielded: it completes inside a cancelled caller.
        with trio.CancelScope() as scope:
            scope.cancel()
            await ours.destroy(mine.id)
            await theirs.destroy(other.id)
    for arn in (mine.id, other.id):
        task = await describe(moto, world, arn)
        assert (task["lastStatus"], task["stoppedReason"]) == ("STOPPED", STOP_REASON)


def test_started_by_fits_ecs_limits() -> None:
    assert started_by_for("abc") == "anycode-abc"
    value = started_by_for("my host.example.com:" + "x" * 50)
    assert value == "anycode-my-host-example-com-xxxxxxxx"
    assert len(value) == 36


async def test_logs_without_a_log_group_say_so(moto: MotoServer, world: EcsWorld) -> None:
    provider = make_provider(moto, world, log_group=None)
    assert await provider.logs("arn:aws:ecs:us-east-1:123456789012:task/x/y") == (
        LOGS_NOT_CONFIGURED
    )


@pytest.mark.parametrize("use", ["exec", "create-acpx"])
async def test_stdio_protocols_are_refused(moto: MotoServer, world: EcsWorld, use: str) -> None:
    """ECS Exec is an interactive SSM session, not a process with piped stdio; config validation
    already rejects acp/acpx with ecs, and the provider refuses them too, before any AWS call."""
    session = moto.session()
    run_tasks = count_calls(session, "ecs.RunTask")
    provider = make_provider(moto, world, session=session)
    attempt: Callable[[], Any]
    if use == "exec":
        handle = SandboxHandle(id="arn", session_id="s", provider="ecs", endpoint=None)
        attempt = lambda: provider.exec(handle, ["acpx"])  # noqa: E731
    else:
        attempt = lambda: provider.create(make_spec(protocol="acpx"))  # noqa: E731
    with pytest.raises(SandboxError, match=f"^{re.escape(EXEC_UNSUPPORTED)}$"):
        await attempt()
    assert run_tasks == []


# --- after a restart: reattach -------------------------------------------------------------------


async def test_a_restarted_daemon_reattaches_its_running_task_from_ecs_alone(
    moto: MotoServer, world: EcsWorld, logs: pytest.LogCaptureFixture
) -> None:
    moto.set_task_transition({"progression": "manual", "times": 1})
    daemon_id = f"daemon-{uuid.uuid4().hex}"
    first = make_provider(moto, world, daemon_id=daemon_id)
    with trio.fail_after(WAIT):
        handle = await first.create(make_spec())
        plain = await first.create(make_spec(repo=None))
        seeded = await first.create(make_spec(seeded=True))
    moto.set_task_transition({"progression": "manual", "times": FOREVER})

    restarted = make_provider(moto, world, daemon_id=daemon_id)
    reattached = await restarted.reattach(handle.id)
    # The same handle: the token from the task's overrides, the workdir from its ANYCODE_REPO.
    assert reattached == handle
    assert reattached.workdir == "/workspace/repo"
    assert await restarted.reattach(plain.id) == plain
    assert plain.workdir == "/workspace"
    # A seeded task has no ANYCODE_REPO (its entrypoint would clone it): ANYCODE_WORKDIR says.
    assert await restarted.reattach(seeded.id) == seeded
    assert seeded.workdir == "/workspace/repo"
    seeded_env = environment_of(await describe(moto, world, seeded.id))
    assert "ANYCODE_REPO" not in seeded_env
    assert seeded_env["ANYCODE_WORKDIR"] == "/workspace/repo"
    assert await restarted.reattach(handle.id.rsplit("/", 1)[-1]) == handle

    # What the task prints is masked as if this instance had created it.
    task_id = handle.id.rsplit("/", 1)[-1]
    stream = f"{world.log_stream_prefix}/{world.container_name}/{task_id}"
    await call(
        moto, "logs", "create_log_stream", logGroupName=world.log_group, logStreamName=stream
    )
    await call(
        moto,
        "logs",
        "put_log_events",
        logGroupName=world.log_group,
        logStreamName=stream,
        logEvents=[
            {
                "timestamp": int(datetime.now().timestamp() * 1000),
                "message": f"key={SECRET} token={handle.token} agent claude on 2468",
            }
        ],
    )
    assert await restarted.logs(handle.id) == "key=*** token=*** agent claude on 2468"

    # Another daemon's task, a stopped one, an unknown one: nothing to reattach.
    assert await make_provider(moto, world).reattach(handle.id) is None
    await restarted.destroy(handle.id)
    assert await restarted.reattach(handle.id) is None
    missing = f"arn:aws:ecs:{REGION}:123456789012:task/{world.cluster}/{uuid.uuid4()}"
    assert await restarted.reattach(missing) is None
    await restarted.destroy(plain.id)
    await restarted.destroy(seeded.id)
    assert_no_secret(logs.text)
    assert handle.token not in logs.text


async def test_a_task_that_is_still_starting_is_not_reattached(
    moto: MotoServer, world: EcsWorld
) -> None:
    moto.set_task_transition({"progression": "manual", "times": FOREVER})  # stuck PROVISIONING
    daemon_id = f"daemon-{uuid.uuid4().hex}"
    provider = make_provider(moto, world, daemon_id=daemon_id)
    restarted = make_provider(moto, world, daemon_id=daemon_id)
    found: list[SandboxHandle | None] = []
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(provider.create, make_spec())
            arn = await wait_for_started_task(moto, world, provider)
            found.append(await restarted.reattach(arn))
            nursery.cancel_scope.cancel()
    assert found == [None]


async def test_a_task_of_this_daemon_without_a_token_is_refused(
    moto: MotoServer, world: EcsWorld
) -> None:
    moto.set_task_transition({"progression": "manual", "times": 1})
    daemon_id = f"daemon-{uuid.uuid4().hex}"
    provider = make_provider(moto, world, daemon_id=daemon_id)
    response = await call(
        moto,
        "ecs",
        "run_task",
        cluster=world.cluster,
        taskDefinition=world.task_definition,
        launchType="FARGATE",
        networkConfiguration={
            "awsvpcConfiguration": {
                "subnets": [world.subnet_id],
                "securityGroups": [world.security_group_id],
            }
        },
        startedBy=provider.started_by,
        tags=[{"key": "anycode.daemon", "value": daemon_id}],
    )
    arn = response["tasks"][0]["taskArn"]
    with trio.fail_after(WAIT):
        while (await describe(moto, world, arn))["lastStatus"] != "RUNNING":
            pass
    moto.set_task_transition({"progression": "manual", "times": FOREVER})
    with pytest.raises(SandboxError, match="carry no ANYCODE_AGENT_TOKEN"):
        await provider.reattach(arn)
    await provider.destroy(arn)


# --- the outbox, through sandbox-agent ---------------------------------------------------------


async def test_read_files_goes_through_the_sandbox_agent_of_the_handle(
    moto: MotoServer, world: EcsWorld, tmp_path: Path
) -> None:
    """ECS has no way to copy files out of a task: the provider asks the task's sandbox-agent,
    here the real binary serving a folder of this machine."""
    outbox = tmp_path / "sandbox" / "outbox"
    (outbox / "sub").mkdir(parents=True)
    (outbox / "a.txt").write_bytes(b"hi")
    (outbox / "sub" / "b.txt").write_bytes(b"deep")
    (outbox / "big.bin").write_bytes(b"b" * 100)
    (outbox / "link").symlink_to(tmp_path / "sandbox" / "outbox" / "a.txt")
    provider = make_provider(moto, world)
    with running_sandbox_agent(tmp_path / "home") as agent:
        handle = SandboxHandle(
            id="arn:aws:ecs:us-east-1:123456789012:task/anycode/0123",
            session_id="s",
            provider="ecs",
            endpoint=agent.endpoint,
            token=agent.token,
        )
        listing = await provider.read_files(handle, str(outbox), max_bytes=10)
    assert listing == OutboxListing(
        files=(SandboxFile("a.txt", b"hi"), SandboxFile("sub/b.txt", b"deep")),
        too_big=(("big.bin", 100),),
    )
    no_endpoint = SandboxHandle(id=handle.id, session_id="s", provider="ecs", endpoint=None)
    with pytest.raises(SandboxError, match="has no sandbox-agent endpoint"):
        await provider.read_files(no_endpoint, "/workspace/outbox", max_bytes=10)


async def test_write_file_goes_through_the_sandbox_agent_of_the_handle(
    moto: MotoServer, world: EcsWorld, tmp_path: Path
) -> None:
    provider = make_provider(moto, world)
    inbox = tmp_path / "sandbox" / "inbox"
    with running_sandbox_agent(tmp_path / "home") as agent:
        handle = SandboxHandle(
            id="arn:aws:ecs:us-east-1:123456789012:task/anycode/0123",
            session_id="s",
            provider="ecs",
            endpoint=agent.endpoint,
            token=agent.token,
        )
        await provider.write_file(handle, str(inbox / "deep" / "photo.png"), b"\x89PNG" * 1000)
        assert (inbox / "deep" / "photo.png").read_bytes() == b"\x89PNG" * 1000
        wrong = SandboxHandle(
            id=handle.id, session_id="s", provider="ecs", endpoint=agent.endpoint, token="nope"
        )
        with pytest.raises(SandboxError, match="refused the sandbox's token") as refused:
            await provider.write_file(wrong, str(inbox / "x"), b"x")
        assert agent.token not in str(refused.value)
        with pytest.raises(SandboxError, match="sandbox-agent could not write /proc/x"):
            await provider.write_file(handle, "/proc/x", b"x")
    no_endpoint = SandboxHandle(id=handle.id, session_id="s", provider="ecs", endpoint=None)
    with pytest.raises(SandboxError, match="has no sandbox-agent endpoint"):
        await provider.write_file(no_endpoint, "/workspace/inbox/x", b"x")
    with pytest.raises(SandboxError, match="cannot write files through sandbox-agent"):
        await provider.write_file(handle, "/workspace/inbox/x", b"x")


async def test_a_checkpoint_is_taken_and_restored_through_the_sandbox_agent(
    moto: MotoServer, world: EcsWorld, tmp_path: Path
) -> None:
    """ECS cannot run tar in a task: the checkpoint reads the workspace and the agent's state
    with the sandbox-agent's fs API, blanks the sandbox's token in it, and writes each file
    back the same way (here the real binary serving folders of this machine)."""
    provider = make_provider(moto, world)
    assert not provider.can_exec
    sandbox = tmp_path / "sandbox"
    workspace, home = sandbox / "workspace", sandbox / "home"
    (workspace / "src").mkdir(parents=True)
    (workspace / "src" / "main.py").write_bytes(b"print('hi')\n")
    (workspace / "link").symlink_to(workspace / "src" / "main.py")
    state = home / ".claude" / "projects" / "-workspace"
    state.mkdir(parents=True)
    with running_sandbox_agent(tmp_path / "agent-home") as agent:
        (state / "agent-session.jsonl").write_bytes(f'{{"token": "{agent.token}"}}\n'.encode())
        handle = SandboxHandle(
            id="arn:aws:ecs:us-east-1:123456789012:task/anycode/0123",
            session_id="s",
            provider="ecs",
            endpoint=agent.endpoint,
            token=agent.token,
            workdir=str(workspace),
        )
        data = await take_checkpoint(
            provider, handle, max_bytes=1000, secrets=[agent.token], home=str(home)
        )
        assert sorted(checkpoint_names(data)) == [
            f"{str(state).lstrip('/')}/agent-session.jsonl",
            f"{str(workspace).lstrip('/')}/src/main.py",
        ]
        with pytest.raises(CheckpointTooBig):
            await take_checkpoint(provider, handle, max_bytes=20, secrets=[], home=str(home))

        for path in (
            workspace / "src" / "main.py",
            workspace / "link",
            state / "agent-session.jsonl",
        ):
            path.unlink()
        await restore_checkpoint(provider, handle, data)
        assert (workspace / "src" / "main.py").read_bytes() == b"print('hi')\n"
        restored = (state / "agent-session.jsonl").read_bytes()
        assert agent.token.encode() not in restored
        assert restored == b'{"token": "' + b"*" * len(agent.token) + b'"}\n'
        assert not (workspace / "link").exists()  # links are not carried without exec


async def test_the_warm_pool_keeps_ecs_tasks_ready_and_stops_them_on_shutdown(
    moto: MotoServer, world: EcsWorld
) -> None:
    """The pool on ECS (where a task takes tens of seconds to start, so the pool matters most):
    its tasks carry the pool's session tag and only the agent's environment, one is claimed,
    and the rest are stopped when the pool stops; a pool task an earlier run left is stopped
    by the next pool. (No liveness ticks: moto's tasks move on to STOPPED as they are
    described.)"""
    from anycode_actors.actors.pool import POOL_PREFIX, SandboxPool, claim
    from anycode_actors.agents.session import Resume
    from supervisors import Registry, Supervisor
    from tests.actor_fakes import memory_store
    from tests.test_actors_pool import pool_config

    async def prepared(agent: Any, handle: SandboxHandle) -> Resume:
        await trio.lowlevel.checkpoint()
        return Resume(f"acp-{handle.session_id}", 0, None, False)

    moto.set_task_transition({"progression": "manual", "times": 1})
    provider = make_provider(moto, world)
    leftover = await provider.create(make_spec(session_id=f"{POOL_PREFIX}earlier", repo=None))
    async with memory_store() as store, trio.open_nursery() as nursery:
        pool = SandboxPool(pool_config(2), provider, store, prepare=prepared, tick=3600)
        await nursery.start(Supervisor([pool.spec("pool")], registry=Registry()).run)
        with trio.fail_after(WAIT * 3):
            while pool.ready("claude-code") < 2:  # noqa: ASYNC110 - polls the pool
                await trio.sleep(0.1)
        moto.set_task_transition({"progression": "manual", "times": FOREVER})
        tasks = {info.id: info for info in await provider.list() if info.id != leftover.id}
        assert set(tasks) == pool.held()
        assert all(info.session_id.startswith(POOL_PREFIX) for info in tasks.values())
        for arn in tasks:
            environment = environment_of(await describe(moto, world, arn))
            assert environment["ANTHROPIC_API_KEY"] == "sk-ant-agent-key"
            assert "ANYCODE_REPO" not in environment
        await store.create_session(
            platform="telegram", chat="1", user="1", agent="claude-code", prompt="x"
        )
        claimed = await claim(pool.address(), "claude-code")
        assert claimed is not None and claimed.handle.id in tasks
        assert claimed.resume == Resume(f"acp-{claimed.handle.session_id}", 0, None, False)
        nursery.cancel_scope.cancel()
    for arn in set(tasks) - {claimed.handle.id} | {leftover.id}:
        assert (await describe(moto, world, arn))["lastStatus"] == "STOPPED"
    await provider.destroy(claimed.handle.id)
