"""Load tables with dlt, fed Arrow batches from `pg_to_bq.extract`.

Tables load in groups (`load_group`): every table of a group is read, in turn, into a
parquet file (`pg_to_bq.parquet_files`), then ONE dlt extract, normalize and load takes all
the files, whose load jobs dlt runs in parallel threads. dlt's fixed costs — resolving its
configuration, restoring state from the destination, creating a load package, updating the
stored schema, recording the load — are paid once per group, not per table. A large table
is a group of its own. Nothing about one table stops another: a table that cannot be read
fails alone before dlt sees it; a table whose load job fails is recorded and the others
complete (`load.raise_on_failed_jobs` off); when dlt fails the package as a whole, each
table is loaded again on its own, so only the culprit fails.

State: each group has its own dlt pipeline (and `pg_to_bq.plan.TablePlan.pipeline_name`
for a table loaded alone); a table's cursor and lookback-window digest are stored in the
destination by `pg_to_bq.cursor_store`, keyed by table, so a fresh container resumes where
the last load stopped, whichever step loads the table. They are written after the load,
for the tables whose load succeeded: a table that failed never has its cursor moved past
rows it did not load, and a run killed in between leaves cursors behind, which only
re-reads rows.

An incremental run re-reads the rows inside the lookback window of the last cursor. When
it reads back exactly the rows the last load recorded for that window (and nothing
newer), a merge would change nothing: the table is not loaded at all.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dlt
import pyarrow as pa
from dlt.common.schema import Schema
from dlt.common.schema.typing import LOADS_TABLE_NAME

from pg_to_bq import tuple_versions
from pg_to_bq.adbc_session import AdbcSession
from pg_to_bq.checks import FINGERPRINT, CheckOutcome, row_count_outcome
from pg_to_bq.cursor_store import (
    INVALIDATED_KEY,
    LOAD_ID_KEY,
    ROWS_KEY,
    SOURCE_OID_KEY,
    doubt,
    invalidated,
    read_states,
    write_states,
)
from pg_to_bq.cursor_window import (
    WindowTracker,
    lookback_of,
    max_of,
    state_value,
    window_digest,
)
from pg_to_bq.destination_schema import (
    alter_statements,
    apply,
    forget_stored_schema,
    planned_types,
    stored_columns,
    type_mapper,
)
from pg_to_bq.errors import describe, is_transient
from pg_to_bq.evolution import Change, Evolution, diff
from pg_to_bq.extract import TableReader, literal
from pg_to_bq.file_lock import exclusive
from pg_to_bq.fingerprint import (
    DEFAULT_RANGE_ROWS,
    Fingerprint,
    Scope,
    bounds_sql,
    compare,
    destination_sql_many,
    not_compared,
    parse,
    scope_for,
    source_sql,
    split_many,
)
from pg_to_bq.parquet_files import remove_stale_files, write_table_file
from pg_to_bq.plan import TablePlan
from pg_to_bq.source import SourceUnreachable, login_role, with_options
from pg_to_bq.source import describe as describe_source
from pg_to_bq.typemap import quote_ident

log = logging.getLogger(__name__)


class _QuietHintOverride(logging.Filter):
    """JSON columns travel as Arrow strings with a dlt `json` hint, on purpose; dlt warns about
    every such column on every load ("several column hints were different")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "several column hints were different" not in record.getMessage()


logging.getLogger("dlt").addFilter(_QuietHintOverride())

CURSOR_STATE_KEY = "pg_to_bq_cursor"
WINDOW_STATE_KEY = "pg_to_bq_window"
VERSIONS_STATE_KEY = "pg_to_bq_versions"
# A merged table's partitions and enum labels (`pg_to_bq.tuple_versions.definitions`).
DEFINITION_STATE_KEY = "definition"
# DuckDB's buffer pool defaults to 80% of RAM and holds the loaded table's blocks, so the
# process grew with the table (1.3 GB at 5M rows); bounded, DuckDB spills to disk instead.
# 88 MB holds the row groups two threads build for a ~300-byte row (64 MB spilled ~100 MB and
# took 40% more CPU); wider rows get more (`pg_to_bq.duckdb_destination`).
# Not keeping insertion order lets it insert with bounded memory (tables are unordered).
DUCKDB_GLOBAL_CONFIG = {"memory_limit": "88MB", "preserve_insertion_order": False}
# A table's read is tried this many times when it fails in a way that can pass (a dropped
# connection, a serialization failure), waiting RETRY_DELAY_S, then twice that, between.
READ_ATTEMPTS = 3
RETRY_DELAY_S = 2.0
# Row counts of this many tables are asked of the destination in one query.
COUNT_QUERY_TABLES = 200


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
    # COPY connections reading the table (`pg_to_bq.settings.streams_for` its size).
    streams: int = 1
    # After a merge, delete the destination rows whose key left the source (`pg_to_bq.deletes`).
    apply_deletes: bool = False


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
    # The values check (`pg_to_bq.fingerprint`), when it ran.
    fingerprint: CheckOutcome | None = None
    # The row count check, when the destination's rows were counted.
    row_count: CheckOutcome | None = None
    # Why a table whose state would have allowed less was read whole (its state could not
    # be trusted, `pg_to_bq.cursor_store.doubt`).
    reason: str | None = None
    # Rows the delete pass removed, when it ran, and the source's rows in its snapshot.
    deleted: int | None = None
    source_rows_after_deletes: int | None = None

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    @property
    def checks(self) -> list[CheckOutcome]:
        """The checks of the load: row count, then values."""
        return [c for c in (self.row_count, self.fingerprint) if c is not None]

    @property
    def lost(self) -> list[CheckOutcome]:
        """Failed checks saying rows or values are missing or wrong (severity ERROR)."""
        return [c for c in self.checks if not c.passed and c.severity == "ERROR"]


def pipelines_dir(work_dir: Path) -> Path:
    return work_dir / "pipelines"


def make_pipeline(plan: TablePlan, destination: Any, dataset: str, work_dir: Path) -> dlt.Pipeline:
    """The pipeline of `plan`'s table loaded alone; its working files live under `work_dir`."""
    return group_pipeline(plan.pipeline_name, destination, dataset, work_dir)


def group_pipeline(name: str, destination: Any, dataset: str, work_dir: Path) -> dlt.Pipeline:
    """The dlt pipeline `name` (a group's, or a table's); its files live under `work_dir`."""
    return dlt.pipeline(
        pipeline_name=name,
        destination=destination,
        dataset_name=dataset,
        pipelines_dir=str(pipelines_dir(work_dir)),
        # A trace file per step, rewritten after each of them: nothing here reads it.
        enable_runtime_trace=False,
    )


def dlt_settings(destination: Any) -> dict[str, Any]:
    """dlt settings for our loads, applied while a group loads. They are defaults in dlt's
    `config.toml` layer, so environment variables (e.g. `LOAD__TRUNCATE_STAGING_DATASET`)
    still override them."""
    values: dict[str, Any] = {
        # Loaded parquet files are not kept in the working directory (a container's /tmp):
        # they would otherwise pile up, one copy of every table per run.
        "load.delete_completed_jobs": True,
        # Replace and merge go through staging tables; empty them after the load instead of
        # keeping a second copy of every table in the destination.
        "load.truncate_staging_dataset": True,
        # A table whose load job fails is recorded in the package and the other tables'
        # jobs complete; `_load_files` reads the failures from the load info.
        "load.raise_on_failed_jobs": False,
    }
    if destination.destination_name == "duckdb":
        # A local file read once by DuckDB: compressing it only costs CPU on both sides.
        values["data_writer.compression"] = "none"
        values["destination.duckdb.credentials.global_config"] = {
            **DUCKDB_GLOBAL_CONFIG, **getattr(destination, "duckdb_settings", {})}
    return values


def load_table(
    plan: TablePlan,
    *,
    source_url: str,
    destination: Any,
    dataset: str,
    work_dir: Path,
    full_refresh: bool = False,
    window: Window | None = None,
    batch_bytes: int = 16 * 1024 * 1024,
    hash_salt: bytes | None = None,
    statement_timeout_s: int = 3600,
    on_batch: Callable[[int], None] | None = None,
    streams: int = 1,
    pipeline_name: str | None = None,
    record_state: bool = True,
) -> LoadResult:
    """Extract `plan`'s table and load it with its own pipeline; raises when it fails.

    `full_refresh` replaces the destination table (and resets the incremental cursor);
    `window` re-reads one partition and merges it. Otherwise a merge plan with a cursor
    reads rows at or after the last cursor minus the lookback, and others are replaced.
    An incremental read that finds exactly the rows the last load recorded for its
    lookback window loads nothing (`status == "unchanged"`). `streams` > 1 reads a large
    table over that many connections (see `TableReader`). Side loads (a fill, a delete
    pass's keys) name their own `pipeline_name` and keep no state (`record_state`).
    """
    if not plan.columns and plan.error is None:
        raise EmptyTableError(_no_columns(plan))
    [result] = load_group(
        [TableLoad(plan, full_refresh=full_refresh, window=window, streams=streams)],
        pipeline_name=pipeline_name or plan.pipeline_name, source_url=source_url,
        destination=destination, dataset=dataset, work_dir=work_dir, batch_bytes=batch_bytes,
        hash_salt=hash_salt, statement_timeout_s=statement_timeout_s, on_batch=on_batch,
        count_rows=False, raise_errors=True, record_state=record_state)
    return result


def load_group(
    loads: Sequence[TableLoad],
    *,
    pipeline_name: str,
    source_url: str,
    destination: Any,
    dataset: str,
    work_dir: Path,
    batch_bytes: int = 16 * 1024 * 1024,
    hash_salt: bytes | None = None,
    statement_timeout_s: int = 3600,
    on_batch: Callable[[str, int], None] | Callable[[int], None] | None = None,
    on_result: Callable[[LoadResult], None] | None = None,
    count_rows: bool = True,
    raise_errors: bool = False,
    destination_lock: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    record_state: bool = True,
    fingerprint_rows: int | None = None,
) -> list[LoadResult]:
    """Load `loads` with the dlt pipeline `pipeline_name`; a result per table, in order.

    A table that fails has a result with `status == "failed"` and the others load (with
    `raise_errors`, the first failure is raised instead, as `load_table` does). `on_result`
    is called with each table's result as soon as it is known (a failed read at once, the
    loaded tables after the group's load). `count_rows` asks the destination for each loaded
    table's rows (one query for many tables). `destination_lock` is held while the
    destination is used (restoring state, loading), not while the tables are read. Loads of
    one pipeline on one machine take turns (its working directory holds its packages).
    Schema changes are handled as `pg_to_bq.evolution` says, and listed in each result.
    With `fingerprint_rows` (the whole-table limit), each loaded table's values are
    compared with PostgreSQL's (`pg_to_bq.fingerprint`): the source side in the snapshot
    the table was read in, the destination side after the load, one query for the group.
    """
    run = _GroupRun(
        loads=loads, source_url=source_url, dataset=dataset, work_dir=work_dir,
        batch_bytes=batch_bytes, hash_salt=hash_salt, statement_timeout_s=statement_timeout_s,
        on_batch=on_batch, on_result=on_result, count_rows=count_rows,
        raise_errors=raise_errors, destination_lock=destination_lock,
        record_state=record_state, fingerprint_rows=fingerprint_rows)
    with exclusive(pipelines_dir(work_dir) / pipeline_name, _waiting_for(pipeline_name)):
        run.pipeline = group_pipeline(pipeline_name, destination, dataset, work_dir)
        with dlt.config.values(dlt_settings(run.pipeline.destination)):
            try:
                return run.execute()
            finally:
                # The destination's buffers (DuckDB's, in this process) go back to the OS
                # after each group: a run of many groups would otherwise keep them all.
                _release_memory()


def _waiting_for(pipeline_name: str) -> Callable[[float], None]:
    def waiting(seconds: float) -> None:
        log.info("waiting for another load of %s on this machine to finish (%.0f s so far)",
                 pipeline_name, seconds)

    return waiting


class LoadJobFailed(RuntimeError):
    """The destination refused a table's load job (the message says why)."""


@dataclass
class _Read:
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
    # The row versions read (`pg_to_bq.tuple_versions`), stored once the load succeeded.
    versions: str | None = None
    # Why the table is read whole although its state would have allowed less.
    reason: str | None = None
    # Its partitions and enum labels as read (merged tables), stored with its state.
    definition: str | None = None

    @property
    def refresh(self) -> bool:
        """The destination table is dropped and created again (a type it cannot widen to)."""
        return self.evolution.reload

    def result(self, load_id: str | None, status: str = "loaded") -> LoadResult:
        stats = self.reader.stats
        return LoadResult(
            table=self.plan.name, destination_table=self.plan.destination_table,
            rows=stats.rows, snapshot_rows=stats.snapshot_rows, load_id=load_id,
            duration_s=time.monotonic() - self.started, mode=self.mode,
            cursor_from=self.cursor_from, cursor_to=self.tracker.max if self.tracker else None,
            batches=stats.batches, table_rows=stats.table_rows, streams=stats.streams,
            status=status, changes=tuple(self.changes), reason=self.reason)

    def failed(self, error: str) -> LoadResult:
        result = self.result(None, status="failed")
        result.error = error if error.startswith(f"table {self.plan.name}") else \
            f"table {self.plan.name}: the destination refused the load: {error}"
        return result


@dataclass
class _GroupRun:
    """One `load_group` call: its settings, and the steps it goes through."""

    loads: Sequence[TableLoad]
    source_url: str
    dataset: str
    work_dir: Path
    batch_bytes: int
    hash_salt: bytes | None
    statement_timeout_s: int
    on_batch: Callable[..., None] | None
    on_result: Callable[[LoadResult], None] | None
    count_rows: bool
    raise_errors: bool
    destination_lock: Callable[[], contextlib.AbstractContextManager]
    record_state: bool
    fingerprint_rows: int | None = None
    pipeline: Any = None
    results: dict[int, LoadResult] = field(default_factory=dict)

    def settle(self, index: int, result: LoadResult) -> None:
        self.results[index] = result
        exception = result.extra.pop("exception", None)
        if self.raise_errors and result.status == "failed":
            raise exception or LoadJobFailed(result.error)
        if self.on_result is not None:
            self.on_result(result)

    def execute(self) -> list[LoadResult]:
        pipeline = self.pipeline
        plans = [load.plan for load in self.loads if load.plan.loadable]
        counting = self.count_rows or self.record_state
        with self.destination_lock(), _one_connection(pipeline):
            _sync_once(pipeline)
            evolutions = _evolutions(pipeline, plans)
            states, doubts = _trusted_states(pipeline, plans, evolutions) \
                if self.record_state else ({}, {})
        unchanged: list[tuple[int, LoadResult]] = []

        def settle_read(index: int, result: LoadResult) -> None:
            # An unchanged table is settled with the loaded ones, once its rows are counted.
            if result.status == "unchanged" and counting:
                unchanged.append((index, result))
            else:
                self.settle(index, result)

        read = self.read_all(states, evolutions, doubts, settle_read)
        failures: dict[str, str] = {}
        loaded: list[tuple[int, _Read]] = []
        load_id = None
        counts: dict[str, int] = {}
        checked: dict[str, CheckOutcome] = {}
        results: list[tuple[int, LoadResult]] = []
        if read or unchanged:
            with self.destination_lock(), _one_connection(pipeline):
                if read:
                    failures = _prepare(pipeline, [r for _, r in read], states,
                                        self.record_state)
                    ready = [r for _, r in read if r.plan.destination_table not in failures]
                    load_failures, load_id = _load_files(pipeline, ready)
                    failures.update(load_failures)
                    loaded = [(i, r) for i, r in read
                              if r.plan.destination_table not in failures]
                    failures.update(self.fill([r for _, r in loaded]))
                    loaded = [(i, r) for i, r in loaded if r.plan.destination_table not in failures]
                results = [(i, item.result(load_id)) for i, item in loaded] + unchanged
                self.delete_pass(results)
                if counting:
                    counts, _ = _count_rows(pipeline, [r.destination_table for _, r in results])
                checked = _compare_fingerprints(pipeline, [r for _, r in loaded])
                for index, result in results:
                    result.destination_rows = counts.get(result.destination_table)
                    result.fingerprint = checked.get(result.destination_table)
                    result.row_count = row_count_outcome(
                        mode=result.mode, disposition=self.loads[index].plan.disposition,
                        destination_rows=result.destination_rows,
                        snapshot_rows=result.snapshot_rows, table_rows=result.table_rows,
                        source_rows_after_deletes=result.source_rows_after_deletes)
                if self.record_state:
                    _commit_states(pipeline, [r for _, r in loaded], states, load_id, counts,
                                   [r for _, r in results])
        for index, item in read:
            if item.plan.destination_table in failures:
                self.settle(index, item.failed(failures[item.plan.destination_table]))
        for index, result in results:
            self.settle(index, result)
        return [self.results[i] for i in sorted(self.results)]

    def delete_pass(self, results: list[tuple[int, LoadResult]]) -> None:
        """The delete pass of the merged tables that asked for one (`pg_to_bq.deletes`), after
        their load and fill, loaded or unchanged. A table whose pass fails fails, its rows
        loaded (its state is kept: it covers them)."""
        from pg_to_bq.deletes import apply_deletes

        for index, result in results:
            plan = self.loads[index].plan
            if not self.loads[index].apply_deletes or plan.disposition != "merge" \
                    or result.mode == "full":
                continue
            try:
                result.deleted, result.source_rows_after_deletes = apply_deletes(
                    plan, source_url=self.source_url, destination=self.pipeline.destination,
                    dataset=self.dataset, work_dir=self.work_dir, batch_bytes=self.batch_bytes,
                    statement_timeout_s=self.statement_timeout_s)
            except Exception as exc:  # noqa: BLE001 - this table's own failure
                result.status = "failed"
                result.error = (f"table {plan.name}: the delete pass failed ({describe(exc)}); "
                                "its rows are loaded, and rows deleted in PostgreSQL stay until "
                                "a pass succeeds")
                result.trace = "".join(traceback.format_exception(exc))

    def read_all(self, states: dict[str, dict[str, Any]], evolutions: dict[str, Evolution],
                 doubts: dict[str, str], settle: Callable[[int, LoadResult], None]
                 ) -> list[tuple[int, _Read]]:
        """Read each table into a parquet file over one connection (each table in its own
        snapshot); tables that fail are settled at once, the others returned to be loaded."""
        files = Path(self.pipeline.working_dir) / "pg_to_bq_files"
        for stale in remove_stale_files(files):
            log.info("removed %s, left by an extraction that did not finish", stale)
        read: list[tuple[int, _Read]] = []
        with _Sessions(self.source_url, self.statement_timeout_s) as sessions:
            definitions = self.definitions(sessions)
            for index, load in enumerate(self.loads):
                started = time.monotonic()
                table = load.plan.destination_table
                state, doubt = states.get(table, {}), doubts.get(table)
                definition = definitions.get(load.plan.table.oid)  # type: ignore[arg-type]
                stored = state.get(DEFINITION_STATE_KEY)
                if load.plan.disposition == "merge" and stored is not None \
                        and stored != definition:
                    state, doubt = {}, ("a partition was attached or detached, or a label of "
                                        "an enum it uses changed, since its last load")
                try:
                    item = self.read_with_retries(
                        load, state, evolutions.get(table), sessions, files, doubt)
                    if isinstance(item, _Read):
                        item.definition = definition
                except Exception as exc:  # noqa: BLE001 - one table's failure is its own
                    settle(index, _failure(load.plan, exc, started, self.raise_errors,
                                           login_role(self.source_url)))
                    continue
                if isinstance(item, LoadResult):
                    settle(index, item)
                else:
                    read.append((index, item))
        _release_memory()
        return read

    def definitions(self, sessions: _Sessions) -> dict[int, str]:
        """The partitions and enum labels of the merged tables (`tuple_versions.definitions`),
        one query; none when it cannot be asked (each table's read then says why)."""
        oids = [load.plan.table.oid for load in self.loads if load.plan.loadable
                and load.plan.disposition == "merge" and load.plan.table.oid is not None]
        if not oids or not self.record_state:
            return {}
        try:
            return tuple_versions.definitions(sessions.get(), oids)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - the reads fail on their own, with retries
            sessions.discard()
            log.info("the merged tables' partitions and enum labels were not read: %s",
                     describe(exc))
            return {}

    def read_with_retries(self, load: TableLoad, state: dict[str, Any],
                          evolution: Evolution | None, sessions: _Sessions,
                          files: Path, doubt: str | None = None) -> _Read | LoadResult:
        for attempt in range(1, READ_ATTEMPTS + 1):
            try:
                return self.read_table(load, state, evolution, sessions, files, doubt)
            except Exception as exc:
                sessions.discard()
                if attempt == READ_ATTEMPTS or not is_transient(exc):
                    raise
                delay = RETRY_DELAY_S * 2 ** (attempt - 1)
                log.warning("reading %s failed (%s); trying again in %.0f s", load.plan.name,
                            describe(exc), delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def read_table(self, load: TableLoad, state: dict[str, Any], evolution: Evolution | None,
                   sessions: _Sessions, files: Path, doubt: str | None = None
                   ) -> _Read | LoadResult:
        """Read one table into a parquet file (or find it unchanged since the last load).
        `doubt` says why the table's stored state was not trusted (then `state` is empty)."""
        plan = load.plan
        if plan.error is not None:
            raise PlanFailed(plan.error)
        if not plan.columns:
            raise EmptyTableError(_no_columns(plan))
        evolution = evolution or Evolution(exists=False)
        started = time.monotonic()
        # A table the destination does not have is read whole, whatever the cursor says (a
        # cursor without its rows would skip them), unless one partition is asked for; a
        # table that must be dropped for a new type is read whole, every partition of it.
        whole = (not evolution.exists and load.window is None) or evolution.reload
        mode, where, cursor_from = _choose_mode(plan, state, load.full_refresh or whole,
                                                None if whole else load.window)
        pending = tuple(state.get(PENDING_FILL_STATE_KEY, ()))
        fill = () if mode == "full" or plan.disposition != "merge" else tuple(
            dict.fromkeys([*evolution.added, *(c for c in pending
                                               if c in {m.name for m in plan.columns})]))
        stored_window = state.get(WINDOW_STATE_KEY) if mode == "incremental" else None
        reader = TableReader(
            sessions.url, plan, where=where, batch_bytes=self.batch_bytes,
            hash_salt=self.hash_salt, statement_timeout_s=self.statement_timeout_s,
            streams=load.streams, count_table=True, session=sessions.get(),
        )
        tracker = WindowTracker(plan, mode) if plan.cursor is not None and mode != "window" \
            else None
        report = _batch_reporter(self.on_batch, plan)
        changes = _describe_changes(plan, evolution, state, mode, fill)
        reason = doubt if doubt and mode == "full" and not load.full_refresh else None
        with reader:
            versions = None
            if mode in ("full", "incremental") and tuple_versions.applies(plan):
                versions = tuple_versions.token(reader, plan, self.hash_salt)
                if versions == state.get(VERSIONS_STATE_KEY) and not load.full_refresh \
                        and evolution.exists and not evolution.changed and not fill:
                    # Not one row version changed since the last load: nothing to read.
                    unchanged = _Read(plan, mode, cursor_from, None, reader, Path(), started)
                    result = unchanged.result(None, status="unchanged")
                    result.extra["unchanged"] = "versions"
                    return result
            ahead: list[pa.RecordBatch] | None = None
            if stored_window and not evolution.changed and not fill \
                    and reader.stats.snapshot_rows == stored_window.get("rows"):
                ahead = list(reader.batches())
                if window_digest(ahead, reader.schema) == stored_window.get("digest"):
                    report(reader.stats.rows)
                    unchanged = _Read(plan, mode, cursor_from, None, reader, Path(), started)
                    result = unchanged.result(None, status="unchanged")
                    result.cursor_to = max_of(ahead, plan)
                    result.extra["unchanged"] = True
                    return result

            def batches() -> Iterator[pa.RecordBatch]:
                for batch in reader.batches() if ahead is None else ahead:
                    if tracker is not None and batch.num_rows:
                        tracker.add(batch)
                    report(batch.num_rows)
                    yield batch

            path, _ = write_table_file(batches(), reader.schema, files,
                                       self.pipeline.destination.destination_name)
            source_fingerprint = None
            if self.fingerprint_rows is not None:
                source_fingerprint = _source_fingerprint(plan, reader, mode,
                                                         self.fingerprint_rows)
        return _Read(plan, mode, cursor_from, tracker, reader, path, started, evolution, fill,
                     changes, source_fingerprint, versions, reason)

    def fill(self, loaded: list[_Read]) -> dict[str, str]:
        """Fill the columns added to merged tables for their existing rows; a table whose
        fill fails fails (its rows loaded; the next run fills them, see `_prepare`)."""
        from pg_to_bq.backfill import fill_columns

        failures = {}
        for item in loaded:
            if not item.fill:
                continue
            try:
                rows = fill_columns(
                    item.plan, item.fill, source_url=self.source_url,
                    destination=self.pipeline.destination, dataset=self.dataset,
                    work_dir=self.work_dir, batch_bytes=self.batch_bytes,
                    statement_timeout_s=self.statement_timeout_s, hash_salt=self.hash_salt)
            except Exception as exc:  # noqa: BLE001 - this table's own failure
                failures[item.plan.destination_table] = (
                    f"table {item.plan.name}: new column(s) {', '.join(item.fill)} were not "
                    f"filled for the rows loaded before ({describe(exc)}); its rows are "
                    "loaded and the next run fills them")
                continue
            item.changes.append(f"filled {', '.join(item.fill)} for {rows:,} existing row(s)")
        return failures


def _source_fingerprint(plan: TablePlan, reader: TableReader, mode: str, full_rows: int
                        ) -> tuple[Scope, Fingerprint] | str:
    """The source side of the values check, in the snapshot the table was read in. A table
    of at most `full_rows` rows is compared whole; a larger one in key ranges sized by what
    the load read, so the check costs a small share of the load (digesting a row costs
    about as much as loading it: a whole 1M-row table would double the load)."""
    if mode == "window":
        return "not computed for a run of one partition: the check compares whole tables"
    try:
        stats = reader.stats
        table_rows = stats.table_rows if stats.table_rows is not None else stats.rows
        bounds = None
        bounds_query = bounds_sql(plan)
        if bounds_query is not None and table_rows > full_rows:
            row = reader.query_one(bounds_query)
            if row and row[0] is not None:
                bounds = (int(row[0]), int(row[1]))
        range_rows = max(MIN_RANGE_ROWS, min(DEFAULT_RANGE_ROWS, stats.rows // 4))
        scope = scope_for(plan, table_rows, uuid.uuid4().hex, full_rows=full_rows,
                          range_rows=range_rows, bounds=bounds)
        row = reader.query_one(source_sql(plan, scope, server_encoding=reader.server_encoding()))
        assert row is not None
        return scope, parse(plan, row, scope)
    except Exception as exc:  # noqa: BLE001 - the load stands; the check says why it did not run
        return f"not computed: the PostgreSQL side failed ({describe(exc)})"


# Tables whose destination side one query computes; a key range holds at least this many
# rows, however few the load read.
FINGERPRINT_QUERY_TABLES = 50
MIN_RANGE_ROWS = 200


def _compare_fingerprints(pipeline: dlt.Pipeline, loaded: list[_Read]) -> dict[str, CheckOutcome]:
    """The values check of each loaded table (see `load_group`)."""
    outcomes: dict[str, CheckOutcome] = {}
    ready = []
    for item in loaded:
        if isinstance(item.fingerprint, str):
            outcomes[item.plan.destination_table] = CheckOutcome(
                FINGERPRINT, False, "WARN", item.fingerprint)
        elif item.fingerprint is not None:
            ready.append(item)
    if not ready:
        return outcomes
    kind = pipeline.destination.destination_name
    try:
        with pipeline.sql_client() as client:
            for start in range(0, len(ready), FINGERPRINT_QUERY_TABLES):
                chunk = ready[start:start + FINGERPRINT_QUERY_TABLES]
                items = [(r.plan, client.make_qualified_table_name(r.plan.destination_table),
                          r.fingerprint[0]) for r in chunk]  # type: ignore[index]
                rows = split_many(client.execute_sql(destination_sql_many(items, kind)) or [])
                for index, item in enumerate(chunk):
                    scope, source = item.fingerprint  # type: ignore[misc]
                    destination = parse(item.plan, rows[index], scope)
                    outcomes[item.plan.destination_table] = compare(
                        source, destination, skipped=not_compared(item.plan),
                        disposition=item.plan.disposition)
    except Exception as exc:  # noqa: BLE001 - the loads stand; the check says why it did not run
        for item in ready:
            outcomes.setdefault(item.plan.destination_table, CheckOutcome(
                FINGERPRINT, False, "WARN",
                f"not computed: the destination side failed ({describe(exc)})"))
    return outcomes


PENDING_FILL_STATE_KEY = "pending_fill"
# The PostgreSQL type of each column last loaded (by PostgreSQL name), and the destination
# columns that load wrote.
COLUMNS_STATE_KEY = "columns"
LOADED_COLUMNS_STATE_KEY = "loaded_columns"


class PlanFailed(ValueError):
    """The table's plan has an error (an override that does not fit it)."""


def _trusted_states(pipeline: dlt.Pipeline, plans: Sequence[TablePlan],
                    evolutions: Mapping[str, Evolution]
                    ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Each table's stored state (`pg_to_bq.cursor_store`) when the destination table still
    holds the rows it covers, and why not for the others (whose state is then empty, so
    they are read whole). One query for the group's row counts and loads."""
    stored = read_states(pipeline, [p.destination_table for p in plans])
    if not stored:
        return {}, {}
    oids = {p.destination_table: p.table.oid for p in plans}
    present = [t for t in stored if evolutions.get(t, Evolution(exists=False)).exists]
    load_ids = sorted({str(s[LOAD_ID_KEY]) for t, s in stored.items()
                       if t in present and s.get(LOAD_ID_KEY)})
    counts, known = _count_rows(pipeline, present, load_ids)
    trusted: dict[str, dict[str, Any]] = {}
    doubts: dict[str, str] = {}
    for table, state in stored.items():
        reason = doubt(state, exists=table in present, rows=counts.get(table),
                       load_known=str(state.get(LOAD_ID_KEY)) in known,
                       source_oid=oids.get(table))
        if reason is None:
            trusted[table] = state
        else:
            doubts[table] = reason
            log.info("table %s is read whole: %s", table, reason)
    return trusted, doubts


def _evolutions(pipeline: dlt.Pipeline, plans: Sequence[TablePlan]) -> dict[str, Evolution]:
    """What each table's load must do about schema changes (`pg_to_bq.evolution`)."""
    if not plans:
        return {}
    stored = stored_columns(pipeline, [p.destination_table for p in plans])
    kind = pipeline.destination.destination_name
    mapper = type_mapper(pipeline)
    return {p.destination_table: diff(planned_types(mapper, p), stored.get(p.destination_table),
                                      kind, frozenset(p.destination_primary_key))
            for p in plans}


def _describe_changes(plan: TablePlan, evolution: Evolution, state: dict[str, Any], mode: str,
                      fill: tuple[str, ...]) -> list[str]:
    """The schema changes this load handles, in words (for the CLI and the metadata)."""
    if not evolution.exists:
        return []
    source_names = {c.name: c.source for c in plan.columns}
    before = state.get(COLUMNS_STATE_KEY, {})
    changes = []
    for name in evolution.added:
        action = ("its values filled for the rows loaded before" if name in fill
                  else "loaded with every row")
        changes.append(Change("added", name).describe(action))
    previously = state.get(LOADED_COLUMNS_STATE_KEY)
    for name in evolution.dropped:
        if evolution.reload:
            changes.append(f"column {name} dropped in PostgreSQL: not in the reloaded table")
        elif previously is None or name in previously:  # said once, at the first load after
            changes.append(Change("dropped", name).describe(""))
    for change in (*evolution.widened, *evolution.retyped):
        source = source_names.get(change.column)
        text = change.describe("")
        if source is not None and before.get(source.name) not in (None, source.type):
            text += f"; PostgreSQL {before[source.name]} → {source.type}"
        changes.append(text)
    extra = set(fill) - set(evolution.added)
    if extra:
        changes.append(f"column(s) {', '.join(sorted(extra))}: values for the rows loaded "
                       "before filled now (an earlier run could not)")
    if mode == "full" and evolution.changed and plan.disposition == "merge" \
            and not evolution.reload:
        changes.append("read whole this run")
    return changes


def _prepare(pipeline: dlt.Pipeline, read: list[_Read], states: dict[str, dict[str, Any]],
             record_state: bool) -> dict[str, str]:
    """Before the load: mark the fills this run owes (so a run killed before they are done
    leaves them to the next one), invalidate the state of the tables about to be dropped and
    loaded again (so a reload that does not finish leaves no cursor without its rows), and
    change column types in place. Returns the tables that cannot load (an ALTER the
    destination refused)."""
    pending = {}
    for item in read:
        if item.refresh and record_state:
            pending[item.plan.destination_table] = invalidated(
                "its reload under a new column type did not finish")
        elif item.fill and record_state:
            state = dict(states.get(item.plan.destination_table, {}))
            state[PENDING_FILL_STATE_KEY] = sorted(set(state.get(PENDING_FILL_STATE_KEY, ()))
                                                   | set(item.fill))
            pending[item.plan.destination_table] = state
    if pending:
        write_states(pipeline, pending)
        states.update(pending)
    if any(not item.evolution.exists for item in read):
        forget_stored_schema(pipeline)
    failures = {}
    for item in read:
        evolution = item.evolution
        if item.refresh or not (evolution.widened or evolution.relax):
            continue
        try:
            apply(pipeline, alter_statements(pipeline, item.plan, evolution,
                                             planned_types(type_mapper(pipeline), item.plan)))
        except Exception as exc:  # noqa: BLE001 - this table's own failure
            failures[item.plan.destination_table] = (
                f"table {item.plan.name}: the destination refused to change its columns in "
                f"place ({describe(exc)}); a full refresh (--full-refresh) loads it again")
    return failures


def _batch_reporter(on_batch: Callable[..., None] | None, plan: TablePlan) -> Callable[[int], None]:
    if on_batch is None:
        return lambda rows: None
    try:  # `on_batch(rows)` (one table) or `on_batch(table, rows)` (a group)
        import inspect

        two = len(inspect.signature(on_batch).parameters) >= 2
    except (TypeError, ValueError):
        two = False
    return (lambda rows: on_batch(plan.name, rows)) if two else on_batch  # type: ignore[misc,return-value]


def _failure(plan: TablePlan, exc: BaseException, started: float, keep: bool = False,
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


def _no_columns(plan: TablePlan) -> str:
    return (f"table {plan.name} has no loadable columns (it has {len(plan.table.columns)} in "
            f"PostgreSQL, {len(plan.excluded)} excluded); nothing was loaded")


class _Sessions:
    """One source connection shared by the group's reads (each in its own transaction),
    opened when first needed and opened again after a failure."""

    def __init__(self, url: str, statement_timeout_s: int) -> None:
        self.url = url
        self.statement_timeout_s = statement_timeout_s
        self._session: AdbcSession | None = None

    def get(self) -> AdbcSession:
        if self._session is None:
            uri = with_options(self.url, "pg_to_bq", self.statement_timeout_s)
            try:
                self._session = AdbcSession(uri)
            except Exception as exc:  # the driver raises its own error classes
                raise SourceUnreachable(
                    f"cannot connect to PostgreSQL at {describe_source(self.url)}: "
                    f"{str(exc).splitlines()[0]}") from None
        return self._session

    def discard(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def __enter__(self) -> _Sessions:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


def _load_files(pipeline: dlt.Pipeline, read: list[_Read]) -> tuple[dict[str, str], str | None]:
    """Load the files of `read` (tables to drop and create again in a package of their own);
    returns the failed tables' errors (by destination table) and the load id.

    When dlt fails a package as a whole (not one table's job), the package is dropped and
    each of its tables is loaded again on its own, so that only the culprit fails.
    """
    failures: dict[str, str] = {}
    load_id = None
    try:
        for refresh in (True, False):
            part = [item for item in read if item.refresh is refresh]
            if not part:
                continue
            try:
                failed, load_id = _load_package(pipeline, part, refresh)
                failures.update(failed)
                continue
            except Exception as exc:  # noqa: BLE001 - isolated below
                pipeline.drop_pending_packages()
                if len(part) == 1:
                    failures[part[0].plan.destination_table] = describe(exc)
                    continue
                log.warning("loading %d tables together failed (%s); loading each alone",
                            len(part), describe(exc))
            for item in part:
                try:
                    failed, load_id = _load_package(pipeline, [item], refresh)
                    failures.update(failed)
                except Exception as exc:  # noqa: BLE001 - this table's own failure
                    pipeline.drop_pending_packages()
                    failures[item.plan.destination_table] = describe(exc)
        return failures, load_id
    finally:
        for item in read:
            item.path.unlink(missing_ok=True)


def _load_package(pipeline: dlt.Pipeline, read: list[_Read], refresh: bool = False
                  ) -> tuple[dict[str, str], str | None]:
    resources = [_resource(pipeline, item) for item in read]
    schema = Schema(pipeline.pipeline_name, normalizers={"names": "direct"})
    # extract, normalize and load rather than `run`: `run` would query the destination's
    # state a second time, and with a package left over from an interrupted run it loads
    # only that package and returns without reading the tables. `drop_resources` drops the
    # tables (and their staging copies) in the load step, before loading them again.
    pipeline.extract(resources, schema=schema, loader_file_format="parquet",
                     refresh="drop_resources" if refresh else None)
    pipeline.normalize()
    info = pipeline.load()
    failures: dict[str, str] = {}
    for package in info.load_packages:
        for job in package.jobs.get("failed_jobs", []):
            failures.setdefault(job.job_file_info.table_name, job_error(job.failed_message))
    return failures, info.loads_ids[-1] if info.loads_ids else None


_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?\w*(?:Error|Exception): (.+)$")


def job_error(failed_message: str | None) -> str:
    """The cause of a failed dlt load job in one line: dlt records the whole stack trace,
    whose last exception line says what the destination refused."""
    lines = (failed_message or "").strip().splitlines()
    for line in reversed(lines):
        match = _EXCEPTION_LINE.match(line)
        if match:
            return match.group(1).strip()[:2000]
    return lines[-1].strip()[:2000] if lines else "the load job failed"


def _resource(pipeline: dlt.Pipeline, item: _Read) -> Any:
    plan = item.plan
    path = item.path

    def table_file() -> Iterator[Any]:
        # An empty file still has the columns: dlt creates (or, on replace, empties) the table.
        yield dlt.mark.with_file_import(str(path), "parquet",
                                        items_count=item.reader.stats.rows)

    resource = dlt.resource(
        table_file,
        name=plan.destination_table,
        write_disposition="replace" if item.mode == "full" else "merge",
        primary_key=list(plan.destination_primary_key) or None,
        columns=[c.dlt_hint() for c in plan.columns],
        file_format="parquet",
    )
    if pipeline.destination.destination_name == "bigquery":
        resource = _bigquery_hints(resource, plan)
    return resource


def _commit_states(pipeline: dlt.Pipeline, loaded: list[_Read],
                   previous: dict[str, dict[str, Any]], load_id: str | None,
                   counts: Mapping[str, int], results: Sequence[LoadResult]) -> None:
    """Store the state of the tables that loaded (see the module's docstring), with the
    destination's rows after the load (`counts`), which the next run checks before trusting
    it; an unchanged table whose delete pass removed rows has its count updated. A table
    whose checks say rows or values are missing gets an invalidated state instead: the next
    run reads it whole. A failure here leaves the previous states, which no longer match the
    tables' rows: the next run reads those tables whole."""
    states: dict[str, dict[str, Any]] = {}
    for result in results:
        table = result.destination_table
        if result.lost:
            states[table] = invalidated(
                "the last load's checks found rows or values missing: "
                + "; ".join(c.description for c in result.lost)[:500])
        elif result.status == "unchanged" and result.deleted and table in counts \
                and table in previous:
            states[table] = {**previous[table], ROWS_KEY: counts[table]}
    for item in loaded:
        table = item.plan.destination_table
        if table in states or table not in counts:
            continue
        # A whole read replaces everything the state said; an incremental one moves it on.
        state = {} if item.mode == "full" else dict(previous.get(table, {}))
        state.pop(INVALIDATED_KEY, None)
        tracker = item.tracker
        if tracker is not None and tracker.max is not None:
            state[CURSOR_STATE_KEY] = state_value(tracker.max)
        elif item.mode == "full":
            state.pop(CURSOR_STATE_KEY, None)
        window = tracker.digest(item.reader.schema) if tracker is not None else None
        if window is None:
            state.pop(WINDOW_STATE_KEY, None)
        else:
            state[WINDOW_STATE_KEY] = window
        if item.versions is None:
            state.pop(VERSIONS_STATE_KEY, None)
        else:
            state[VERSIONS_STATE_KEY] = item.versions
        state[LOAD_ID_KEY] = load_id
        state[ROWS_KEY] = counts[table]
        if item.plan.table.oid is not None:
            state[SOURCE_OID_KEY] = item.plan.table.oid
        if item.definition is None:
            state.pop(DEFINITION_STATE_KEY, None)
        else:
            state[DEFINITION_STATE_KEY] = item.definition
        state[COLUMNS_STATE_KEY] = {c.source.name: c.source.type for c in item.plan.columns}
        state[LOADED_COLUMNS_STATE_KEY] = [c.name for c in item.plan.columns]
        state.pop(PENDING_FILL_STATE_KEY, None)  # done: the load and its fill succeeded
        states[table] = state
    try:
        write_states(pipeline, states)
    except Exception as exc:  # noqa: BLE001 - the data is loaded; the next run re-reads
        log.warning("the loaded tables' states were not stored (%s): the next run reads "
                    "them whole", describe(exc))


def _count_rows(pipeline: dlt.Pipeline, tables: Sequence[str], load_ids: Sequence[str] = ()
                ) -> tuple[dict[str, int], set[str]]:
    """Rows in each of `tables` (destination names), and which of `load_ids` the
    destination has a record of (`_dlt_loads`), asked in one query per 200 tables."""
    counts: dict[str, int] = {}
    known: set[str] = set()
    items: list[tuple[str, str]] = [("table", t) for t in tables] + \
        [("load", i) for i in load_ids]
    if not items:
        return counts, known
    with pipeline.sql_client() as client:
        literal = client.capabilities.escape_literal
        loads = client.make_qualified_table_name(LOADS_TABLE_NAME)
        for start in range(0, len(items), COUNT_QUERY_TABLES):
            chunk = items[start:start + COUNT_QUERY_TABLES]
            sql = " UNION ALL ".join(
                f"SELECT {i} AS i, count(*) AS n FROM {client.make_qualified_table_name(name)}"
                if kind == "table" else
                f"SELECT {i} AS i, count(*) AS n FROM {loads} WHERE load_id = {literal(name)}"
                for i, (kind, name) in enumerate(chunk))
            with client.execute_query(sql) as cursor:
                for i, n in cursor.fetchall():
                    kind, name = chunk[int(i)]
                    if kind == "table":
                        counts[name] = int(n)
                    elif int(n):
                        known.add(name)
    return counts, known


def _release_memory() -> None:
    """Hand the extraction's buffers back to the OS before DuckDB (in this process) loads:
    Arrow's allocator, and the C library's for the driver's buffers, keep freed memory for
    reuse, which would add up with DuckDB's."""
    pa.default_memory_pool().release_unused()
    if _malloc_trim is not None:
        _malloc_trim(0)


def _find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, where there is one (not on musl or macOS)."""
    import ctypes

    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


_malloc_trim = _find_malloc_trim()


@contextlib.contextmanager
def _one_connection(pipeline: dlt.Pipeline) -> Iterator[None]:
    """Within a write section, every DuckDB client of the pipeline borrows a clone of one
    open connection: dlt opens the file for each client it makes (a dozen per group: load
    jobs, state, schema queries), and opening a file holding 1,000 tables takes ~40 ms with
    a checkpoint on each close, a fifth of loading 1,000 small tables. The connection closes
    at the end of the section, so another process can take the file."""
    if pipeline.destination.destination_name != "duckdb":
        yield
        return
    with pipeline.sql_client():
        yield


def _sync_once(pipeline: dlt.Pipeline) -> None:
    """Restore state and schema from the destination (a fresh container has neither), then
    finish any package an interrupted run left behind, as `pipeline.run` would: its tables
    were loaded, or not, as a whole; cursors are stored only after a load (see the module's
    docstring), so finishing it never skips rows."""
    try:
        pipeline.sync_destination()
    except Exception as exc:  # noqa: BLE001 - `run` used to try again; so does this
        log.debug("restoring state for %s failed once, trying again: %s",
                  pipeline.pipeline_name, exc)
        pipeline.sync_destination()
    if pipeline.list_extracted_load_packages():
        pipeline.normalize()
    if pipeline.list_normalized_load_packages():
        log.info("loading the package an interrupted run of %s left behind",
                 pipeline.pipeline_name)
        try:
            pipeline.load()
        except Exception as exc:  # noqa: BLE001 - stale: this run reads the tables again
            log.warning("the package an interrupted run of %s left behind did not load (%s); "
                        "it is dropped and its tables are read again", pipeline.pipeline_name,
                        describe(exc))
            pipeline.drop_pending_packages()


def _bigquery_hints(resource: Any, plan: TablePlan) -> Any:
    """Table description from the PostgreSQL comment; the table's partitioning and clustering.

    Set as dlt hints directly: `bigquery_adapter` replaces the resource's column hints with
    only its own, which would drop every column's type and description.
    """
    from dlt.destinations.impl.bigquery.bigquery_adapter import (
        CLUSTER_COLUMNS_HINT,
        CLUSTER_HINT,
        PARTITION_HINT,
        TABLE_DESCRIPTION_HINT,
    )

    columns = {c.name: c.dlt_hint() for c in plan.columns}
    table_hints: dict[str, Any] = {}
    if plan.table.comment:
        table_hints[TABLE_DESCRIPTION_HINT] = plan.table.comment
    if plan.bigquery_partition:
        columns[plan.column_for(plan.bigquery_partition).name][PARTITION_HINT] = True
    if plan.bigquery_cluster:
        names = [plan.column_for(c).name for c in plan.bigquery_cluster]
        for name in names:
            columns[name][CLUSTER_HINT] = True
        table_hints[CLUSTER_COLUMNS_HINT] = names
    resource.apply_hints(columns=list(columns.values()),
                         additional_table_hints=table_hints or None)
    return resource


def _choose_mode(
    plan: TablePlan, state: dict[str, Any], full_refresh: bool, window: Window | None
) -> tuple[str, str | None, Any]:
    if full_refresh or plan.disposition == "replace":
        return "full", None, None
    if window is not None:
        column = quote_ident(window.column)
        pg_type = plan.table.column(window.column).type
        where = (f"{column} >= {literal(window.start, pg_type)} AND "
                 f"{column} < {literal(window.end, pg_type)}")
        return "window", where, window.start
    previous = state.get(CURSOR_STATE_KEY)
    if previous is None or plan.cursor is None:
        return "full", None, None
    pg_type = plan.table.column(plan.cursor).type
    bound = literal(previous, pg_type)
    if lookback_of(plan):
        bound = f"{bound} - {literal(f'{int(plan.lookback.total_seconds())} seconds', 'interval')}"
    return "incremental", f"{quote_ident(plan.cursor)} >= {bound}", previous



