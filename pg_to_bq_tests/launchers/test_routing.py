"""Routing runs between ECS and Lambda.

First the policy (`pg_to_bq.launchers.routing`) as a table of decisions, then
`RoutingRunLauncher` on a real Dagster instance with two stub child launchers
(`RecordingRunLauncher`, defined here; the real ECS launcher is exercised in
`test_ecs_launcher.py`, and the Lambda launcher is another module's): it records its choice on
the run, hands the run to the chosen child, and sends terminate and health checks to the
child recorded on the run. The last test launches through `dagster job launch`, so the
router sizes the run from the asset metadata in the code location's snapshot.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, RunLauncher, WorkerStatus
from dagster._serdes import ConfigurableClass, ConfigurableClassData

from pg_to_bq.launchers.router import DEFAULT_LAMBDA_MAX_TABLES, RoutingRunLauncher
from pg_to_bq.launchers.routing import (
    COMPUTE_REASON_TAG,
    COMPUTE_TAG,
    ESTIMATED_ROWS_TAG,
    FULL_REFRESH_TAG,
    SizeEstimate,
    choose_compute,
    estimate_from_metadata,
    estimate_from_tags,
)
from pg_to_bq_tests.launchers import ecs_toy_definitions

REPO_ROOT = Path(__file__).resolve().parents[2]
TOY_DEFINITIONS = Path(ecs_toy_definitions.__file__)
LAUNCHED_BY_TAG = "test/launched_by"

MAX_ROWS = 1_000_000
BACKFILL = {"dagster/backfill": "abcdefgh"}
FULL_REFRESH = {FULL_REFRESH_TAG: "true"}
SMALL = SizeEstimate(rows=10_000, tables=3, source="asset metadata")
LARGE = SizeEstimate(rows=5_000_000, tables=1, source="asset metadata")
MANY_TABLES = SizeEstimate(rows=100_000, tables=200, source="asset metadata")


class RecordingRunLauncher(RunLauncher, ConfigurableClass):
    """Stub child launcher: records what it is asked to do and tags runs it launches."""

    def __init__(self, label: str, health_checks: bool = True, inst_data=None):
        super().__init__()
        self.label = label
        self.health_checks = health_checks
        self._inst_data = inst_data
        self.launched: list[str] = []
        self.terminated: list[str] = []

    @property
    def inst_data(self):
        return self._inst_data

    @classmethod
    def config_type(cls):
        return {
            "label": str,
            "health_checks": dg.Field(bool, is_required=False, default_value=True),
        }

    @classmethod
    def from_config_value(cls, inst_data, config_value: Mapping[str, Any]):
        return cls(inst_data=inst_data, **config_value)

    def launch_run(self, context: LaunchRunContext) -> None:
        self.launched.append(context.dagster_run.run_id)
        self._instance.add_run_tags(context.dagster_run.run_id, {LAUNCHED_BY_TAG: self.label})

    def terminate(self, run_id: str) -> bool:
        self.terminated.append(run_id)
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return self.health_checks

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        return CheckRunHealthResult(WorkerStatus.SUCCESS, msg=f"checked by {self.label}")

    def get_run_worker_debug_info(self, run, include_container_logs=True) -> str | None:
        return f"debug info from {self.label}"


def _stub(label: str, **config: Any) -> dict[str, Any]:
    return {
        "module": __name__,
        "class": RecordingRunLauncher.__name__,
        "config": {"label": label, **config},
    }


def _router_config(**overrides: Any) -> dict[str, Any]:
    return {
        "module": "pg_to_bq.launchers.router",
        "class": "RoutingRunLauncher",
        "config": {
            "lambda_max_rows": MAX_ROWS,
            "lambda_max_tables": 50,
            "ecs": _stub("ecs"),
            "lambda": _stub("lambda"),
            **overrides,
        },
    }


# The policy


@pytest.mark.parametrize(
    ("tags", "estimate", "target", "reason_part"),
    [
        pytest.param({}, SMALL, "lambda", "<= lambda_max_rows", id="small-goes-to-lambda"),
        pytest.param({}, LARGE, "ecs", "> lambda_max_rows", id="large-goes-to-ecs"),
        pytest.param({}, MAX_ROWS, "lambda", "<= lambda_max_rows", id="threshold-is-inclusive"),
        pytest.param({}, MAX_ROWS + 1, "ecs", "> lambda_max_rows", id="one-over-threshold"),
        pytest.param({}, None, "ecs", "size unknown", id="unknown-size-goes-to-ecs"),
        pytest.param({}, MANY_TABLES, "ecs", "lambda_max_tables", id="too-many-tables"),
        pytest.param({COMPUTE_TAG: "ecs"}, SMALL, "ecs", "pg_to_bq/compute=ecs", id="tag-ecs"),
        pytest.param(
            {COMPUTE_TAG: "lambda"}, LARGE, "lambda", "pg_to_bq/compute=lambda", id="tag-lambda"
        ),
        pytest.param(
            {COMPUTE_TAG: " Lambda "}, None, "lambda", "compute=lambda", id="tag-case-insensitive"
        ),
        pytest.param(FULL_REFRESH, LARGE, "ecs", "a full refresh of large", id="full-refresh"),
        pytest.param(FULL_REFRESH, SMALL, "lambda", "<= lambda_max_rows", id="small-full-refresh"),
        pytest.param(BACKFILL, LARGE, "ecs", "backfill abcdefgh", id="backfill-of-large-table"),
        pytest.param(BACKFILL, SMALL, "lambda", "<= lambda_max_rows", id="backfill-of-small-table"),
        pytest.param(
            {**FULL_REFRESH, COMPUTE_TAG: "lambda"},
            LARGE,
            "ecs",
            "compute=lambda overridden",
            id="full-refresh-overrides-lambda-tag",
        ),
        pytest.param(
            {**BACKFILL, COMPUTE_TAG: "lambda"},
            None,
            "lambda",
            "compute=lambda",
            id="lambda-tag-wins-when-backfill-size-unknown",
        ),
        pytest.param(
            {FULL_REFRESH_TAG: "false"}, LARGE, "ecs", "> lambda_max_rows", id="full-refresh-false"
        ),
    ],
)
def test_choose_compute(
    tags: dict[str, str], estimate: SizeEstimate | int | None, target: str, reason_part: str
) -> None:
    decision = choose_compute(tags, estimate, lambda_max_rows=MAX_ROWS, lambda_max_tables=50)

    assert decision.target == target
    assert reason_part in decision.reason


def test_choose_compute_rejects_unknown_compute_tag() -> None:
    with pytest.raises(ValueError, match="must be 'lambda' or 'ecs', got 'fargate'"):
        choose_compute({COMPUTE_TAG: "fargate"}, SMALL, lambda_max_rows=MAX_ROWS)


def test_estimate_from_metadata_sums_tables_and_skips_other_assets() -> None:
    metadata = [
        {"pg_to_bq/estimated_rows": dg.MetadataValue.int(1_000)},
        {"pg_to_bq/estimated_rows": 2_500},
        {"owner": "not a table"},
    ]

    assert estimate_from_metadata(metadata) == SizeEstimate(3_500, 2, "asset metadata")
    assert estimate_from_metadata([{"owner": "x"}]).rows is None


@pytest.mark.parametrize(
    ("tags", "rows"),
    [({ESTIMATED_ROWS_TAG: "12345"}, 12_345), ({ESTIMATED_ROWS_TAG: "lots"}, None), ({}, None)],
)
def test_estimate_from_tags(tags: dict[str, str], rows: int | None) -> None:
    assert estimate_from_tags(tags).rows == rows


# The router on an instance


@dg.asset
def some_table() -> None: ...


TOY_JOB = dg.Definitions(
    assets=[some_table], jobs=[dg.define_asset_job("toy_job")]
).resolve_job_def("toy_job")


@pytest.fixture
def instance():
    with dg.instance_for_test(overrides={"run_launcher": _router_config()}) as instance:
        yield instance


def _launch(instance: dg.DagsterInstance, tags: Mapping[str, str]) -> dg.DagsterRun:
    run = instance.create_run_for_job(TOY_JOB, tags=tags)
    # No workspace, as when the code location cannot be reached: the router falls back to
    # the pg_to_bq/estimated_rows tag.
    instance.run_launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
    return instance.get_run_by_id(run.run_id)


@pytest.mark.parametrize(
    ("tags", "target", "reason_part"),
    [
        ({ESTIMATED_ROWS_TAG: "500"}, "lambda", "~500 rows (tag pg_to_bq/estimated_rows)"),
        ({ESTIMATED_ROWS_TAG: "5000000"}, "ecs", "> lambda_max_rows 1,000,000"),
        ({}, "ecs", "size unknown (no workspace"),
        ({COMPUTE_TAG: "lambda"}, "lambda", "run tag pg_to_bq/compute=lambda"),
    ],
)
def test_router_records_decision_and_launches_chosen_child(
    instance: dg.DagsterInstance, tags: dict[str, str], target: str, reason_part: str
) -> None:
    router = instance.run_launcher
    assert isinstance(router, RoutingRunLauncher)

    run = _launch(instance, tags)

    assert run.tags[COMPUTE_TAG] == target
    assert reason_part in run.tags[COMPUTE_REASON_TAG]
    assert run.tags[LAUNCHED_BY_TAG] == target
    assert router.child(target).launched == [run.run_id]
    [event] = instance.get_records_for_run(
        run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT
    ).records
    label = {"ecs": "ECS", "lambda": "Lambda"}[target]
    assert event.event_log_entry.message.endswith(
        f"Routing run to {label}: {run.tags[COMPUTE_REASON_TAG]}"
    )


def test_router_refuses_an_unknown_compute_tag(instance: dg.DagsterInstance) -> None:
    with pytest.raises(ValueError, match="got 'gpu'"):
        _launch(instance, {COMPUTE_TAG: "gpu"})


def test_router_delegates_to_the_child_recorded_on_the_run(instance: dg.DagsterInstance) -> None:
    router = instance.run_launcher
    on_ecs = _launch(instance, {COMPUTE_TAG: "ecs"})
    on_lambda = _launch(instance, {COMPUTE_TAG: "lambda"})
    never_launched = instance.create_run_for_job(TOY_JOB)

    assert router.terminate(on_lambda.run_id) is True
    assert router.child("lambda").terminated == [on_lambda.run_id]
    assert router.child("ecs").terminated == []
    assert router.terminate(never_launched.run_id) is False

    assert router.check_run_worker_health(on_ecs).msg == "checked by ecs"
    assert router.get_run_worker_debug_info(on_lambda) == "debug info from lambda"
    assert router.get_run_worker_debug_info(never_launched) is None
    # A run this router did not launch is left to the monitoring timeouts, not failed.
    assert router.check_run_worker_health(never_launched).status == WorkerStatus.RUNNING


def test_child_without_health_checks_reports_running() -> None:
    config = _router_config(**{"lambda": _stub("lambda", health_checks=False)})
    with dg.instance_for_test(overrides={"run_launcher": config}) as instance:
        run = _launch(instance, {COMPUTE_TAG: "lambda"})

        result = instance.run_launcher.check_run_worker_health(run)

    # Anything but RUNNING or SUCCESS would make the monitoring daemon fail the run.
    assert result.status == WorkerStatus.RUNNING


def test_router_config_builds_children_from_their_own_config() -> None:
    router = ConfigurableClassData(
        "pg_to_bq.launchers.router",
        "RoutingRunLauncher",
        yaml.safe_dump(_router_config()["config"]),
    ).rehydrate(as_type=RoutingRunLauncher)

    assert (router.lambda_max_rows, router.lambda_max_tables) == (MAX_ROWS, 50)
    assert router.child("ecs").label == "ecs"
    assert router.child("lambda").label == "lambda"
    with pytest.raises(ValueError, match="unknown compute target"):
        router.child("fargate")  # type: ignore[arg-type]


def test_without_a_table_limit_the_measured_lambda_capacity_applies() -> None:
    """Unset, `lambda_max_tables` is the measured capacity (DEFAULT_LAMBDA_MAX_TABLES's
    docstring); `null` lifts it."""
    config = {k: v for k, v in _router_config()["config"].items() if k != "lambda_max_tables"}
    router = ConfigurableClassData("pg_to_bq.launchers.router", "RoutingRunLauncher",
                                   yaml.safe_dump(config)).rehydrate(as_type=RoutingRunLauncher)
    assert router.lambda_max_tables == DEFAULT_LAMBDA_MAX_TABLES == 1_000
    unlimited = ConfigurableClassData(
        "pg_to_bq.launchers.router", "RoutingRunLauncher",
        yaml.safe_dump({**config, "lambda_max_tables": None})).rehydrate(as_type=RoutingRunLauncher)
    assert unlimited.lambda_max_tables is None


def test_cli_launch_sizes_run_from_asset_metadata(tmp_path: Path) -> None:
    """`dagster job launch` hands the router a workspace; it reads the assets' estimates."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    instance_config = {
        "run_launcher": _router_config(),
        # Launch right away in the CLI process rather than queue for a daemon.
        "run_coordinator": {
            "module": "dagster.core.run_coordinator",
            "class": "DefaultRunCoordinator",
        },
        "telemetry": {"enabled": False},
    }
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance_config))
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        # The stub launchers live in this test module.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }

    launch = [sys.executable, "-m", "dagster", "job", "launch", "-f", str(TOY_DEFINITIONS)]
    launched = subprocess.run(
        [*launch, "-j", "small_job"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert launched.returncode == 0, launched.stderr

    with dg.DagsterInstance.from_config(str(home)) as instance:
        [run] = instance.get_runs()
    assert run.tags[COMPUTE_TAG] == "lambda"
    assert run.tags[COMPUTE_REASON_TAG] == (
        f"~{ecs_toy_definitions.SMALL_ROWS:,} rows in 1 table(s) (asset metadata) "
        f"<= lambda_max_rows {MAX_ROWS:,}"
    )
    assert run.tags[LAUNCHED_BY_TAG] == "lambda"
