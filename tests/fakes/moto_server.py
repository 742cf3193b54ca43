"""moto's server mode in a subprocess on 127.0.0.1: the AWS stand-in for the ECS provider's tests.

`start_moto_server()` runs this module as a child process (`python -m tests.fakes.moto_server`).
The child binds port 0 (so parallel runs never collide), prints the port it got, and serves until
its stdin closes, so it also goes away when the test process dies. `MotoServer.stop()` closes that
stdin, then terminates and, if need be, kills the child.

`seed_ecs_world()` creates what an ECS provider needs, with the settings moto 5.2 requires:
a VPC with DNS hostnames enabled (without it RunTask fails on `private_dns_name`), a subnet, a
security group (moto reads `securityGroups` unconditionally), a cluster, a Fargate task definition
whose container definition has `memory` (without it moto raises a TypeError), and a log group.

What the child changes in moto, and why: moto's ECS `Task` lists AWS's early lifecycle
(PROVISIONING → PENDING → ACTIVATING → RUNNING) but has it commented out, "in order not to break
existing tests", so every task starts RUNNING. The child puts those states back in front of moto's
own RUNNING → DEACTIVATING → STOPPING → DEPROVISIONING → STOPPED, and nothing else, so moto's state
manager (`set_task_transition`) drives a task through the whole AWS sequence. If a moto release
starts tasks before RUNNING itself, the child leaves its model alone.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import boto3

HOST: Final = "127.0.0.1"
REGION: Final = "us-east-1"
# moto accepts any credentials; explicit ones keep boto3 away from the environment and ~/.aws.
ACCESS_KEY: Final = "testing"
SECRET_KEY: Final = "testing"
START_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 5.0

# AWS's task lifecycle before RUNNING, as moto's own (commented-out) list has it.
PRE_RUNNING_TRANSITIONS: Final = (
    ("PROVISIONING", "PENDING"),
    ("PENDING", "ACTIVATING"),
    ("ACTIVATING", "RUNNING"),
)
TASK_MODEL: Final = "ecs::task"
_PROJECT_ROOT: Final = Path(__file__).resolve().parents[2]


@dataclass
class MotoServer:
    """A running moto server: where it listens, and boto3 sessions and clients pointed at it."""

    endpoint_url: str
    process: subprocess.Popen[str]
    # Clients are thread-safe and slow to create: one per service, shared.
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)
    _clients_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def session(self) -> boto3.session.Session:
        """A fresh session with explicit dummy credentials (never the process environment)."""
        return boto3.session.Session(
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION
        )

    def client(self, service: str) -> Any:
        """A shared client of `service` (from its own session: no event handlers of a test)."""
        with self._clients_lock:
            if service not in self._clients:
                session = self.session()
                self._clients[service] = session.client(service, endpoint_url=self.endpoint_url)
            return self._clients[service]

    def set_task_transition(self, transition: dict[str, Any]) -> None:
        """How ECS tasks progress on DescribeTasks, through moto's state manager API.

        `{"progression": "manual", "times": n}`: a task moves to its next status after every n
        DescribeTasks that include it. `{"progression": "immediate"}`: straight to STOPPED.
        """
        self._moto_api(
            "state-manager/set-transition", {"model_name": TASK_MODEL, "transition": transition}
        )

    def unset_task_transition(self) -> None:
        """Back to moto's default for tasks (manual, one status per DescribeTasks)."""
        self._moto_api("state-manager/unset-transition", {"model_name": TASK_MODEL})

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _moto_api(self, path: str, body: dict[str, Any]) -> None:
        request = urllib.request.Request(
            f"{self.endpoint_url}/moto-api/{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            if response.status >= 300:
                raise RuntimeError(f"moto-api {path} answered {response.status}")


def start_moto_server() -> MotoServer:
    """Start the child, wait until it reports its port and answers HTTP, and return it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.moto_server"],
        cwd=_PROJECT_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = _read_port(process)
        server = MotoServer(f"http://{HOST}:{port}", process)
        # Any answer from the moto API proves the server accepts requests.
        server.unset_task_transition()
        return server
    except BaseException:
        process.kill()
        process.wait()
        raise


def _read_port(process: subprocess.Popen[str]) -> int:
    lines: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        lines.append(process.stdout.readline())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(START_TIMEOUT)
    if not lines or not lines[0].startswith("PORT "):
        raise RuntimeError(
            f"moto server did not report its port within {START_TIMEOUT} s "
            f"(exit code {process.poll()}, output {lines!r})"
        )
    return int(lines[0].split()[1])


@dataclass(frozen=True)
class EcsWorld:
    """The AWS resources `seed_ecs_world` created."""

    vpc_id: str
    subnet_id: str
    security_group_id: str
    cluster: str
    task_definition: str  # family name: RunTask takes the latest revision
    container_name: str
    log_group: str
    log_stream_prefix: str


def seed_ecs_world(server: MotoServer, *, name: str = "anycode") -> EcsWorld:
    ec2 = server.client("ec2")
    vpc_id = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc_id, EnableDnsHostnames={"Value": True})
    subnet_id = ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.42.1.0/24")["Subnet"]["SubnetId"]
    security_group_id = ec2.create_security_group(
        GroupName=f"{name}-sandboxes", Description="anycode sandboxes", VpcId=vpc_id
    )["GroupId"]

    log_group, prefix, container = f"/{name}/sandboxes", "anycode", "agent"
    server.client("logs").create_log_group(logGroupName=log_group)

    ecs = server.client("ecs")
    ecs.create_cluster(clusterName=name)
    family = f"{name}-sandbox"
    ecs.register_task_definition(
        family=family,
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="1024",
        memory="2048",
        containerDefinitions=[
            {
                "name": container,
                "image": "anycode-agent:latest",
                "memory": 2048,
                "essential": True,
                "portMappings": [{"containerPort": 2468, "protocol": "tcp"}],
                "logConfiguration": {
                    "logDriver": "awslogs",
                    "options": {
                        "awslogs-group": log_group,
                        "awslogs-region": REGION,
                        "awslogs-stream-prefix": prefix,
                    },
                },
            },
            {"name": "sidecar", "image": "busybox:latest", "memory": 64, "essential": False},
        ],
    )
    return EcsWorld(
        vpc_id=vpc_id,
        subnet_id=subnet_id,
        security_group_id=security_group_id,
        cluster=name,
        task_definition=family,
        container_name=container,
        log_group=log_group,
        log_stream_prefix=prefix,
    )


# --- the child process ---------------------------------------------------------------------------


def _enable_pre_running_states() -> None:
    from moto.ecs import models

    original_init = models.Task.__init__

    def init_with_full_lifecycle(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        transitions = self._transitions
        if transitions and transitions[0][0] == "RUNNING":
            self._transitions = [*PRE_RUNNING_TRANSITIONS, *transitions]
            self._status = PRE_RUNNING_TRANSITIONS[0][0]

    models.Task.__init__ = init_with_full_lifecycle  # type: ignore[method-assign]


def _serve() -> None:
    from moto.server import ThreadedMotoServer

    # One access-log line per request drowns the tests' output; errors still show.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    _enable_pre_running_states()
    server = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    print(f"PORT {port}", flush=True)
    # Serve until the parent closes our stdin (or dies, which closes it too).
    sys.stdin.read()
    server.stop()


if __name__ == "__main__":
    _serve()
