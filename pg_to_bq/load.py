"""Load one table with its own dlt pipeline, fed Arrow batches from `pg_to_bq.extract`.

Each table has its own pipeline name and working directory, so runs of different tables
never share state; the pipeline state (including the incremental cursor) is stored in
the destination with each load, so a fresh container resumes where the last one stopped.

An incremental run re-reads the rows inside the lookback window of the last cursor. Each
load records a digest of exactly those rows, so when a run reads them back unchanged (and
nothing newer), it knows a merge would change nothing and skips dlt entirely: an
unchanged table costs a count, a small read and a state check, not a load.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import dlt
import pyarrow as pa
import pyarrow.compute as pc
from dlt.common.schema import Schema

from pg_to_bq.extract import TableReader, literal
from pg_to_bq.parquet_files import remove_stale_files, write_table_file
from pg_to_bq.plan import TablePlan
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
# The rows of the lookback window are kept (to digest them) only up to these sizes; a
# larger window is not digested and the next run simply merges it.
WINDOW_MAX_ROWS = 200_000
WINDOW_MAX_BYTES = 32 * 1024 * 1024
# DuckDB's buffer pool defaults to 80% of RAM and holds the loaded table's blocks, so the
# process grew with the table (1.3 GB at 5M rows); bounded, DuckDB spills to disk instead.
# 88 MB holds the row groups two threads build for a ~300-byte row (64 MB spilled ~100 MB and
# took 40% more CPU); wider rows get more (`pg_to_bq.duckdb_destination`).
# Not keeping insertion order lets it insert with bounded memory (tables are unordered).
DUCKDB_GLOBAL_CONFIG = {"memory_limit": "88MB", "preserve_insertion_order": False}


class EmptyTableError(ValueError):
    """A table without columns cannot be loaded; it is reported, not silently skipped."""


@dataclass(frozen=True)
class Window:
    """A half-open range [start, end) of the partition column, for backfills."""

    column: str
    start: Any
    end: Any


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


def pipelines_dir(work_dir: Path) -> Path:
    return work_dir / "pipelines"


def make_pipeline(plan: TablePlan, destination: Any, dataset: str, work_dir: Path) -> dlt.Pipeline:
    """The table's own dlt pipeline; its working files live under `work_dir`."""
    return dlt.pipeline(
        pipeline_name=plan.pipeline_name,
        destination=destination,
        dataset_name=dataset,
        pipelines_dir=str(pipelines_dir(work_dir)),
    )


def dlt_settings(destination: Any) -> dict[str, Any]:
    """dlt settings for our loads, applied while a table loads. They are defaults in dlt's
    `config.toml` layer, so environment variables (e.g. `LOAD__TRUNCATE_STAGING_DATASET`)
    still override them."""
    values: dict[str, Any] = {
        # Loaded parquet files are not kept in the working directory (a container's /tmp):
        # they would otherwise pile up, one copy of every table per run.
        "load.delete_completed_jobs": True,
        # Replace and merge go through staging tables; empty them after the load instead of
        # keeping a second copy of every table in the destination.
        "load.truncate_staging_dataset": True,
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
) -> LoadResult:
    """Extract `plan`'s table and load it; returns what was loaded.

    `full_refresh` replaces the destination table (and resets the incremental cursor);
    `window` re-reads one partition and merges it. Otherwise a merge plan with a cursor
    reads rows at or after the last cursor minus the lookback, and others are replaced.
    An incremental read that finds exactly the rows the last load recorded for its
    lookback window loads nothing (`extra["unchanged"]`). `streams` > 1 reads a large
    table over that many connections (see `TableReader`).
    """
    if not plan.columns:
        raise EmptyTableError(
            f"table {plan.name} has no loadable columns (it has {len(plan.table.columns)} in "
            f"PostgreSQL, {len(plan.excluded)} excluded); nothing was loaded"
        )
    started = time.monotonic()
    pipeline = make_pipeline(plan, destination, dataset, work_dir)
    with dlt.config.values(dlt_settings(pipeline.destination)):
        _sync_once(plan, pipeline)
        mode, where, cursor_from = _choose_mode(plan, pipeline, full_refresh, window)
        stored_window = _resource_state(plan, pipeline).get(WINDOW_STATE_KEY) \
            if mode == "incremental" else None
        reader = TableReader(
            source_url, plan, where=where, batch_bytes=batch_bytes, hash_salt=hash_salt,
            statement_timeout_s=statement_timeout_s, streams=streams, count_table=True,
        )
        tracker = _WindowTracker(plan, mode) if plan.cursor is not None and mode != "window" \
            else None
        with reader:
            ahead: list[pa.RecordBatch] | None = None
            if stored_window and reader.stats.snapshot_rows == stored_window.get("rows"):
                ahead = list(reader.batches())
                if _digest(ahead, reader.schema) == stored_window.get("digest"):
                    if on_batch is not None:
                        on_batch(reader.stats.rows)
                    return _result(plan, reader, None, started, mode, cursor_from,
                                   _max_of(ahead, plan), unchanged=True)
            _extract(plan, pipeline, reader, ahead, mode, tracker, on_batch)
        # The source snapshot is released (the reader closed) before the destination loads.
        load_id = _normalize_and_load(pipeline)
    return _result(plan, reader, load_id, started, mode, cursor_from,
                   tracker.max if tracker else None)


def _extract(
    plan: TablePlan,
    pipeline: dlt.Pipeline,
    reader: TableReader,
    ahead: list[pa.RecordBatch] | None,
    mode: str,
    tracker: _WindowTracker | None,
    on_batch: Callable[[int], None] | None,
) -> None:
    """dlt's extract step: the reader's batches written to one parquet file
    (`pg_to_bq.parquet_files`), imported into a load package."""
    destination_name = pipeline.destination.destination_name
    written: list[Path] = []

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in _chain(ahead, reader):
            if tracker is not None and batch.num_rows:
                tracker.add(batch)
            if on_batch is not None:
                on_batch(batch.num_rows)
            yield batch

    files = Path(pipeline.working_dir) / "pg_to_bq_files"
    for stale in remove_stale_files(files):
        log.info("removed %s, left by an extraction of %s that did not finish", stale, plan.name)

    def table_file() -> Iterator[Any]:
        path, rows = write_table_file(batches(), reader.schema, files, destination_name)
        written.append(path)
        # An empty file still has the columns: dlt creates (or, on replace, empties) the table.
        yield dlt.mark.with_file_import(str(path), "parquet", items_count=rows)
        if tracker is not None:
            # The next run reads from this value (minus the lookback). Taking the newest value
            # seen, even when older than the stored one, can only re-read rows, never skip them.
            state = dlt.current.resource_state()
            if tracker.max is not None:
                state[CURSOR_STATE_KEY] = _state_value(tracker.max)
            elif mode == "full":
                state.pop(CURSOR_STATE_KEY, None)
            digest = tracker.digest(reader.schema)
            if digest is None:
                state.pop(WINDOW_STATE_KEY, None)
            else:
                state[WINDOW_STATE_KEY] = digest

    resource = dlt.resource(
        table_file,
        name=plan.destination_table,
        write_disposition="replace" if mode == "full" else "merge",
        primary_key=list(plan.destination_primary_key) or None,
        columns=[c.dlt_hint() for c in plan.columns],
        file_format="parquet",
    )
    if pipeline.destination.destination_name == "bigquery":
        resource = _bigquery_hints(resource, plan)
    schema = Schema(plan.pipeline_name, normalizers={"names": "direct"})
    # extract, normalize and load rather than `run`: `run` would query the destination's
    # state a second time, and with a package left over from an interrupted run it loads
    # only that package and returns without reading the table.
    try:
        pipeline.extract(resource, schema=schema, loader_file_format="parquet")
    finally:
        # The load package holds the file now (a hard link, or a copy).
        for path in written:
            path.unlink(missing_ok=True)


def _normalize_and_load(pipeline: dlt.Pipeline) -> str | None:
    _release_memory()
    pipeline.normalize()
    info = pipeline.load()
    info.raise_on_failed_jobs()
    return info.loads_ids[-1] if info.loads_ids else None


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


def _chain(ahead: list[pa.RecordBatch] | None, reader: TableReader) -> Iterator[pa.RecordBatch]:
    """The batches read ahead (to compare with the stored window), else the reader's."""
    yield from reader.batches() if ahead is None else ahead


def _result(plan: TablePlan, reader: TableReader, load_id: str | None, started: float,
            mode: str, cursor_from: Any, cursor_to: Any, unchanged: bool = False) -> LoadResult:
    return LoadResult(
        table=plan.name,
        destination_table=plan.destination_table,
        rows=reader.stats.rows,
        snapshot_rows=reader.stats.snapshot_rows,
        load_id=load_id,
        duration_s=time.monotonic() - started,
        mode=mode,
        cursor_from=cursor_from,
        cursor_to=cursor_to,
        batches=reader.stats.batches,
        table_rows=reader.stats.table_rows,
        streams=reader.stats.streams,
        extra={"unchanged": True} if unchanged else {},
    )


def _sync_once(plan: TablePlan, pipeline: dlt.Pipeline) -> None:
    """Restore state and schema from the destination (a fresh container has neither), then
    finish any package an interrupted run left behind, as `pipeline.run` would: its state
    (and cursor) was already saved locally, so dropping it could skip rows."""
    try:
        pipeline.sync_destination()
    except Exception as exc:  # noqa: BLE001 - `run` used to try again; so does this
        log.debug("restoring state for %s failed once, trying again: %s", plan.name, exc)
        pipeline.sync_destination()
    if pipeline.list_extracted_load_packages():
        pipeline.normalize()
    if pipeline.list_normalized_load_packages():
        log.info("loading the package an interrupted run of %s left behind", plan.name)
        pipeline.load().raise_on_failed_jobs()


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
    plan: TablePlan, pipeline: dlt.Pipeline, full_refresh: bool, window: Window | None
) -> tuple[str, str | None, Any]:
    if full_refresh or plan.disposition == "replace":
        return "full", None, None
    if window is not None:
        column = quote_ident(window.column)
        pg_type = plan.table.column(window.column).type
        where = (f"{column} >= {literal(window.start, pg_type)} AND "
                 f"{column} < {literal(window.end, pg_type)}")
        return "window", where, window.start
    previous = _resource_state(plan, pipeline).get(CURSOR_STATE_KEY)
    if previous is None or plan.cursor is None:
        return "full", None, None
    pg_type = plan.table.column(plan.cursor).type
    bound = literal(previous, pg_type)
    if _lookback(plan):
        bound = f"{bound} - {literal(f'{int(plan.lookback.total_seconds())} seconds', 'interval')}"
    return "incremental", f"{quote_ident(plan.cursor)} >= {bound}", previous


def _lookback(plan: TablePlan) -> timedelta | None:
    """The lookback applied to the cursor (only timestamp and date cursors have one)."""
    assert plan.cursor is not None
    pg_type = plan.table.column(plan.cursor).type
    if plan.lookback and pg_type.startswith(("timestamp", "date")):
        return timedelta(seconds=int(plan.lookback.total_seconds()))
    return None


def _resource_state(plan: TablePlan, pipeline: dlt.Pipeline) -> dict[str, Any]:
    """This table's resource state: local, or restored from the destination by the sync."""
    sources = pipeline.state.get("sources", {})
    return sources.get(plan.pipeline_name, {}).get("resources", {}).get(plan.destination_table, {})


class _WindowTracker:
    """Follows the cursor's maximum while the table streams by, and keeps the rows the next
    incremental run will read again (cursor ≥ maximum − lookback), to digest them."""

    def __init__(self, plan: TablePlan, mode: str) -> None:
        assert plan.cursor is not None
        self.mode = mode
        self.column = plan.column_for(plan.cursor).name
        self.lookback = _lookback(plan)
        self.max: Any = None
        self.kept: list[pa.RecordBatch] = []
        self.overflow = False

    def add(self, batch: pa.RecordBatch) -> None:
        column = batch.column(self.column)
        newest = _py_max(column)
        if newest is None:
            return
        if self.max is None or newest > self.max:
            self.max = newest
            self.kept = [b for b in (self._in_window(k) for k in self.kept) if b.num_rows]
        if self.overflow:
            return
        kept = self._in_window(batch)
        if kept.num_rows:
            self.kept.append(kept)
        if (sum(b.num_rows for b in self.kept) > WINDOW_MAX_ROWS
                or sum(b.nbytes for b in self.kept) > WINDOW_MAX_BYTES):
            self.overflow, self.kept = True, []

    def _in_window(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        values, bound = _comparable(batch.column(self.column), _minus(self.max, self.lookback))
        return batch.filter(pc.greater_equal(values, bound))

    def digest(self, schema: pa.Schema) -> dict[str, Any] | None:
        """What the next incremental run must read back to skip its load, or None."""
        if self.overflow or (self.max is None and self.mode != "incremental"):
            return None
        # (An incremental run that read nothing keeps its cursor: the next run reads the
        # same, empty, window again.)
        digest = _digest(self.kept, schema)
        return None if digest is None else {"rows": sum(b.num_rows for b in self.kept),
                                            "digest": digest}


def _minus(value: Any, lookback: timedelta | None) -> Any:
    """`value` − `lookback` as the next run's query computes it."""
    if lookback is None:
        return value
    if isinstance(value, datetime):
        return value - lookback
    if isinstance(value, date):
        # PostgreSQL's date − interval is a timestamp within an earlier day; the dates at or
        # after it are those from `value` − whole days of the lookback.
        return value - timedelta(days=lookback.days)
    return value


def _digest(batches: list[pa.RecordBatch], schema: pa.Schema) -> str | None:
    """An order-independent digest of whole rows — their count and the sum and xor of
    DuckDB's hash of each row — and of the Arrow schema; equal digests mean the same rows.
    None when DuckDB cannot hash a column type (then nothing is skipped)."""
    import duckdb

    try:
        table = pa.Table.from_batches(batches, schema=schema)
        with duckdb.connect() as con:
            con.register("w", table)
            count, total, xor = con.execute(
                "SELECT count(*), coalesce(sum(h), 0)::VARCHAR, coalesce(bit_xor(h), 0)::VARCHAR "
                "FROM (SELECT hash(*COLUMNS(*)) AS h FROM w)"
            ).fetchone()
    except (duckdb.Error, pa.ArrowException) as exc:
        log.debug("no window digest: %s", exc)
        return None
    shape = hashlib.sha256(str(schema).encode("utf-8")).hexdigest()[:16]
    return f"{count}:{total}:{xor}:{shape}"


def _max_of(batches: list[pa.RecordBatch], plan: TablePlan) -> Any:
    if plan.cursor is None:
        return None
    column = plan.column_for(plan.cursor).name
    values = [_py_max(b.column(column)) for b in batches if b.num_rows]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _py_max(array: pa.Array) -> Any:
    """The array's largest value as a Python object. A zoned timestamp is read through its
    naive form (its UTC wall time): pyarrow's `as_py` on a zoned timestamp scalar imports
    pandas (~40 MB per loading process) to find the zone."""
    kind = array.type
    if pa.types.is_timestamp(kind) and kind.tz:
        naive = pc.max(array.view(pa.timestamp(kind.unit))).as_py()
        return None if naive is None else naive.replace(tzinfo=UTC).astimezone(_zone(kind.tz))
    return pc.max(array).as_py()


_UNITS_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _comparable(array: pa.Array, value: Any) -> tuple[pa.Array, pa.Scalar]:
    """`array` and `value` in a form `pc` compares. Timestamps, dates and integers compare as
    integers: `pa.scalar` from a Python value imports pandas (see `_py_max`)."""
    kind = array.type
    if pa.types.is_timestamp(kind):
        epoch = _EPOCH if kind.tz else _EPOCH.replace(tzinfo=None)
        delta = value - epoch
        per_second = _UNITS_PER_SECOND[kind.unit]
        ticks = (delta.days * 86_400 + delta.seconds) * per_second \
            + delta.microseconds * per_second // 1_000_000
        return array.view(pa.int64()), _int64(ticks)
    if pa.types.is_date32(kind):
        return array.view(pa.int32()).cast(pa.int64()), _int64((value - _EPOCH.date()).days)
    if pa.types.is_integer(kind):
        return array.cast(pa.int64()), _int64(int(value))
    return array, pa.scalar(value, kind)


def _int64(value: int) -> pa.Scalar:
    return pa.Array.from_buffers(
        pa.int64(), 1, [None, pa.py_buffer(value.to_bytes(8, "little", signed=True))])[0]


def _zone(name: str) -> tzinfo:
    if name in ("UTC", "+00:00", "Z"):
        return UTC
    if name[:1] in "+-":
        hours, _, minutes = name[1:].partition(":")
        offset = timedelta(hours=int(hours), minutes=int(minutes or 0))
        return timezone(-offset if name[0] == "-" else offset)
    return ZoneInfo(name)


def _state_value(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value
