"""AWS Lambda handler that executes one Dagster run launched by `LambdaRunLauncher`.

Lambda is not a container host: the root file system is read-only, only /tmp is
writable, HOME is unset, there is no /dev/shm, and the invocation is killed at its
deadline. So the handler

- points every writable directory under `PG_TO_BQ_WORK_DIR` (default `/tmp/pg_to_bq`):
  `DAGSTER_HOME` and `DLT_DATA_DIR` when unset, and the instance's local artifact and
  compute log storage when the launching instance's directories are not writable here;
  Dagster telemetry is disabled;
- executes the run in this process with Dagster's in-process executor, whatever executor
  the job was defined with (the multiprocess executor needs /dev/shm);
- watches the deadline: `PG_TO_BQ_LAMBDA_DEADLINE_MARGIN_S` seconds (default 30) before
  it, the run is reported FAILURE with a message saying so, and the execution is
  interrupted, so the handler returns before Lambda kills it;
- polls the run's status (every `run_monitoring.cancellation_thread_poll_interval_seconds`
  of the instance, default 10 s): CANCELING (from `LambdaRunLauncher.terminate`) interrupts
  the execution and the run ends CANCELED, as Dagster's own cancellation thread does.

Interrupts are Dagster's: a SIGINT to this process, raised inside the running op as
`DagsterExecutionInterruptedError`. awslambdaric calls the handler on the main thread,
which is where Python delivers signals.

The handler returns normally once the run has a final status; it raises only when it
cannot reach the run at all, so Lambda's asynchronous retries never run a run twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Set
from typing import Any

from dagster import (
    AssetCheckKey,
    AssetKey,
    DagsterInstance,
    JobDefinition,
    RepositoryDefinition,
    in_process_executor,
)
from dagster import _check as check
from dagster._core.definitions.job_base import IJob
from dagster._core.definitions.reconstruct import ReconstructableJob
from dagster._core.events import DagsterEvent, EngineEventData, JobFailureData, RunFailureReason
from dagster._core.execution.api import execute_run_iterator
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import deserialize_value
from dagster._utils.error import serializable_error_info_from_exc_info
from dagster._utils.hosted_user_process import recon_job_from_origin
from dagster._utils.interrupts import capture_interrupts

from pg_to_bq.launchers.lambda_environment import lambda_instance_ref, prepare_environment
from pg_to_bq.launchers.lambda_launcher import (
    DEADLINE_TAG,
    EVENT_ARGS_KEY,
    EXITED_TAG,
    LOG_STREAM_TAG,
    REQUEST_ID_TAG,
)
from pg_to_bq.launchers.lambda_watchdog import RunWatchdog, deadline_margin_s

# Imported here, during Lambda's init phase, instead of within the first invocation's
# time budget: the instance storage a deployment shares between the daemon and Lambda.
with contextlib.suppress(ImportError):
    import dagster_postgres  # noqa: F401

log = logging.getLogger(__name__)


# Executor settings that mean the same thing for the in-process executor; the rest
# (max_concurrent, start_method, tag_concurrency_limits) only apply to subprocesses.
_IN_PROCESS_EXECUTOR_KEYS = ("retries", "step_dependency_config")




# --- environment ------------------------------------------------------------------------










# --- in-process execution ---------------------------------------------------------------


class InProcessJob(IJob):
    """A reconstructable job whose executor is replaced by Dagster's in-process executor.

    Loading, subsetting and repository load data go through the `ReconstructableJob`;
    only the executor differs, so the steps run in this process without /dev/shm.
    """

    def __init__(self, recon_job: ReconstructableJob):
        self._recon_job = recon_job
        self._definition: JobDefinition | None = None

    def get_definition(self) -> JobDefinition:
        if self._definition is None:
            self._definition = self._recon_job.get_definition().with_executor_def(in_process_executor)
        return self._definition

    def get_repository_definition(self) -> RepositoryDefinition | None:
        return self._recon_job.get_repository_definition()

    def get_subset(
        self,
        *,
        op_selection: Iterable[str] | None = None,
        asset_selection: Set[AssetKey] | None = None,
        asset_check_selection: Set[AssetCheckKey] | None = None,
    ) -> InProcessJob:
        return InProcessJob(
            self._recon_job.get_subset(
                op_selection=op_selection,
                asset_selection=asset_selection,
                asset_check_selection=asset_check_selection,
            )
        )

    @property
    def op_selection(self) -> Set[str] | None:
        return self._recon_job.op_selection

    @property
    def asset_selection(self) -> Set[AssetKey] | None:
        return self._recon_job.asset_selection

    @property
    def asset_check_selection(self) -> Set[AssetCheckKey] | None:
        return self._recon_job.asset_check_selection


def in_process_run_config(run_config: Mapping[str, Any]) -> Mapping[str, Any]:
    """`run_config` with its executor section rewritten for the in-process executor.

    Understands `multi_or_in_process_executor` (`{"multiprocess": {...}}` or
    `{"in_process": {...}}`) and plain executor config; keeps only the settings the
    in-process executor shares (retries, step dependency config).
    """
    execution = run_config.get("execution")
    if not execution:
        return run_config
    config = (execution.get("config") if isinstance(execution, Mapping) else None) or {}
    for choice in ("in_process", "multiprocess"):
        if isinstance(config.get(choice), Mapping) or choice in config:
            config = config.get(choice) or {}
            break
    kept = {key: config[key] for key in _IN_PROCESS_EXECUTOR_KEYS if key in config}
    return {**run_config, "execution": {"config": kept}}


def _report_failed_if_unfinished(
    instance: DagsterInstance, run_id: str, message: str
) -> Iterator[DagsterEvent]:
    run = instance.get_run_by_id(run_id)
    if run and not run.is_finished:
        yield instance.report_run_failed(
            run,
            message,
            JobFailureData(error=None, failure_reason=RunFailureReason.RUN_EXCEPTION),
        )


def execute_run_in_process(instance: DagsterInstance, run: DagsterRun) -> Iterator[DagsterEvent]:
    """Execute `run` in this process, like `dagster api execute_run` but in-process.

    Mirrors `dagster._grpc.impl.core_execute_run`: load the job first (a load failure
    fails the run with the error), then execute with the run config's executor section
    adapted to the in-process executor.
    """
    origin = check.not_none(run.job_code_origin, f"Run {run.run_id} has no code origin.")
    try:
        instance.inject_env_vars(run.remote_job_origin.location_name if run.remote_job_origin else None)
        recon_job = recon_job_from_origin(origin)
        if run.has_repository_load_data:
            snapshot = instance.get_execution_plan_snapshot(check.not_none(run.execution_plan_snapshot_id))
            recon_job = recon_job.with_repository_load_data(snapshot.repository_load_data)
        job = InProcessJob(recon_job)
        job.get_definition()
    except Exception:
        yield instance.report_engine_event(
            "Could not load job definition.",
            run,
            EngineEventData.engine_error(serializable_error_info_from_exc_info(sys.exc_info())),
        )
        yield from _report_failed_if_unfinished(
            instance, run.run_id, "Could not load the job definition in the Lambda handler."
        )
        return

    # Reload: the run may have been canceled while the code location was loading.
    run = check.not_none(instance.get_run_by_id(run.run_id))
    run = run._replace(run_config=in_process_run_config(run.run_config))
    try:
        yield from execute_run_iterator(job, run, instance)
    except Exception:
        yield instance.report_engine_event(
            "An exception was thrown during execution that is likely a framework error, "
            "rather than an error in user code.",
            run,
            EngineEventData.engine_error(serializable_error_info_from_exc_info(sys.exc_info())),
        )
        yield from _report_failed_if_unfinished(
            instance, run.run_id, "The run worker in the Lambda handler raised an exception."
        )


# --- deadline and cancellation ----------------------------------------------------------




# --- handler ----------------------------------------------------------------------------




def parse_event(event: Mapping[str, Any]) -> ExecuteRunArgs:
    """The `ExecuteRunArgs` carried by a `LambdaRunLauncher` event."""
    if not isinstance(event, Mapping) or EVENT_ARGS_KEY not in event:
        raise ValueError(f"not a pg_to_bq run event: expected a JSON object with {EVENT_ARGS_KEY!r}")
    return deserialize_value(event[EVENT_ARGS_KEY], ExecuteRunArgs)


def _refuse_unless_startable(instance: DagsterInstance, run: DagsterRun, request_id: str) -> bool:
    """Handle a run this invocation must not execute; True when the handler should stop."""
    if run.is_finished:
        instance.report_engine_event(
            f"Lambda request {request_id} ignored: the run already finished ({run.status.value}).",
            run,
        )
        return True
    if run.status == DagsterRunStatus.CANCELING:
        instance.report_run_canceled(run, "Run canceled before its Lambda handler started.")
        return True
    if run.status == DagsterRunStatus.STARTED:
        # Lambda delivers an asynchronous event again after a failed attempt, and may
        # deliver it twice. Either way the run never executes a second time here.
        previous = run.tags.get(REQUEST_ID_TAG, "?")
        deadline = run.tags.get(DEADLINE_TAG)
        if deadline and float(deadline) < time.time():
            instance.report_run_failed(
                run,
                f"The Lambda attempt that started this run (request {previous}) stopped "
                "without finishing it; Lambda delivered the run again, which does not "
                "re-execute it.",
                JobFailureData(error=None, failure_reason=RunFailureReason.RUN_WORKER_RESTART),
            )
        else:
            instance.report_engine_event(
                f"Lambda request {request_id} ignored: the run is already executing (request {previous}).",
                run,
            )
        return True
    return False


def handler(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """Lambda entry point: execute the run described by `event` in this process."""
    started_at = time.monotonic()
    work_dir = prepare_environment()
    margin_s = deadline_margin_s()
    args = parse_event(event)
    request_id = getattr(context, "aws_request_id", None) or "local"
    instance_ref = lambda_instance_ref(check.not_none(args.instance_ref), work_dir)

    with DagsterInstance.from_ref(instance_ref) as instance:
        run = check.not_none(
            instance.get_run_by_id(args.run_id), f"Run {args.run_id} not found in the instance."
        )
        if _refuse_unless_startable(instance, run, request_id):
            return _result(instance, args.run_id, request_id)

        remaining_s = lambda: context.get_remaining_time_in_millis() / 1000.0  # noqa: E731
        tags = {
            REQUEST_ID_TAG: request_id,
            DEADLINE_TAG: f"{time.time() + remaining_s():.3f}",
        }
        log_stream = getattr(context, "log_stream_name", None)
        if log_stream:
            tags[LOG_STREAM_TAG] = f"{getattr(context, 'log_group_name', '')}:{log_stream}"
        instance.add_run_tags(run.run_id, tags)
        instance.report_engine_event(
            f"Started run worker in Lambda request {request_id} (pid {os.getpid()}, "
            f"in-process executor, {remaining_s():.0f}s until the Lambda deadline, "
            f"stopping {margin_s:.0f}s before it).",
            run,
            EngineEventData.in_process(os.getpid()),
        )

        try:
            with capture_interrupts():
                watchdog = RunWatchdog(
                    instance,
                    run.run_id,
                    remaining_s,
                    margin_s,
                    poll_interval_s=instance.cancellation_thread_poll_interval_seconds,
                    started_at=started_at,
                )
                watchdog.start()
                try:
                    for _ in execute_run_in_process(instance, run):
                        pass
                finally:
                    # Joined inside capture_interrupts: a late interrupt only sets a flag.
                    watchdog.shutdown()
            for _ in _report_failed_if_unfinished(
                instance, run.run_id, "The Lambda run worker ended without a final run status."
            ):
                pass
        except BaseException:
            instance.report_engine_event(
                "The Lambda run worker failed.",
                run,
                EngineEventData.engine_error(serializable_error_info_from_exc_info(sys.exc_info())),
            )
            for _ in _report_failed_if_unfinished(
                instance, run.run_id, "The Lambda run worker failed; see the engine event."
            ):
                pass
        finally:
            instance.add_run_tags(run.run_id, {EXITED_TAG: f"{time.time():.3f}"})
            instance.report_engine_event(f"Lambda request {request_id} finished.", run)
        return _result(instance, run.run_id, request_id)


def _result(instance: DagsterInstance, run_id: str, request_id: str) -> dict[str, Any]:
    run = instance.get_run_by_id(run_id)
    return {
        "run_id": run_id,
        "status": run.status.value if run else None,
        "request_id": request_id,
    }
