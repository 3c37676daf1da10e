"""A run launcher that sends each run to ECS or to Lambda.

Configured in `dagster.yaml` with two child launchers in the same `{module, class, config}`
form as the instance's own `run_launcher` block:

    run_launcher:
      module: pg_to_bq.launchers.router
      class: RoutingRunLauncher
      config:
        lambda_max_rows: 2000000
        lambda_max_tables: 1000
        ecs:
          module: dagster_aws.ecs
          class: EcsRunLauncher
          config: {...}
        lambda:
          module: pg_to_bq.launchers.lambda_launcher
          class: LambdaRunLauncher
          config: {...}

For each run it sizes the tables the run loads (the `pg_to_bq/estimated_rows` definition
metadata of the run's assets, read from the code location's snapshot in the workspace the
launch comes with; else the run tag `pg_to_bq/estimated_rows`), applies the policy of
`pg_to_bq.launchers.routing`, records the decision on the run (tags `pg_to_bq/compute` and
`pg_to_bq/compute_reason`, plus an engine event) and hands the run to that child. Everything
that concerns a launched run (terminate, health checks, debug info, resume) goes to the
child recorded on the run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self

import yaml
from dagster import Field, IntSource, Noneable, Permissive, Shape
from dagster._core.events import EngineEventData
from dagster._core.launcher import (
    CheckRunHealthResult,
    LaunchRunContext,
    ResumeRunContext,
    RunLauncher,
    WorkerStatus,
)
from dagster._serdes import ConfigurableClass, ConfigurableClassData

from pg_to_bq.launchers.routing import (
    COMPUTE_REASON_TAG,
    COMPUTE_TAG,
    ECS,
    ESTIMATED_ROWS_TAG,
    LAMBDA,
    TARGETS,
    Decision,
    SizeEstimate,
    Target,
    choose_compute,
    estimate_from_metadata,
    estimate_from_tags,
)

if TYPE_CHECKING:
    from dagster import DagsterInstance, DagsterRun
    from dagster._core.workspace.context import BaseWorkspaceRequestContext

log = logging.getLogger(__name__)

DEFAULT_LAMBDA_MAX_ROWS = 2_000_000
"""Runs estimated above this many rows go to ECS.

At the slowest load path measured for this project (~14k rows/s) two million rows take under
three minutes, well inside Lambda's 15-minute limit, with room for the destination's load jobs.
"""

DEFAULT_LAMBDA_MAX_TABLES = 1_000
"""Runs loading more tables than this go to ECS.

Measured (`benchmarks/many_tables.py`, 2 cores): the nightly job over 1,000 tables of 1,000
rows took 116 s with Dagster's storage in PostgreSQL as deployed (0.12 s a table, most of it
Dagster's events) and 0.19 machine CPU-s a table on the multiprocess executor
(`benchmarks/nightly_steps.py`). Lambda's 900 s, less the 30 s deadline margin, would hold
about 7,000 such tables there; 1,000 leaves that 7× for what this machine does not show:
BigQuery's load and merge jobs (seconds each, up to 20 at once per step) and a Lambda
function's slower vCPUs.
"""

_LABELS: Mapping[Target, str] = {ECS: "ECS", LAMBDA: "Lambda"}


def _child_launcher_field(description: str) -> Field:
    return Field(
        Shape(
            {
                "module": Field(str, description="Module of the run launcher class."),
                "class": Field(str, description="Name of the run launcher class."),
                "config": Field(
                    Permissive(),
                    is_required=False,
                    default_value={},
                    description="The class's own config; validated by that class.",
                ),
            }
        ),
        description=description,
    )


def _class_data(block: Mapping[str, Any]) -> ConfigurableClassData:
    return ConfigurableClassData(
        module_name=block["module"],
        class_name=block["class"],
        config_yaml=yaml.safe_dump(dict(block.get("config") or {}), default_flow_style=False),
    )


class RoutingRunLauncher(RunLauncher, ConfigurableClass):
    """Launches each run on ECS or on Lambda, by tag or by the size of the tables it loads.

    Child launchers are built on first use, so a process that never launches a run (the run
    worker itself, say) never creates their AWS clients.

    Args:
        ecs: The ECS child launcher, or where to load it from (`ConfigurableClassData`).
        lambda_launcher: The Lambda child launcher, or where to load it from.
        lambda_max_rows: The largest estimated row count that still goes to Lambda.
        lambda_max_tables: The most tables a Lambda run may load; None for no limit.
        inst_data: Set when built from `dagster.yaml`.
    """

    def __init__(
        self,
        ecs: RunLauncher | ConfigurableClassData,
        lambda_launcher: RunLauncher | ConfigurableClassData,
        lambda_max_rows: int = DEFAULT_LAMBDA_MAX_ROWS,
        lambda_max_tables: int | None = DEFAULT_LAMBDA_MAX_TABLES,
        inst_data: ConfigurableClassData | None = None,
    ):
        super().__init__()
        if lambda_max_rows < 0:
            raise ValueError(f"lambda_max_rows must be >= 0, got {lambda_max_rows}")
        if lambda_max_tables is not None and lambda_max_tables < 1:
            raise ValueError(f"lambda_max_tables must be >= 1 or unset, got {lambda_max_tables}")
        self._inst_data = inst_data
        self.lambda_max_rows = lambda_max_rows
        self.lambda_max_tables = lambda_max_tables
        self._sources: dict[Target, RunLauncher | ConfigurableClassData] = {
            ECS: ecs,
            LAMBDA: lambda_launcher,
        }
        self._children: dict[Target, RunLauncher] = {}
        self._children_lock = threading.Lock()

    # ConfigurableClass

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict[str, Field]:
        return {
            "ecs": _child_launcher_field("The launcher for ECS runs (dagster-aws EcsRunLauncher)."),
            "lambda": _child_launcher_field("The launcher for AWS Lambda runs."),
            "lambda_max_rows": Field(
                IntSource,
                is_required=False,
                default_value=DEFAULT_LAMBDA_MAX_ROWS,
                description="Runs estimated above this many rows go to ECS.",
            ),
            "lambda_max_tables": Field(
                Noneable(IntSource),
                is_required=False,
                default_value=DEFAULT_LAMBDA_MAX_TABLES,
                description="Runs loading more tables than this go to ECS (null: no limit).",
            ),
        }

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> Self:
        return cls(
            ecs=_class_data(config_value["ecs"]),
            lambda_launcher=_class_data(config_value["lambda"]),
            lambda_max_rows=config_value["lambda_max_rows"],
            lambda_max_tables=config_value.get("lambda_max_tables", DEFAULT_LAMBDA_MAX_TABLES),
            inst_data=inst_data,
        )

    # Children

    def register_instance(self, instance: DagsterInstance) -> None:
        super().register_instance(instance)
        with self._children_lock:
            for child in self._children.values():
                if not child.has_instance:
                    child.register_instance(instance)

    def child(self, target: Target) -> RunLauncher:
        """The child launcher for `target` (`"ecs"` or `"lambda"`), built on first use."""
        if target not in TARGETS:
            raise ValueError(f"unknown compute target {target!r}; expected one of {TARGETS}")
        with self._children_lock:
            launcher = self._children.get(target)
            if launcher is None:
                source = self._sources[target]
                launcher = (
                    source.rehydrate(as_type=RunLauncher)
                    if isinstance(source, ConfigurableClassData)
                    else source
                )
                if self.has_instance and not launcher.has_instance:
                    launcher.register_instance(self._instance)
                self._children[target] = launcher
            return launcher

    def _child_for_run(self, run: DagsterRun | None) -> RunLauncher | None:
        """The child that launched `run`, as recorded in its `pg_to_bq/compute` tag."""
        target = run.tags.get(COMPUTE_TAG) if run is not None else None
        if target not in TARGETS:
            return None
        return self.child(target)  # type: ignore[arg-type]  # checked just above

    # Routing

    def estimate_run_size(
        self, run: DagsterRun, workspace: BaseWorkspaceRequestContext | None
    ) -> SizeEstimate:
        """How much `run` loads: asset metadata from the code location, else the run's tag."""
        from_code = self._estimate_from_code_location(run, workspace)
        if from_code.rows is not None or ESTIMATED_ROWS_TAG not in run.tags:
            return from_code
        return estimate_from_tags(run.tags)

    def _estimate_from_code_location(
        self, run: DagsterRun, workspace: BaseWorkspaceRequestContext | None
    ) -> SizeEstimate:
        origin = run.remote_job_origin
        if workspace is None or origin is None:
            return SizeEstimate(rows=None, source="no workspace to read asset metadata from")
        try:
            repository = workspace.get_code_location(origin.location_name).get_repository(
                origin.repository_origin.repository_name
            )
            if run.asset_selection:
                snaps = [repository.get_asset_node_snap(key) for key in run.asset_selection]
            else:
                snaps = list(repository.get_asset_node_snaps(job_name=run.job_name))
        except Exception:  # the estimate is best effort; the launch must not depend on it
            log.warning(
                "Could not read asset metadata for run %s from code location %s",
                run.run_id,
                origin.location_name,
                exc_info=True,
            )
            return SizeEstimate(
                rows=None, source=f"code location {origin.location_name} unreadable"
            )
        return estimate_from_metadata(snap.metadata for snap in snaps if snap is not None)

    def decide(
        self, run: DagsterRun, workspace: BaseWorkspaceRequestContext | None = None
    ) -> Decision:
        """Where `run` should go, without launching it or recording anything."""
        return choose_compute(
            run.tags,
            self.estimate_run_size(run, workspace),
            lambda_max_rows=self.lambda_max_rows,
            lambda_max_tables=self.lambda_max_tables,
        )

    # RunLauncher

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        decision = self.decide(run, context.workspace)
        launcher = self.child(decision.target)
        self._instance.add_run_tags(
            run.run_id, {COMPUTE_TAG: decision.target, COMPUTE_REASON_TAG: decision.reason}
        )
        self._instance.report_engine_event(
            f"Routing run to {_LABELS[decision.target]}: {decision.reason}",
            run,
            EngineEventData(
                {
                    "compute": decision.target,
                    "reason": decision.reason,
                    "run launcher": type(launcher).__name__,
                }
            ),
            cls=self.__class__,
        )
        routed_run = self._instance.get_run_by_id(run.run_id) or run
        launcher.launch_run(LaunchRunContext(dagster_run=routed_run, workspace=context.workspace))

    def terminate(self, run_id: str) -> bool:
        launcher = self._child_for_run(self._instance.get_run_by_id(run_id))
        if launcher is None:
            log.warning("Run %s has no %s tag; not terminating it", run_id, COMPUTE_TAG)
            return False
        return launcher.terminate(run_id)

    @property
    def supports_check_run_worker_health(self) -> bool:
        # Always: for a child without health checks, check_run_worker_health reports RUNNING,
        # which leaves the run to the monitoring timeouts exactly as if health checks were
        # unsupported (any other status would make the monitoring daemon fail the run).
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        launcher = self._child_for_run(run)
        if launcher is None or not launcher.supports_check_run_worker_health:
            return CheckRunHealthResult(
                WorkerStatus.RUNNING,
                msg=f"run worker health not checked ({COMPUTE_TAG}={run.tags.get(COMPUTE_TAG)})",
            )
        return launcher.check_run_worker_health(run)

    def get_run_worker_debug_info(
        self, run: DagsterRun, include_container_logs: bool | None = True
    ) -> str | None:
        launcher = self._child_for_run(run)
        if launcher is None:
            return None
        return launcher.get_run_worker_debug_info(run, include_container_logs)

    @property
    def supports_resume_run(self) -> bool:
        return any(self.child(target).supports_resume_run for target in TARGETS)

    def resume_run(self, context: ResumeRunContext) -> None:
        run = context.dagster_run
        launcher = self._child_for_run(run)
        if launcher is None or not launcher.supports_resume_run:
            raise NotImplementedError(
                f"run {run.run_id} ran on {run.tags.get(COMPUTE_TAG)!r}, whose launcher cannot "
                "resume runs"
            )
        launcher.resume_run(context)

    def dispose(self) -> None:
        with self._children_lock:
            children = list(self._children.values())
        for launcher in children:
            launcher.dispose()

    def join(self, timeout: int = 30) -> None:
        with self._children_lock:
            children = list(self._children.values())
        for launcher in children:
            launcher.join(timeout)
