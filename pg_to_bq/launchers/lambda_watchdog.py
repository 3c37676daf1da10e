"""The deadline and cancellation of a run inside Lambda: `PG_TO_BQ_LAMBDA_DEADLINE_MARGIN_S`
seconds (default 30) before the invocation's deadline the run is reported FAILURE with a
message saying so and interrupted, so the handler returns before Lambda kills it; a run
set CANCELING (by `LambdaRunLauncher.terminate`) is interrupted and ends CANCELED, as
Dagster's own cancellation thread does."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable

from dagster import (
    DagsterInstance,
)
from dagster._core.events import JobFailureData, RunFailureReason
from dagster._core.storage.dagster_run import DagsterRunStatus

from pg_to_bq.launchers.routing import COMPUTE_TAG, ECS

log = logging.getLogger(__name__)


DEADLINE_MARGIN_ENV = "PG_TO_BQ_LAMBDA_DEADLINE_MARGIN_S"


DEFAULT_DEADLINE_MARGIN_S = 30.0


#: Run statuses at which the handler stops executing (as Dagster's cancellation thread does).
STOP_STATUSES = frozenset({DagsterRunStatus.CANCELING, DagsterRunStatus.CANCELED, DagsterRunStatus.FAILURE})


def deadline_message(elapsed_s: float, margin_s: float) -> str:
    """The failure message of a run stopped at the Lambda deadline."""
    return (
        f"Lambda deadline reached after {elapsed_s:.0f}s: the run was stopped {margin_s:.0f}s "
        f"before the function's timeout. Rerun it on ECS with the tag "
        f"{COMPUTE_TAG}={ECS}."
    )


class RunWatchdog(threading.Thread):
    """Stops the execution on the main thread at the deadline or when the run is canceled.

    Wakes every `poll_interval_s` to read the run's status; at CANCELING, CANCELED or
    FAILURE it interrupts the main thread once (Dagster then ends the run CANCELED, or keeps
    the status it already has). When `remaining_s()` drops to `margin_s` and the run is
    still unfinished, it reports the run FAILURE with `deadline_message` (CANCELED if it
    was being canceled), then interrupts. `started_at` (monotonic) is when the invocation
    began, for the message.
    """

    def __init__(
        self,
        instance: DagsterInstance,
        run_id: str,
        remaining_s: Callable[[], float],
        margin_s: float,
        poll_interval_s: float,
        started_at: float | None = None,
        interrupt: Callable[[], None] | None = None,
    ):
        super().__init__(name="pg-to-bq-lambda-watchdog", daemon=True)
        self._instance = instance
        self._run_id = run_id
        self._remaining_s = remaining_s
        self._margin_s = margin_s
        self._poll_interval_s = poll_interval_s
        self._interrupt = interrupt or (lambda: os.kill(os.getpid(), signal.SIGINT))
        self._started_at = time.monotonic() if started_at is None else started_at
        self._shutdown = threading.Event()
        self.reason: str | None = None

    def shutdown(self) -> None:
        self._shutdown.set()
        self.join()

    def run(self) -> None:
        try:
            self._watch()
        except Exception:
            log.exception("watchdog of run %s failed; the deadline is no longer watched", self._run_id)

    def _watch(self) -> None:
        interrupted = False
        while not self._shutdown.is_set():
            until_deadline = self._remaining_s() - self._margin_s
            if until_deadline <= 0:
                self._stop_at_deadline()
                return
            if self._shutdown.wait(min(self._poll_interval_s, until_deadline)):
                return
            if interrupted:
                continue  # still stopping: keep watching the deadline only
            run = self._instance.get_run_by_id(self._run_id)
            if run is None or run.status in STOP_STATUSES:
                self.reason = f"run status {run.status.value if run else 'deleted'}"
                log.info("Run %s: %s, interrupting execution", self._run_id, self.reason)
                self._interrupt()
                interrupted = True

    def _stop_at_deadline(self) -> None:
        run = self._instance.get_run_by_id(self._run_id)
        if run is None or run.is_finished:
            return
        elapsed = time.monotonic() - self._started_at
        message = deadline_message(elapsed, self._margin_s)
        if run.status == DagsterRunStatus.CANCELING:
            self.reason = "deadline while canceling"
            self._instance.report_run_canceled(run, f"{message} (the run was being canceled)")
        else:
            self.reason = "deadline"
            self._instance.report_run_failed(
                run,
                message,
                JobFailureData(error=None, failure_reason=RunFailureReason.UNEXPECTED_TERMINATION),
            )
        log.warning("Run %s: %s", self._run_id, message)
        self._interrupt()


def deadline_margin_s() -> float:
    raw = os.environ.get(DEADLINE_MARGIN_ENV)
    if not raw:
        return DEFAULT_DEADLINE_MARGIN_S
    try:
        margin = float(raw)
    except ValueError as error:
        raise ValueError(f"{DEADLINE_MARGIN_ENV} must be a number of seconds, got {raw!r}") from error
    if margin < 0:
        raise ValueError(f"{DEADLINE_MARGIN_ENV} must not be negative, got {raw!r}")
    return margin
