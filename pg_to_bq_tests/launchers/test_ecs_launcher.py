"""dagster-aws's EcsRunLauncher, behind the routing launcher, against moto in server mode.

The instance is `deploy/dagster.yaml` itself, with its environment variables pointing at a
throwaway PostgreSQL and at moto, and one change: runs launch straight from the CLI
(DefaultRunCoordinator) instead of waiting in the queue for a daemon. Runs here only go to
ECS (the Lambda launcher has its own tests); the router's Lambda child is only built, to
check that the production config block is valid for it.

The launcher runs as it would on ECS: it asks the task metadata endpoint (a tiny local
server here) which task it runs in, and copies that task's cluster, subnet and security
groups (ec2:DescribeNetworkInterfaces) onto the run's task. moto records the task without
running anything, so the test then runs the task's command itself, with the environment
the task definition would give it, and checks the run finishes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import dagster as dg
import pytest
import yaml
from dagster._core.launcher import WorkerStatus
from dagster_aws.ecs import EcsRunLauncher

from pg_to_bq.launchers.router import RoutingRunLauncher
from pg_to_bq.launchers.routing import COMPUTE_REASON_TAG, COMPUTE_TAG
from pg_to_bq.postgres.embedded import EmbeddedPostgres, free_port
from pg_to_bq_tests.launchers import ecs_toy_definitions

pytestmark = pytest.mark.aws

REPO_ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_INSTANCE = REPO_ROOT / "deploy" / "dagster.yaml"
TOY_DEFINITIONS = Path(ecs_toy_definitions.__file__)
VENV_BIN = Path(sys.executable).parent

REGION = "us-east-1"
CLUSTER = "pg-to-bq"
TASK_FAMILY = "pg-to-bq-run"
CONTAINER = "run"


@dataclass
class FakeEcs:
    """moto's ECS world: the network, the run task definition and the daemon's own task."""

    endpoint: str
    subnet_id: str
    security_group_id: str
    task_definition_arn: str
    daemon_task_arn: str
    cluster_arn: str

    def client(self, service: str):
        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION)


def _serve_task_metadata(cluster_arn: str, task_arn: str) -> ThreadingHTTPServer:
    """The ECS task metadata endpoint (v4) as seen from the daemon's container."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.endswith("/task"):
                body = {"Cluster": cluster_arn, "TaskARN": task_arn}
            else:
                body = {"Name": CONTAINER}
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def moto_endpoint(moto_server: str) -> str:
    """The session's moto server (conftest.py)."""
    return moto_server


@pytest.fixture(scope="module")
def aws_env(moto_endpoint: str) -> Iterator[dict[str, str]]:
    """Environment for everything that talks to AWS, in this process and in subprocesses."""
    env = {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        patch.delenv("AWS_PROFILE", raising=False)
        yield env


@pytest.fixture(scope="module")
def fake_ecs(moto_endpoint: str, aws_env: dict[str, str]) -> Iterator[FakeEcs]:
    ec2 = boto3.client("ec2", endpoint_url=moto_endpoint, region_name=REGION)
    ecs = boto3.client("ecs", endpoint_url=moto_endpoint, region_name=REGION)

    vpc_id = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    # moto bug: RunTask of an awsvpc task fails with HTTP 500 (AttributeError:
    # 'NetworkInterface' object has no attribute 'private_dns_name') unless the VPC has DNS
    # hostnames enabled, because moto only sets that attribute on ENIs of such VPCs.
    ec2.modify_vpc_attribute(VpcId=vpc_id, EnableDnsHostnames={"Value": True})
    subnet_id = ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    security_group_id = ec2.create_security_group(
        GroupName="pg-to-bq-runs", Description="pg_to_bq run workers", VpcId=vpc_id
    )["GroupId"]
    cluster_arn = ecs.create_cluster(clusterName=CLUSTER)["cluster"]["clusterArn"]
    task_definition_arn = ecs.register_task_definition(
        family=TASK_FAMILY,
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="1024",
        memory="2048",
        containerDefinitions=[
            {
                "name": CONTAINER,
                "image": "pg-to-bq:test",
                # moto bug: RunTask fails with HTTP 500 (TypeError: unsupported operand
                # type(s) for +=: 'int' and 'NoneType') when a container has neither
                # `memory` nor `memoryReservation`, though Fargate only needs the task's.
                "memory": 2048,
            }
        ],
    )["taskDefinition"]["taskDefinitionArn"]
    # The task the daemon (the launcher's process) runs in; runs inherit its networking.
    daemon_task_arn = ecs.run_task(
        cluster=CLUSTER,
        taskDefinition=TASK_FAMILY,
        launchType="FARGATE",
        networkConfiguration={
            "awsvpcConfiguration": {"subnets": [subnet_id], "securityGroups": [security_group_id]}
        },
    )["tasks"][0]["taskArn"]

    yield FakeEcs(
        endpoint=moto_endpoint,
        subnet_id=subnet_id,
        security_group_id=security_group_id,
        task_definition_arn=task_definition_arn,
        daemon_task_arn=daemon_task_arn,
        cluster_arn=cluster_arn,
    )


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres(tmp_path_factory.mktemp("dagster_pg")).start()
    try:
        yield pg
    finally:
        pg.destroy()


@pytest.fixture(scope="module")
def deployment_env(
    tmp_path_factory: pytest.TempPathFactory,
    aws_env: dict[str, str],
    fake_ecs: FakeEcs,
    postgres: EmbeddedPostgres,
) -> Iterator[dict[str, str]]:
    """DAGSTER_HOME with the production instance config, and the variables it reads."""
    home = tmp_path_factory.mktemp("dagster_home")
    instance_config = yaml.safe_load(PRODUCTION_INSTANCE.read_text())
    instance_config["run_coordinator"] = {
        "module": "dagster.core.run_coordinator",
        "class": "DefaultRunCoordinator",
    }
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance_config))

    metadata_server = _serve_task_metadata(fake_ecs.cluster_arn, fake_ecs.daemon_task_arn)
    env = {
        **aws_env,
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(postgres.port),
        "DAGSTER_PG_USERNAME": postgres.user,
        "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_PG_DB": "postgres",
        "PG_TO_BQ_ECS_TASK_DEFINITION": TASK_FAMILY,
        "PG_TO_BQ_ECS_CONTAINER_NAME": CONTAINER,
        "PG_TO_BQ_LAMBDA_FUNCTION": "pg-to-bq-unused",
        "ECS_CONTAINER_METADATA_URI_V4": (
            f"http://127.0.0.1:{metadata_server.server_address[1]}/v4/daemon"
        ),
    }
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            yield env
    finally:
        metadata_server.shutdown()


def _subprocess_env(env: dict[str, str]) -> dict[str, str]:
    # The image puts `dagster` on PATH; here it is the virtualenv's.
    return {**os.environ, **env, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def test_ecs_run_launches_a_task_whose_command_completes_the_run(
    deployment_env: dict[str, str], fake_ecs: FakeEcs
) -> None:
    env = _subprocess_env(deployment_env)
    launch = [sys.executable, "-m", "dagster", "job", "launch", "-f", str(TOY_DEFINITIONS)]
    launched = subprocess.run(
        [*launch, "-j", "big_job"], env=env, cwd="/", capture_output=True, text=True
    )
    assert launched.returncode == 0, launched.stderr

    with dg.DagsterInstance.from_config(deployment_env["DAGSTER_HOME"]) as instance:
        [run] = instance.get_runs()
        assert run.tags[COMPUTE_TAG] == "ecs"
        assert "(asset metadata) > lambda_max_rows" in run.tags[COMPUTE_REASON_TAG]
        task_arn = run.tags["ecs/task_arn"]

        ecs = fake_ecs.client("ecs")
        [task] = ecs.describe_tasks(cluster=CLUSTER, tasks=[task_arn], include=["TAGS"])["tasks"]
        assert task["taskDefinitionArn"] == fake_ecs.task_definition_arn
        assert task["clusterArn"] == fake_ecs.cluster_arn
        [override] = task["overrides"]["containerOverrides"]
        assert override["name"] == CONTAINER
        command = override["command"]
        assert command[:3] == ["dagster", "api", "execute_run"]
        assert {"key": "dagster/run_id", "value": run.run_id} in task["tags"]

        # Networking copied from the daemon's task.
        [attachment] = task["attachments"]
        details = {d["name"]: d["value"] for d in attachment["details"]}
        assert details["subnetId"] == fake_ecs.subnet_id
        [eni] = fake_ecs.client("ec2").describe_network_interfaces(
            NetworkInterfaceIds=[details["networkInterfaceId"]]
        )["NetworkInterfaces"]
        assert [g["GroupId"] for g in eni["Groups"]] == [fake_ecs.security_group_id]

        # Monitoring reaches the ECS launcher through the router (moto reports the task
        # running, or stopped with exit code 0, depending on how often it was described).
        health = instance.run_launcher.check_run_worker_health(run)
        assert health.status in (WorkerStatus.RUNNING, WorkerStatus.SUCCESS), health

        executed = subprocess.run(command, env=env, cwd="/", capture_output=True, text=True)
        assert executed.returncode == 0, executed.stderr

        finished = instance.get_run_by_id(run.run_id)
        assert finished.status == dg.DagsterRunStatus.SUCCESS
        assert instance.get_latest_materialization_event(dg.AssetKey("big_table")) is not None


def test_production_config_builds_both_child_launchers(deployment_env: dict[str, str]) -> None:
    with dg.DagsterInstance.from_config(deployment_env["DAGSTER_HOME"]) as instance:
        router = instance.run_launcher
        assert isinstance(router, RoutingRunLauncher)
        assert (router.lambda_max_rows, router.lambda_max_tables) == (2_000_000, 1_000)

        ecs_launcher = router.child("ecs")
        assert isinstance(ecs_launcher, EcsRunLauncher)
        assert ecs_launcher.task_definition.endswith(f":task-definition/{TASK_FAMILY}:1")
        assert ecs_launcher.container_name == CONTAINER

        lambda_launcher = router.child("lambda")
        assert type(lambda_launcher).__name__ == "LambdaRunLauncher"
        assert lambda_launcher.function_name == deployment_env["PG_TO_BQ_LAMBDA_FUNCTION"]
