"""A Dagster run launcher that runs each run in one asynchronous AWS Lambda invocation.

The launcher invokes a container-image Lambda function (`InvocationType="Event"`) whose
handler is `pg_to_bq.launchers.lambda_handler.handler`. The event carries Dagster's
serialized `ExecuteRunArgs` (job origin, run id, instance ref), exactly what the ECS run
launcher hands to `dagster api execute_run`. The handler executes the run in-process and
owns the Lambda-specific parts: the deadline, cancellation and writable directories.

Lambda cannot be stopped from outside, so the life cycle works through the run's status
in the Dagster instance:

- `terminate` only marks the run CANCELING (Dagster's standard first step); the handler
  polls the run's status, interrupts the execution and the run ends CANCELED.
- The handler records its request id and deadline on the run as tags. Run monitoring
  (`check_run_worker_health`) reports a STARTED run as failed once that deadline plus a
  grace period has passed (the function was killed: timeout, out of memory, crash), or
  once the handler has left its exit marker without the run having finished.

Configured like any run launcher (or as the routing launcher's `lambda` child):

    run_launcher:
      module: pg_to_bq.launchers.lambda_launcher
      class: LambdaRunLauncher
      config:
        function_name: pg-to-bq-runs      # or the function's ARN
        qualifier: live                   # optional version or alias
        region_name: eu-west-1            # optional
        timeout_seconds: 900              # optional; else GetFunctionConfiguration

The function's image runs `python -m awslambdaric pg_to_bq.launchers.lambda_handler.handler`.
Set its asynchronous invocation retries to 0: a retried event never re-executes a run
(the handler refuses it), it only reports the run failed sooner.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Self

import boto3
from botocore.config import Config
from dagster import Field, IntSource, Noneable, StringSource
from dagster import _check as check
from dagster._core.events import EngineEventData
from dagster._core.launcher.base import (
    CheckRunHealthResult,
    LaunchRunContext,
    RunLauncher,
    WorkerStatus,
)
from dagster._core.storage.dagster_run import DagsterRun
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import ConfigurableClass, serialize_value
from dagster._serdes.config_class import ConfigurableClassData

# Run tags. The launcher writes the first three, the handler the rest.
FUNCTION_TAG = "pg_to_bq/lambda_function"
REQUEST_ID_TAG = "pg_to_bq/lambda_request_id"
INVOKED_AT_TAG = "pg_to_bq/lambda_invoked_at"
DEADLINE_TAG = "pg_to_bq/lambda_deadline"
LOG_STREAM_TAG = "pg_to_bq/lambda_log_stream"
EXITED_TAG = "pg_to_bq/lambda_exited_at"

#: Key of the Lambda event holding the serialized `ExecuteRunArgs`.
EVENT_ARGS_KEY = "execute_run_args"

DEFAULT_HEALTH_CHECK_GRACE_SECONDS = 60


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _float_tag(run: DagsterRun, key: str) -> float | None:
    value = run.tags.get(key)
    try:
        return float(value) if value else None
    except ValueError:
        return None


class LambdaRunLauncher(RunLauncher, ConfigurableClass):
    """Launches each run as one asynchronous invocation of a container-image AWS Lambda.

    Args:
        function_name: Name or ARN of the function whose handler is
            `pg_to_bq.launchers.lambda_handler.handler`.
        qualifier: Version or alias to invoke; the unqualified function when unset.
        region_name: AWS region; boto3's default resolution when unset.
        endpoint_url: Lambda API endpoint override (tests, VPC endpoints).
        timeout_seconds: The function's timeout. Read once with `GetFunctionConfiguration`
            when unset; only needed to judge a run whose handler never recorded its deadline.
        health_check_grace_seconds: How long after the Lambda deadline a run may still be
            STARTED before run monitoring reports its worker as failed.
    """

    def __init__(
        self,
        function_name: str,
        qualifier: str | None = None,
        region_name: str | None = None,
        endpoint_url: str | None = None,
        timeout_seconds: int | None = None,
        health_check_grace_seconds: int = DEFAULT_HEALTH_CHECK_GRACE_SECONDS,
        inst_data: ConfigurableClassData | None = None,
    ):
        self._inst_data = inst_data
        self.function_name = check.str_param(function_name, "function_name")
        self.qualifier = check.opt_str_param(qualifier, "qualifier")
        self.region_name = check.opt_str_param(region_name, "region_name")
        self.endpoint_url = check.opt_str_param(endpoint_url, "endpoint_url")
        self.timeout_seconds = check.opt_int_param(timeout_seconds, "timeout_seconds")
        self.health_check_grace_seconds = check.int_param(
            health_check_grace_seconds, "health_check_grace_seconds"
        )
        # Created on first use: building the launcher (daemon start, router) does no I/O.
        self._lambda_client: Any = None
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> Mapping[str, Field]:
        return {
            "function_name": Field(
                StringSource,
                description="Name or ARN of the Lambda function that executes runs.",
            ),
            "qualifier": Field(
                Noneable(StringSource),
                is_required=False,
                default_value=None,
                description="Version or alias of the function to invoke.",
            ),
            "region_name": Field(
                Noneable(StringSource),
                is_required=False,
                default_value=None,
                description="AWS region of the function (boto3's default when unset).",
            ),
            "endpoint_url": Field(
                Noneable(StringSource),
                is_required=False,
                default_value=None,
                description="Override of the Lambda API endpoint, for tests.",
            ),
            "timeout_seconds": Field(
                Noneable(IntSource),
                is_required=False,
                default_value=None,
                description=(
                    "The function's timeout in seconds; read with GetFunctionConfiguration when unset."
                ),
            ),
            "health_check_grace_seconds": Field(
                IntSource,
                is_required=False,
                default_value=DEFAULT_HEALTH_CHECK_GRACE_SECONDS,
                description=(
                    "Seconds after the Lambda deadline before run monitoring fails a run "
                    "that is still STARTED."
                ),
            ),
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> Self:
        return cls(inst_data=inst_data, **config_value)

    # --- AWS ---------------------------------------------------------------------------

    @property
    def lambda_client(self) -> Any:
        if self._lambda_client is None:
            self._lambda_client = boto3.client(
                "lambda",
                region_name=self.region_name,
                endpoint_url=self.endpoint_url,
                # Retries may deliver an Event twice, as Lambda itself may: the handler
                # ignores a delivery whose run is already executing or finished.
                config=Config(retries={"mode": "standard", "max_attempts": 3}),
            )
        return self._lambda_client

    @property
    def function_label(self) -> str:
        """The invoked function as shown in tags and events: `name[:qualifier]`."""
        return f"{self.function_name}:{self.qualifier}" if self.qualifier else self.function_name

    def function_timeout_seconds(self) -> int:
        """The function's timeout: from config, else from `GetFunctionConfiguration` (cached)."""
        if self.timeout_seconds is None:
            kwargs: dict[str, Any] = {"FunctionName": self.function_name}
            if self.qualifier:
                kwargs["Qualifier"] = self.qualifier
            self.timeout_seconds = int(self.lambda_client.get_function_configuration(**kwargs)["Timeout"])
        return self.timeout_seconds

    # --- RunLauncher ---------------------------------------------------------------------

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        job_origin = check.not_none(
            context.job_code_origin,
            f"Run {run.run_id} has no code origin; LambdaRunLauncher cannot launch it.",
        )
        # Like the ECS launcher: the container context is only needed to build compute
        # resources, and it can carry secrets, so it stays out of the event.
        repository_origin = job_origin.repository_origin._replace(container_context={})
        args = ExecuteRunArgs(
            job_origin=job_origin._replace(repository_origin=repository_origin),
            run_id=run.run_id,
            instance_ref=self._instance.get_ref(),
        )
        payload = json.dumps({EVENT_ARGS_KEY: serialize_value(args)}).encode()

        kwargs: dict[str, Any] = {
            "FunctionName": self.function_name,
            "InvocationType": "Event",
            "Payload": payload,
        }
        if self.qualifier:
            kwargs["Qualifier"] = self.qualifier
        invoked_at = time.time()
        response = self.lambda_client.invoke(**kwargs)
        status_code = response.get("StatusCode")
        if status_code != 202:
            raise RuntimeError(
                f"Lambda {self.function_label} did not accept the asynchronous invocation "
                f"for run {run.run_id}: status {status_code}"
            )
        request_id = response["ResponseMetadata"]["RequestId"]

        self._instance.add_run_tags(
            run.run_id,
            {
                FUNCTION_TAG: self.function_label,
                REQUEST_ID_TAG: request_id,
                INVOKED_AT_TAG: f"{invoked_at:.3f}",
            },
        )
        self._instance.report_engine_event(
            message=f"Launching run in AWS Lambda {self.function_label} (request {request_id})",
            dagster_run=run,
            engine_event_data=EngineEventData(
                {
                    "Lambda function": self.function_label,
                    "Lambda request id": request_id,
                    "Run ID": run.run_id,
                }
            ),
            cls=self.__class__,
        )

    def terminate(self, run_id: str) -> bool:
        """Ask the run's Lambda handler to stop: mark the run CANCELING.

        A Lambda invocation cannot be stopped from outside. The handler polls the run's
        status (every `run_monitoring.cancellation_thread_poll_interval_seconds`), interrupts
        the execution and reports the run CANCELED. Returns False for an unknown or finished
        run.
        """
        run = self._instance.get_run_by_id(run_id)
        if not run or run.is_finished:
            return False
        self._instance.report_run_canceling(
            run,
            message=(
                "Sending run termination request: the Lambda handler stops the run at its next status poll."
            ),
        )
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        """Judge the run's Lambda invocation from the tags the launcher and handler recorded.

        FAILED when the handler left its exit marker while the run is unfinished, or when the
        Lambda deadline plus `health_check_grace_seconds` has passed; RUNNING otherwise.
        """
        request_id = run.tags.get(REQUEST_ID_TAG)
        if not request_id:
            return CheckRunHealthResult(
                WorkerStatus.UNKNOWN, f"Run {run.run_id} has no Lambda request id tag."
            )
        where = f"Lambda {run.tags.get(FUNCTION_TAG, self.function_label)} request {request_id}"
        if run.is_finished:
            return CheckRunHealthResult(WorkerStatus.SUCCESS, run_worker_id=request_id)

        exited_at = _float_tag(run, EXITED_TAG)
        if exited_at is not None:
            return CheckRunHealthResult(
                WorkerStatus.FAILED,
                f"The run worker in {where} exited at {_iso(exited_at)} without the run "
                "reaching a final status.",
                run_worker_id=request_id,
            )

        deadline = _float_tag(run, DEADLINE_TAG)
        if deadline is None:
            # The handler has not recorded its deadline (not started yet): bound it by the
            # invocation time plus the function's timeout.
            invoked_at = _float_tag(run, INVOKED_AT_TAG)
            if invoked_at is None:
                return CheckRunHealthResult(WorkerStatus.UNKNOWN, f"{where} has no recorded invocation time.")
            try:
                deadline = invoked_at + self.function_timeout_seconds()
            except Exception as error:  # noqa: BLE001 - reported, retried next check
                return CheckRunHealthResult(
                    WorkerStatus.UNKNOWN,
                    f"Could not read the timeout of {where}: {error}",
                    transient=True,
                    run_worker_id=request_id,
                )

        overdue = time.time() - (deadline + self.health_check_grace_seconds)
        if overdue > 0:
            return CheckRunHealthResult(
                WorkerStatus.FAILED,
                f"{where} passed its deadline ({_iso(deadline)}) more than "
                f"{self.health_check_grace_seconds}s ago and the run is still {run.status.value}: "
                "the function was stopped (timeout, out of memory or crash) before it could "
                "report the run's outcome.",
                run_worker_id=request_id,
            )
        return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=request_id)

    def get_run_worker_debug_info(
        self, run: DagsterRun, include_container_logs: bool | None = True
    ) -> str | None:
        request_id = run.tags.get(REQUEST_ID_TAG)
        if not request_id:
            return None
        lines = [
            f"Lambda function: {run.tags.get(FUNCTION_TAG, self.function_label)}",
            f"Lambda request id: {request_id}",
        ]
        if run.tags.get(LOG_STREAM_TAG):
            lines.append(f"CloudWatch log stream: {run.tags[LOG_STREAM_TAG]}")
        deadline = _float_tag(run, DEADLINE_TAG)
        if deadline is not None:
            lines.append(f"Lambda deadline: {_iso(deadline)}")
        return "\n".join(lines)
