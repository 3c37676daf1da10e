"""The access deploy files (docs/security.md): two webservers from one image, one of them
read-only, both behind authentication, in private subnets.

Structure only, no cloud: the ECS task definitions are registered with moto (botocore
checks every field against ECS's API), and the CloudFormation template is read as data
(and linted by cfn-lint when it is installed). `browser/test_read_only_ui.py` runs the
webserver command and `deploy/workspace.yaml` for real.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
TEMPLATE = DEPLOY / "webservers.cloudformation.yaml"
WORKSPACE_IN_IMAGE = "/opt/pg_to_bq/workspace.yaml"


def task_definition(kind: str) -> dict[str, Any]:
    return json.loads((DEPLOY / "ecs" / f"webserver-{kind}.task-definition.json").read_text())


def container(definition: dict[str, Any]) -> dict[str, Any]:
    [webserver] = definition["containerDefinitions"]
    return webserver


class _CloudFormationLoader(yaml.SafeLoader):
    """Reads `!Ref x` as {"Ref": x}, `!If [...]` as {"Fn::If": [...]}, and so on."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = suffix if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        return {name: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {name: loader.construct_sequence(node, deep=True)}
    return {name: loader.construct_mapping(node, deep=True)}


_CloudFormationLoader.add_multi_constructor("!", _intrinsic)


def template() -> dict[str, Any]:
    return yaml.load(TEMPLATE.read_text(), Loader=_CloudFormationLoader)


def test_the_task_definitions_register_and_differ_only_in_read_only(aws_env: str) -> None:
    ecs = boto3.client("ecs")
    analysts, operators = task_definition("analysts"), task_definition("operators")
    for definition in (analysts, operators):
        registered = ecs.register_task_definition(**definition)["taskDefinition"]
        assert registered["status"] == "ACTIVE"

    a, o = container(analysts), container(operators)
    assert a["image"] == o["image"]
    assert a["command"] == ["dagster-webserver", "--read-only", *o["command"][1:]]
    assert "--read-only" not in o["command"]
    assert o["command"][-2:] == ["-w", WORKSPACE_IN_IMAGE]
    # The same instance (storage) and code server; no pg_to_bq setting or secret beyond them.
    assert a["environment"] == o["environment"] and a["secrets"] == o["secrets"]
    names = {e["name"] for e in a["environment"]} | {s["name"] for s in a["secrets"]}
    assert {n for n in names if n.startswith("PG_TO_BQ_")} == {
        "PG_TO_BQ_DAGSTER_YAML", "PG_TO_BQ_CODE_SERVER_HOST", "PG_TO_BQ_CODE_SERVER_PORT"}
    # The analysts' webserver calls no AWS API (the operators' stops ECS tasks it cancels).
    assert "taskRoleArn" not in analysts and "taskRoleArn" in operators
    for definition in (analysts, operators):
        assert definition["networkMode"] == "awsvpc"
        assert container(definition)["readonlyRootFilesystem"] is True
        assert container(definition)["mountPoints"] == [
            {"sourceVolume": "tmp", "containerPath": "/tmp", "readOnly": False}]


def test_the_image_carries_the_workspace_the_webservers_read() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert f"COPY deploy/workspace.yaml {WORKSPACE_IN_IMAGE}" in dockerfile
    [entry] = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())["load_from"]
    assert entry["grpc_server"]["location_name"] == "pg_to_bq"


def test_every_listener_rule_authenticates_before_it_forwards() -> None:
    resources = template()["Resources"]
    rules = {name: r["Properties"] for name, r in resources.items()
             if r["Type"] == "AWS::ElasticLoadBalancingV2::ListenerRule"}
    assert set(rules) == {"AnalystsRule", "OperatorsRule"}
    targets = set()
    for name, rule in rules.items():
        first, last = rule["Actions"]
        # Both branches of the OIDC/Cognito choice authenticate, first.
        _, cognito, oidc = first["Fn::If"]
        assert (cognito["Type"], cognito["Order"]) == ("authenticate-cognito", 1), name
        assert (oidc["Type"], oidc["Order"]) == ("authenticate-oidc", 1), name
        for action in (cognito, oidc):
            config = action.get("AuthenticateCognitoConfig") or action["AuthenticateOidcConfig"]
            assert config["OnUnauthenticatedRequest"] == "authenticate", name
        assert (last["Type"], last["Order"]) == ("forward", 2), name
        targets.add(last["TargetGroupArn"]["Ref"])
    assert targets == {"AnalystsTargetGroup", "OperatorsTargetGroup"}
    # Each audience its own client (or user pool): operators' sign-in is not analysts'.
    oidc_clients = {r["Actions"][0]["Fn::If"][2]["AuthenticateOidcConfig"]["ClientId"]["Ref"]
                    for r in rules.values()}
    assert len(oidc_clients) == 2


def test_the_webservers_run_in_private_subnets_behind_the_load_balancer_only() -> None:
    resources = template()["Resources"]
    services = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::ECS::Service"]
    assert len(services) == 2
    for service in services:
        network = service["NetworkConfiguration"]["AwsvpcConfiguration"]
        assert network["AssignPublicIp"] == "DISABLED"
        assert network["Subnets"] == {"Ref": "PrivateSubnetIds"}
        assert network["SecurityGroups"] == [{"Ref": "WebserverSecurityGroup"}]
    [ingress] = resources["WebserverSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert ingress["SourceSecurityGroupId"] == {"Ref": "LoadBalancerSecurityGroupId"}
    assert "CidrIp" not in ingress and (ingress["FromPort"], ingress["ToPort"]) == (3000, 3000)


def test_the_template_passes_cfn_lint() -> None:
    # The `test` extra installs cfn-lint next to this interpreter.
    cfn_lint = str(Path(sys.executable).parent / "cfn-lint")
    assert Path(cfn_lint).exists(), "cfn-lint is not installed: bash install.sh installs it"
    done = subprocess.run([cfn_lint, str(TEMPLATE)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
