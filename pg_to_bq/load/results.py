"""What a load is asked to do (`TableLoad`, `Window`), a table read and waiting for the
load (`TableRead`), what a load reports (`LoadResult`), and the failures that are a
table's own."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pg_to_bq.checks.fingerprint import Fingerprint, Scope
from pg_to_bq.checks.outcomes import CheckOutcome, matches_source
from pg_to_bq.planning.errors import describe, is_transient
from pg_to_bq.planning.evolution import Evolution
from pg_to_bq.planning.tables import TablePlan

if TYPE_CHECKING:
    from pg_to_bq.load.cursor_window import WindowTracker
    from pg_to_bq.postgres.reader import TableReader


class EmptyTableError(ValueError):
    """A table without columns cannot be loaded; it is reported, not silently skipped."""


@dataclass(frozen=True)
class Window:
    """A half-open range [start, end) of the partition column, for backfills."""

    column: str
    start: Any
    end: Any


@dataclass(frozen=True)
class TableLoad:
    """One table to load in a group, and how."""

    plan: TablePlan
    full_refresh: bool = False
    window: Window | None = None
    # COPY connections reading the table (`pg_to_bq.planning.settings.streams_for` its size).
    streams: int = 1
    # After a merge, delete the destination rows whose key left the source (`pg_to_bq.load.deletes`).
    apply_deletes: bool = False


# `LoadResult.extra`'s key for why change capture, on, does not follow the table.
NOT_CAPTURED = "not_captured"
# ... and for the captured changes a read applied (`TableRead.captured`).
CAPTURED = "captured"


@dataclass
class LoadResult:
    table: str
    destination_table: str
    rows: int
    snapshot_rows: int | None
    load_id: str | None
    duration_s: float
    mode: str
    cursor_from: Any = None
    cursor_to: Any = None
    batches: int = 0
    # The whole source table's rows in the snapshot the rows were read in.
    table_rows: int | None = None
    # COPY connections the rows were read over (`streams_for` the table's size).
    streams: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    # "loaded", "unchanged" (nothing to merge) or "failed" (then `error` says why).
    status: str = "loaded"
    error: str | None = None
    # The failure's stack trace, for the Dagster event log (never the terminal by default).
    trace: str | None = None
    # Whether trying the same load again soon could succeed.
    transient: bool = False
    # Rows in the destination table after the load (None when not counted).
    destination_rows: int | None = None
    # Schema changes the load handled, in words.
    changes: tuple[str, ...] = ()
    # The values check (`pg_to_bq.checks.fingerprint`), when it ran.
    fingerprint: CheckOutcome | None = None
    # The row count check, when the destination's rows were counted.
    row_count: CheckOutcome | None = None
    # The column types check, after a load that created the table or changed its columns
    # (`pg_to_bq.checks.column_types`).
    types: CheckOutcome | None = None
    # What changed in the destination since the last load, not by pg_to_bq
    # (`pg_to_bq.checks.drift`), in words.
    drift: tuple[str, ...] = ()
    # What had changed there since the last load, not by pg_to_bq, when this run read the
    # table whole and replaced it (the copy is exact again; said, as a warning).
    drift_replaced: tuple[str, ...] = ()
    # Why a table whose state would have allowed less was read whole (its state could not
    # be trusted, `pg_to_bq.destinations.state_table.doubt`).
    reason: str | None = None
    # Rows the delete pass removed, when it ran, and the source's rows in its snapshot.
    deleted: int | None = None
    source_rows_after_deletes: int | None = None

    @property
    def unchanged(self) -> bool:
        """Nothing in its destination table changed this run: nothing loaded (`status`
        "unchanged") and no row deleted by a delete pass."""
        return self.status == "unchanged" and not self.deleted

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    @property
    def check(self) -> CheckOutcome | None:
        """The table's one check, `matches_source` (its rows, values, column types and
        drift), when any part of it ran."""
        parts = [c for c in (self.row_count, self.fingerprint, self.types) if c is not None]
        if not parts and not self.drift and not self.drift_replaced:
            return None
        return matches_source(parts, self.drift, self.drift_replaced)

    @property
    def lost(self) -> list[CheckOutcome]:
        """The check, when it says rows or values are missing or wrong (severity ERROR)."""
        check = self.check
        return [check] if check is not None and not check.passed and check.severity == "ERROR" \
            else []


class LoadJobFailed(RuntimeError):
    """The destination refused a table's load job (the message says why)."""


class PlanFailed(ValueError):
    """The table's plan has an error (an override that does not fit it)."""


def failure_result(plan: TablePlan, exc: BaseException, started: float, keep: bool = False,
                   role: str | None = None) -> LoadResult:
    """The result of a table that failed with `exc`. The exception is kept only for `keep`
    (to raise it): its frames hold the table's batches, so a run of many failing tables
    keeps only messages and stack traces. `role` (the login role) completes a missing
    privilege's GRANT."""
    message = describe(exc, table=(plan.table.schema, plan.table.name), role=role)
    if plan.name not in message.partition("; to fix: ")[0]:
        message = f"table {plan.name}: {message}"
    result = LoadResult(
        table=plan.name, destination_table=plan.destination_table, rows=0, snapshot_rows=None,
        load_id=None, duration_s=time.monotonic() - started, mode="-", status="failed",
        error=message, trace="".join(traceback.format_exception(exc)),
        transient=is_transient(exc))
    if keep:
        result.extra["exception"] = exc
    return result


def no_columns(plan: TablePlan) -> str:
    return (f"table {plan.name} has no loadable columns (it has {len(plan.table.columns)} in "
            f"PostgreSQL, {len(plan.excluded)} excluded); nothing was loaded")


@dataclass
class TableRead:
    """A table read into a parquet file, waiting for the group's load."""

    plan: TablePlan
    mode: str
    cursor_from: Any
    tracker: WindowTracker | None
    reader: TableReader
    path: Path
    started: float
    evolution: Evolution = field(default_factory=lambda: Evolution(exists=True))
    # Columns (destination names) whose values the rows already loaded must get (a fill).
    fill: tuple[str, ...] = ()
    changes: list[str] = field(default_factory=list)
    # The source side of the values check: its scope and aggregates (or why it is not).
    fingerprint: tuple[Scope, Fingerprint] | str | None = None
    # The row versions read (`pg_to_bq.postgres.row_versions`), stored once the load succeeded.
    versions: str | None = None
    # Why the table is read whole although its state would have allowed less.
    reason: str | None = None
    # Its partitions and enum labels as read (merged tables), stored with its state.
    definition: str | None = None
    # Change capture: the position this read covers (stored with the state), and the keys
    # it found gone from PostgreSQL (deleted from the destination after the load).
    cdc_lsn: int | None = None
    absent: list[tuple] = field(default_factory=list)
    # The oldest transaction running when it was read (`TableReader.snapshot_xmin`), stored
    # with the state: the next incremental read also reads every row written since.
    snapshot_xmin: int | None = None
    # Why change capture, on, does not follow this table (said on its line and asset).
    not_captured: str | None = None
    # The captured changes this read applies: positions (from, to] and counts by kind.
    captured: dict[str, int] | None = None
    # The destination table keeps soft-deleted rows (`pg_to_bq.destinations.soft_deletes`):
    # a whole read merges, never replaces them away.
    keeps_deleted: bool = False

    @property
    def merges_whole(self) -> bool:
        """A whole read merged (then the keys PostgreSQL no longer has are marked, or
        deleted if soft deletes are off now), keeping the rows marked deleted."""
        return self.mode == "full" and (self.plan.soft_deletes or self.keeps_deleted) \
            and bool(self.plan.primary_key) and self.evolution.exists and not self.refresh

    @property
    def refresh(self) -> bool:
        """The destination table is dropped and created again (a type it cannot widen to)."""
        return self.evolution.reload

    def result(self, load_id: str | None, status: str = "loaded") -> LoadResult:
        stats = self.reader.stats
        return LoadResult(
            table=self.plan.name, destination_table=self.plan.destination_table,
            # An unchanged table loaded nothing, whatever it read back to find out (its
            # lookback window): the materialization's `rows_loaded` and the CLI say 0.
            rows=0 if status == "unchanged" else stats.rows,
            snapshot_rows=stats.snapshot_rows, load_id=load_id,
            duration_s=time.monotonic() - self.started, mode=self.mode,
            cursor_from=self.cursor_from, cursor_to=self.tracker.max if self.tracker else None,
            batches=stats.batches, table_rows=stats.table_rows, streams=stats.streams,
            status=status, changes=tuple(self.changes), reason=self.reason,
            extra={**({NOT_CAPTURED: self.not_captured} if self.not_captured else {}),
                   **({CAPTURED: self.captured} if self.captured else {})})

    def failed(self, error: str) -> LoadResult:
        result = self.result(None, status="failed")
        result.error = error if error.startswith(f"table {self.plan.name}") else \
            f"table {self.plan.name}: the destination refused the load: {error}"
        return result
